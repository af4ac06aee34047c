"""Coherence analysis of notebook 07: one-disc rates, excess over the single window, the diffusers default, frontier, moonshot.

In full: exactly-one-disc rates, the excess over the single-window control, comparisons with the diffusers default,
the cost and redundancy frontier, and the moonshot answer.

Every function takes a runs table (results/<exp>/runs.parquet) and starts with `prepare`, which
adds one readable label per distinct setting (`setting_labels`: the one labelling of tables,
plots and findings), the canvas name, the redundancy and the disc rates. The controls follow the
helpers' contract: a column `control` = "diffusers_default" or "single_window" ("" or absent for
every other run); comparisons with a control are paired on (seed, prompt). Intervals: the
expanded bootstrap of `mdtools.stats`, n and method printed; verdicts: `analysis.verdicts`.
`CoherenceRenderer` adds the placeholders of notebooks/findings/07.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import stats
from ..errors import ConfigError
from ..methods import METHODS
from ..sweep.config import one_pass_evaluations
from .findings import Renderer, family
from .tables import CONTROL_LABELS, DIFFUSERS_DEFAULT, SINGLE_WINDOW, control_column, label_extra, load_table, missing_controls_note, with_derived
from .verdicts import Comparison, canvas_name, margin, short

#: The control names (records' `control` column, one choice list in sweep.config) and the labels tables print.
DEFAULT_LABEL, SINGLE_LABEL = CONTROL_LABELS[DIFFUSERS_DEFAULT], CONTROL_LABELS[SINGLE_WINDOW]
#: Metrics of the comparisons with the diffusers default (those a table lacks are left out and named).
DEFAULT_METRICS = ("metric.one_disc", "metric.seam_structure", "metric.horizon_breaks", "metric.sky_consistency",
                   "metric.intra_lpips_featnet", "metric.intra_style_featnet")
#: Metrics of the excess over the single-window control.
EXCESS_METRICS = ("metric.disc_count", "metric.one_disc")
#: The moonshot (issue 24 item 10): redundancy at most this, non-inferior to the default on seams and coherence.
MAX_REDUNDANCY = 1.25
MOONSHOT_METRICS = ("metric.seam_structure", "metric.one_disc")
#: How findings print each metric's differences (the default: ".2f").
FORMATS = {"metric.intra_lpips_featnet": ".3f", "metric.intra_style_featnet": ".2g"}
COST, EVALS, SEAM, ONE = "cost.unet_equivalents", "count.model_evaluations", "metric.seam_structure", "metric.one_disc"
_REDUNDANCY_COLUMNS = (EVALS, "plan.height", "plan.width", "plan.window_h", "plan.window_w", "sampler.steps", "sampler.guidance")


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == ""


def _short(v: object) -> object:
    return int(v) if isinstance(v, (float, np.floating)) and float(v).is_integer() else v


def _stage(name: str, params: dict[str, object]) -> tuple[str | None, dict[str, object]]:
    """A composed method's inner method (a parameter whose value names a registered method) and the rest."""
    inner = [k for k, v in params.items() if isinstance(v, str) and v in METHODS and k != "loss"]
    if name != "global_pass" or not inner:
        return None, params
    return str(params[inner[0]]), {k: v for k, v in params.items() if k != inner[0]}


