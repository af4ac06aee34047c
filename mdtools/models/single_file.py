"""Loading models that are not diffusers folders: single-file checkpoints, and hub ids with
errors a user can act on.

Single files (`model.safetensors`, `.ckpt`) are what ComfyUI and A1111 users keep. Their
architecture is recognised from the tensor names and shapes (diffusers'
`infer_diffusers_model_type`, run on the file header only, no weights read), and the file is
loaded with diffusers' `from_single_file` against the config folder mdtools ships for that
architecture (`mdtools/assets/arch`), so nothing is downloaded. Tokenizers are not inside
checkpoints: pass `tokenizer=` (and `tokenizer_2=`...) or have them in the local Hugging Face
cache; otherwise the error says which repository's tokenizer is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..safetensors_header import read_header, tensor_entries

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

#: diffusers model type (infer_diffusers_model_type) -> mdtools architecture preset
MODEL_TYPES = {"v1": "sd15", "v2": "sd21", "xl_base": "sdxl", "sd3": "sd3", "flux-dev": "flux",
               "flux-schnell": "flux-schnell"}

#: Where each preset's tokenizers live on the Hub (looked up in the local cache only).
TOKENIZER_REPOS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1-base",
    "sd21-768": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "flux": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
}


class ModelLoadError(ConfigError):
    """A model that cannot be loaded (missing, misspelt, gated, offline, not a checkpoint): one line
    naming the model and the cause. A ConfigError, so the CLI prints it without a traceback."""


def is_single_file(spec: Any) -> bool:
    """Whether `spec` names a single checkpoint file (by suffix; the file may not exist yet)."""
    return isinstance(spec, (str, Path)) and Path(str(spec)).suffix.lower() in SINGLE_FILE_SUFFIXES


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor, from the safetensors header (reads no weights).

    Raises ModelLoadError when the file is not a safetensors file."""
    try:
        _, meta = read_header(path)
        return {k: (v["dtype"], tuple(v["shape"])) for k, v in tensor_entries(meta).items()}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"model={str(path)!r} is not a safetensors checkpoint ({e})") from None


