"""Plant synthetic seams of known strength along given lines, and discs / blobs in scenes (for validating metrics).

The seam functions take a (N, C, H, W) float tensor in [0, 1] and a line dict {"x": cols, "y":
rows} (e.g. `plan.seam_lines`) and return a new tensor, clipped to [0, 1]. `plant_blob` and
`erase_disc` take an (H, W, 3) float array (the scene-coherence detectors' input).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Lines = dict[str, tuple[int, ...]]

# A red-green direction with ~zero Rec.709 luminance (0.2126 r + 0.7152 g = 0): a pure
# colour shift that a luminance-only metric should barely see.
COLOUR_DIRECTION = (1.0, -0.2973, 0.0)


def _alternating(length: int, lines: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """+-1/2 profile that flips sign at every line: a step of height 1 at each."""
    idx = torch.arange(length)
    count = torch.zeros(length, dtype=torch.long)
    for p in lines:
        count += (idx >= p).long()
    return (0.5 - (count % 2).to(dtype))


def plant_offset(
    img: torch.Tensor, lines: Lines, height: float, *, direction: tuple[float, ...] | None = None
) -> torch.Tensor:
    """Add a step of `height` across every line (alternating +-height/2 between lines).

    `direction`: per-channel weights (default all 1: a brightness step); see COLOUR_DIRECTION.
    """
    N, C, H, W = img.shape
    d = torch.tensor(direction if direction is not None else (1.0,) * C, dtype=img.dtype).view(1, C, 1, 1)
    fx = _alternating(W, tuple(lines.get("x", ())), img.dtype).view(1, 1, 1, W)
    fy = _alternating(H, tuple(lines.get("y", ())), img.dtype).view(1, 1, H, 1)
    return (img + height * d * (fx + fy)).clamp(0, 1)


def plant_colour(img: torch.Tensor, lines: Lines, height: float) -> torch.Tensor:
    """A colour step of `height` (red up, green down, ~constant luminance) across each line."""
    return plant_offset(img, lines, height, direction=COLOUR_DIRECTION)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (radius 3 sigma)."""
    if sigma <= 0:
        return img.clone()
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    C = img.shape[1]
    out = F.conv2d(F.pad(img, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def plant_blur(img: torch.Tensor, lines: Lines, sigma: float, *, half_width: int = 6) -> torch.Tensor:
    """Replace a band of `half_width` px each side of every line by a blurred copy."""
    blurred = gaussian_blur(img, sigma)
    H, W = img.shape[-2:]
    mask = torch.zeros(H, W, dtype=torch.bool)
    for p in lines.get("x", ()):
        mask[:, max(0, p - half_width):p + half_width] = True
    for p in lines.get("y", ()):
        mask[max(0, p - half_width):p + half_width, :] = True
    return torch.where(mask, blurred, img)


def plant_blob(img: np.ndarray, cy: float, cx: float, r: float, colour, alpha: float = 1.0) -> np.ndarray:
    """A copy of an (H, W, 3) image with an anti-aliased disc of `colour` blended in at `alpha` (1 = opaque).

    Coverage = clip(r + 0.5 - distance, 0, 1), as the scene generator draws its sun; a faint sun
    is alpha < 1, a bright blob in the ground is the same disc centred below the horizon.
    """
    out = np.array(img, dtype=np.float32, copy=True)
    H, W = out.shape[:2]
    y, x = np.mgrid[0:H, 0:W]
    cov = np.clip(r + 0.5 - np.hypot(y + 0.5 - cy, x + 0.5 - cx), 0.0, 1.0)[..., None] * float(alpha)
    out = out * (1 - cov) + np.asarray(colour, dtype=np.float32) * cov
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def erase_disc(img: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """A copy with the disc at (cy, cx, r) (plus 2 px) replaced by the same rows 3 r + 6 px to the side: a sky with no sun.

    Valid where those rows are sky on that side (the scene generator keeps its disc above the
    highest peak and clouds r + 4 px away from it).
    """
    out = np.array(img, dtype=np.float32, copy=True)
    H, W = out.shape[:2]
    shift = int(math.ceil(3 * r + 6))
    shift = shift if cx + shift + r + 3 < W else -shift
    y, x = np.mgrid[0:H, 0:W]
    m = np.hypot(y + 0.5 - cy, x + 0.5 - cx) <= r + 2
    ys, xs = np.nonzero(m)
    out[ys, xs] = img[ys, np.clip(xs + shift, 0, W - 1)]
    return out
