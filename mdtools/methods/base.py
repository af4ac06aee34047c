"""The method contract: a small strategy object of hooks on the one sampling loop, and the registry.

A method never copies the pipeline: `mdtools.sampling.Run.denoise` is the only sampling loop,
and a method changes it through the hooks below, which receive a `StepContext` (docs/methods.md).
Multi-stage methods (global pass, DemoFusion) override `generate`, which receives the `Run`,
and call `run.denoise` once per stage. A method registers itself with `@register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..errors import ConfigError
from ..fusion import InputFn, ViewSet
from ..kernels import Kernel, get_kernel
from ..sampling import CallSpec, Run, StepContext

#: name -> method class, filled by `@register` (one strategy per file in mdtools/methods/)
METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: add a Method subclass to METHODS under its `name`."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method class {cls.__name__} needs a unique `name` (got {cls.name!r})")
    METHODS[cls.name] = cls
    return cls


ParamCheck = Callable[[Any], bool]


@dataclass(frozen=True)
class Param:
    """One method parameter: its default, a validity check and a hint naming a valid value."""

    default: Any
    check: ParamCheck
    hint: str
    doc: str = ""


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Method:
    """Base strategy: plain MultiDiffusion hooks. Subclasses override what differs.

    Parameters are declared in `PARAMS` (name -> Param); unknown names and bad values are
    ConfigErrors naming `method.<param>` and a valid value.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}
    supports_regions: ClassVar[bool] = False
    supports_img2img: ClassVar[bool] = True
    supports_circular: ClassVar[bool] = True
    multi_stage: ClassVar[bool] = False
    #: works as a per-step model wrapper (ComfyUI's MultiDiffusion node): its hooks need only
    #: a StepContext without the model (no generate override, no predict_views / decode_latents)
    per_step_wrapper: ClassVar[bool] = False
    #: needs the sampler's sigma schedule before the first step (SpotDiffusion draws shifts per step)
    needs_sigmas: ClassVar[bool] = False
    #: fuses with the call's blend kernel (False: its own weights, as Mixture's Gaussian tiles)
    kernel_from_call: ClassVar[bool] = True
    #: the kinds of work a sweep's time estimate measures for it beyond model evaluations
    #: (SyncDiffusion: its loss with its backward pass, built by `loss_fn()`)
    calibration_kinds: ClassVar[tuple[str, ...]] = ()
    #: why it cannot share a canvas across ranks (mdtools.distributed); "" when it can
    not_distributable: ClassVar[str] = ""
    #: why it cannot run a ControlNet per view (control_image cropped to each view); "" when it can
    no_controlnet: ClassVar[str] = ""
    #: works on an image tile by tile in pixels (Ultimate SD Upscale, naive tiles): run by `md.upscale`,
    #: which calls `upscale_image`, never by the denoising loop of a generation from noise
    image_space: ClassVar[bool] = False

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            valid = sorted(self.PARAMS) or "none"
            raise ConfigError(f"method {self.name!r} has no parameter(s) {unknown}; its parameters: {valid}")
        self.params: dict[str, Any] = {}
        for key, spec in self.PARAMS.items():
            value = params.get(key, spec.default)
            if key in params and not spec.check(value):
                raise ConfigError(f"method.{key}={value!r} is invalid for method {self.name!r}; use {spec.hint}")
            self.params[key] = value
        self.draws: dict[str, Any] = {}  # random draws of the last run (shifts, jitter, colours), for reproduction

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(key)

    def describe(self) -> dict[str, Any]:
        """Name and parameters, JSON-safe (callables by their name), for records and tables."""
        def safe(v: Any) -> Any:
            if callable(v):
                return getattr(v, "__name__", type(v).__name__)
            return v
        return {"name": self.name, **{k: safe(v) for k, v in self.params.items()}}

    # ---- before any model loads ------------------------------------------------------
    def resolve_kernel(self, kernel: str | Kernel | None, kernel_params: dict | None) -> Kernel:
        """The blend kernel this method fuses with (default: the call's, gaussian if none given)."""
        return get_kernel(kernel if kernel is not None else "gaussian", **(kernel_params or {}))

    def check(self, call: CallSpec) -> None:
        """Validate what depends on the canvas and plan; raise ConfigError naming the field."""
        if call.regions and not self.supports_regions:
            raise ConfigError(f"regions are supported by methods 'multidiffusion' and 'mixture', not {self.name!r}")
        if call.img2img and not self.supports_img2img:
            raise ConfigError(f"method {self.name!r} runs its own stages; init_latents (img2img) is not supported")
        if call.circular and not self.supports_circular:
            raise ConfigError(f"method {self.name!r} does not support circular canvases; use circular=False")
        if self.image_space:  # never run by the denoising loop, with or without init_latents
            raise ConfigError(f"{self.name} upscales an existing image; use md.upscale(...)")

    def needs_cfg(self, call: CallSpec) -> bool:
        """Whether the model runs with classifier-free guidance (as diffusers: scale > 1)."""
        return call.guidance_scale > 1.0

    def extra_prompts(self, call: CallSpec) -> list[tuple[str, str | None]]:
        """(prompt, negative prompt) pairs beyond the call's own (prompt id 0), in id order."""
        return []

    def noise_shape(self, call: CallSpec, channels: int) -> tuple[int, ...]:
        """Shape of the initial noise (`latents=`) of the first stage."""
        return (call.batch, channels, call.plan.latent_height, call.plan.latent_width)

    def estimate(self, call: CallSpec) -> dict[str, float]:
        """Expected work, for dry runs: UNet sample evaluations (CFG counts 2) and other calls."""
        cfg = call.cfg_factor
        steps = max(1, int(call.steps * call.strength)) if call.img2img else call.steps
        return {"unet_evaluations": call.plan.n_views * steps * cfg * call.batch}

    # ---- sampling hooks -----------------------------------------------------------------
    def generate(self, run: Run) -> torch.Tensor:
        """The whole sampling: by default one denoising loop over the call's canvas."""
        latents, timesteps = run.start_latents()
        return run.denoise(self, latents, timesteps, run.call.plan)

    def begin(self, ctx: StepContext) -> None:
        """Called at the start of each denoising loop (ctx.stage is set)."""

    def views(self, ctx: StepContext, i: int) -> ViewSet:
        """The entries fused at step i (default: the stage plan with the kernel)."""
        return ctx.stage.viewset

    def inputs(self, ctx: StepContext, i: int, t: torch.Tensor) -> InputFn | None:
        """A function replacing view crops before the model call (region bootstrapping), or None."""
        return None

    def correct(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Latent correction before the model call (DemoFusion's skip residual)."""
        return latents

    def predict(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor,
                x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused model output, sample the scheduler steps from); default Eq. 5 over views(i)."""
        return ctx.fuse(x_in, t, self.views(ctx, i), input_fn=self.inputs(ctx, i, t)), latents

    def after_step(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Post-step action on the stepped latents."""
        return latents

    def end(self, ctx: StepContext, latents: torch.Tensor) -> torch.Tensor:
        """Called at the end of each denoising loop; returns the loop's result."""
        return latents

    # ---- image-space methods (image_space = True) -----------------------------------------
    def upscale_image(self, md: Any, image: torch.Tensor, *, prompt: str | None, negative_prompt: str | None,
                      strength: float, steps: int, guidance_scale: float, seed: int, controlnet: Any = None,
                      control_image: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                      progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Refine an image tile by tile in pixels (methods with `image_space = True`; `md.upscale` calls it).

        `md` is the pipeline (duck-typed: `md(...)`, `md.decode`, `md.vae`, `md.native_window`);
        `image` is (1, 3, H, W) float in [0, 1], already resized to the canvas; `control_image`
        likewise (or None). Each tile is a one-view img2img call of `md` at `strength` with
        `steps` and `guidance_scale`, its noise drawn from `seed`; a `controlnet` gets the
        control image cropped to the tile. Returns the refined image ((1, 3, H, W) in [0, 1])
        and the counts for the record: unet_evaluations, vae_encodes, vae_decodes, tiles, and
        the method's own (e.g. seam_fix_jobs). Bad values raise ConfigError before any model call.
        """
        raise ConfigError(f"method {self.name!r} denoises latents in the sampling loop; it has no image-space "
                          "upscale_image (md.upscale runs it as a tiled img2img)")
