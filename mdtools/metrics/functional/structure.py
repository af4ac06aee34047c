"""Structural seam score (`seam_structure`): do the two sides of a seam line predict each other less than elsewhere?"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import check_positive_int
from ..common import Score, to_image_tensor, to_rgb
from .geometry import LinesLike, resolve_lines

DEFAULT_DEPTH = 8  # px each side of a line compared by seam_structure
DEFAULT_STRUCT_SEGMENT = 32  # px along the line per correlation segment


def decorrelation_profile(gray: torch.Tensor, *, depth: int = DEFAULT_DEPTH,
                          segment: int = DEFAULT_STRUCT_SEGMENT) -> torch.Tensor:
    """For every vertical line p in [depth, W - depth], how decorrelated the two sides are.

    d(p) = 1 - sum cov(a, b) / sum sd(a) sd(b), pooled over mirror column pairs
    a = column p-1-j, b = column p+j (j < depth) and over `segment`-row runs along the
    line. Pooling by sd(a) sd(b) lets flat runs (no structure) count for nothing instead
    of for noise. (H, W) float tensor in, (W - 2 depth + 1,) out; index i is line depth + i.
    """
    H, W = gray.shape
    n = H // segment
    if n == 0 or W < 2 * depth + 1:
        return gray.new_zeros(0)
    g = gray[: n * segment].double().reshape(n, segment, W)
    g = g - g.mean(dim=1, keepdim=True)
    P = torch.arange(depth, W - depth + 1)
    cov = torch.zeros(len(P), dtype=torch.float64)
    sds = torch.zeros(len(P), dtype=torch.float64)
    for j in range(depth):
        a, b = g[:, :, P - 1 - j], g[:, :, P + j]
        cov += (a * b).sum(dim=1).sum(dim=0)
        sds += ((a * a).sum(dim=1).sqrt() * (b * b).sum(dim=1).sqrt()).sum(dim=0)
    return 1.0 - cov / sds.clamp_min(1e-12)


def seam_structure(
    image: Any,
    plan_or_lines: LinesLike,
    *,
    depth: int = DEFAULT_DEPTH,
    segment: int = DEFAULT_STRUCT_SEGMENT,
) -> Score:
    """Structural seam score: how much less the two sides of a seam line predict each other
    than the two sides of a control line do. 1 = no seam; > 1 = seam.

    Tiles decoded by a VAE rarely leave a one-pixel step: the decoder blurs the boundary,
    while the content (a mortar line, a horizon) stops matching across it. This score
    compares luminance columns mirrored about each line (p-1-j vs p+j, j < `depth`) with
    a pooled normalised cross-correlation over `segment`-px runs, and divides the mean
    decorrelation on seam lines by its mean on every line at least `depth` px from a
    seam. Blind spot: content with no structure wider than 2 * depth px (stars, noise)
    scores about 1 whatever the seams. `.details["per_seam"]` lists every line.
    """
    for name, v in (("depth", depth), ("segment", segment)):
        check_positive_int(name, v)
    img = to_rgb(to_image_tensor(image)).double()
    gray = img.mean(dim=-3)
    gray = gray.reshape(-1, *gray.shape[-2:])[0]
    lines, _ = resolve_lines(plan_or_lines, gray.shape[0], gray.shape[1])
    seam_vals, ctrl_vals, per = [], [], []
    for axis, g in (("x", gray), ("y", gray.T)):
        seams = lines.get(axis, ())
        prof = decorrelation_profile(g, depth=depth, segment=segment)
        if prof.numel() == 0:
            continue
        pos = torch.arange(depth, depth + prof.numel())
        near = torch.zeros(prof.numel(), dtype=torch.bool)
        for s in seams:
            near |= (pos - s).abs() < depth  # at distance >= depth the mirror pairs stay on one side
            if depth <= s <= depth + prof.numel() - 1:
                v = float(prof[s - depth])
                seam_vals.append(v)
                per.append({"axis": axis, "line": int(s), "decorrelation": v})
        ctrl_vals.append(prof[~near])
    if not seam_vals:
        return Score.nan(f"no seam line lies at least depth={depth} px inside the image")
    ctrl = torch.cat(ctrl_vals) if ctrl_vals else torch.zeros(0)
    if ctrl.numel() == 0:
        return Score.nan("no control line farther than depth px from every seam")
    base = float(ctrl.mean())
    for d in per:
        d["score"] = d["decorrelation"] / max(base, 1e-12)
    return Score(sum(seam_vals) / len(seam_vals) / max(base, 1e-12),
                 details={"control_decorrelation": base, "per_seam": per, "depth": depth, "segment": segment})


__all__ = ["DEFAULT_DEPTH", "DEFAULT_STRUCT_SEGMENT", "decorrelation_profile", "seam_structure"]
