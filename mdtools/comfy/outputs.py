"""IMAGE layout conversions and files written into ComfyUI's output folder.

ComfyUI's IMAGE is (B, H, W, C) float in [0, 1]; mdtools' metrics take (N, 3, H, W).
Files go where SaveImage puts them (`folder_paths.get_save_image_path`: prefix, subfolder
and counter), so a JSON written here sits next to the PNG of the same name.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError


def check_image(images: Any, field: str = "images") -> torch.Tensor:
    """A ComfyUI IMAGE batch (B, H, W, 3) float tensor, else ConfigError naming `field`."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"{field} must be a ComfyUI IMAGE, a (B, H, W, 3) tensor in [0, 1]; got {shape}")
    return images


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, 3, H, W) float32 on the CPU (alpha dropped, grey repeated)."""
    x = check_image(images).detach().to("cpu", torch.float32)[..., :3]
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return x.permute(0, 3, 1, 2).contiguous()


def save_path(prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """(folder, file stem, counter, subfolder) for `prefix` in ComfyUI's output folder."""
    import folder_paths

    if not isinstance(prefix, str) or not prefix.strip():
        raise ConfigError("filename_prefix must be a non-empty string, e.g. 'mdtools/run'")
    out = folder_paths.get_output_directory()
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out, width, height)
    os.makedirs(folder, exist_ok=True)
    return folder, stem, counter, subfolder


def jsonable(v: Any) -> Any:
    """Plain JSON: NaN/inf -> None, tensors and arrays -> lists, numbers -> float/int."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return jsonable(v.tolist())
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


def write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(data), f, indent=2)


def save_images(images: torch.Tensor, prefix: str, *, sidecar: dict[str, Any] | None = None, prompt: Any = None,
                extra_pnginfo: Any = None) -> list[dict[str, str]]:
    """Save an IMAGE batch as PNGs (with the graph in the PNG text, as SaveImage does) and,
    with `sidecar`, a JSON of the same name next to each; returns ComfyUI's ui entries."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    images = check_image(images)
    folder, stem, counter, subfolder = save_path(prefix, images.shape[2], images.shape[1])
    results = []
    for b, img in enumerate(images):
        arr = np.clip(img[..., :3].detach().cpu().float().numpy() * 255.0, 0, 255).astype(np.uint8)
        meta = PngInfo()
        if prompt is not None:
            meta.add_text("prompt", json.dumps(prompt))
        for k, v in (extra_pnginfo or {}).items():
            meta.add_text(k, json.dumps(v))
        name = f"{stem.replace('%batch_num%', str(b))}_{counter:05}_"
        Image.fromarray(arr).save(os.path.join(folder, name + ".png"), pnginfo=meta, compress_level=4)
        if sidecar is not None:
            write_json(os.path.join(folder, name + ".json"), sidecar)
        results.append({"filename": name + ".png", "subfolder": subfolder, "type": "output"})
        counter += 1
    return results
