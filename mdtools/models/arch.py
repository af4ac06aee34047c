"""Real-architecture presets with seeded random weights: `from_pretrained("arch:sdxl", seed=0)`.

Cost and memory of a diffusion model do not depend on its trained weights, so a model of
the exact real architecture with random weights measures them honestly on any machine,
with no download. The configs ship in `mdtools/assets/arch/` (byte-for-byte copies of
public Hub config files; sources and published parameter counts in SOURCES.md and
param_counts.json there).

Text encoders: T5-XXL alone has 4.7 B parameters, so by default the presets use small
*stand-in* text encoders of the same family with the same output shapes (sequence length,
hidden width, pooled/projection width) but 2 layers and a small byte-level vocabulary;
the denoiser and the VAE are always the exact architecture. `text_encoders="full"`
builds the real text-encoder architectures instead (random weights too).

Images made with these presets are noise-like by construction: their records carry
`random_weights: true` and they are never results.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from ..errors import ConfigError

ARCH_PREFIX = "arch:"


@dataclass(frozen=True)
class Preset:
    """One preset: its config folder under assets/arch and a one-line description."""

    folder: str
    description: str


#: Preset name -> shipped config folder. 'sd21' is the 512 px epsilon model (2.1-base);
#: 'sd21-768' the 768 px v-prediction one; 'flux' is FLUX.1-dev (guidance-distilled).
PRESETS: dict[str, Preset] = {
    "sd15": Preset("stable-diffusion-v1-5", "SD 1.5: 860M UNet, CLIP-L, 4-ch VAE, 512 px"),
    "sd21": Preset("stable-diffusion-2-1-base", "SD 2.1-base: 866M UNet, OpenCLIP-H, 512 px, epsilon"),
    "sd21-768": Preset("stable-diffusion-2-1", "SD 2.1: 866M UNet, OpenCLIP-H, 768 px, v-prediction"),
    "sdxl": Preset("stable-diffusion-xl-base-1.0", "SDXL base 1.0: 2.6B UNet, CLIP-L + OpenCLIP-bigG, 1024 px"),
    "sd3": Preset("stable-diffusion-3-medium-diffusers", "SD3-medium: 2B MMDiT, CLIP-L + CLIP-G + T5-XXL, 16-ch VAE"),
    "flux": Preset("FLUX.1-dev", "FLUX.1-dev: 12B MMDiT, CLIP-L + T5-XXL, 16-ch VAE, guidance embedding"),
    "flux-schnell": Preset("FLUX.1-schnell", "FLUX.1-schnell: 12B MMDiT, no guidance embedding"),
}

#: FLUX.1-schnell's T5 is FLUX.1-dev's (see assets/arch/SOURCES.md): the folder it is read from.
_SHARED_COMPONENTS = {("FLUX.1-schnell", "text_encoder_2"): "FLUX.1-dev"}

TextEncoders = Literal["stand-in", "full"]


def arch_root() -> Path:
    """The folder of shipped architecture configs."""
    return Path(__file__).parents[1] / "assets" / "arch"


def is_arch(spec: Any) -> bool:
    """Whether a model spec names a preset ('arch:sd15', ...)."""
    return isinstance(spec, str) and spec.startswith(ARCH_PREFIX)


def preset_name(spec: str) -> str:
    """'arch:sdxl' (or 'sdxl') -> 'sdxl'; ConfigError listing the valid presets otherwise."""
    name = spec[len(ARCH_PREFIX):] if is_arch(spec) else spec
    if name not in PRESETS:
        valid = ", ".join(ARCH_PREFIX + k for k in PRESETS)
        raise ConfigError(f"model={spec!r} is not a known architecture preset; use one of: {valid}")
    return name


def preset_dir(spec: str) -> Path:
    """The diffusers-layout config folder (model_index.json, <component>/config.json) of a preset."""
    return arch_root() / PRESETS[preset_name(spec)].folder


def _component_dir(folder: Path, component: str) -> Path:
    shared = _SHARED_COMPONENTS.get((folder.name, component))
    d = (folder.parent / shared / component) if shared else folder / component
    if not d.is_dir():
        raise ConfigError(f"{folder.name} has no shipped config for component {component!r}")
    return d


def model_index(folder: Path) -> dict[str, tuple[str, str]]:
    """component -> (library, class name), from model_index.json (the Hub's own layout)."""
    idx = json.loads((folder / "model_index.json").read_text())
    return {k: tuple(v) for k, v in idx.items() if isinstance(v, list) and len(v) == 2 and v[0] is not None}


def build_component(folder: Path, component: str, *, cls_name: str | None = None, **overrides: Any) -> Any:
    """Build one model component from its shipped config (random init on the current default device).

    `overrides` change config values (the stand-in text encoders use this). Schedulers and
    tokenizers are not built here.
    """
    lib, name = model_index(folder).get(component, ("", ""))
    name = cls_name or name
    d = _component_dir(folder, component)
    if lib == "diffusers" or name in ("AutoencoderKL", "UNet2DConditionModel", "SD3Transformer2DModel",
                                       "FluxTransformer2DModel"):
        import diffusers

        cls = getattr(diffusers, name)
        cfg = cls.load_config(d)
        cfg.update(overrides)
        return cls.from_config(cfg)
    import transformers

    cls = getattr(transformers, name)
    cfg = cls.config_class.from_pretrained(d, **overrides)
    # the configs' "torch_dtype": "float16" makes transformers 5 build some layers in half: one dtype for all
    return cls(cfg).to(torch.get_default_dtype())


def count_parameters(spec: str, components: tuple[str, ...] | None = None) -> dict[str, int]:
    """Parameter count per model component of a preset, built on the meta device (no memory, ~seconds).

    Text encoders are the FULL real architectures here (what the published figures count);
    tied weights are counted once, persistent buffers (SD3's pos_embed) are not parameters.
    """
    folder = preset_dir(spec)
    idx = model_index(folder)
    want = components or tuple(c for c, (lib, _) in idx.items() if not c.startswith(("tokenizer", "scheduler"))
                               and lib in ("diffusers", "transformers") and c not in ("safety_checker", "feature_extractor"))
    out = {}
    with torch.device("meta"):
        for comp in want:
            m = build_component(folder, comp)
            out[comp] = sum(p.numel() for p in m.parameters())
            del m
    return out


def published_counts() -> dict[str, Any]:
    """The measured/published figures shipped with the configs (param_counts.json)."""
    return json.loads((arch_root() / "param_counts.json").read_text())


# ---- stand-in text encoders ------------------------------------------------------------------

STAND_IN_LAYERS = 2
STAND_IN_FF = 64


def stand_in_tokenizers() -> tuple[Any, Any]:
    """(CLIP tokenizer, T5 tokenizer) built in code: CLIP BPE over a small vocabulary (the toy
    model's, context 77) and byte-level ByT5 (no files). Any text tokenizes; ids are small."""
    from transformers import ByT5Tokenizer, CLIPTokenizer

    from ..toy.tokenizer import build_vocab

    vocab, merges = build_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77), ByT5Tokenizer()


