"""The fusion methods of the field on one engine (docs/methods.md).

`METHODS` maps a name to its class; `get_method(name, **params)` validates the parameters
and returns the strategy object a generation runs with:

    md(prompt, ..., method="syncdiffusion", method_params={"weight": 20, "sync_steps": 10})

| name           | paper                                   | what changes on the shared loop            |
|----------------|-----------------------------------------|--------------------------------------------|
| multidiffusion | Bar-Tal et al., ICML 2023               | (the loop itself); regions + bootstrapping |
| mixture        | Jiménez, 2023 (Mixture of Diffusers)    | Gaussian tile weights, per-tile prompts    |
| syncdiffusion  | Lee et al., NeurIPS 2023                | gradient sync of views before each step    |
| spotdiffusion  | Frolov et al., 2024                     | shifted non-overlapping windows per step   |
| global_pass    | the seed article's step 4 (SDEdit)      | low-res pass, then tiled img2img           |
| demofusion     | Du et al., CVPR 2024                    | progressive stages, skip residual, dilated |

Image-space upscalers (`image_space = True`): run by `md.upscale(image, method=...)` through their
`upscale_image`, tile by tile in pixels; a generation from noise refuses them (docs/upscalers.md).

| name        | tool                                        | what it does                                      |
|-------------|---------------------------------------------|---------------------------------------------------|
| usdu        | Ultimate SD Upscale (ComfyUI port)          | sequential padded tile img2img, blurred paste, seam fixes |
| naive_tiles | the naive baseline                          | per-tile img2img, no overlap, hard paste          |
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..sampling import CallSpec, Cost, Run, StepContext
from . import demofusion, global_pass, multidiffusion, naive_tiles, spotdiffusion, syncdiffusion, usdu  # noqa: F401  (register the methods)
from .base import METHODS, Method, Param, register
from .regions import Region

#: the registry's names, in the order the table above lists them
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str | Method = "multidiffusion", **params: Any) -> Method:
    """The method `name` (a key of METHODS) with `params` validated, or a Method object as is."""
    if isinstance(name, Method):
        if params:
            raise ConfigError("method_params cannot be combined with a method object; set them on the object")
        return name
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method={name!r} is not a known method; choose one of {sorted(METHODS)}")
    return METHODS[name](**params)


def method_params(name: str) -> dict[str, Any]:
    """The parameters of method `name` and their defaults."""
    return {k: p.default for k, p in METHODS[name].PARAMS.items()}


def generation_methods() -> tuple[str, ...]:
    """The methods a generation (`md(prompt, method=...)`) runs: all but the image-space upscalers."""
    return tuple(n for n, cls in METHODS.items() if not cls.image_space)


def image_space_methods() -> tuple[str, ...]:
    """The image-space upscalers (`image_space = True`), run by `md.upscale` through `upscale_image`."""
    return tuple(n for n, cls in METHODS.items() if cls.image_space)


def per_step_methods() -> tuple[str, ...]:
    """The methods that work as a per-step model wrapper (their hooks need only a StepContext)."""
    return tuple(n for n, cls in METHODS.items() if cls.per_step_wrapper)


__all__ = ["METHODS", "METHOD_NAMES", "CallSpec", "Cost", "Method", "Param", "Region", "Run", "StepContext", "generation_methods",
           "get_method", "image_space_methods", "method_params", "per_step_methods", "register"]
