"""Exact tiled VAE decode / encode on ComfyUI's VAE (the VAE Decode / Encode (mdtools, exact tiled) nodes).

ComfyUI's `VAE.first_stage_model` is the original LDM autoencoder layout; `mdtools.vae.
tiled_decode` / `tiled_encode` run it tile by tile with GroupNorm statistics and mid-block
attention synchronised over the whole canvas (docs/vae.md), so the result equals the
one-piece `VAEDecode` / `VAEEncode` to float noise (given a halo that covers the decoder's
reach), in the memory of one tile. ComfyUI's own VAEDecodeTiled normalises each tile with
its own statistics: the colour / contrast shift between tiles of ComfyUI issues #163 / #500.

Conventions mirrored from ComfyUI's `VAE.decode` / `VAE.encode`: the model is loaded with
`model_management.load_models_gpu([vae.patcher])`, latents go in as `vae.vae_dtype` on
`vae.device`, the output is `vae.process_output(x)` moved to `vae.output_device` as
(B, H, W, C); pixels are cropped with `vae.vae_encode_crop_pixels` and mapped with
`vae.process_input` before encoding. Only 2-D image VAEs are supported (3-D video VAEs
are refused by mdtools.vae with a ConfigError).
"""

from __future__ import annotations

from typing import Any

import torch

from ..choices import PARK_CHOICES, SYNC_STRATEGIES
from ..errors import ConfigError, check_choice
from ..plan import CIRCULAR_CHOICES
from .record import vae_phase


def _check_vae(vae: Any) -> Any:
    fsm = getattr(vae, "first_stage_model", None)
    if fsm is None:
        raise ConfigError(f"vae must be a ComfyUI VAE (with .first_stage_model), got {type(vae).__name__}")
    return fsm


def _load(vae: Any) -> tuple[torch.device, torch.dtype]:
    import comfy.model_management as mm

    if getattr(vae, "patcher", None) is not None:
        mm.load_models_gpu([vae.patcher])
    fsm = vae.first_stage_model
    p = next(fsm.parameters())
    return torch.device(getattr(vae, "device", p.device)), getattr(vae, "vae_dtype", p.dtype)


def _options(tile: int, overlap: int, sync_strategy: str, circular: str, halo: int, park: str = "cpu"
             ) -> dict[str, Any]:
    check_choice("sync_strategy", sync_strategy, SYNC_STRATEGIES)
    check_choice("circular", circular, CIRCULAR_CHOICES)
    check_choice("park", park, PARK_CHOICES)
    opts: dict[str, Any] = {"tile": tile, "overlap": overlap if overlap >= 0 else None,  # -1: mdtools' default
                            "sync_strategy": sync_strategy, "circular": False if circular == "off" else circular,
                            "park": park}
    if halo >= 0:  # -1: mdtools' default halo
        opts["halo"] = halo
    return opts


def decode(vae: Any, samples: dict, *, tile: int = 512, overlap: int = -1, sync_strategy: str = "auto",
           circular: str = "off", halo: int = -1, park: str = "cpu") -> tuple[torch.Tensor, dict[str, Any]]:
    """LATENT -> IMAGE (B, H, W, C) with the exact tiled decode; also the decode's report."""
    from ..vae import tiled_decode

    fsm = _check_vae(vae)
    if not isinstance(samples, dict) or not isinstance(samples.get("samples"), torch.Tensor):
        raise ConfigError("samples must be a ComfyUI LATENT ({'samples': (B, C, h, w) tensor})")
    z = samples["samples"]
    if z.ndim != 4:
        raise ConfigError(f"samples must be image latents (B, C, h, w); got shape {tuple(z.shape)} (video latents are "
                          f"not supported by the exact tiled decode)")
    opts = _options(tile, overlap, sync_strategy, circular, halo, park)
    report: dict[str, Any] = {}
    with vae_phase(vae, "vae_decode"), torch.no_grad():
        device, dtype = _load(vae)
        img = tiled_decode(fsm, z.to(device=device, dtype=dtype), **opts, report=report)
        out = vae.process_output(img.float()) if hasattr(vae, "process_output") else ((img.float() + 1) / 2).clamp(0, 1)
    return out.to(getattr(vae, "output_device", "cpu")).movedim(1, -1), report


