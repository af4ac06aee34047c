"""Plots say what they show: no pooled methods or canvases, n and the interval method named, legends outside the data."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from mdtools.analysis import plots  # noqa: E402
from mdtools.stats import bootstrap_ci  # noqa: E402


def runs() -> pd.DataFrame:
    """Two methods x two canvases x two overlaps x 6 seeds; SpotDiffusion only at 0 px (as in results/methods)."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(6):
        for name, overlaps in (("multidiffusion", (0, 64)), ("spotdiffusion", (0,))):
            for h, w in ((128, 512), (256, 256)):
                for o in overlaps:
                    rows.append({"status": "ok", "seed": seed, "method.name": name, "tiling.kernel": "gaussian",
                                 "tiling.overlap": o, "plan.height": h, "plan.width": w,
                                 "metric.seam_structure": (6.0 if o == 0 and name == "multidiffusion" else 1.0) + rng.normal(0, 0.1),
                                 "time.denoise": 1.0 + rng.normal(0, 0.01), "count.model_evaluations": 120 + o,
                                 "metric.disc_count": int(rng.integers(0, 4)), "metric.horizon_continuity": 1.0,
                                 "swept": json.dumps({"method.name": name, "tiling.overlap": o, "seed": seed})})
    return pd.DataFrame(rows)


def test_seam_vs_overlap_never_pools_methods_or_canvases():
    df = runs()
    ax = plots.seam_vs_overlap(df).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["multidiffusion(gaussian) 256x256 (n=6)", "multidiffusion(gaussian) 512x128 (n=6)",
                      "spotdiffusion(gaussian) 256x256 (n=6)", "spotdiffusion(gaussian) 512x128 (n=6)"]
    # SpotDiffusion's 0 px point is its own line, not the start of MultiDiffusion's
    spot = df[(df["method.name"] == "spotdiffusion") & (df["plan.width"] == 256)]["metric.seam_structure"]
    line = ax.containers[2].lines[0]  # errorbar container: (line, caps, bars)
    assert line.get_ydata()[0] == pytest.approx(spot.mean()) and len(line.get_xdata()) == 1
    bars = ax.containers[2].lines[2][0].get_segments()[0][:, 1]
    iv = bootstrap_ci(spot.to_numpy())
    assert bars == pytest.approx([iv.lo, iv.hi], rel=1e-12)  # the expanded interval, as the title says
    assert "expanded" in ax.get_title() and "n in the legend" in ax.get_title()


@pytest.mark.parametrize("fn", [plots.seam_vs_overlap, plots.frontier])
def test_legends_sit_outside_the_axes(fn):
    fig = fn(runs())
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent()
    axbox = ax.get_window_extent()
    assert box.x0 >= axbox.x1 - 1 or box.y1 <= axbox.y0 + 1, "legend overlaps the axes"


def test_cost_vs_overlap_names_n_and_uses_one_line_per_setting():
    fig = plots.cost_vs_overlap(runs())
    evals = fig.axes[1]
    labels = [t.get_text() for t in evals.get_legend().get_texts()]
    assert len(labels) == 4 and all("(n=6)" in lab for lab in labels)
    assert "count" in evals.get_ylabel() and "clean timings" in fig.axes[0].get_title()


def test_methods_bars_name_n_and_units():
    df = plots.with_derived(runs())
    fig = plots.methods_bars(df, metrics=["metric.disc_error", "metric.horizon_continuity", "count.model_evaluations"])
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks and all(t.endswith("(n=12)") or t.endswith("(n=6)") for t in ticks)
    assert "[512x128]" in " ".join(ticks)  # canvas W x H
    assert [a.get_title() for a in fig.axes] == ["disc_error (|suns - 1|)", "horizon_continuity (ratio, 1 = unbroken)",
                                                 "model_evaluations (count)"]
    assert "expanded" in fig._suptitle.get_text()


def test_memory_time_plot_names_n():
    df = runs().assign(**{"mem.peak_rss.denoise": 2**30, "time.total": 2.0})
    fig = plots.memory_time_vs_size(df)
    assert all("n=" in a.get_title() and "no interval" in a.get_title() for a in fig.axes)


def test_the_coherence_methods_figure_shows_coherence_metrics(tmp_path, monkeypatch):
    from mdtools.analysis import report as report_mod

    shown = []
    real = plots.methods_bars
    monkeypatch.setattr(plots, "methods_bars", lambda df, metrics=(), **kw: shown.append(list(metrics)) or real(df, metrics=metrics))
    runs().to_parquet(tmp_path / "runs.parquet")
    report_mod.report(tmp_path)
    assert shown == [["metric.disc_error", "metric.one_disc", "metric.horizon_continuity", "count.model_evaluations"]]
    assert (tmp_path / "plots" / "methods.png").is_file() and "ci_method" in pd.read_csv(tmp_path / "methods.csv")
