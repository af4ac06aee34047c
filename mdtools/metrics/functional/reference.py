"""Reference and plain image metrics: PSNR and SSIM against a reference image, total variation."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..common import Score, to_image_tensor, to_rgb


def psnr(image: Any, reference: Any) -> Score:
    """Peak signal-to-noise ratio in dB against `reference` (data range 1; higher is better)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(image, reference)
    return Score(float(peak_signal_noise_ratio(a, b, data_range=1.0)))


def ssim(image: Any, reference: Any) -> Score:
    """Structural similarity against `reference` (Gaussian 11x11, sigma 1.5; 1 = identical)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(image, reference)
    return Score(float(structural_similarity_index_measure(a, b, data_range=1.0)))


def total_variation(image: Any) -> Score:
    """Mean absolute neighbour difference (x plus y), per pixel and channel, intensity units.

    torchmetrics' total_variation sums over pixels; dividing by C*H*W makes images of
    different sizes comparable.
    """
    from torchmetrics.functional.image import total_variation as tm_tv

    img = to_image_tensor(image, batch=True)
    n, c, h, w = img.shape
    return Score(float(tm_tv(img, reduction="mean")) / (c * h * w))


def _pair(image: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = to_rgb(to_image_tensor(image, batch=True))
    b = to_rgb(to_image_tensor(reference, name="reference", batch=True))
    if a.shape != b.shape:
        raise ConfigError(f"reference must have the image's shape {tuple(a.shape)}; got {tuple(b.shape)}")
    return a, b


__all__ = ["psnr", "ssim", "total_variation"]
