"""Tiled VAE: decode and encode any canvas in bounded memory, GroupNorm synchronised.

`tiled_decode(vae, latents)` takes what `vae.decode` takes (latents already divided by
`vae.config.scaling_factor`) and returns what `vae.decode(latents).sample` returns: an
image tensor in about [-1, 1]. `tiled_encode(vae, images)` takes what `vae.encode` takes
and returns `vae.encode(images).latent_dist.mode()` (or `.sample()`), unscaled. Works
for any diffusers AutoencoderKL (SD 1/2, SDXL; scale factor 2 ** (blocks - 1)).

Geometry (all user sizes in pixels, planned on the latent grid):
- Tiles are the evenly spread, fully covering views of `mdtools.plan_views`.
- Each tile carries a halo of extra context (`halo` px, cropped after the network): the
  decoder's receptive field reaches far beyond one latent pixel, so without it every tile
  edge is computed against zero padding instead of its real neighbours. On a circular
  axis the halo wraps (modulo indices), so a 360-degree panorama's two ends meet as real
  neighbours. On a non-circular axis it is clipped at the canvas edge, where the full
  decode sees zero padding too.
- Tile outputs are blended over the overlap with a kernel of `mdtools.KERNELS`; weights
  are normalised per axis (the grid is a product of rows and columns and kernels are
  separable), so the blended weights sum to exactly 1 at every output pixel without a
  canvas-sized weight buffer.
- Every latent pixel belongs to exactly one tile's *core* (the overlaps are split at
  their midpoints); GroupNorm statistics are pooled over cores only, so each canvas
  pixel is counted once and halo or overlap duplicates are not counted at all.

GroupNorm synchronisation (why and how):
A GroupNorm normalises with the mean and variance over the whole feature map. Per tile
those statistics differ (a dark tile has a lower mean): the colour/contrast shift between
tiles that diffusers' `enable_tiling` shows. Here every tile uses the canvas statistics,
computed exactly from the tiles: at each GroupNorm every tile reports (count, mean, var)
of its core, and these are merged with Chan's parallel formula in float64, which keeps
the between-tile term sum_i n_i (mu_i - mu)^2 / n that A1111's Tiled VAE drops.

The statistics of layer k depend on those of every earlier layer (they shape its input),
so the tiles advance in lock-step: each tile runs the VAE as a generator over an explicit
stack of live tensors (input, skip branch) and stops at every GroupNorm; when all tiles
have reported, the pooled statistics are sent back and each tile runs on to the next
GroupNorm. One pass, no recomputation, exact pooling.

Memory model and trade-off: a tile that waits at a barrier has its stack parked on
`park` (default "cpu"), so the compute device holds one tile's activations plus the
output canvas (`offload=True` puts the canvas on the CPU as well). The parked stacks of
all tiles together are about two canvas-sized activations at the current layer (hidden
state + skip, with halos): on a CUDA run that is host RAM, on a CPU-only run it is the
same RAM, so peak RSS of a synchronised CPU decode grows with the canvas. Bounded memory
AND exact statistics would need the activations recomputed per GroupNorm (about
n_groupnorms / 2 times the compute); an iterative alternative (re-running whole passes
with the previous pass's statistics, Jacobi style) was tried and does not converge on
random-weight VAEs, so it is not offered. `sync_groupnorm=False` runs tiles one after
another start to finish: memory bounded by one tile on every device.

Remaining approximations (measured in tests/test_vae.py and benchmarks/vae_memory.py):
- convolutions at a tile's outer halo edge see zeros instead of real neighbours; a
  halo larger than the receptive-field reach that matters shrinks this;
- the mid-block self-attention attends within its tile + halo only, not the canvas;
- the synchronised statistics are pooled from tiled activations (themselves slightly off
  at halo edges), so they are the exact pool of what tiles compute, not bit-equal to the
  full decode's statistics.

Non-finite values (fp16 overflow, the "black squares" of large fp16 decodes) raise a
FloatingPointError naming the tile and layer; GroupNorm is always computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check_choice, check_multiple
from .kernels import Kernel, get_kernel
from .plan import CIRCULAR_MODES, plan_views

CircularArg = Union[bool, Literal["x"], Literal["y"], Literal["both"]]

#: Default halo in pixels. The decoder's receptive field is wide (several latent pixels
#: at the latent level, before 3 upsamplings); 8 latent px (64 px) brings tile errors near
#: the blend floor (see benchmarks/vae_memory.py). The encoder halo follows A1111's 32 px.
DEFAULT_DECODE_HALO_PX: int = 64
DEFAULT_ENCODE_HALO_PX: int = 32


# --------------------------------------------------------------------------------------
# Tile geometry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisTiles:
    """The tiles along one axis, in latent units.

    starts[i]: first latent index of tile i's body (may pass the end on a circular axis);
    size: body length; halo_lo/halo_hi[i]: context added before/after the body;
    core[i]: (start, end) of tile i's core relative to the tile's first input index
    (start of its low halo). The cores partition the axis.
    """

    length: int
    starts: tuple[int, ...]
    size: int
    halo_lo: tuple[int, ...]
    halo_hi: tuple[int, ...]
    core: tuple[tuple[int, int], ...]
    wraps: bool

    def input_indices(self, i: int) -> np.ndarray:
        """Latent indices of tile i's input (body + halos), modulo the axis if it wraps."""
        idx = np.arange(self.starts[i] - self.halo_lo[i], self.starts[i] + self.size + self.halo_hi[i])
        return idx % self.length if self.wraps else idx

    def segments(self, i: int, unit: int) -> list[tuple[int, int, int]]:
        """Where tile i's body lands in the output, as (dst_start, src_start, length) runs
        in units of `unit` per latent pixel; two runs when the body crosses the wrap line."""
        start, n, total = self.starts[i] * unit, self.size * unit, self.length * unit
        start %= total
        first = min(n, total - start)
        runs = [(start, 0, first)]
        if first < n:
            runs.append((0, first, n - first))
        return runs


