"""mdtools.stats against a plain NumPy re-implementation of the same resampling, coverage, pairing, verdict rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mdtools import stats
from mdtools.stats import Interval, bootstrap_ci, non_inferior, paired_difference, summarize_groups, verdict


def reference_ci(x, *, stat=np.mean, level=0.95, n_boot=10_000, seed=0, expanded=True):
    """The documented scheme written out with a Python loop: one index draw, one statistic per row,
    np.percentile of the statistics; the expanded tail from Hesterberg's formula."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = np.array([stat(x[row]) for row in idx])
    a = (1 - level) / 2
    if expanded:
        from scipy.stats import norm, t

        a = norm.cdf(-math.sqrt(n / (n - 1)) * t.ppf(1 - a, n - 1))
    lo, hi = np.percentile(boot, [100 * a, 100 * (1 - a)])
    return stat(x), lo, hi


@pytest.mark.parametrize("n", [2, 3, 8, 25])
@pytest.mark.parametrize("method", ["percentile", "expanded"])
def test_bootstrap_ci_equals_numpy_reference(n, method):
    x = np.random.default_rng(n).lognormal(size=n)
    iv = bootstrap_ci(x, seed=7, method=method)
    est, lo, hi = reference_ci(x, seed=7, expanded=method == "expanded")
    np.testing.assert_allclose([iv.estimate, iv.lo, iv.hi], [est, lo, hi], rtol=1e-12, atol=0)
    assert iv.n == n and iv.level == 0.95 and method in iv.method
    assert iv.lo < iv.estimate < iv.hi


def test_median_and_level_follow_the_reference():
    x = np.random.default_rng(1).normal(size=9)
    iv = bootstrap_ci(x, stat="median", level=0.8, n_boot=3000, seed=3)
    np.testing.assert_allclose([iv.estimate, iv.lo, iv.hi],
                               reference_ci(x, stat=np.median, level=0.8, n_boot=3000, seed=3), rtol=1e-12)
    iv_q = bootstrap_ci(x, stat=lambda v, axis: np.quantile(v, 0.25, axis=axis), n_boot=2000, seed=3)
    np.testing.assert_allclose([iv_q.estimate, iv_q.lo, iv_q.hi],
                               reference_ci(x, stat=lambda v: np.quantile(v, 0.25), n_boot=2000, seed=3), rtol=1e-12)


def test_chunked_resampling_gives_the_same_numbers(monkeypatch):
    x = np.random.default_rng(2).normal(size=40)
    whole = bootstrap_ci(x, n_boot=5000)
    monkeypatch.setattr(stats, "_CHUNK", 333)  # forces 5000 / 8 = 625 draws of 8 rows
    assert bootstrap_ci(x, n_boot=5000) == whole


def test_deterministic_given_seed():
    x = np.random.default_rng(3).normal(size=6)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5).lo != bootstrap_ci(x, seed=6).lo


def test_nans_are_dropped_and_counted():
    x = [1.0, np.nan, 2.0, 4.0, np.nan, 3.0]
    iv = bootstrap_ci(x)
    assert (iv.n, iv.n_dropped) == (4, 2) and "2 NaN dropped" in iv.note
    np.testing.assert_allclose([iv.estimate, iv.lo, iv.hi], reference_ci([1.0, 2.0, 4.0, 3.0]), rtol=1e-12)


@pytest.mark.parametrize("values, n", [([2.5], 1), ([np.nan, 2.5], 1), ([], 0), ([np.nan], 0)])
def test_fewer_than_two_values_give_no_interval(values, n):
    iv = bootstrap_ci(values)
    assert iv.n == n and math.isnan(iv.lo) and math.isnan(iv.hi)
    assert (iv.estimate == 2.5) if n else math.isnan(iv.estimate)
    assert "no interval from fewer than 2" in iv.note or "no values" in iv.note
    assert verdict(iv, higher_is_better=True, min_n=1) == "no difference shown"
    assert "no interval" in f"{iv}"


@pytest.mark.parametrize("kw", [{"level": 1.0}, {"level": 0}, {"n_boot": 10}, {"method": "bca"}, {"stat": "mode"}])
def test_bad_arguments_name_a_valid_value(kw):
    with pytest.raises(ValueError, match="use"):
        bootstrap_ci([1.0, 2.0, 3.0], **kw)


