"""A minimal stand-in for the parts of ComfyUI that mdtools.comfy calls (mirrors ComfyUI 0.3.64).

ComfyUI is not on PyPI and cannot be a CI dependency, so the node pack is tested in CI
against this stand-in, written here from ComfyUI 0.3.64's behaviour (no ComfyUI code is
copied). It covers only what the pack touches:

- `ModelPatcher`: `clone()` (model_options deep-copied, wrappers list-copied),
  `add_wrapper_with_key` / `remove_wrappers_with_key` (comfy/model_patcher.py), and the
  older single slot `set_model_unet_function_wrapper` (model_options["model_function_wrapper"]).
  `LegacyModelPatcher` lacks the wrapper API, as ComfyUI before it did.
- `comfy.patcher_extension`: `WrappersMP.APPLY_MODEL == "apply_model"` and a wrapper
  executor with ComfyUI's calling convention: wrapper(executor, *args, **kwargs), where
  `executor(*args, **kwargs)` runs the next wrapper or the original.
- `ToyModel.apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kw)`:
  runs the APPLY_MODEL wrappers found in transformer_options["wrappers"], then an eps
  model with ComfyUI's EPS parameterisation (input x / sqrt(sigma^2 + 1), output the
  denoised x0 = x - sigma * eps), as comfy/model_base.py does.
- `sample(...)`: ComfyUI's cond/uncond batching (comfy/samplers.py `_calc_cond_batch`):
  cond and uncond go through ONE model call, cond_or_uncond = [0, 1], the per-call
  transformer_options hold cond_or_uncond, uuids, sigmas, sample_sigmas and the patcher's
  wrappers; the old wrapper is called as fn(apply_model, {"input", "timestep", "c",
  "cond_or_uncond"}); then Euler steps on CFG-combined x0 (k-diffusion's sample_euler).
- Layouts: LATENT is {"samples": (B, 4, H/8, W/8)} unscaled latents; IMAGE is
  (B, H, W, 3) float in [0, 1]; MASK is (B, H, W).
- Node schema: `check_node_class` (INPUT_TYPES / RETURN_TYPES / FUNCTION / CATEGORY) and
  `run_node`, which validates inputs as ComfyUI's execution.validate_inputs does
  (required inputs, INT / FLOAT min and max, combo membership) before calling FUNCTION.
"""

from __future__ import annotations

import copy
import sys
import types
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

APPLY_MODEL = "apply_model"


# ---------------------------------------------------------------- comfy.patcher_extension
class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    SAMPLER_SAMPLE = "sampler_sample"
    APPLY_MODEL = APPLY_MODEL


class WrapperExecutor:
    """Runs wrappers[idx](self, *args) and, past the last wrapper, the original."""

    def __init__(self, original: Callable, wrappers: list[Callable], idx: int = 0):
        self.original, self.wrappers, self.idx = original, list(wrappers), idx

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return WrapperExecutor(self.original, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.idx == len(self.wrappers):
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)


def get_all_wrappers(wrapper_type: str, transformer_options: dict) -> list[Callable]:
    out: list[Callable] = []
    for ws in transformer_options.get("wrappers", {}).get(wrapper_type, {}).values():
        out.extend(ws)
    return out


# ---------------------------------------------------------------- comfy.model_patcher
class LegacyModelPatcher:
    """A ModelPatcher of a ComfyUI without the wrapper API (single model_function_wrapper slot)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.load_device = torch.device("cpu")

    def clone(self) -> "LegacyModelPatcher":
        n = self.__class__(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def set_model_unet_function_wrapper(self, fn: Callable) -> None:
        self.model_options["model_function_wrapper"] = fn  # last one wins


class ModelPatcher(LegacyModelPatcher):
    """ComfyUI 0.3.64's ModelPatcher, as far as the pack uses it."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.wrappers: dict[str, dict[Any, list[Callable]]] = {}

    def clone(self) -> "ModelPatcher":
        n = super().clone()
        n.wrappers = {k: {k1: list(v1) for k1, v1 in v.items()} for k, v in self.wrappers.items()}
        return n

    def add_wrapper_with_key(self, wrapper_type: str, key: Any, wrapper: Callable) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: Any) -> None:
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: Any) -> list[Callable]:
        return self.wrappers.get(wrapper_type, {}).get(key, [])