def _axis_tiles(length: int, starts: list[int], size: int, halo: int, wraps: bool) -> AxisTiles:
    """Halos and cores for one axis: cores split every overlap at its midpoint."""
    starts = sorted(set(starts))
    n = len(starts)
    if wraps:
        ring = starts + [starts[0] + length]
        # boundary b_i between tile i and i + 1 lies inside their overlap [s_{i+1}, s_i + size]
        bounds = [(ring[i] + size + ring[i + 1]) // 2 for i in range(n)]
        lo_bounds = [bounds[-1] - length] + bounds[:-1]
        halo_lo = [halo] * n
        halo_hi = [halo] * n
    else:
        mids = [(starts[i] + size + starts[i + 1]) // 2 for i in range(n - 1)]
        lo_bounds = [0] + mids
        bounds = mids + [length]
        halo_lo = [min(halo, s) for s in starts]
        halo_hi = [min(halo, length - (s + size)) for s in starts]
    core = tuple(
        (lo - (s - hl), hi - (s - hl)) for s, lo, hi, hl in zip(starts, lo_bounds, bounds, halo_lo)
    )
    return AxisTiles(length, tuple(starts), size, tuple(halo_lo), tuple(halo_hi), core, wraps)


@dataclass(frozen=True)
class VAETilePlan:
    """Rows x columns of tiles on a latent canvas (`scale` pixels per latent pixel)."""

    y: AxisTiles
    x: AxisTiles
    scale: int

    @property
    def n_tiles(self) -> int:
        return len(self.y.starts) * len(self.x.starts)

    def tiles(self) -> Iterator[tuple[int, int]]:
        """(row, column) tile indices, row-major."""
        for i in range(len(self.y.starts)):
            for j in range(len(self.x.starts)):
                yield i, j

    def core_count(self) -> np.ndarray:
        """(H, W) latent map: how many tile cores hold each latent pixel (must be all 1)."""
        count = np.zeros((self.y.length, self.x.length), dtype=np.int64)
        for i, j in self.tiles():
            (cy0, cy1), (cx0, cx1) = self.y.core[i], self.x.core[j]
            rows = self.y.input_indices(i)[cy0:cy1]
            cols = self.x.input_indices(j)[cx0:cx1]
            np.add.at(count, (rows[:, None], cols[None, :]), 1)
        return count


def plan_vae_tiles(
    latent_height: int,
    latent_width: int,
    *,
    tile: int,
    overlap: int,
    halo: int,
    scale: int,
    circular: CircularArg = False,
) -> VAETilePlan:
    """Tile plan for a latent canvas; `tile`, `overlap`, `halo` in pixels (multiples of scale)."""
    mode = "x" if circular is True else circular
    plan = plan_views(latent_height * scale, latent_width * scale, window=tile, overlap=overlap, scale=scale,
                      circular=mode)
    vh, vw = plan.view_size
    h = halo // scale
    y = _axis_tiles(latent_height, [v.top for v in plan.views], vh, h, plan.wraps_y)
    x = _axis_tiles(latent_width, [v.left for v in plan.views], vw, h, plan.wraps_x)
    return VAETilePlan(y, x, scale)


def _normalised_axis_weights(axis: AxisTiles, kernel: Kernel, unit: int, overlap: int) -> list[torch.Tensor]:
    """Per-tile 1-D blend weights (unit samples per latent pixel) that sum to 1 everywhere.

    The 2-D weight of tile (i, j) is the outer product wy_i x wx_j; because the grid is a
    product of rows and columns the 2-D sum factorises too, so normalising each axis makes
    the blended weights sum to exactly 1 at every pixel with no canvas-sized buffer.
    """
    prof = kernel.profile(axis.size * unit, overlap)
    total = np.zeros(axis.length * unit)
    for i in range(len(axis.starts)):
        for dst, src, n in axis.segments(i, unit):
            total[dst:dst + n] += prof[src:src + n]
    out = []
    for i in range(len(axis.starts)):
        denom = np.empty_like(prof)
        for dst, src, n in axis.segments(i, unit):
            denom[src:src + n] = total[dst:dst + n]
        out.append(torch.as_tensor(prof / denom, dtype=torch.float32))
    return out


def blend_weight_sum(plan: VAETilePlan, kernel: str | Kernel = "linear", *, unit: int | None = None,
                     overlap: int = 0) -> torch.Tensor:
    """Sum over tiles of the normalised blend weights on the output canvas (all ones when
    every output pixel is fully written). `unit` samples per latent pixel (default scale)."""
    unit = plan.scale if unit is None else unit
    k = get_kernel(kernel)
    wy = _normalised_axis_weights(plan.y, k, unit, overlap)
    wx = _normalised_axis_weights(plan.x, k, unit, overlap)
    acc = torch.zeros(plan.y.length * unit, plan.x.length * unit, dtype=torch.float64)
    for i, j in plan.tiles():
        w2 = torch.outer(wy[i], wx[j]).double()
        for dy, sy, ny in plan.y.segments(i, unit):
            for dx, sx, nx in plan.x.segments(j, unit):
                acc[dy:dy + ny, dx:dx + nx] += w2[sy:sy + ny, sx:sx + nx]
    return acc


# --------------------------------------------------------------------------------------
# GroupNorm statistics
# --------------------------------------------------------------------------------------


@dataclass
class GroupStats:
    """Running (count, mean, M2) per (sample, group), float64, merged with Chan's formula."""

    n: float = 0.0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def merge(self, n: float, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Fold in a part with `n` elements per group, its mean and (population) variance."""
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = float(n), mean, m2
            return
        tot = self.n + n
        delta = mean - self.mean
        # Chan et al. parallel variance: keeps the between-tile term delta^2 n_a n_b / n
        # that pooling per-tile variances alone (A1111) drops
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / tot)
        self.mean = self.mean + delta * (n / tot)
        self.n = tot

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / self.n


def _core_stats(x: torch.Tensor, groups: int, core: tuple[int, int, int, int], r: int
                ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, var) per (sample, group) over the core box (latent units x r), float32."""
    y0, y1, x0, x1 = core
    B, C = x.shape[:2]
    flat = x[:, :, y0 * r:y1 * r, x0 * r:x1 * r].reshape(B, groups, -1).float()
    var, mean = torch.var_mean(flat, dim=-1, correction=0)
    return flat.shape[-1], mean, var


def _group_norm(x: torch.Tensor, mod: nn.GroupNorm, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """GroupNorm of `x` in float32 with given (mean, var) per (sample, group), or with
    x's own statistics when `stats` is None. float32 because fp16 variances overflow."""
    xf = x.float()
    w = mod.weight.float() if mod.weight is not None else None
    b = mod.bias.float() if mod.bias is not None else None
    if stats is None:
        return F.group_norm(xf, mod.num_groups, w, b, mod.eps).to(x.dtype)
    B, C = x.shape[:2]
    mean, var = (s.to(device=x.device, dtype=torch.float32) for s in stats)
    rep = C // mod.num_groups
    scale = torch.rsqrt(var + mod.eps).repeat_interleave(rep, dim=1)
    shift = -mean.repeat_interleave(rep, dim=1) * scale
    if w is not None:
        scale, shift = scale * w, shift * w + b
    return torch.addcmul(shift[:, :, None, None], xf, scale[:, :, None, None]).to(x.dtype)


# --------------------------------------------------------------------------------------
# The VAE as a stack program that stops at every GroupNorm
# --------------------------------------------------------------------------------------
#
# Each tile runs the encoder or decoder as a generator. All live tensors sit on the
# tile's explicit stack (never in generator locals across a yield), so while the tile
# waits at a GroupNorm barrier the driver can park its whole state off the compute
# device. At every GroupNorm the generator yields its core statistics and receives the
# pooled canvas statistics. The resnet / attention / block code mirrors diffusers'
# ResnetBlock2D, Attention (AttnProcessor2_0), UNetMidBlock2D, Up/DownEncoderBlock2D,
# Encoder and Decoder (diffusers 0.30 - 0.42); tests check a single tile against
# `vae.decode` to float tolerance.

Message = tuple[int, float, torch.Tensor, torch.Tensor]  # (layer, count, mean, var)
Program = Generator[Message, Any, torch.Tensor]


@dataclass
class _Tile:
    """One tile's state: its stack of live tensors and its geometry."""

    key: tuple[int, int]
    hw: tuple[int, int]  # latent size of the tile input, halo included
    core: tuple[int, int, int, int]  # core box in latent units, relative to the input
    sync: bool
    stack: list[torch.Tensor] = field(default_factory=list)
    layer: int = 0

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.stack[-1] = fn(self.stack[-1])

    def move(self, device: torch.device) -> None:
        """Move the stack to `device`; tensors shared between slots move once."""
        moved: dict[int, torch.Tensor] = {}
        self.stack = [moved.setdefault(id(t), t.to(device)) for t in self.stack]


def _norm(T: _Tile, mod: nn.Module) -> Generator[Message, Any, None]:
    """GroupNorm the top of the stack; in sync mode first yield core statistics and
    wait for the canvas statistics."""
    if not isinstance(mod, nn.GroupNorm):
        raise ConfigError(f"unsupported normalisation layer {type(mod).__name__}; tiled VAE needs GroupNorm "
                          "(a diffusers AutoencoderKL)")
    stats = None
    if T.sync:
        x = T.stack[-1]
        r = x.shape[-2] // T.hw[0]  # activation pixels per latent pixel at this depth
        if r < 1 or x.shape[-2:] != (T.hw[0] * r, T.hw[1] * r):
            raise RuntimeError(f"activation {tuple(x.shape)} is not a multiple of the latent tile {T.hw}")
        n, mean, var = _core_stats(x, mod.num_groups, T.core, r)
        del x
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            raise FloatingPointError(f"non-finite activations before GroupNorm {T.layer} in tile {T.key}; the VAE "
                                     "overflowed (fp16?) - run it in float32 or bfloat16")
        stats = yield (T.layer, n, mean.cpu(), var.cpu())
    T.apply(lambda h: _group_norm(h, mod, stats))
    T.layer += 1


def _act(fn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The activation after a GroupNorm. SiLU runs in place: the GroupNorm output is a
    fresh tensor nothing else holds, so this saves one activation of peak memory."""
    return F.silu(h, inplace=True) if isinstance(fn, nn.SiLU) else fn(h)


def _resnet(T: _Tile, m: nn.Module) -> Generator[Message, Any, None]:
    """diffusers ResnetBlock2D without time embedding (as in every VAE)."""
    if getattr(m, "upsample", None) is not None or getattr(m, "downsample", None) is not None \
            or getattr(m, "time_emb_proj", None) is not None:
        raise ConfigError("unsupported ResnetBlock2D (up/down-sampling or time embedding) in this VAE")
    T.stack.append(T.stack[-1])  # the skip branch keeps the input
    yield from _norm(T, m.norm1)
    T.apply(lambda h: m.conv1(_act(m.nonlinearity, h)))
    yield from _norm(T, m.norm2)
    T.apply(lambda h: m.conv2(m.dropout(_act(m.nonlinearity, h))))
    h = T.stack.pop()
    x = T.stack.pop()
    if m.conv_shortcut is not None:
        x = m.conv_shortcut(x)
    T.stack.append((x + h) / m.output_scale_factor)


def _attention(T: _Tile, a: nn.Module) -> Generator[Message, Any, None]:
    """diffusers Attention (self-attention over the tile + halo), AttnProcessor2_0 maths."""
    if getattr(a, "spatial_norm", None) is not None or getattr(a, "norm_cross", None):
        raise ConfigError("unsupported attention block (spatial norm / cross-attention norm) in this VAE")
    T.stack.append(T.stack[-1])  # residual
    if a.group_norm is not None:
        yield from _norm(T, a.group_norm)
    h = T.stack.pop()
    res = T.stack.pop()
    B, C, H, W = h.shape
    h = h.reshape(B, C, H * W).transpose(1, 2)
    q, k, v = a.to_q(h), a.to_k(h), a.to_v(h)
    heads = a.heads
    d = k.shape[-1] // heads
    q, k, v = (t.view(B, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, scale=a.scale)
    o = o.transpose(1, 2).reshape(B, -1, heads * d).to(q.dtype)
    o = a.to_out[1](a.to_out[0](o))
    o = o.transpose(-1, -2).reshape(B, C, H, W)
    if a.residual_connection:
        o = o + res
    T.stack.append(o / a.rescale_output_factor)


def _mid_block(T: _Tile, mb: nn.Module) -> Generator[Message, Any, None]:
    yield from _resnet(T, mb.resnets[0])
    for attn, resnet in zip(mb.attentions, mb.resnets[1:]):
        if attn is not None:
            yield from _attention(T, attn)
        yield from _resnet(T, resnet)


def _decoder_program(T: _Tile, vae: nn.Module) -> Program:
    """post_quant_conv + Decoder, as `vae.decode` runs them."""
    dec = vae.decoder
    if getattr(vae, "post_quant_conv", None) is not None:
        T.apply(vae.post_quant_conv)
    T.apply(dec.conv_in)
    yield from _mid_block(T, dec.mid_block)
    for block in dec.up_blocks:
        for resnet in block.resnets:
            yield from _resnet(T, resnet)
        for up in block.upsamplers or []:
            T.apply(up)
    yield from _norm(T, dec.conv_norm_out)
    T.apply(lambda h: dec.conv_out(_act(dec.conv_act, h)))
    return T.stack.pop()


def _encoder_program(T: _Tile, vae: nn.Module) -> Program:
    """Encoder + quant_conv, as `vae.encode` runs them; returns the posterior moments."""
    enc = vae.encoder
    T.apply(enc.conv_in)
    for block in enc.down_blocks:
        for resnet in block.resnets:
            yield from _resnet(T, resnet)
        for down in block.downsamplers or []:
            T.apply(down)
    yield from _mid_block(T, enc.mid_block)
    yield from _norm(T, enc.conv_norm_out)
    T.apply(lambda h: enc.conv_out(_act(enc.conv_act, h)))
    if getattr(vae, "quant_conv", None) is not None:
        T.apply(vae.quant_conv)
    return T.stack.pop()


# --------------------------------------------------------------------------------------
# Argument checks and the tiled driver shared by decode and encode
# --------------------------------------------------------------------------------------


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel of a diffusers AutoencoderKL: 2 ** (blocks - 1)."""
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    if blocks is None or not hasattr(vae, "decoder") or not hasattr(vae, "encoder"):
        raise ConfigError(f"vae must be a diffusers AutoencoderKL (with .encoder, .decoder, .config), "
                          f"got {type(vae).__name__}")
    return 2 ** (len(blocks) - 1)


def _check_args(vae: Any, x: Any, *, what: str, channels_key: str, tile: Any, overlap: Any, halo: Any,
                circular: Any, kernel: Any, sync_groupnorm: Any, park: Any, pixel_input: bool
                ) -> tuple[int, Kernel, Any, torch.device]:
    scale = vae_scale_factor(vae)
    channels = getattr(vae.config, channels_key)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ConfigError(f"{what} must be a 4-D tensor (batch, channels, height, width), "
                          f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] != channels:
        raise ConfigError(f"{what} must have {channels} channels for this VAE, got {x.shape[1]}")
    if pixel_input:
        check_multiple(f"{what} height", x.shape[2], scale)
        check_multiple(f"{what} width", x.shape[3], scale)
    check_multiple("tile", tile, scale)
    for name, v in (("overlap", overlap), ("halo", halo)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name} must be an integer >= 0 pixels (e.g. {8 * scale}), got {v!r}")
        if v % scale:
            lo = v // scale * scale
            raise ConfigError(f"{name}={v} is not a multiple of the VAE scale factor ({scale}); "
                              f"use {lo} or {lo + scale}")
    if overlap >= tile:
        raise ConfigError(f"overlap={overlap} must be smaller than tile={tile} "
                          f"(e.g. {max(0, tile // 8 // scale * scale)})")
    if circular is not True:
        check_choice("circular", circular, CIRCULAR_MODES)
    if not isinstance(sync_groupnorm, bool):
        raise ConfigError(f"sync_groupnorm must be True or False, got {sync_groupnorm!r}")
    try:
        park_dev = torch.device(park)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(f"park must be a device such as 'cpu', got {park!r}") from exc
    return scale, get_kernel(kernel), ("x" if circular is True else circular), park_dev


def _run_tiled(
    *,
    vae: nn.Module,
    program: Callable[[_Tile, nn.Module], Program],
    x: torch.Tensor,
    plan: VAETilePlan,
    in_unit: int,
    out_unit: int,
    out_channels: int,
    kernel: Kernel,
    blend_overlap: int,
    sync: bool,
    park: torch.device,
    out_device: torch.device | None,
    report: dict | None,
) -> torch.Tensor:
    """Run `program` over every tile of `plan` and blend the outputs into one canvas.

    `x` holds latents or pixels (`in_unit` samples per latent pixel); tile outputs have
    `out_unit` samples per latent pixel. No sync: tiles run one after another, each
    from input to output. Sync: tiles advance in lock-step from one GroupNorm to the next;
    between barriers every waiting tile's stack is parked on `park`, so the compute
    device holds one tile's activations.
    """
    p = next(vae.parameters())
    device, dtype = p.device, p.dtype
    out_device = device if out_device is None else out_device
    B = x.shape[0]
    wy = _normalised_axis_weights(plan.y, kernel, out_unit, blend_overlap)
    wx = _normalised_axis_weights(plan.x, kernel, out_unit, blend_overlap)
    out = torch.zeros(B, out_channels, plan.y.length * out_unit, plan.x.length * out_unit,
                      dtype=torch.float32, device=out_device)
    # One tile with no wrap holds the whole canvas: its own statistics are the canvas's.
    sync = sync and not (plan.n_tiles == 1 and not (plan.y.wraps or plan.x.wraps))

    def start(i: int, j: int) -> tuple[_Tile, Program]:
        ry, rx = plan.y.input_indices(i), plan.x.input_indices(j)
        iy = np.repeat(ry * in_unit, in_unit) + np.tile(np.arange(in_unit), len(ry))
        ix = np.repeat(rx * in_unit, in_unit) + np.tile(np.arange(in_unit), len(rx))
        # modulo-indexed gather: one code path for clipped and wrapping halos
        xt = x.index_select(2, torch.as_tensor(iy, device=x.device)).index_select(
            3, torch.as_tensor(ix, device=x.device))
        T = _Tile((i, j), (len(ry), len(rx)), plan.y.core[i] + plan.x.core[j], sync,
                  [xt.to(device=device, dtype=dtype)])
        return T, program(T, vae)

    def finish(T: _Tile, y: torch.Tensor) -> None:
        i, j = T.key
        if not torch.isfinite(y).all():
            raise FloatingPointError(f"non-finite output in tile {T.key}; the VAE overflowed (fp16?) - "
                                     "run it in float32 or bfloat16")
        hy, hx = plan.y.halo_lo[i] * out_unit, plan.x.halo_lo[j] * out_unit
        ny, nx = plan.y.size * out_unit, plan.x.size * out_unit
        body = y[:, :, hy:hy + ny, hx:hx + nx].float() * torch.outer(wy[i], wx[j]).to(y.device)
        body = body.to(out_device)
        for dy, sy, ly in plan.y.segments(i, out_unit):
            for dx, sx, lx in plan.x.segments(j, out_unit):
                out[:, :, dy:dy + ly, dx:dx + lx] += body[:, :, sy:sy + ly, sx:sx + lx]

    barriers = 0
    with torch.inference_mode():
        if not sync:
            for i, j in plan.tiles():
                T, gen = start(i, j)
                try:
                    next(gen)
                except StopIteration as done:
                    finish(T, done.value)
                else:
                    raise RuntimeError("tile program stopped at a GroupNorm barrier in no-sync mode")
        else:
            running: list[tuple[_Tile, Program]] = []
            msgs: list[Message] = []
            for i, j in plan.tiles():
                T, gen = start(i, j)
                msgs.append(next(gen))
                T.move(park)
                running.append((T, gen))
            while running:
                # pool this layer's statistics in tile order (deterministic), Chan's formula
                layer = msgs[0][0]
                pooled = GroupStats()
                for lay, n, mean, var in msgs:
                    if lay != layer:
                        raise RuntimeError("tiles reached different GroupNorm layers")
                    pooled.merge(n, mean, var)
                stats = (pooled.mean.float(), pooled.var.float())
                barriers += 1
                msgs, still = [], []
                for T, gen in running:
                    T.move(device)
                    try:
                        msg = gen.send(stats)
                    except StopIteration as done:
                        finish(T, done.value)
                        continue
                    T.move(park)
                    msgs.append(msg)
                    still.append((T, gen))
                if still and len(still) != len(running):
                    raise RuntimeError("tiles finished at different GroupNorm layers")
                running = still
    if report is not None:
        report.update(n_tiles=plan.n_tiles, synced=sync, groupnorm_barriers=barriers)
    return out


def tiled_decode(
    vae: Any,
    latents: torch.Tensor,
    *,
    tile: int = 512,
    overlap: int = 64,
    sync_groupnorm: bool = True,
    circular: CircularArg = False,
    kernel: str | Kernel = "linear",
    halo: int | None = None,
    offload: bool = False,
    park: str | torch.device = "cpu",
    report: dict | None = None,
) -> torch.Tensor:
    """Decode `latents` tile by tile: same input and output as `vae.decode(latents).sample`.

    `latents` are unscaled (already divided by `vae.config.scaling_factor`), shape
    (B, latent_channels, h, w). `tile`, `overlap`, `halo` are pixels, multiples of the VAE
    scale factor; `halo` defaults to DEFAULT_DECODE_HALO_PX. `circular` is False, True
    (= "x"), "x", "y" or "both". `offload=True` keeps the output canvas on the CPU; `park`
    is where tiles waiting at a GroupNorm barrier keep their activations (sync only).
    Returns a float32 (B, out_channels, 8h, 8w) tensor (blending is done in float32).
    `report`, if given, is filled with n_tiles, synced, groupnorm_barriers.
    """
    halo = DEFAULT_DECODE_HALO_PX if halo is None else halo
    scale, k, circ, park_dev = _check_args(
        vae, latents, what="latents", channels_key="latent_channels", tile=tile, overlap=overlap, halo=halo,
        circular=circular, kernel=kernel, sync_groupnorm=sync_groupnorm, park=park, pixel_input=False)
    plan = plan_vae_tiles(latents.shape[2], latents.shape[3], tile=tile, overlap=overlap, halo=halo,
                          scale=scale, circular=circ)
    return _run_tiled(
        vae=vae, program=_decoder_program, x=latents, plan=plan, in_unit=1, out_unit=scale,
        out_channels=vae.config.out_channels, kernel=k, blend_overlap=overlap, sync=sync_groupnorm,
        park=park_dev, out_device=torch.device("cpu") if offload else None, report=report,
    )


def tiled_encode(
    vae: Any,
    images: torch.Tensor,
    *,
    tile: int = 512,
    overlap: int = 64,
    sync_groupnorm: bool = True,
    circular: CircularArg = False,
    kernel: str | Kernel = "linear",
    halo: int | None = None,
    sample: bool = False,
    generator: torch.Generator | None = None,
    offload: bool = False,
    park: str | torch.device = "cpu",
    report: dict | None = None,
) -> torch.Tensor:
    """Encode `images` tile by tile: returns `vae.encode(images).latent_dist.mode()`
    (`sample=True`: `.sample(generator)`), unscaled (multiply by scaling_factor yourself).

    `images` in [-1, 1], shape (B, in_channels, H, W) with H, W multiples of the scale
    factor; `tile`, `overlap`, `halo` in pixels (halo default DEFAULT_ENCODE_HALO_PX).
    The posterior moments (mean, log-variance) are blended, then mode/sample is taken.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    halo = DEFAULT_ENCODE_HALO_PX if halo is None else halo
    scale, k, circ, park_dev = _check_args(
        vae, images, what="images", channels_key="in_channels", tile=tile, overlap=overlap, halo=halo,
        circular=circular, kernel=kernel, sync_groupnorm=sync_groupnorm, park=park, pixel_input=True)
    if not isinstance(sample, bool):
        raise ConfigError(f"sample must be True (posterior sample) or False (posterior mode), got {sample!r}")
    plan = plan_vae_tiles(images.shape[2] // scale, images.shape[3] // scale, tile=tile, overlap=overlap,
                          halo=halo, scale=scale, circular=circ)
    moments = _run_tiled(
        vae=vae, program=_encoder_program, x=images, plan=plan, in_unit=scale, out_unit=1,
        out_channels=2 * vae.config.latent_channels, kernel=k, blend_overlap=overlap // scale,
        sync=sync_groupnorm, park=park_dev, out_device=torch.device("cpu") if offload else None, report=report,
    )
    dist = DiagonalGaussianDistribution(moments)
    return dist.sample(generator) if sample else dist.mode()


__all__ = [
    "AxisTiles", "GroupStats", "VAETilePlan", "blend_weight_sum", "plan_vae_tiles", "tiled_decode",
    "tiled_encode", "vae_scale_factor", "DEFAULT_DECODE_HALO_PX", "DEFAULT_ENCODE_HALO_PX",
]
