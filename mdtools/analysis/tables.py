"""Table helpers of the analysis: a sweep's runs table, derived columns, method labels, summaries with intervals.

Each function takes a tidy DataFrame (a runs.parquet table, one row per run) and returns one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import stats
from ..errors import ConfigError
from ..methods import METHODS
from ..sweep.config import CONTROLS
from ..sweep.records import build_table
from .verdicts import MARGINS

SEAM = "metric.seam_structure"  # the structural seam score (docs/metrics.md)
EVALS = "count.model_evaluations"
#: How tables, plots and findings name a control's rows (records' `control` column, names of `sweep.config.CONTROLS`):
#: "diffusers default", "single window"; an ordinary run has control "" and is labelled by its method.
CONTROL_LABELS = {c: c.replace("_", " ") for c in CONTROLS}
DIFFUSERS_DEFAULT, SINGLE_WINDOW = CONTROLS  # the names, from the one choice list


def control_column(df: pd.DataFrame) -> pd.Series:
    """The `control` column with "" for ordinary runs (a table made before controls has no column: "" everywhere);
    ConfigError naming an unknown value."""
    c = df["control"].fillna("").astype(str) if "control" in df else pd.Series("", index=df.index, dtype=object)
    bad = sorted(set(c) - {"", *CONTROLS})
    if bad:
        raise ConfigError(f"control: unknown value(s) {bad}; use one of {['', *CONTROLS]}")
    return c


def has_controls(df: pd.DataFrame) -> bool:
    """Whether the table holds a control run (a `control` column with a non-empty value)."""
    return bool((control_column(df) != "").any())


def plain_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The experiment's ordinary runs: rows whose `control` is "" (every row of a table without the column)."""
    return df[control_column(df) == ""]


def missing_controls_note(df: pd.DataFrame, which: Sequence[str] = CONTROLS, where: str = "this table") -> str:
    """The sentence printed where a control is not in the results (ConfigError for a name not in CONTROLS)."""
    unknown = [w for w in which if w not in CONTROLS]
    if unknown:
        raise ConfigError(f"missing_controls_note: unknown control(s) {unknown}; use names of {list(CONTROLS)}")
    names = " and the ".join(CONTROL_LABELS[w] for w in which)
    c = control_column(df)
    why = "has no `control` column" if "control" not in df else "has no run with control = " + " or ".join(
        w for w in which if not (c == w).any())
    noun = "controls are" if len(which) > 1 else "control is"
    return (f"The {names} {noun} not in these results ({where} {why}); re-run the experiment with "
            f"`controls: [{', '.join(which)}]` to compare with them.")


def ok_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished runs only (failed runs are kept in the table but not plotted)."""
    return df[df["status"] == "ok"].copy() if "status" in df else df


def clean_timings(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose wall times were taken on a machine no busier than its cores (`prov.loaded` not True;
    tables made before the flag keep every row): the only rows time plots use."""
    return df[df["prov.loaded"].ne(True)].copy() if "prov.loaded" in df else df


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add megapixels, aspect (width / height), orientation and a peak-memory column."""
    df = df.copy()
    if {"plan.height", "plan.width"} <= set(df.columns):
        df["megapixels"] = df["plan.height"] * df["plan.width"] / 1e6
        df["aspect"] = df["plan.width"] / df["plan.height"]
        df["orientation"] = np.where(df["aspect"] > 1, "wide", np.where(df["aspect"] < 1, "tall", "square"))
    if "metric.disc_count" in df:
        # duplicated (or missing) suns: 1 disc is right; one_disc is the share of runs that got it right
        df["metric.disc_error"] = (df["metric.disc_count"] - 1).abs()
        df["metric.one_disc"] = (df["metric.disc_count"] == 1).astype(float).where(df["metric.disc_count"].notna())
    for phase in ("total", "denoise", "decode"):
        alloc, rss = f"mem.peak_allocated.{phase}", f"mem.peak_rss.{phase}"
        if alloc in df and df[alloc].notna().any():
            df[f"peak_gb.{phase}"] = df[alloc] / 2**30
        elif rss in df:
            df[f"peak_gb.{phase}"] = df[rss] / 2**30
    return df


COST = "cost.unet_equivalents"  # measured cost of a run in no-grad UNet evaluations (methods.base.Cost)


def method_label(row: pd.Series, extra: Sequence[str] = ()) -> str:
    """'multidiffusion(gaussian)', 'syncdiffusion(gaussian, sync_steps=3)': the method, its kernel when it
    fuses with the call's kernel, the method parameters the run set, and the `extra` columns
    (e.g. swept `sampler.steps`) as short key=value. A control run (`control` set) is labelled by its control
    alone ("diffusers default", "single window"; `CONTROL_LABELS`), never as the method it runs."""
    ctrl = row.get("control")
    if isinstance(ctrl, str) and ctrl:
        if ctrl not in CONTROL_LABELS:
            raise ConfigError(f"control: unknown value {ctrl!r}; use one of {['', *CONTROLS]}")
        return CONTROL_LABELS[ctrl]
    name = row.get("method.name")
    name = "multidiffusion" if name is None or (isinstance(name, float) and np.isnan(name)) else str(name)
    if str(row.get("global_pass.enabled")) == "True":
        name = "global_pass"
    params = []
    for k in sorted(row.index):
        if k.startswith("method.") and k not in ("method.name", "method.label"):
            v = row[k]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            params.append(f"{k[len('method.'):]}={_short(v)}")
    if name in METHODS and METHODS[name].kernel_from_call and "tiling.kernel" in row:
        params.insert(0, str(row["tiling.kernel"]))
    params += [f"{k.split('.')[-1]}={_short(row[k])}" for k in extra if k in row]
    return f"{name}({', '.join(params)})" if params else name


def _short(v: Any) -> Any:
    """2.0 -> 2 (integer parameters come back as floats from columns with gaps)."""
    return int(v) if isinstance(v, (float, np.floating)) and float(v).is_integer() else v


def with_method_label(df: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Add a `method.label` column (see `method_label`)."""
    df = df.copy()
    control_column(df)  # one clear error for an unknown control before labelling
    df["method.label"] = [method_label(r, extra) for _, r in df.iterrows()] if len(df) else []
    return df


