"""StableSR's colour fixes (wavelet, AdaIN) on the whole image or per tile, in torch.

Formulas as StableSR's `scripts/wavelet_color_fix.py` (facts sheet §5):

* AdaIN, per image and channel: `(content - mean_c) / std_c * std_s + mean_s`, with
  `std = sqrt(unbiased variance + 1e-5)`.
* wavelet: five levels of the dilated 3x3 [1 2 1]^T [1 2 1] / 16 blur with replicate
  padding (radius 2^i, i = 0..4); the result is `content - low(content) + low(style)`,
  i.e. the content's high frequencies on the style's low frequencies.

Both clamp to [0, 1] as StableSR's PIL wrappers do. Per tile (`tiles=` boxes in pixels),
each tile is fixed against the same crop of the reference, then the tiles are gathered
with StableSR's Gaussian tile weights (variance 0.01 of the tile size, as its VQGAN-tile
gathering), normalised by their sum.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: the colour fixes `upscale(color_fix=...)` accepts (None: no fix)
COLOR_FIXES: tuple[str, ...] = ("wavelet", "adain")
#: StableSR's wavelet decomposition depth
WAVELET_LEVELS = 5
#: StableSR's AdaIN variance epsilon
ADAIN_EPS = 1e-5


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    k = k.expand(c, 1, 3, 3)
    return F.conv2d(F.pad(x, (radius,) * 4, mode="replicate"), k, groups=c, dilation=radius)


def wavelet_decomposition(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) frequencies of a (B, C, H, W) image: StableSR's dilated-blur pyramid."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2 ** i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """StableSR's wavelet colour fix: the content's high frequencies + the style's low, clamped to [0, 1]."""
    high, _ = wavelet_decomposition(content)
    _, low = wavelet_decomposition(style)
    return (high + low).clamp(0.0, 1.0)


def adain_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """StableSR's AdaIN colour fix: per image and channel mean / std of the style, clamped to [0, 1]."""
    b, c = content.shape[:2]

    def stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = t.reshape(t.shape[0], t.shape[1], -1)
        return flat.mean(2).reshape(t.shape[0], c, 1, 1), (flat.var(2) + ADAIN_EPS).sqrt().reshape(t.shape[0], c, 1, 1)

    mc, sc = stats(content)
    ms, ss = stats(style)
    return ((content - mc) / sc * ss + ms).clamp(0.0, 1.0).reshape(b, c, *content.shape[2:])


def tile_weight(h: int, w: int, *, var: float = 0.01, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """StableSR's Gaussian tile weight (h, w): exp(-(x - (L-1)/2)^2 / (L^2 * 2 var)) / sqrt(2 pi var) per axis."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64)
        return torch.exp(-((x - (n - 1) / 2) ** 2) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return torch.outer(axis(h), axis(w)).to(device=device, dtype=dtype)


def color_fix(image: torch.Tensor, reference: torch.Tensor, mode: str, *,
              tiles: Sequence[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
    """Apply colour fix `mode` ("wavelet" or "adain") to `image` against `reference` (same size,
    (B, 3, H, W) in [0, 1]); whole image, or per tile for `tiles` = (top, left, height, width) boxes."""
    if mode not in COLOR_FIXES:
        raise ConfigError(f"color_fix={mode!r} is not a colour fix; choose one of {list(COLOR_FIXES)} or None")
    if image.shape != reference.shape:
        raise ConfigError(f"color_fix needs the reference at the image's size {tuple(image.shape)}, "
                          f"got {tuple(reference.shape)}")
    fn = wavelet_fix if mode == "wavelet" else adain_fix
    if tiles is None:
        return fn(image, reference)
    num = torch.zeros_like(image)
    den = torch.zeros_like(image[:, :1])
    for top, left, h, w in tiles:
        sl = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
        wt = tile_weight(h, w, dtype=image.dtype, device=image.device)
        num[sl] += fn(image[sl], reference[sl]) * wt
        den[sl] += wt
    if bool((den == 0).any()):
        raise ConfigError("color_fix tiles do not cover the image; give tiles that cover every pixel")
    return num / den


__all__ = ["ADAIN_EPS", "COLOR_FIXES", "WAVELET_LEVELS", "adain_fix", "color_fix", "tile_weight", "wavelet_decomposition",
           "wavelet_fix"]
