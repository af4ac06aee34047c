"""Seed statistics that can tell settings apart: bootstrap intervals, paired differences, verdicts, Holm.

The policy (docs/statistics.md): every interval is the expanded percentile bootstrap
(`DEFAULT_METHOD`, about 94% coverage at n = 6 where the plain percentile one has 87%), printed
with its n and its method; comparisons are paired on seed and prompt; a family of comparisons
is corrected with Holm's step-down (`holm`) on the p-values of the same intervals
(`Interval.p`), and a difference is called only where the interval excludes 0 as well.

Every experiment repeats each setting over a few seeds. A finding is a number with its count
of seeds and a 95% interval; two settings are compared on the *same* seeds (paired:
the seed fixes the initial noise, so a per-seed difference cancels what the seed alone does),
and a difference whose interval contains 0 is "no difference shown", never a win.

Resampling scheme (tests rebuild it in plain NumPy): `numpy.random.default_rng(seed)`
draws `integers(0, n, size=(n_boot, n))` once (row by row in chunks, which yields the same
stream); row b resamples the n values (or the n per-seed differences: pairs stay together)
and gives one bootstrap statistic; the interval is `numpy.quantile` (linear) of those
statistics at `alpha/2` and `1 - alpha/2`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence, Union

import numpy as np
import pandas as pd

#: Verdicts need at least this many values (seeds, or pairs of seeds). With fewer, all of
#: them agree in sign by chance with probability 2^(1-n) >= 1/16 (no effect, symmetric noise),
#: and no bootstrap interval keeps its level, since none reaches past the data: on normal
#: samples the 95% percentile interval covers the mean about 50% of the time at n = 2, 75% at
#: n = 3 and 87% at n = 6; the expanded one 94% at n = 6 (simulated, 400 samples each;
#: tests/test_stats.py checks n = 3 and the level at larger n).
MIN_PAIRS = 6
METHODS = ("percentile", "expanded")
#: The interval of every summary, table, plot, notebook and claim (the policy: docs/statistics.md).
DEFAULT_METHOD = "expanded"
#: The family-wise error rate of a corrected family of comparisons (`holm`).
ALPHA = 0.05
_CHUNK = 1 << 22  # resampled values held at once (32 MB of float64): bounds memory for large n

Stat = Union[str, Callable[..., np.ndarray]]  # 'mean', 'median' or f(array, axis=-1)


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval.

    `n` values went in after `n_dropped` were left out (NaNs, or seeds without a partner);
    `note` says which and, when `lo` / `hi` are NaN, why. `p`: the two-sided p-value of
    "the statistic is 0" on the scale this interval's method is built on (`p_value`: for the
    expanded interval, Student's t with the bootstrap's standard error; NaN without an interval). Formatting prints n and the method:
    "0.56 [0.41, 0.7] (n=6, expanded bootstrap)".
    """

    estimate: float
    lo: float
    hi: float
    n: int
    level: float = 0.95
    method: str = "expanded bootstrap"
    n_dropped: int = 0
    note: str = ""
    p: float = field(default=math.nan, compare=False)

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        if math.isnan(self.lo):
            return f"{self.estimate:{spec}} (n={self.n}, no interval)"
        level = "" if self.level == 0.95 else f"{self.level:.3g} "
        return f"{self.estimate:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}] (n={self.n}, {level}{self.method})"

    def __str__(self) -> str:
        return format(self)

    def shifted(self, by: float) -> Interval:
        """The same interval minus `by` (compare a value with a threshold through `verdict`)."""
        return replace(self, estimate=self.estimate - by, lo=self.lo - by, hi=self.hi - by)


def _stat_fn(stat: Stat) -> Callable[[np.ndarray], np.ndarray]:
    """A function reducing the last axis."""
    if callable(stat):
        return lambda x: np.asarray(stat(x, axis=-1))
    if stat == "mean":
        return lambda x: x.mean(axis=-1)
    if stat == "median":
        return lambda x: np.median(x, axis=-1)
    raise ValueError(f"stat={stat!r}: use 'mean', 'median' or a callable f(array, axis=-1)")


def _check(level: float, n_boot: int, method: str) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level={level}: use a fraction in (0, 1), e.g. 0.95")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: use at least 100 resamples (10_000 for reported intervals)")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {METHODS}")


