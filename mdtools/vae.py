"""Tiled VAE: decode and encode any canvas in bounded memory, GroupNorm synchronised.

`tiled_decode(vae, latents)` takes what `vae.decode` takes (latents already divided by
`vae.config.scaling_factor`) and returns what `vae.decode(latents).sample` returns: an
image tensor in about [-1, 1]. `tiled_encode(vae, images)` takes what `vae.encode` takes
and returns `vae.encode(images).latent_dist.mode()` (or `.sample()`), unscaled. Works
for any diffusers AutoencoderKL (SD 1/2, SDXL; scale factor 2 ** (blocks - 1)).

Geometry (all user sizes in pixels, planned on the latent grid):
- `tile` is a maximum: each axis gets the fewest tiles of at most `tile` px that cover it
  with `overlap`, shrunk to the smallest size that still covers (1024 px at tile 512,
  overlap 64: 3 tiles of 384 px, not 3 of 512 with 256 px overlaps), then spread evenly
  by `mdtools.plan_views`.
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
  their midpoints); statistics and attention keys are taken over cores only, so each
  canvas pixel is counted once and halo or overlap duplicates are not counted at all.

GroupNorm synchronisation (why and how):
A GroupNorm normalises with the mean and variance over the whole feature map. Per tile
those statistics differ (a dark tile has a lower mean): the colour/contrast shift between
tiles that diffusers' `enable_tiling` shows. Here every tile uses the canvas statistics,
computed exactly from the tiles: at each GroupNorm every tile reports (count, mean, var)
of its core, and these are merged with Chan's parallel formula in float64, which keeps
the between-tile term sum_i n_i (mu_i - mu)^2 / n that A1111's Tiled VAE drops.

Canvas-wide attention: with the statistics synchronised, the one non-local operation
left is the mid-block self-attention (at latent resolution). With `attention="canvas"`
(the default when synchronised) it is a barrier too: every tile sends the keys and values
of its core, and each tile's queries attend over all of them, exactly as in the full
decode. On the toy VAE at 1024^2 this moves the tiled decode from 28.9 dB to 128 dB PSNR
against the full decode (float noise); the keys and values cost two latent-resolution
activations of the canvas on the compute device.

The statistics of layer k depend on those of every earlier layer (they shape its input),
so tiles cannot each run start to finish. Two exact strategies (`sync_strategy`) give
the same bits:
- "park": each tile runs the VAE as a generator over an explicit stack of live tensors
  (input, skip branch) and stops at every barrier; when all tiles have reported, the
  pooled statistics are sent back and each runs on. One pass. A waiting tile's stack is
  parked on `park` (default "cpu"), so the compute device holds one tile's activations
  plus the output canvas (`offload=True` puts the canvas on the CPU as well), but the
  parked stacks together are about two canvas-sized activations at the current layer:
  host RAM grows with the canvas (34 GB for SD's VAE at 4096^2).
- "recompute": for barrier k every tile runs afresh from its input, applying the final
  statistics of barriers < k without stopping, up to barrier k, reports and is dropped.
  Memory is one tile's on every device; compute is about (barriers / 2 + 1) decodes
  (x6 measured on the toy VAE).
- "auto" (default) parks while `parked_bytes_estimate` fits in a quarter of the park
  device's free memory, else recomputes.
(An iterative alternative, re-running whole passes with the previous pass's statistics,
Jacobi style, was tried and does not converge on random-weight VAEs; it is not offered.)
`sync_groupnorm=False` runs tiles one after another start to finish with their own
statistics and attention: memory bounded by one tile, and diffusers-level tile shifts.

Peak memory of one tile is kept low: GroupNorm and residual adds run in place where the
input is not shared; a GroupNorm + activation feeding a 3x3 conv, and Upsample2D's
nearest upsampling + conv, run in row strips (`_conv_strips`), so their full-size
intermediates never exist; on glibc the freed tile memory is returned with malloc_trim.

Remaining approximations (measured in tests/test_vae.py and benchmarks/vae_memory.py):
- convolutions at a tile's outer halo edge see zeros instead of real neighbours; the
  halo makes this small (random VAE: 78 dB at 64 px, 130 dB at 128 px);
- with `attention="tile"`, or without sync, the mid-block attention sees only its tile +
  halo: this was the whole of the synced error before canvas attention;
- statistics and keys are pooled from tiled activations, so they are the exact pool of
  what tiles compute, equal to the full decode's up to the halo error above.

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


def _fit_tile(length: int, tile: int, overlap: int, wraps: bool) -> int:
    """The smallest tile size (latent units, <= `tile`) that covers `length` with as few
    tiles as `tile` needs. `tile` is a maximum: with 512 px tiles a 1024 px canvas takes 3
    tiles per axis, and 3 tiles of 384 px (overlap 64) cover it with 0.56x the pixels (and
    activations) of 3 tiles of 512 spread over the same canvas."""
    if wraps:
        n = -(-length // (tile - overlap))
        return tile if n <= 2 else min(tile, -(-length // n) + overlap)
    if length <= tile:
        return tile
    n = -(-(length - overlap) // (tile - overlap))
    return min(tile, -(-(length + (n - 1) * overlap) // n))


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
    wraps_y, wraps_x = mode in ("y", "both"), mode in ("x", "both")
    u, o = tile // scale, overlap // scale
    window = (_fit_tile(latent_height, u, o, wraps_y) * scale, _fit_tile(latent_width, u, o, wraps_x) * scale)
    plan = plan_views(latent_height * scale, latent_width * scale, window=window, overlap=overlap, scale=scale,
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


def _group_norm(x: torch.Tensor, mod: nn.GroupNorm, stats: tuple[torch.Tensor, torch.Tensor] | None,
                inplace: bool = False) -> torch.Tensor:
    """GroupNorm of `x` in float32 with given (mean, var) per (sample, group), or with
    x's own statistics when `stats` is None. float32 because fp16 variances overflow.

    `inplace=True` (a float32 `x` that nothing else holds) overwrites `x`: one activation
    less at the peak, which is where a tile's memory goes."""
    w = mod.weight.float() if mod.weight is not None else None
    b = mod.bias.float() if mod.bias is not None else None
    B, C = x.shape[:2]
    if stats is None:
        if not (inplace and x.dtype == torch.float32):
            return F.group_norm(x.float(), mod.num_groups, w, b, mod.eps).to(x.dtype)
        var, mean = torch.var_mean(x.reshape(B, mod.num_groups, -1), dim=-1, correction=0)
    else:
        mean, var = (t.to(device=x.device, dtype=torch.float32) for t in stats)
    rep = C // mod.num_groups
    scale = torch.rsqrt(var + mod.eps).repeat_interleave(rep, dim=1)
    shift = -mean.repeat_interleave(rep, dim=1) * scale
    if w is not None:
        scale, shift = scale * w, shift * w + b
    scale, shift = scale[:, :, None, None], shift[:, :, None, None]
    if inplace and x.dtype == torch.float32:
        return x.mul_(scale).add_(shift)
    return torch.addcmul(shift, x.float(), scale).to(x.dtype)


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

