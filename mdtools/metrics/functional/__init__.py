"""Seam, cross-view consistency, KID and reference metrics as pure functions, one module a family.

Each metric is split like torchmetrics: a private `_*_update` turns one batch into
additive sufficient statistics and a `_*_compute` turns summed statistics into the value.
The functions here call both on one input; the `torchmetrics.Metric` classes in
`classes.py` sum the statistics over many `update` calls. See docs/metrics.md for the
definitions, units and blind spots.

    geometry     seam lines and tile boxes (`resolve_lines`, `lines_from_boxes`)
    seams        `seam_score`, `seam_score_lab`, `wrap_seam_score`, `step_profiles`
    structure    `seam_structure`
    vae_seam     `vae_seam` (tiled vs one-piece decode)
    reference    `psnr`, `ssim`, `total_variation`
    consistency  `intra_lpips`, `intra_style`, `intra_color` over window crops
    kid          `kid` and its MMD estimate
    protocol     SyncDiffusion's seeded random crop; FID / KID (clean-fid) and CLIP score on the crops
    color_drift  `color_drift` (low-frequency CIEDE2000 against the source)
"""

from __future__ import annotations

from .color_drift import color_drift, drift_map
from .consistency import (
    LPIPS_BACKBONES,
    STYLE_BACKBONES,
    conv_features,
    crop_grid,
    gram_matrix,
    intra_color,
    intra_lpips,
    intra_style,
)
from .geometry import Box, Lines, LinesLike, lines_from_boxes, resolve_lines
from .kid import kid, kid_from_features, mmd2_unbiased, poly_kernel, sliding_crops
from .protocol import (
    PROTOCOL_SEED,
    crop_offsets,
    frechet_distance,
    kernel_distance,
    protocol_clip_score,
    protocol_crops,
    protocol_features,
    protocol_fid,
    protocol_kid,
)
from .reference import psnr, ssim, total_variation
from .seams import (
    DEFAULT_BAND,
    DEFAULT_GRID,
    DEFAULT_SEGMENT,
    Mode,
    SeamStats,
    control_lines,
    seam_score,
    seam_score_lab,
    step_profiles,
    wrap_seam_score,
)
from .structure import DEFAULT_DEPTH, DEFAULT_STRUCT_SEGMENT, decorrelation_profile, seam_structure
from .vae_seam import vae_seam

__all__ = [
    "color_drift", "drift_map",
    "PROTOCOL_SEED", "crop_offsets", "frechet_distance", "kernel_distance", "protocol_clip_score", "protocol_crops",
    "protocol_features", "protocol_fid", "protocol_kid",
    "Box", "DEFAULT_BAND", "DEFAULT_DEPTH", "DEFAULT_GRID", "DEFAULT_SEGMENT", "DEFAULT_STRUCT_SEGMENT", "LPIPS_BACKBONES",
    "Lines", "LinesLike", "Mode", "STYLE_BACKBONES", "SeamStats", "control_lines", "conv_features", "crop_grid",
    "decorrelation_profile", "gram_matrix", "intra_color", "intra_lpips", "intra_style", "kid", "kid_from_features",
    "lines_from_boxes", "mmd2_unbiased", "poly_kernel", "psnr", "resolve_lines", "seam_score", "seam_score_lab",
    "seam_structure", "sliding_crops", "ssim", "step_profiles", "total_variation", "vae_seam", "wrap_seam_score",
]
