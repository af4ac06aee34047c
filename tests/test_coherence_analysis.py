"""Notebook 07's analysis (mdtools.analysis.coherence) on constructed runs tables with known answers.

Covered: rates, excess over the single window, the diffusers-default family, redundancy, the moonshot, rendered findings.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from mdtools import stats  # noqa: E402
from mdtools.analysis import coherence as C  # noqa: E402
from mdtools.analysis.findings import render_file  # noqa: E402
from mdtools.analysis.plots_coherence import frontier_figure  # noqa: E402
from mdtools.analysis.verdicts import MARGINS  # noqa: E402
from mdtools.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(6)
PROMPT = "day sky over grassy mountains with a sun"
BASE_DC = [0, 1, 1, 2, 1, 3]  # the single window's disc counts per seed: one disc on seeds 1, 2, 4; none on seed 0


def _row(seed: int, *, name: str = "multidiffusion", overlap: int = 64, kernel: str = "gaussian", control: str = "",
         width: int = 512, evals: int = 210, dc: float = 1.0, seam: float = 1.0, **more) -> dict:
    r = {"status": "ok", "seed": seed, "prompt": PROMPT, "model": "toy-scenes-v2", "control": control, "method.name": name, "tiling.overlap": overlap,
         "tiling.kernel": kernel, "plan.height": 128, "plan.width": width, "plan.window_h": 128, "plan.window_w": 128,
         "sampler.steps": 15, "sampler.guidance": 5.0, "count.model_evaluations": evals, "cost.unet_equivalents": float(evals),
         "metric.disc_count": dc, "metric.seam_structure": seam, "metric.horizon_breaks": 0.5, "metric.sky_consistency": 1.1,
         "metric.intra_lpips_featnet": 0.2, "metric.intra_style_featnet": 1e-4,
         "swept": json.dumps({"method.name": name, "tiling.overlap": overlap, "seed": seed})}
    r.update(more)
    return r


def frame(moonshot_equal: bool = True) -> pd.DataFrame:
    """A 1:4 sweep with both controls. Known answers:
    - single window: disc counts BASE_DC (one-disc rate 3/6, no-disc rate 1/6);
    - "multidiffusion ov=64": two discs more than the single window on every seed; seams 0.3 worse than the default ± noise;
    - "spotdiffusion ov=0" (redundancy 1.0): seams 0.3 worse than the default on every seed, discs as the default;
    - "multidiffusion ov=16" (redundancy 132 / 120 = 1.1): equal to the default on every metric (if `moonshot_equal`)."""
    rng = np.random.default_rng(0)
    rows = []
    for s in SEEDS:
        seam = 1.0 + 0.1 * s
        rows.append(_row(s, control="single_window", width=128, overlap=64, evals=30, dc=BASE_DC[s], seam=math.nan,
                         **{"metric.horizon_breaks": math.nan}))
        rows.append(_row(s, control="diffusers_default", kernel="uniform", overlap=112, evals=750, dc=1, seam=seam))
        rows.append(_row(s, dc=BASE_DC[s] + 2, seam=seam + 0.3 + rng.normal(0, 0.02),
                         **{"metric.horizon_breaks": 0.5 + 0.4 + rng.normal(0, 0.05)}))
        rows.append(_row(s, name="spotdiffusion", overlap=0, evals=120, dc=1, seam=seam + 0.3))
        rows.append(_row(s, overlap=16, evals=132, dc=1 if moonshot_equal else 3, seam=seam))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return C.prepare(frame())


def test_labels_are_readable_and_one_per_setting(df):
    assert set(df["setting"]) == {"single window", "diffusers default", "multidiffusion ov=64", "spotdiffusion ov=0",
                                  "multidiffusion ov=16"}
    comp = pd.DataFrame([_row(0, name="global_pass", overlap=0, **{"method.tiled": "spotdiffusion", "method.strength": 0.8}),
                         _row(0, name="syncdiffusion", **{"method.loss": "lpips_featnet", "method.sync_steps": 5.0,
                                                          "method.tiled": None, "method.strength": None})])
    assert list(C.setting_labels(comp)) == ["global_pass(spotdiffusion, s=0.8) ov=0",
                                            "syncdiffusion(loss=lpips_featnet, sync_steps=5) ov=64"]
    kernels = pd.DataFrame([_row(0, kernel="uniform"), _row(0, kernel="gaussian")])
    assert list(C.setting_labels(kernels)) == ["multidiffusion(uniform) ov=64", "multidiffusion(gaussian) ov=64"]


def test_redundancy_counts_every_evaluation_against_one_non_overlapping_pass(df):
    # 128 x 512 with a 128 px window: 4 windows x 15 steps x 2 (guidance > 1) = 120 evaluations per plain pass
    r = df.groupby("setting")["redundancy"].first()
    np.testing.assert_allclose(r[["multidiffusion ov=16", "spotdiffusion ov=0", "diffusers default", "single window"]],
                               [132 / 120, 1.0, 750 / 120, 1.0])
    odd = pd.DataFrame([_row(0, width=200, evals=60, **{"sampler.guidance": 1.0})])  # ceil(200 / 128) = 2 windows, no CFG
    np.testing.assert_allclose(C.redundancy(odd), [60 / (2 * 15)])
    with pytest.raises(ConfigError, match="plan.window_w"):
        C.redundancy(odd.drop(columns=["plan.window_w"]))


def test_disc_rates_and_counts(df):
    t = C.disc_table(df).set_index("setting")
    sw = t.loc["single window"]
    assert (sw["n"], sw["canvas"]) == (6, "128x128")
    assert sw["one_disc"] == pytest.approx(3 / 6) and sw["no_disc"] == pytest.approx(1 / 6)
    assert sw["disc_error"] == pytest.approx(np.mean(np.abs(np.array(BASE_DC) - 1)))
    assert sw["disc_count"] == pytest.approx(np.mean(BASE_DC))
    assert 0 <= sw["one_disc.lo"] < 0.5 < sw["one_disc.hi"] <= 1 and "expanded bootstrap" in sw["ci_method"]
    assert t.loc["diffusers default", "one_disc"] == 1.0 and t.loc["multidiffusion ov=64", "one_disc"] == 0.0
    assert list(t.index[:2]) == ["single window", "diffusers default"], "controls first"


def test_excess_over_the_single_window_is_paired_on_seed_and_prompt(df):
    t = C.excess_table(df).set_index(["setting", "metric"])
    r = t.loc[("multidiffusion ov=64", "disc_count")]
    assert (r["excess"], r["lo"], r["hi"], r["n"]) == (2.0, 2.0, 2.0, 6), "two discs more on every seed"
    assert (r["verdict"], r["reading"], r["canvas"]) == ("worse", "more discs than the single window", "512x128")
    d = t.loc[("diffusers default", "disc_count")]
    assert d["excess"] == pytest.approx(np.mean(1 - np.array(BASE_DC)))  # NumPy: mean of the per-seed differences
    one = t.loc[("diffusers default", "one_disc")]
    assert one["excess"] == pytest.approx(1 - 3 / 6) and one["lo"] <= one["excess"] <= one["hi"]
    assert one["reading"] == "no difference shown from the single window"
    assert ("single window", "disc_count") not in t.index
    np.testing.assert_allclose(t["p_holm"], stats.holm(t["p"].to_numpy()))
    assert t["ci_method"].str.contains("paired expanded bootstrap").all()


def test_comparisons_with_the_diffusers_default_are_one_holm_family(df):
    fam = C.default_family(df)
    settings = {"multidiffusion ov=64", "spotdiffusion ov=0", "multidiffusion ov=16"}
    assert {k[1] for k in fam} == settings and {k[2] for k in fam} == {"512x128"}
    assert {k[0] for k in fam} == set(C.DEFAULT_METRICS) and len(fam) == 3 * len(C.DEFAULT_METRICS)
    c = fam[("metric.seam_structure", "multidiffusion ov=64", "512x128")]
    assert c.verdict == "worse" and c.diff.estimate == pytest.approx(0.3, abs=0.03) and c.family_size == len(fam)
    assert fam[("metric.horizon_breaks", "multidiffusion ov=64", "512x128")].verdict == "worse"
    eq = fam[("metric.seam_structure", "multidiffusion ov=16", "512x128")]
    assert eq.verdict == "no difference shown" and eq.non_inferior
    ps = [x.diff.p for x in fam.values()]
    np.testing.assert_allclose([x.p_holm for x in fam.values()], stats.holm(ps))
    t = C.comparisons_table(fam)
    assert len(t) == len(fam) and set(t["margin"]) <= {m.value for m in MARGINS.values()}


def test_moonshot_reached_by_an_equal_setting_at_redundancy_1_1(df):
    (m,) = C.moonshot(df)
    assert m.canvas == "512x128"
    assert {c.setting for c in m.candidates} == {"spotdiffusion ov=0", "multidiffusion ov=16"}  # ov=64 is at 1.75
    assert [c.setting for c in m.reached] == ["multidiffusion ov=16"]
    text = m.text()
    assert "reached by 1 of 2 settings: multidiffusion ov=16 (redundancy 1.10" in text
    assert "non-inferior within margin 0.1 on seam_structure" in text and "non-inferior within margin 0.1 on one_disc" in text


def test_moonshot_not_reached_names_the_closest_and_the_failing_comparison():
    (m,) = C.moonshot(C.prepare(frame(moonshot_equal=False)))
    assert m.reached == ()
    c = m.closest
    # spotdiffusion: seams exactly 0.3 worse on every seed -> the interval [0.3, 0.3] crosses the margin 0.1 by 0.2;
    # multidiffusion ov=16: one_disc 1 -> 0 on every seed -> diff -1, crosses the margin 0.1 by 0.9
    assert c.setting == "spotdiffusion ov=0" and c.worst.metric == "metric.seam_structure"
    assert C.shortfall(c.worst) == pytest.approx(0.3 - MARGINS["metric.seam_structure"].value)
    other = next(x for x in m.candidates if x.setting == "multidiffusion ov=16")
    assert other.gap == pytest.approx(1.0 - MARGINS["metric.one_disc"].value)
    assert re.search(r"not reached by any of the 2 settings\. The closest is spotdiffusion ov=0 \(redundancy 1\.00\); "
                     r"it fails on seam_structure: its interval crosses the margin by 0\.2 \(not shown non-inferior", m.text())


def test_old_tables_without_controls_degrade_with_a_sentence():
    old = frame().query("control == ''").drop(columns=["control"])
    d = C.prepare(old)
    assert (d["control"] == "").all()
    assert C.excess_table(d).empty and C.default_family(d) == {}
    assert "not in these results" in C.missing_note(d, C.SINGLE_WINDOW)
    with pytest.raises(ConfigError, match="diffusers default control is not in these results"):
        C.moonshot(d)


def test_bad_inputs_get_one_clear_error():
    with pytest.raises(ConfigError, match=r"control: unknown value\(s\) \['single'\]"):
        C.prepare(pd.DataFrame([_row(0, control="single")]))
    with pytest.raises(ConfigError, match="setting labels collide"):
        C.prepare(pd.DataFrame([_row(0), _row(0, **{"sampler.steps": 25})]))
    with pytest.raises(ConfigError, match="needs columns 'status' and 'seed'"):
        C.prepare(pd.DataFrame({"x": [1]}))


def test_rendered_findings_07_from_synthetic_results(tmp_path):
    (tmp_path / "coherence").mkdir()
    (tmp_path / "frontier_scenes").mkdir()
    frame().to_parquet(tmp_path / "coherence" / "runs.parquet")
    frame().to_parquet(tmp_path / "frontier_scenes" / "runs.parquet")
    pd.DataFrame({"method label": ["diffusers default", "multidiffusion ov=64"], "canvas": ["512x128"] * 2,
                  "kid": [0.012, 0.034], "kid_lo": [0.01, 0.02], "kid_hi": [0.02, 0.05], "n": [6, 6],
                  "ci_method": ["expanded bootstrap, 95%"] * 2}).to_csv(tmp_path / "coherence" / "protocol.csv", index=False)
    text = render_file(ROOT / "notebooks" / "findings" / "07.md", tmp_path)
    assert "not in these results" not in text and "not measured" not in text
    assert text.startswith('## Findings (model toy-scenes-v2, 15 steps, guidance 5, 6 seeds; prompt "day sky over')
    assert "multidiffusion ov=64, 512x128, disc_count: more discs than the single window: +2.00 [2.00, 2.00] (n=6" in text
    assert "multidiffusion ov=64, 512x128: KID 0.034 [0.02, 0.05] (n=6, expanded bootstrap, 95%)" in text
    assert "reached by 1 of 2 settings: multidiffusion ov=16" in text
    assert "worse on seam_structure: +0.30" in text
    for m in re.finditer(r"non-inferior within margin (\S+) on (\w+)", text):
        assert float(m.group(1)) == MARGINS[f"metric.{m.group(2)}"].value


def test_rendered_findings_07_without_controls_or_frontier(tmp_path):
    (tmp_path / "coherence").mkdir()
    frame().query("control == ''").drop(columns=["control"]).to_parquet(tmp_path / "coherence" / "runs.parquet")
    text = render_file(ROOT / "notebooks" / "findings" / "07.md", tmp_path)
    assert "The single window control is not in these results" in text
    assert "The diffusers default control is not in these results" in text
    assert "KID: not measured (no results/coherence/protocol.csv)" in text
    assert "results/frontier_scenes is not in these results" in text
    (tmp_path / "coherence" / "protocol.csv").write_text("label,canvas\nx,512x128\n")
    with pytest.raises(ConfigError, match=r"no column\(s\) \['kid'\]"):
        render_file(ROOT / "notebooks" / "findings" / "07.md", tmp_path)


def test_frontier_figure_names_n_and_method_and_keeps_the_legend_outside(df):
    fig = frontier_figure(df, "512x128")
    title = fig._suptitle.get_text()
    assert "n = 6 runs" in title and "95% expanded bootstrap" in title
    (leg,) = fig.legends
    assert [t.get_text().split(" (")[0] for t in leg.get_texts()] == list(C.frontier_table(df)["setting"])
    fig.canvas.draw()
    lb = leg.get_window_extent()
    for ax in fig.axes:
        assert lb.x0 >= ax.get_window_extent().x1, "legend outside the data"
    with pytest.raises(ConfigError, match="no setting on canvas='1024x128'"):
        frontier_figure(df, "1024x128")
    matplotlib.pyplot.close("all")


def test_new_margins_are_named():
    for m in ("metric.horizon_breaks", "metric.no_disc"):
        assert MARGINS[m].value > 0 and MARGINS[m].why and not MARGINS[m].higher_is_better


def test_disc_table_gives_the_wilson_interval_beside_the_bootstrap(df):
    t = C.disc_table(df).set_index("setting")
    lo, hi = t.loc["multidiffusion ov=64", ["one_disc.wilson_lo", "one_disc.wilson_hi"]]
    z = 1.959963984540054  # NumPy reference: Wilson's upper bound at 0 of 6 is z^2 / (n + z^2)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(z**2 / (6 + z**2))


def test_moonshot_needs_both_metrics(df):
    with pytest.raises(ConfigError, match=r"moonshot: the table has no \['metric.seam_structure'\]"):
        C.moonshot(df.drop(columns=["metric.seam_structure"]))