#: (barrier, "stats", count, mean, var) at a GroupNorm, or (barrier, "kv", keys, values) of
#: the tile's core pixels at a self-attention with canvas-wide keys
Message = tuple[Any, ...]
Program = Generator[Message, Any, torch.Tensor]


@dataclass
class _Tile:
    """One tile's state: its stack of live tensors and its geometry."""

    key: tuple[int, int]
    hw: tuple[int, int]  # latent size of the tile input, halo included
    core: tuple[int, int, int, int]  # core box in latent units, relative to the input
    sync: bool
    stack: list[torch.Tensor] = field(default_factory=list)
    layer: int = 0  # barriers passed (GroupNorms, and attentions with canvas keys)
    #: replies already final for barriers 0..len(known)-1 (recompute strategy): those
    #: barriers use them without stopping
    known: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    canvas_attention: bool = False

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        # pop first: the input is then held only by fn's argument, so a module that rebinds
        # it (Upsample2D: interpolate, then conv) frees it before allocating its output
        self.stack.append(fn(self.stack.pop()))

    def move(self, device: torch.device) -> None:
        """Move the stack to `device`; tensors shared between slots move once."""
        moved: dict[int, torch.Tensor] = {}
        self.stack = [moved.setdefault(id(t), t.to(device)) for t in self.stack]


