"""Layout readers: diffusers' AutoencoderKL and the LDM layout, read into layout-free block specs and steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import _act, _attention_steps, _AttnSpec, _final_steps, _is_plain_3x3, _plain, _resnet_steps, _ResnetSpec, _silu, _upsample_step
from .groupnorm import _check_group_norm
from .program import _Step

# ---- diffusers AutoencoderKL


def _diffusers_resnet(m: nn.Module) -> _ResnetSpec:
    if getattr(m, "upsample", None) is not None or getattr(m, "downsample", None) is not None \
            or getattr(m, "time_emb_proj", None) is not None:
        raise ConfigError("unsupported ResnetBlock2D (up/down-sampling or time embedding) in this VAE")
    return _ResnetSpec(_check_group_norm(m.norm1, "norm1"), m.conv1, _check_group_norm(m.norm2, "norm2"), m.conv2,
                       m.conv_shortcut, _act(m.nonlinearity), m.dropout, m.output_scale_factor)


def _diffusers_attention(a: nn.Module) -> _AttnSpec:
    if getattr(a, "spatial_norm", None) is not None or getattr(a, "norm_cross", None):
        raise ConfigError("unsupported attention block (spatial norm / cross-attention norm) in this VAE")
    heads = a.heads

    def proj(f: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(h: torch.Tensor) -> torch.Tensor:
            B, C = h.shape[:2]
            t = f(h.reshape(B, C, -1).transpose(1, 2))  # (B, N, heads * d)
            return t.view(B, -1, heads, t.shape[-1] // heads).transpose(1, 2)
        return run

    def out(o: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        B, C, H, W = shape
        o = o.transpose(1, 2).reshape(B, -1, heads * o.shape[-1])
        o = a.to_out[1](a.to_out[0](o))
        return o.transpose(-1, -2).reshape(B, C, H, W)

    norm = _check_group_norm(a.group_norm, "attention") if a.group_norm is not None else None
    return _AttnSpec(norm, heads, a.scale, proj(a.to_q), proj(a.to_k), proj(a.to_v), out, a.residual_connection,
                     a.rescale_output_factor)


def _diffusers_mid(mb: nn.Module) -> list[_Step]:
    steps = _resnet_steps(_diffusers_resnet(mb.resnets[0]))
    for attn, resnet in zip(mb.attentions, mb.resnets[1:]):
        if attn is not None:
            steps += _attention_steps(_diffusers_attention(attn))
        steps += _resnet_steps(_diffusers_resnet(resnet))
    return steps


def _diffusers_upsample(up: nn.Module) -> _Step:
    if (getattr(up, "use_conv_transpose", False) or getattr(up, "norm", None) is not None
            or not getattr(up, "interpolate", True) or not getattr(up, "use_conv", False)
            or getattr(up, "name", "conv") != "conv"):
        return _plain(up)
    return _upsample_step(up.conv)


def _diffusers_decoder_steps(vae: nn.Module) -> list[_Step]:
    """post_quant_conv + Decoder, as `AutoencoderKL.decode` runs them."""
    dec = vae.decoder
    steps = [_plain(vae.post_quant_conv)] if getattr(vae, "post_quant_conv", None) is not None else []
    steps.append(_plain(dec.conv_in))
    steps += _diffusers_mid(dec.mid_block)
    for block in dec.up_blocks:
        if getattr(block, "attentions", None):
            raise ConfigError(f"unsupported decoder block {type(block).__name__} (attention inside up blocks)")
        for resnet in block.resnets:
            steps += _resnet_steps(_diffusers_resnet(resnet))
        steps += [_diffusers_upsample(up) for up in block.upsamplers or []]
    return steps + _final_steps(_check_group_norm(dec.conv_norm_out, "conv_norm_out"), _act(dec.conv_act),
                                dec.conv_out)


def _diffusers_encoder_steps(vae: nn.Module) -> list[_Step]:
    """Encoder + quant_conv, as `AutoencoderKL.encode` runs them (posterior moments)."""
    enc = vae.encoder
    steps = [_plain(enc.conv_in)]
    for block in enc.down_blocks:
        if getattr(block, "attentions", None):
            raise ConfigError(f"unsupported encoder block {type(block).__name__} (attention inside down blocks)")
        for resnet in block.resnets:
            steps += _resnet_steps(_diffusers_resnet(resnet))
        steps += [_plain(down) for down in block.downsamplers or []]
    steps += _diffusers_mid(enc.mid_block)
    steps += _final_steps(_check_group_norm(enc.conv_norm_out, "conv_norm_out"), _act(enc.conv_act), enc.conv_out)
    if getattr(vae, "quant_conv", None) is not None:
        steps.append(_plain(vae.quant_conv))
    return steps


# ---- original LDM layout (CompVis latent-diffusion, Stability generative-models, ComfyUI)


def _ldm_resnet(m: nn.Module) -> _ResnetSpec:
    """ResnetBlock: norm1, conv1, norm2, conv2 and, when channels change, nin_shortcut
    (1x1) or conv_shortcut (3x3). Swish = SiLU. VAEs build it with temb_channels=0."""
    if getattr(m, "temb_proj", None) is not None:
        raise ConfigError("unsupported LDM ResnetBlock with a time embedding (temb_proj) in this VAE")
    shortcut = getattr(m, "nin_shortcut", None)
    if shortcut is None:
        shortcut = getattr(m, "conv_shortcut", None)
    return _ResnetSpec(_check_group_norm(m.norm1, "norm1"), m.conv1, _check_group_norm(m.norm2, "norm2"), m.conv2,
                       shortcut, _silu, getattr(m, "dropout", None), 1.0)


def _ldm_attention(a: nn.Module) -> _AttnSpec:
    """AttnBlock: one head over all C channels, q / k / v / proj_out 1x1 convs on
    norm(x), scale 1 / sqrt(C), out = x + proj_out(attention)."""
    if not all(isinstance(getattr(a, n, None), nn.Conv2d) for n in ("q", "k", "v", "proj_out")):
        raise ConfigError(f"unsupported LDM attention block {type(a).__name__}: expected AttnBlock with 1x1 conv "
                          "q, k, v, proj_out (linear attention is not supported)")

    def proj(f: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda h: f(h).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, h*w, C)

    def out(o: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        return a.proj_out(o.squeeze(1).transpose(1, 2).reshape(shape))

    return _AttnSpec(_check_group_norm(a.norm, "attention norm"), 1, None, proj(a.q), proj(a.k), proj(a.v), out,
                     True, 1.0)


def _ldm_level(level: nn.Module) -> list[_Step]:
    """The resnets of one resolution level, each followed by its attention if the level has any."""
    steps: list[_Step] = []
    attn = getattr(level, "attn", None) or []
    for i, block in enumerate(level.block):
        steps += _resnet_steps(_ldm_resnet(block))
        if len(attn) > 0:
            steps += _attention_steps(_ldm_attention(attn[i]))
    return steps


def _ldm_mid(mid: nn.Module) -> list[_Step]:
    return (_resnet_steps(_ldm_resnet(mid.block_1)) + _attention_steps(_ldm_attention(mid.attn_1))
            + _resnet_steps(_ldm_resnet(mid.block_2)))


def _ldm_decoder_steps(dec: nn.Module, post_quant_conv: nn.Module | None) -> list[_Step]:
    """post_quant_conv + Decoder.forward: conv_in, mid, up levels from the deepest (each:
    resnets, then `upsample` where present), then unless give_pre_end norm_out, swish,
    conv_out (and tanh with tanh_out)."""
    steps = [_plain(post_quant_conv)] if post_quant_conv is not None else []
    steps.append(_plain(dec.conv_in))
    steps += _ldm_mid(dec.mid)
    for i in reversed(range(len(dec.up))):
        level = dec.up[i]
        steps += _ldm_level(level)
        up = getattr(level, "upsample", None)
        if up is not None:  # Upsample: nearest x2, then a 3x3 conv if with_conv
            if not getattr(up, "with_conv", True):
                steps.append(_upsample_step(None))
            elif _is_plain_3x3(getattr(up, "conv", None)):
                steps.append(_upsample_step(up.conv))
            else:
                steps.append(_plain(up))
    if getattr(dec, "give_pre_end", False):
        return steps
    return steps + _final_steps(_check_group_norm(dec.norm_out, "norm_out"), _silu, dec.conv_out,
                                tanh=bool(getattr(dec, "tanh_out", False)))


def _ldm_encoder_steps(enc: nn.Module, quant_conv: nn.Module | None) -> list[_Step]:
    """Encoder.forward + quant_conv: conv_in, down levels (resnets, then `downsample`
    where present: pad right / bottom by one, 3x3 conv stride 2), mid, norm_out, swish,
    conv_out."""
    steps = [_plain(enc.conv_in)]
    for level in enc.down:
        steps += _ldm_level(level)
        if getattr(level, "downsample", None) is not None:
            steps.append(_plain(level.downsample))
    steps += _ldm_mid(enc.mid)
    steps += _final_steps(_check_group_norm(enc.norm_out, "norm_out"), _silu, enc.conv_out)
    if quant_conv is not None:
        steps.append(_plain(quant_conv))
    return steps


# ---- layout detection


def _is_ldm_decoder(m: Any) -> bool:
    return isinstance(m, nn.Module) and all(hasattr(m, n) for n in ("conv_in", "mid", "up", "norm_out", "conv_out"))


def _is_ldm_encoder(m: Any) -> bool:
    return isinstance(m, nn.Module) and all(hasattr(m, n) for n in ("conv_in", "mid", "down", "norm_out", "conv_out"))


def _is_diffusers_autoencoder(m: Any) -> bool:
    return (isinstance(m, nn.Module) and hasattr(getattr(m, "config", None), "block_out_channels")
            and hasattr(getattr(m, "decoder", None), "up_blocks"))


ACCEPTED_VAES = (
    "a diffusers AutoencoderKL; an LDM-layout autoencoder (the original CompVis / Stability layout that "
    "ComfyUI keeps as VAE.first_stage_model: .encoder / .decoder with .down / .mid / .up, optional "
    ".quant_conv / .post_quant_conv); or a bare LDM Decoder (decode) / Encoder (encode)")


@dataclass(frozen=True)
class VAELayout:
    """What the tiled engine needs of one direction (decode or encode) of an autoencoder.

    kind: "diffusers" or "ldm"; scale: pixels per latent pixel; in_channels: channels of
    the input (latents for decode, pixels for encode); steps: the tile program;
    posterior: (encode) the output is the (mean, log-variance) moments of a diagonal
    Gaussian; module: the (sub)module whose parameters set device and dtype."""

    kind: str
    direction: str
    scale: int
    in_channels: int
    steps: tuple[_Step, ...]
    posterior: bool
    module: nn.Module

    @property
    def parameter(self) -> torch.Tensor:
        return next(self.module.parameters())


def vae_layout(vae: Any, direction: Literal["decode", "encode"]) -> VAELayout:
    """Read `vae` (see ACCEPTED_VAES) for tiled decoding or encoding; ConfigError if it
    is none of the accepted objects or lacks that direction."""
    if direction not in ("decode", "encode"):
        raise ConfigError(f"direction must be 'decode' or 'encode', got {direction!r}")
    decode = direction == "decode"
    if _is_diffusers_autoencoder(vae):
        c = vae.config
        if decode:
            steps, ch, module = _diffusers_decoder_steps(vae), c.latent_channels, vae.decoder
        else:
            steps, ch, module = _diffusers_encoder_steps(vae), c.in_channels, vae.encoder
        return VAELayout("diffusers", direction, 2 ** (len(c.block_out_channels) - 1), ch, tuple(steps), not decode,
                         module)
    enc = vae if _is_ldm_encoder(vae) and not decode else getattr(vae, "encoder", None)
    dec = vae if _is_ldm_decoder(vae) and decode else getattr(vae, "decoder", None)
    bare = vae is enc or vae is dec
    qc = None if bare else getattr(vae, "quant_conv", None)
    pqc = None if bare else getattr(vae, "post_quant_conv", None)
    if decode and _is_ldm_decoder(dec):
        scale = 2 ** sum(getattr(level, "upsample", None) is not None for level in dec.up)
        ch = pqc.in_channels if pqc is not None else dec.conv_in.in_channels
        return VAELayout("ldm", direction, scale, ch, tuple(_ldm_decoder_steps(dec, pqc)), False, dec)
    if not decode and _is_ldm_encoder(enc):
        scale = 2 ** sum(getattr(level, "downsample", None) is not None for level in enc.down)
        moments = qc.out_channels if qc is not None else enc.conv_out.out_channels
        latent = None
        if _is_ldm_decoder(dec) and not bare:
            latent = pqc.in_channels if pqc is not None else dec.conv_in.in_channels
        # double_z: the encoder outputs mean and log-variance of the posterior
        return VAELayout("ldm", direction, scale, enc.conv_in.in_channels, tuple(_ldm_encoder_steps(enc, qc)),
                         latent is not None and moments == 2 * latent, enc)
    hint = " (for a ComfyUI VAE pass vae.first_stage_model)" if hasattr(vae, "first_stage_model") else ""
    raise ConfigError(f"vae must be {ACCEPTED_VAES}, with {'a decoder' if decode else 'an encoder'}; "
                      f"got {type(vae).__name__}{hint}")


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel: 2 ** (number of up/down-sampling levels)."""
    try:
        return vae_layout(vae, "decode").scale
    except ConfigError:
        return vae_layout(vae, "encode").scale
