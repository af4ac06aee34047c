"""Upscale runs of experiment files: the truth, its downsampled source, the check before any model, the run.

A run with an `upscale:` block (config.UpscaleConfig) renders its ground truth at the canvas
size (a scene of the scenes generator, or an image file resized to the canvas), downsamples
it by `downsample` with an antialiased PIL filter, upscales it back with `md.upscale` and
measures the result against the truth: the run's metrics get the truth as `reference`
(psnr, ssim, color_drift, ... need it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:  # config imports this module for its checks; the annotation only needs the name
    from .config import RunConfig


def truth_and_source(cfg: RunConfig, scale: int) -> tuple[np.ndarray, Any, str]:
    """(truth (H, W, 3) float32 in [0, 1] at the canvas size, the downsampled source (PIL), the prompt)."""
    from PIL import Image

    up = cfg.upscale
    assert up is not None
    h, w = cfg.canvas.resolve(scale)
    if up.downsample and (h % up.downsample or w % up.downsample):
        raise ConfigError(f"upscale.downsample={up.downsample} must divide the canvas {h}x{w} (height x width); "
                          f"use a canvas that is a multiple of it, e.g. height: {h // up.downsample * up.downsample}")
    prompt = cfg.prompt
    if up.image is not None:
        p = Path(up.image)
        if not p.is_file():
            raise ConfigError(f"upscale.image: no image file at {str(p)!r}")
        with Image.open(p) as im:
            truth = np.asarray(im.convert("RGB").resize((w, h), Image.LANCZOS), dtype=np.float32) / 255.0
    else:
        from ..toy.scenes import make_scene, sample_params, scene_prompt

        params = sample_params(np.random.default_rng(up.scene_seed))
        truth, labels = make_scene(params, h, w)
        truth = np.clip(truth, 0, 1).astype(np.float32)
        if up.scene_prompt:
            prompt = scene_prompt(labels)
    filt = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "box": Image.BOX}[up.downsample_filter]
    pil = Image.fromarray((truth * 255).round().astype(np.uint8))
    source = pil.resize((w // up.downsample, h // up.downsample), filt)
    return truth, source, prompt


def upscale_kwargs(cfg: RunConfig, prompt: str) -> dict[str, Any]:
    """The keywords of `md.upscale` for this run (its sampler and tiling settings included)."""
    up = cfg.upscale
    assert up is not None
    name, params = cfg.method_call()
    scale = up.scale if up.scale is not None else up.downsample
    return dict(scale=int(scale) if float(scale).is_integer() else scale, strength=up.strength, method=name,
                method_params=params, prompt=prompt, negative_prompt=cfg.negative_prompt, upscaler=up.upscaler,
                color_fix=up.color_fix, color_fix_tiles=up.color_fix_tiles,
                noise_inversion=up.noise_inversion or None, steps=cfg.sampler.steps, guidance_scale=cfg.sampler.guidance,
                window=cfg.tiling.window, overlap=cfg.tiling.overlap, kernel=cfg.kernel_arg(),
                kernel_params=cfg.tiling.kernel_params, view_batch_size=cfg.tiling.view_batch_size)


def check_upscale_run(cfg: RunConfig, scale: int, native: int | None, patch: int = 1) -> Any:
    """Every check of an upscale run before any model loads (ConfigError naming the field); returns
    the `mdtools.upscale.UpscaleCheck` (its `estimate()` is the run's expected work)."""
    from ..upscale import check_upscale

    up = cfg.upscale
    assert up is not None
    if cfg.tiling.circular:
        raise ConfigError("upscale runs take no circular canvas; use tiling.circular: false")
    h, w = cfg.canvas.resolve(scale)
    if h % up.downsample or w % up.downsample:
        raise ConfigError(f"upscale.downsample={up.downsample} must divide the canvas {h}x{w} (height x width)")
    if up.image is not None and not Path(up.image).is_file():
        raise ConfigError(f"upscale.image: no image file at {up.image!r}")
    src = np.zeros((h // up.downsample, w // up.downsample, 3), dtype=np.uint8)  # sizes only: the truth is made at run time
    kw = upscale_kwargs(cfg, cfg.prompt)
    try:
        chk = check_upscale(src, **kw, vae_scale_factor=scale, size_multiple=scale * patch, native_window=native or 512)
    except ConfigError as e:
        raise ConfigError(f"upscale: {e}") from None
    if up.model_options and chk.image_space:
        raise ConfigError(f"upscale.model_options go to the latent img2img; method {kw['method']!r} runs its own "
                          "per-tile img2img without them: drop upscale.model_options or use a latent method such as mixture")
    return chk


def run_upscale(md: Any, cfg: RunConfig) -> tuple[np.ndarray, Any, dict[str, Any], np.ndarray]:
    """(output (H, W, 3) float in [0, 1], the plan, the record, the truth) of an upscale run."""
    truth, source, prompt = truth_and_source(cfg, md.vae_scale_factor)
    up = cfg.upscale
    assert up is not None
    extra: dict[str, Any] = {}
    if up.controlnet is not None:
        extra = {"controlnet": up.controlnet, "controlnet_conditioning_scale": up.controlnet_conditioning_scale}
        if up.control_mode is not None:
            extra["control_mode"] = up.control_mode
    if up.model_options:
        extra["model_options"] = dict(up.model_options)
    res = md.upscale(source, **upscale_kwargs(cfg, prompt), seed=cfg.seed, progress=False,
                     vae_tiling=cfg.vae.model_dump(), **extra)
    out = res.tensor[0].permute(1, 2, 0).numpy()
    return out, res.plan, res.record, truth


__all__ = ["check_upscale_run", "run_upscale", "truth_and_source", "upscale_kwargs"]
