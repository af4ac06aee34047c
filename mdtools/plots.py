"""Standard plots. Each function takes a tidy DataFrame (a runs.parquet table, one row per
run) and returns a matplotlib Figure; notebooks only load tables and call these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

SEAM = "metric.seam_structure"  # the structural seam score (docs/metrics.md)
EVALS = "count.model_evaluations"


def ok_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished runs only (failed runs are kept in the table but not plotted)."""
    return df[df["status"] == "ok"].copy() if "status" in df else df


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add megapixels, aspect (width / height), orientation and a peak-memory column."""
    df = df.copy()
    if {"plan.height", "plan.width"} <= set(df.columns):
        df["megapixels"] = df["plan.height"] * df["plan.width"] / 1e6
        df["aspect"] = df["plan.width"] / df["plan.height"]
        df["orientation"] = np.where(df["aspect"] > 1, "wide", np.where(df["aspect"] < 1, "tall", "square"))
    for phase in ("total", "denoise", "decode"):
        alloc, rss = f"mem.peak_allocated.{phase}", f"mem.peak_rss.{phase}"
        if alloc in df and df[alloc].notna().any():
            df[f"peak_gb.{phase}"] = df[alloc] / 2**30
        elif rss in df:
            df[f"peak_gb.{phase}"] = df[rss] / 2**30
    return df


def _mean_std(df: pd.DataFrame, by: list[str], y: str) -> pd.DataFrame:
    g = df.groupby(by, dropna=False)[y]
    return g.agg(["mean", "std", "count"]).reset_index()


def seam_vs_overlap(df: pd.DataFrame, *, metric: str = SEAM, ax: Any = None) -> plt.Figure:
    """Seam score against overlap, one line per kernel, mean +- std over seeds."""
    df = ok_runs(df)
    fig, ax = _fig(ax)
    for kernel, sub in df.groupby("tiling.kernel"):
        s = _mean_std(sub, ["tiling.overlap"], metric).sort_values("tiling.overlap")
        ax.errorbar(s["tiling.overlap"], s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=kernel)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="overlap (px)", ylabel=f"{metric.split('.')[-1]} (1 = no seam)", title="Seam strength vs overlap")
    ax.legend(title="kernel")
    return fig


def cost_vs_overlap(df: pd.DataFrame) -> plt.Figure:
    """Denoising time and model evaluations against overlap."""
    df = ok_runs(df)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kernel, sub in df.groupby("tiling.kernel"):
        s = _mean_std(sub, ["tiling.overlap"], "time.denoise").sort_values("tiling.overlap")
        a1.errorbar(s["tiling.overlap"], s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=kernel)
    e = df.groupby("tiling.overlap")[EVALS].mean()
    a2.plot(e.index, e.values, marker="o", color="k")
    a1.set(xlabel="overlap (px)", ylabel="denoising time (s)", title="Time vs overlap")
    a2.set(xlabel="overlap (px)", ylabel="model evaluations", title="Evaluations vs overlap")
    a1.legend(title="kernel")
    fig.tight_layout()
    return fig


def memory_time_vs_size(df: pd.DataFrame) -> plt.Figure:
    """Peak memory per phase and time against canvas size (megapixels)."""
    df = with_derived(ok_runs(df))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    s = df.groupby("megapixels").mean(numeric_only=True).reset_index()
    for phase in ("denoise", "decode", "total"):
        col = f"peak_gb.{phase}"
        if col in s:
            a1.plot(s["megapixels"], s[col], marker="o", label=phase)
    for phase in ("denoise", "decode", "total"):
        col = f"time.{phase}"
        if col in s:
            a2.plot(s["megapixels"], s[col], marker="o", label=phase)
    a1.set(xlabel="canvas (megapixels)", ylabel="peak memory (GiB)", title="Peak memory vs canvas size")
    a2.set(xlabel="canvas (megapixels)", ylabel="time (s)", title="Time vs canvas size")
    a1.legend(title="phase")
    a2.legend(title="phase")
    fig.tight_layout()
    return fig


def cost_vs_aspect(df: pd.DataFrame) -> plt.Figure:
    """Model evaluations and redundancy against aspect ratio (log scale), wide vs tall."""
    df = with_derived(ok_runs(df))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    s = df.groupby("aspect").mean(numeric_only=True).reset_index().sort_values("aspect")
    a1.plot(s["aspect"], s[EVALS], marker="o")
    a2.plot(s["aspect"], s["plan.redundancy"], marker="o")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.axvline(1.0, color="grey", lw=0.8, ls="--")
    a1.set(xlabel="aspect (width / height)", ylabel="model evaluations", title="Cost vs aspect ratio")
    a2.set(xlabel="aspect (width / height)", ylabel="redundancy (view area / canvas)",
           title="Redundancy vs aspect ratio")
    fig.tight_layout()
    return fig


def disagreement_per_step(df: pd.DataFrame, *, by: str = "tiling.kernel") -> plt.Figure:
    """View disagreement (weighted variance of overlapping predictions) per step."""
    df = ok_runs(df)
    fig, ax = _fig(None)
    for key, sub in df.groupby(by):
        traces = [json.loads(t) for t in sub["diag.disagreement_trace"] if t and t != "[]"]
        if not traces:
            continue
        n = min(len(t) for t in traces)
        m = np.mean([t[:n] for t in traces], axis=0)
        ax.plot(np.arange(n), m, label=str(key))
    ax.set(xlabel="step", ylabel="disagreement (mean weighted variance)", yscale="log",
           title="Where and when seams are born")
    ax.legend(title=by)
    return fig


def frontier(df: pd.DataFrame, *, metric: str = SEAM, window_px: int | None = None) -> plt.Figure:
    """Seam score against model evaluations for every plan tried; diffusers' default plan
    (uniform weights, stride = window / 8) marked with a star."""
    df = ok_runs(df)
    fig, ax = _fig(None)
    s = df.groupby(["tiling.kernel", "tiling.overlap"]).agg(
        seam=(metric, "mean"), evals=(EVALS, "mean")).reset_index()
    for kernel, sub in s.groupby("tiling.kernel"):
        sub = sub.sort_values("evals")
        ax.plot(sub["evals"], sub["seam"], marker="o", label=kernel)
    win = window_px or _window(df)
    if win:
        ref = s[(s["tiling.kernel"] == "uniform") & (s["tiling.overlap"] == win - win // 8)]
        if len(ref):
            ax.scatter(ref["evals"], ref["seam"], marker="*", s=250, color="k", zorder=5,
                       label="diffusers default (uniform, stride 1/8)")
            ax.axhline(float(ref["seam"].iloc[0]), color="k", lw=0.6, ls=":")
    ax.set(xscale="log", xlabel="model evaluations (log)", ylabel=f"{metric.split('.')[-1]}",
           title="Seam quality per cost")
    ax.legend()
    return fig


def seam_crops(df: pd.DataFrame, images_dir: str | Path, *, labels: Sequence[str] = ("tiling.kernel", "tiling.overlap"),
               crop: int = 96, max_rows: int = 6) -> plt.Figure:
    """Zoomed crops around the first vertical seam line of each run's preview, side by side."""
    df = ok_runs(df).dropna(subset=["preview"]).head(max_rows)
    images_dir = Path(images_dir)
    fig, axes = plt.subplots(1, max(1, len(df)), figsize=(2.4 * max(1, len(df)), 2.8), squeeze=False)
    from PIL import Image

    for ax, (_, row) in zip(axes[0], df.iterrows()):
        img = np.asarray(Image.open(images_dir / row["preview"]))
        f = img.shape[1] / row["plan.width"]
        seams = json.loads(row.get("seams_x") or "[]")
        x = int((seams[0] if seams else row["plan.width"] / 2) * f)
        c = max(8, int(crop * f))
        y0 = max(0, img.shape[0] // 2 - c // 2)
        x0 = int(np.clip(x - c // 2, 0, max(0, img.shape[1] - c)))
        ax.imshow(img[y0:y0 + c, x0:x0 + c], interpolation="nearest")
        ax.set_title("\n".join(f"{k.split('.')[-1]}={row[k]}" for k in labels if k in row), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _window(df: pd.DataFrame) -> int | None:
    if "plan.view_w" in df and "plan.scale" in df and len(df):
        return int(df["plan.view_w"].iloc[0] * df["plan.scale"].iloc[0])
    return None


def _fig(ax: Any) -> tuple[plt.Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=(6, 4))
    return fig, ax