def setting_labels(df: pd.DataFrame) -> pd.Series:
    """One readable label per distinct setting: "diffusers default", "single window",
    "multidiffusion ov=16", "global_pass(spotdiffusion, s=0.8) ov=0", "syncdiffusion(loss=lpips_featnet,
    sync_steps=5) ov=64". The kernel is named when the table's ordinary runs use several; swept keys that
    set more (e.g. `sampler.steps`) are appended as key=value."""
    ctrl = control_column(df)
    plain = df[ctrl == ""]
    several_kernels = "tiling.kernel" in plain and plain["tiling.kernel"].nunique() > 1
    extra = [k for k in label_extra(plain) if k not in ("tiling.overlap", "control")]
    out = []
    for (_, row), c in zip(df.iterrows(), ctrl):
        if c:
            out.append(CONTROL_LABELS[c])
            continue
        name = row.get("method.name")
        name = "multidiffusion" if _missing(name) else str(name)
        if str(row.get("global_pass.enabled")) == "True":
            name = "global_pass"
        params = {k[len("method."):]: _short(row[k]) for k in sorted(row.index)
                  if k.startswith("method.") and k not in ("method.name", "method.label") and not _missing(row[k])}
        inner, params = _stage(name, params)
        words = [inner] if inner else []
        if several_kernels and name in METHODS and METHODS[name].kernel_from_call:
            words.append(str(row["tiling.kernel"]))
        abbrev = {"strength": "s", "factor": "f"} if name == "global_pass" else {}
        words += [f"{abbrev.get(k, k)}={v}" for k, v in params.items()]
        label = f"{name}({', '.join(words)})" if words else name
        ov = row.get("tiling.overlap", row.get("plan.overlap_w"))
        if not _missing(ov):
            label += f" ov={_short(ov)}"
        label += "".join(f" {k.split('.')[-1]}={_short(row[k])}" for k in extra if not _missing(row.get(k)))
        out.append(label)
    return pd.Series(out, index=df.index, dtype=object)


def redundancy(df: pd.DataFrame) -> pd.Series:
    """Model evaluations of a run / the evaluations of one pass over non-overlapping windows covering its canvas
    (ceil(H / window_h) x ceil(W / window_w) windows x steps x 2 when guidance > 1, classifier-free guidance's
    two passes). Every evaluation counts: a global pass's low-res stage and every DemoFusion stage included."""
    miss = [c for c in _REDUNDANCY_COLUMNS if c not in df]
    if miss:
        raise ConfigError(f"redundancy: the table lacks {miss}; records of `mdtools run` carry {list(_REDUNDANCY_COLUMNS)}")
    one_pass = [one_pass_evaluations(int(h), int(w), (int(wh), int(ww)), int(s), float(g)) for h, w, wh, ww, s, g in
                zip(df["plan.height"], df["plan.width"], df["plan.window_h"], df["plan.window_w"], df["sampler.steps"],
                    df["sampler.guidance"])]
    return df[EVALS].astype(float) / pd.Series(one_pass, index=df.index, dtype=float)


def prepare(raw: pd.DataFrame) -> pd.DataFrame:
    """The ok runs with `control` ("" where absent), `setting` (`setting_labels`), `canvas` ('512x128'),
    `redundancy` (where the table has the counts), `metric.one_disc` / `metric.no_disc` / `metric.disc_error`
    (from `metric.disc_count`). ConfigError when a setting has two runs on one canvas, seed and prompt."""
    if "status" not in raw or "seed" not in raw:
        raise ConfigError(f"prepare: a runs table needs columns 'status' and 'seed'; it has {list(raw.columns)[:20]}")
    df = with_derived(raw[raw["status"] == "ok"])
    df["control"] = control_column(df)
    df["setting"] = setting_labels(df)
    df["canvas"] = [canvas_name(h, w) for h, w in zip(df["plan.height"], df["plan.width"])]
    if "metric.disc_count" in df:
        df["metric.no_disc"] = (df["metric.disc_count"] == 0).astype(float).where(df["metric.disc_count"].notna())
    if all(c in df for c in _REDUNDANCY_COLUMNS):
        df["redundancy"] = redundancy(df)
    keys = ["setting", "canvas", *pair_keys(df)]
    dup = df[df.duplicated(keys, keep=False)]
    if len(dup):
        raise ConfigError(f"setting labels collide: {sorted(dup['setting'].unique())[:4]} have several runs per {keys}; "
                          "give the settings a distinguishing swept key")
    return df


def pair_keys(df: pd.DataFrame) -> list[str]:
    """What runs are paired on: (seed, prompt), the prompt where the table has it."""
    return [k for k in ("prompt", "seed") if k in df]


def has_control(df: pd.DataFrame, which: str) -> bool:
    return bool((control_column(df) == which).any())


def missing_note(df: pd.DataFrame, which: str, exp: str = "this table") -> str:
    """The sentence a notebook prints where a control is not in the results (tables.missing_controls_note)."""
    return missing_controls_note(df, (which,), exp)


