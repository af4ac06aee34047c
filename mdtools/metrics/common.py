"""Shared plumbing for the metrics: image coercion (`to_image_tensor`, `to_rgb`) and the `Score` result.

Kept free of torchmetrics/lpips/torchvision imports so `import mdtools.metrics` stays fast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

IMAGE_FORMS = (
    "a PIL image, an HxWx3 (or HxW) uint8 array, an HxWx3 float array in [0, 1], "
    "or a 3xHxW / Nx3xHxW float tensor in [0, 1]"
)


class Score(float):
    """A float that also carries why it is NaN (`reason`) and a breakdown (`details`).

    It behaves as a plain number (comparisons, arithmetic, `math.isnan`, pandas columns),
    so `seam_score(img, plan) > 1.2` reads naturally while the per-seam table stays at hand.
    """

    reason: str | None
    details: dict[str, Any]

    def __new__(cls, value: float, *, reason: str | None = None, details: dict[str, Any] | None = None) -> "Score":
        obj = super().__new__(cls, float(value))
        obj.reason = reason
        obj.details = details or {}
        return obj

    def __reduce__(self):  # keep reason/details through pickling (multiprocessing sweeps)
        return (_make_score, (float(self), self.reason, self.details))

    def __repr__(self) -> str:
        if self.reason is not None and math.isnan(self):
            return f"Score(nan, reason={self.reason!r})"
        return f"Score({float(self)!r})"

    @classmethod
    def nan(cls, reason: str, **details: Any) -> "Score":
        return cls(float("nan"), reason=reason, details=details)


def _make_score(value: float, reason: str | None, details: dict[str, Any]) -> Score:
    return Score(value, reason=reason, details=details)


def to_image_tensor(image: Any, *, name: str = "image", batch: bool = False) -> torch.Tensor:
    """Coerce `image` to a float64 (N, C, H, W) tensor in [0, 1] with C in {1, 3}.

    `batch=False` requires a single image (N == 1). Errors name the argument and the
    accepted forms.
    """
    try:  # PIL is optional at import time; only needed when a PIL image is passed
        from PIL import Image as _PILImage
    except ImportError:  # pragma: no cover
        _PILImage = None
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        arr = np.asarray(image.convert("RGB"))
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].to(torch.float64) / 255.0
        return t
    if isinstance(image, np.ndarray):
        t = _from_numpy(image, name)
    elif isinstance(image, torch.Tensor):
        t = _from_torch(image, name)
    else:
        raise ConfigError(f"{name} must be {IMAGE_FORMS}; got {type(image).__name__}")
    if not batch and t.shape[0] != 1:
        raise ConfigError(f"{name} must be a single image; got a batch of {t.shape[0]} (shape {tuple(t.shape)})")
    if t.shape[-1] < 2 or t.shape[-2] < 2:
        raise ConfigError(f"{name} must be at least 2x2 pixels; got shape {tuple(t.shape)}")
    return t


def _check_range(t: torch.Tensor, name: str) -> torch.Tensor:
    lo_t, hi_t = torch.aminmax(t)  # NaN propagates into both, +-inf shows in the range
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{name} contains NaN or infinite values")
    # a little slack for decoder outputs that overshoot by rounding
    if lo < -1e-3 or hi > 1 + 1e-3:
        hint = " (divide 0-255 data by 255, map [-1, 1] decoder output with (x + 1) / 2)"
        raise ConfigError(f"{name} float values must lie in [0, 1]; got range [{lo:.4g}, {hi:.4g}]{hint}")
    return t.clamp(0.0, 1.0)


def _from_numpy(a: np.ndarray, name: str) -> torch.Tensor:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ConfigError(f"{name} array must be HxW or HxWx3 (RGB); got shape {a.shape}")
    if a.shape[2] == 4:  # RGBA: alpha is not part of what a viewer sees as seams
        a = a[:, :, :3]
    if a.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float64) / 255.0
    elif a.dtype == np.uint16:
        t = torch.from_numpy(a.astype(np.float64) / 65535.0)
    elif np.issubdtype(a.dtype, np.floating):
        t = _check_range(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)), name)
    else:
        raise ConfigError(f"{name} array dtype must be uint8, uint16 or float in [0, 1]; got {a.dtype}")
    return t.permute(2, 0, 1)[None]


def _from_torch(t: torch.Tensor, name: str) -> torch.Tensor:
    t = t.detach().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ConfigError(
            f"{name} tensor must be 3xHxW or Nx3xHxW (channels first); got shape {tuple(t.shape)}"
            + (" — use .permute(2, 0, 1) for an HxWx3 tensor" if t.ndim == 4 or t.shape[-1] == 3 else "")
        )
    if t.dtype == torch.uint8:
        return t.to(torch.float64) / 255.0
    if not t.is_floating_point():
        raise ConfigError(f"{name} tensor dtype must be float in [0, 1] or uint8; got {t.dtype}")
    return _check_range(t.to(torch.float64), name)


def to_rgb(t: torch.Tensor) -> torch.Tensor:
    """Grey (N, 1, H, W) -> (N, 3, H, W); RGB unchanged."""
    return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
