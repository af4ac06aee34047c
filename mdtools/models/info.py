"""What a model is, read from its configs before any weights load: path, kind, scale factor, native window."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..choices import DTYPE_NAMES
from ..errors import ConfigError
from .families import FAMILIES, ModelKind, check_patch_multiples, family_of_transformer

#: dtype names of the CLI, experiment files and the ComfyUI nodes
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(id_or_path: str | os.PathLike) -> str:
    """'toy' / 'toy-scenes' -> the embedded model's folder; an existing path -> itself; a hub-style
    id ('org/name') -> itself; anything else -> ConfigError (path that does not exist)."""
    s = str(id_or_path)
    from ..toy import EMBEDDED_MODELS

    if s in EMBEDDED_MODELS:
        from ..toy import toy_model_dir

        return str(toy_model_dir(EMBEDDED_MODELS[s]))
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "model_index.json").exists():
            raise ConfigError(f"model={s!r} is a folder without model_index.json; give a diffusers pipeline folder")
        if p.is_file():
            from .single_file import SINGLE_FILE_SUFFIXES, is_single_file

            if not is_single_file(p):
                raise ConfigError(f"model={s!r} is a file but not a checkpoint; give a {'/'.join(SINGLE_FILE_SUFFIXES)} "
                                  f"file, a diffusers pipeline folder or a hub id")
        return str(p)
    from .arch import is_arch, preset_dir

    if is_arch(s):
        return str(preset_dir(s))  # the shipped config folder: scale factor and native window read from it
    if _HUB_ID.match(s) and not s.startswith((".", "~")):
        return s
    raise ConfigError(f"model path {s!r} does not exist; give a diffusers pipeline folder, a single .safetensors "
                      f"file, a hub id, an 'arch:' preset (e.g. arch:sdxl) or one of {sorted(EMBEDDED_MODELS)}")


def read_scale_factor(path: str) -> int:
    """VAE scale factor of a local pipeline folder from its config, without loading weights.
    8 (SD's) when the config cannot be read (e.g. a hub id)."""
    import json

    path = _config_folder(path)
    cfg = Path(path) / "vae" / "config.json"
    if cfg.exists():
        blocks = json.loads(cfg.read_text()).get("block_out_channels", [0] * 4)
        return 2 ** (len(blocks) - 1)
    if Path(path).is_dir() and not (Path(path) / "vae").exists():
        return 1  # pixel-space pipeline
    return 8


def read_native_window(path: str, scale: int) -> int | None:
    """The model's training size in pixels from unet/config.json (None if unreadable)."""
    import json

    path = _config_folder(path)
    for comp in ("unet", "transformer"):
        cfg = Path(path) / comp / "config.json"
        if cfg.exists():
            c = json.loads(cfg.read_text())
            fam = family_of_transformer(c.get("_class_name"))
            if fam is not None and fam.native_px is not None:
                return fam.native_px
            s = c.get("sample_size")
            s = s[0] if isinstance(s, list) else s
            return None if s is None else int(s) * scale
    return None


def read_model_kind(path: str) -> ModelKind | None:
    """The kind of a transformer config folder ('sd3', 'flux', 'pixart') (arch preset, single file, local folder), else None."""
    import json

    cfg = Path(_config_folder(path)) / "transformer" / "config.json"
    if not cfg.exists():
        return None
    fam = family_of_transformer(json.loads(cfg.read_text()).get("_class_name"))
    return None if fam is None else fam.kind  # type: ignore[return-value]


def check_model_sizes(path: str, height: int, width: int, window: int | tuple[int, int] | None, scale: int) -> None:
    """Before loading: a transformer's canvases and windows must be multiples of its patch x the VAE
    scale (16 px for SD3, FLUX, PixArt); the ConfigError suggests the nearest valid sizes. A no-op for UNets."""
    kind = read_model_kind(path)
    if kind is None or FAMILIES[kind].patch == 1:
        return
    check_patch_multiples(height, width, window, FAMILIES[kind].patch * scale, scale)


def config_source(model: str, config: str | os.PathLike | None = None) -> str:
    """Where to read `model`'s configs before loading it: with `config` (single checkpoint
    files only: 'arch:<preset>' or a diffusers config folder) that folder, else the
    resolved model path (resolve_model_path). ConfigError for a config on anything but a
    single file, or a folder without model_index.json."""
    path = resolve_model_path(model)
    if config is None:
        return path
    from .arch import is_arch, preset_dir
    from .single_file import is_single_file

    if not is_single_file(path):
        raise ConfigError(f"checkpoint_config={str(config)!r} applies to single checkpoint files only; {model!r} is a "
                          "diffusers folder or hub id, which carries its own configs (drop it)")
    if is_arch(str(config)):
        return str(preset_dir(str(config)))
    folder = Path(config).expanduser()
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"checkpoint_config={str(config)!r} is not a diffusers config folder (no model_index.json) nor "
                          "an 'arch:<preset>' name such as 'arch:sd21-768'")
    return str(folder)


def _config_folder(path: str) -> str:
    """A single checkpoint file -> the shipped config folder of its detected architecture (header only)."""
    from .single_file import is_single_file

    if is_single_file(path) and Path(path).is_file():
        from .arch import preset_dir
        from .single_file import detect_architecture

        return str(preset_dir("arch:" + detect_architecture(path)))
    return path


__all__ = ["DTYPES", "check_model_sizes", "config_source", "read_model_kind", "read_native_window", "read_scale_factor",
           "resolve_model_path"]