def cost_column(df: pd.DataFrame) -> str:
    """The measured cost in UNet-forward equivalents when the table has it, else model evaluations."""
    return COST if COST in df and df[COST].notna().any() else EVALS


SUMMARY_COLUMNS = [
    "metric.seam_structure", "metric.seam_score", "metric.seam_score_lab", "metric.wrap_seam_score", "count.model_evaluations",
    "plan.n_views", "plan.redundancy", "time.denoise", "time.decode", "time.total", "peak_gb.total",
    "diag.disagreement_mean",
]
#: The main figures: these also get n (seeds with a value) and a bootstrap interval of the mean.
CI_COLUMNS = ["metric.seam_structure", "metric.seam_score", "metric.seam_score_lab", "metric.wrap_seam_score", "time.total",
              "peak_gb.total"]


def load_table(out_dir: str | Path) -> pd.DataFrame:
    """The experiment's runs.parquet (rebuilt from the records if missing)."""
    out_dir = Path(out_dir)
    p = out_dir / "runs.parquet"
    if not p.exists():
        if not (out_dir / "runs").is_dir():
            raise ConfigError(f"{out_dir} has no runs.parquet and no runs/; run `mdtools run EXPERIMENT.yaml` first")
        return build_table(out_dir)
    return pd.read_parquet(p)


def swept_keys(df: pd.DataFrame) -> list[str]:
    keys: set[str] = set()
    for s in df.get("swept", []):
        keys.update(json.loads(s))
    return sorted(keys)


