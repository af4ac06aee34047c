"""`upscale(md, image, ...)`: resize, exact tiled encode, noise (or inversion), tiled denoise, exact tiled decode, colour fix.

The pipeline object `md` is passed in and used duck-typed (this package sits below
`pipeline`): `md(...)` for the tiled img2img, `md.vae`, `md.decode`, `md.vae_tiling_options`,
`md.family`, `md.native_window`, `md.vae_scale_factor`, `md.device`, `md.dtype`. Methods with
`image_space = True` (Ultimate SD Upscale, naive tiles) get the resized image through
`method.upscale_image(...)` instead. Every argument is checked before any model call.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..call import prepare_call
from ..errors import ConfigError
from ..instrument import Recorder
from ..methods import METHODS, get_method
from ..models.controlnet import load_controlnet
from ..sampling import scale_latents
from ..vae import tiled_encode
from .color_fix import COLOR_FIXES
from .color_fix import color_fix as apply_color_fix
from .images import UPSCALERS, load_image, resize_image, to_pil
from .inversion import (
    InversionMethod,
    check_inversion_model,
    check_noise_inversion,
    inversion_sigmas,
    log_sigmas,
    mix_noise,
    renoise_mask,
)

#: Defaults, chosen after the field's tools (docs/upscale.md): A1111 img2img denoise is set low for
#: upscaling (its Tiled Diffusion hint: <= 0.6 with noise inversion), 20 Euler-like steps, CFG 7.
DEFAULT_STRENGTH = 0.35
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.0
#: the ControlNet keywords passed through to md(...) (contract 1; diffusers' names)
CONTROLNET_KEYS = ("controlnet", "control_image", "controlnet_conditioning_scale", "control_guidance_start",
                   "control_guidance_end", "guess_mode", "control_mode")


@dataclass
class UpscaleResult:
    """`image` (PIL), `tensor` ((1, 3, H, W) in [0, 1]), `record` (dict: phases with seconds and peak
    memory, counts, the settings and every input conversion), `plan` (the canvas's TilePlan)."""

    image: Any
    tensor: torch.Tensor
    record: dict[str, Any] = field(default_factory=dict)
    plan: Any = None


def _check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (0 < strength <= 1):
        raise ConfigError(f"strength must be in (0, 1] (e.g. {DEFAULT_STRENGTH}), got {strength!r}")
    return float(strength)


def canvas_size(src_hw: tuple[int, int], scale: Any, multiple: int) -> tuple[int, int]:
    """The canvas (h, w) for `scale` (a number > 0: round(src * scale), or an (h, w) pair of pixels),
    or a ConfigError naming the nearest size that is a multiple of `multiple`."""
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in scale):
            raise ConfigError(f"scale as a size must be (height, width) in pixels, e.g. (512, 1024), got {scale!r}")
        hw = (int(scale[0]), int(scale[1]))
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0:
        hw = (int(round(src_hw[0] * scale)), int(round(src_hw[1] * scale)))
    else:
        raise ConfigError(f"scale must be a number > 0 (e.g. 2 or 4) or (height, width) in pixels, got {scale!r}")
    if hw[0] % multiple or hw[1] % multiple:
        near = tuple(max(multiple, int(round(v / multiple)) * multiple) for v in hw)
        raise ConfigError(f"scale={scale!r} gives a {hw[0]}x{hw[1]} canvas (height x width) from the "
                          f"{src_hw[0]}x{src_hw[1]} image; the model takes multiples of {multiple} px: use "
                          f"scale=({near[0]}, {near[1]}), the nearest valid size")
    return hw


def _control(md: Any, controlnet: Any, control_image: Any, src: torch.Tensor, canvas: torch.Tensor, hw: tuple[int, int],
             upscaler: Any, notes: list[str]) -> torch.Tensor | list | None:
    """The control image(s) at canvas size: given at the source size (resized like the image) or the
    canvas size; the resized source when a ControlNet comes without one (tile ControlNet convention)."""
    if controlnet is None and control_image is None:
        return None
    if control_image is None:
        notes.append("control image: the resized source at canvas size (tile ControlNet convention)")
        return canvas
    many = isinstance(control_image, (list, tuple))
    out = []
    for i, img in enumerate(control_image if many else [control_image]):
        name = f"control_image[{i}]" if many else "control_image"
        t, _ = load_image(img, name=name)
        size = tuple(t.shape[-2:])
        if size == hw:
            out.append(t)
        elif size == tuple(src.shape[-2:]):
            notes.append(f"{name}: resized from the source size {size[1]}x{size[0]} to the canvas")
            out.append(resize_image(t, hw, upscaler))
        else:
            raise ConfigError(f"{name} is {size[1]}x{size[0]} px (width x height); it must match the source "
                              f"({src.shape[-1]}x{src.shape[-2]}) or the canvas ({hw[1]}x{hw[0]})")
    return out if many else out[0]


