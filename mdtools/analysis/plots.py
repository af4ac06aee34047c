"""Standard plots: each function takes a tidy DataFrame (a runs.parquet table) and returns a matplotlib Figure.

Notebooks only load tables (analysis.tables) and call these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..stats import summarize_groups
from .tables import (
    COST,
    DIFFUSERS_DEFAULT,
    EVALS,
    SEAM,
    SINGLE_WINDOW,
    clean_timings,
    control_column,
    cost_column,
    label_extra,
    method_label,
    ok_runs,
    plain_runs,
    with_derived,
    with_method_label,
)


def _mean_ci(df: pd.DataFrame, by: list[str], y: str) -> pd.DataFrame:
    """Per group: n seeds with a value, mean and its 95% expanded bootstrap interval (NaN when n < 2)."""
    return summarize_groups(df, by, y).drop(columns=["column", "ci_method"])


def _lines(df: pd.DataFrame, inner: str = "tiling.kernel") -> list[tuple[str, pd.DataFrame]]:
    """One line per method setting, canvas and `inner` value, never pooled: [(label, rows)]. A method setting is its
    `method.label` without the x-axis (overlap); the label names only what varies (a single-method, single-canvas
    table keeps the plain kernel name). A control's runs are a line of their own ("diffusers default", ...)."""
    df = df.copy()
    if "method.name" in df and len(df):
        extra = [k for k in label_extra(df) if k != "tiling.overlap"]
        df["_method"] = [method_label(r.drop(labels=["tiling.overlap"], errors="ignore"), extra) for _, r in df.iterrows()]
    several_methods = "_method" in df and df["_method"].nunique() > 1
    keys = [k for k in ("_method", "plan.width", "plan.height") if k in df and df[k].nunique(dropna=False) > 1]
    if inner in df and not (several_methods and inner == "tiling.kernel"):  # the method label already names its kernel
        keys.append(inner)
    if not keys:
        return [("all runs", df)]
    out = []
    for key, sub in df.groupby(keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        parts = dict(zip(keys, key))
        canvas = (f"{int(sub['plan.width'].iloc[0])}x{int(sub['plan.height'].iloc[0])}"
                  if {"plan.width", "plan.height"} & set(keys) else "")
        label = " ".join(str(v) for v in (parts.get("_method"), parts.get(inner), canvas) if v not in (None, ""))
        out.append((label, sub))
    return out


def _legend_outside(ax: Any, title: str | None = None, **kw: Any) -> None:
    """The legend outside the axes, never over the data: to the right, or below in one column when it has more
    than 8 entries (long method labels would squeeze the axes)."""
    n = len(ax.get_legend_handles_labels()[0])
    if n > 8:
        ax.legend(title=title, loc="upper left", bbox_to_anchor=(0.0, -0.2), borderaxespad=0.0, **kw)
    else:
        ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def _ci_errorbar(ax: Any, x: str, s: pd.DataFrame, label: str) -> None:
    """Mean with its interval as asymmetric error bars; the label says how many seeds."""
    yerr = np.vstack([s["mean"] - s["ci_lo"], s["ci_hi"] - s["mean"]])
    ax.errorbar(s[x], s["mean"], yerr=np.clip(np.nan_to_num(yerr), 0, None), marker="o", capsize=3, label=f"{label} ({_n_label(s['n'])})")


def _n_label(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"n={lo}" if lo == hi else f"n={lo}-{hi}"


CI_NOTE = "mean, 95% bootstrap interval (expanded) over seeds; n in the legend"


def seam_vs_overlap(df: pd.DataFrame, *, metric: str = SEAM, ax: Any = None) -> plt.Figure:
    """Seam score against overlap, one line per method, canvas and kernel (never pooled): mean with its 95% expanded
    bootstrap interval over seeds, n in the legend."""
    df = ok_runs(df)
    fig, ax = _fig(ax)
    for label, sub in _lines(df):
        if metric in sub and sub[metric].notna().any():  # a line without the metric (one window has no seams) is left out
            _ci_errorbar(ax, "tiling.overlap", _mean_ci(sub, ["tiling.overlap"], metric).sort_values("tiling.overlap"), label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="overlap (px)", ylabel=f"{metric.split('.')[-1]} (score, 1 = no seam)", title=f"Seam strength vs overlap\n({CI_NOTE})")
    _legend_outside(ax, "kernel (seeds)")
    return fig


def cost_vs_overlap(df: pd.DataFrame) -> plt.Figure:
    """Denoising time (clean wall times only: mean with its 95% expanded bootstrap interval over seeds, n in the
    legend) and model evaluations (fixed by the plan) against overlap, one line per method, canvas and kernel."""
    df = ok_runs(df)
    lines = _lines(df)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8 + (0.16 * len(lines) if len(lines) > 8 else 0)),
                                 gridspec_kw={"bottom": 0.16 * len(lines) / (3.8 / 0.16 + len(lines)) + 0.1 if len(lines) > 8 else 0.1})
    for label, sub in _lines(clean_timings(df)):  # wall times taken above the core count left out
        _ci_errorbar(a1, "tiling.overlap", _mean_ci(sub, ["tiling.overlap"], "time.denoise").sort_values("tiling.overlap"), label)
    for label, sub in lines:
        e = sub.groupby("tiling.overlap")[EVALS].agg(["mean", "size"])
        a2.plot(e.index, e["mean"], marker="o", label=f"{label} (n={int(e['size'].min())}-{int(e['size'].max())})"
                if e["size"].nunique() > 1 else f"{label} (n={int(e['size'].iloc[0])})")
    a1.set(xlabel="overlap (px)", ylabel="denoising time (s)", title=f"Time vs overlap, clean timings\n({CI_NOTE})")
    a2.set(xlabel="overlap (px)", ylabel="model evaluations (count)", title="Evaluations vs overlap\n(fixed by the plan; runs in the legend)")
    _legend_outside(a1, "kernel (seeds)", fontsize=7)
    _legend_outside(a2, None, fontsize=7)
    if len(lines) <= 8:
        fig.tight_layout()
    return fig


