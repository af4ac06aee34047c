"""ControlNet per view: resolve and check the call's ControlNet(s), and run them on each view's own crop.

`prepare_control(...)` turns the call's `controlnet` / `control_image` / scales into a `ViewControl`
(or None), checking everything before any model call. The adapter (mdtools.models.denoisers) calls
`ViewControl.unet_call` for each batch of views: the control image (canvas pixel size) is cropped to
each view (pixel box = latent box x the VAE scale factor, modulo the canvas on wrapped axes), the
ControlNet runs on the view's latent crop with that crop, and its residuals go into that view's UNet
call, exactly as diffusers' StableDiffusion(XL)ControlNet(Img2Img)Pipeline does for one image:
control duplicated for CFG unless guess mode (then the ControlNet sees the conditional half and the
unconditional half gets zeros), `controlnet_keep` over the loop's (img2img-truncated) timesteps,
guess-mode logspace scales and `global_pool_conditions` inside the diffusers model. SD3 ControlNets take
the VAE-encoded control image (latent-space control): it is encoded once per stage canvas and each view
gets its latent box (`ViewControl.transformer_call`). FLUX ControlNets are refused (not done).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..plan import View

#: ControlNet classes mdtools runs per view, by the model kinds they condition
CONTROLNET_KINDS: dict[str, tuple[str, ...]] = {
    "ControlNetModel": ("sd", "sdxl"),
    "ControlNetUnionModel": ("sdxl",),
    "SD3ControlNetModel": ("sd3",),
}
#: ControlNets that take the VAE-encoded control image (latent-space control, cropped in latent space)
LATENT_CONTROLNETS = ("SD3ControlNetModel",)
#: recognised and refused with the reason (not done yet)
UNSUPPORTED_CONTROLNETS = ("FluxControlNetModel", "FluxMultiControlNetModel")
#: relative difference of aspect ratio under which a control image is resized to the canvas (as diffusers does)
ASPECT_TOLERANCE = 0.01


@dataclass
class ControlUnit:
    """One ControlNet of the call with its control image(s) at canvas size, scales and guidance window.

    A plain ControlNetModel has one image; a ControlNetUnionModel one image per `modes` entry, each
    with its own scale, start and end (as diffusers' Union pipelines)."""

    net: Any
    images: list[torch.Tensor]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    modes: list[int] | None = None
    from_multi: bool = False
    #: SD3: the control image is VAE-encoded (per stage canvas size) and cropped in latent space
    latent: bool = False
    _resized: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def keep(self, i: int, n: int) -> list[float]:
        """diffusers' controlnet_keep at step i of n: 1 inside [start, end] of the loop, else 0."""
        return [1.0 - float(i / n < s or (i + 1) / n > e) for s, e in zip(self.starts, self.ends)]

    def at(self, size: tuple[int, int], encode: Any = None) -> list[torch.Tensor]:
        """The control images at a stage's canvas size in pixels (resized once for a low-res stage);
        for a latent ControlNet their latents (`encode`), computed once per size."""
        if size not in self._resized:
            ims = [im if tuple(im.shape[-2:]) == size else
                   F.interpolate(im.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(im.dtype)
                   for im in self.images]
            self._resized[size] = [encode(im, self.net) for im in ims] if self.latent else ims
        return self._resized[size]


def crop_views(image: torch.Tensor, views: Sequence[View], scale: int, batch: int, *, latent: bool = False) -> torch.Tensor:
    """(B or 1, C, H, W) control image -> (len(views) * batch, C, h * scale, w * scale) crops, view-major
    (`latent`: a latent control, cropped at the views' latent boxes); rows and columns are taken modulo
    the image (views crossing a wrapped edge)."""
    scale = 1 if latent else scale
    H, W = image.shape[-2:]
    if image.shape[0] == 1 and batch > 1:
        image = image.repeat_interleave(batch, dim=0)
    out = []
    for v in views:
        top, left, h, w = v.pixel_box(scale)
        rows = torch.arange(top, top + h, device=image.device) % H
        cols = torch.arange(left, left + w, device=image.device) % W
        if top + h <= H and left + w <= W:
            out.append(image[:, :, top:top + h, left:left + w])
        else:
            out.append(image.index_select(2, rows).index_select(3, cols))
    return torch.cat(out)


class ViewControl:
    """The call's ControlNets, bound to the loop (`bind(ctx)`): runs them per batch of views.

    Counts ControlNet evaluations (samples through one ControlNet), calls and seconds, and the
    FLOPs of one ControlNet and one UNet evaluation (counted once), read into the run's Cost."""

    def __init__(self, units: list[ControlUnit], *, guess_mode: bool, scale: int, names: list[str], vae: Any = None):
        self.units = units
        self.vae = vae
        self.guess_mode = guess_mode
        self.scale = scale
        self.names = names
        self.ctx: Any = None
        self.calls = 0
        self.evaluations = 0
        self.seconds = 0.0
        self.encodes = 0  # VAE encodes of latent control images (SD3)
        self.flops: dict[str, float] = {}

    def bind(self, ctx: Any) -> None:
        """The loop whose stage (plan, step, timesteps) decides the canvas size and the keep schedule."""
        self.ctx = ctx

    def describe(self) -> dict[str, Any]:
        u = self.units
        return {"controlnets": self.names, "guess_mode": self.guess_mode,
                "conditioning_scale": [x.scales if x.modes else x.scales[0] for x in u],
                "guidance_start": [x.starts if x.modes else x.starts[0] for x in u],
                "guidance_end": [x.ends if x.modes else x.ends[0] for x in u],
                "control_mode": [x.modes for x in u] if any(x.modes for x in u) else None,
                "vae_encodes": self.encodes}

    def _step(self) -> tuple[int, int, tuple[int, int]]:
        stage = self.ctx.stage
        plan = stage.plan
        return stage.step, len(stage.timesteps), (plan.latent_height * self.scale, plan.latent_width * self.scale)

    def encode(self, image: torch.Tensor, net: Any) -> torch.Tensor:
        """[0, 1] control image -> the latent control of an SD3 ControlNet, as diffusers' SD3 ControlNet
        pipeline (shift factor not applied for InstantX nets, `force_zeros_for_pooled_projection`) but with the
        posterior mode instead of a sample (a sample would differ between views' CFG halves and runs)."""
        vae = self.vae
        lat = vae.encode((2 * image - 1).to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        shift = 0.0 if net.config.force_zeros_for_pooled_projection else (vae.config.shift_factor or 0.0)
        self.encodes += 1
        return (lat - shift) * vae.config.scaling_factor

    def transformer_call(self, transformer: Any, views: Sequence[View], cfg_half: int, **kw: Any) -> torch.Tensor:
        """SD3: the view batch's transformer output with the summed block samples of its ControlNets."""
        i, n, size = self._step()
        x = kw["hidden_states"]
        batch = x.shape[0] // (len(views) * (1 if cfg_half < 0 else 2))
        blocks: list[torch.Tensor] | None = None
        for unit in self.units:
            scale = unit.scales[0] * unit.keep(i, n)[0]
            if scale == 0.0:
                continue
            crop = crop_views(unit.at(size, self.encode)[0], views, self.scale, batch, latent=True)
            crop = crop.to(device=x.device, dtype=unit.net.dtype)
            if cfg_half >= 0:
                crop = torch.cat([crop, crop])
            cfg = unit.net.config
            pooled = torch.zeros_like(kw["pooled_projections"]) if cfg.force_zeros_for_pooled_projection \
                else kw["pooled_projections"]
            ehs = kw["encoder_hidden_states"] if cfg.joint_attention_dim is not None else None
            out = self._timed(unit.net, x.shape[0], hidden_states=x, timestep=kw["timestep"], encoder_hidden_states=ehs,
                              pooled_projections=pooled, controlnet_cond=crop, conditioning_scale=scale,
                              return_dict=False)[0]
            blocks = list(out) if blocks is None else [a + b for a, b in zip(blocks, out)]
        return transformer(**kw, block_controlnet_hidden_states=blocks, return_dict=False)[0]

    def _timed(self, net: Any, rows: int, *args: Any, **kw: Any) -> Any:
        """One ControlNet forward, timed and counted (its FLOPs once)."""
        t0 = time.perf_counter()
        if "controlnet_evaluation" not in self.flops:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                out = net(*args, **kw)
            self.flops["controlnet_evaluation"] = counter.get_total_flops() / rows
        else:
            out = net(*args, **kw)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.evaluations += rows
        return out

    def residuals(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], embeds: torch.Tensor,
                  added: dict | None, cfg_half: int) -> dict[str, Any]:
        """UNet keyword arguments with the summed residuals of every active ControlNet ({} when none is)."""
        i, n, size = self._step()
        halves = 1 if cfg_half < 0 else 2
        batch = x.shape[0] // (len(views) * halves)
        guess = self.guess_mode and cfg_half >= 0
        if guess:  # the ControlNet sees the conditional half only
            x, embeds = x[cfg_half:], embeds[cfg_half:]
            added = None if added is None else {k: v[cfg_half:] for k, v in added.items()}
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for unit in self.units:
            scales = [s * k for s, k in zip(unit.scales, unit.keep(i, n))]
            if all(s == 0.0 for s in scales):
                continue  # outside its guidance window: residuals would be zeros (as MultiControlNet skips)
            crops = [crop_views(im, views, self.scale, batch).to(device=x.device, dtype=unit.net.dtype)
                     for im in unit.at(size)]
            if halves == 2 and not guess:
                crops = [torch.cat([c, c]) for c in crops]
            d, m = self._run(unit, x, t, embeds, added, crops, scales)
            down = list(d) if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        if guess:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _run(self, unit: ControlUnit, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict | None,
             crops: list[torch.Tensor], scales: list[float]) -> tuple[Any, torch.Tensor]:
        kw: dict[str, Any] = dict(encoder_hidden_states=embeds, guess_mode=self.guess_mode, return_dict=False)
        if added is not None:
            kw["added_cond_kwargs"] = added
        if unit.modes is None:
            kw.update(controlnet_cond=crops[0], conditioning_scale=scales[0])
        else:
            num = unit.net.config.num_control_type
            onehot = torch.zeros(num).scatter_(0, torch.tensor(unit.modes), 1)
            kw.update(controlnet_cond=crops, control_type=onehot.reshape(1, -1).to(x.device, embeds.dtype).repeat(x.shape[0], 1),
                      control_type_idx=unit.modes, conditioning_scale=scales, from_multi=unit.from_multi)
        out = self._timed(unit.net, x.shape[0], x, t, **kw)
        return out[0], out[1]

    def unet_call(self, unet: Any, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cfg_half: int,
                  **kw: Any) -> torch.Tensor:
        """The view batch's UNet output with its ControlNet residuals (kw: the adapter's UNet arguments)."""
        extra = self.residuals(x, t, views, kw["encoder_hidden_states"], kw.get("added_cond_kwargs"), cfg_half)
        if "unet_evaluation" not in self.flops and extra:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                out = unet(x, t, **kw, **extra, return_dict=False)[0]
            self.flops["unet_evaluation"] = counter.get_total_flops() / x.shape[0]
            return out
        return unet(x, t, **kw, **extra, return_dict=False)[0]


# ---- resolving and checking the call's ControlNet(s) ------------------------------------------------

def load_controlnet(name: str | os.PathLike, *, device: Any = None, dtype: Any = None) -> Any:
    """A ControlNet from an embedded name (mdtools.toy.EMBEDDED_CONTROLNETS) or a diffusers folder
    (config.json + diffusion_pytorch_model.safetensors), loaded from safetensors."""
    from ..toy import EMBEDDED_CONTROLNETS

    folder = EMBEDDED_CONTROLNETS.get(str(name), Path(name))
    if not (Path(folder) / "config.json").is_file():
        if str(name) in EMBEDDED_CONTROLNETS:
            raise ConfigError(f"controlnet={name!r}: the embedded ControlNet is not installed (no {folder}/config.json)")
        raise ConfigError(f"controlnet={str(name)!r} is neither an embedded name ({sorted(EMBEDDED_CONTROLNETS)}) "
                          "nor a diffusers ControlNet folder with config.json")
    if not (Path(folder) / "diffusion_pytorch_model.safetensors").is_file():
        raise ConfigError(f"controlnet={str(name)!r}: {folder} has no diffusion_pytorch_model.safetensors "
                          "(weights load from safetensors only)")
    cls_name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name", "ControlNetModel")
    if cls_name not in CONTROLNET_KINDS:
        raise ConfigError(f"controlnet={str(name)!r} is a {cls_name}; mdtools runs {sorted(CONTROLNET_KINDS)} per view")
    import diffusers

    net = getattr(diffusers, cls_name).from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
    return net.to(device=device).eval()


def _nets(controlnet: Any) -> tuple[list[Any], bool]:
    """(list of single ControlNets, whether they come from a Multi...Union model)."""
    cls = type(controlnet).__name__
    if cls in ("MultiControlNetModel", "MultiControlNetUnionModel", "SD3MultiControlNetModel"):
        return list(controlnet.nets), cls == "MultiControlNetUnionModel"
    if isinstance(controlnet, (list, tuple)):
        return list(controlnet), False
    return [controlnet], False


def check_family(net: Any, kind: str, unet: Any, vae_scale: int | None = None) -> None:
    """A ControlNet must condition this model: its class, and its config against the denoiser's (and, for a
    pixel-space control image, its conditioning embedding must downsample by the VAE's factor)."""
    cls = type(net).__name__
    if cls in UNSUPPORTED_CONTROLNETS:
        raise ConfigError(f"controlnet: {cls} (FLUX, latent-space control of packed tokens) is not supported per view "
                          "yet; use an SD 1.x/2.x / SDXL ControlNetModel, an SDXL ControlNetUnionModel or an "
                          "SD3ControlNetModel")
    if cls not in CONTROLNET_KINDS:
        raise ConfigError(f"controlnet: a {cls} is not a ControlNet mdtools runs; give a diffusers ControlNetModel, "
                          "ControlNetUnionModel, SD3ControlNetModel, a Multi... of them, a list, a folder or an "
                          "embedded name")
    if kind not in CONTROLNET_KINDS[cls]:
        raise ConfigError(f"controlnet: a {cls} conditions {'/'.join(CONTROLNET_KINDS[cls])} models, this one is {kind!r}")
    cn, uc = net.config, unet.config
    if cls in LATENT_CONTROLNETS:
        if getattr(net, "pos_embed", None) is None:
            raise ConfigError("controlnet: this SD3ControlNetModel has no position embedding of its own "
                              "(use_pos_embed=False, SD3.5 8b); wrap it in diffusers' StableDiffusion3ControlNetPipeline "
                              "first, which gives it the transformer's, then use MultiDiffusionPipeline.from_pipe")
        pairs = [("in_channels", cn.in_channels, uc.in_channels), ("patch_size", cn.patch_size, uc.patch_size),
                 ("pooled_projection_dim", cn.pooled_projection_dim, uc.pooled_projection_dim),
                 ("inner width (heads x head dim)", cn.num_attention_heads * cn.attention_head_dim,
                  uc.num_attention_heads * uc.attention_head_dim)]
        if cn.joint_attention_dim is not None:
            pairs.append(("joint_attention_dim", cn.joint_attention_dim, uc.joint_attention_dim))
    else:
        pairs = [("cross_attention_dim", cn.cross_attention_dim, uc.cross_attention_dim),
                 ("in_channels", cn.in_channels, uc.in_channels),
                 ("block_out_channels", list(cn.block_out_channels), list(uc.block_out_channels)),
                 ("addition_embed_type", cn.addition_embed_type, uc.addition_embed_type)]
        if vae_scale is not None:  # the conditioning embedding has one stride-2 convolution per step after the first
            down = 2 ** (len(cn.conditioning_embedding_out_channels) - 1)
            pairs.append(("control image downsampling (2^(len(conditioning_embedding_out_channels) - 1))", down,
                          vae_scale))
    for key, a, b in pairs:
        if a != b:
            raise ConfigError(f"controlnet is for another model family: its {key} is {a}, the model's is {b} "
                              f"(give a ControlNet trained for this {kind} model)")


def _per_net(field_name: str, value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{field_name} has {len(value)} entries for {n} ControlNet(s) / control mode(s); give "
                              "one per ControlNet (per control mode for a Union model) or a single value")
        return list(value)
    return [value] * n


def _num(field_name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{field_name} must be a number (e.g. 1.0), got {v!r}")
    return float(v)


def control_tensor(image: Any, height: int, width: int, scale: int, *, field_name: str = "control_image") -> torch.Tensor:
    """A control image (PIL, numpy HWC/NHWC in [0,1], or a (B,3,H,W)/(3,H,W) tensor in [0,1]) -> (B,3,H,W)
    float in [0,1] at the canvas size. An image of the canvas's aspect ratio (within 1%) is resized with
    diffusers' VaeImageProcessor (as the diffusers pipelines do); any other size is an error."""
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "F"):
            raise ConfigError(f"{field_name} has PIL mode {image.mode!r} (16/32-bit); convert it to 8-bit RGB first")
        h, w = image.height, image.width
    elif isinstance(image, np.ndarray):
        if image.ndim not in (3, 4) or image.shape[-1] not in (1, 3):
            raise ConfigError(f"{field_name} as a numpy array must be (H, W, 3) or (B, H, W, 3) in [0, 1], "
                              f"got shape {image.shape}")
        h, w = image.shape[-3:-1]
    elif isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ConfigError(f"{field_name} as a tensor must be (3, H, W) or (B, 3, H, W) in [0, 1], "
                              f"got shape {tuple(image.shape)}")
        if image.numel() and (float(image.min()) < 0 or float(image.max()) > 1):
            raise ConfigError(f"{field_name} values must be in [0, 1], got [{float(image.min()):.3g}, "
                              f"{float(image.max()):.3g}]")
        h, w = image.shape[-2:]
    else:
        raise ConfigError(f"{field_name} must be a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    if (h, w) != (height, width) and abs((h / w) / (height / width) - 1) > ASPECT_TOLERANCE:
        raise ConfigError(f"{field_name} is {w}x{h} (width x height) but the canvas is {width}x{height}; give it at "
                          f"the canvas size (or the canvas's aspect ratio, which is resized)")
    proc = VaeImageProcessor(vae_scale_factor=scale, do_convert_rgb=True, do_normalize=False)
    if isinstance(image, torch.Tensor) and (h, w) == (height, width):
        return (image if image.ndim == 4 else image[None]).float()
    return proc.preprocess(image, height=height, width=width).float()


def prepare_control(md: Any, meth: Any, call: Any, *, controlnet: Any, control_image: Any,
                    controlnet_conditioning_scale: Any = 1.0, control_guidance_start: Any = 0.0,
                    control_guidance_end: Any = 1.0, guess_mode: bool = False,
                    control_mode: Any = None) -> ViewControl | None:
    """Resolve and check the call's ControlNet inputs before any model call; None without a ControlNet.

    `controlnet`: None (the wrapped pipeline's own `controlnet`, if any), a diffusers ControlNetModel /
    ControlNetUnionModel / MultiControlNetModel / MultiControlNetUnionModel, a list of them, an embedded
    name or a folder. `control_image`: one image per ControlNet (a list for several; for a Union model one
    per `control_mode` entry)."""
    given = controlnet is not None
    if controlnet is None:
        controlnet = getattr(md.pipe, "controlnet", None)
    if controlnet is None:
        if control_image is not None:
            raise ConfigError("control_image needs a ControlNet: pass controlnet=... (a diffusers ControlNetModel, a "
                              "folder or an embedded name such as 'toy-scenes-tile') or wrap a ControlNet pipeline")
        return None
    if control_image is None:
        if given:
            raise ConfigError("controlnet needs control_image: the control image at the canvas size "
                              f"({call.width}x{call.height}), e.g. control_image=PIL.Image")
        return None  # a ControlNet pipeline wrapped for plain generation: no control image, no ControlNet
    if meth.no_controlnet:
        raise ConfigError(f"method {meth.name!r} cannot run a ControlNet: {meth.no_controlnet}")
    if md.family.kind not in ("sd", "sdxl", "sd3"):
        raise ConfigError(f"controlnet: per-view ControlNet runs on SD 1.x/2.x, SDXL and SD3 models; {md.family.kind!r} "
                          "ControlNets are not supported yet")
    if not isinstance(guess_mode, bool):
        raise ConfigError(f"guess_mode must be true or false, got {guess_mode!r}")
    if guess_mode and md.family.kind == "sd3":
        raise ConfigError("guess_mode applies to SD / SDXL ControlNets (diffusers' SD3 ControlNet pipeline has none); "
                          "use guess_mode=False")
    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = load_controlnet(controlnet, device=md.device, dtype=md.dtype)
    elif isinstance(controlnet, (list, tuple)):
        controlnet = [load_controlnet(c, device=md.device, dtype=md.dtype) if isinstance(c, (str, os.PathLike)) else c
                      for c in controlnet]
    nets, from_multi = _nets(controlnet)
    for net in nets:
        check_family(net, md.family.kind, md.unet, md.vae_scale_factor)
    n = len(nets)
    images = control_image if isinstance(control_image, (list, tuple)) and n > 1 else [control_image]
    if n > 1 and not isinstance(control_image, (list, tuple)):
        raise ConfigError(f"control_image: {n} ControlNets need a list of {n} control images")
    if len(images) != n:
        raise ConfigError(f"control_image has {len(images)} images for {n} ControlNets; give one per ControlNet")
    modes = _per_net("control_mode", control_mode, n) if n > 1 else [control_mode]
    scales = _per_net("controlnet_conditioning_scale", controlnet_conditioning_scale, n) if n > 1 else [controlnet_conditioning_scale]
    starts = _per_net("control_guidance_start", control_guidance_start, n) if n > 1 else [control_guidance_start]
    ends = _per_net("control_guidance_end", control_guidance_end, n) if n > 1 else [control_guidance_end]
    units = [_unit(net, img, mode, s, a, b, from_multi, call, md.vae_scale_factor)
             for net, img, mode, s, a, b in zip(nets, images, modes, scales, starts, ends)]
    guess = guess_mode or bool(getattr(nets[0].config, "global_pool_conditions", False))
    names = [str(getattr(net.config, "_name_or_path", "") or type(net).__name__) for net in nets]
    return ViewControl(units, guess_mode=guess, scale=md.vae_scale_factor, names=names, vae=md.vae)


def _unit(net: Any, image: Any, mode: Any, scale: Any, start: Any, end: Any, from_multi: bool, call: Any,
          vae_scale: int) -> ControlUnit:
    union = type(net).__name__ == "ControlNetUnionModel"
    if union:
        if mode is None:
            raise ConfigError("control_mode is required with a ControlNetUnionModel: the control type id(s), "
                              "e.g. control_mode=6 (tile) or [6, 1]")
        modes = list(mode) if isinstance(mode, (list, tuple)) else [mode]
        num = net.config.num_control_type
        bad = [m for m in modes if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < num]
        if bad:
            raise ConfigError(f"control_mode {bad} is out of range: this Union ControlNet has {num} control types "
                              f"(ids 0..{num - 1}, e.g. 6 = tile)")
        imgs = list(image) if isinstance(image, (list, tuple)) else [image]
        if len(imgs) != len(modes):
            raise ConfigError(f"control_image has {len(imgs)} image(s) for {len(modes)} control_mode entries; "
                              "give one control image per control mode")
    else:
        if mode is not None:
            raise ConfigError("control_mode applies to a ControlNetUnionModel only; drop it for a ControlNetModel")
        modes, imgs = None, [image]
    k = len(imgs)  # a Union model takes one value per control mode, a plain ControlNet one (or a list of one)
    sc = _per_net("controlnet_conditioning_scale", scale, k)
    st = _per_net("control_guidance_start", start, k)
    en = _per_net("control_guidance_end", end, k)
    sc = [_num("controlnet_conditioning_scale", v) for v in sc]
    st = [_num("control_guidance_start", v) for v in st]
    en = [_num("control_guidance_end", v) for v in en]
    for a, b in zip(st, en):
        if not 0.0 <= a < b <= 1.0:
            raise ConfigError(f"control_guidance_start={a} and control_guidance_end={b}: need 0 <= start < end <= 1 "
                              "(e.g. 0.0 and 1.0)")
    tensors = [control_tensor(im, call.height, call.width, vae_scale) for im in imgs]
    batches = {t.shape[0] for t in tensors}
    if any(b not in (1, call.batch) for b in batches):
        raise ConfigError(f"control_image has a batch of {sorted(batches)}; give 1 image or one per prompt ({call.batch})")
    return ControlUnit(net, tensors, sc, st, en, modes, from_multi, latent=type(net).__name__ in LATENT_CONTROLNETS)


__all__ = ["CONTROLNET_KINDS", "LATENT_CONTROLNETS", "UNSUPPORTED_CONTROLNETS", "ControlUnit", "ViewControl", "check_family", "control_tensor",
           "crop_views", "load_controlnet", "prepare_control"]