def _norm_stats(T: _Tile, mod: nn.Module) -> Generator[Message, Any, tuple[torch.Tensor, torch.Tensor]]:
    """(mean, var) per (sample, group) for the GroupNorm `mod` at the top of the stack: the
    tile's own (no sync), replayed final ones (recompute), or, in sync mode, the pooled
    canvas statistics received after yielding this tile's core statistics."""
    if not isinstance(mod, nn.GroupNorm):
        raise ConfigError(f"unsupported normalisation layer {type(mod).__name__}; tiled VAE needs GroupNorm "
                          "(a diffusers AutoencoderKL)")
    if not T.sync:
        x = T.stack[-1]
        var, mean = torch.var_mean(x.reshape(x.shape[0], mod.num_groups, -1).float(), dim=-1, correction=0)
        stats = (mean, var)
    elif T.layer < len(T.known):
        stats = T.known[T.layer]
    else:
        x = T.stack[-1]
        r = x.shape[-2] // T.hw[0]  # activation pixels per latent pixel at this depth
        if r < 1 or x.shape[-2:] != (T.hw[0] * r, T.hw[1] * r):
            raise RuntimeError(f"activation {tuple(x.shape)} is not a multiple of the latent tile {T.hw}")
        n, mean, var = _core_stats(x, mod.num_groups, T.core, r)
        del x
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            raise FloatingPointError(f"non-finite activations before GroupNorm {T.layer} in tile {T.key}; the VAE "
                                     "overflowed (fp16?) - run it in float32 or bfloat16")
        stats = yield (T.layer, "stats", n, mean.cpu(), var.cpu())
    T.layer += 1
    return stats


def _norm(T: _Tile, mod: nn.Module, inplace: bool = False) -> Generator[Message, Any, None]:
    """GroupNorm the top of the stack (see `_norm_stats`). `inplace`: the top is not shared
    with another slot, so it may be overwritten."""
    stats = yield from _norm_stats(T, mod)
    T.apply(lambda h: _group_norm(h, mod, stats, inplace))


#: Convolutions over tiles larger than this many values run in row strips (see _conv_strips).
STRIP_MIN_VALUES: int = 1 << 20
STRIPS: int = 8