def encode(vae: Any, pixels: torch.Tensor, *, tile: int = 512, overlap: int = -1, sync_strategy: str = "auto",
           circular: str = "off", halo: int = -1, park: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """IMAGE -> LATENT ({"samples"}) with the exact tiled encode (posterior mode, as VAEEncode)."""
    from ..vae import tiled_encode
    from .outputs import check_image

    fsm = _check_vae(vae)
    check_image(pixels, "pixels")
    if hasattr(vae, "vae_encode_crop_pixels"):  # ComfyUI crops to a multiple of the VAE scale, centred
        pixels = vae.vae_encode_crop_pixels(pixels)
    x = pixels[..., :3].movedim(-1, 1)
    x = vae.process_input(x) if hasattr(vae, "process_input") else x * 2 - 1
    opts = _options(tile, overlap, sync_strategy, circular, halo, park)
    report: dict[str, Any] = {}
    with vae_phase(vae, "vae_encode"), torch.no_grad():
        device, dtype = _load(vae)
        lat = tiled_encode(fsm, x.to(device=device, dtype=dtype), **opts, report=report)
    return {"samples": lat.float().to(getattr(vae, "output_device", "cpu"))}, report


def _inputs(io_name: str, io_type: str) -> dict[str, Any]:
    return {"required": {
        io_name: (io_type,),
        "vae": ("VAE",),
        "tile_size": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 8,
                              "tooltip": "largest tile body in pixels (multiple of 8)"}),
        "overlap": ("INT", {"default": -1, "min": -1, "max": 4096, "step": 8,
                            "tooltip": "blend overlap in pixels; -1 = mdtools' default (0: exact tiles agree)"}),
        "sync_strategy": (list(SYNC_STRATEGIES), {"default": "auto", "tooltip":
                          "park: one pass, every waiting tile parked (see park); recompute: one tile in memory, "
                          "more compute; auto: park while it fits. Each is exact with its default halo."}),
    }, "optional": {
        "circular": (list(CIRCULAR_CHOICES), {"default": "off"}),
        "halo": ("INT", {"default": -1, "min": -1, "max": 4096, "step": 8,
                         "tooltip": "context around each tile in pixels; -1 = mdtools' default"}),
        "park": (list(PARK_CHOICES), {"default": "cpu", "tooltip":
                 "where tiles waiting for the canvas statistics are kept: cpu (RAM) or disk (files in "
                 "$MDTOOLS_PARK_DIR, else the system's temp dir: RAM holds one tile, for canvases whose parked "
                 "states do not fit in RAM)"}),
    }}


class VAEDecodeExactTiled:
    """LATENT + VAE -> IMAGE, tiled, equal to the one-piece VAEDecode to float noise."""

    DESCRIPTION = ("Tiled VAE decode with GroupNorm statistics and attention synchronised across tiles (mdtools.vae): "
                   "the result equals VAE Decode in one piece, without its memory, and without the tile seams and "
                   "colour shift of VAE Decode (Tiled).")
    CATEGORY = "mdtools"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _inputs("samples", "LATENT")

    def decode(self, samples: dict, vae: Any, tile_size: int, overlap: int, sync_strategy: str, circular: str = "off",
               halo: int = -1, park: str = "cpu") -> tuple[torch.Tensor]:
        img, _ = decode(vae, samples, tile=tile_size, overlap=overlap, sync_strategy=sync_strategy, circular=circular,
                        halo=halo, park=park)
        return (img,)


class VAEEncodeExactTiled:
    """IMAGE + VAE -> LATENT, tiled, equal to the one-piece VAEEncode to float noise."""

    DESCRIPTION = "Tiled VAE encode with GroupNorm statistics synchronised across tiles (mdtools.vae); equals VAE Encode."
    CATEGORY = "mdtools"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _inputs("pixels", "IMAGE")

    def encode(self, pixels: torch.Tensor, vae: Any, tile_size: int, overlap: int, sync_strategy: str,
               circular: str = "off", halo: int = -1, park: str = "cpu") -> tuple[dict]:
        lat, _ = encode(vae, pixels, tile=tile_size, overlap=overlap, sync_strategy=sync_strategy, circular=circular,
                        halo=halo, park=park)
        return (lat,)
