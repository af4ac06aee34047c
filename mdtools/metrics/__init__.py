"""Seam, cross-view consistency, scene-coherence and reference metrics for tiled generation (see docs/metrics.md).

Functions return `Score`: a float with `.reason` (why it is NaN) and `.details`.
Intra-LPIPS / Intra-Style / KID run offline on the shipped feature network (`features.py`,
mdtools/assets/feature-net) when the ImageNet VGG weights are not cached.
The torchmetrics classes (SeamScore, SeamScoreLab, WrapSeamScore, IntraLPIPS,
IntraStyle) load lazily, because importing torchmetrics takes seconds.
"""

from __future__ import annotations

from typing import Any

from ..errors import MetricUnavailable
from .color import rgb_to_lab
from .common import Score, to_image_tensor
from .evaluate import METRICS, MetricSpec, evaluate
from .features import FeatureLPIPS, FeatureNet, load_feature_net, pooled_features
from .functional import (
    crop_grid,
    gram_matrix,
    intra_color,
    intra_lpips,
    intra_style,
    kid,
    kid_from_features,
    lines_from_boxes,
    mmd2_unbiased,
    poly_kernel,
    protocol_clip_score,
    protocol_crops,
    protocol_fid,
    protocol_kid,
    psnr,
    seam_score,
    seam_score_lab,
    seam_structure,
    sliding_crops,
    ssim,
    step_profiles,
    total_variation,
    vae_seam,
    wrap_seam_score,
)
from .scene_coherence import disc_count, horizon_breaks, horizon_continuity, no_disc, one_disc, sky_consistency

_LAZY_CLASSES = ("SeamScore", "SeamScoreLab", "WrapSeamScore", "IntraLPIPS", "IntraStyle")


def __getattr__(name: str) -> Any:
    if name in _LAZY_CLASSES:
        from . import classes

        return getattr(classes, name)
    raise AttributeError(f"module 'mdtools.metrics' has no attribute {name!r}")


__all__ = [
    "METRICS", "FeatureLPIPS", "FeatureNet", "MetricSpec", "MetricUnavailable", "Score", "crop_grid", "disc_count", "evaluate",
    "gram_matrix", "horizon_breaks", "horizon_continuity", "intra_lpips", "kid", "kid_from_features", "load_feature_net", "mmd2_unbiased",
    "no_disc", "one_disc", "poly_kernel", "protocol_clip_score", "protocol_crops", "protocol_fid", "protocol_kid",
    "pooled_features", "sky_consistency", "sliding_crops",
    "intra_color", "intra_style", "lines_from_boxes", "psnr", "rgb_to_lab", "seam_score", "seam_score_lab", "seam_structure", "ssim",
    "step_profiles", "to_image_tensor", "total_variation", "vae_seam", "wrap_seam_score", *_LAZY_CLASSES,
]
