"""Images in and out of `upscale`: loading with stated conversions, the resize step, and PIL output.

`load_image` takes a PIL image, a path, an (H, W[, C]) array or a ([1,] C, H, W) tensor and
returns a float32 (1, 3, H, W) tensor in [0, 1] and the list of conversions it made, which the
record keeps: RGBA / LA lose their alpha (the colour is kept as is), greyscale and palette
images become RGB, 16-bit and 32-bit images are scaled by their full range. Resizing is done
per channel in float ("F" mode images), so a 16-bit source keeps its precision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError

#: the named resize filters of `upscale(upscaler=...)` (PIL's); a callable image -> image is also accepted
UPSCALERS: tuple[str, ...] = ("lanczos", "bicubic")
#: PIL modes converted to RGB, with what the record says
_MODE_NOTES = {
    "RGBA": "RGBA image: alpha dropped, colour kept",
    "LA": "greyscale+alpha image: alpha dropped, grey copied to R, G, B",
    "L": "greyscale image: copied to R, G, B",
    "1": "1-bit image: copied to R, G, B",
    "P": "palette image: converted to RGB through its palette",
    "PA": "palette+alpha image: converted to RGB through its palette, alpha dropped",
    "CMYK": "CMYK image: converted to RGB by PIL",
    "YCbCr": "YCbCr image: converted to RGB by PIL",
    "RGBX": "RGBX image: padding channel dropped",
}
_HIGH_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}


def _from_pil(img: Any, name: str) -> tuple[torch.Tensor, list[str]]:
    mode = img.mode
    if mode == "RGB":
        a = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(a.copy()).permute(2, 0, 1)[None], []
    if mode in _HIGH_DEPTH:
        a = np.asarray(img).astype(np.float32) / _HIGH_DEPTH[mode]
        if mode == "F" and (a.min() < 0 or a.max() > 1):
            raise ConfigError(f"{name} is a float image with values outside [0, 1]; scale it to [0, 1] first")
        note = f"{mode} ({'16-bit' if mode != 'F' else 'float'}) greyscale image: scaled to [0, 1], copied to R, G, B"
        t = torch.from_numpy(np.clip(a, 0, 1).copy())[None, None].expand(1, 3, -1, -1).contiguous()
        return t, [note]
    if mode in _MODE_NOTES:
        return _from_pil(img.convert("RGB"), name)[0], [_MODE_NOTES[mode]]
    raise ConfigError(f"{name} has PIL mode {mode!r}, which upscale cannot read as colour; convert it to RGB first")


def _from_array(a: np.ndarray, name: str) -> tuple[torch.Tensor, list[str]]:
    notes = []
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ConfigError(f"{name} as an array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
        notes.append("16-bit array: scaled to [0, 1]")
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        if not np.isfinite(f).all() or f.min() < 0 or f.max() > 1:
            raise ConfigError(f"{name} as a float array must hold values in [0, 1]")
    else:
        raise ConfigError(f"{name} has dtype {a.dtype}; use uint8, uint16 or float in [0, 1]")
    if f.shape[-1] == 4:
        f = f[..., :3]
        notes.append("4-channel array: alpha dropped, colour kept")
    elif f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
        notes.append("1-channel array: copied to R, G, B")
    return torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None], notes


def _from_tensor(t: torch.Tensor, name: str) -> tuple[torch.Tensor, list[str]]:
    notes = []
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[0] != 1 or t.shape[1] not in (1, 3, 4):
        raise ConfigError(f"{name} as a tensor must be (3, H, W) or (1, 3, H, W) in [0, 1], got {tuple(t.shape)}")
    t = t.detach().float().cpu()
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise ConfigError(f"{name} as a tensor must hold values in [0, 1] (e.g. (x + 1) / 2 of a decode)")
    if t.shape[1] == 4:
        t, notes = t[:, :3], ["4-channel tensor: alpha dropped, colour kept"]
    elif t.shape[1] == 1:
        t, notes = t.expand(1, 3, -1, -1), ["1-channel tensor: copied to R, G, B"]
    return t.contiguous(), notes


def load_image(image: Any, *, name: str = "image") -> tuple[torch.Tensor, list[str]]:
    """A float32 (1, 3, H, W) tensor in [0, 1] and the conversions made (module docstring)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.is_file():
            raise ConfigError(f"{name}: no image file at {str(p)!r}")
        try:
            with Image.open(p) as im:
                im.load()
                return _from_pil(im, name)
        except (OSError, Image.UnidentifiedImageError) as e:
            raise ConfigError(f"{name}: {str(p)!r} is not a readable image ({e})") from None
    if isinstance(image, Image.Image):
        return _from_pil(image, name)
    if isinstance(image, np.ndarray):
        return _from_array(image, name)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, name)
    raise ConfigError(f"{name} must be a PIL image, a path, an (H, W, C) array or a (1, 3, H, W) tensor in [0, 1]; "
                      f"got {type(image).__name__}")


def _pil_resize(t: torch.Tensor, hw: tuple[int, int], filt: Any) -> torch.Tensor:
    from PIL import Image

    chans = []
    for c in range(t.shape[1]):
        im = Image.fromarray(t[0, c].numpy().astype(np.float32), mode="F")
        chans.append(np.asarray(im.resize((hw[1], hw[0]), filt), dtype=np.float32))
    return torch.from_numpy(np.stack(chans)).clamp(0, 1)[None]


def resize_image(t: torch.Tensor, hw: tuple[int, int], upscaler: str | Callable[..., Any],
                 *, notes: list[str] | None = None) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 3, *hw): PIL's Lanczos / bicubic per channel in float, or
    `upscaler(tensor)` (an upscale model; any image form back), then Lanczos to `hw` if it differs."""
    from PIL import Image

    if tuple(t.shape[-2:]) == tuple(hw) and isinstance(upscaler, str):
        return t.clone()
    if callable(upscaler):
        out, conv = load_image(upscaler(t.clone()), name="upscaler output")
        if notes is not None:
            notes += [f"upscaler output: {c}" for c in conv]
        if tuple(out.shape[-2:]) != tuple(hw):
            if notes is not None:
                notes.append(f"upscaler output {out.shape[-1]}x{out.shape[-2]} resized to the canvas with Lanczos")
            out = _pil_resize(out, hw, Image.LANCZOS)
        return out
    filt = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC}[upscaler]
    return _pil_resize(t, hw, filt)


def to_pil(t: torch.Tensor) -> Any:
    """(1, 3, H, W) in [0, 1] -> an RGB PIL image (rounded to 8 bits)."""
    from PIL import Image

    a = (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(a, mode="RGB")


__all__ = ["UPSCALERS", "load_image", "resize_image", "to_pil"]