def coverage(n, method, trials=400, n_boot=2000):
    """Share of 95% intervals of N(3, 2) samples of size n that contain the mean 3 (fixed data seed)."""
    rng = np.random.default_rng(123)
    hits = 0
    for t in range(trials):
        iv = bootstrap_ci(rng.normal(3.0, 2.0, size=n), n_boot=n_boot, seed=t, method=method)
        hits += iv.lo <= 3.0 <= iv.hi
    return hits / trials


def test_coverage_is_near_the_level():
    # 400 trials: binomial sd 1.1 points at 95%; the percentile interval runs ~1 point narrow at n = 30
    assert 0.91 <= coverage(30, "percentile") <= 0.98
    assert 0.92 <= coverage(8, "expanded") <= 0.98


def test_small_n_undercovers_which_is_why_verdicts_need_min_pairs():
    assert coverage(3, "percentile", trials=300) < 0.85  # ~0.75: the interval cannot reach past the data
    assert stats.MIN_PAIRS >= 6  # 2^(1-n) < 5% from n = 6: unanimity by chance is then rarer than the level


# ---- paired differences ------------------------------------------------------------------------

def test_paired_difference_uses_common_seeds_only():
    a = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 9.0], index=[0, 1, 2, 3, 4, 7])
    b = pd.Series([1.5, 2.0, 3.9, np.nan, 5.2, 6.1, 8.0], index=[0, 1, 2, 3, 4, 5, 6])
    iv = paired_difference(a, b, seed=2)
    d = np.array([0.5, 0.0, 0.9, 0.2])  # seeds 0, 1, 2, 4
    np.testing.assert_allclose([iv.estimate, iv.lo, iv.hi], reference_ci(d, seed=2), rtol=1e-12)
    assert (iv.n, iv.n_dropped) == (4, 4)  # 7 only in a; 5, 6 only in b; 3 NaN in b
    assert "only in a: [7]" in iv.note and "only in b: [5, 6]" in iv.note and "1 seed(s) with a NaN" in iv.note
    assert "paired" in iv.method


def test_paired_difference_ignores_row_order_and_accepts_tables():
    rng = np.random.default_rng(4)
    seeds = np.arange(10)
    va, vb = rng.normal(size=10), rng.normal(size=10)
    a = pd.DataFrame({"seed": seeds, "v": va})
    b = pd.DataFrame({"seed": seeds[::-1], "v": vb[::-1]})
    from_tables = paired_difference(a, b, value="v")
    assert from_tables == paired_difference(pd.Series(va, seeds), pd.Series(vb, seeds)[::-1])
    np.testing.assert_allclose([from_tables.lo, from_tables.hi], reference_ci(vb - va)[1:], rtol=1e-12)
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference(pd.concat([a, a]), b, value="v")
    with pytest.raises(ValueError, match="value="):
        paired_difference(a, b)


def test_pairing_separates_what_seed_spread_hides():
    # a large seed effect shared by both settings, b better by 0.1 on every seed
    seed_effect = np.random.default_rng(5).normal(0, 1.0, size=8)
    noise = np.random.default_rng(6).normal(0, 0.02, size=8)
    a = pd.Series(5 + seed_effect)
    b = pd.Series(5 + seed_effect - 0.1 + noise)
    ia, ib = bootstrap_ci(a), bootstrap_ci(b)
    assert ia.lo < ib.hi and ib.lo < ia.hi  # the unpaired intervals overlap
    d = paired_difference(a, b)
    assert d.hi < 0 and verdict(d, higher_is_better=False) == "better"


# ---- verdict rules -----------------------------------------------------------------------------

def iv(lo, hi, n=8):
    return Interval((lo + hi) / 2, lo, hi, n)


@pytest.mark.parametrize("lo, hi, higher, margin, expected", [
    (0.1, 0.5, True, 0.0, "better"),
    (0.1, 0.5, False, 0.0, "worse"),
    (-0.5, -0.1, False, 0.0, "better"),
    (-0.5, -0.1, True, 0.0, "worse"),
    (-0.1, 0.5, True, 0.0, "no difference shown"),   # straddles 0
    (0.0, 0.5, True, 0.0, "no difference shown"),    # touches 0: not the whole interval on the good side
    (0.1, 0.5, True, 0.2, "no difference shown"),    # better, but not by the margin
    (0.3, 0.5, True, 0.2, "better"),
    (-0.5, -0.3, True, 0.2, "worse"),
])
def test_verdict_rule(lo, hi, higher, margin, expected):
    assert verdict(iv(lo, hi), higher_is_better=higher, margin=margin) == expected