# ---------------------------------------------------------------- the model
class ToyModel(nn.Module):
    """A tiny eps model with text and (optional) concat conditioning, in ComfyUI's EPS form."""

    def __init__(self, channels: int = 4, context_dim: int = 8, concat_channels: int = 0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.concat_channels = concat_channels
        self.conv_in = nn.Conv2d(channels + concat_channels, 16, 3, padding=1)
        self.ctx = nn.Linear(context_dim, 16)
        self.conv_out = nn.Conv2d(16, channels, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2
        self.calls: list[tuple[int, ...]] = []  # input shapes of the real model calls

    def eps(self, xc: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(xc.shape))
        h = self.conv_in(xc) + self.ctx(context.mean(1))[:, :, None, None] + torch.sin(t)[:, None, None, None]
        return self.conv_out(torch.nn.functional.silu(h))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None, c_crossattn: Any = None,
                    control: Any = None, transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        wrappers = get_all_wrappers(APPLY_MODEL, transformer_options or {})
        return WrapperExecutor(self._apply_model, wrappers).execute(x, t, c_concat, c_crossattn, control,
                                                                     transformer_options or {}, **kwargs)

    def _apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None, c_crossattn: Any = None,
                     control: Any = None, transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        sigma = t
        xc = x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        eps = self.eps(xc, sigma, c_crossattn).float()
        return x - eps * sigma[:, None, None, None]


# ---------------------------------------------------------------- comfy.samplers
def calc_cond_batch(patcher: LegacyModelPatcher, conds: list[dict], x: torch.Tensor, sigma: torch.Tensor,
                    sample_sigmas: torch.Tensor) -> list[torch.Tensor]:
    """One model call for all conds (cond_or_uncond = 0, 1, ...), as ComfyUI batches them."""
    model = patcher.model
    n = len(conds)
    input_x = torch.cat([x] * n)
    timestep = torch.cat([sigma.expand(x.shape[0])] * n)
    c: dict[str, Any] = {"c_crossattn": torch.cat([cd["c_crossattn"] for cd in conds])}
    if "c_concat" in conds[0]:
        c["c_concat"] = torch.cat([cd["c_concat"] for cd in conds])
    options = copy.copy(patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = getattr(patcher, "wrappers", {})
    options["sample_sigmas"] = sample_sigmas
    options["cond_or_uncond"] = list(range(n))
    options["uuids"] = [uuid.uuid4() for _ in range(n)]
    options["sigmas"] = timestep
    c["transformer_options"] = options
    if "model_function_wrapper" in patcher.model_options:
        out = patcher.model_options["model_function_wrapper"](
            model.apply_model, {"input": input_x, "timestep": timestep, "c": c, "cond_or_uncond": list(range(n))})
    else:
        out = model.apply_model(input_x, timestep, **c)
    return list(out.chunk(n))


def sample(patcher: LegacyModelPatcher, noise: torch.Tensor, sigmas: torch.Tensor, positive: dict, negative: dict,
           cfg: float) -> torch.Tensor:
    """Euler sampling with CFG on x0 predictions; returns the final latents. The patcher's
    OUTER_SAMPLE wrappers wrap the whole call, SAMPLER_SAMPLE wrappers the sampler loop."""

    def euler(noise: torch.Tensor) -> torch.Tensor:
        x = noise * sigmas[0]
        with torch.no_grad():
            for i in range(len(sigmas) - 1):
                cond, uncond = calc_cond_batch(patcher, [positive, negative], x, sigmas[i], sigmas)
                denoised = uncond + cfg * (cond - uncond)
                d = (x - denoised) / sigmas[i]
                x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    wrappers = getattr(patcher, "wrappers", {})
    options = {"wrappers": wrappers}

    def outer(noise: torch.Tensor) -> torch.Tensor:
        return WrapperExecutor(euler, get_all_wrappers(WrappersMP.SAMPLER_SAMPLE, options)).execute(noise)

    return WrapperExecutor(outer, get_all_wrappers(WrappersMP.OUTER_SAMPLE, options)).execute(noise)


def karras_sigmas(n: int, sigma_min: float = 0.03, sigma_max: float = 14.6, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


# ---------------------------------------------------------------- node schema
def check_node_class(cls: type) -> None:
    """Raise AssertionError where `cls` does not follow ComfyUI's V1 node schema."""
    types_ = cls.INPUT_TYPES()
    assert isinstance(types_, dict) and set(types_) <= {"required", "optional", "hidden"}, types_
    for cat, inputs in types_.items():
        for name, spec in inputs.items():
            if cat == "hidden":  # filled by the server, named by a string
                assert spec in ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT"), (cls.__name__, name, spec)
                continue
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (cls.__name__, name, spec)
            kind = spec[0]
            assert isinstance(kind, (str, list)), (cls.__name__, name)
            opts = spec[1] if len(spec) == 2 else {}
            if isinstance(kind, list):
                assert kind and all(isinstance(v, str) for v in kind), (cls.__name__, name)
                if "default" in opts:
                    assert opts["default"] in kind, (cls.__name__, name)
            elif kind in ("INT", "FLOAT") and "default" in opts:
                assert opts.get("min", -float("inf")) <= opts["default"] <= opts.get("max", float("inf")), (cls.__name__, name)
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    if hasattr(cls, "RETURN_NAMES"):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION)) and isinstance(cls.CATEGORY, str)


class ValidationError(Exception):
    """What ComfyUI answers with HTTP 400 before running a graph."""


def validate_inputs(cls: type, inputs: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's checks before a graph runs (HTTP 400 when they fail): required inputs present,
    unknown names ignored, INT / FLOAT converted and within min / max, combo values in their
    list. A link ([node id, slot], API format) is only checked for presence."""
    inputs = dict(inputs)
    types_ = cls.INPUT_TYPES()
    for cat in ("required", "optional"):
        for name, spec in types_.get(cat, {}).items():
            if name not in inputs:
                if cat == "required":
                    raise ValidationError(f"required_input_missing: {name}")
                continue
            kind, opts = spec[0], (spec[1] if len(spec) == 2 else {})
            val = inputs[name]
            if isinstance(val, list) and len(val) == 2 and isinstance(val[0], str):
                continue  # a link to another node's output
            if kind == "INT":
                val = int(val)
            elif kind == "FLOAT":
                val = float(val)
            if "min" in opts and val < opts["min"]:
                raise ValidationError(f"value_smaller_than_min: {name}")
            if "max" in opts and val > opts["max"]:
                raise ValidationError(f"value_bigger_than_max: {name}")
            if isinstance(kind, list) and val not in kind:
                raise ValidationError(f"value_not_in_list: {name}")
            inputs[name] = val
    return inputs


def run_node(cls: type, **inputs: Any) -> tuple:
    """Validate `inputs` as ComfyUI does, then call the node's FUNCTION; returns its tuple."""
    inputs = validate_inputs(cls, inputs)
    out = getattr(cls(), cls.FUNCTION)(**inputs)
    if isinstance(out, dict):  # {"ui": ..., "result": (...)}
        out = out.get("result", ())
    assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
    return out


# ---------------------------------------------------------------- comfy.sd.VAE
class VAE:
    """ComfyUI's VAE wrapper around an LDM-layout `first_stage_model`: decode(LATENT samples)
    -> IMAGE (B, H, W, C) = process_output(first_stage_model.decode(z)) in one piece, and
    encode(IMAGE) -> latents of process_input(pixels), as comfy/sd.py does."""

    def __init__(self, first_stage_model: nn.Module):
        self.first_stage_model = first_stage_model
        self.patcher = None
        self.device = torch.device("cpu")
        self.output_device = torch.device("cpu")
        self.vae_dtype = torch.float32
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
        oy, ox = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        return pixels[:, oy:oy + h, ox:ox + w, :]

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.first_stage_model.decode(samples.to(self.vae_dtype)).float()
        return self.process_output(out).movedim(1, -1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.process_input(self.vae_encode_crop_pixels(pixels).movedim(-1, 1))
        with torch.no_grad():
            return self.first_stage_model.encode(x.to(self.vae_dtype)).float()


# ---------------------------------------------------------------- folder_paths
def get_save_image_path(prefix: str, output_dir: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str, str]:
    """(folder, file stem, counter, subfolder, prefix): files are <stem>_<counter:05>_.<ext>,
    the counter one past the highest already in the folder, as ComfyUI numbers them."""
    subfolder, stem = str(Path(prefix).parent), Path(prefix).name
    subfolder = "" if subfolder == "." else subfolder
    folder = Path(output_dir) / subfolder
    counter = 1
    if folder.is_dir():
        nums = [int(p.name[len(stem) + 1:].split("_")[0]) for p in folder.iterdir()
                if p.name.startswith(stem + "_") and p.name[len(stem) + 1:].split("_")[0].isdigit()]
        counter = max(nums, default=0) + 1
    return str(folder), stem, counter, subfolder, prefix


class ProgressBar:
    """comfy.utils.ProgressBar: `update_absolute(value, total, preview)` moves the node's bar; a
    preview is ("JPEG" | "PNG", PIL image, max size). Every update is kept in `ProgressBar.updates`."""

    updates: list[tuple[int, int, Any]] = []

    def __init__(self, total: int):
        self.total = total
        self.current = 0

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        self.current, self.total = value, total or self.total
        ProgressBar.updates.append((value, self.total, preview))


# ---------------------------------------------------------------- modules the pack imports
def install(monkeypatch: Any, output_dir: Path) -> None:
    """Put `comfy`, `comfy.patcher_extension`, `comfy.model_management`, `comfy.utils` and `folder_paths`
    in sys.modules for one test (monkeypatch undoes it)."""
    comfy = types.ModuleType("comfy")
    pe = types.ModuleType("comfy.patcher_extension")
    pe.WrappersMP = WrappersMP  # type: ignore[attr-defined]
    pe.WrapperExecutor = WrapperExecutor  # type: ignore[attr-defined]
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")  # type: ignore[attr-defined]
    mm.intermediate_device = lambda: torch.device("cpu")  # type: ignore[attr-defined]
    mm.load_models_gpu = lambda models, **kw: None  # type: ignore[attr-defined]  # CPU: nothing to move
    ut = types.ModuleType("comfy.utils")
    ut.ProgressBar = ProgressBar  # type: ignore[attr-defined]
    ProgressBar.updates = []
    comfy.utils = ut  # type: ignore[attr-defined]
    comfy.patcher_extension = pe  # type: ignore[attr-defined]
    comfy.model_management = mm  # type: ignore[attr-defined]
    fp = types.ModuleType("folder_paths")
    fp.get_output_directory = lambda: str(output_dir)  # type: ignore[attr-defined]
    fp.get_save_image_path = get_save_image_path  # type: ignore[attr-defined]
    for name, mod in (("comfy", comfy), ("comfy.patcher_extension", pe), ("comfy.model_management", mm),
                      ("comfy.utils", ut), ("folder_paths", fp)):
        monkeypatch.setitem(sys.modules, name, mod)
