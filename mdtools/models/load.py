"""Loading a model by name: the embedded toys, 'arch:' presets, single checkpoint files, diffusers folders and hub ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..toy import EMBEDDED_MODELS, load_toy_pipeline
from .arch import build_pipeline, is_arch
from .info import resolve_model_path
from .single_file import hub_error, is_single_file, load_single_file


def load_pipeline(id_or_path: str | os.PathLike, *, device: str | torch.device | None = None, seed: int = 0,
                  text_encoders: str = "stand-in", config: str | os.PathLike | None = None,
                  **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """(diffusers pipeline, info for the records) of 'toy' (embedded), 'arch:<preset>' (exact
    architecture, seeded random weights; `seed` and `text_encoders` apply), a single checkpoint
    file (`config` overrides the detected architecture), a diffusers folder or a hub id.

    `kwargs` go to diffusers' loader (e.g. torch_dtype; for single files also tokenizers). A model
    that cannot be loaded raises `mdtools.models.single_file.ModelLoadError`: one line with the cause.
    """
    info: dict[str, Any] = {}
    if is_arch(str(id_or_path)):
        unknown = set(kwargs) - {"torch_dtype"}
        if unknown:
            raise ConfigError(f"arch presets take seed, text_encoders, torch_dtype and device, not {sorted(unknown)}")
        return build_pipeline(str(id_or_path), seed=seed, torch_dtype=kwargs.get("torch_dtype", torch.float32),
                              device=device, text_encoders=text_encoders)  # type: ignore[arg-type]
    path = resolve_model_path(id_or_path)
    if str(id_or_path) in EMBEDDED_MODELS:  # 'toy', 'toy-v2', 'toy-scenes': checked files, offline
        pipe = load_toy_pipeline(path, dtype=kwargs.pop("torch_dtype", torch.float32))
    elif is_single_file(path):
        pipe, info = load_single_file(path, config=config, **kwargs)
    else:
        if config is not None:
            raise ConfigError(f"config={str(config)!r} applies to single checkpoint files only; {str(id_or_path)!r} "
                              "is a diffusers folder or hub id, which carries its own configs (drop config)")
        pipe = _load_diffusers(str(id_or_path), path, kwargs)
    if device is not None:
        pipe = pipe.to(device)
    return pipe, info


def _load_diffusers(name: str, path: str, kwargs: dict[str, Any]) -> Any:
    if _is_sd_folder(path):
        kwargs.setdefault("safety_checker", None)  # a research tool: no NSFW filter on outputs
    if "torch_dtype" in kwargs and _diffusers_takes_dtype():  # >= 0.36 calls it dtype (torch_dtype warns)
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    from diffusers import DiffusionPipeline  # imports every pipeline: only when needed
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    if not Path(path).is_dir():
        dlog.set_verbosity_error()  # a failed hub load logs hub warnings; its cause is in our one-line error
    try:
        return DiffusionPipeline.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:  # missing, misspelt, gated, offline: huggingface_hub errors are OSErrors
        raise hub_error(name, e) from None
    finally:
        dlog.set_verbosity(level)


def _diffusers_takes_dtype() -> bool:
    """diffusers >= 0.36 names the loader's dtype argument `dtype`; older versions ignore it silently."""
    import diffusers
    from packaging.version import Version

    return Version(diffusers.__version__.split("+")[0]) >= Version("0.36")


def _is_sd_folder(path: str) -> bool:
    idx = Path(path) / "model_index.json"
    return idx.exists() and "safety_checker" in idx.read_text()


__all__ = ["load_pipeline"]