def _stand_in(folder: Path, component: str, clip_tok: Any, t5_tok: Any) -> Any:
    """A 2-layer text encoder of the component's family with the same output widths."""
    _, name = model_index(folder)[component]
    if name == "T5EncoderModel":
        return build_component(folder, component, num_layers=STAND_IN_LAYERS, d_ff=STAND_IN_FF, num_heads=2,
                               vocab_size=len(t5_tok), pad_token_id=t5_tok.pad_token_id,
                               eos_token_id=t5_tok.eos_token_id)
    eos = clip_tok.convert_tokens_to_ids(clip_tok.eos_token)
    bos = clip_tok.convert_tokens_to_ids(clip_tok.bos_token)
    # hidden_size, projection_dim, max_position_embeddings (77) and the activation stay real
    return build_component(folder, component, num_hidden_layers=STAND_IN_LAYERS, intermediate_size=STAND_IN_FF,
                           vocab_size=len(clip_tok), eos_token_id=eos, bos_token_id=bos, pad_token_id=eos)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in `dtype` (halves the peak of building a 12B model in bf16)."""
    old = torch.get_default_dtype()
    if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_pipeline(spec: str, *, seed: int = 0, torch_dtype: torch.dtype = torch.float32,
                   device: str | torch.device | None = None, text_encoders: TextEncoders = "stand-in") -> tuple[Any, dict]:
    """A diffusers pipeline of the preset's exact architecture with seeded random weights.

    Component k is initialised after `torch.manual_seed(seed + k)` on `device` (CPU by
    default), directly in `torch_dtype`. Returns (pipeline, info) where info is the dict
    runs record (`random_weights: true`, preset, text encoders, parameter counts).
    """
    name = preset_name(spec)
    _check_memory(name, torch_dtype, torch.device(device) if device is not None else torch.device("cpu"), text_encoders)
    pipe, info = build_from_folder(preset_dir(spec), seed=seed, torch_dtype=torch_dtype, device=device,
                                   text_encoders=text_encoders)
    info["model"] = ARCH_PREFIX + name
    info["architecture"] = PRESETS[name].folder
    return pipe, info


def _available_bytes(device: torch.device) -> int | None:
    """Free memory where the weights go: CUDA free memory, or Linux MemAvailable; None if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _check_memory(name: str, dtype: torch.dtype, device: torch.device, text_encoders: str) -> None:
    """Refuse, before allocating anything, a preset whose weights cannot fit (e.g. FLUX in fp32 on a laptop)."""
    counts = published_counts().get(PRESETS[name].folder, {})
    params = sum(c["params"] for comp, c in counts.items() if isinstance(c, dict) and "params" in c
                 and not (comp.startswith("text_encoder") and text_encoders == "stand-in"))
    need = params * torch.empty((), dtype=dtype).element_size()
    avail = _available_bytes(device)
    if avail is not None and need > avail:
        raise ConfigError(f"arch:{name} needs about {need / 2**30:.1f} GiB for its weights in {str(dtype).split('.')[-1]} "
                          f"but {device} has {avail / 2**30:.1f} GiB available; use torch_dtype=torch.bfloat16 "
                          f"(--dtype bfloat16), a GPU, or a smaller preset (arch:sd15, arch:sd21)")