def memory_time_vs_size(df: pd.DataFrame) -> plt.Figure:
    """Peak memory per phase and time (clean wall times only) against canvas size (megapixels): means over the
    runs at each size, no interval (n in the titles). Control runs are left out (they are not points of the size sweep)."""
    df = with_derived(plain_runs(ok_runs(df)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    s = df.groupby("megapixels").mean(numeric_only=True).reset_index()
    n_mem = df.groupby("megapixels").size()
    for phase in ("denoise", "decode", "total"):
        col = f"peak_gb.{phase}"
        if col in s:
            a1.plot(s["megapixels"], s[col], marker="o", label=phase)
    clean = clean_timings(df)
    t = clean.groupby("megapixels").mean(numeric_only=True).reset_index()  # clean wall times only
    n_t = clean.groupby("megapixels").size()
    for phase in ("denoise", "decode", "total"):
        col = f"time.{phase}"
        if col in t:
            a2.plot(t["megapixels"], t[col], marker="o", label=phase)
    a1.set(xlabel="canvas (megapixels)", ylabel="peak memory (GiB)",
           title=f"Peak memory vs canvas size\n(mean of {_n_label(n_mem)} runs per size, no interval)")
    a2.set(xlabel="canvas (megapixels)", ylabel="time (s)",
           title=f"Time vs canvas size, clean timings\n(mean of {_n_label(n_t) if len(n_t) else 'n=0'} runs per size, no interval)")
    _legend_outside(a1, "phase")
    _legend_outside(a2, "phase")
    fig.tight_layout()
    return fig


def cost_vs_aspect(df: pd.DataFrame) -> plt.Figure:
    """Model evaluations and redundancy against aspect ratio (log scale), wide vs tall: both fixed by the plan (n runs in the
    title). Control runs are left out (they are not points of the aspect sweep)."""
    df = with_derived(plain_runs(ok_runs(df)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    n = _n_label(df.groupby("aspect").size())
    s = df.groupby("aspect").mean(numeric_only=True).reset_index().sort_values("aspect")
    a1.plot(s["aspect"], s[EVALS], marker="o")
    a2.plot(s["aspect"], s["plan.redundancy"], marker="o")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.axvline(1.0, color="grey", lw=0.8, ls="--")
    a1.set(xlabel="aspect (width / height)", ylabel="model evaluations (count)",
           title=f"Cost vs aspect ratio\n(fixed by the plan; {n} runs per ratio)")
    a2.set(xlabel="aspect (width / height)", ylabel="redundancy (view area / canvas area)",
           title=f"Redundancy vs aspect ratio\n(fixed by the plan; {n} runs per ratio)")
    fig.tight_layout()
    return fig


def disagreement_per_step(df: pd.DataFrame, *, by: str = "tiling.kernel") -> plt.Figure:
    """View disagreement (weighted variance of overlapping predictions) per step: the mean over runs, one line per
    method, canvas and `by` value (n runs in the legend, no interval)."""
    df = ok_runs(df)
    fig, ax = _fig(None)
    for key, sub in _lines(df, by):
        traces = [json.loads(t) for t in sub["diag.disagreement_trace"] if t and t != "[]"]
        if not traces:
            continue
        n = min(len(t) for t in traces)
        m = np.mean([t[:n] for t in traces], axis=0)
        ax.plot(np.arange(n), m, label=f"{key} (n={len(traces)})")
    ax.set(xlabel="step", ylabel="disagreement (mean weighted variance, latent units^2)", yscale="log",
           title="Where and when seams are born\n(mean over runs, no interval)")
    _legend_outside(ax, by, fontsize=7)
    return fig


def frontier(df: pd.DataFrame, *, metric: str = SEAM, window_px: int | None = None) -> plt.Figure:
    """Seam score (mean with its 95% bootstrap interval over seeds, n in the legend) against cost for
    every plan and method tried: one line per MultiDiffusion kernel (over overlaps) and one series per
    other method. Cost is the run's measured UNet-forward equivalents where recorded (SyncDiffusion's
    gradients and decodes included), else model evaluations. Diffusers' default plan (uniform weights,
    stride = window / 8) is marked with a star, whether swept or the diffusers-default control (then with its interval);
    the single-window control is left out (one window has no seams)."""
    df = ok_runs(df)
    df = df[control_column(df) != SINGLE_WINDOW]
    df = df if "method.label" in df else with_method_label(df)
    cost = cost_column(df)
    name = df["method.name"].fillna("multidiffusion") if "method.name" in df else pd.Series("multidiffusion", index=df.index)
    md_rows = df[(name == "multidiffusion") & (df["method.label"].str.startswith("multidiffusion"))]
    control = df[control_column(df) == DIFFUSERS_DEFAULT]
    other = df.drop(md_rows.index.union(control.index))
    fig, ax = _fig(None)
    s = pd.DataFrame()
    if len(md_rows):
        s = _mean_ci(md_rows, ["tiling.kernel", "tiling.overlap"], metric).rename(columns={"mean": "seam"})
        s = s.merge(md_rows.groupby(["tiling.kernel", "tiling.overlap"])[cost].mean().rename("evals").reset_index(),
                    on=["tiling.kernel", "tiling.overlap"])
        for kernel, sub in s.groupby("tiling.kernel"):
            sub = sub.sort_values("evals").rename(columns={"seam": "mean"})
            _ci_errorbar(ax, "evals", sub, str(kernel))
    if len(other):
        o = _mean_ci(other, ["method.label", "tiling.overlap"], metric)
        o = o.merge(other.groupby(["method.label", "tiling.overlap"])[cost].mean().rename("evals").reset_index(),
                    on=["method.label", "tiling.overlap"])
        for label, sub in o.groupby("method.label"):
            yerr = np.vstack([sub["mean"] - sub["ci_lo"], sub["ci_hi"] - sub["mean"]])
            ax.errorbar(sub["evals"], sub["mean"], yerr=np.clip(np.nan_to_num(yerr), 0, None), marker="s", ls="none", capsize=3,
                        label=f"{label} ({_n_label(sub['n'])})")
    win = window_px or _window(df)
    if win and len(s):
        ref = s[(s["tiling.kernel"] == "uniform") & (s["tiling.overlap"] == win - win // 8)]
        if len(ref):
            ax.scatter(ref["evals"], ref["seam"], marker="*", s=250, color="k", zorder=5,
                       label="diffusers default (uniform, stride 1/8)")
            ax.axhline(float(ref["seam"].iloc[0]), color="k", lw=0.6, ls=":")
    if len(control):  # the diffusers-default control runs: the same star, with their interval and n
        c = _mean_ci(control, ["control"], metric).iloc[0]
        x = float(control[cost].mean())
        ax.errorbar([x], [c["mean"]], yerr=np.clip(np.nan_to_num([[c["mean"] - c["ci_lo"]], [c["ci_hi"] - c["mean"]]]), 0, None), marker="*",
                    ms=16, color="k", ls="none", capsize=3, zorder=5,
                    label=f"diffusers default (control: uniform, stride 1/8) (n={int(c['n'])})")
        ax.axhline(float(c["mean"]), color="k", lw=0.6, ls=":")
    xl = "UNet-forward equivalents, measured (log)" if cost == COST else "model evaluations (log)"
    ax.set(xscale="log", xlabel=xl, ylabel=f"{metric.split('.')[-1]} (score, 1 = no seam)", title=f"Seam quality per cost\n({CI_NOTE})")
    _legend_outside(ax, None, fontsize=7)
    return fig


#: Units the bar charts name beside each figure.
_UNITS = {SEAM: " (score, 1 = no seam)", "metric.seam_score": " (score, 1 = no seam)", COST: " (UNet-forward equivalents)",
          EVALS: " (count)", "time.denoise": " (s)", "time.total": " (s)", "metric.disc_error": " (|suns - 1|)",
          "metric.disc_count": " (discs)", "metric.one_disc": " (share of runs)", "metric.horizon_continuity": " (ratio, 1 = unbroken)",
          "metric.sky_consistency": " (ratio, 1 = uniform)", "metric.intra_color": " (score)"}


def methods_bars(df: pd.DataFrame, *, metrics: Sequence[str] = (SEAM, COST, "time.denoise"),
                 by: Sequence[str] = ("plan.width", "plan.height")) -> plt.Figure:
    """One panel per figure (seam score, measured cost, time, ...): every method's mean with its 95%
    bootstrap interval over seeds, one group of bars per canvas."""
    df = ok_runs(df)
    df = df if "method.label" in df else with_method_label(df)
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    by = [b for b in by if b in df]
    canvases = df.groupby(by).size().index.tolist() if by else [None]
    labels = sorted(df["method.label"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.35 * len(labels) * len(canvases) + 1.8),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        s = _mean_ci(df, ["method.label", *by], m)
        ypos, ticks = 0, []
        for ci, canvas in enumerate(canvases):
            sub = s if canvas is None else s[(s[by] == pd.Series(canvas if isinstance(canvas, tuple) else (canvas,),
                                                                    index=by)).all(axis=1)]
            for lab in labels:
                r = sub[sub["method.label"] == lab]
                if not len(r):
                    continue
                r = r.iloc[0]
                err = [[r["mean"] - r["ci_lo"]], [r["ci_hi"] - r["mean"]]]
                # clipped at 0: identical values (FLOP-priced cost) give an interval equal to the mean up to rounding
                ax.barh(ypos, r["mean"], xerr=np.clip(np.nan_to_num(err), 0, None), color=f"C{ci}", alpha=0.75, capsize=2)
                canvas_txt = f" [{'x'.join(str(int(v)) for v in (canvas if isinstance(canvas, tuple) else (canvas,)))}]" if canvas is not None else ""
                ticks.append((ypos, f"{lab}{canvas_txt} (n={int(r['n'])})"))
                ypos += 1
            ypos += 0.5
        ax.set_yticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=7)
        ax.set_title(f"{m.split('.', 1)[-1]}{_UNITS.get(m, '')}", fontsize=9)
        ax.invert_yaxis()
        if m == SEAM:
            ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.suptitle(f"Methods ({CI_NOTE.replace('n in the legend', 'n per bar')}; canvas W x H in brackets)", fontsize=10)
    fig.tight_layout()
    return fig


def method_images(df: pd.DataFrame, images_dir: str | Path, *, seed: int | None = None, metric: str = SEAM) -> plt.Figure:
    """One preview per method setting (the lowest seed, or `seed`), stacked, titled with the setting,
    its `metric` and its measured cost; pass the rows of one canvas."""
    from PIL import Image

    df = ok_runs(df).dropna(subset=["preview"])
    df = df if "method.label" in df else with_method_label(df)
    seed = int(df["seed"].min()) if seed is None else seed
    rows = df[df["seed"] == seed].drop_duplicates("method.label")
    images_dir = Path(images_dir)
    rows = rows[[(images_dir / p).is_file() for p in rows["preview"]]]
    n = max(1, len(rows))
    first = np.asarray(Image.open(images_dir / rows["preview"].iloc[0])) if len(rows) else np.zeros((1, 4, 3))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(n, 1, figsize=(8, n * (8 * aspect + 0.35)), squeeze=False)
    cost = cost_column(df)
    for ax, (_, row) in zip(axes[:, 0], rows.iterrows()):
        ax.imshow(Image.open(images_dir / row["preview"]))
        ax.set_title(f"{row['method.label']}, seed {int(row['seed'])}: {metric.split('.')[-1]} {row[metric]:.2f}, cost {row[cost]:.0f}",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
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
        name = str(row["method.label"]) if "method.label" in row else str(row.get("method.name") or "multidiffusion")
        ax.set_title("\n".join([name, *(f"{k.split('.')[-1]}={row[k]}" for k in labels if k in row), f"seed {row.get('seed')}"]),
                     fontsize=8)
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
