"""Seam metrics of a ComfyUI IMAGE and a seam heat map (the Seam Metrics (mdtools) node).

The values are `mdtools.metrics.evaluate` on the plan the image was made with
(`plan_views` from its size, window and overlap). The heat map shows where steps between
neighbouring pixels stand out: `mdtools.metrics.step_profiles` (signed steps averaged
over runs of `segment` px along a line, then |.|, the quantity seam_score compares) taken
per strip of `segment` rows (vertical lines) and columns (horizontal lines), divided by
the median step of the image: 1 is an ordinary step, a seam shows as a bright straight
line. Plan seam lines are marked by white ticks on the image border.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..metrics import METRICS, evaluate
from ..metrics.functional import DEFAULT_SEGMENT, step_profiles
from ..plan import TilePlan, plan_views

DEFAULT_SEAM_METRICS = ("seam_score", "seam_score_lab", "seam_structure", "intra_color")
#: heat-map colour scale: log2(step / median step) from 0 (ordinary) to this (8x the median) maps to 0..1
HEAT_OCTAVES = 3.0


def parse_metrics(text: str) -> list[str]:
    """'seam_score, tv' -> ['seam_score', 'tv'] (names of mdtools.metrics.METRICS)."""
    names = [m.strip() for m in str(text).replace(";", ",").split(",") if m.strip()]
    if not names:
        raise ConfigError(f"metrics must name at least one metric, e.g. {', '.join(DEFAULT_SEAM_METRICS)}")
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise ConfigError(f"metrics: unknown name(s) {bad}; valid names: {sorted(METRICS)}")
    need = [m for m in names if METRICS[m].needs_reference or METRICS[m].needs_option]
    if need:
        raise ConfigError(f"metrics {need} need a reference image; the Seam Metrics node measures one image: "
                          f"use e.g. {', '.join(DEFAULT_SEAM_METRICS)}")
    return names


def _strip_steps(img: torch.Tensor, segment: int) -> torch.Tensor:
    """(H, W-1) map: step across vertical line p (entry p-1) in each strip of `segment` rows."""
    C, H, W = img.shape
    n = H // segment
    rows = []
    if n:
        strips = img[:, : n * segment].reshape(C, n, segment, W).permute(1, 0, 2, 3)  # a batch of strips
        rows.append(step_profiles(strips, segment=segment)["x"].repeat_interleave(segment, 0))
    if H % segment:
        rows.append(step_profiles(img[None, :, n * segment:], segment=segment)["x"].expand(H % segment, -1))
    return torch.cat(rows)


def seam_heatmap(image: torch.Tensor, plan: TilePlan | None = None, *, segment: int = DEFAULT_SEGMENT) -> torch.Tensor:
    """(3, H, W) image in [0, 1] -> (H, W, 3) heat map in [0, 1] (inferno colours)."""
    from matplotlib import colormaps

    img = image.to(torch.float64)
    _, H, W = img.shape
    heat = torch.zeros(H, W, dtype=torch.float64)
    if W > 1:
        vx = _strip_steps(img, segment)  # line p sits between pixel p-1 and p: show it on pixel p
        heat[:, 1:] = torch.maximum(heat[:, 1:], vx)
    if H > 1:
        vy = _strip_steps(img.transpose(1, 2), segment).T
        heat[1:, :] = torch.maximum(heat[1:, :], vy)
    med = heat[heat > 0].median() if bool((heat > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
    level = (torch.log2((heat / med).clamp(min=1.0)) / HEAT_OCTAVES).clamp(0, 1)
    rgb = torch.as_tensor(colormaps["inferno"](level.numpy())[..., :3])
    if plan is not None:  # ticks on the border where the plan put seam lines
        tick = max(2, min(H, W) // 40)
        for x in plan.seam_lines["x"]:
            rgb[:tick, x - 1:x + 1] = 1.0
            rgb[-tick:, x - 1:x + 1] = 1.0
        for y in plan.seam_lines["y"]:
            rgb[y - 1:y + 1, :tick] = 1.0
            rgb[y - 1:y + 1, -tick:] = 1.0
    return rgb.float()


def measure(images: torch.Tensor, window: int, overlap: int, *, circular: Any = False, metrics: Sequence[str],
            scale: int = 8) -> tuple[list[dict[str, Any]], TilePlan]:
    """`evaluate` on each image of an (B, 3, H, W) batch with the plan of (window, overlap)."""
    if window <= 0:
        raise ConfigError(f"window must be > 0 px (the window the image was generated with, e.g. 512); got {window}")
    H, W = images.shape[-2:]
    plan = plan_views(H, W, window=window, overlap=overlap, scale=scale, circular=circular)
    rows = []
    for img in images:
        scores = evaluate(img[None], plan, metrics=list(metrics))
        rows.append({name: {"value": float(s), "reason": getattr(s, "reason", None),
                            "details": getattr(s, "details", {})} for name, s in scores.items()})
    return rows, plan


def summary_text(rows: list[dict[str, Any]], plan: TilePlan) -> str:
    """One line per image and metric: 'seam_score = 1.0312' (or 'nan (reason)')."""
    lines = [f"plan: {plan.n_views} views of {plan.window[0]}x{plan.window[1]} px, overlap {plan.overlap[1]} px, "
             f"canvas {plan.height}x{plan.width} px"]
    for i, row in enumerate(rows):
        for name, r in row.items():
            v = r["value"]
            val = f"{v:.4f}" if v == v else f"nan ({r['reason']})"
            lines.append(f"[{i}] {name} = {val}")
    return "\n".join(lines)