def summarize(df: pd.DataFrame, *, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per swept setting: run counts per status, mean and std over seeds of the main figures, and for
    `CI_COLUMNS` `.n` (seeds with a value), `.ci_lo`, `.ci_hi` (`level` expanded bootstrap interval of the
    mean, `mdtools.stats.DEFAULT_METHOD`); the `ci_method` column names the interval."""
    df = with_derived(df)
    by = [k for k in swept_keys(df) if k != "seed" and k in df.columns] or ["config.model"]
    by = [b for b in by if b in df.columns]
    if has_controls(df):  # control runs are rows of their own, never pooled with the method they run
        df["control"] = control_column(df)
        by = [*(b for b in by if b != "control"), "control"]
    cols = [c for c in SUMMARY_COLUMNS if c in df.columns and df[c].notna().any()]
    ok = df[df["status"] == "ok"]
    if not by:
        return ok[cols].describe()
    agg = ok.groupby(by, dropna=False)[cols].agg(["mean", "std"]) if len(ok) else pd.DataFrame()
    if len(agg):
        agg.columns = [f"{c}.{s}" for c, s in agg.columns]
        ci = stats.summarize_groups(ok, by, [c for c in CI_COLUMNS if c in cols], level=level, n_boot=n_boot, seed=seed)
        order = []
        for c in cols:
            order.append(f"{c}.mean")
            part = ci[ci["column"] == c]
            if len(part):
                assert len(part) == len(agg), "summarize_groups and groupby disagree on the groups"
                # same groupby (sorted, NaN keys kept) on both sides, so rows line up by position
                for s in ("ci_lo", "ci_hi", "n"):
                    agg[f"{c}.{s}"] = part[s].to_numpy()
                order += [f"{c}.ci_lo", f"{c}.ci_hi", f"{c}.n"]
            if not agg[f"{c}.std"].isna().all():
                order.append(f"{c}.std")
        agg = agg[order]
    counts = df.groupby(by, dropna=False)["status"].value_counts().unstack(fill_value=0)
    if agg.empty:  # every run failed: the counts are the summary
        return counts.reset_index()
    out = counts.join(agg, how="left").reset_index()
    out["ci_method"] = stats.method_label(level=level)
    return out


#: Figures of the methods table: seams, coherence where measured, cost, time, peak memory.
METHOD_COLUMNS = ["metric.seam_structure", "metric.seam_score", "metric.intra_color", "metric.disc_count", "metric.one_disc",
                  "metric.horizon_continuity", "metric.sky_consistency", "metric.intra_lpips", "metric.intra_lpips_featnet",
                  "metric.intra_style_featnet", "cost.unet_equivalents",
                  "count.model_evaluations", "time.denoise", "time.total", "peak_gb.denoise", "peak_gb.sync"]


def label_extra(df: pd.DataFrame) -> list[str]:
    """Swept keys that distinguish settings of one method beyond its parameters (steps, overlap, ...):
    not the seed, the canvas or the method block itself."""
    return [k for k in swept_keys(df) if k in df and k not in ("seed", "control", "tiling.kernel")
            and not k.startswith(("method", "canvas."))]


def methods_table(df: pd.DataFrame, *, by: tuple[str, ...] = ("plan.height", "plan.width"), level: float = 0.95,
                  n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """One row per method setting and canvas: n seeds, runs failed, and per figure the mean with its
    interval (`<col>` and `<col>.ci`; `ci_method` names it: the expanded bootstrap, `mdtools.stats.DEFAULT_METHOD`)
    for seams, coherence metrics, measured cost (UNet-forward equivalents), time and peak memory
    (GB; `peak_gb.sync` is SyncDiffusion's gradient phase). Control runs are rows of their own ("diffusers default",
    "single window"; a `control` column names them when the table has controls)."""
    df = with_derived(df)
    df = df if "method.label" in df else with_method_label(df, label_extra(df))
    if has_controls(df):
        df["control"] = control_column(df)
        by = ("control", *by)
    if "mem.peak_allocated.sync" in df or "mem.peak_rss.sync" in df:
        alloc, rss = df.get("mem.peak_allocated.sync"), df.get("mem.peak_rss.sync")
        df["peak_gb.sync"] = (alloc if alloc is not None and alloc.notna().any() else rss) / 2**30
    ok = df[df["status"] == "ok"]
    keys = ["method.label", *[b for b in by if b in df]]
    cols = [c for c in METHOD_COLUMNS if c in ok and ok[c].notna().any()]
    rows = []
    for key, sub in ok.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["n"] = int(sub["seed"].nunique()) if "seed" in sub else len(sub)
        row["failed"] = int((df.loc[(df[keys] == pd.Series(key, index=keys)).all(axis=1), "status"] != "ok").sum())
        for c in cols:
            iv = stats.bootstrap_ci(sub[c].to_numpy(dtype=float), level=level, n_boot=n_boot, seed=seed)
            row[c] = iv.estimate
            row[f"{c}.ci"] = f"[{iv.lo:.3g}, {iv.hi:.3g}]" if iv.n >= 2 else "n < 2"
        row["ci_method"] = stats.method_label(level=level)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values([k for k in (*by[::-1], "method.label") if k in out], kind="stable").reset_index(drop=True)


def paired_vs(df: pd.DataFrame, reference: str, metric: str, *, higher_is_better: bool | None = None,
              by: tuple[str, ...] = ("plan.height", "plan.width"), margin: float = 0.0) -> pd.DataFrame:
    """Every method setting against `reference` (a `method.label`) on the same seeds (and prompts), per canvas:
    the mean per-seed difference (setting - reference) of `metric` with its 95% expanded bootstrap interval,
    the number of pairs, its p-value (`Interval.p`), the Holm-adjusted p over the table's rows (`p_holm`:
    the rows are one family) and the verdict (`mdtools.stats.verdict` with that p: better / worse / no
    difference shown). Lower is better unless `higher_is_better` (default: the metric's entry in
    `analysis.verdicts.MARGINS`, else lower)."""
    if higher_is_better is None:
        higher_is_better = MARGINS[metric].higher_is_better if metric in MARGINS else False
    df = df if metric in df else with_derived(df)
    df = df if "method.label" in df else with_method_label(df, label_extra(df))
    keep = [c for c in ("method.label", "status", "prompt", "seed", *by, metric) if c in df]
    ok = df.loc[(df["status"] == "ok") & df[metric].notna(), keep]
    rows, ivs = [], []
    keys = [b for b in by if b in ok]
    on = stats.pairing_keys(ok)
    for canvas, sub in ok.groupby(keys):
        ref = sub[sub["method.label"] == reference]
        if ref.empty:  # e.g. the single window's own canvas: nothing there to pair with
            continue
        for label, other in sub.groupby("method.label", sort=False):
            if label == reference:
                continue
            iv = stats.paired_difference(ref, other, on=on, value=metric)
            ivs.append(iv)
            rows.append({**dict(zip(keys, canvas if isinstance(canvas, tuple) else (canvas,))), "setting": label,
                         "diff": iv.estimate, "ci_lo": iv.lo, "ci_hi": iv.hi, "pairs": iv.n, "p": iv.p})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = stats.holm(out["p"].to_numpy())
    out["verdict"] = [stats.verdict(iv, higher_is_better=higher_is_better, margin=margin, p_adjusted=ph)
                      for iv, ph in zip(ivs, out["p_holm"])]
    out["ci_method"] = f"paired {stats.method_label()}; Holm over {len(out)}"
    return out
