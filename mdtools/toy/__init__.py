"""The embedded toy latent diffusion model ("toy Stable Diffusion") and its training code.

Also here: the procedural scenes (`scenes`), the toy reports, and the training of the shipped
feature network of the metrics (`train_features`): toy builds on mdtools.metrics, never the reverse.

Import-light on purpose: nothing heavy (torch, diffusers) is imported until a function needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..safetensors_header import read_header, tensor_entries

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

#: Folder of the shipped texture model (diffusers layout, safetensors only).
TOY_MODEL_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "toy-sd"

#: Folder of the shipped scenes model (`mdtools train-toy --data scenes`; prompts in scenes.SCENE_PROMPTS).
TOY_SCENES_MODEL_DIR: Path = TOY_MODEL_DIR.parent / "toy-scenes"

#: Folder of the retrained texture model (2026-11-30: follows its prompts better, MODEL_CARD.md there).
#: It is not the default yet: every committed toy result was made with `toy`, and a run id names
#: the model, not its weights, so switching the default needs those experiments re-run first.
TOY_V2_MODEL_DIR: Path = TOY_MODEL_DIR.parent / "toy-sd-v2"

#: Folder of the retrained scenes model (2026-12-08, issue 24 item 6: 8 latent channels, longer UNet training;
#: MODEL_CARD.md there). The coherence experiments use it; the tile ControlNet and the upscale results
#: stay on `toy-scenes`, whose UNet they were trained and measured with.
TOY_SCENES_V2_MODEL_DIR: Path = TOY_MODEL_DIR.parent / "toy-scenes-v2"

#: Names accepted wherever a model is given (`from_pretrained`, `--model`, `model:` in configs) -> folder.
EMBEDDED_MODELS: dict[str, Path] = {"toy": TOY_MODEL_DIR, "toy-v2": TOY_V2_MODEL_DIR, "toy-scenes": TOY_SCENES_MODEL_DIR,
                                   "toy-scenes-v2": TOY_SCENES_V2_MODEL_DIR}

#: Folder of the shipped tile ControlNet for the scenes model (issue 22; diffusers ControlNetModel layout,
#: safetensors only, trained by `python -m mdtools.toy.train_controlnet`; MODEL_CARD.md there).
TOY_SCENES_TILE_DIR: Path = TOY_MODEL_DIR.parent / "toy-scenes-tile"

#: Names accepted wherever a ControlNet is given (`controlnet=` in the API, `--controlnet`, configs) -> folder.
EMBEDDED_CONTROLNETS: dict[str, Path] = {"toy-scenes-tile": TOY_SCENES_TILE_DIR}

#: Files a complete toy model folder must have; weights are checked for being readable.
REQUIRED_FILES: tuple[str, ...] = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


class ToyModelError(FileNotFoundError):
    """A toy model folder is missing a file or holds an unreadable one (the message names it)."""


def _check_safetensors(path: Path) -> None:
    """Raise ToyModelError unless path parses as a safetensors file with every tensor present.

    Reads only the JSON header and the file size, so it is cheap: a truncated file is caught
    because its header promises more bytes than the file holds.
    """
    try:
        n, header = read_header(path)
        end = max((int(v["data_offsets"][1]) for v in tensor_entries(header).values()), default=0)
        size = path.stat().st_size
        if size < 8 + n + end:
            raise ValueError(f"truncated: {size} bytes, header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ToyModelError(f"toy model weight file {path} is not a readable safetensors file: {exc}") from exc


def validate_model_dir(path: Path) -> Path:
    """Check a toy model folder: every required file exists and every weight file is intact."""
    path = Path(path)
    if not path.is_dir():
        raise ToyModelError(f"toy model folder {path} does not exist")
    for rel in REQUIRED_FILES:
        f = path / rel
        if not f.is_file():
            raise ToyModelError(
                f"toy model file {f} is missing; retrain with `mdtools train-toy --out {path}`"
            )
        if f.suffix == ".safetensors":
            _check_safetensors(f)
    # Other formats (pickles) are refused on purpose: only safetensors are shipped.
    pickles = sorted(p for p in path.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    if pickles:
        raise ToyModelError(f"toy model folder holds non-safetensors weight file {pickles[0]}")
    return path


def toy_model_dir(path: Path | str | None = None) -> Path:
    """The toy model folder (the shipped one by default), validated; raises naming a bad file."""
    return validate_model_dir(Path(path) if path is not None else TOY_MODEL_DIR)


def load_toy_pipeline(
    path: Path | str | None = None, *, dtype: "torch.dtype | None" = None
) -> "StableDiffusionPipeline":
    """Load the toy model offline as a diffusers StableDiffusionPipeline (float32 by default)."""
    import torch
    from diffusers import StableDiffusionPipeline

    folder = toy_model_dir(path)
    # Newer diffusers call it `dtype` and deprecate `torch_dtype`; older ones know only the latter.
    from diffusers.utils import deprecation_utils

    dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        **{dtype_key: dtype or torch.float32},
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "EMBEDDED_MODELS",
    "REQUIRED_FILES",
    "TOY_MODEL_DIR",
    "TOY_SCENES_MODEL_DIR",
    "TOY_SCENES_V2_MODEL_DIR",
    "TOY_V2_MODEL_DIR",
    "ToyModelError",
    "load_toy_pipeline",
    "toy_model_dir",
    "validate_model_dir",
]