def _tensor_shapes(path: Path) -> dict[str, Any]:
    """name -> a meta tensor of the stored shape (enough for architecture detection)."""
    if path.suffix.lower() == ".safetensors":
        return {k: torch.empty(shape, device="meta") for k, (_, shape) in read_safetensors_header(path).items()}
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle errors, zip errors, unsupported globals: all "not a checkpoint"
        raise ModelLoadError(f"model={str(path)!r} is not a loadable checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise ModelLoadError(f"model={str(path)!r} holds a {type(sd).__name__}, not a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _looks_like_model(keys: Any) -> bool:
    markers = ("model.diffusion_model.", "double_blocks.", "joint_blocks.", "transformer_blocks.")
    return any(k.startswith(markers) for k in keys)


def detect_architecture(path: str | Path) -> str:
    """The mdtools preset ('sd15', 'sd21', 'sdxl', 'sd3', 'flux', 'flux-schnell') of a single-file
    checkpoint, from its tensor names and shapes. ModelLoadError when it cannot be recognised."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    p = Path(path)
    shapes = _tensor_shapes(p)
    if not _looks_like_model(shapes):
        raise ModelLoadError(f"model={str(path)!r}: architecture not recognised (no UNet or transformer tensors among "
                             f"its {len(shapes)} tensors); mdtools loads single files of SD 1.x, SD 2.x, SDXL, SD3 "
                             f"and FLUX")
    try:
        kind = infer_diffusers_model_type(shapes)
    except Exception as e:  # diffusers' detector raises on some unusual files (UnboundLocalError, ValueError)
        raise ModelLoadError(f"model={str(path)!r}: architecture not recognised ({type(e).__name__} in diffusers' "
                             f"detector); mdtools loads single files of SD 1.x, SD 2.x, SDXL, SD3 and FLUX") from None
    if kind not in MODEL_TYPES:
        raise ModelLoadError(f"model={str(path)!r} is a {kind!r} checkpoint; mdtools loads single files of "
                             f"{sorted(set(MODEL_TYPES))} (diffusers' names)")
    return MODEL_TYPES[kind]


def _cached_tokenizers(preset: str, folder: Path) -> dict[str, Any]:
    """Tokenizers of `preset` from the local Hugging Face cache (never the network)."""
    import transformers

    idx = json.loads((folder / "model_index.json").read_text())
    out = {}
    for comp, spec in idx.items():
        if not comp.startswith("tokenizer") or not isinstance(spec, list):
            continue
        cls = getattr(transformers, spec[1])
        try:
            out[comp] = cls.from_pretrained(TOKENIZER_REPOS[preset], subfolder=comp, local_files_only=True)
        except Exception:
            raise ModelLoadError(
                f"{spec[1]} ({comp}) of {TOKENIZER_REPOS[preset]} is not in the local cache and checkpoints hold no "
                f"tokenizer; pass {comp}=... to from_pretrained, or fetch it once online: huggingface-cli download "
                f"{TOKENIZER_REPOS[preset]} --include '{comp}/*'") from None
    return out


#: diffusers pipeline class of a config folder -> the preset whose tokenizers it uses
PIPELINE_PRESETS = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl",
                    "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}


def _folder_preset(folder: Path, path: str | Path) -> str:
    """The preset whose tokenizers a config folder's pipeline uses: its pipeline class, and
    for SD 1.x vs 2.x (one class) the text encoder's width (OpenCLIP's 1024) and, for 2.x,
    v-prediction (the 768 px model)."""
    name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if name not in PIPELINE_PRESETS:
        raise ModelLoadError(f"model={str(path)!r}: architecture not recognised, and config {str(folder)!r} is a "
                             f"{name}; mdtools loads single files as {sorted(PIPELINE_PRESETS)}")
    preset = PIPELINE_PRESETS[name]
    if preset == "sd15":

        def read(component: str) -> dict:
            f = folder / component / ("config.json" if component != "scheduler" else "scheduler_config.json")
            return json.loads(f.read_text()) if f.is_file() else {}

        if read("text_encoder").get("hidden_size") == 1024:
            preset = "sd21-768" if read("scheduler").get("prediction_type") == "v_prediction" else "sd21"
    return preset


def load_single_file(path: str | Path, *, config: str | Path | None = None, torch_dtype: torch.dtype = torch.float32,
                     **components: Any) -> tuple[Any, dict[str, Any]]:
    """(diffusers pipeline, info) from a single-file checkpoint, offline.

    `config`: a diffusers-layout config folder or 'arch:<preset>' (default: the preset detected
    from the file, e.g. 'arch:sd21' for any SD 2.x file; give 'arch:sd21-768' for the 768-v
    model, whose weights look the same). `components` replace pipeline parts (tokenizers,
    a scheduler, ...).
    """
    import diffusers

    from .arch import is_arch, preset_dir, preset_name

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"model={str(path)!r} does not exist")
    if config is None:
        preset = detect_architecture(p)
        folder = preset_dir("arch:" + preset)
    elif is_arch(str(config)):
        preset = preset_name(str(config))
        folder = preset_dir("arch:" + preset)
    else:
        folder = Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"config={str(config)!r} is not a diffusers config folder (no model_index.json)")
        try:
            preset = detect_architecture(p)
        except ModelLoadError:
            # the config folder says what the file is (diffusers' detector knows only the
            # published sizes); the preset is then only where to look for tokenizers
            preset = _folder_preset(folder, path)
    missing = [c for c in json.loads((folder / "model_index.json").read_text()) if c.startswith("tokenizer")
               and c not in components and not (folder / c).is_dir()]
    if missing:
        components.update({k: v for k, v in _cached_tokenizers(preset, folder).items() if k in missing})
    cls = getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])
    if "safety_checker" in json.loads((folder / "model_index.json").read_text()):
        components.setdefault("safety_checker", None)
        components.setdefault("requires_safety_checker", False)
    try:
        pipe = cls.from_single_file(str(p), config=str(folder), torch_dtype=torch_dtype, local_files_only=True,
                                    **components)
    except Exception as e:  # diffusers' SingleFileComponentError, shape mismatches, missing files: one line
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"model={str(path)!r} could not be loaded as {preset} with config {folder.name}: {cause}") from None
    info = {"model": str(p), "single_file": True, "architecture": preset, "config": str(folder)}
    return pipe, info


def hub_error(model: str, err: BaseException) -> ModelLoadError:
    """One line naming the model and the cause of a failed hub/local load (offline, missing, gated)."""
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else name
    if "GatedRepo" in name or "gated" in text.lower() or "401" in text or "403" in text:
        cause = "the repository is gated or private: accept its licence on huggingface.co and log in (hf auth login)"
    elif "RepositoryNotFound" in name or "404" in text or "not a valid model identifier" in text or "does not appear to have" in text:
        cause = f"no such repository or files on the Hub ({text})"
    elif "LocalEntryNotFound" in name or any(w in text.lower() for w in ("offline", "connect", "resolve", "cached",
                                                                          "outgoing traffic")):
        cause = ("not in the local cache and the Hub cannot be reached (offline?); download it once online, or use a "
                 "local folder, a single .safetensors file or an 'arch:' preset")
    else:
        cause = f"{name}: {text}"
    return ModelLoadError(f"model={model!r} could not be loaded: {cause}")


__all__ = ["ModelLoadError", "SINGLE_FILE_SUFFIXES", "MODEL_TYPES", "is_single_file", "read_safetensors_header",
           "detect_architecture", "load_single_file", "hub_error"]
