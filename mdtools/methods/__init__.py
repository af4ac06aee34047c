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
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import CallSpec, Cost, Method, Param, Run
from .demofusion import DemoFusionMethod
from .global_pass import GlobalPassMethod
from .multidiffusion import MixtureMethod, MultiDiffusionMethod
from .regions import Region
from .spotdiffusion import SpotDiffusionMethod
from .syncdiffusion import SyncDiffusionMethod

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (MultiDiffusionMethod, MixtureMethod, SyncDiffusionMethod, SpotDiffusionMethod,
                              GlobalPassMethod, DemoFusionMethod)
}


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


__all__ = ["METHODS", "CallSpec", "Cost", "Method", "Param", "Region", "Run", "get_method", "method_params"]
