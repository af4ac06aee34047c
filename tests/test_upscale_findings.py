"""The upscale benchmark's findings: the committed text re-renders from the committed tables, and the wording rules hold."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from mdtools.analysis import upscale_findings as U

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "upscale"


# ------------------------------------------------------------------------------------ committed results


def test_committed_findings_rerender_from_the_committed_tables():
    summary, comps = pd.read_csv(RESULTS / "summary.csv"), pd.read_csv(RESULTS / "comparisons.csv")
    assert U.render_findings(summary, comps) == (RESULTS / "findings.md").read_text(), \
        "results/upscale/findings.md differs from a re-rendering: run benchmarks/upscale_truth.py (it re-renders)"


def test_committed_tables_recompute_from_the_runs():
    summary, comps = U.build_tables(RESULTS)
    old_s, old_c = pd.read_csv(RESULTS / "summary.csv"), pd.read_csv(RESULTS / "comparisons.csv")
    assert len(summary) == len(old_s) and len(comps) == len(old_c)
    for new, old in ((summary, old_s), (comps, old_c)):
        for col in old.columns:
            if pd.api.types.is_numeric_dtype(old[col]):
                np.testing.assert_allclose(new[col].to_numpy(dtype=float), old[col].to_numpy(dtype=float), rtol=1e-5,
                                           atol=1e-9, equal_nan=True, err_msg=col)
            else:
                assert new[col].astype(str).tolist() == old[col].astype(str).tolist(), col


def test_committed_runs_are_from_a_clean_tree_with_every_method_and_8_seeds():
    runs = U.load_runs(RESULTS)
    assert not runs["prov.dirty"].astype(bool).any(), "committed rows must come from a clean, committed tree"
    ok = runs[(runs["status"] == "ok") & (runs["factor"] == 4)]
    for ds in ("scenes", "textures"):
        got = ok[ok["dataset"] == ds].groupby("method")["seed"].nunique()
        missing = {m: int(got.get(m, 0)) for m in U.METHOD_LABELS if got.get(m, 0) < 8}
        assert not missing, f"{ds} 4x: methods with fewer than 8 seeds: {missing}"


def test_readme_quotes_the_rendered_numbers():
    lines = U.readme_lines((RESULTS / "findings.md").read_text())
    assert lines, "findings.md has no 'scenes, 4x' section"
    readme = (ROOT / "README.md").read_text()
    missing = [ln for ln in lines if ln not in readme]
    assert not missing, f"README's Upscaling section lacks the rendered lines: {missing[:2]}"


# ------------------------------------------------------------------------------------ wording rules


def _runs(effects: dict[str, float | np.ndarray], *, n: int = 8, noise: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """A synthetic runs table: lanczos and methods whose PSNR differs from it by `effects` (+ paired noise)."""
    rng = np.random.default_rng(seed)
    base = 25 + rng.normal(0, 2, n)  # image-to-image spread, cancelled by pairing
    rows = []
    for method, effect in {"lanczos": 0.0, **effects}.items():
        for i in range(n):
            rows.append({"dataset": "textures", "factor": 4, "method": method, "image": i, "seed": i, "status": "ok",
                         "metric.psnr": base[i] + np.broadcast_to(effect, (n,))[i] + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def _verdicts(runs: pd.DataFrame) -> list[U.Comparison]:
    return [c for c in U.comparisons_from_table(U.comparisons_table(runs, n_boot=2000)) if c.metric == "metric.psnr"]


def test_an_interval_that_excludes_zero_says_better():
    (c,) = [c for c in _verdicts(_runs({"usdu": 1.0})) if c.kind == "vs_lanczos"]
    assert c.interval.lo > 0 and c.verdict == "better" and c.family_size == 1 and c.p_holm == c.interval.p < 0.05
    assert c.sentence().startswith("usdu is better than lanczos on PSNR: usdu - lanczos = +1.")
    assert "(n=8, paired expanded bootstrap over (image, seed), 95%; Holm p < 0.001 over 1)" in c.sentence()


def test_an_interval_below_zero_for_a_higher_is_better_metric_says_worse():
    (c,) = [c for c in _verdicts(_runs({"usdu": -1.0})) if c.kind == "vs_lanczos"]
    assert c.interval.hi < 0 and c.verdict == "worse" and c.sentence().startswith("usdu is worse than lanczos")


def test_an_interval_that_spans_zero_says_no_difference_shown_never_matches():
    swing = np.array([1.0, -1.0] * 4)  # differences of +-1 around 0: the interval must span zero
    (c,) = [c for c in _verdicts(_runs({"usdu": swing}, noise=0.0)) if c.kind == "vs_lanczos"]
    assert c.interval.lo < 0 < c.interval.hi and c.verdict == "no difference shown"
    assert "no difference shown" in c.sentence() and "match" not in c.sentence()


def test_fewer_than_six_pairs_decide_nothing_and_say_so():
    (c,) = [c for c in _verdicts(_runs({"usdu": 1.0}, n=4)) if c.kind == "vs_lanczos"]
    assert c.interval.lo > 0 and c.verdict == "no difference shown"
    assert "(fewer than 6 pairs decide nothing)" in c.sentence()


def _holm(p: list[float]) -> list[float]:
    """Holm's adjusted p-values written out (Holm 1979): i-th smallest times (m - i), running maximum, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def test_holm_adjusts_every_p_of_a_family_together():
    runs = _runs({"usdu": 2.0, "mixture": np.array([1.0, -1.0] * 4), "multidiffusion": 0.3}, noise=0.5)
    verdicts = _verdicts(runs)
    assert len({c.family_size for c in verdicts}) == 1 and verdicts[0].family_size == len(verdicts) >= 3
    assert [c.p_holm for c in verdicts] == pytest.approx(_holm([c.interval.p for c in verdicts]), rel=1e-12)
    by = {c.b: c for c in verdicts if c.kind == "vs_lanczos"}
    assert by["usdu"].verdict == "better" and by["mixture"].verdict == "no difference shown"
    assert f"over {len(verdicts)})" in by["usdu"].sentence()


