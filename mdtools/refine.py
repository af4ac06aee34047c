"""Global low-resolution pass (seed article, method step 4; claim C6).

First the whole canvas is generated at 1/`factor` of its size, where a window sees most
of it and can lay out global structure (sky gradients, horizons). Its latent is upscaled
to the full canvas, noised to `strength` and denoised again with MultiDiffusion
(SDEdit, Meng et al. 2022), so the tiled pass refines detail on top of a composition that
was decided globally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .pipeline import MultiDiffusionOutput


def generate_with_global_pass(
    md: Any, prompt: Any, *, height: int, width: int, factor: int = 4, strength: float = 0.6, **kwargs: Any
) -> MultiDiffusionOutput:
    """Low-res pass at (height, width) / factor, latent upscale, tiled pass at `strength`.

    `kwargs` go to both passes (window, overlap, kernel, steps, guidance, generator, ...).
    The returned record adds the low-res pass's time and model evaluations to the totals
    and describes the pass in `record.extra["global_pass"]`.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ConfigError(f"global_pass.factor must be an integer >= 2 (e.g. 4), got {factor!r}")
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ConfigError(f"global_pass.strength must be in (0, 1] (e.g. 0.6), got {strength!r}")
    s = md.vae_scale_factor
    lh, lw = max(s, height // factor // s * s), max(s, width // factor // s * s)
    final_type = kwargs.pop("output_type", "pil")
    gen = kwargs.pop("generator", None)
    if isinstance(gen, int):
        gen = torch.Generator("cpu").manual_seed(gen)
    low = md(prompt, height=lh, width=lw, output_type="latent", generator=gen, **kwargs)
    up = F.interpolate(low.latents.float(), size=(height // s, width // s), mode="bicubic", align_corners=False)
    out = md(prompt, height=height, width=width, init_latents=up.to(low.latents.dtype), strength=strength,
             output_type=final_type, generator=gen, **kwargs)
    if out.record is not None and low.record is not None:
        rec, lo = out.record, low.record
        for key in ("model_evaluations", "model_forward_calls"):
            rec.counts[key] = rec.counts.get(key, 0) + lo.counts.get(key, 0)
        for name in ("total", "denoise"):
            if name in rec.phases and name in lo.phases:
                rec.phases[name].seconds += lo.phases[name].seconds
        rec.extra["global_pass"] = {
            "factor": factor, "strength": strength, "low_res": [lh, lw],
            "low_res_seconds": lo.phases["total"].seconds, "low_res_evaluations": lo.counts.get("model_evaluations"),
        }
    return out
