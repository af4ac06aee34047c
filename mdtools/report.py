"""`mdtools report results/X`: a summary table and the standard plots of an experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import plots, stats
from .errors import ConfigError

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
        from .runner import build_table

        return build_table(out_dir)
    return pd.read_parquet(p)


def swept_keys(df: pd.DataFrame) -> list[str]:
    keys: set[str] = set()
    for s in df.get("swept", []):
        keys.update(json.loads(s))
    return sorted(keys)


def summarize(df: pd.DataFrame, *, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per swept setting: run counts per status, mean and std over seeds of the main figures, and for
    `CI_COLUMNS` `.n` (seeds with a value), `.ci_lo`, `.ci_hi` (`level` percentile bootstrap of the mean)."""
    df = plots.with_derived(df)
    by = [k for k in swept_keys(df) if k != "seed" and k in df.columns] or ["config.model"]
    by = [b for b in by if b in df.columns]
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
    return counts.join(agg, how="left").reset_index()


#: Figures of the methods table: seams, coherence where measured, cost, time, peak memory.
METHOD_COLUMNS = ["metric.seam_structure", "metric.seam_score", "metric.intra_color", "metric.disc_count", "metric.one_disc",
                  "metric.horizon_continuity", "metric.sky_consistency", "metric.intra_lpips", "metric.intra_lpips_featnet",
                  "metric.intra_style_featnet", "cost.unet_equivalents",
                  "count.model_evaluations", "time.denoise", "time.total", "peak_gb.denoise", "peak_gb.sync"]


def label_extra(df: pd.DataFrame) -> list[str]:
    """Swept keys that distinguish settings of one method beyond its parameters (steps, overlap, ...):
    not the seed, the canvas or the method block itself."""
    return [k for k in swept_keys(df) if k in df and k != "seed" and not k.startswith(("method", "canvas."))
            and k != "tiling.kernel"]


def methods_table(df: pd.DataFrame, *, by: tuple[str, ...] = ("plan.height", "plan.width"), level: float = 0.95,
                  n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """One row per method setting and canvas: n seeds, runs failed, and per figure the mean with its
    bootstrap interval (`<col>` and `<col>.ci`) for seams, coherence metrics, measured cost
    (UNet-forward equivalents), time and peak memory (GB; `peak_gb.sync` is SyncDiffusion's gradient phase)."""
    df = plots.with_derived(df)
    df = df if "method.label" in df else plots.with_method_label(df, label_extra(df))
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
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values([k for k in (*by[::-1], "method.label") if k in out], kind="stable").reset_index(drop=True)


def paired_vs(df: pd.DataFrame, reference: str, metric: str, *, higher_is_better: bool = False,
              by: tuple[str, ...] = ("plan.height", "plan.width"), margin: float = 0.0) -> pd.DataFrame:
    """Every method setting against `reference` (a `method.label`) on the same seeds (and prompts), per canvas:
    the mean per-seed difference (setting - reference) of `metric` with its 95% bootstrap interval,
    the number of pairs and the verdict (`mdtools.stats.verdict`: better / worse / no difference shown;
    lower is better unless `higher_is_better`)."""
    df = plots.with_derived(df)
    df = df if "method.label" in df else plots.with_method_label(df, label_extra(df))
    ok = df[(df["status"] == "ok") & df[metric].notna()]
    rows = []
    keys = [b for b in by if b in ok]
    on = stats.pairing_keys(ok)
    for canvas, sub in ok.groupby(keys):
        ref = sub[sub["method.label"] == reference]
        for label, other in sub.groupby("method.label", sort=False):
            if label == reference:
                continue
            iv = stats.paired_difference(ref, other, on=on, value=metric)
            rows.append({**dict(zip(keys, canvas if isinstance(canvas, tuple) else (canvas,))), "setting": label,
                         "diff": iv.estimate, "ci_lo": iv.lo, "ci_hi": iv.hi, "pairs": iv.n,
                         "verdict": stats.verdict(iv, higher_is_better=higher_is_better, margin=margin)})
    return pd.DataFrame(rows)


def report(out_dir: str | Path, *, make_plots: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """Write summary.csv and the plots that fit what was swept; return (summary, plot paths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    df = load_table(out_dir)
    if df.empty:
        raise ConfigError(f"{out_dir}: no runs recorded yet")
    summary = summarize(df)
    summary.to_csv(out_dir / "summary.csv", index=False)
    keys = set(swept_keys(df))
    several_methods = "method.name" in df and (df["method.name"].nunique() > 1 or any(k.startswith("method") for k in keys))
    if several_methods:
        methods_table(df).to_csv(out_dir / "methods.csv", index=False)
    written: list[Path] = []
    if not make_plots:
        return summary, written
    pdir = out_dir / "plots"
    pdir.mkdir(exist_ok=True)
    ok = df[df["status"] == "ok"]
    todo = []
    # the headline seam score, or the step score when an experiment did not compute it
    seam = next((c for c in (plots.SEAM, "metric.seam_score") if c in ok and ok[c].notna().any()), None)
    if "tiling.overlap" in keys and seam is not None:
        todo += [("seam_vs_overlap", lambda d: plots.seam_vs_overlap(d, metric=seam)),
                 ("cost_vs_overlap", plots.cost_vs_overlap), ("frontier", lambda d: plots.frontier(d, metric=seam))]
    if keys & {"canvas.height", "canvas.width", "canvas.megapixels"}:
        todo.append(("memory_time_vs_size", plots.memory_time_vs_size))
    if keys & {"canvas.aspect"} or ({"canvas.height", "canvas.width"} <= keys):
        todo.append(("cost_vs_aspect", plots.cost_vs_aspect))
    if several_methods:
        lab = plots.with_method_label(plots.with_derived(df), label_extra(df))
        lab = lab[lab["status"] == "ok"]
        todo.append(("methods", lambda d: plots.methods_bars(lab)))
        for (h, w), sub in lab.groupby(["plan.height", "plan.width"]):
            todo.append((f"frontier_methods_{w}x{h}", lambda d, sub=sub: plots.frontier(sub, metric=seam or plots.SEAM)))
            if "preview" in sub and sub["preview"].notna().any() and (out_dir / "images").is_dir():
                todo.append((f"method_images_{w}x{h}", lambda d, sub=sub: plots.method_images(sub, out_dir / "images",
                                                                                              metric=seam or plots.SEAM)))
    if "diag.disagreement_trace" in ok and (ok["diag.disagreement_trace"] != "[]").any():
        todo.append(("disagreement_per_step", plots.disagreement_per_step))
    if "preview" in ok and ok["preview"].notna().any() and (out_dir / "images").is_dir():
        todo.append(("seam_crops", lambda d: plots.seam_crops(d, out_dir / "images")))
    for name, fn in todo:
        if ok.empty:
            break
        fig = fn(ok)
        path = pdir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return summary, written
