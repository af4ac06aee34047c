"""A minimal autoencoder in the original LDM module layout, for tests without ComfyUI.

ComfyUI (like CompVis latent-diffusion and Stability's generative-models) keeps the VAE
in the original LDM layout, not diffusers': `encoder.down[i].block[j]`,
`encoder.down[i].downsample`, `mid.block_1 / attn_1 / block_2`, `norm_out`, `conv_out`,
`decoder.up[i].block[j]`, `decoder.up[i].upsample`, and `quant_conv` /
`post_quant_conv` on the autoencoder. This module is written here from the LDM
equations (Rombach et al. 2022, appendix; the VQGAN / DDPM building blocks), with those
attribute names so that state dicts use the LDM checkpoint keys:

- ResnetBlock: h = conv1(swish(norm1(x))); h = conv2(dropout(swish(norm2(h))));
  out = nin_shortcut(x) + h (1x1 shortcut only when the channels change);
- AttnBlock (one head over all C channels): q, k, v = 1x1 convs of norm(x);
  out = x + proj_out(v softmax(q^T k / sqrt(C))^T);
- Upsample: nearest x2, then a 3x3 conv; Downsample: pad right / bottom by one pixel,
  then a 3x3 conv with stride 2;
- GroupNorm(32 groups by default, eps 1e-6); swish(x) = x * sigmoid(x).

`tiny_ldm_vae(seed)` builds a small random one; `to_diffusers(vae)` converts its state
dict with diffusers' own `convert_ldm_vae_checkpoint` into a diffusers AutoencoderKL,
the outside reference that this module computes the same function (tests/test_vae_ldm.py).
Importable by other tests as `from tests.ldm_vae import tiny_ldm_vae, to_diffusers`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if self.in_channels != self.out_channels else x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        B, C, H, W = h.shape
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)  # (B, N, C)
        k = self.k(h).reshape(B, C, H * W)  # (B, C, N)
        v = self.v(h).reshape(B, C, H * W)
        w = torch.softmax(torch.bmm(q, k) * C**-0.5, dim=2)  # (B, N queries, N keys)
        o = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(o)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, in_channels: int,
                 z_channels: int, double_z: bool = True, groups: int = 32, attn_levels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_in = ch * in_mult[i]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * m, groups))
                block_in = ch * m
                if i in attn_levels:
                    level.attn.append(AttnBlock(block_in, groups))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, out_ch: int, z_channels: int,
                 groups: int = 32, give_pre_end: bool = False, tanh_out: bool = False,
                 attn_levels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.give_pre_end, self.tanh_out = give_pre_end, tanh_out
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):  # built deepest first, stored shallowest first
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * ch_mult[i], groups))
                block_in = ch * ch_mult[i]
                if i in attn_levels:
                    level.attn.append(AttnBlock(block_in, groups))
            if i != 0:
                level.upsample = Upsample(block_in)
            self.up.insert(0, level)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(self.num_resolutions)):
            for j, block in enumerate(self.up[i].block):
                h = block(h)
                if len(self.up[i].attn) > 0:
                    h = self.up[i].attn[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(swish(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


class LDMAutoencoderKL(nn.Module):
    """encoder + quant_conv -> (mean, log-variance); post_quant_conv + decoder."""

    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, embed_dim: int,
                 in_channels: int = 3, out_ch: int = 3, groups: int = 32, attn_levels: tuple[int, ...] = (),
                 **decoder_kw: Any) -> None:
        super().__init__()
        self.config = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                           embed_dim=embed_dim, in_channels=in_channels, out_ch=out_ch, groups=groups,
                           attn_levels=tuple(attn_levels), **decoder_kw)
        self.encoder = Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, in_channels=in_channels,
                               z_channels=z_channels, groups=groups, attn_levels=attn_levels)
        self.decoder = Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, out_ch=out_ch,
                               z_channels=z_channels, groups=groups, attn_levels=attn_levels, **decoder_kw)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mode (mean) of the latents."""
        return self.encode_moments(x).chunk(2, dim=1)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def tiny_ldm_vae(seed: int = 0, *, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 1,
                 z_channels: int = 4, groups: int = 32, give_pre_end: bool = False,
                 tanh_out: bool = False, attn_levels: tuple[int, ...] = ()) -> LDMAutoencoderKL:
    """A small random LDM-layout AutoencoderKL (scale factor 2 ** (len(ch_mult) - 1), 32
    GroupNorm groups as in LDM, a 1x1 nin_shortcut where channels grow). The GroupNorm
    affine parameters are random too, so a swapped norm would show in any comparison.
    `attn_levels`: resolution levels (0 = full resolution) whose resnets are each followed
    by an AttnBlock (LDM's attn_resolutions; SD's VAEs have none; diffusers' converter
    does not map them)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = LDMAutoencoderKL(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
                           embed_dim=z_channels, groups=groups, give_pre_end=give_pre_end, tanh_out=tanh_out,
                           attn_levels=attn_levels)
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return vae.eval()


def diffusers_config(vae: LDMAutoencoderKL) -> dict[str, Any]:
    """The diffusers AutoencoderKL config of the same architecture."""
    c = vae.config
    n = len(c["ch_mult"])
    if c["embed_dim"] != c["z_channels"] or c["attn_levels"]:
        raise ValueError("diffusers' AutoencoderKL needs embed_dim == z_channels and no attention in levels")
    return dict(in_channels=c["in_channels"], out_channels=c["out_ch"], latent_channels=c["z_channels"],
                block_out_channels=[c["ch"] * m for m in c["ch_mult"]], layers_per_block=c["num_res_blocks"],
                down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                norm_num_groups=c["groups"], sample_size=64)


def to_diffusers(vae: LDMAutoencoderKL) -> Any:
    """A diffusers AutoencoderKL loaded with diffusers' own conversion of this state dict."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = diffusers_config(vae)
    out = AutoencoderKL(**config)
    out.load_state_dict(convert_ldm_vae_checkpoint(vae.state_dict(), config), strict=True)
    return out.eval()
