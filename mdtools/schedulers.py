"""Scheduler names: short aliases plus every diffusers scheduler class by its own name."""

from __future__ import annotations

from typing import Any

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


def scheduler_names() -> list[str]:
    """Every accepted name: aliases first, then diffusers class names."""
    return sorted(SCHEDULER_ALIASES) + sorted(_diffusers_scheduler_classes())


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
