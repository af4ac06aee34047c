"""ControlNet per view under the MultiDiffusion (mdtools) patch: each view gets the residuals of its own crop of the hint.

ComfyUI evaluates a ControlNet in `_calc_cond_batch`, on the whole canvas, before the model
call (`control.get_control(x, t, c, n, transformer_options)`), so an APPLY_MODEL wrapper
would receive residuals of the whole hint for every view: the field's most reported bug
(ComfyUI-TiledDiffusion #6, #36). The patch therefore adds a CALC_COND_BATCH wrapper that
hands `_calc_cond_batch` a stand-in (`DeferredControl`) for each ControlNet of the conds;
its `get_control` returns a `PendingControl` instead of residuals, and the APPLY_MODEL
wrapper evaluates the real ControlNet per view batch (`evaluate`), as
ComfyUI-TiledDiffusion does (its tiled_diffusion.py:334-446, re-implemented here, not
copied):

1. the hint is brought to the full canvas exactly as ComfyUI's `ControlNet.get_control`
   does for a whole-canvas call (`comfy.utils.common_upscale` to canvas x compression with
   the control's `upscale_algorithm` and a centre crop, `preprocess_image`, VAE encode and
   `latent_format.process_in` for latent-space ControlNets, `extra_concat`), and kept in
   the control's own `cond_hint` slot, which ComfyUI's `cleanup()` empties after sampling;
2. each view takes its crop of it at `compression_ratio` coordinates (`crop_scaled`: the
   positions of the view's latent crop, wrap-around included);
3. the ControlNet's own `get_control` runs on the view batch with that crop in `cond_hint`
   (so its strength, timestep range, Union type and `previous_controlnet` chain apply as
   usual); every ControlNet of the chain gets its own crop.

Accepted: `comfy.controlnet.ControlNet` and its subclasses (ControlLora, SD3.5, Flux and
Union ControlNets; latent-space ones with their VAE). T2I-Adapters and third-party control
objects are refused with a ConfigError: their hint handling differs (T2I-Adapter caches its
features per hint size and rounds the size to its unshuffle factor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..fusion import MultiDiffusion, ViewSet


@dataclass
class PendingControl:
    """What `_calc_cond_batch` passes to the model in place of residuals: the ControlNet (the
    head of its chain) and the number of cond chunks of the canvas batch."""

    control: Any
    batched_number: int


class DeferredControl:
    """Stands in for a ComfyUI ControlNet during one `calc_cond_batch` call: `get_control`
    defers the evaluation to the APPLY_MODEL wrapper; every other attribute is the real one."""

    def __init__(self, control: Any):
        self.control = control

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    transformer_options: dict) -> PendingControl:
        return PendingControl(self.control, batched_number)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.control, name)


def chain(control: Any) -> list[Any]:
    """The ControlNets of a `previous_controlnet` chain, head first."""
    out = []
    while control is not None:
        out.append(control)
        control = getattr(control, "previous_controlnet", None)
    return out


def check_controls(control: Any) -> None:
    """ConfigError unless every member of the chain is a `comfy.controlnet.ControlNet`."""
    import comfy.controlnet

    for c in chain(control):
        if not isinstance(c, comfy.controlnet.ControlNet):
            raise ConfigError(f"MultiDiffusion (mdtools) crops ControlNets per view; {type(c).__name__} is not a "
                              "ComfyUI ControlNet (T2I-Adapters and third-party control objects are not supported "
                              "per view): use a ControlNet (Load ControlNet Model + Apply ControlNet) or remove it")


def defer_controls(conds: list) -> list:
    """`conds` (one list of cond dicts per cond/uncond) with each ControlNet replaced by one
    DeferredControl per distinct control object (ComfyUI batches conds whose controls are the
    same object, so the stand-ins keep that identity)."""
    proxies: dict[int, DeferredControl] = {}

    def swap(d: dict) -> dict:
        c = d.get("control")
        if c is None or isinstance(c, DeferredControl):
            return d
        if id(c) not in proxies:
            check_controls(c)
            proxies[id(c)] = DeferredControl(c)
        return {**d, "control": proxies[id(c)]}

    return [None if cond is None else [swap(d) for d in cond] for cond in conds]


def calc_cond_batch_wrapper(executor: Callable, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                            model_options: dict, *args: Any, **kwargs: Any) -> Any:
    """WrappersMP.CALC_COND_BATCH wrapper of the patched clone (see the module docstring)."""
    return executor(model, defer_controls(conds), x_in, timestep, model_options, *args, **kwargs)


# ---------------------------------------------------------------- hints
def crop_scaled(t: torch.Tensor, vs: ViewSet, start: int, end: int, factor: int) -> torch.Tensor:
    """Crops of entries [start, end) of `vs` from `t` (B, C, H * factor, W * factor), a tensor
    `factor` times finer than the latent canvas (H, W): ((end - start) * B, C, h * factor,
    w * factor), view-major, at the positions of each view's latent crop (wrapped rows and
    columns included; padding reads zero), in `t`'s memory layout (channels-last stays
    channels-last). factor 1 is `MultiDiffusion.gather`."""
    if factor == 1:
        return MultiDiffusion.gather(t, vs, start, end)
    H, W = vs.canvas
    h, w = vs.size
    if tuple(t.shape[-2:]) != (H * factor, W * factor):
        raise ValueError(f"tensor of spatial size {tuple(t.shape[-2:])} is not {factor} x the canvas {(H, W)}")
    idx = vs.index[start:end].reshape(-1, h, w).to(t.device)
    valid = idx < H * W
    rows = torch.where(valid, idx // W, -1).amax(dim=2)  # (k, h): the canvas row of each view row, -1 = padding
    cols = torch.where(valid, idx % W, -1).amax(dim=1)  # (k, w)
    off = torch.arange(factor, device=t.device)
    crops = []
    for r, c in zip(rows, cols):
        rr = (r[:, None] * factor + off).reshape(-1)
        cc = (c[:, None] * factor + off).reshape(-1)
        rr = torch.where(r.repeat_interleave(factor) < 0, -1, rr)
        cc = torch.where(c.repeat_interleave(factor) < 0, -1, cc)
        crop = t.index_select(2, rr.clamp(min=0)).index_select(3, cc.clamp(min=0))
        if bool((rr < 0).any() or (cc < 0).any()):
            crop = crop * ((rr >= 0)[:, None] & (cc >= 0)[None, :]).to(crop.dtype)
        crops.append(crop)
    out = torch.cat(crops)
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        # keep the source's layout: ComfyUI's hints are channels-last (IMAGE.movedim(-1, 1)), and
        # convolutions round differently per layout, so a one-view crop then equals the whole hint
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _dtype(control: Any) -> torch.dtype:
    manual = getattr(control, "manual_cast_dtype", None)
    return manual if manual is not None else control.control_model.dtype


def full_hint(control: Any, canvas: tuple[int, int], batch: int, batched_number: int,
              device: torch.device) -> torch.Tensor:
    """The hint of `control` for the whole (H, W) latent canvas and a batch of `batch`, as
    ComfyUI's `ControlNet.get_control` builds it for a whole-canvas call, kept in (and taken
    from) the control's own `cond_hint` slot."""
    import comfy.controlnet
    import comfy.model_management
    import comfy.utils

    H, W = canvas
    f = control.compression_ratio
    hint = control.cond_hint
    if hint is None or tuple(hint.shape[-2:]) != (H * f, W * f):
        ratio = f
        if control.vae is not None:
            ratio *= control.vae.spacial_compression_encode()
        elif control.latent_format is not None:
            raise ConfigError("this ControlNet needs a VAE (a latent-space ControlNet): connect the vae input of "
                              "the Apply ControlNet node")
        hint = comfy.utils.common_upscale(control.cond_hint_original, W * ratio, H * ratio, control.upscale_algorithm,
                                          "center")
        hint = control.preprocess_image(hint)
        if control.vae is not None:
            loaded = comfy.model_management.loaded_models(only_currently_used=True)
            hint = control.vae.encode(hint.movedim(1, -1))
            comfy.model_management.load_models_gpu(loaded)
        if control.latent_format is not None:
            hint = control.latent_format.process_in(hint)
        if len(control.extra_concat_orig) > 0:
            extra = []
            for c in control.extra_concat_orig:
                c = comfy.utils.common_upscale(c.to(hint.device), hint.shape[-1], hint.shape[-2],
                                               control.upscale_algorithm, "center")
                if c.ndim < hint.ndim:
                    c = comfy.utils.repeat_to_batch_size(c.unsqueeze(2), hint.shape[2], dim=2)
                extra.append(comfy.utils.repeat_to_batch_size(c, hint.shape[0]))
            hint = torch.cat([hint, *extra], dim=1)
        hint = hint.to(device=device, dtype=_dtype(control))
    if hint.shape[0] != batch:
        hint = comfy.controlnet.broadcast_image_to(hint, batch, batched_number)
    control.cond_hint = hint
    return hint


def evaluate(pending: PendingControl, crops: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
             transformer_options: dict, vs: ViewSet, start: int, end: int, batch: int) -> Any:
    """The residuals of the ControlNet chain for the crops of entries [start, end) of `vs`
    (view-major, `batch` canvas items per view): every ControlNet sees its own crop of its
    full-canvas hint; None where the chain is outside its timestep range."""
    members = chain(pending.control)
    fulls = [full_hint(c, vs.canvas, batch, pending.batched_number, crops.device) for c in members]
    try:
        for c, full in zip(members, fulls):
            # a hint of batch 1 broadcasts over the batch (as in ComfyUI); for several views it is
            # expanded so that each view's crop lines up with its own view-major block of the crops
            whole = full.expand(batch, *full.shape[1:]) if full.shape[0] == 1 and end - start > 1 else full
            c.cond_hint = crop_scaled(whole, vs, start, end, c.compression_ratio)
        return pending.control.get_control(crops, t, cond, batched_number, transformer_options)
    finally:
        for c, full in zip(members, fulls):
            c.cond_hint = full  # the whole-canvas hint stays cached where ComfyUI keeps it
