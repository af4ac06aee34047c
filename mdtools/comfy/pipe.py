"""Load Pipeline / Generate (mdtools): a whole mdtools pipeline as a ComfyUI value (MDTOOLS_PIPE).

ComfyUI cannot load diffusers folders of non-standard sizes, so the embedded toy model
("toy", no weights to download) and the methods that need the whole pipeline rather than
a per-step model wrapper (syncdiffusion's gradients through the VAE, demofusion's stages,
global_pass, regions) run through `MultiDiffusionPipeline` here. The image comes back as
a ComfyUI IMAGE; the run's `Record` as JSON text.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import ConfigError, check_choice
from ..models import DTYPES

DEVICES = ("auto", "cpu", "cuda", "mps")
VAE_TILING = ("auto", "on", "off")


def load_pipeline(model: str, *, device: str = "auto", dtype: str = "float32", config: str = "") -> Any:
    """`MultiDiffusionPipeline.from_pretrained(model)`: 'toy' (or another embedded model), a
    diffusers folder, a hub id, a single checkpoint file (`config`: a diffusers config folder
    or 'arch:<preset>', default: detected from the file; mdtools.models.single_file) or 'arch:<preset>'."""
    from ..pipeline import MultiDiffusionPipeline

    check_choice("device", device, DEVICES)
    check_choice("dtype", dtype, DTYPES)
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("model must be 'toy', a diffusers folder, a hub id or a .safetensors file; got an empty value")
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    extra = {"config": config.strip()} if config and config.strip() else {}
    return MultiDiffusionPipeline.from_pretrained(model.strip(), torch_dtype=DTYPES[dtype], device=dev, **extra)

#: the longest side of the previews the Generate (mdtools) node sends to the ComfyUI page
PREVIEW_MAX_PX = 1024


def parse_json(field: str, text: str, kind: type, example: str) -> Any:
    """A JSON widget value (method_params, regions) of type `kind`; '' is empty."""
    if text is None or not str(text).strip():
        return kind()
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{field} is not valid JSON ({e.msg} at char {e.pos}); e.g. {example}") from e
    if not isinstance(v, kind):
        raise ConfigError(f"{field} must be a JSON {kind.__name__}, e.g. {example}; got {type(v).__name__}")
    return v


def comfy_preview() -> Any:
    """Inside ComfyUI: a preview callable that moves ComfyUI's own progress bar and shows the canvas
    preview on the node (ComfyUI's ("JPEG", image, max size) format); None elsewhere."""
    try:
        import comfy.utils
    except ImportError:
        return None
    bars: dict[int, Any] = {}

    def show(image: Any, info: dict[str, Any]) -> None:
        bar = bars.get(info["stage"]) or bars.setdefault(info["stage"], comfy.utils.ProgressBar(info["steps"]))
        bar.update_absolute(info["step"] + 1, info["steps"], ("JPEG", image, PREVIEW_MAX_PX))

    return show


def generate(md: Any, *, prompt: str, negative_prompt: str, width: int, height: int, window: int, overlap: int,
             method: str, kernel: str, steps: int, guidance: float, seed: int, view_batch_size: int = 4,
             circular: str = "off", scheduler: str = "", method_params: str = "", regions: str = "",
             vae_tiling: str = "auto") -> tuple[torch.Tensor, dict[str, Any]]:
    """Run `md` (a MultiDiffusionPipeline); returns (IMAGE (B, H, W, 3), record dict).
    `window` 0 is the model's native window. The pipeline call validates every argument
    (ConfigError naming it) before any compute."""
    from ..schedulers import check_scheduler_name

    check_choice("vae_tiling", vae_tiling, VAE_TILING)
    mparams = parse_json("method_params", method_params, dict, '{"sync_steps": 10}')
    regs = parse_json("regions", regions, list, '[{"prompt": "a red boat", "box": [64, 128, 64, 64]}]')
    win = window or md.native_window
    circ = False if circular == "off" else circular
    k = None if kernel == "auto" else kernel
    if scheduler:
        check_scheduler_name(scheduler)
    before = md.pipe.scheduler
    if scheduler:  # for this call only: the MDTOOLS_PIPE is shared by every node that uses it
        md.set_scheduler(scheduler)
    try:
        out = md(prompt, negative_prompt=negative_prompt or None, height=height, width=width, window=win, overlap=overlap,
                 kernel=k, method=method, method_params=mparams, regions=regs or None, num_inference_steps=steps,
                 guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed), circular=circ,
                 view_batch_size=view_batch_size, output_type="pt", progress=False,
                 vae_tiling={"auto": "auto", "on": True, "off": False}[vae_tiling], preview=comfy_preview())
    finally:
        md.pipe.scheduler = before
    images = out.images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    rec = out.record.to_dict() if out.record is not None else {}
    rec["plan"] = out.plan.summary()
    return images, rec
