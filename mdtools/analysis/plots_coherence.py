"""Plots of notebook 07: cost against the exactly-one-disc rate and against seams, one marker per setting, with interval bars.

Each function takes a table made by `analysis.coherence.prepare` and returns a matplotlib Figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from ..errors import ConfigError
from .coherence import DEFAULT_LABEL, frontier_table

_MARKERS = "osD^v<>pPhX*"


def frontier_figure(df: pd.DataFrame, canvas: str) -> plt.Figure:
    """Two panels on one canvas: cost (UNet-forward equivalents, FLOP-priced) against the exactly-one-disc rate
    and against seam_structure; one marker per setting (the diffusers default a black star), 95% expanded bootstrap
    interval bars, n runs in the legend and the title, the legend outside the axes."""
    t = frontier_table(df)
    t = t[t["canvas"] == canvas]
    if t.empty:
        raise ConfigError(f"frontier_figure: no setting on canvas={canvas!r}; canvases: {sorted(frontier_table(df)['canvas'].unique())}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (k, ylabel) in zip(axes, (("one_disc", "exactly-one-disc rate (share of runs)"),
                                      ("seam", "seam_structure (1 = no seam; lower is better)"))):
        for i, r in enumerate(t.to_dict("records")):
            yerr = np.array([[r[k] - r[f"{k}.lo"]], [r[f"{k}.hi"] - r[k]]])
            default = r["setting"] == DEFAULT_LABEL
            ax.errorbar([r["cost"]], [r[k]], yerr=np.clip(np.nan_to_num(yerr), 0, None), ls="none", capsize=3,
                        marker="*" if default else _MARKERS[i % len(_MARKERS)], ms=13 if default else 7,
                        color="k" if default else None,
                        label=f"{r['setting']} (n={r['n']}, redundancy {r['redundancy']:.2f})")
        ax.set(xscale="log", xlabel="cost: UNet-forward equivalents per run (FLOP-priced, log)", ylabel=ylabel)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels would overlap
        ax.grid(alpha=0.3)
    ns = sorted(set(t["n"]))
    fig.suptitle(f"{canvas} px: cost against coherence and seams per setting (mean, 95% expanded bootstrap interval "
                 f"over runs; n = {', '.join(map(str, ns))} runs per setting)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=7, title="setting")
    fig.tight_layout()
    fig.subplots_adjust(wspace=0.3)
    return fig
