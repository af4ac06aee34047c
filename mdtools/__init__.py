"""mdtools: an instrumented MultiDiffusion engine for measuring tiled generation.

Public API: plan_views, TilePlan, View, KERNELS, get_kernel, Kernel,
MultiDiffusionPipeline, MultiDiffusionOutput, MultiDiffusion, ConfigError.
"""

from .errors import ConfigError
from .fusion import MultiDiffusion
from .kernels import KERNELS, Kernel, get_kernel
from .pipeline import MultiDiffusionOutput, MultiDiffusionPipeline, check_generation_args
from .plan import TilePlan, View, plan_views

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "KERNELS", "Kernel", "MultiDiffusion", "MultiDiffusionOutput", "MultiDiffusionPipeline",
    "TilePlan", "View", "check_generation_args", "get_kernel", "plan_views", "__version__",
]
