"""Scheduler names: short aliases plus every diffusers scheduler class by its own name."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError

# Short names as users of A1111/ComfyUI know them -> diffusers class names.
SCHEDULER_ALIASES: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpm_single": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",  # SD3 / FLUX
    "flow_heun": "FlowMatchHeunDiscreteScheduler",
}


def _diffusers_scheduler_classes() -> dict[str, type]:
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    out = {}
    for name in dir(diffusers):
        if not name.endswith("Scheduler"):
            continue
        try:
            obj = getattr(diffusers, name)
        except Exception:  # optional backends (e.g. torchsde) may be missing
            continue
        if isinstance(obj, type) and issubclass(obj, SchedulerMixin):
            out[name] = obj
    return out


def check_scheduler_name(name: str) -> str:
    """Resolve `name` to a diffusers class name, or raise ConfigError listing the valid ones."""
    cls_name = SCHEDULER_ALIASES.get(name, name)
    if cls_name not in _diffusers_scheduler_classes():
        raise ConfigError(
            f"scheduler={name!r} is unknown; use an alias {sorted(SCHEDULER_ALIASES)} "
            f"or a diffusers class name such as 'DDIMScheduler'"
        )
    return cls_name


def make_scheduler(name: str, config: Any, **overrides: Any) -> Any:
    """A new scheduler of kind `name` built from an existing scheduler's `config`."""
    cls = _diffusers_scheduler_classes()[check_scheduler_name(name)]
    return cls.from_config(config, **overrides)


FLOW_FAMILIES = ("sd3", "flux")
#: Where the dynamic shift `mu` comes from: the window's token count (default), the canvas's, or a number.
MU_SOURCES = ("window", "canvas")


def check_scheduler_fits(name: str, kind: str | None, *, field: str = "scheduler", family_known: bool = True) -> str:
    """Resolve `name` (check_scheduler_name) and check it fits the model `kind`: SD3 / FLUX
    (FLOW_FAMILIES) take flow-matching schedulers only, UNet models (kind None or any other)
    the others. Needs only the model's config, so it runs before any model loads;
    `family_known=False` (a hub id, no config on disk) checks the name only."""
    cls_name = check_scheduler_name(name)
    if not family_known:
        return cls_name
    dit = kind in FLOW_FAMILIES
    if is_flow_scheduler(cls_name) != dit:
        want = "a flow-matching scheduler such as 'flow_euler'" if dit else "a diffusion scheduler such as 'ddim'"
        raise ConfigError(f"{field}={name!r} does not fit this {kind or 'UNet'} model; use {want}")
    return cls_name


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether a scheduler (or scheduler class name) is a flow-matching one (SD3, FLUX)."""
    name = scheduler if isinstance(scheduler, str) else type(getattr(scheduler, "scheduler", scheduler)).__name__
    return name.startswith("FlowMatch")


class FlowMatchSchedule:
    """A diffusers flow-matching scheduler with the interface of the mdtools sampling loop.

    `Run.denoise` calls `set_timesteps(n)`, `scale_model_input`, `step`, `add_noise` and reads
    `init_noise_sigma`; FlowMatchEulerDiscreteScheduler has `step` but scales nothing
    (x_t = sigma * noise + (1 - sigma) * x0, `scale_noise`). Everything else is the wrapped
    scheduler's (attribute access falls through), so its state and config stay the truth.

    `set_timesteps(n)` reproduces the diffusers pipelines exactly: FLUX passes
    `sigmas = linspace(1, 1/n, n)` and `mu`; SD3 passes `mu` only when the scheduler shifts
    dynamically. `mu` is computed from `image_seq_len`, the token count of ONE WINDOW by
    default: the transformer only ever sees window-sized sequences, so the window's mu
    reproduces a single-window run's schedule (= ComfyUI/Forge's fixed mu 1.15 for a 1024^2
    FLUX window). The canvas's count, what FluxPipeline at canvas size would use, pushes every
    sigma towards 1 on big canvases (8192x2048: mu 11.6, all but the last step at ~1).
    """

    init_noise_sigma = 1.0
    is_flow_matching = True  # the model predicts a velocity (methods/syncdiffusion.py: x0 = x - sigma v)

    def __init__(self, scheduler: Any, *, family: str, image_seq_len: int, mu: float | None = None):
        if family not in FLOW_FAMILIES:
            raise ConfigError(f"family={family!r} is not valid; choose one of {list(FLOW_FAMILIES)}")
        self.scheduler = scheduler
        self.family = family
        self.image_seq_len = int(image_seq_len)
        self.mu = self.shift_mu(image_seq_len) if mu is None else float(mu)

    def __getattr__(self, key: str) -> Any:
        return getattr(self.__dict__["scheduler"], key)

    @property
    def dynamic(self) -> bool:
        return bool(self.scheduler.config.get("use_dynamic_shifting", False))

    def shift_mu(self, image_seq_len: int) -> float:
        """diffusers' `calculate_shift`: mu on the line through (base_image_seq_len, base_shift) and
        (max_image_seq_len, max_shift), with each pipeline's own default max_shift (FLUX 1.15, SD3 1.16)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.scheduler.config
        return float(calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                     c.get("base_shift", 0.5), c.get("max_shift", 1.15 if self.family == "flux" else 1.16)))

    def set_timesteps(self, num_inference_steps: int, device: Any = None, **_: Any) -> None:
        import numpy as np

        kw: dict[str, Any] = {}
        if self.family == "flux" or self.dynamic:
            import inspect

            # FlowMatchHeunDiscreteScheduler.set_timesteps takes neither `sigmas` nor `mu`: refuse it
            # here with a clear error rather than a TypeError mid-call.
            if "mu" not in inspect.signature(self.scheduler.set_timesteps).parameters:
                raise ConfigError(f"scheduler {type(self.scheduler).__name__} cannot take the dynamic shift (mu) this "
                                  f"{self.family} model needs; use scheduler='flow_euler'")
            kw["mu"] = self.mu
        if self.family == "flux" and not getattr(self.scheduler.config, "use_flow_sigmas", False):
            self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_inference_steps, num_inference_steps),
                                         device=device, **kw)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device, **kw)

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any:
        """Flow models take x_t as it is."""
        return sample

    def add_noise(self, original: Any, noise: Any, timesteps: Any) -> Any:
        """x_t = sigma_t * noise + (1 - sigma_t) * x0 (diffusers' `scale_noise`; img2img, bootstrapping)."""
        return self.scheduler.scale_noise(original, torch.as_tensor(timesteps).reshape(-1), noise)

    def describe(self) -> dict[str, Any]:
        """What the schedule was built from, for records."""
        return {"family": self.family, "image_seq_len": self.image_seq_len, "mu": self.mu,
                "dynamic_shifting": self.dynamic, "shift": self.scheduler.config.get("shift", 1.0)}
