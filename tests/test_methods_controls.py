"""Methods analysis with controls: control rows labelled and kept apart; comparisons with the controls on known synthetic tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mdtools import stats
from mdtools.analysis import findings, tables
from mdtools.errors import ConfigError

SEEDS = list(range(8))
CANVASES = [(128, 512), (256, 256)]
SWEPT = ["canvas.height", "canvas.width", "method.name", "tiling.overlap", "seed", "control"]


def _row(seed: int, h: int, w: int, method: str, overlap: int, control: str = "", kernel: str = "gaussian", **vals) -> dict:
    r = {"status": "ok", "seed": seed, "method.name": method, "tiling.kernel": kernel, "tiling.overlap": overlap,
         "plan.height": h, "plan.width": w, "canvas.height": h, "canvas.width": w, "control": control, **vals}
    r["swept"] = json.dumps({k: r.get(k) for k in SWEPT})
    return r


def synthetic(rng_seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Two settings and both controls on two canvases, 8 seeds. Per seed: the default's seam score s, MultiDiffusion
    s + 0.3 + small noise (clearly worse), Mixture s + noise (no difference); intra_color of the single window c,
    MultiDiffusion c + 0.2 + noise; costs 210 / 210 / 1000 (ratios 0.21 exactly)."""
    rng = np.random.default_rng(rng_seed)
    rows, known = [], {}
    single_c = 0.5 + 0.05 * rng.standard_normal(len(SEEDS))
    single_tv = 0.1 + 0.01 * rng.standard_normal(len(SEEDS))
    for i, s in enumerate(SEEDS):
        rows.append(_row(s, 128, 128, "multidiffusion", 64, "single_window", **{
            "metric.seam_structure": np.nan, "metric.seam_score": np.nan, "metric.intra_color": single_c[i],
            "metric.tv": single_tv[i], "cost.unet_equivalents": 30.0, "count.model_evaluations": 30}))
    for h, w in CANVASES:
        base = 1.0 + 0.1 * rng.standard_normal(len(SEEDS))
        md_noise, mix_noise, col_noise = (0.02 * rng.standard_normal(len(SEEDS)) for _ in range(3))
        known[f"md_minus_default {w}x{h}"] = 0.3 + md_noise
        known[f"mix_minus_default {w}x{h}"] = mix_noise
        known[f"md_minus_single_color {w}x{h}"] = 0.2 + col_noise
        for i, s in enumerate(SEEDS):
            common = {"metric.seam_score": base[i], "metric.tv": single_tv[i] + 0.05}
            rows.append(_row(s, h, w, "multidiffusion", 112, "diffusers_default", kernel="uniform", **{
                **common, "metric.seam_structure": base[i], "metric.intra_color": single_c[i],
                "cost.unet_equivalents": 1000.0, "count.model_evaluations": 1000}))
            rows.append(_row(s, h, w, "multidiffusion", 64, **{
                **common, "metric.seam_structure": base[i] + 0.3 + md_noise[i], "metric.intra_color": single_c[i] + 0.2 + col_noise[i],
                "cost.unet_equivalents": 210.0, "count.model_evaluations": 210}))
            rows.append(_row(s, h, w, "mixture", 64, **{
                **common, "metric.seam_structure": base[i] + mix_noise[i], "metric.intra_color": single_c[i],
                "cost.unet_equivalents": 210.0, "count.model_evaluations": 210}))
    return pd.DataFrame(rows), known


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_control_rows_get_their_own_labels_and_unknown_controls_are_refused(data):
    df, _ = data
    lab = tables.with_method_label(df, tables.label_extra(df))
    by_control = lab.groupby("control")["method.label"].unique()
    assert list(by_control["diffusers_default"]) == ["diffusers default"]
    assert list(by_control["single_window"]) == ["single window"]
    assert not set(by_control[""]) & {"diffusers default", "single window"}
    assert all(lab["method.label"].str.find("control") < 0), "control is not a key=value of a method label"
    with pytest.raises(ConfigError, match="control.*diffusers_default"):
        tables.with_method_label(df.assign(control="diffusers"))