@dataclass
class UpscaleCheck:
    """What `check_upscale` validated: the source, its conversions, the canvas, the settings, the plan."""

    source: torch.Tensor
    notes: list[str]
    canvas: tuple[int, int]
    strength: float
    inversion: dict[str, Any] | None
    method: Any
    image_space: bool
    plan: Any
    call_kw: dict[str, Any]
    call: Any = None  # the img2img CallSpec (latent methods)
    cfg_passes: int | None = None

    def estimate(self) -> dict[str, float]:
        """Expected model evaluations: the img2img's (the method's estimate) plus the inversion's
        (steps x views, no CFG); image-space methods: views x int(steps x strength) x CFG."""
        if self.call is not None:
            work = dict(self.method.estimate(self.call))
        else:
            cfg = self.cfg_passes or (2 if self.call_kw["guidance_scale"] > 1 else 1)
            work = {"unet_evaluations": self.plan.n_views * int(self.call_kw["num_inference_steps"] * self.strength) * cfg}
        if self.inversion is not None:
            work["unet_evaluations"] = work.get("unet_evaluations", 0) + self.inversion["steps"] * self.plan.n_views
        return work


def check_upscale(image: Any, *, scale: Any = 2, strength: float = DEFAULT_STRENGTH, method: Any = "multidiffusion",
                  method_params: dict | None = None, prompt: Any = "", negative_prompt: Any = None,
                  upscaler: Any = "lanczos", color_fix: str | None = None, color_fix_tiles: bool = False,
                  noise_inversion: Any = None, steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                  window: Any = None, overlap: Any = None, kernel: Any = None, kernel_params: dict | None = None,
                  view_batch_size: int = 4, vae_scale_factor: int = 8, size_multiple: int = 8,
                  native_window: int = 512, cfg_passes: int | None = None) -> UpscaleCheck:
    """Every check of `upscale` that needs no model (the CLI and experiment files call it before loading):
    the image (read, converted, noted), strength, scale -> canvas, window, method, colour fix, inversion.
    `cfg_passes`: model evaluations per sample and step when the model's kind fixes them (FLUX: 1, its
    guidance is an embedding; `md.family.cfg_passes`), for the estimate; None: 2 with CFG, else 1."""
    src, notes = load_image(image)
    strength = _check_strength(strength)
    if color_fix is not None and color_fix not in COLOR_FIXES:
        raise ConfigError(f"color_fix={color_fix!r} is not a colour fix; choose one of {list(COLOR_FIXES)} or None")
    if not isinstance(color_fix_tiles, bool):
        raise ConfigError(f"color_fix_tiles must be True (per view) or False (whole image), got {color_fix_tiles!r}")
    if not callable(upscaler) and upscaler not in UPSCALERS:
        raise ConfigError(f"upscaler={upscaler!r} is not known; choose one of {list(UPSCALERS)} or pass a callable "
                          "image -> image (an upscale model)")
    inv = check_noise_inversion(noise_inversion)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 and int(steps * strength) < 1:
        raise ConfigError(f"steps={steps} at strength={strength} gives {int(steps * strength)} denoising steps "
                          f"(int(steps * strength), as diffusers); use steps >= {math.ceil(1 / strength)}")
    name = method if isinstance(method, str) else getattr(method, "name", None)
    cls = METHODS.get(name) if isinstance(method, str) else type(method)
    if isinstance(method, str) and cls is None:
        raise ConfigError(f"method={method!r} is not a known method; choose one of {sorted(METHODS)}")
    image_space = bool(getattr(cls, "image_space", False))
    if not image_space and not getattr(cls, "supports_img2img", True):
        ok = sorted(n for n, c in METHODS.items() if c.supports_img2img or getattr(c, "image_space", False))
        raise ConfigError(f"method {name!r} does not support img2img, so it cannot upscale an image; use one of {ok}")
    if image_space and inv is not None:
        raise ConfigError(f"noise_inversion inverts a latent canvas; method {name!r} works on pixel tiles: "
                          "use noise_inversion=None or a latent method such as 'mixture'")
    vsf, multiple = vae_scale_factor, size_multiple
    hw = canvas_size(tuple(src.shape[-2:]), scale, multiple)
    win = native_window if window is None else window
    wh, ww = (win, win) if isinstance(win, int) else tuple(win)
    if hw[0] < wh or hw[1] < ww:
        need = max(math.ceil(wh / src.shape[-2]), math.ceil(ww / src.shape[-1]))
        raise ConfigError(f"the image is too small for the window: {src.shape[-1]}x{src.shape[-2]} px x scale {scale!r} "
                          f"gives a {hw[1]}x{hw[0]} canvas (width x height), smaller than the {ww}x{wh} px window; "
                          f"use scale >= {need} or a window <= the canvas (e.g. window={min(hw) // multiple * multiple})")
    ov = overlap if overlap is not None else default_overlap(vsf, min(wh, ww))
    call_kw = dict(prompt=prompt, negative_prompt=negative_prompt, height=hw[0], width=hw[1], window=win, overlap=ov,
                   kernel=kernel, kernel_params=kernel_params, num_inference_steps=steps,
                   guidance_scale=guidance_scale, view_batch_size=view_batch_size)
    meth_obj = get_method(method, **(method_params or {}))
    if not image_space:
        call, _ = prepare_call(**call_kw, circular=False, output_type="latent", scale=vsf, method=meth_obj,
                               strength=strength, img2img=True, cfg_passes=cfg_passes)
        plan = call.plan
    else:
        from ..plan import plan_views

        call = None
        plan = plan_views(hw[0], hw[1], window=win, overlap=ov, scale=vsf)
    return UpscaleCheck(source=src, notes=notes, canvas=hw, strength=strength, inversion=inv, method=meth_obj,
                        image_space=image_space, plan=plan, call_kw=call_kw, call=call, cfg_passes=cfg_passes)