def test_verdict_needs_min_pairs_and_finite_ends():
    assert verdict(iv(0.1, 0.5, n=stats.MIN_PAIRS - 1), higher_is_better=True) == "no difference shown"
    assert verdict(iv(0.1, 0.5, n=3), higher_is_better=True, min_n=3) == "better"
    assert verdict(Interval(0.3, math.nan, math.nan, 8), higher_is_better=True) == "no difference shown"
    with pytest.raises(ValueError, match="margin"):
        verdict(iv(0.1, 0.5), higher_is_better=True, margin=-1)


@pytest.mark.parametrize("lo, hi, higher, expected", [
    (-0.05, 0.3, True, "as good as (within margin 0.1)"),   # may be worse by 0.05 <= 0.1
    (-0.15, 0.3, True, "not shown to be as good"),          # may be worse by 0.15
    (-0.3, 0.08, False, "as good as (within margin 0.1)"),  # lower is better: bad end is hi = 0.08
    (-0.3, 0.12, False, "not shown to be as good"),
    (-0.1, 0.0, True, "as good as (within margin 0.1)"),    # bad end exactly at the margin
])
def test_non_inferiority_rule(lo, hi, higher, expected):
    assert non_inferior(iv(lo, hi), 0.1, higher) == expected


def test_non_inferiority_needs_min_pairs():
    assert non_inferior(iv(-0.01, 0.01, n=3), 0.1, True) == "not shown to be as good"
    assert non_inferior(iv(-0.01, 0.01, n=3), 0.1, True, min_n=3) == "as good as (within margin 0.1)"


def test_interval_format_and_shift():
    i = Interval(1.234, 1.0, 1.5, 7)
    assert f"{i:.2f}" == "1.23 [1.00, 1.50] (n=7, expanded bootstrap)"
    assert f"{Interval(0.56, 0.41, 0.70, 6, level=0.9, method='paired percentile bootstrap')}" == (
        "0.56 [0.41, 0.7] (n=6, 0.9 paired percentile bootstrap)")
    s = i.shifted(1.2)
    np.testing.assert_allclose([s.estimate, s.lo, s.hi], [0.034, -0.2, 0.3])
    assert s.n == 7


# ---- group summaries ---------------------------------------------------------------------------

def test_summarize_groups_equals_bootstrap_ci_per_group():
    rng = np.random.default_rng(8)
    df = pd.DataFrame({"k": np.repeat(["a", "b", "c"], [5, 5, 3]), "o": np.tile([0, 1], 7)[:13],
                       "x": rng.normal(size=13), "y": rng.normal(size=13)})
    df.loc[2, "y"] = np.nan
    out = summarize_groups(df, ["k"], ["x", "y"], n_boot=4000, seed=1)
    assert list(out.columns) == ["k", "column", "n", "mean", "ci_lo", "ci_hi", "ci_method"] and len(out) == 6
    assert set(out["ci_method"]) == {"expanded bootstrap, 95%"}
    for _, r in out.iterrows():
        ref = bootstrap_ci(df.loc[df["k"] == r["k"], r["column"]], n_boot=4000, seed=1)
        assert r["n"] == ref.n
        np.testing.assert_allclose([r["mean"], r["ci_lo"], r["ci_hi"]], [ref.estimate, ref.lo, ref.hi], rtol=1e-12)
    assert out.set_index(["k", "column"]).loc[("a", "y"), "n"] == 4
    two = summarize_groups(df, ["k", "o"], "x", n_boot=1000)
    assert len(two) == df.groupby(["k", "o"]).ngroups
    single = two[two["n"] == 1]
    assert len(single) and single["ci_lo"].isna().all() and single["mean"].notna().all()


# ---- claims: verdicts follow the intervals ------------------------------------------------------

from mdtools.analysis import article_claims as claims  # noqa: E402


