"""mdtools: an instrumented MultiDiffusion engine for measuring tiled generation.

Public API: plan_views, TilePlan, View, KERNELS, get_kernel, Kernel, METHODS, get_method,
Region, MultiDiffusionPipeline, MultiDiffusionOutput, MultiDiffusion, ConfigError.
"""

from .errors import ConfigError
from .fusion import MultiDiffusion, ViewSet
from .kernels import KERNELS, Kernel, get_kernel
from .methods import METHODS, Method, Region, get_method
from .pipeline import MultiDiffusionOutput, MultiDiffusionPipeline, check_generation_args
from .plan import TilePlan, View, plan_views

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "KERNELS", "Kernel", "METHODS", "Method", "MultiDiffusion", "MultiDiffusionOutput",
    "MultiDiffusionPipeline", "Region", "TilePlan", "View", "ViewSet", "check_generation_args", "get_kernel",
    "get_method", "plan_views", "__version__",
]