def ordered(t: pd.DataFrame) -> pd.DataFrame:
    """Rows by canvas (narrow first), the controls first, then settings by name."""
    if t.empty:
        return t
    w = t["canvas"].str.split("x").str[0].astype(int)
    first = t["setting"].map({SINGLE_LABEL: 0, DEFAULT_LABEL: 1}).fillna(2)
    return t.assign(_w=w, _f=first).sort_values(["_w", "_f", "setting"], kind="stable").drop(columns=["_w", "_f"]).reset_index(drop=True)


def _rate_row(sub: pd.DataFrame) -> dict[str, object]:
    iv = stats.bootstrap_ci(sub[ONE].to_numpy(dtype=float))
    wlo, whi = stats.wilson_interval(int((sub[ONE] == 1).sum()), iv.n)
    return {"n": iv.n, "one_disc": iv.estimate, "one_disc.lo": iv.lo, "one_disc.hi": iv.hi, "one_disc.wilson_lo": wlo,
            "one_disc.wilson_hi": whi,
            "no_disc": float(sub["metric.no_disc"].mean()), "disc_error": float(sub["metric.disc_error"].mean()),
            "disc_count": float(sub["metric.disc_count"].mean()), "ci_method": f"{iv.method}, 95%, over runs (seed x prompt)"}


def disc_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting and canvas: n runs, the exactly-one-disc rate with its interval (and, beside it, the Wilson
    interval of the proportion, which stays wide where every run agrees), the no-disc rate, the mean
    |disc_count - 1| (`disc_error`) and the mean disc_count."""
    if "metric.disc_count" not in df:
        raise ConfigError("disc_table: the table has no metric.disc_count; add disc_count to the experiment's metrics")
    rows = [{"setting": s, "canvas": c, **_rate_row(sub)}
            for (s, c), sub in df[df["metric.disc_count"].notna()].groupby(["setting", "canvas"], sort=False)]
    return ordered(pd.DataFrame(rows))


def _paired(ref: pd.DataFrame, other: pd.DataFrame, metric: str) -> stats.Interval:
    keys = pair_keys(other)
    try:
        return stats.paired_difference(ref[[*keys, metric]], other[[*keys, metric]], on=keys, value=metric)
    except ValueError as e:
        raise ConfigError(f"pairing on {keys} for {metric}: {e}") from e


def excess_table(df: pd.DataFrame, metrics: Sequence[str] = EXCESS_METRICS) -> pd.DataFrame:
    """Every setting (the diffusers default included) minus the single-window control, per canvas, paired on
    (seed, prompt): the mean difference with its interval, n pairs, p, Holm's p over the table's rows, the
    verdict against the control and its `reading` (more / fewer discs, higher / lower one-disc rate, or no
    difference shown). Empty when the table has no single-window runs."""
    if not has_control(df, SINGLE_WINDOW):
        return pd.DataFrame()
    single = df[df["control"] == SINGLE_WINDOW]
    rows, ivs = [], []
    for (s, c), sub in df[df["control"] != SINGLE_WINDOW].groupby(["setting", "canvas"], sort=False):
        for m in metrics:
            if m not in df:
                raise ConfigError(f"excess_table: no column {m!r}; use metrics from {[x for x in df if x.startswith('metric.')]}")
            iv = _paired(single, sub, m)
            ivs.append(iv)
            rows.append({"setting": s, "canvas": c, "metric": short(m), "excess": iv.estimate, "lo": iv.lo, "hi": iv.hi,
                         "n": iv.n, "p": iv.p})
    out = pd.DataFrame(rows)
    out["p_holm"] = stats.holm(out["p"].to_numpy())
    out["verdict"] = [stats.verdict(iv, higher_is_better=margin(f"metric.{m}").higher_is_better, p_adjusted=ph)
                      for iv, m, ph in zip(ivs, out["metric"], out["p_holm"])]
    raw = [stats.verdict(iv, higher_is_better=margin(f"metric.{m}").higher_is_better) for iv, m in zip(ivs, out["metric"])]
    out["reading"] = [_READING.get((m, v)) or (f"no difference shown from the {SINGLE_LABEL} after Holm correction (p_Holm {ph:.2g})"
                                                 if r != v else f"no difference shown from the {SINGLE_LABEL}")
                      for m, v, r, ph in zip(out["metric"], out["verdict"], raw, out["p_holm"])]
    out["ci_method"] = f"paired {stats.method_label()}; Holm over {len(out)}"
    return ordered(out)


#: The excess in words: a count is neither better nor worse when lower (no disc is a failure too), so it reads more / fewer.
_READING = {("disc_count", "worse"): f"more discs than the {SINGLE_LABEL}", ("disc_count", "better"): f"fewer discs than the {SINGLE_LABEL}",
            ("one_disc", "better"): f"higher one-disc rate than the {SINGLE_LABEL}",
            ("one_disc", "worse"): f"lower one-disc rate than the {SINGLE_LABEL}"}


def present(df: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The metrics the table measured (a column with a value)."""
    return [m for m in metrics if m in df and df[m].notna().any()]


