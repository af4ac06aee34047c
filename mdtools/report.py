"""`mdtools report results/X`: a summary table and the standard plots of an experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import plots
from .errors import ConfigError

SUMMARY_COLUMNS = [
    "metric.seam_structure", "metric.seam_score", "metric.seam_score_lab", "metric.wrap_seam_score", "count.model_evaluations",
    "plan.n_views", "plan.redundancy", "time.denoise", "time.decode", "time.total", "peak_gb.total",
    "diag.disagreement_mean",
]


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


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std over seeds) of the main figures per swept setting; failed runs counted."""
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
        agg = agg.drop(columns=[c for c in agg.columns if c.endswith(".std") and agg[c].isna().all()])
    counts = df.groupby(by, dropna=False)["status"].value_counts().unstack(fill_value=0)
    return counts.join(agg, how="left").reset_index()


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
    written: list[Path] = []
    if not make_plots:
        return summary, written
    pdir = out_dir / "plots"
    pdir.mkdir(exist_ok=True)
    keys = set(swept_keys(df))
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