def _is_plain_3x3(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros")


def _conv_strips(conv: nn.Module, x: torch.Tensor, pre: Callable[[torch.Tensor], torch.Tensor],
                 up: int = 1) -> torch.Tensor:
    """conv(pre(x)), or with up=2 conv(pre(nearest_upsample(x))), computed in row strips.

    `pre` must act per pixel (a GroupNorm with fixed statistics, an activation), so each
    output strip needs only its input rows plus one context row each side (3x3 kernel):
    the full-size intermediate that `conv(pre(x))` would allocate (one activation of the
    tile, the largest single item of a tile's peak memory) exists one strip at a time.
    Same arithmetic per output pixel as the one-shot call.
    """
    B, _, H, W = x.shape
    if not _is_plain_3x3(conv) or x.numel() * up * up < STRIP_MIN_VALUES or H < 2 * STRIPS:
        h = F.interpolate(x, scale_factor=2.0, mode="nearest") if up == 2 else x
        return conv(pre(h))
    Ho, Wo = H * up, W * up
    out = torch.empty(B, conv.out_channels, Ho, Wo, dtype=x.dtype, device=x.device)
    step = -(-H // STRIPS)
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        o0, o1 = r0 * up, r1 * up  # output rows of this strip
        c0, c1 = max(0, o0 - 1), min(Ho, o1 + 1)  # rows the 3x3 kernel reads
        s = x[:, :, c0 // up:(c1 - 1) // up + 1]
        if up == 2:
            s = F.interpolate(s, scale_factor=2.0, mode="nearest")[:, :, c0 - (c0 // 2) * 2:][:, :, :c1 - c0]
        s = pre(s)
        s = F.pad(s, (0, 0, 1 if o0 == 0 else 0, 1 if o1 == Ho else 0))  # the conv's own zero padding
        out[:, :, o0:o1] = F.conv2d(s, conv.weight, conv.bias, padding=(0, 1))
        del s
    return out


def _upsample(T: _Tile, up: nn.Module) -> None:
    """diffusers Upsample2D (nearest x2, then a 3x3 conv), in strips when large."""
    if (getattr(up, "use_conv_transpose", False) or getattr(up, "norm", None) is not None
            or not getattr(up, "interpolate", True) or not getattr(up, "use_conv", False)
            or getattr(up, "name", "conv") != "conv"):
        T.apply(up)
        return
    T.apply(lambda h: _conv_strips(up.conv, h, lambda s: s, up=2))


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
    stats = yield from _norm_stats(T, m.norm1)
    # the input is shared with the skip, so GroupNorm + activation cannot run in place:
    # run them strip by strip into conv1
    T.apply(lambda h: _conv_strips(m.conv1, h, lambda s: _act(m.nonlinearity, _group_norm(s, m.norm1, stats))))
    yield from _norm(T, m.norm2, inplace=True)  # conv1's output: nothing else holds it
    T.apply(lambda h: m.conv2(m.dropout(_act(m.nonlinearity, h))))
    h = T.stack.pop()
    x = T.stack.pop()
    if m.conv_shortcut is not None:
        x = m.conv_shortcut(x)
    h = h.add_(x)  # conv2's output is ours: add the skip in place
    del x
    T.stack.append(h if m.output_scale_factor == 1 else h.div_(m.output_scale_factor))


#: queries per scaled_dot_product_attention call against canvas-wide keys (bounds the
#: score matrix where no fused kernel is used)
ATTENTION_QUERY_CHUNK: int = 1024


def _attention(T: _Tile, a: nn.Module) -> Generator[Message, Any, None]:
    """diffusers Attention (AttnProcessor2_0 maths). Queries are the tile's pixels (halo
    included); keys and values are the tile's own pixels, or with `T.canvas_attention`
    those of the whole canvas: every tile sends the keys / values of its core (each
    canvas pixel once) and attends over all of them, as the full decode does."""
    if getattr(a, "spatial_norm", None) is not None or getattr(a, "norm_cross", None):
        raise ConfigError("unsupported attention block (spatial norm / cross-attention norm) in this VAE")
    T.stack.append(T.stack[-1])  # residual
    if a.group_norm is not None:
        yield from _norm(T, a.group_norm)
    h = T.stack.pop()
    res = T.stack.pop()
    B, C, H, W = h.shape
    heads = a.heads
    split = lambda t: t.view(B, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
    if T.canvas_attention:
        if T.layer < len(T.known):
            k, v = T.known[T.layer]
        else:
            r = H // T.hw[0]  # activation pixels per latent pixel (1 in SD's VAEs)
            y0, y1, x0, x1 = (c * r for c in T.core)
            core = h[:, :, y0:y1, x0:x1].reshape(B, C, -1).transpose(1, 2)
            k, v = yield (T.layer, "kv", split(a.to_k(core)), split(a.to_v(core)))
            del core
        T.layer += 1
        q = split(a.to_q(h.reshape(B, C, H * W).transpose(1, 2)))
        del h
        k, v = k.to(q.device, q.dtype), v.to(q.device, q.dtype)
        o = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + ATTENTION_QUERY_CHUNK], k, v, scale=a.scale)
                       for i in range(0, q.shape[2], ATTENTION_QUERY_CHUNK)], dim=2)
    else:
        h = h.reshape(B, C, H * W).transpose(1, 2)
        q, k, v = (split(f(h)) for f in (a.to_q, a.to_k, a.to_v))
        del h
        o = F.scaled_dot_product_attention(q, k, v, scale=a.scale)
    del k, v
    d = q.shape[-1]
    o = o.transpose(1, 2).reshape(B, -1, heads * d).to(q.dtype)
    o = a.to_out[1](a.to_out[0](o))
    o = o.transpose(-1, -2).reshape(B, C, H, W)
    if a.residual_connection:
        o = o.add_(res)
    del res
    T.stack.append(o if a.rescale_output_factor == 1 else o.div_(a.rescale_output_factor))


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
            _upsample(T, up)
    yield from _norm(T, dec.conv_norm_out, inplace=True)
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
    yield from _norm(T, enc.conv_norm_out, inplace=True)
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
                circular: Any, kernel: Any, sync_groupnorm: Any, park: Any, pixel_input: bool,
                sync_strategy: Any = "auto", attention: Any = "canvas") -> tuple[int, Kernel, Any, torch.device]:
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
    check_choice("sync_strategy", sync_strategy, SYNC_STRATEGIES)
    check_choice("attention", attention, ("canvas", "tile"))
    try:
        park_dev = torch.device(park)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(f"park must be a device such as 'cpu', got {park!r}") from exc
    return scale, get_kernel(kernel), ("x" if circular is True else circular), park_dev


def _load_malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op elsewhere.

    Why: tile activations are tens of MB; glibc serves them from mmap at first, but after
    the first free it raises its mmap threshold (up to 32 MB) and serves later ones from
    the heap, which fragments across tiles of slightly different sizes and is not given
    back. Measured on the toy VAE at 1024^2 (tile 512): peak RSS +333 MB without a trim
    between tiles, +242 MB with it."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def release() -> None:
        trim(0)

    return release


_malloc_trim = _load_malloc_trim()


def _reply(msgs: list[Message], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What every tile receives at one barrier: the canvas GroupNorm statistics pooled
    with Chan's formula in tile order (deterministic), or the canvas keys and values (the
    tiles' core keys / values, concatenated: each canvas pixel once)."""
    layer, kind = msgs[0][0], msgs[0][1]
    if any(m[0] != layer or m[1] != kind for m in msgs):
        raise RuntimeError("tiles reached different barriers")
    if kind == "kv":
        return (torch.cat([m[2].to(device) for m in msgs], dim=2), torch.cat([m[3].to(device) for m in msgs], dim=2))
    pooled = GroupStats()
    for m in msgs:
        pooled.merge(*m[2:])
    return pooled.mean.float(), pooled.var.float()


SyncStrategy = Literal["auto", "park", "recompute"]
SYNC_STRATEGIES: tuple[str, ...] = ("auto", "park", "recompute")
#: "auto" parks while the parked activations need at most this fraction of the free memory
#: of the park device (host MemAvailable, or free CUDA memory); above it, it recomputes.
PARK_BUDGET_FRACTION: float = 0.25


def parked_bytes_estimate(vae: Any, plan: VAETilePlan, *, decode: bool, element_size: int = 4) -> int:
    """Upper estimate of what the "park" strategy holds at its worst barrier: two
    activations (hidden state + skip) of every tile, halos included, at the layer with the
    most values per latent pixel (SD's decoder: 256 channels at full resolution, 16384
    values per latent pixel, so about 34 GB at 4096^2)."""
    chans = list(vae.config.block_out_channels)
    scale = vae_scale_factor(vae)
    if decode:
        rev = chans[::-1]
        per_px = max(max(rev[max(i - 1, 0)], rev[i]) * 4**i for i in range(len(rev)))
    else:
        per_px = max(max(chans[max(i - 1, 0)], chans[i]) * (scale // 2**i) ** 2 for i in range(len(chans)))
    tile_px = sum(len(plan.y.input_indices(i)) * len(plan.x.input_indices(j)) for i, j in plan.tiles())
    # + the canvas keys and values of the mid-block attention (latent resolution)
    kv = 2 * chans[-1] * plan.y.length * plan.x.length
    return (2 * per_px * tile_px + kv) * element_size


def _free_bytes(device: torch.device) -> int:
    """Free memory of `device`: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def resolve_sync_strategy(strategy: str, vae: Any, plan: VAETilePlan, *, decode: bool, park: torch.device) -> str:
    """"park" or "recompute" for `strategy` ("auto" decides by `parked_bytes_estimate`)."""
    if strategy != "auto":
        return strategy
    size = next(vae.parameters()).element_size()
    need = parked_bytes_estimate(vae, plan, decode=decode, element_size=size)
    return "park" if need <= PARK_BUDGET_FRACTION * _free_bytes(park) else "recompute"


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
    strategy: str = "auto",
    canvas_attention: bool = True,
) -> torch.Tensor:
    """Run `program` over every tile of `plan` and blend the outputs into one canvas.

    `x` holds latents or pixels (`in_unit` samples per latent pixel); tile outputs have
    `out_unit` samples per latent pixel. No sync: tiles run one after another, each
    from input to output. Sync, strategy "park": tiles advance in lock-step from one
    GroupNorm to the next; between barriers every waiting tile's stack is parked on
    `park`, so the compute device holds one tile's activations. Sync, strategy
    "recompute": for GroupNorm k every tile is run afresh from its input, with the pooled
    statistics of layers < k already known, up to layer k; nothing is kept between
    tiles, so memory is one tile's on every device, at the price of re-running prefixes.
    "auto" picks one of the two (`resolve_sync_strategy`).
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
    if sync:
        strategy = resolve_sync_strategy(strategy, vae, plan, decode=program is _decoder_program, park=park)
    tile_runs = 0

    def start(i: int, j: int, known: list | None = None) -> tuple[_Tile, Program]:
        ry, rx = plan.y.input_indices(i), plan.x.input_indices(j)
        iy = np.repeat(ry * in_unit, in_unit) + np.tile(np.arange(in_unit), len(ry))
        ix = np.repeat(rx * in_unit, in_unit) + np.tile(np.arange(in_unit), len(rx))
        nonlocal tile_runs
        tile_runs += 1
        # modulo-indexed gather: one code path for clipped and wrapping halos
        xt = x.index_select(2, torch.as_tensor(iy, device=x.device)).index_select(
            3, torch.as_tensor(ix, device=x.device))
        T = _Tile((i, j), (len(ry), len(rx)), plan.y.core[i] + plan.x.core[j], sync,
                  [xt.to(device=device, dtype=dtype)], known=known or [], canvas_attention=sync and canvas_attention)
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

    barriers = attn_barriers = 0
    host = device.type == "cpu" or park.type == "cpu"  # give freed tile memory back to the OS
    with torch.inference_mode():
        if sync and strategy == "recompute":
            known: list[tuple[torch.Tensor, torch.Tensor]] = []
            finished = False
            while not finished:
                layer = len(known)
                msgs = []
                for n_done, (i, j) in enumerate(plan.tiles()):
                    T, gen = start(i, j, known)  # replays layers < len(known) with final statistics
                    try:
                        msg = next(gen)
                    except StopIteration as done:
                        if n_done == 0:
                            finished = True
                        elif not finished:
                            raise RuntimeError("tiles finished at different GroupNorm layers") from None
                        finish(T, done.value)
                        del T, gen
                        if host:
                            _malloc_trim()
                        continue
                    if finished or msg[0] != layer:
                        raise RuntimeError("tiles reached different GroupNorm layers")
                    gen.close()
                    msgs.append(msg)
                    del T, gen, msg
                    if host:
                        _malloc_trim()
                if not finished:
                    known.append(_reply(msgs, device))
                    barriers += 1
                    attn_barriers += msgs[0][1] == "kv"
        elif not sync:
            for i, j in plan.tiles():
                T, gen = start(i, j)
                try:
                    next(gen)
                except StopIteration as done:
                    finish(T, done.value)
                else:
                    raise RuntimeError("tile program stopped at a GroupNorm barrier in no-sync mode")
                del T, gen
                if host:
                    _malloc_trim()
        else:
            running: list[tuple[_Tile, Program]] = []
            msgs: list[Message] = []
            for i, j in plan.tiles():
                T, gen = start(i, j)
                msgs.append(next(gen))
                T.move(park)
                running.append((T, gen))
            while running:
                stats = _reply(msgs, device)
                barriers += 1
                attn_barriers += msgs[0][1] == "kv"
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
                if host:
                    _malloc_trim()
    if report is not None:
        report.update(n_tiles=plan.n_tiles, synced=sync, groupnorm_barriers=barriers - attn_barriers,
                      canvas_attention=bool(attn_barriers),
                      strategy=strategy if sync else "none", tile_runs=tile_runs)
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
    sync_strategy: SyncStrategy = "auto",
    attention: Literal["canvas", "tile"] = "canvas",
    report: dict | None = None,
) -> torch.Tensor:
    """Decode `latents` tile by tile: same input and output as `vae.decode(latents).sample`.

    `latents` are unscaled (already divided by `vae.config.scaling_factor`), shape
    (B, latent_channels, h, w). `tile`, `overlap`, `halo` are pixels, multiples of the VAE
    scale factor; `tile` is the largest tile body (the fewest tiles that cover are used,
    shrunk to fit) and the VAE sees up to `tile + 2 * halo` px per tile; `halo` defaults to
    DEFAULT_DECODE_HALO_PX. `circular` is False, True
    (= "x"), "x", "y" or "both". `offload=True` keeps the output canvas on the CPU; `park`
    is where tiles waiting at a GroupNorm barrier keep their activations (sync only).
    `sync_strategy`: "park" (one pass; all tiles' activations parked on `park`, which grows
    with the canvas), "recompute" (memory of one tile on every device; each tile re-runs
    up to every GroupNorm, several times the compute) or "auto" (park while that fits in a
    quarter of the park device's free memory). Both give the same image.
    `attention` (sync only): "canvas" gives the mid-block self-attention the keys and values
    of the whole canvas, as the full decode has (the canvas keys / values, two latent-sized
    activations, stay on the compute device); "tile" lets it attend within its tile + halo
    (bounded, and the main remaining error: see docs/vae.md).
    Returns a float32 (B, out_channels, 8h, 8w) tensor (blending is done in float32).
    `report`, if given, is filled with n_tiles, synced, groupnorm_barriers, strategy, tile_runs.
    """
    halo = DEFAULT_DECODE_HALO_PX if halo is None else halo
    scale, k, circ, park_dev = _check_args(
        vae, latents, what="latents", channels_key="latent_channels", tile=tile, overlap=overlap, halo=halo,
        circular=circular, kernel=kernel, sync_groupnorm=sync_groupnorm, park=park, pixel_input=False,
        sync_strategy=sync_strategy, attention=attention)
    plan = plan_vae_tiles(latents.shape[2], latents.shape[3], tile=tile, overlap=overlap, halo=halo,
                          scale=scale, circular=circ)
    return _run_tiled(
        vae=vae, program=_decoder_program, x=latents, plan=plan, in_unit=1, out_unit=scale,
        out_channels=vae.config.out_channels, kernel=k, blend_overlap=overlap, sync=sync_groupnorm,
        park=park_dev, out_device=torch.device("cpu") if offload else None, report=report,
        strategy=sync_strategy, canvas_attention=attention == "canvas",
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
    sync_strategy: SyncStrategy = "auto",
    attention: Literal["canvas", "tile"] = "canvas",
    report: dict | None = None,
) -> torch.Tensor:
    """Encode `images` tile by tile: returns `vae.encode(images).latent_dist.mode()`
    (`sample=True`: `.sample(generator)`), unscaled (multiply by scaling_factor yourself).

    `images` in [-1, 1], shape (B, in_channels, H, W) with H, W multiples of the scale
    factor; `tile`, `overlap`, `halo` in pixels (halo default DEFAULT_ENCODE_HALO_PX).
    The posterior moments (mean, log-variance) are blended, then mode/sample is taken.
    `sync_strategy`, `attention`, `park`, `offload`, `report`: as in `tiled_decode`.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    halo = DEFAULT_ENCODE_HALO_PX if halo is None else halo
    scale, k, circ, park_dev = _check_args(
        vae, images, what="images", channels_key="in_channels", tile=tile, overlap=overlap, halo=halo,
        circular=circular, kernel=kernel, sync_groupnorm=sync_groupnorm, park=park, pixel_input=True,
        sync_strategy=sync_strategy, attention=attention)
    if not isinstance(sample, bool):
        raise ConfigError(f"sample must be True (posterior sample) or False (posterior mode), got {sample!r}")
    plan = plan_vae_tiles(images.shape[2] // scale, images.shape[3] // scale, tile=tile, overlap=overlap,
                          halo=halo, scale=scale, circular=circ)
    moments = _run_tiled(
        vae=vae, program=_encoder_program, x=images, plan=plan, in_unit=scale, out_unit=1,
        out_channels=2 * vae.config.latent_channels, kernel=k, blend_overlap=overlap // scale,
        sync=sync_groupnorm, park=park_dev, out_device=torch.device("cpu") if offload else None, report=report,
        strategy=sync_strategy, canvas_attention=attention == "canvas",
    )
    dist = DiagonalGaussianDistribution(moments)
    return dist.sample(generator) if sample else dist.mode()


__all__ = [
    "AxisTiles", "GroupStats", "VAETilePlan", "blend_weight_sum", "parked_bytes_estimate", "plan_vae_tiles",
    "resolve_sync_strategy", "tiled_decode", "tiled_encode", "vae_scale_factor", "DEFAULT_DECODE_HALO_PX",
    "DEFAULT_ENCODE_HALO_PX", "SYNC_STRATEGIES",
]