def test_a_table_without_the_column_is_unchanged(data):
    df, _ = data
    old = df[df["control"] == ""].drop(columns="control")
    old = old.assign(swept=[json.dumps({k: v for k, v in json.loads(s).items() if k != "control"}) for s in old["swept"]])
    assert (tables.control_column(old) == "").all() and not tables.has_controls(old)
    assert len(tables.plain_runs(old)) == len(old)
    with_col = df[df["control"] == ""]
    assert list(tables.with_method_label(old)["method.label"]) == list(tables.with_method_label(with_col)["method.label"])
    assert "control" not in tables.summarize(old, n_boot=200).columns
    assert "control" not in tables.methods_table(old, n_boot=200).columns
    assert findings.default_family(old) == {} and findings.cost_ratios(old).empty and findings.single_window_excess(old).empty
    note = tables.missing_controls_note(old, where="results/x")
    assert "controls are not in these results" in note and "no `control` column" in note


def test_summary_and_methods_tables_keep_control_rows_apart(data):
    df, _ = data
    s = tables.summarize(df, n_boot=200)
    dd = s[s["control"] == "diffusers_default"]
    assert len(dd) == 2 and len(s[s["control"] == "single_window"]) == 1 and len(s[s["control"] == ""]) == 4
    want = df[(df["control"] == "diffusers_default") & (df["plan.width"] == 512)]["metric.seam_structure"].mean()
    assert dd[dd["canvas.width"] == 512]["metric.seam_structure.mean"].iloc[0] == pytest.approx(want)
    m = tables.methods_table(df, n_boot=200)
    d = m[m["method.label"] == "diffusers default"]
    assert list(d["control"]) == ["diffusers_default"] * 2 and list(d["n"]) == [8, 8]
    md = m[(m["control"] == "") & m["method.label"].str.startswith("multidiffusion") & (m["plan.width"] == 256)]
    want = df[(df["control"] == "") & (df["method.name"] == "multidiffusion") & (df["plan.width"] == 256)]["cost.unet_equivalents"]
    assert len(md) == 1 and md["cost.unet_equivalents"].iloc[0] == pytest.approx(want.mean()) == 210.0


def test_default_family_pairs_on_seed_and_corrects_with_holm(data):
    df, known = data
    fam = findings.default_family(df)
    assert len(fam) == 2 * 2 * 2, "2 settings x 2 canvases x 2 metrics; the single window is not in it"
    assert {k[1] for k in fam} - {"diffusers default"} == {k[1] for k in fam}
    md = next(s for s in {k[1] for k in fam} if s.startswith("multidiffusion"))
    mix = next(s for s in {k[1] for k in fam} if s.startswith("mixture"))
    c = fam[("metric.seam_structure", md, "512x128")]
    assert c.diff.estimate == pytest.approx(known["md_minus_default 512x128"].mean())
    assert c.diff.n == 8 and c.family_size == 8 and c.verdict == "worse" and c.text().startswith("worse on seam_structure")
    ps = [x.diff.p for x in fam.values()]
    assert sorted(x.p_holm for x in fam.values()) == pytest.approx(sorted(stats.holm(np.array(ps))))
    assert fam[("metric.seam_structure", mix, "256x256")].verdict == "no difference shown"
    assert fam[("metric.seam_score", md, "512x128")].diff.estimate == pytest.approx(0.0)


def test_cost_ratio_against_the_default(data):
    df, _ = data
    r = findings.cost_ratios(df)
    assert len(r) == 4 and (r["n"] == 8).all()
    assert r["ratio"].to_numpy() == pytest.approx(np.full(4, 210 / 1000))
    assert set(r["cost"]) == {tables.EVALS}, "records without FLOP pricing: the ratio is of model evaluations"
    r2 = findings.cost_ratios(df.assign(**{"cost.pricing": "flops", "cost.unet_equivalents": df["cost.unet_equivalents"] * 2}))
    assert set(r2["cost"]) == {tables.COST} and r2["ratio"].to_numpy() == pytest.approx(np.full(4, 0.21))


