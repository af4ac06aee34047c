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


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference (kL = kC = kH = 1) of CIELAB values, (..., 3, H, W) or (..., 3)
    along dim `-3` for images; pass `lab.unsqueeze(-1).unsqueeze(-1)` for plain triples.

    The formulas of Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula:
    implementation notes, supplementary test data, and mathematical observations", eqs. 1-21,
    hue angles in degrees; tested against their 34 published pairs (tests/test_color_drift.py).
    """
    L1, a1, b1 = lab1.unbind(-3)
    L2, a2, b2 = lab2.unbind(-3)
    deg = torch.pi / 180.0
    c_bar = (torch.sqrt(a1 * a1 + b1 * b1) + torch.sqrt(a2 * a2 + b2 * b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar ** 7 / (c_bar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.sqrt(a1p * a1p + b1 * b1), torch.sqrt(a2p * a2p + b2 * b2)
    h1p = torch.where((a1p == 0) & (b1 == 0), torch.zeros_like(a1p), torch.remainder(torch.atan2(b1, a1p) / deg, 360.0))
    h2p = torch.where((a2p == 0) & (b2 == 0), torch.zeros_like(a2p), torch.remainder(torch.atan2(b2, a2p) / deg, 360.0))
    dl = L2 - L1
    dc = c2p - c1p
    prod = c1p * c2p
    diff = h2p - h1p
    dh = torch.where(diff > 180, diff - 360, torch.where(diff < -180, diff + 360, diff))
    dh = torch.where(prod == 0, torch.zeros_like(dh), dh)
    d_hue = 2 * torch.sqrt(prod) * torch.sin(dh * deg / 2)
    l_bar = (L1 + L2) / 2
    cp_bar = (c1p + c2p) / 2
    hsum = h1p + h2p
    h_bar = torch.where((h1p - h2p).abs() <= 180, hsum / 2, torch.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2))
    h_bar = torch.where(prod == 0, hsum, h_bar)
    t = (1 - 0.17 * torch.cos((h_bar - 30) * deg) + 0.24 * torch.cos(2 * h_bar * deg)
         + 0.32 * torch.cos((3 * h_bar + 6) * deg) - 0.20 * torch.cos((4 * h_bar - 63) * deg))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(cp_bar ** 7 / (cp_bar ** 7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(2 * d_theta * deg) * r_c
    return torch.sqrt((dl / s_l) ** 2 + (dc / s_c) ** 2 + (d_hue / s_h) ** 2 + r_t * (dc / s_c) * (d_hue / s_h))