def test_an_interval_that_excludes_zero_alone_says_no_difference_after_holm():
    """One 95% interval excludes zero, but its Holm p over a family of nulls is >= 0.05: no difference shown (after Holm)."""
    rng = np.random.default_rng(3)
    idx = pd.MultiIndex.from_arrays([range(8), range(8)], names=["image", "seed"])
    a = pd.Series(np.zeros(8), index=idx)
    for _ in range(500):
        pairs = [(a, a + rng.normal(0.0, 1.0, 8)) for _ in range(6)] + [(a, a + rng.normal(0.9, 1.0, 8))]
        out = U.holm_family(pairs, higher_is_better=True, n_boot=2000)
        iv, p_holm, v = out[-1]
        if iv.lo > 0 and p_holm >= 0.05:
            break
    else:
        pytest.skip("no borderline family drawn")
    assert v == "no difference shown"
    c = U.Comparison("textures", 4, "metric.psnr", "usdu", "lanczos", iv, p_holm, 7, v)
    assert "usdu vs lanczos on PSNR: no difference shown after Holm correction: " in c.sentence()


def _expanded(values: np.ndarray, level: float, n_boot: int = U.N_BOOT, seed: int = 0) -> tuple[float, float]:
    """The expanded percentile bootstrap interval of the mean, in plain NumPy / SciPy (Hesterberg 2015)."""
    n = len(values)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = values[idx].mean(axis=1)
    a = st.norm.cdf(-math.sqrt(n / (n - 1)) * st.t.ppf(1 - (1 - level) / 2, n - 1))
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def test_summary_intervals_are_the_expanded_bootstrap_with_n_and_method_beside_them():
    runs = _runs({"usdu": 0.5})
    s = U.summary_table(runs)
    row = s[(s["method"] == "usdu") & (s["column"] == "metric.psnr")].iloc[0]
    lo, hi = _expanded(runs[runs["method"] == "usdu"]["metric.psnr"].to_numpy(), 0.95)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((lo, hi), rel=1e-12)
    assert row["n"] == 8 and row["ci_method"] == "expanded bootstrap over (image, seed), 95%"


def test_paired_comparison_interval_is_the_expanded_bootstrap_of_the_differences():
    runs = _runs({"usdu": 0.5}, noise=0.3)
    (c,) = [c for c in _verdicts(runs) if c.kind == "vs_lanczos"]
    d = (runs[runs["method"] == "usdu"]["metric.psnr"].to_numpy() - runs[runs["method"] == "lanczos"]["metric.psnr"].to_numpy())
    lo, hi = _expanded(d, 0.95, n_boot=2000)
    assert (c.interval.lo, c.interval.hi) == pytest.approx((lo, hi), rel=1e-12)


def test_failed_runs_are_counted_not_averaged():
    runs = _runs({"usdu": 0.5})
    runs.loc[(runs["method"] == "usdu") & (runs["seed"] == 0), ["status", "metric.psnr"]] = ["error", np.nan]
    s = U.summary_table(runs)
    row = s[(s["method"] == "usdu") & (s["column"] == "metric.psnr")].iloc[0]
    assert row["n"] == 7 and row["failed"] == 1


def test_best_line_names_ties_instead_of_a_winner():
    runs = _runs({"usdu": 0.0}, noise=0.0)
    runs["metric.psnr"] = 30.0
    text = U.render_findings(U.summary_table(runs), U.comparisons_table(runs, n_boot=500))
    assert "best mean PSNR: 2 methods tied at 30.00 (lanczos, usdu)." in text


def test_notebook_renderer_gives_the_findings_sections_and_refuses_bad_placeholders():
    from mdtools.errors import ConfigError

    r = U.UpscaleRenderer(ROOT / "results")
    summary, comps = pd.read_csv(RESULTS / "summary.csv"), U.comparisons_from_table(pd.read_csv(RESULTS / "comparisons.csv"))
    assert r.render("{{ upscale scenes 4 part=lanczos }}") == "\n".join(U.lanczos_lines(comps, "scenes", 4))
    assert r.render("{{ upscale textures 4 }}") == "\n".join(U.best_lines(summary, comps, "textures", 4))
    for bad in ("{{ upscale scenes 4 part=everything }}", "{{ upscale scenes }}", "{{ upscale scenes 3 }}"):
        with pytest.raises(ConfigError):
            r.render(bad)
