"""The model kinds mdtools runs: families (one class per kind), configs read before loading, loaders and view denoisers.

- `families`: everything that depends on the kind (SD, SDXL, pixel, SD3, FLUX); add a family here.
- `info`: path, kind, scale factor and native window from configs, before any weights load.
- `load`: `load_pipeline` for the embedded toys, 'arch:' presets, single files, folders and hub ids.
- `single_file`: single checkpoint files (.safetensors / .ckpt) with shipped configs.
- `arch`: exact architectures of real checkpoints with seeded random weights.
- `controlnet`: the call's ControlNet(s), checked, and run on each view's own crop of the control image.
- `denoisers`: a diffusers model plus its conditioning as a view denoiser (CFG per view).
"""

from __future__ import annotations

from .controlnet import prepare_control
from .families import (
                       FAMILIES,
                       FLOW_KINDS,
                       FLUX_NATIVE_PX,
                       MODEL_OPTIONS,
                       LatentDenoiserView,
                       ModelFamily,
                       ModelKind,
                       detect_family,
                       flux_cfg_passes,
                       model_options,
                       register_family,
)
from .info import DTYPES, check_model_sizes, config_source, read_model_kind, read_native_window, read_scale_factor, resolve_model_path
from .load import load_pipeline

__all__ = ["DTYPES", "FAMILIES", "FLOW_KINDS", "FLUX_NATIVE_PX", "MODEL_OPTIONS", "LatentDenoiserView", "ModelFamily",
           "ModelKind", "check_model_sizes", "config_source", "detect_family", "flux_cfg_passes", "load_pipeline",
           "model_options", "prepare_control", "read_model_kind", "read_native_window", "read_scale_factor", "register_family",
           "resolve_model_path"]