def kernel_table(seam, seeds, *, evals=None, spread=0.05, seed_effect=0.2):
    """An overlap_kernel / frontier-like table: seam[(kernel, overlap)] = true mean; per seed a shared
    offset (the seed's content) plus small independent noise; toy geometry (128 px window)."""
    rng = np.random.default_rng(0)
    shift = dict(zip(seeds, rng.normal(0, seed_effect, size=len(seeds))))
    rows = []
    for (k, o), m in seam.items():
        for s in seeds:
            rows.append({"status": "ok", "tiling.kernel": k, "tiling.overlap": o, "seed": s, "plan.view_w": 16, "plan.scale": 8,
                         claims.SEAM: m + shift[s] + rng.normal(0, spread),
                         claims.EVALS: (evals or {}).get((k, o), 600 + 30 * o)})
    return pd.DataFrame(rows)


KERNELS_OK = {(k, o): 6.0 if o == 0 else {"uniform": 1.6, "gaussian": 1.2, "cosine": 1.1}[k]
              for k in ("uniform", "gaussian", "cosine") for o in (0, 16, 32, 64)}


def test_c2_holds_with_enough_seeds_and_is_not_shown_with_three():
    v = claims.claim_c2(kernel_table(KERNELS_OK, range(8)))
    assert v.verdict == "holds"
    assert "gaussian -0.40 [" in v.evidence and "(n=8, paired expanded bootstrap)" in v.evidence and v.numbers["minus_uniform"]["cosine"]["hi"] < 0
    few = claims.claim_c2(kernel_table(KERNELS_OK, range(3)))
    assert few.verdict.startswith("not shown: only 3 seeds (verdicts need 6)") and few.verdict.endswith("alone say: holds")


def test_c2_does_not_hold_when_a_centre_kernel_is_worse_and_drops_unpaired_seeds():
    seam = {**KERNELS_OK, **{("gaussian", o): 2.0 for o in (16, 32, 64)}}
    df = kernel_table(seam, range(9))
    df = df[~((df["tiling.kernel"] == "uniform") & (df["seed"] == 8))]  # seed 8 has no uniform partner
    v = claims.claim_c2(df)
    assert v.verdict == "does not hold: gaussian leave stronger seams than uniform averaging"
    assert v.numbers["minus_uniform"]["gaussian"]["n"] == 8 and "only in b: [8]" in v.evidence


def test_c2_noise_is_no_difference():
    seam = {**KERNELS_OK, **{(k, o): 1.6 for k in ("gaussian", "cosine") for o in (16, 32, 64)}}
    v = claims.claim_c2(kernel_table(seam, range(10), spread=0.2))
    assert v.verdict == "not shown: no difference to uniform averaging shown"


def test_c1_rules():
    base = {("gaussian", o): m for o, m in {0: 6.0, 16: 1.05, 32: 1.05, 48: 1.05, 64: 1.05}.items()}
    v = claims.claim_c1(kernel_table(base, range(8), spread=0.02, seed_effect=0.02))
    assert v.verdict.startswith("holds: seams below 1/16 window, 16 px (1/8 window) is seamless") and "margin of 0.1" in v.verdict
    gains = claims.claim_c1(kernel_table({**base, ("gaussian", 64): 0.8}, range(8), spread=0.02, seed_effect=0.02))
    assert gains.verdict.startswith("does not hold: overlaps above 1/4 of the window still reduce seams (64 px - 16 px: -0.2")
    unsure = claims.claim_c1(kernel_table({**base, ("gaussian", 64): 0.93}, range(8), spread=0.2, seed_effect=0.02))
    assert "not shown" in unsure.verdict and "16 px as good as 48 px" in unsure.verdict


FRONTIER_EVALS = {("uniform", 112): 9000, ("cosine", 64): 840, ("gaussian", 64): 840, ("cosine", 96): 2600, ("uniform", 96): 2600,
                  ("gaussian", 112): 9000}


@pytest.mark.parametrize("cheap, expected", [
    (1.00, "holds: cosine at 64 px overlap (840 evaluations, 0.093x) is as good as the default within the margin of 0.1"),
    (1.60, "does not hold: every plan that costs at most 0.333 of the default's 9000 evaluations leaves stronger seams"),
    (1.12, "not shown: no plan that costs at most 0.333"),
])
def test_frontier_claim(cheap, expected):
    seam = {("uniform", 112): 1.0, ("gaussian", 112): 1.0, **{k: cheap for k in FRONTIER_EVALS if k[1] < 112}}
    v = claims.claim_frontier(kernel_table(seam, range(10), evals=FRONTIER_EVALS, spread=0.02))
    assert v.verdict.startswith(expected)
    assert "Bonferroni over 4" in v.evidence and v.numbers["level"] == pytest.approx(1 - 0.05 / 4)
    assert "gaussian 112" not in v.evidence  # as expensive as the default: not a candidate


