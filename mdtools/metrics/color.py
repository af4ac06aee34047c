"""sRGB -> CIELAB in torch (D65 white, 2-degree observer), matching skimage.color.rgb2lab.

Written out here rather than imported so the colour seam metric runs on any device and
stays differentiable; the constants are the standard sRGB/IEC 61966-2-1 ones.
"""

from __future__ import annotations

import torch

# linear sRGB -> XYZ (D65), rows X, Y, Z
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPS = 0.008856  # (6/29)^3: below it CIE uses the linear segment of f(t)
_KAPPA = 7.787  # slope of that segment, 1/3 (29/6)^2


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (values in [0, 1])."""
    return torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> (..., 3, H, W) L* in [0, 100], a*, b* (about +-128).

    Unit: one CIELAB unit; a Euclidean distance of ~2.3 is a just-noticeable difference.
    """
    if rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_lab needs 3 channels in dim -3, got shape {tuple(rgb.shape)}")
    lin = srgb_to_linear(rgb)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin)
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    t = xyz / white
    f = torch.where(t > _EPS, t.clamp_min(_EPS) ** (1.0 / 3.0), _KAPPA * t + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    L = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((L, a, b), dim=-3)