def upscale(
    md: Any,
    image: Any,
    *,
    scale: Any = 2,
    strength: float = DEFAULT_STRENGTH,
    method: Any = "multidiffusion",
    method_params: dict | None = None,
    controlnet: Any = None,
    control_image: Any = None,
    controlnet_conditioning_scale: Any = 1.0,
    prompt: str = "",
    negative_prompt: str | None = None,
    upscaler: str | Callable[..., Any] = "lanczos",
    color_fix: str | None = None,
    color_fix_tiles: bool = False,
    noise_inversion: Any = None,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    window: int | tuple[int, int] | None = None,
    overlap: int | tuple[int, int] | None = None,
    kernel: Any = None,
    kernel_params: dict | None = None,
    view_batch_size: int = 4,
    vae_tiling: Any = True,
    model_options: dict[str, Any] | None = None,
    progress: bool = True,
    **control_kwargs: Any,
) -> UpscaleResult:
    """Upscale `image` (PIL, path, HxWxC array or (1,)3xHxW tensor in [0, 1]) by `scale` (2, 4, any
    number > 0, or (height, width) px) with tiled img2img on `md` (a MultiDiffusionPipeline).

    The path: resize with `upscaler` ("lanczos", "bicubic" or a callable image -> image, e.g. an
    upscale model; its output is resized to the canvas when it differs), exact tiled VAE encode
    (posterior mode), noise to `strength` (or `noise_inversion`: True or a dict of steps, retouch,
    renoise_strength, renoise_kernel; A1111 Tiled Diffusion's, docs/upscale.md), tiled denoising
    with `method` (any method with img2img; image-space methods such as "usdu" run their own
    per-tile img2img), exact tiled decode (`vae_tiling`: md's option, True by default), and
    `color_fix` ("wavelet" / "adain", StableSR's, on the whole image or with `color_fix_tiles`
    per view). ControlNet keywords (`controlnet`, `control_image`, `controlnet_conditioning_scale`,
    `control_guidance_start`, `control_guidance_end`, `guess_mode`, `control_mode`) go to md(...);
    a ControlNet without a control image gets the resized source. `model_options` (the model kind's
    options, `md(..., model_options=...)`: e.g. FLUX's `true_cfg_scale`, `max_sequence_length`,
    `flow_mu`; SDXL's `sdxl_view_crops`) go to every latent call. Returns UpscaleResult.
    """
    unknown = sorted(set(control_kwargs) - set(CONTROLNET_KEYS))
    if unknown:
        raise TypeError(f"upscale() got unexpected keyword argument(s) {unknown}")
    # ---- every check, before any model call ----------------------------------------------------
    if getattr(md, "vae", None) is None:
        raise ConfigError("upscale needs a latent model with a VAE; this pipeline works in pixel space")
    opts = _model_opts(model_options)
    vsf = md.vae_scale_factor
    chk = check_upscale(image, scale=scale, strength=strength, method=method, method_params=method_params,
                        prompt=prompt, negative_prompt=negative_prompt, upscaler=upscaler, color_fix=color_fix,
                        color_fix_tiles=color_fix_tiles, noise_inversion=noise_inversion, steps=steps,
                        guidance_scale=guidance_scale, window=window, overlap=overlap, kernel=kernel,
                        kernel_params=kernel_params, view_batch_size=view_batch_size, vae_scale_factor=vsf,
                        size_multiple=vsf * int(getattr(md.family, "patch", 1) or 1), native_window=md.native_window,
                        cfg_passes=md.family.cfg_passes(opts, negative_prompt))
    src, notes, hw, inv, meth_obj, image_space, plan, call_kw = (chk.source, chk.notes, chk.canvas, chk.inversion,
                                                                 chk.method, chk.image_space, chk.plan, chk.call_kw)
    strength = chk.strength
    if not image_space:
        md.family.check_call(hw[0], hw[1], call_kw["window"], vsf, opts)
    if model_options and image_space:
        raise ConfigError(f"model_options go to the latent img2img; method {meth_obj.name!r} runs its own per-tile "
                          "img2img without them: use model_options=None or a latent method such as 'mixture'")
    if model_options:
        call_kw = {**call_kw, "model_options": dict(model_options)}  # to the img2img and the inversion calls
    if inv is not None:
        check_inversion_model(getattr(md.pipe.scheduler.config, "prediction_type", None), md.family.kind in _flow_kinds())
    if isinstance(controlnet, (str, os.PathLike)):  # an embedded name or a folder: loaded once, not per tile
        controlnet = load_controlnet(controlnet, device=md.device, dtype=md.dtype)
    cn_kwargs = {k: v for k, v in control_kwargs.items() if v is not None}
    if controlnet is not None:
        cn_kwargs["controlnet"] = controlnet
    # the control image needs the resized canvas: resized after the checks of its size, below
    if control_image is not None or controlnet is not None:
        for i, img in enumerate(control_image if isinstance(control_image, (list, tuple)) else
                                ([] if control_image is None else [control_image])):
            t, _ = load_image(img, name="control_image")
            if tuple(t.shape[-2:]) not in (hw, tuple(src.shape[-2:])):
                raise ConfigError(f"control_image is {t.shape[-1]}x{t.shape[-2]} px (width x height); it must match the "
                                  f"source ({src.shape[-1]}x{src.shape[-2]}) or the canvas ({hw[1]}x{hw[0]})")

    # ---- run ------------------------------------------------------------------------------------
    rec = Recorder(md.device, dtype=md.dtype)
    counts = {"model_evaluations": 0, "vae_encodes": 0, "vae_decodes": 0}
    gen_seed = int(seed)
    with rec.phase("total"):
        with rec.phase("resize"):
            canvas = resize_image(src, hw, upscaler, notes=notes)
        control = _control(md, controlnet, control_image, src, canvas, hw, upscaler, notes)
        if control is not None:
            cn_kwargs["control_image"] = control
            cn_kwargs["controlnet_conditioning_scale"] = controlnet_conditioning_scale
        if image_space:
            with rec.phase("denoise"):
                out, info = meth_obj.upscale_image(
                    md, canvas.to(md.device), prompt=prompt, negative_prompt=negative_prompt, strength=strength,
                    steps=steps, guidance_scale=guidance_scale, seed=gen_seed, controlnet=controlnet,
                    control_image=cn_kwargs.get("control_image"),
                    controlnet_conditioning_scale=controlnet_conditioning_scale, progress=progress)
            for k, v in (info or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    key = {"unet_evaluations": "model_evaluations"}.get(k, k)
                    counts[key] = counts.get(key, 0) + v
            out = out.float().clamp(0, 1)
        else:
            vae_opts = md.vae_tiling_options(vae_tiling, plan)
            enc_report: dict[str, Any] = {}
            with rec.phase("encode"):
                x = canvas.to(md.device, md.vae.dtype) * 2 - 1
                enc = tiled_encode(md.vae, x, **(vae_opts or {"tile": max(hw)}), report=enc_report)
                init = scale_latents(enc, md.vae.config).to(md.dtype)
            counts["vae_encodes"] += 1
            noise = None
            old_scheduler = None
            if inv is not None:
                noise, inv_counts, old_scheduler = _invert(md, init, canvas, plan, inv, call_kw, meth_obj, gen_seed,
                                                           progress, rec)
                counts["model_evaluations"] += inv_counts
            try:
                with rec.phase("denoise"):
                    res = md(**{**call_kw, "num_inference_steps": steps}, method=meth_obj, init_latents=init,
                             strength=strength, latents=noise, generator=gen_seed, output_type="latent",
                             progress=progress, **cn_kwargs)
            finally:
                if old_scheduler is not None:
                    md.pipe.scheduler = old_scheduler
            counts["model_evaluations"] += int(res.record.counts.get("model_evaluations", 0)) if res.record else 0
            dec_report: dict[str, Any] = {}
            with rec.phase("decode"):
                out = ((md.decode(res.latents, tiling=vae_opts, report=dec_report).float() + 1) / 2).clamp(0, 1)
            counts["vae_decodes"] += 1
        if color_fix is not None:
            with rec.phase("color_fix"):
                tiles = [v.pixel_box(plan.scale) for v in plan.views] if color_fix_tiles else None
                out = apply_color_fix(out.float(), canvas.to(out.device, torch.float32), color_fix, tiles=tiles)
    record = rec.record.to_dict()
    record["counts"].update(counts)
    record["upscale"] = {
        "source_size": [int(src.shape[-2]), int(src.shape[-1])], "canvas_size": list(hw), "scale": _jsonable(scale),
        "strength": strength, "method": meth_obj.describe(), "steps": steps, "guidance_scale": guidance_scale,
        "seed": gen_seed, "upscaler": upscaler if isinstance(upscaler, str) else getattr(upscaler, "__name__", "callable"),
        "color_fix": color_fix, "color_fix_tiles": color_fix_tiles, "noise_inversion": inv,
        "controlnet": None if controlnet is None else str(getattr(controlnet, "__class__", type(controlnet)).__name__
                                                          if not isinstance(controlnet, str) else controlnet),
        "plan": plan.summary(), "notes": notes,
    }
    if not image_space and res.record is not None:
        record["denoise_record"] = {"counts": res.record.counts, "cost": res.record.extra.get("cost"),
                                    "method": res.record.extra.get("method")}
        record["extra"]["cost"] = res.record.extra.get("cost")  # the denoising's cost, for sweep tables
    out_cpu = out.detach().float().cpu()
    return UpscaleResult(image=to_pil(out_cpu), tensor=out_cpu, record=record, plan=plan)


def _invert(md: Any, init: torch.Tensor, canvas: torch.Tensor, plan: Any, inv: dict[str, Any], call_kw: dict[str, Any],
            meth: Any, seed: int, progress: bool, rec: Recorder) -> tuple[torch.Tensor, int, Any]:
    """The inverted (and renoised) noise for the img2img, its model evaluations, and the scheduler
    to restore: the sampling runs with Euler, as A1111 forces it with noise inversion."""
    from diffusers import EulerDiscreteScheduler

    sch = md.pipe.scheduler
    logs = log_sigmas(sch.alphas_cumprod)
    sig = inversion_sigmas(sch.alphas_cumprod, inv["steps"])
    wrapper = InversionMethod(meth, sig, logs, inv["retouch"], progress=progress)
    with rec.phase("invert"):
        res = md(**{**call_kw, "negative_prompt": None, "guidance_scale": 1.0, "num_inference_steps": inv["steps"]},
                 method=wrapper, latents=init, output_type="latent", progress=False)
        latent = res.latents.float()
        sigma_max = float(sig[-1])
        eps_inv = latent - init.float() / sigma_max
        if inv["renoise_strength"] > 0:
            grey = np.asarray(to_pil(canvas.cpu()).convert("L"))
            mask = renoise_mask(grey, inv["renoise_kernel"], float(inv["renoise_strength"]), tuple(init.shape[-2:]))
            g = torch.Generator("cpu").manual_seed(seed)
            eps_rand = torch.randn(init.shape, generator=g, dtype=torch.float32).to(init.device)
            noise = mix_noise(eps_inv, eps_rand, mask.to(init.device))
        else:
            noise = eps_inv
    md.pipe.scheduler = EulerDiscreteScheduler.from_config(sch.config)
    n = int(res.record.counts.get("model_evaluations", 0)) if res.record else 0
    return noise.to(md.dtype), n, sch


def default_overlap(vae_scale_factor: int, window: int) -> int:
    """A1111 Tiled Diffusion's img2img overlap, 8 latent px (64 px for SD's factor 8), at most half the window."""
    f = vae_scale_factor
    return min(8 * f, window // 2 // f * f)


def _model_opts(options: dict[str, Any] | None) -> dict[str, Any]:
    """The call's model options with their defaults (checked: unknown names are refused), for the family's checks."""
    from ..models import model_options

    return model_options(options)


def _flow_kinds() -> tuple[str, ...]:
    from ..models import FLOW_KINDS

    return tuple(FLOW_KINDS)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


__all__ = ["UpscaleCheck", "check_upscale", "default_overlap",
           "CONTROLNET_KEYS", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "UpscaleResult", "canvas_size",
           "upscale"]
