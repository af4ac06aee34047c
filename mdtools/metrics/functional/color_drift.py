"""`color_drift`: the low-frequency colour difference of an output against its source, overall and worst tile.

Both images are compared at the output's size (the reference is resized with antialiased
bilinear filtering), blurred with a wide Gaussian (sigma = max(2, min(H, W) / 32) px, so
detail, sharpening, noise and texture do not count, only the colour a viewer sees from a
distance), converted to CIELAB and compared pixel by pixel with CIEDE2000. The value is the
mean Delta E 2000 over the image; `details["worst_tile"]` is the largest mean over the
tiles (the plan's views in pixels, or a 4 x 4 grid without a plan), which catches a colour
offset confined to one tile that the mean dilutes. Unit: Delta E 2000 (about 1 is just
noticeable, 2-3 clearly visible side by side). Validated in benchmarks/color_drift_validation.py.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..color import ciede2000, rgb_to_lab
from ..common import Score, to_image_tensor, to_rgb

#: blur sigma as a fraction of the image's shorter side (and its floor in pixels)
DRIFT_BLUR_FRACTION = 1 / 32
DRIFT_BLUR_MIN_PX = 2.0
#: tiles per axis when no plan gives the tiles
DRIFT_GRID = 4


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), radius 3 sigma, replicate padding."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def drift_map(image: Any, reference: Any, *, sigma: float | None = None) -> tuple[torch.Tensor, float]:
    """(H, W) CIEDE2000 map of the blurred image vs the blurred, resized reference, and the sigma used."""
    img = to_rgb(to_image_tensor(image))
    ref = to_rgb(to_image_tensor(reference, name="reference"))
    h, w = img.shape[-2:]
    if tuple(ref.shape[-2:]) != (h, w):
        ref = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    s = float(sigma) if sigma is not None else max(DRIFT_BLUR_MIN_PX, min(h, w) * DRIFT_BLUR_FRACTION)
    a = rgb_to_lab(gaussian_blur(img, s).clamp(0, 1))
    b = rgb_to_lab(gaussian_blur(ref, s).clamp(0, 1))
    return ciede2000(a, b)[0], s


def grid_tiles(h: int, w: int, n: int = DRIFT_GRID) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of an n x n grid covering h x w."""
    ys = [round(i * h / n) for i in range(n + 1)]
    xs = [round(j * w / n) for j in range(n + 1)]
    return [(ys[i], xs[j], ys[i + 1] - ys[i], xs[j + 1] - xs[j]) for i in range(n) for j in range(n)
            if ys[i + 1] > ys[i] and xs[j + 1] > xs[j]]


def color_drift(image: Any, reference: Any, tiles: Sequence[tuple[int, int, int, int]] | None = None, *,
                sigma: float | None = None) -> Score:
    """Mean CIEDE2000 of the low frequencies of `image` vs `reference` (module docstring); details:
    worst_tile (largest tile mean), worst_box (its top, left, height, width), tile_means, sigma_px."""
    dmap, s = drift_map(image, reference, sigma=sigma)
    boxes = list(tiles) if tiles is not None else grid_tiles(*dmap.shape)
    means = [float(dmap[t:t + hh, l:l + ww].mean()) for t, l, hh, ww in boxes]
    k = max(range(len(means)), key=means.__getitem__)
    return Score(float(dmap.mean()), details={"worst_tile": means[k], "worst_box": list(boxes[k]), "tile_means": means,
                                              "sigma_px": s})


__all__ = ["DRIFT_BLUR_FRACTION", "DRIFT_BLUR_MIN_PX", "DRIFT_GRID", "color_drift", "drift_map", "gaussian_blur",
           "grid_tiles"]
