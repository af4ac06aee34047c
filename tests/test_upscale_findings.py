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
    assert c.interval.lo > 0 and c.verdict == "better" and c.level == pytest.approx(0.95)
    assert c.sentence().startswith("usdu is better than lanczos on PSNR: usdu - lanczos = +1.")
    assert "(n=8, paired expanded percentile bootstrap over (image, seed), 95%)" in c.sentence()


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


def test_holm_step_down_levels():
    """A strong effect is rejected at 1 - alpha/m; the null one is then read at 1 - alpha/(m - 1) and spans zero."""
    runs = _runs({"usdu": 2.0, "mixture": np.array([1.0, -1.0] * 4)}, noise=0.1)
    verdicts = _verdicts(runs)
    by = {c.b: c for c in verdicts if c.kind == "vs_lanczos"}
    m = by["usdu"].family_size
    rejected = sum(c.verdict != "no difference shown" for c in verdicts)
    assert m == len(verdicts) and 1 <= rejected < m
    assert by["usdu"].verdict == "better" and by["usdu"].level == pytest.approx(1 - 0.05 / m)
    assert by["mixture"].verdict == "no difference shown" and by["mixture"].level == pytest.approx(1 - 0.05 / (m - rejected))
    assert by["mixture"].interval.lo < 0 < by["mixture"].interval.hi
    assert f"Holm level of {m}" in by["usdu"].sentence()


def test_holm_stops_where_the_95_percent_interval_alone_would_call_it():
    """Two comparisons: one 95% interval excludes zero on its own but not at the Holm level 97.5% -> no difference shown."""
    rng = np.random.default_rng(3)
    for _ in range(200):  # find a sample whose 95% interval just excludes 0 and whose 97.5% one does not
        d = rng.normal(0.35, 0.5, 8)
        lo95 = _expanded(d, 0.95)[0]
        lo975 = _expanded(d, 0.975)[0]
        if lo95 > 0 > lo975:
            break
    else:
        pytest.skip("no borderline sample drawn")
    a = pd.Series(np.zeros(8), index=pd.MultiIndex.from_arrays([range(8), range(8)], names=["image", "seed"]))
    b = a + d
    null = a + rng.normal(0, 5, 8)
    out = U.holm_intervals([(a, b), (a, null)], higher_is_better=True, n_boot=U.N_BOOT)
    assert [v for _, _, v in out] == ["no difference shown", "no difference shown"]
    assert out[0][1] == pytest.approx(0.975)


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
    assert row["n"] == 8 and row["interval"] == U.INTERVAL_NAME and row["level"] == 0.95


def test_paired_comparison_interval_is_the_expanded_bootstrap_of_the_differences():
    runs = _runs({"usdu": 0.5}, noise=0.3)
    (c,) = [c for c in _verdicts(runs) if c.kind == "vs_lanczos"]
    d = (runs[runs["method"] == "usdu"]["metric.psnr"].to_numpy() - runs[runs["method"] == "lanczos"]["metric.psnr"].to_numpy())
    lo, hi = _expanded(d, c.level, n_boot=2000)
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