def default_family(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[tuple[str, str, str], Comparison]:
    """Every setting against the diffusers default on every canvas, for the measured `metrics`, as one Holm
    family {(metric, setting, canvas): Comparison}; {} when the table has no diffusers-default run."""
    if not has_control(df, DIFFUSERS_DEFAULT):
        return {}
    d = df[df["control"] != SINGLE_WINDOW]
    return family(d.assign(**{"method.label": d["setting"]}), DEFAULT_LABEL, present(d, metrics))


def comparisons_table(fam: dict[tuple[str, str, str], Comparison]) -> pd.DataFrame:
    """A family as a table: metric, canvas, setting, diff with interval, n, Holm p, verdict, non-inferiority."""
    return pd.DataFrame([{"metric": short(c.metric), "canvas": c.canvas, "setting": c.setting, "diff": c.diff.estimate,
                          "lo": c.diff.lo, "hi": c.diff.hi, "n": c.diff.n, "p_holm": c.p_holm, "verdict": c.verdict,
                          "margin": margin(c.metric).value, "non_inferior": c.non_inferior,
                          "ci_method": f"{c.diff.method}, 95%; Holm over {c.family_size}"} for c in fam.values()])


def mean_table(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per setting and canvas: mean with its interval (over runs) of each measured metric."""
    ms = present(df, metrics)
    rows = []
    for (s, c), sub in df.groupby(["setting", "canvas"], sort=False):
        row: dict[str, object] = {"setting": s, "canvas": c}
        for m in ms:
            iv = stats.bootstrap_ci(sub[m].to_numpy(dtype=float))
            row.update({short(m): iv.estimate, f"{short(m)}.lo": iv.lo, f"{short(m)}.hi": iv.hi, f"{short(m)}.n": iv.n})
        row["ci_method"] = stats.method_label()
        rows.append(row)
    return ordered(pd.DataFrame(rows))


def frontier_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting and canvas (the single window left out: it is not a panorama): n, the mean cost
    (`cost.unet_equivalents`), the redundancy, and the one-disc rate and seam_structure with their intervals."""
    d = df[df["control"] != SINGLE_WINDOW]
    if COST not in d or "redundancy" not in d:
        raise ConfigError(f"frontier_table: the table needs {COST!r} and the counts of `redundancy` {list(_REDUNDANCY_COLUMNS)}")
    rows = []
    for (s, c), sub in d.groupby(["setting", "canvas"], sort=False):
        row: dict[str, object] = {"setting": s, "canvas": c, "n": len(sub), "cost": float(sub[COST].mean()),
                                  "redundancy": float(sub["redundancy"].max())}
        for m, k in ((ONE, "one_disc"), (SEAM, "seam")):
            iv = stats.bootstrap_ci(sub[m].to_numpy(dtype=float)) if m in sub else stats.Interval(math.nan, math.nan, math.nan, 0)
            row.update({k: iv.estimate, f"{k}.lo": iv.lo, f"{k}.hi": iv.hi})
        row["ci_method"] = stats.method_label()
        rows.append(row)
    return ordered(pd.DataFrame(rows))


def shortfall(c: Comparison) -> float:
    """How far the interval's bad-side end crosses the non-inferiority margin (<= 0: non-inferior; inf: fewer
    than `stats.MIN_PAIRS` pairs or no interval)."""
    if c.diff.n < stats.MIN_PAIRS or math.isnan(c.diff.lo):
        return math.inf
    m = margin(c.metric)
    return -m.value - c.diff.lo if m.higher_is_better else c.diff.hi - m.value


@dataclass(frozen=True)
class Candidate:
    """One setting at redundancy <= MAX_REDUNDANCY and its comparisons with the diffusers default."""

    setting: str
    canvas: str
    redundancy: float
    comparisons: tuple[Comparison, ...]

    @property
    def reached(self) -> bool:
        return all(c.non_inferior for c in self.comparisons) and len(self.comparisons) == len(MOONSHOT_METRICS)

    @property
    def worst(self) -> Comparison | None:
        """The comparison that misses its margin by most (None without comparisons)."""
        return max(self.comparisons, key=shortfall, default=None)

    @property
    def gap(self) -> float:
        """`shortfall` of the worst comparison (inf without comparisons)."""
        return math.inf if self.worst is None else shortfall(self.worst)


@dataclass(frozen=True)
class Moonshot:
    """The moonshot's answer on one canvas: the candidates, those that reach it, the closest."""

    canvas: str
    candidates: tuple[Candidate, ...]

    @property
    def reached(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.reached)

    @property
    def closest(self) -> Candidate | None:
        return min(self.candidates, key=lambda c: c.gap, default=None)

    def text(self) -> str:
        margins = " and ".join(f"{short(m)} (margin {margin(m).value:g})" for m in MOONSHOT_METRICS)
        head = f"On {self.canvas}, at redundancy <= {MAX_REDUNDANCY:g}, non-inferior to the {DEFAULT_LABEL} on {margins}"
        if not self.candidates:
            return f"{head}: no setting in these results has redundancy <= {MAX_REDUNDANCY:g}, so the moonshot is not tested."
        if self.reached:
            parts = [f"{c.setting} (redundancy {c.redundancy:.2f}: " + "; ".join(x.ni_text() for x in c.comparisons) + ")"
                     for c in self.reached]
            return f"{head}: reached by {len(self.reached)} of {len(self.candidates)} settings: " + "; ".join(parts) + "."
        c = self.closest
        assert c is not None
        w = c.worst
        if w is None:
            return f"{head}: not tested: the settings have no paired runs with the {DEFAULT_LABEL}."
        how = ("fewer pairs than a verdict needs" if math.isinf(c.gap)
               else f"its interval crosses the margin by {c.gap:.3g}")
        others = "".join(f"; {x.ni_text()}" for x in c.comparisons if x is not w)
        return (f"{head}: not reached by any of the {len(self.candidates)} settings. The closest is {c.setting} (redundancy "
                f"{c.redundancy:.2f}); it fails on {short(w.metric)}: {how} ({w.ni_text()}){others}.")


def moonshot(df: pd.DataFrame, fam: dict[tuple[str, str, str], Comparison] | None = None) -> list[Moonshot]:
    """Per canvas: every ordinary setting at redundancy <= MAX_REDUNDANCY, compared with the diffusers default on
    MOONSHOT_METRICS (from `fam`, else `default_family(df, MOONSHOT_METRICS)`). ConfigError without the default."""
    if not has_control(df, DIFFUSERS_DEFAULT):
        raise ConfigError(missing_note(df, DIFFUSERS_DEFAULT))
    if "redundancy" not in df:
        raise ConfigError(f"moonshot: the table lacks the counts of `redundancy` {list(_REDUNDANCY_COLUMNS)}")
    lack = [m for m in MOONSHOT_METRICS if m not in present(df, MOONSHOT_METRICS)]
    if lack:
        raise ConfigError(f"moonshot: the table has no {lack}; the experiment must measure {[short(m) for m in MOONSHOT_METRICS]}")
    fam = default_family(df, MOONSHOT_METRICS) if fam is None else fam
    out = []
    plain = df[df["control"] == ""]
    for canvas in sorted(df.loc[df["control"] == DIFFUSERS_DEFAULT, "canvas"].unique()):
        sub = plain[plain["canvas"] == canvas]
        r = sub.groupby("setting", sort=False)["redundancy"].max()
        cands = tuple(Candidate(s, canvas, float(v), tuple(fam[(m, s, canvas)] for m in MOONSHOT_METRICS if (m, s, canvas) in fam))
                      for s, v in r.items() if v <= MAX_REDUNDANCY)
        out.append(Moonshot(canvas, cands))
    return out


# ---- protocol metrics (results/<exp>/protocol.csv, written by analysis.protocol) ---------------------------------
_KID_LO, _KID_HI = ("kid_lo", "kid.lo", "kid.ci_lo", "ci_lo"), ("kid_hi", "kid.hi", "kid.ci_hi", "ci_hi")


def read_protocol(exp_dir: str | Path) -> pd.DataFrame | None:
    """results/<exp>/protocol.csv, or None when it is absent. ConfigError when it lacks a label, canvas or kid column."""
    p = Path(exp_dir) / "protocol.csv"
    if not p.is_file():
        return None
    t = pd.read_csv(p)
    miss = [c for c in ("canvas", "kid") if c not in t] + ([] if _label_col(t) else ["method label"])
    if miss:
        raise ConfigError(f"{p}: no column(s) {miss}; it has {list(t.columns)}")
    return t


def _label_col(t: pd.DataFrame) -> str | None:
    return next((c for c in ("method label", "method.label", "setting", "label", "method") if c in t), None)


def kid_lines(t: pd.DataFrame | None, where: str) -> str:
    """One Markdown bullet per protocol.csv row: 'label, canvas: KID k [lo, hi] (n=.., method)', or 'not measured'."""
    if t is None:
        return f"KID: not measured (no {where})."
    lab = _label_col(t)
    lo = next((c for c in _KID_LO if c in t), None)
    hi = next((c for c in _KID_HI if c in t), None)
    meth = next((c for c in ("ci_method", "kid_method", "interval_method", "method_ci") if c in t), None)
    out = []
    for d in t.to_dict("records"):
        iv = f" [{d[lo]:.3g}, {d[hi]:.3g}]" if lo and hi else (f" {d['kid interval']}" if "kid interval" in d else "")
        extra = ", ".join(x for x in (f"n={d['n']}" if "n" in d else "", str(d[meth]) if meth else "") if x)
        out.append(f"- {d[lab]}, {d['canvas']}: KID {d['kid']:.3g}{iv}" + (f" ({extra})" if extra else ""))
    return "\n".join(out)


# ---- findings placeholders (notebooks/findings/07.md) -------------------------------------------------------------
def _iv(est: float, lo: float, hi: float, fmt: str = ".2f") -> str:
    return f"{est:{fmt}}" if math.isnan(lo) else f"{est:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


class CoherenceRenderer(Renderer):
    """The placeholders of notebook 07: each renders a whole sentence or list, or says what is not in the results."""

    def __init__(self, results: str | Path):
        super().__init__(results)
        self._coh: dict[str, pd.DataFrame | None] = {}

    def coh(self, exp: str) -> pd.DataFrame | None:
        """`prepare` of results/<exp>, None when the experiment has no results."""
        if exp not in self._coh:
            d = self.results / exp
            self._coh[exp] = prepare(load_table(d)) if (d / "runs.parquet").is_file() or (d / "runs").is_dir() else None
        return self._coh[exp]

    def _need(self, exp: str) -> pd.DataFrame:
        d = self.coh(exp)
        if d is None:
            raise ConfigError(f"results/{exp} has no runs.parquet and no runs/")
        return d

    def f_values(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        """The distinct values of a column (settings the text names: model, steps, prompt), comma-separated."""
        exp, col = pos
        d = self._need(exp)
        if col not in d:
            raise ConfigError(f"values {exp} {col}: no column {col!r}")
        return ", ".join(str(_short(v)) for v in sorted(d[col].dropna().unique(), key=str))

    def f_discs(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        (exp,) = pos
        t = disc_table(self._need(exp))
        return "\n".join(f"- {r['setting']}, {r['canvas']}: exactly one disc {_iv(r['one_disc'], r['one_disc.lo'], r['one_disc.hi'])} "
                         f"(n={r['n']}, {r['ci_method']}; Wilson 95% [{r['one_disc.wilson_lo']:.2f}, {r['one_disc.wilson_hi']:.2f}]); "
                         f"no disc {r['no_disc']:.2f}; mean |count - 1| {r['disc_error']:.1f}; mean count {r['disc_count']:.1f}"
                         for r in t.to_dict("records"))

    def f_excess(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        (exp,) = pos
        d = self._need(exp)
        t = excess_table(d)
        if t.empty:
            return missing_note(d, SINGLE_WINDOW, f"results/{exp}")
        head = f"{len(t)} paired differences (setting minus the {SINGLE_LABEL}, on (seed, prompt)), Holm-corrected together:"
        lines = [f"- {r.setting}, {r.canvas}, {r.metric}: {r.reading}: {r.excess:+.2f} "
                 f"[{r.lo:.2f}, {r.hi:.2f}] (n={r.n}, {r.ci_method})" for r in t.itertuples(index=False)]
        return head + "\n\n" + "\n".join(lines)

    def f_vsdefault(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        name, exp = pos
        d = self._need(exp)
        fam = default_family(d)
        if not fam:
            return missing_note(d, DIFFUSERS_DEFAULT, f"results/{exp}")
        self.families[name] = fam
        ms = present(d[d["control"] != SINGLE_WINDOW], DEFAULT_METRICS)
        absent = [short(m) for m in DEFAULT_METRICS if m not in ms]
        head = (f"{len(fam)} paired comparisons (every setting against the {DEFAULT_LABEL}, on every canvas, for "
                f"{', '.join(short(m) for m in ms)}), Holm-corrected together"
                + (f"; not in these results: {', '.join(absent)}" if absent else "") + ":")
        rank = {m: i for i, m in enumerate(DEFAULT_METRICS)}
        cs = sorted(fam.values(), key=lambda c: (int(c.canvas.split("x")[0]), c.setting, rank[c.metric]))
        lines = [f"- {c.setting}, {c.canvas}: {c.text(FORMATS.get(c.metric, '.2f'))}; {c.ni_text().split(':', 1)[0]}" for c in cs]
        return head + "\n\n" + "\n".join(lines)

    def f_intra(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        (exp,) = pos
        d = self._need(exp)
        ms = ["metric.intra_lpips_featnet", "metric.intra_style_featnet"]
        if not present(d, ms):
            return f"Intra-LPIPS and Intra-Style: not in these results (results/{exp} has neither column)."
        t = mean_table(d, ms)
        out = []
        skipped = []
        for r in t.to_dict("records"):
            parts = [f"{short(m)} {_iv(r[short(m)], r[short(m) + '.lo'], r[short(m) + '.hi'], '.3g')} (n={r[short(m) + '.n']})"
                     for m in present(d, ms) if r[short(m) + ".n"]]
            if not parts:  # a canvas of one window has no pair of crops to compare
                skipped.append(f"{r['setting']} ({r['canvas']})")
                continue
            out.append(f"- {r['setting']}, {r['canvas']}: " + "; ".join(parts) + f" ({r['ci_method']})")
        if skipped:
            out.append(f"- not measured (one window: no two crops to compare): {', '.join(skipped)}")
        return "\n".join(out)

    def f_kid(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        (exp,) = pos
        return kid_lines(read_protocol(self.results / exp), f"results/{exp}/protocol.csv")

    def f_moonshot(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        (exp,) = pos
        d = self.coh(exp)
        if d is None:
            return f"Not answered yet: results/{exp} is not in these results (run experiments/{exp}.yaml)."
        if not has_control(d, DIFFUSERS_DEFAULT):
            return missing_note(d, DIFFUSERS_DEFAULT, f"results/{exp}")
        fam = default_family(d, MOONSHOT_METRICS)
        self.families[f"moonshot:{exp}"] = fam
        n = len(fam)
        return (f"({n} paired comparisons with the {DEFAULT_LABEL}, Holm-corrected together.) "
                + " ".join(m.text() for m in moonshot(d, fam)))