def build_from_folder(folder: Path, *, seed: int = 0, torch_dtype: torch.dtype = torch.float32,
                      device: str | torch.device | None = None, text_encoders: TextEncoders = "stand-in",
                      overrides: dict[str, dict[str, Any]] | None = None) -> tuple[Any, dict]:
    """`build_pipeline` for any diffusers-layout config folder (model_index.json + configs, no weights).

    `overrides` change config values per component, e.g. {"transformer": {"num_layers": 2}}:
    depth-reduced models for measuring what a block costs (benchmarks/real_arch.py
    --depth-probe). The info then names them, and the architecture is no longer the preset's."""
    import diffusers

    if text_encoders not in ("stand-in", "full"):
        raise ConfigError(f"text_encoders={text_encoders!r} is not valid; choose 'stand-in' or 'full'")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer (e.g. 0), got {seed!r}")
    folder = Path(folder)
    idx = model_index(folder)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(idx))
    if unknown:
        raise ConfigError(f"overrides name components {unknown} that {folder.name} does not have; it has {sorted(idx)}")
    unused = sorted(c for c in overrides if c.startswith(("tokenizer", "scheduler"))
                    or (c.startswith("text_encoder") and text_encoders == "stand-in"))
    if unused:
        raise ConfigError(f"overrides for {unused} would be ignored: tokenizers and schedulers are not built from "
                          "configs here, and stand-in text encoders have their own (use text_encoders='full')")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    clip_tok, t5_tok = stand_in_tokenizers()
    if "text_encoder" in idx:  # CLIP pads to its context length (77 for every real model)
        te = json.loads((_component_dir(folder, "text_encoder") / "config.json").read_text())
        clip_tok.model_max_length = int(te.get("max_position_embeddings", 77))
    parts: dict[str, Any] = {}
    params: dict[str, int] = {}
    with _default_dtype(torch_dtype), dev:
        for k, comp in enumerate(sorted(idx)):
            lib, cls_name = idx[comp]
            if comp.startswith("tokenizer"):
                parts[comp] = t5_tok if "T5" in cls_name else clip_tok
                continue
            if comp == "scheduler":
                cls = getattr(diffusers, cls_name)
                parts[comp] = cls.from_config(cls.load_config(folder / "scheduler"))
                continue
            if comp in ("safety_checker", "feature_extractor"):
                parts[comp] = None
                continue
            torch.manual_seed(seed + k)
            if comp.startswith("text_encoder") and text_encoders == "stand-in":
                m = _stand_in(folder, comp, clip_tok, t5_tok)
            else:
                m = build_component(folder, comp, **overrides.get(comp, {}))
            if any(p.dtype != torch_dtype for p in m.parameters()):
                m = m.to(dtype=torch_dtype)
            parts[comp] = m.to(device=dev).eval()
            params[comp] = sum(p.numel() for p in m.parameters())
    raw = json.loads((folder / "model_index.json").read_text())
    for comp, spec in raw.items():  # components saved as [null, null] (no safety checker)
        if isinstance(spec, list) and comp not in parts:
            parts[comp] = None
    pipe_cls = getattr(diffusers, raw["_class_name"])
    if "requires_safety_checker" in pipe_cls.__init__.__code__.co_varnames:
        parts["requires_safety_checker"] = False
    pipe = pipe_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    info = {
        "model": str(folder),
        "random_weights": True,
        "architecture": folder.name + (f" with {overrides}" if overrides else ""),
        "seed": seed,
        "text_encoders": ("stand-in: same family and output shapes, 2 layers, small vocabulary"
                          if text_encoders == "stand-in" else "full architecture, random weights"),
        "parameters": params,
    }
    return pipe, info


__all__ = ["PRESETS", "Preset", "ARCH_PREFIX", "arch_root", "is_arch", "preset_name", "preset_dir", "build_component",
           "count_parameters", "published_counts", "build_pipeline", "build_from_folder", "stand_in_tokenizers"]
