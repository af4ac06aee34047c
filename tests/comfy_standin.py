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
- ControlNets (comfy/controlnet.py): `ControlNet.get_control` (chain, timestep range, the hint
  brought to x's size x 8 with `common_upscale`'s centre crop and kept in `cond_hint`,
  `broadcast_image_to`, strength), `T2IAdapter` (type only), a tiny `ToyControlModel` whose
  residuals the ToyModel adds; `calc_cond_batch` runs the CALC_COND_BATCH wrappers and
  evaluates a cond's control on the batched input right before the model call; `sample`
  calls the controls' `pre_run` (timestep range from `percent_to_sigma`) and `cleanup`.
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
    CALC_COND_BATCH = "calc_cond_batch"
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

    def eps(self, xc: torch.Tensor, t: torch.Tensor, context: torch.Tensor, control: dict | None = None) -> torch.Tensor:
        self.calls.append(tuple(xc.shape))
        h = self.conv_in(xc) + self.ctx(context.mean(1))[:, :, None, None] + torch.sin(t)[:, None, None, None]
        if control is not None:  # ControlNet residuals, added as the UNet adds its input / middle ones
            h = h + control["input"][0]
        h = torch.nn.functional.silu(h)
        if control is not None:
            h = h + control["middle"][0]
        return self.conv_out(h)

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
        eps = self.eps(xc, sigma, c_crossattn, control).float()
        return x - eps * sigma[:, None, None, None]


# ---------------------------------------------------------------- comfy.samplers
def calc_cond_batch(patcher: LegacyModelPatcher, conds: list[dict], x: torch.Tensor, sigma: torch.Tensor,
                    sample_sigmas: torch.Tensor) -> list[torch.Tensor]:
    """comfy.samplers.calc_cond_batch: the patcher's CALC_COND_BATCH wrappers around the batched call.
    The stand-in's conds are one dict per cond/uncond (ComfyUI: a list of dicts each)."""
    wrappers = get_all_wrappers(WrappersMP.CALC_COND_BATCH, {"wrappers": getattr(patcher, "wrappers", {})})
    lists = [[cd] for cd in conds]
    return WrapperExecutor(_calc_cond_batch, wrappers).execute(patcher, lists, x, sigma,
                                                              {"sample_sigmas": sample_sigmas})


def _calc_cond_batch(patcher: LegacyModelPatcher, conds: list[list[dict]], x: torch.Tensor, sigma: torch.Tensor,
                     model_options: dict) -> list[torch.Tensor]:
    """One model call for all conds (cond_or_uncond = 0, 1, ...) whose controls are the same
    object, as ComfyUI batches them (`objects_concatable`); conds with another control get
    their own call. A control's `get_control(x, t, c, n, transformer_options)` runs right
    before the model call, on the batched input, and its result is passed as `control`."""
    flat = [cd[0] for cd in conds]
    groups: list[list[int]] = []
    for i, cd in enumerate(flat):
        for g in groups:
            if flat[g[0]].get("control") is cd.get("control"):
                g.append(i)
                break
        else:
            groups.append([i])
    out: list[torch.Tensor] = [torch.empty(0)] * len(flat)
    for g in groups:
        for i, o in zip(g, _batch_call(patcher, [flat[i] for i in g], g, x, sigma, model_options["sample_sigmas"])):
            out[i] = o
    return out


def _batch_call(patcher: LegacyModelPatcher, conds: list[dict], chunk_ids: list[int], x: torch.Tensor,
                sigma: torch.Tensor, sample_sigmas: torch.Tensor) -> list[torch.Tensor]:
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
    options["cond_or_uncond"] = list(chunk_ids)
    options["uuids"] = [uuid.uuid4() for _ in range(n)]
    options["sigmas"] = timestep
    c["transformer_options"] = options
    control = conds[0].get("control")
    if control is not None:
        c["control"] = control.get_control(input_x, timestep, c, n, options)
    if "model_function_wrapper" in patcher.model_options:
        out = patcher.model_options["model_function_wrapper"](
            model.apply_model, {"input": input_x, "timestep": timestep, "c": c, "cond_or_uncond": list(chunk_ids)})
    else:
        out = model.apply_model(input_x, timestep, **c)
    return list(out.chunk(n))