def c6_table(effect, seeds=range(8)):
    rng = np.random.default_rng(1)
    rows = [{"status": "ok", "prompt": p, "global_pass.enabled": on, "seed": s, claims.EVALS: 700 if on else 1000,
             "metric.intra_color": 3.0 + s * 0.3 - (effect[p] if on else 0) + rng.normal(0, 0.05)}
            for p in effect for on in (False, True) for s in seeds]
    return pd.DataFrame(rows)


def test_c6_rules():
    assert claims.claim_c6(c6_table({"brick": 0.5, "stars": 0.5})).verdict == "holds"
    assert claims.claim_c6(c6_table({"brick": -0.5, "stars": 0.5})).verdict == "does not hold: the global pass makes brick less consistent"
    assert claims.claim_c6(c6_table({"brick": 0.0, "stars": 0.5})).verdict.startswith("holds only for some content: stars")
    assert claims.claim_c6(c6_table({"brick": 0.5, "stars": 0.5}, seeds=range(4))).verdict.startswith("not shown: only 4 seeds")


def test_committed_tables_give_intervals_with_n():
    v = claims.all_verdicts(claims.Path(__file__).resolve().parents[1] / "results").set_index("claim")
    for c in ("C1", "C2", "C5", "C6", "frontier"):
        if c in v.index:
            assert "(n=" in v.loc[c, "evidence"] and "bootstrap" in v.loc[c, "evidence"], c


# ---- p-values that invert the intervals, and Holm's correction ---------------------------------

def test_p_value_is_the_t_test_on_the_bootstrap_standard_error():
    from scipy import stats as st

    rng = np.random.default_rng(11)
    for t in range(8):
        n = int(rng.integers(6, 12))
        a = pd.Series(rng.normal(size=n), index=range(n))
        b = a + rng.normal(0.5 * rng.normal(), 0.5, size=n)
        iv = paired_difference(a, b, n_boot=20_000, seed=t)
        d = (b - a).to_numpy()
        # the bootstrap SE of a mean tends to s * sqrt((n - 1) / n) / sqrt(n), so p tends to the paired t test's
        assert iv.p == pytest.approx(st.ttest_1samp(d, 0.0).pvalue, rel=0.08, abs=2e-3)
        # exact formula on the same bootstrap statistics
        boot = stats._boot_rows(d[None, :], "mean", 20_000, t)[0]  # paired_difference resamples d in seed order
        ref = 2 * st.t.sf(abs(d.mean()) / (boot.std() * math.sqrt(n / (n - 1))), n - 1)
        assert stats.p_value(boot, d.mean(), n) == pytest.approx(ref, rel=1e-12)


def test_p_value_edge_cases():
    assert stats.p_value(np.array([0.3, 0.3, 0.3]), 0.3, 8) == 0.0
    assert stats.p_value(np.zeros(5), 0.0, 8) == 1.0
    assert math.isnan(stats.p_value(np.array([1.0]), 1.0, 8))
    assert math.isnan(bootstrap_ci([1.0]).p)


def holm_reference(p, alpha=0.05):
    """Holm (1979) as published: reject H_(1), H_(2), ... while p_(i) <= alpha / (m - i + 1); stop at the first that is not."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    reject = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] < alpha / (len(p) - rank):
            reject[i] = True
        else:
            break
    return reject


def test_holm_adjusted_p_values():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.2, np.nan, 0.01])
    assert math.isnan(out[1]) and out[[0, 2]].tolist() == pytest.approx([0.2, 0.02])
    rng = np.random.default_rng(3)
    for _ in range(300):
        p = rng.uniform(0, 0.08, size=int(rng.integers(1, 12))) ** rng.uniform(0.5, 2)
        assert list(stats.holm(p) < 0.05) == holm_reference(list(p))


def test_verdict_needs_the_holm_adjusted_p():
    d = Interval(-0.3, -0.5, -0.1, 8)
    assert verdict(d, higher_is_better=False) == "better"
    assert verdict(d, higher_is_better=False, p_adjusted=0.01) == "better"
    assert verdict(d, higher_is_better=False, p_adjusted=0.08) == "no difference shown"