def test_excess_over_the_single_window_pairs_across_canvases(data):
    df, known = data
    t = findings.single_window_excess(df)
    assert len(t) == 3 * 2 * 2, "2 settings and the diffusers default x 2 canvases x 2 metrics"
    row = t[t["setting"].str.startswith("multidiffusion") & (t["canvas"] == "256x256") & (t["metric"] == "metric.intra_color")].iloc[0]
    assert row["excess"] == pytest.approx(known["md_minus_single_color 256x256"].mean()) and row["n"] == 8
    assert row["reading"] == "higher intra_color than the single window"
    d = t[(t["setting"] == "diffusers default") & (t["metric"] == "metric.intra_color")]
    assert (d["excess"].abs() < 1e-12).all() and set(d["reading"]) == {"no difference shown from the single window"}
    tv = t[t["metric"] == "metric.tv"]
    assert tv["excess"].to_numpy() == pytest.approx(np.full(6, 0.05))
    assert t["p_holm"].to_numpy() == pytest.approx(stats.holm(t["p"].to_numpy()))
    assert list(t["setting"][:2]) == ["diffusers default"] * 2 and list(t["canvas"][:2]) == ["256x256"] * 2
    assert list(t["metric"][:2]) == ["metric.intra_color", "metric.tv"], "narrow canvas first, the default first, metrics in order"


def test_renderer_controls_and_family_leave_controls_out(data, tmp_path):
    df, _ = data
    (tmp_path / "m").mkdir()
    df.to_parquet(tmp_path / "m" / "runs.parquet")
    r = findings.Renderer(tmp_path)
    md = next(lab for lab in tables.with_method_label(df, tables.label_extra(df))["method.label"] if lab.startswith("multidiffusion"))
    out = r.render(f'{{{{ family M m ref="{md}" metrics=metric.seam_structure }}}}\n{{{{ controls D m }}}}')
    assert out.startswith("2 paired comparisons"), "family M: the mixture on two canvases; no control in it"
    assert "Against the diffusers default: 8 paired comparisons" in out and "worse on seam_structure" in out
    assert "cost ratio 0.21 [0.21, 0.21] (n=8" in out
    assert "Over the single window" in out and "12 paired differences" in out
    assert len(r.families["D"]) == 8
    old = df[df["control"] == ""].drop(columns="control")
    (tmp_path / "o").mkdir()
    old.to_parquet(tmp_path / "o" / "runs.parquet")
    text = findings.Renderer(tmp_path).render("{{ controls D o }}")
    assert "controls are not in these results (results/o has no `control` column)" in text
    only_default = df[df["control"] != "single_window"]
    (tmp_path / "d").mkdir()
    only_default.to_parquet(tmp_path / "d" / "runs.parquet")
    text = findings.Renderer(tmp_path).render("{{ controls D d }}")
    assert "Against the diffusers default" in text and "single window control is not in these results" in text


def test_plots_never_pool_a_control_with_its_method(data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdtools.analysis import plots

    df, _ = data
    sub = df[df["plan.width"] == 512]
    fig = plots.frontier(pd.concat([sub, df[df["control"] == "single_window"]]))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any(lab.startswith("diffusers default") for lab in labels)
    assert not any("single window" in lab for lab in labels)
    plt.close(fig)


def test_pricing_says_how_the_cost_was_priced(data, tmp_path):
    df, _ = data
    md = next(lab for lab in tables.with_method_label(df, tables.label_extra(df))["method.label"] if lab.startswith("multidiffusion"))
    seconds = df.assign(**{"cost.unet_equivalents": df["cost.unet_equivalents"] + df["seed"]})  # load-dependent prices
    for name, t in (("s", seconds), ("f", df.assign(**{"cost.pricing": "flops"}))):
        (tmp_path / name).mkdir()
        t.to_parquet(tmp_path / name / "runs.parquet")
    r = findings.Renderer(tmp_path)
    assert r.render(f'{{{{ pricing s "method.label={md}" plan.width=512 }}}}') == (
        "Its `unet_equivalents` price these with each run's own seconds, so they follow the machine's load: 210-217 over 8 runs "
        "of identical work; no cost ratio is stated from them")
    assert r.render(f'{{{{ pricing f "method.label={md}" plan.width=512 }}}}').endswith("by their FLOPs, whatever the machine's "
                                                                                       "load: 210 on each of 8 runs")


def test_report_writes_control_rows_as_their_own_rows(data, tmp_path):
    from mdtools.analysis.report import report

    df, _ = data
    df.to_parquet(tmp_path / "runs.parquet")
    summary, _ = report(tmp_path, make_plots=False)
    m = pd.read_csv(tmp_path / "methods.csv", keep_default_na=False)
    assert set(m.loc[m["control"] != "", "method.label"]) == {"diffusers default", "single window"}
    assert len(m) == 2 * 3 + 1 and set(summary["control"]) == {"", "diffusers_default", "single_window"}
