"""Deprecated: the global low-resolution pass as a function; use the method `global_pass`.

The pass (seed article, method step 4; claim C6) is the method `global_pass` (mdtools.methods),
so it sweeps and is measured like every other method:

    md(prompt, height=..., width=..., method="global_pass", method_params={"factor": 4, "strength": 0.6})
"""

from __future__ import annotations

import warnings
from typing import Any

from .pipeline import MultiDiffusionOutput


def generate_with_global_pass(
    md: Any, prompt: Any, *, height: int, width: int, factor: int = 4, strength: float = 0.6, **kwargs: Any
) -> MultiDiffusionOutput:
    """Low-res pass at (height, width) / factor, latent upscale, tiled pass at `strength`.

    Same as `md(prompt, ..., method="global_pass", method_params={"factor": factor, "strength": strength})`;
    the record counts both passes and describes the low-res pass in `record.extra["global_pass"]`.
    Deprecated: warns and calls that.
    """
    warnings.warn("mdtools.refine.generate_with_global_pass is deprecated; use md(prompt, ..., method='global_pass', "
                  "method_params={'factor': ..., 'strength': ...})", DeprecationWarning, stacklevel=2)
    return md(prompt, height=height, width=width, method="global_pass",
              method_params={"factor": factor, "strength": strength}, **kwargs)
