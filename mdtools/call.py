"""Validation of a generation call, before any model loads: what the CLI, the configs and the pipeline share."""

from __future__ import annotations

from typing import Any, Sequence

from .errors import ConfigError, check_choice, check_positive_int
from .kernels import Kernel
from .methods import Method, get_method
from .methods.regions import check_regions
from .plan import CIRCULAR_MODES, TilePlan, plan_views
from .sampling import CallSpec

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def prepare_call(
    *,
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None = None,
    height: int,
    width: int,
    window: int | tuple[int, int],
    overlap: int | tuple[int, int],
    kernel: str | Kernel | None,
    kernel_params: dict | None = None,
    num_inference_steps: int,
    guidance_scale: float,
    view_batch_size: int,
    circular: Any,
    output_type: str,
    scale: int,
    guidance_rescale: float = 0.0,
    latents_shape: Sequence[int] | None = None,
    latent_channels: int | None = None,
    method: Any = "multidiffusion",
    method_params: dict | None = None,
    regions: Sequence[Any] | None = None,
    bootstrap_steps: int = 0,
    strength: float = 1.0,
    img2img: bool = False,
    cfg_passes: int | None = None,
) -> tuple[CallSpec, Method]:
    """Validate every generation argument; return the call spec and the method object.

    Raises ConfigError naming the field and a valid value. Needs no model: the CLI and the
    experiment runner call it before loading anything.
    """
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ConfigError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    if isinstance(prompt, list) and (not prompt or not all(isinstance(p, str) for p in prompt)):
        raise ConfigError("prompt list must be a non-empty list of strings, e.g. ['a photo of a beach']")
    batch = len(prompt) if isinstance(prompt, list) else 1
    if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
        raise ConfigError(
            f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch}; "
            f"give one negative prompt per prompt, or a single string"
        )
    check_positive_int("num_inference_steps", num_inference_steps)
    check_positive_int("view_batch_size", view_batch_size)
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be a number >= 0 (e.g. 7.5), got {guidance_scale!r}")
    if not isinstance(guidance_rescale, (int, float)) or not 0.0 <= guidance_rescale <= 1.0:
        raise ConfigError(f"guidance_rescale must be in [0, 1] (e.g. 0.7), got {guidance_rescale!r}")
    check_choice("output_type", output_type, OUTPUT_TYPES)
    if circular not in CIRCULAR_MODES and circular is not True:
        raise ConfigError(f"circular={circular!r} is not valid; choose one of {list(CIRCULAR_MODES)}")
    if method_params is not None and not isinstance(method_params, dict):
        raise ConfigError(f"method_params must be a dict of parameter names to values, got {type(method_params).__name__}")
    meth = get_method(method, **(method_params or {}))
    k = meth.resolve_kernel(kernel, kernel_params)
    plan = plan_views(height, width, window=window, overlap=overlap, scale=scale, circular=circular)
    if img2img and not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ConfigError(f"strength must be in (0, 1] (e.g. 0.6), got {strength!r}")
    if img2img and int(num_inference_steps * strength) < 1:  # diffusers' img2img runs int(steps * strength) steps
        raise ConfigError(f"strength={strength} with num_inference_steps={num_inference_steps} runs no denoising step "
                          f"(int(steps x strength) = 0); use strength >= {1 / num_inference_steps:.3g} or more steps")
    if isinstance(bootstrap_steps, bool) or not isinstance(bootstrap_steps, int) or bootstrap_steps < 0:
        raise ConfigError(f"bootstrap_steps must be an integer >= 0 (e.g. 20), got {bootstrap_steps!r}")
    regs = check_regions(regions, height, width)
    if bootstrap_steps and not regs:
        raise ConfigError("bootstrap_steps needs regions: bootstrapping replaces a region's surroundings")
    call = CallSpec(height=height, width=width, plan=plan, kernel=k, scale=scale, window=plan.window,
                    overlap=plan.overlap, circular=plan.circular, steps=num_inference_steps,
                    guidance_scale=float(guidance_scale), batch=batch, view_batch_size=view_batch_size, regions=regs,
                    bootstrap_steps=bootstrap_steps, strength=float(strength), img2img=img2img,
                    cfg_passes=cfg_passes)
    meth.check(call)
    if latents_shape is not None and latent_channels is not None:
        want = meth.noise_shape(call, latent_channels)
        if tuple(latents_shape) != tuple(want):
            raise ConfigError(f"latents has shape {tuple(latents_shape)}; for this canvas, batch and method it must be {tuple(want)}")
    return call, meth


def check_generation_args(**kwargs: Any) -> tuple[TilePlan, Kernel, int]:
    """Validate every generation argument (see `prepare_call`); return (plan, kernel, batch size)."""
    call, _ = prepare_call(**kwargs)
    assert call.kernel is not None
    return call.plan, call.kernel, call.batch


__all__ = ["OUTPUT_TYPES", "check_generation_args", "prepare_call"]