def sample(patcher: LegacyModelPatcher, noise: torch.Tensor, sigmas: torch.Tensor, positive: dict, negative: dict,
           cfg: float) -> torch.Tensor:
    """Euler sampling with CFG on x0 predictions; returns the final latents. The patcher's
    OUTER_SAMPLE wrappers wrap the whole call, SAMPLER_SAMPLE wrappers the sampler loop."""

    for cd in (positive, negative):  # comfy.samplers.pre_run_control
        if cd.get("control") is not None:
            cd["control"].pre_run(patcher.model, percent_to_sigma)

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

    try:
        return WrapperExecutor(outer, get_all_wrappers(WrappersMP.OUTER_SAMPLE, options)).execute(noise)
    finally:
        for cd in (positive, negative):  # the sampler's cleanup of the controls
            if cd.get("control") is not None:
                cd["control"].cleanup()


SIGMA_MAX = 14.6


def percent_to_sigma(p: float) -> float:
    """The stand-in's model_sampling.percent_to_sigma: 0 -> SIGMA_MAX (start), 1 -> 0 (end)."""
    return SIGMA_MAX * (1.0 - p)


def karras_sigmas(n: int, sigma_min: float = 0.03, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


# ---------------------------------------------------------------- comfy.utils, comfy.controlnet
def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """comfy.utils.common_upscale for 4-D tensors: with crop "center" the source is first cut to
    the target's aspect ratio around its centre, then resized (F.interpolate's modes)."""
    if crop == "center":
        ow, oh = samples.shape[-1], samples.shape[-2]
        oa, na = ow / oh, width / height
        x = round((ow - ow * (na / oa)) / 2) if oa > na else 0
        y = round((oh - oh * (oa / na)) / 2) if oa < na else 0
        samples = samples.narrow(-2, y, oh - 2 * y).narrow(-1, x, ow - 2 * x)
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=upscale_method)


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = -(-batch_size // tensor.shape[dim])
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def broadcast_image_to(tensor: torch.Tensor, target_batch_size: int, batched_number: int) -> torch.Tensor:
    """comfy.controlnet.broadcast_image_to: a hint batch of 1 stays (it broadcasts); else it
    is cut / repeated to the per-chunk batch and repeated once per cond chunk."""
    if tensor.shape[0] == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        tensor = torch.cat([tensor] * (per_batch // tensor.shape[0]) + [tensor[:per_batch % tensor.shape[0]]])
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number)


class ToyControlModel(nn.Module):
    """A tiny ControlNet: hint (N, 3, 8h, 8w) pooled to the latent grid, with the noisy input and
    the text context -> {"input": [r1], "middle": [r2]}, 16 channels at latent size (the ToyModel's
    hidden width). Every call's hint is kept in `hints`."""

    def __init__(self, channels: int = 4, context_dim: int = 8, hint_channels: int = 3, seed: int = 10):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hint_in = nn.Conv2d(hint_channels, 16, 3, padding=1)
        self.x_in = nn.Conv2d(channels, 16, 3, padding=1)
        self.ctx = nn.Linear(context_dim, 16)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2
        self.dtype = torch.float32
        self.hints: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                **_: Any) -> dict[str, list[torch.Tensor]]:
        self.hints.append(hint.clone())
        f = hint.shape[-1] // x.shape[-1]
        h = self.hint_in(torch.nn.functional.avg_pool2d(hint, f)) + self.x_in(x)
        h = h + self.ctx(context.mean(1))[:, :, None, None] + torch.cos(timesteps)[:, None, None, None]
        r1 = torch.tanh(h)
        return {"input": [r1], "middle": [self.mid(torch.nn.functional.silu(r1))], "output": []}


class ControlBase:
    """comfy.controlnet.ControlBase, as far as the pack and the stand-in sampler use it."""

    def __init__(self) -> None:
        self.cond_hint_original: torch.Tensor | None = None
        self.cond_hint: torch.Tensor | None = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range: tuple[float, float] | None = None
        self.compression_ratio = 8
        self.upscale_algorithm = "nearest-exact"
        self.previous_controlnet: ControlBase | None = None
        self.latent_format = None
        self.vae = None
        self.extra_concat_orig: list[torch.Tensor] = []
        self.preprocess_image: Callable = lambda a: a

    def set_cond_hint(self, cond_hint: torch.Tensor, strength: float = 1.0,
                      timestep_percent_range: tuple[float, float] = (0.0, 1.0)) -> "ControlBase":
        self.cond_hint_original, self.strength, self.timestep_percent_range = cond_hint, strength, timestep_percent_range
        return self

    def set_previous_controlnet(self, controlnet: "ControlBase") -> "ControlBase":
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model: Any, percent_to_timestep_function: Callable) -> None:
        self.timestep_range = (percent_to_timestep_function(self.timestep_percent_range[0]),
                               percent_to_timestep_function(self.timestep_percent_range[1]))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.cond_hint = None
        self.timestep_range = None

    def control_merge(self, control: dict, control_prev: dict | None) -> dict:
        out: dict[str, list] = {k: [None if x is None else x * self.strength for x in v] for k, v in control.items()}
        if control_prev is not None:
            for k in ("input", "middle", "output"):
                for i, prev in enumerate(control_prev[k]):
                    if i >= len(out[k]):
                        out[k].append(prev)
                    elif prev is not None:
                        out[k][i] = prev if out[k][i] is None else prev + out[k][i]
        return out


