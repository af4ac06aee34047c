"""Bring an image: tiled upscaling on any img2img method, noise inversion, StableSR colour fixes (docs/upscale.md).

`upscale(md, image, scale=2, strength=0.35, method="multidiffusion", ...)` (also
`md.upscale(image, ...)`): resize, exact tiled encode, noise or noise inversion, tiled
denoising, exact tiled decode, optional colour fix; returns `UpscaleResult(image, tensor,
record, plan)`. This package sits just below `pipeline`: the pipeline is passed in.
"""

from __future__ import annotations

from .color_fix import COLOR_FIXES, adain_fix, color_fix, tile_weight, wavelet_decomposition, wavelet_fix
from .core import (
    CONTROLNET_KEYS,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    UpscaleCheck,
    UpscaleResult,
    canvas_size,
    check_upscale,
    default_overlap,
    upscale,
)
from .images import UPSCALERS, load_image, resize_image, to_pil
from .inversion import NOISE_INVERSION_DEFAULTS, check_noise_inversion, inversion_sigmas, retouch_mask

__all__ = [
    "COLOR_FIXES", "CONTROLNET_KEYS", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "NOISE_INVERSION_DEFAULTS",
    "UPSCALERS", "UpscaleCheck", "UpscaleResult", "check_upscale", "default_overlap",
    "adain_fix", "canvas_size", "check_noise_inversion", "color_fix", "inversion_sigmas",
    "load_image", "resize_image", "retouch_mask", "tile_weight", "to_pil", "upscale", "wavelet_decomposition", "wavelet_fix",
]
