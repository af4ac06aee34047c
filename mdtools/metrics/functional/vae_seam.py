"""The VAE's share of seams (`vae_seam`): a latent decoded in tiles against the same latent decoded in one piece."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import ConfigError
from ...plan import TilePlan
from ..common import to_image_tensor
from .geometry import Box, crop_box, lines_from_boxes
from .reference import psnr, ssim
from .seams import DEFAULT_BAND, seam_score


def _tile_boxes(tiles: TilePlan | Sequence[Box]) -> list[Box]:
    if isinstance(tiles, TilePlan):
        return [v.pixel_box(tiles.scale) for v in tiles.views]
    if isinstance(tiles, Sequence) and not isinstance(tiles, str):
        return [tuple(int(v) for v in b) for b in tiles]  # type: ignore[misc]
    raise ConfigError(
        f"tiles must be a TilePlan or a list of (top, left, height, width) pixel boxes; got {type(tiles).__name__}"
    )


def vae_seam(
    tiled: Any,
    full: Any,
    tiles: TilePlan | Sequence[Box],
    *,
    band: int = DEFAULT_BAND,
) -> dict[str, Any]:
    """The VAE's share of seams: a latent decoded in tiles vs decoded in one piece.

    Returns {"psnr" (dB), "ssim", "mean_drift", "max_mean_drift", "std_drift",
    "max_std_drift" (intensity 0-1, mean/max over tiles of |tiled - full|),
    "seam_score_tiled", "seam_score_full" (seam_score at the tile edges of each image),
    "per_tile": [{"box", "mean_diff", "std_diff"}]}; signed diffs are tiled - full.
    """
    a = to_image_tensor(tiled, name="tiled")
    b = to_image_tensor(full, name="full")
    if a.shape != b.shape:
        raise ConfigError(f"tiled and full must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    boxes = _tile_boxes(tiles)
    if not boxes:
        raise ConfigError("tiles must hold at least one (top, left, height, width) box")
    per_tile = []
    for box in boxes:
        ca, cb = crop_box(a, box), crop_box(b, box)
        per_tile.append({
            "box": box,
            "mean_diff": float(ca.mean() - cb.mean()),
            # per-channel std, then averaged: a contrast change in one channel shows
            "std_diff": float(ca.std(dim=(-2, -1)).mean() - cb.std(dim=(-2, -1)).mean()),
        })
    md = torch.tensor([abs(t["mean_diff"]) for t in per_tile])
    sd = torch.tensor([abs(t["std_diff"]) for t in per_tile])
    lines = tiles if isinstance(tiles, TilePlan) else lines_from_boxes(boxes, a.shape[-2], a.shape[-1])
    return {
        "psnr": float(psnr(a, b)),
        "ssim": float(ssim(a, b)),
        "mean_drift": float(md.mean()), "max_mean_drift": float(md.max()),
        "std_drift": float(sd.mean()), "max_std_drift": float(sd.max()),
        "seam_score_tiled": seam_score(a, lines, band=band),
        "seam_score_full": seam_score(b, lines, band=band),
        "per_tile": per_tile,
    }


__all__ = ["vae_seam"]
