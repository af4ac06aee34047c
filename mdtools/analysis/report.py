"""`mdtools report results/X`: a summary table and the standard plots of an experiment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from . import plots
from .tables import EVALS, control_column, label_extra, load_table, methods_table, summarize, swept_keys, with_derived, with_method_label

#: What the "methods" figure of a coherence experiment shows (docs/metrics.md): suns, horizon, sky, Intra-LPIPS / -Style.
COHERENCE_FIGURES = ("metric.disc_error", "metric.one_disc", "metric.horizon_continuity", "metric.sky_consistency",
                     "metric.intra_lpips_featnet", "metric.intra_style_featnet")


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
        lab = with_method_label(with_derived(df), label_extra(df))
        lab = lab[lab["status"] == "ok"]
        # a coherence experiment's figure shows its coherence metrics (and the count-based cost), a methods one its seams
        coherence = [c for c in COHERENCE_FIGURES if c in lab and lab[c].notna().any()]
        figures = [*coherence, EVALS] if coherence else [plots.SEAM, plots.COST, "time.denoise"]
        todo.append(("methods", lambda d: plots.methods_bars(lab, metrics=figures)))
        for (h, w), sub in lab.groupby(["plan.height", "plan.width"]):
            if not (control_column(sub) == "").any():  # a control's own canvas (the single window): no methods to compare
                continue
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