class ControlNet(ControlBase):
    """comfy.controlnet.ControlNet.get_control: the chain first, the timestep range (sigmas), the
    hint brought to x's size x compression_ratio (kept while x's size stays), broadcast to the
    batch, then the control model on the EPS-scaled input."""

    def __init__(self, control_model: nn.Module):
        super().__init__()
        self.control_model = control_model
        self.manual_cast_dtype = None

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    transformer_options: dict) -> dict | None:
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        cr = self.compression_ratio
        if self.cond_hint is None or tuple(self.cond_hint.shape[-2:]) != (x_noisy.shape[2] * cr, x_noisy.shape[3] * cr):
            assert self.cond_hint_original is not None
            self.cond_hint = self.preprocess_image(common_upscale(
                self.cond_hint_original, x_noisy.shape[3] * cr, x_noisy.shape[2] * cr, self.upscale_algorithm, "center"))
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        xin = x_noisy / (t[:, None, None, None] ** 2 + 1) ** 0.5
        out = self.control_model(x=xin, hint=self.cond_hint, timesteps=t, context=context)
        return self.control_merge(out, control_prev)


class T2IAdapter(ControlBase):
    """comfy.controlnet.T2IAdapter (only its type matters here: the pack refuses it per view)."""

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    transformer_options: dict) -> dict | None:
        raise AssertionError("the stand-in's T2I-Adapter is never evaluated")


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
    """Put `comfy`, `comfy.patcher_extension`, `comfy.model_management`, `comfy.utils`, `comfy.controlnet` and `folder_paths`
    in sys.modules for one test (monkeypatch undoes it)."""
    comfy = types.ModuleType("comfy")
    pe = types.ModuleType("comfy.patcher_extension")
    pe.WrappersMP = WrappersMP  # type: ignore[attr-defined]
    pe.WrapperExecutor = WrapperExecutor  # type: ignore[attr-defined]
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")  # type: ignore[attr-defined]
    mm.intermediate_device = lambda: torch.device("cpu")  # type: ignore[attr-defined]
    mm.load_models_gpu = lambda models, **kw: None  # type: ignore[attr-defined]  # CPU: nothing to move
    mm.loaded_models = lambda only_currently_used=False: []  # type: ignore[attr-defined]
    ut = types.ModuleType("comfy.utils")
    ut.ProgressBar = ProgressBar  # type: ignore[attr-defined]
    ut.common_upscale = common_upscale  # type: ignore[attr-defined]
    ut.repeat_to_batch_size = repeat_to_batch_size  # type: ignore[attr-defined]
    cn = types.ModuleType("comfy.controlnet")
    cn.ControlBase, cn.ControlNet, cn.T2IAdapter = ControlBase, ControlNet, T2IAdapter  # type: ignore[attr-defined]
    cn.broadcast_image_to = broadcast_image_to  # type: ignore[attr-defined]
    comfy.controlnet = cn  # type: ignore[attr-defined]
    ProgressBar.updates = []
    comfy.utils = ut  # type: ignore[attr-defined]
    comfy.patcher_extension = pe  # type: ignore[attr-defined]
    comfy.model_management = mm  # type: ignore[attr-defined]
    fp = types.ModuleType("folder_paths")
    fp.get_output_directory = lambda: str(output_dir)  # type: ignore[attr-defined]
    fp.get_save_image_path = get_save_image_path  # type: ignore[attr-defined]
    for name, mod in (("comfy", comfy), ("comfy.patcher_extension", pe), ("comfy.model_management", mm),
                      ("comfy.utils", ut), ("comfy.controlnet", cn), ("folder_paths", fp)):
        monkeypatch.setitem(sys.modules, name, mod)