@functools.lru_cache(maxsize=4096)
def tail_probability(n: int, level: float, method: str) -> float:
    """The quantile level `a` of the lower end (upper: `1 - a`).

    "percentile": a = (1 - level) / 2. "expanded" (the expanded percentile interval of Hesterberg 2015,
    "What teachers should know about the bootstrap", The American Statistician 69(4)): a = Phi(-sqrt(n / (n - 1)) * t_{n-1, (1 + level) / 2}), which
    widens the percentile interval by the factors a t interval has over a normal one (small-n
    narrowness bias and Student's t), so that it keeps its level from about 6 values on.
    """
    alpha = (1 - level) / 2
    if method == "percentile" or n < 2:
        return alpha
    from scipy import stats as st  # scipy comes with scikit-image; only this method needs it

    return float(st.norm.cdf(-math.sqrt(n / (n - 1)) * st.t.ppf(1 - alpha, n - 1)))


def p_value(boot: np.ndarray, estimate: float, n: int, method: str = DEFAULT_METHOD) -> float:
    """Two-sided p-value of "the statistic is 0" on the scale the interval of `method` is built on.

    The expanded interval is the bootstrap's version of Student's t interval (its tails are
    t_{n-1} quantiles widened by sqrt(n / (n - 1)), `tail_probability`); its p-value is the t
    test's: t = estimate / (sd(boot) * sqrt(n / (n - 1))) on n - 1 degrees of freedom, where
    sd(boot) * sqrt(n / (n - 1)) is the bootstrap's estimate of the usual s / sqrt(n). For the
    percentile interval: the normal z = estimate / sd(boot). Unlike counting bootstrap statistics
    beyond 0, this reaches below 1 / n_boot and past the data's range, which Holm's correction
    over tens of comparisons needs (at n = 6, every resample of six same-sign differences has
    that sign, which would read as p = 0). A zero spread gives 0 (estimate != 0) or 1.
    """
    b = np.asarray(boot, dtype=float)
    if len(b) < 2 or n < 2 or math.isnan(estimate):
        return math.nan
    sd = float(b.std())
    if sd == 0 or not math.isfinite(sd):
        return 1.0 if estimate == 0 else 0.0
    from scipy import stats as st

    if method == "percentile":
        return float(2 * st.norm.sf(abs(estimate) / sd))
    return float(2 * st.t.sf(abs(estimate) / (sd * math.sqrt(n / (n - 1))), n - 1))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple
    test procedure"): sort the m p-values, multiply the i-th smallest (i = 0, 1, ...) by m - i,
    keep the running maximum, cap at 1. Rejecting where the adjusted p < ALPHA keeps the chance
    of any false "differs" in the family at most ALPHA. NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def _boot_rows(x: np.ndarray, stat: Stat, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap statistics of each row of x (rows: groups of equal size n), shape (rows, n_boot).

    All rows share one index draw (same seed, same n), so each row gets exactly the numbers
    `bootstrap_ci` gives it alone.
    """
    rows, n = x.shape
    fn = _stat_fn(stat)
    rng = np.random.default_rng(seed)
    out = np.empty((rows, n_boot))
    step = max(1, _CHUNK // max(1, n * rows))
    for b0 in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - b0), n))
        out[:, b0:b0 + len(idx)] = fn(x[:, idx])
    return out


def _interval(values: np.ndarray, boot: np.ndarray | None, stat: Stat, level: float, method: str,
              n_dropped: int, note: str) -> Interval:
    n = len(values)
    label = f"{method} bootstrap"
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level, label, n_dropped, _join(note, "no values"))
    est = float(_stat_fn(stat)(values[None, :])[0])
    if n < 2 or boot is None:
        return Interval(est, math.nan, math.nan, n, level, label, n_dropped, _join(note, f"n={n}: no interval from fewer than 2 values"))
    a = tail_probability(n, level, method)
    lo, hi = np.quantile(boot, [a, 1 - a])
    return Interval(est, float(lo), float(hi), n, level, label, n_dropped, note, p_value(boot, est, n, method))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def bootstrap_ci(values: Sequence[float] | np.ndarray | pd.Series, *, stat: Stat = "mean", level: float = 0.95,
                 n_boot: int = 10_000, seed: int = 0, method: str = DEFAULT_METHOD) -> Interval:
    """Bootstrap interval of `stat` over `values` (the module docstring gives the resampling).

    NaNs are dropped and counted in `n_dropped`. Fewer than 2 values give lo = hi = NaN and
    the reason in `note`. Deterministic given `seed`. `method="expanded"` widens the quantile
    levels for small n (`tail_probability`).
    """
    _check(level, n_boot, method)
    x = np.asarray(values, dtype=float).ravel()
    keep = ~np.isnan(x)
    dropped = int((~keep).sum())
    x = x[keep]
    note = f"{dropped} NaN dropped" if dropped else ""
    boot = _boot_rows(x[None, :], stat, n_boot, seed)[0] if len(x) >= 2 else None
    return _interval(x, boot, stat, level, method, dropped, note)


def _per_key(x: pd.Series | pd.DataFrame, on: str | Sequence[str], value: str | None, name: str) -> pd.Series:
    if isinstance(x, pd.DataFrame):
        if value is None:
            raise ValueError(f"{name} is a DataFrame: name the column to compare with value=")
        keys = [on] if isinstance(on, str) else list(on)
        missing = [c for c in [*keys, value] if c not in x.columns]
        if missing:
            raise ValueError(f"{name} has no column(s) {missing}; it has {list(x.columns)[:12]}")
        if x.duplicated(keys).any():
            raise ValueError(f"{name} has several rows per {keys}; aggregate them first (pairs must be one value per seed)")
        x = x.set_index(keys)[value]
    elif not isinstance(x, pd.Series):
        raise TypeError(f"{name}: pass a Series indexed by seed, or a DataFrame with value=")
    if not x.index.is_unique:
        raise ValueError(f"{name} has several values per seed; aggregate them first (pairs must be one value per seed)")
    return x.astype(float)


def pairing_keys(df: pd.DataFrame) -> list[str]:
    """The columns runs of two settings are paired on: the seed, and the prompt when a table has several."""
    return [c for c in ("prompt", "seed") if c in df and (c == "seed" or df[c].nunique() > 1)]


def paired_difference(a: pd.Series | pd.DataFrame, b: pd.Series | pd.DataFrame, *, on: str | Sequence[str] = "seed",
                      value: str | None = None, stat: Stat = "mean", level: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0, method: str = DEFAULT_METHOD) -> Interval:
    """`stat` of the per-seed difference b - a, with its bootstrap interval over seeds (pairs resampled).

    `a`, `b`: one value per seed of two settings, either Series indexed by seed or DataFrames
    with columns `on` (the pairing key, one or more columns) and `value`. Only seeds both have
    (and where neither is NaN) are compared; the others are counted in `n_dropped` and named in
    `note`. Same rules as `bootstrap_ci` otherwise.
    """
    _check(level, n_boot, method)
    sa, sb = _per_key(a, on, value, "a"), _per_key(b, on, value, "b")
    both = sa.index.intersection(sb.index)
    # sorted so that the resampled order, hence the interval, does not depend on row order
    common = both[sa.loc[both].notna().to_numpy() & sb.loc[both].notna().to_numpy()].sort_values()
    only_a, only_b = (sorted((_plain(k) for k in x.index.difference(y.index)), key=str) for x, y in ((sa, sb), (sb, sa)))
    n_nan = len(both) - len(common)
    dropped = len(only_a) + len(only_b) + n_nan
    notes = []
    if only_a or only_b:
        notes.append(f"dropped {len(only_a) + len(only_b)} seed(s) without a pair (only in a: {only_a}, only in b: {only_b})")
    if n_nan:
        notes.append(f"dropped {n_nan} seed(s) with a NaN value")
    d = (sb.loc[common] - sa.loc[common]).to_numpy(dtype=float)
    boot = _boot_rows(d[None, :], stat, n_boot, seed)[0] if len(d) >= 2 else None
    iv = _interval(d, boot, stat, level, method, dropped, _join(*notes))
    return replace(iv, method=f"paired {iv.method}")


def _plain(k: object) -> object:
    """A NumPy scalar as a Python one (notes print 3, not np.int64(3))."""
    return k.item() if isinstance(k, np.generic) else k


def _oriented(iv: Interval, higher_is_better: bool) -> tuple[float, float]:
    """(bad-side end, good-side end) of the interval, in units where larger is better."""
    return (iv.lo, iv.hi) if higher_is_better else (-iv.hi, -iv.lo)


def _decides(iv: Interval, min_n: int) -> bool:
    return iv.n >= min_n and not (math.isnan(iv.lo) or math.isnan(iv.hi))


def verdict(diff_interval: Interval, *, higher_is_better: bool, margin: float = 0.0, min_n: int = MIN_PAIRS,
            p_adjusted: float | None = None) -> str:
    """"better", "worse" or "no difference shown" for the interval of a difference (b - a: is b better than a?).

    Rule: "better" only when the whole interval lies on the good side of `margin` (margin 0:
    every value in it says b is better); "worse" only when it lies wholly on the bad side of
    `-margin`; anything else, NaN ends or fewer than `min_n` values (`MIN_PAIRS`) is
    "no difference shown". With `p_adjusted` (the comparison's p-value after `holm` over its
    family), a difference also needs p_adjusted < ALPHA.
    """
    if margin < 0:
        raise ValueError(f"margin={margin}: use a size >= 0 in the metric's unit")
    if not _decides(diff_interval, min_n) or (p_adjusted is not None and not p_adjusted < ALPHA):
        return "no difference shown"
    bad, good = _oriented(diff_interval, higher_is_better)
    if bad > margin:
        return "better"
    if good < -margin:
        return "worse"
    return "no difference shown"


def non_inferior(diff_interval: Interval, margin: float, higher_is_better: bool, *, min_n: int = MIN_PAIRS) -> str:
    """"as good as (within margin M)" or "not shown to be as good" for the interval of b - a.

    Rule: b is as good as a when the interval's bad-side end is within `margin` of 0 (b may be
    worse by at most `margin`, in the metric's unit). NaN ends or fewer than `min_n` values
    show nothing.
    """
    if margin < 0:
        raise ValueError(f"margin={margin}: use a size >= 0 in the metric's unit")
    if _decides(diff_interval, min_n) and _oriented(diff_interval, higher_is_better)[0] >= -margin:
        return f"as good as (within margin {margin:g})"
    return "not shown to be as good"


def summarize_groups(df: pd.DataFrame, by: str | Sequence[str], cols: str | Sequence[str], *, level: float = 0.95,
                     n_boot: int = 10_000, seed: int = 0, method: str = DEFAULT_METHOD) -> pd.DataFrame:
    """Per group of `by` and per column of `cols`: n (non-NaN values), mean, ci_lo, ci_hi, ci_method.

    Tidy output, one row per (group, column): the `by` columns, then column, n, mean, ci_lo,
    ci_hi, ci_method ("expanded bootstrap, 95%"). Each interval equals `bootstrap_ci` of that group's values with the same arguments;
    groups of equal size are resampled together (one draw, vectorised).
    """
    _check(level, n_boot, method)
    by = [by] if isinstance(by, str) else list(by)
    cols = [cols] if isinstance(cols, str) else list(cols)
    missing = [c for c in by + cols if c not in df.columns]
    if missing:
        raise ValueError(f"no column(s) {missing} in the table")
    keys, values = [], []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        for c in cols:
            v = sub[c].to_numpy(dtype=float)
            keys.append((*key, c))
            values.append(v[~np.isnan(v)])
    rows: list[tuple[float, float, float]] = [(math.nan, math.nan, math.nan)] * len(values)
    by_n: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        by_n.setdefault(len(v), []).append(i)
    for n, idx in by_n.items():
        if n == 0:
            continue
        mean = np.stack([values[i] for i in idx]).mean(axis=1)
        if n < 2:
            rows_n = [(m, math.nan, math.nan) for m in mean]
        else:
            boot = _boot_rows(np.stack([values[i] for i in idx]), "mean", n_boot, seed)
            a = tail_probability(n, level, method)
            q = np.quantile(boot, [a, 1 - a], axis=1)
            rows_n = list(zip(mean, q[0], q[1]))
        for i, r in zip(idx, rows_n):
            rows[i] = tuple(float(t) for t in r)  # type: ignore[assignment]
    out = pd.DataFrame(keys, columns=[*by, "column"])
    if out.empty:
        return out.assign(n=pd.Series(dtype=int), mean=pd.Series(dtype=float), ci_lo=pd.Series(dtype=float),
                          ci_hi=pd.Series(dtype=float), ci_method=pd.Series(dtype=str))
    out["n"] = [len(v) for v in values]
    out[["mean", "ci_lo", "ci_hi"]] = pd.DataFrame(rows, index=out.index)
    out["ci_method"] = method_label(method, level)
    return out


def method_label(method: str = DEFAULT_METHOD, level: float = 0.95) -> str:
    """The words tables and figures print for an interval: "expanded bootstrap, 95%"."""
    return f"{method} bootstrap, {level:.0%}"


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n, 95 % by default (sound at 0 % and 100 %, unlike k/n +- 2 se).

    (nan, nan) when n <= 0. `z` is the normal quantile of the level (1.96 for 95 %).
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
