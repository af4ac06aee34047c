"""Tiled VAE: decode and encode any canvas in bounded memory, GroupNorm synchronised.

`tiled_decode(vae, latents)` takes what `vae.decode` takes (latents already divided by
`vae.config.scaling_factor`) and returns what `vae.decode(latents).sample` returns: an
image tensor in about [-1, 1]. `tiled_encode(vae, images)` takes what `vae.encode` takes
and returns `vae.encode(images).latent_dist.mode()` (or `.sample()`), unscaled.

Two module layouts run on the same engine (`vae_layout` reads them; ACCEPTED_VAES):
- diffusers' AutoencoderKL (SD 1/2, SDXL, SD3 / FLUX VAEs; scale factor 2 ** (blocks - 1));
- the original LDM layout (CompVis latent-diffusion, Stability's generative-models, and
  ComfyUI's `VAE.first_stage_model`): an autoencoder with `.encoder` / `.decoder`
  (`down[i].block[j]`, `down[i].downsample`, `mid.block_1 / attn_1 / block_2`,
  `up[i].block[j]`, `up[i].upsample`, `norm_out`, `conv_out`) and optional `quant_conv` /
  `post_quant_conv`, or a bare LDM Decoder / Encoder. LDM's AttnBlock (one head, 1x1 conv
  q / k / v / proj_out) and its Decoder options give_pre_end and tanh_out are followed.
Each layout is read once into layout-neutral resnet / attention specs and a flat list of
steps; the barriers, GroupNorm sync, canvas attention and strategies exist once.

Geometry (all user sizes in pixels, planned on the latent grid):
- `tile` is a maximum: each axis gets the fewest tiles of at most `tile` px that cover it
  with `overlap`, shrunk to the smallest size that still covers (1024 px at tile 512,
  overlap 64: 3 tiles of 384 px, not 3 of 512 with 256 px overlaps), then spread evenly
  by `mdtools.plan_views`.
- Each tile carries a halo of extra context (`halo` px, cropped after the network): a
  convolution at a tile edge sees zero padding instead of its real neighbours, and each
  further convolution carries that error one kernel reach deeper. On a circular axis the
  halo wraps (modulo indices), so a 360-degree panorama's two ends meet as real
  neighbours. On a non-circular axis it is clipped at the canvas edge, where the full
  decode sees zero padding too.
- Halo refresh: whenever every tile is parked at the same barrier (a checkpoint, below),
  each tile's non-core pixels are overwritten with the values the tile owning them
  computed in its core (`_refresh_halos`): the edge error is erased and the next round
  starts exact. So a halo need only be as deep as the padding error can travel between
  two refreshes: `halo=None` (default, synchronised runs) takes exactly that
  (`_exact_halo`, from each convolution's reach): 16 px for SD's decoder when parking at
  every barrier (a resnet's conv2, then the upsampling conv, at most), its whole
  receptive field (144 px) when replaying from the input every time. The run then equals
  the full decode to float noise; `report["exact"]` says whether a given halo is enough.
- Tile outputs are blended over the overlap with a kernel of `mdtools.KERNELS`; weights
  are normalised per axis (the grid is a product of rows and columns and kernels are
  separable), so the blended weights sum to exactly 1 at every output pixel without a
  canvas-sized weight buffer. Exact tiles agree, so an exact run needs no overlap:
  `overlap=None` is 0 px there and DEFAULT_OVERLAP_PX (64) otherwise.
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
so tiles cannot each run start to finish. A tile's whole state is explicit (next step,
stack of live tensors), so it can stop at a barrier, be parked (moved to `park`, default
"cpu"), copied, resumed or dropped and replayed. Round k of the driver brings every tile
to barrier k; then the pooled reply k is final. The strategies (`sync_strategy`) differ
in which states they keep; with their exact halos all equal the full decode to float
noise (and with one halo exact for all of them they gave the same bits on CPU, tested):
- "park": every tile is parked at every barrier. One pass (SD's decoder: 1.15x the
  multiply-adds of one untiled decode at 1024^2 with 16 px halos); the compute device
  holds one tile's activations plus the output canvas (`offload=True` puts the canvas on
  the CPU as well), but the parked states together are about two canvas-sized activations
  at the current layer: host RAM grows with the canvas (SD's VAE: 1.1 GiB at 1024^2,
  18 GiB at 4096^2 by `schedule_estimate`).
- "recompute": nothing is parked; for barrier k every tile runs afresh from its input,
  applying the final replies of barriers < k without stopping. Memory is one tile's on
  every device (plus the canvas keys / values); compute is many decodes (SD's VAE, exact
  144 px halos: 59x one untiled decode at 1024^2).
- "auto" (default): checkpointing between the two. Tiles are parked at every barrier
  whose parked states (plus the canvas keys / values still needed) fit
  `park_budget_bytes` (default a quarter of the park device's free memory,
  PARK_BUDGET_FRACTION); a barrier that does not fit is reached by replaying a copy of
  each tile from its latest parked state, not from its input. Only each tile's latest
  state is kept, so the parked memory never exceeds the budget; with room for every
  barrier it is "park", with room for none "recompute". Keys / values of an attention
  are freed once tiles are parked past it.
- `park_dtype="bfloat16"` / `"float16"` (opt-in) parks states in half precision: half the
  parked bytes, but no longer float-exact, and no longer identical across strategies.
- `park="disk"` (or "disk:<dir>") parks out of core: parked states and the canvas keys /
  values go to files in a private temporary directory (`_DiskStore`), so the process holds
  one tile's working set plus the output, at any canvas size. Halos are refreshed from
  small edge files each owner writes when it is parked (the same values as
  `_refresh_halos`), and the canvas attention streams the keys / values block by block
  with an online softmax: float noise against the in-memory attention, not the same bits.
(An iterative alternative, re-running whole passes with the previous pass's statistics,
Jacobi style, was tried and does not converge on random-weight VAEs; it is not offered.)
`sync_groupnorm=False` runs tiles one after another start to finish with their own
statistics and attention: memory bounded by one tile, and diffusers-level tile shifts.

Peak memory of one tile is kept low: GroupNorm and residual adds run in place where the
input is not shared; a GroupNorm + activation feeding a 3x3 conv, and Upsample2D's
nearest upsampling + conv, run in row strips (`_conv_strips`), so their full-size
intermediates never exist; on glibc the freed tile memory is returned with malloc_trim.

Remaining approximations (measured in tests/test_vae.py and benchmarks/vae_fast.py):
- none with the default halo on a synchronised run with canvas attention: float noise
  (SD's random-weight decoder at 1024^2: see docs/vae.md). A halo given below
  `report["exact_halo_px"]` leaves zero-padding error at tile edges;
- with `attention="tile"`, or without sync, the mid-block attention sees only its tile +
  halo, and without sync every tile normalises with its own statistics (default halo
  DEFAULT_DECODE_HALO_PX / DEFAULT_ENCODE_HALO_PX, blended over DEFAULT_OVERLAP_PX).

Non-finite values (fp16 overflow, the "black squares" of large fp16 decodes) raise a
FloatingPointError naming the tile and layer; GroupNorm is always computed in float32.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check_choice, check_multiple
from .kernels import Kernel, get_kernel
from .plan import CIRCULAR_MODES, plan_views

CircularArg = Union[bool, Literal["x"], Literal["y"], Literal["both"]]

#: Default halo in pixels of runs that cannot be exact (no sync, or attention within
#: tiles); exact runs take the halo their checkpoints need (`_exact_halo`). The decoder's
#: receptive field is wide; 8 latent px (64 px) brings tile errors near the blend floor
#: (see benchmarks/vae_memory.py). The encoder halo follows A1111's 32 px.
DEFAULT_DECODE_HALO_PX: int = 64
DEFAULT_ENCODE_HALO_PX: int = 32
#: Default overlap (px) of tiles that are blended: without sync, or with attention in tiles.
DEFAULT_OVERLAP_PX: int = 64


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
    # .to(x.device): layouts that keep weights elsewhere and cast them per call (ComfyUI's
    # low-VRAM modes) still normalise on the activation's device
    w = mod.weight.to(device=x.device, dtype=torch.float32) if mod.weight is not None else None
    b = mod.bias.to(device=x.device, dtype=torch.float32) if mod.bias is not None else None
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
# The VAE as a flat program of steps that stops at every GroupNorm
# --------------------------------------------------------------------------------------
#
# A tile's whole state is (pc, stack, layer): the index of its next step, its stack of
# live tensors (input, skip branches) and the number of barriers passed. A step may
# begin with one barrier (a GroupNorm, or a self-attention with canvas-wide keys); there
# the tile stops, reports its core statistics (or keys / values) and, once every tile has
# reported, runs on with the pooled canvas reply. Because the state is explicit, a tile
# stopped at a barrier can be parked (moved off the compute device), copied (snapshot),
# resumed later or dropped and replayed from an earlier snapshot: every strategy of
# `_run_tiled` is a different choice of which states to keep, over the same steps (with
# one exact halo they gave the same bits on CPU, tested; a GPU may pick convolution
# algorithms by tile shape, and the halo refresh feeds a neighbour's values where another
# strategy keeps the tile's own, so there they agree to float noise).
#
# The steps come from a layout reader: `_diffusers_*` for diffusers' AutoencoderKL
# (ResnetBlock2D, Attention with AttnProcessor2_0 maths, UNetMidBlock2D,
# Up/DownEncoderBlock2D; diffusers 0.30 - 0.42) and `_ldm_*` for the original
# CompVis / Stability LDM layout that ComfyUI keeps (ResnetBlock, AttnBlock, Encoder,
# Decoder in ldm/modules/diffusionmodules/model.py). Both read the modules into the
# layout-neutral `_ResnetSpec` / `_AttnSpec`, so the barrier, GroupNorm-sync and
# canvas-attention machinery below exists once.

#: (barrier, "stats", count, mean, var) at a GroupNorm, or (barrier, "kv", keys, values) of
#: the tile's core pixels at a self-attention with canvas-wide keys
Message = tuple[Any, ...]


@dataclass
class _Tile:
    """One tile's state: its stack of live tensors, program counter and geometry."""

    key: tuple[int, int]
    hw: tuple[int, int]  # latent size of the tile input, halo included
    core: tuple[int, int, int, int]  # core box in latent units, relative to the input
    sync: bool
    stack: list[torch.Tensor] = field(default_factory=list)
    layer: int = 0  # barriers passed (GroupNorms, and attentions with canvas keys)
    #: replies of barriers 0..len(known)-1, shared by all tiles: those barriers are
    #: passed without stopping (a resumed or replayed tile)
    known: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    canvas_attention: bool = False
    pc: int = 0  # index of the next step

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        # pop first: the input is then held only by fn's argument, so a module that rebinds
        # it (Upsample2D: interpolate, then conv) frees it before allocating its output
        self.stack.append(fn(self.stack.pop()))

    def move(self, device: torch.device, dtype: torch.dtype | None = None, copy: bool = False) -> None:
        """Move (or with `copy`, copy) the stack to `device` / `dtype`; tensors shared
        between slots (a skip branch and its input) stay shared."""
        moved: dict[int, torch.Tensor] = {}
        for t in self.stack:
            if id(t) not in moved:
                moved[id(t)] = t.to(device=device, dtype=dtype or t.dtype, copy=copy)
        self.stack = [moved[id(t)] for t in self.stack]

    def snapshot(self, device: torch.device, dtype: torch.dtype | None, copy_top: bool = True) -> _Tile:
        """A state to run on `device` that leaves this one as it is (it will be resumed
        again). Steps write only into a stack top they made, or into the top they start
        with when `_Step.mutates_top`: so only that top needs a copy (`copy_top`); the
        other tensors are shared (moved or cast copies when the device or dtype differ)."""
        twin = replace(self, stack=list(self.stack))
        twin.move(device, dtype)
        if copy_top and twin.stack:
            top = twin.stack[-1]
            fresh = top if top is not self.stack[-1] else top.clone()
            twin.stack = [fresh if t is top else t for t in twin.stack]
        return twin

    def nbytes(self) -> int:
        seen: dict[int, int] = {id(t): t.numel() * t.element_size() for t in self.stack}
        return sum(seen.values())


@dataclass(frozen=True)
class _Step:
    """One step of a tile program. kind "plain": no barrier; "stats": begins with the
    GroupNorm `mod` of the stack top; "kv": begins with self-attention `mod` (an
    `_AttnSpec`) over the stack top. `body(T, reply)` does the rest, with the reply of the
    barrier (statistics, canvas keys / values, or None: attend within the tile)."""

    kind: str
    body: Callable[[_Tile, Any], None]
    mod: Any = None
    #: whether `body` writes into the stack top it starts with (an in-place GroupNorm).
    #: No step writes into a stack entry below the top, nor into a top it did not make
    #: unless flagged here: so a replayed state shares every tensor with its checkpoint
    #: except a flagged top (`_Tile.snapshot`).
    mutates_top: bool = False


@dataclass(frozen=True)
class _ResnetSpec:
    """A VAE resnet block (no time embedding), whatever its layout:
    out = (shortcut(x) + conv2(drop(act(norm2(conv1(act(norm1(x))))))) / out_scale."""

    norm1: nn.GroupNorm
    conv1: nn.Module
    norm2: nn.GroupNorm
    conv2: nn.Module
    shortcut: nn.Module | None
    act: Callable[[torch.Tensor], torch.Tensor]  # may work in place: gets fresh tensors only
    dropout: nn.Module | None
    out_scale: float


@dataclass(frozen=True)
class _AttnSpec:
    """A spatial self-attention block: out = (x + proj(softmax(q k^T * scale) v)) / rescale
    with q, k, v computed from norm(x). q / k / v map a (B, C, h, w) activation to
    (B, heads, h*w, d); `out` maps the attention output back to (B, C, H, W), projected."""

    norm: nn.GroupNorm | None
    heads: int
    scale: float | None  # None: 1 / sqrt(d), scaled_dot_product_attention's default
    q: Callable[[torch.Tensor], torch.Tensor]
    k: Callable[[torch.Tensor], torch.Tensor]
    v: Callable[[torch.Tensor], torch.Tensor]
    out: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor]
    residual: bool
    rescale: float


def _check_group_norm(mod: Any, where: str) -> nn.GroupNorm:
    if not isinstance(mod, nn.GroupNorm):
        raise ConfigError(f"unsupported normalisation layer {type(mod).__name__} at {where}; the tiled VAE needs "
                          "GroupNorm (a diffusers AutoencoderKL or an LDM-layout autoencoder)")
    return mod


def _own_stats(x: torch.Tensor, mod: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(x.reshape(x.shape[0], mod.num_groups, -1).float(), dim=-1, correction=0)
    return mean, var


def _stats_message(T: _Tile, mod: nn.GroupNorm) -> Message:
    """This tile's (count, mean, var) per (sample, group) over its core, at barrier T.layer."""
    x = T.stack[-1]
    r = x.shape[-2] // T.hw[0]  # activation pixels per latent pixel at this depth
    if r < 1 or x.shape[-2:] != (T.hw[0] * r, T.hw[1] * r):
        raise RuntimeError(f"activation {tuple(x.shape)} is not a multiple of the latent tile {T.hw}")
    n, mean, var = _core_stats(x, mod.num_groups, T.core, r)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        raise FloatingPointError(f"non-finite activations before GroupNorm {T.layer} in tile {T.key}; the VAE "
                                 "overflowed (fp16?) - run it in float32 or bfloat16")
    return (T.layer, "stats", n, mean.cpu(), var.cpu())


def _kv_message(T: _Tile, a: _AttnSpec) -> Message:
    """The keys and values of this tile's core pixels (each canvas pixel in one core)."""
    h = T.stack[-1]
    r = h.shape[-2] // T.hw[0]  # activation pixels per latent pixel (1 in SD's VAEs)
    y0, y1, x0, x1 = (c * r for c in T.core)
    core = h[:, :, y0:y1, x0:x1]
    return (T.layer, "kv", a.k(core), a.v(core))


def _advance(T: _Tile, steps: tuple[_Step, ...]) -> Message | None:
    """Run T from step T.pc until a barrier whose reply is not known yet (returns the
    message to send; T stays before that step) or to the end (returns None; the output
    is the stack top). Barriers with a known reply (T.layer < len(T.known)) are passed.
    Without sync, every GroupNorm uses the tile's own statistics and attention stays in
    the tile."""
    while T.pc < len(steps):
        st = steps[T.pc]
        reply = None
        if st.kind == "stats":
            if not T.sync:
                reply = _own_stats(T.stack[-1], st.mod)
            elif T.layer < len(T.known):
                reply = T.known[T.layer]
                T.layer += 1
            else:
                return _stats_message(T, st.mod)
        elif st.kind == "kv" and T.sync and T.canvas_attention:
            if T.layer < len(T.known):
                reply = T.known[T.layer]
                T.layer += 1
            else:
                return _kv_message(T, st.mod)
        st.body(T, reply)
        T.pc += 1
    return None


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
    Each strip goes through the module itself (so conv subclasses that cast their weights
    per call work); its first and last output rows, computed against the module's zero
    padding instead of their real neighbours, are dropped unless they are canvas rows.
    """
    B, _, H, W = x.shape
    if not _is_plain_3x3(conv) or x.numel() * up * up < STRIP_MIN_VALUES or H < 2 * STRIPS:
        h = F.interpolate(x, scale_factor=2.0, mode="nearest") if up == 2 else x
        return conv(pre(h))
    Ho, Wo = H * up, W * up
    out = None
    step = -(-H // STRIPS)
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        o0, o1 = r0 * up, r1 * up  # output rows of this strip
        c0, c1 = max(0, o0 - 1), min(Ho, o1 + 1)  # rows the 3x3 kernel reads
        s = x[:, :, c0 // up:(c1 - 1) // up + 1]
        if up == 2:
            s = F.interpolate(s, scale_factor=2.0, mode="nearest")[:, :, c0 - (c0 // 2) * 2:][:, :, :c1 - c0]
        s = conv(pre(s))[:, :, o0 - c0:o1 - c0]
        if out is None:
            out = torch.empty(B, s.shape[1], Ho, Wo, dtype=s.dtype, device=s.device)
        out[:, :, o0:o1] = s
        del s
    return out


def _silu(h: torch.Tensor) -> torch.Tensor:
    return F.silu(h, inplace=True)


def _act(fn: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation after a GroupNorm. SiLU runs in place: the GroupNorm output is a
    fresh tensor nothing else holds, so this saves one activation of peak memory."""
    return _silu if isinstance(fn, nn.SiLU) else fn


def _plain(fn: Callable[[torch.Tensor], torch.Tensor]) -> _Step:
    """A step without barrier that maps the stack top."""
    return _Step("plain", lambda T, _: T.apply(fn))


def _upsample_step(conv: nn.Module | None) -> _Step:
    """Nearest x2 upsampling, then `conv` (3x3, in strips when large) unless None."""
    if conv is None:
        return _plain(lambda h: F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _plain(lambda h: _conv_strips(conv, h, lambda s: s, up=2))


def _resnet_steps(r: _ResnetSpec) -> list[_Step]:
    def first(T: _Tile, stats: Any) -> None:
        # the input stays on the stack as the skip branch, so GroupNorm + activation cannot
        # run in place: they run strip by strip into conv1
        x = T.stack[-1]
        h = _conv_strips(r.conv1, x, lambda s: r.act(_group_norm(s, r.norm1, stats)))
        if r.shortcut is not None:
            # the shortcut now rather than after conv2 (same op, same input, same bits): a
            # tile waiting at norm2 then holds the skip with the *output* channels. In SD's
            # decoder (256 -> 128 channels at full resolution) that cuts the largest parked
            # state, of the whole run, by a third.
            del x
            T.stack.append(r.shortcut(T.stack.pop()))
        T.stack.append(h)

    def second(T: _Tile, stats: Any) -> None:
        h = r.act(_group_norm(T.stack.pop(), r.norm2, stats, inplace=True))  # conv1's output (mutates_top)
        h = r.conv2(r.dropout(h) if r.dropout is not None else h)
        x = T.stack.pop()  # the skip branch, shortcut applied
        h = h.add_(x)  # conv2's output is ours: add the skip in place
        del x
        T.stack.append(h if r.out_scale == 1 else h.div_(r.out_scale))

    return [_Step("stats", first, r.norm1), _Step("stats", second, r.norm2, mutates_top=True)]


#: queries per scaled_dot_product_attention call against canvas-wide keys (bounds the
#: score matrix where no fused kernel is used)
ATTENTION_QUERY_CHUNK: int = 1024


def _attention_steps(a: _AttnSpec) -> list[_Step]:
    """Queries are the tile's pixels (halo included); keys and values are the tile's own
    pixels, or, as a canvas barrier, those of every tile's core: each canvas pixel once,
    exactly as in the full decode."""
    steps = []
    if a.norm is not None:
        # not in place: the input stays below as the residual
        steps.append(_Step("stats", lambda T, stats: T.stack.append(_group_norm(T.stack[-1], a.norm, stats)), a.norm))
    else:
        steps.append(_Step("plain", lambda T, _: T.stack.append(T.stack[-1])))

    def attend(T: _Tile, kv: Any) -> None:
        h = T.stack.pop()
        res = T.stack.pop()
        shape = tuple(h.shape)
        q = a.q(h)
        if isinstance(kv, _DiskKV):  # out of core: stream the blocks
            del h
            with contextlib.closing(kv.read(q.device)) as blocks:
                o = _attend_blocks(q, blocks, a.scale)
        elif kv is not None:
            del h
            k, v = (t.to(q.device, q.dtype) for t in kv)
            o = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + ATTENTION_QUERY_CHUNK], k, v, scale=a.scale)
                           for i in range(0, q.shape[2], ATTENTION_QUERY_CHUNK)], dim=2)
            del k, v
        else:
            k, v = a.k(h), a.v(h)
            del h
            o = F.scaled_dot_product_attention(q, k, v, scale=a.scale)
            del k, v
        o = a.out(o.to(q.dtype), shape)
        if a.residual:
            o = o.add_(res)
        del res
        T.stack.append(o if a.rescale == 1 else o.div_(a.rescale))

    steps.append(_Step("kv", attend, a))
    return steps


def _final_steps(norm: nn.GroupNorm, act: Callable[[torch.Tensor], torch.Tensor], conv: nn.Module,
                 tanh: bool = False) -> list[_Step]:
    """norm_out -> activation -> conv_out (-> tanh), the end of every encoder and decoder."""
    def body(T: _Tile, stats: Any) -> None:
        # the stack top is the last block's output, which nothing else holds: in place
        T.apply(lambda h: conv(act(_group_norm(h, norm, stats, inplace=True))))
        if tanh:
            T.apply(torch.tanh_)

    return [_Step("stats", body, norm, mutates_top=True)]


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


# --------------------------------------------------------------------------------------
# Argument checks and the tiled driver shared by decode and encode
# --------------------------------------------------------------------------------------


PARK_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_args(layout: VAELayout, x: Any, *, what: str, tile: Any, overlap: Any, halo: Any,
                circular: Any, kernel: Any, sync_groupnorm: Any, park: Any, pixel_input: bool,
                sync_strategy: Any = "auto", attention: Any = "canvas", park_budget_bytes: Any = None,
                park_dtype: Any = None) -> tuple[int, Kernel, Any, torch.device, torch.dtype | None]:
    scale, channels = layout.scale, layout.in_channels
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
        if v is None and name == "halo":
            continue
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
    _check_budget(park_budget_bytes)
    park_dtype = _park_dtype(park_dtype)
    return scale, get_kernel(kernel), ("x" if circular is True else circular), park_target(park), park_dtype


@dataclass(frozen=True)
class DiskPark:
    """Park out of core: tile states and canvas keys / values in files under `root`."""

    root: str
    type: str = "disk"


Park = Union[torch.device, DiskPark]


#: file systems that keep their files in memory: parking there is not out of core
MEMORY_FILESYSTEMS: tuple[str, ...] = ("tmpfs", "ramfs")


def _filesystem(path: str) -> str | None:
    """The type of the file system holding `path` (/proc/mounts, longest mount point),
    or None where that cannot be read."""
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            mounts = [line.split()[1:3] for line in fh if len(line.split()) > 2]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = "", None
    for point, fs in mounts:
        point = point.replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fs
    return kind


def default_park_dir() -> str:
    """Where park="disk" puts its files: $MDTOOLS_PARK_DIR if set, else the system's
    temporary directory unless it is held in memory (tmpfs: /tmp on Fedora, Arch, Debian
    13), then /var/tmp."""
    env = os.environ.get("MDTOOLS_PARK_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    tmp = tempfile.gettempdir()
    if _filesystem(tmp) in MEMORY_FILESYSTEMS and os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK):
        return "/var/tmp"
    return tmp


def park_target(park: Any, field: str = "park") -> Park:
    """`park` as given to tiled_decode / tiled_encode -> a torch.device, or a DiskPark for
    "disk" (`default_park_dir()`) / "disk:<dir>" (ConfigError naming `field` otherwise;
    a warning when the directory's file system is held in memory)."""
    if isinstance(park, DiskPark):
        return park
    if isinstance(park, str) and (park == "disk" or park.startswith("disk:")):
        root = os.path.abspath(os.path.expanduser(park[5:])) if park[5:] else default_park_dir()
        if not os.path.isdir(root) or not os.access(root, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}={park!r}: {root!r} is not a writable directory; use 'disk' (the system's "
                              "temporary directory, or $MDTOOLS_PARK_DIR) or 'disk:/path/to/scratch'")
        if (fs := _filesystem(root)) in MEMORY_FILESYSTEMS:
            warnings.warn(f"{field}={park!r}: {root} is on {fs}, which keeps files in memory, so parking there is "
                          "not out of core; give a directory on a disk ('disk:/path/to/scratch' or $MDTOOLS_PARK_DIR)",
                          stacklevel=3)
        return DiskPark(root)
    try:
        return torch.device(park)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(f"{field} must be a device such as 'cpu' or 'cuda', or 'disk' / 'disk:<dir>' (out of core), "
                          f"got {park!r}") from exc


def _default_overlap(overlap: int | None, sync_groupnorm: Any, attention: Any, halo: Any = None,
                     reach_known: bool = True) -> Any:
    """`overlap=None`: 0 px on an exact run (synchronised, canvas attention, every
    spatial operation's reach known, and the halo left to mdtools, which makes it exact:
    tiles agree with the full decode, so there is nothing to blend), else
    DEFAULT_OVERLAP_PX (a given halo may be too small to be exact)."""
    if overlap is not None:
        return overlap
    exact = sync_groupnorm is True and attention == "canvas" and halo is None and reach_known
    return 0 if exact else DEFAULT_OVERLAP_PX


def _park_dtype(park_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A name of PARK_DTYPES or a torch.dtype -> the torch.dtype (ConfigError otherwise); None stays None."""
    if park_dtype is None:
        return None
    if isinstance(park_dtype, torch.dtype):
        park_dtype = {v: k for k, v in PARK_DTYPES.items()}.get(park_dtype, str(park_dtype))
    check_choice("park_dtype", park_dtype, tuple(PARK_DTYPES))
    return PARK_DTYPES[park_dtype]


def _check_budget(park_budget_bytes: Any) -> None:
    if park_budget_bytes is not None and (isinstance(park_budget_bytes, bool) or not isinstance(
            park_budget_bytes, int) or park_budget_bytes < 0):
        raise ConfigError(f"park_budget_bytes must be None (a quarter of the park device's free memory) or an "
                          f"integer >= 0 bytes (e.g. {4 << 30} for 4 GiB), got {park_budget_bytes!r}")


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
#: With park_budget_bytes=None, "auto" may park at most this fraction of the free memory
#: of the park device (host MemAvailable, or free CUDA memory).
PARK_BUDGET_FRACTION: float = 0.25


@dataclass(frozen=True)
class _Profile:
    """Static facts of a tile program, from one tiny tile run: per barrier its kind, its
    step index and the values (per latent pixel of the tile input, per sample) that a
    tile's stack holds there; the output channels; canvas keys + values per canvas latent
    pixel; optionally the convolution / linear multiply-adds of every step per latent
    pixel (`step_macs`, for `schedule_estimate`)."""

    kinds: tuple[str, ...]
    values: tuple[float, ...]
    out_channels: int
    kv_values: float
    barrier_steps: tuple[int, ...] = ()
    step_macs: tuple[float, ...] = ()
    message_macs: tuple[float, ...] = ()  # per core pixel, once per tile and barrier (keys, values)
    #: per step, how far (latent pixels) its convolutions carry a tile edge's zero padding
    #: inwards: the reach of each kernel at its input resolution (see `_conv_reach`)
    step_reach: tuple[float, ...] = ()
    #: per barrier, the canvas keys + values it sends per canvas latent pixel (0 at GroupNorms)
    kv_each: tuple[float, ...] = ()


def _profile(layout: VAELayout, *, canvas_attention: bool, macs: bool = False) -> _Profile:
    """Run the program on a 2 x 2 latent tile, answering each barrier with the tile's own
    statistics (the barrier sequence does not depend on the values)."""
    p = layout.parameter
    unit = 1 if layout.direction == "decode" else layout.scale
    L = 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, layout.in_channels, L * unit, L * unit, generator=g).to(p.device, p.dtype)
    T = _Tile((0, 0), (L, L), (0, L, 0, L), True, [x], canvas_attention=canvas_attention)
    kinds, values, where, sent, kv, kv_each = [], [], [], [], 0.0, []
    counts = [0.0] * len(layout.steps)
    reach = [0.0] * len(layout.steps)

    def count(mod: nn.Module, args: Any, out: Any) -> None:
        # multiply-adds of the step being run (T.pc); convs and linears are the cost
        if isinstance(mod, nn.Conv2d):
            if macs:
                counts[T.pc] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
                # input pixels per latent pixel; width, because row strips cut the height (floor:
                # Downsample2D pads its input by one pixel before the conv)
                reach[T.pc] += _conv_reach(mod) / max(1, args[0].shape[-1] // L)
        elif macs and isinstance(mod, nn.Linear):
            counts[T.pc] += out.numel() * mod.in_features

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        with torch.inference_mode():
            while (msg := _advance(T, layout.steps)) is not None:
                kinds.append(msg[1])
                where.append(T.pc)
                # what ran since the last step ended is the message (the core's keys and values)
                sent.append(counts[T.pc] / (L * L))
                counts[T.pc] = 0.0
                values.append(sum({id(t): t.numel() for t in T.stack}.values()) / (L * L))
                kv_each.append((msg[2].numel() + msg[3].numel()) / (L * L) if msg[1] == "kv" else 0.0)
                kv += kv_each[-1]
                T.known.append(_reply([msg], p.device))
    finally:
        hook.remove()
    return _Profile(tuple(kinds), tuple(values), T.stack[-1].shape[1], kv, tuple(where),
                    tuple(c / (L * L) for c in counts), tuple(sent), tuple(reach), tuple(kv_each))


def _conv_reach(conv: nn.Conv2d) -> float:
    """How many input pixels deep a tile edge's padding corrupts the output of `conv`,
    counted at its input resolution: a kernel of extent e = dilation * (k - 1) with
    padding p reads p pixels past one edge and e - p past the other; a stride s rounds the
    corrupted band up to whole output pixels (up to s - 1 more input pixels)."""
    worst = 0.0
    for d in (0, 1):
        k, dil, s = conv.kernel_size[d], conv.dilation[d], conv.stride[d]
        e = dil * (k - 1)
        p = conv.padding if isinstance(conv.padding, str) else conv.padding[d]
        if isinstance(p, str):  # "same" pads e // 2 (and e - e // 2), "valid" nothing
            p = e // 2 if p == "same" else 0
        worst = max(worst, max(p, e - p) + s - 1)
    return worst


def _unclipped_halos(plan: VAETilePlan) -> list[int]:
    """The halos (latent px) of tile sides that do not reach the canvas edge: only through
    those can zero padding put error into a tile (a wrapping axis has no edge)."""
    out = []
    for ax in (plan.y, plan.x):
        for i, s in enumerate(ax.starts):
            lo, hi = ax.halo_lo[i], ax.halo_hi[i]
            if ax.wraps or s - lo > 0:
                out.append(lo)
            if ax.wraps or s + ax.size + hi < ax.length:
                out.append(hi)
    return out


def _reach_known(layout: VAELayout) -> bool:
    """Whether `_conv_reach` covers every spatial operation of the layout's modules: plain
    nn.Conv2d (and subclasses, as ComfyUI's ops), and pools whose windows do not overlap.
    Anything else with a spatial kernel (ConvTranspose2d, conv wrappers that are not
    nn.Conv2d, overlapping pools) has an unknown reach: no halo is then claimed exact."""
    for m in layout.module.modules():
        if isinstance(m, nn.Conv2d):
            continue
        if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            k, st = m.kernel_size, m.stride if m.stride is not None else m.kernel_size
            if k == st and not m.padding:
                continue
            return False
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim == 4:
            return False
    return True


def _exact_halo(prof: _Profile, checkpoints: frozenset[int], n_steps: int) -> int:
    """The halo (latent pixels) that makes a synchronised run exact: every round runs a
    tile from its latest checkpoint, where `_refresh_halos` made its whole state exact
    (or from its input, exact by construction), to the next barrier; zero padding at the
    tile edge then corrupts a band as deep as the reach of the convolutions run (summed in
    latent pixels, `_conv_reach`). A halo at least that deep keeps the body, and so the
    core statistics, keys and the blended output, equal to the full decode's values."""
    cum = np.concatenate([[0.0], np.cumsum(prof.step_reach)])
    n = len(prof.kinds)
    worst, last = 0.0, 0
    for k in range(n + 1):
        end = prof.barrier_steps[k] if k < n else n_steps
        worst = max(worst, cum[end] - cum[last])
        if k in checkpoints:
            last = end
    return int(math.ceil(worst - 1e-9))


def _axis_runs(axis: AxisTiles) -> list[list[tuple[int, int, int, int]]]:
    """Per tile, where each of its input positions lives in a core: runs of
    (dst_start, owner_tile, src_start, length), positions in the owner's input. Every
    latent index is in exactly one core, so these cover every input position once."""
    owner = np.full(axis.length, -1, dtype=np.int64)
    pos = np.zeros(axis.length, dtype=np.int64)
    for o in range(len(axis.starts)):
        c0, c1 = axis.core[o]
        idx = axis.input_indices(o)[c0:c1]
        owner[idx], pos[idx] = o, np.arange(c0, c1)
    runs = []
    for i in range(len(axis.starts)):
        idx = axis.input_indices(i)
        ow, ps = owner[idx], pos[idx]
        mine: list[tuple[int, int, int, int]] = []
        q = 0
        while q < len(idx):
            e = q + 1
            while e < len(idx) and ow[e] == ow[q] and ps[e] == ps[e - 1] + 1:
                e += 1
            mine.append((q, int(ow[q]), int(ps[q]), e - q))
            q = e
        runs.append(mine)
    return runs


def _halo_copies(tiles: list[tuple[int, int]], runs: tuple[list, list]
                 ) -> Iterator[tuple[int, int, tuple[int, int, int, int, int, int]]]:
    """Every copy of a halo refresh: (dst tile, owner tile, (dy, sy, ny, dx, sx, nx)) puts
    the owner's latent box [sy:sy+ny, sx:sx+nx] (in its core) at [dy:dy+ny, dx:dx+nx] of
    the destination's non-core pixels (halo, and overlap beyond its core)."""
    index = {key: t for t, key in enumerate(tiles)}
    ry, rx = runs
    for t, (i, j) in enumerate(tiles):
        for dy, oy, sy, ny in ry[i]:
            for dx, ox, sx, nx in rx[j]:
                if oy == i and ox == j and dy == sy and dx == sx:
                    continue  # its own core
                yield t, index[(oy, ox)], (dy, sy, ny, dx, sx, nx)


def _unique(stack: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct tensors of a stack (a skip branch may share its input's tensor), in
    order of first appearance, and each slot's index into them."""
    first: dict[int, int] = {}
    uniq: list[torch.Tensor] = []
    slots = []
    for t in stack:
        if id(t) not in first:
            first[id(t)] = len(uniq)
            uniq.append(t)
        slots.append(first[id(t)])
    return uniq, slots


def _grid_box(x: torch.Tensor, hw: tuple[int, int], key: Any, y0: int, ny: int, x0: int, nx: int
              ) -> tuple[slice, slice, slice, slice]:
    """Index of the latent box [y0:y0+ny, x0:x0+nx] in an activation of a tile whose input
    is `hw` latent pixels (the activation has an integer number of pixels per latent pixel)."""
    if x.ndim != 4 or x.shape[-2] % hw[0] or x.shape[-1] % hw[1]:
        raise RuntimeError(f"stack tensor {tuple(x.shape)} of tile {key} is not on its latent grid")
    u, v = x.shape[-2] // hw[0], x.shape[-1] // hw[1]
    return slice(None), slice(None), slice(y0 * u, (y0 + ny) * u), slice(x0 * v, (x0 + nx) * v)


def _refresh_halos(parked: list[_Tile | None], tiles: list[tuple[int, int]],
                   runs: tuple[list, list]) -> None:
    """With every tile parked at the same barrier, overwrite each tile's non-core pixels
    (halo, and the overlap beyond its core) in every stack tensor with the values the
    tile owning them computed in its core. The cores are exact, so every state becomes
    exactly the full decode's activations over its tile: the edge error that zero padding
    started is erased, and the next round starts clean. Sources are cores, never written
    here, so the order of the copies does not matter."""
    for t, o, (dy, sy, ny, dx, sx, nx) in _halo_copies(tiles, runs):
        T, S = parked[t], parked[o]
        dst, _ = _unique(T.stack)
        src, _ = _unique(S.stack)
        if len(dst) != len(src):
            raise RuntimeError(f"tiles {T.key} and {S.key} hold {len(dst)} and {len(src)} tensors at one barrier")
        for d, s_ in zip(dst, src):
            d[_grid_box(d, T.hw, T.key, dy, ny, dx, nx)] = s_[_grid_box(s_, S.hw, S.key, sy, ny, sx, nx)]


#: (shape, dtype) of each tensor of a file, in the order written
_Meta = list[tuple[tuple[int, ...], torch.dtype]]


def _write_tensors(path: str, tensors: list[torch.Tensor], mode: str = "wb") -> tuple[_Meta, int]:
    """Write tensors' raw bytes one after another (on the CPU; `mode` "ab" appends);
    returns their metas and the bytes."""
    meta, n = [], 0
    with open(path, mode) as f:
        for t in tensors:
            t = t.to("cpu").contiguous()
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            meta.append((tuple(t.shape), t.dtype))
            n += t.numel() * t.element_size()
    return meta, n


def _read_tensors(path: str, meta: _Meta) -> list[torch.Tensor]:
    """Read back what `_write_tensors` wrote, into fresh CPU tensors (plain reads, no
    memory map: the file's pages stay the kernel's cache, not this process's memory)."""
    with open(path, "rb") as f:
        return [_read_tensor(f, shape, dtype, path) for shape, dtype in meta]


#: bytes per read call of out-of-core parking (one read returns at most about 2 GiB on Linux)
READ_CHUNK_BYTES: int = 1 << 30


def _read_tensor(f: Any, shape: tuple[int, ...], dtype: torch.dtype, path: str) -> torch.Tensor:
    """The next tensor of an open file, read in pieces of READ_CHUNK_BYTES (a tile's
    activation can be larger than one read call returns)."""
    t = torch.empty(shape, dtype=dtype)
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:done + READ_CHUNK_BYTES])
        if not got:
            raise RuntimeError(f"{path} is shorter than written (the disk is full or the file was changed)")
        done += got
    return t


@dataclass
class _DiskState:
    """A tile parked on disk: its state without tensors, and where they are."""

    tile: _Tile
    path: str
    meta: _Meta
    slots: list[int]
    barrier: int
    size: int

    def nbytes(self) -> int:
        return self.size


@dataclass
class _DiskKV:
    """Canvas keys and values on disk, one block per tile core in tile order (the order
    of the in-memory concatenation)."""

    path: str
    blocks: list[tuple[int, _Meta]]  # (offset, [(keys shape, dtype), (values shape, dtype)])
    store: _DiskStore

    def read(self, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.store.kv_blocks(self, device)


class _DiskStore:
    """Out-of-core parking (`park="disk"`): tile states, halo-refresh edges and canvas keys
    / values in files of a private temporary directory (removed by `close`).

    When tile t is parked at checkpoint k it also writes, for every tile u whose halo it
    owns, the boxes of its core that u's non-core pixels are (`_halo_copies`), cast as
    parked; loading u's state of checkpoint k pastes them in, which is what
    `_refresh_halos` does in memory. So no tile ever needs another tile's whole state."""

    PREFIX = "mdtools-park-"

    def __init__(self, root: str, tiles: list[tuple[int, int]], runs: tuple[list, list]) -> None:
        #: owner tile -> destination tile -> the boxes it sends there
        self.sends: dict[int, dict[int, list[tuple[int, ...]]]] = {}
        for u, o, box in _halo_copies(tiles, runs):
            self.sends.setdefault(o, {}).setdefault(u, []).append(box)
        #: tile u -> its edges, as (checkpoint, path, meta, boxes)
        self.edges: dict[int, list[tuple[int, str, _Meta, list[tuple[int, ...]]]]] = {}
        self.written = self.read = 0
        _sweep_stale(root, self.PREFIX)
        self.dir = tempfile.mkdtemp(prefix=self.PREFIX, dir=root)
        with open(os.path.join(self.dir, "owner"), "w", encoding="utf-8") as fh:
            fh.write(f"{socket.gethostname()} {os.getpid()}\n")

    def park(self, t: int, T: _Tile, barrier: int, dtype: torch.dtype | None) -> _DiskState:
        uniq, slots = _unique(T.stack)
        cpu = torch.device("cpu")
        uniq = [x.to(device=cpu, dtype=dtype or x.dtype) for x in uniq]
        for u, boxes in self.sends.get(t, {}).items():
            pieces = [x[_grid_box(x, T.hw, T.key, sy, ny, sx, nx)]
                      for (_, sy, ny, _, sx, nx) in boxes for x in uniq]
            path = os.path.join(self.dir, f"e{u}-{t}-{barrier}")
            meta, n = _write_tensors(path, pieces)
            self.written += n
            self.edges.setdefault(u, []).append((barrier, path, meta, boxes))
        path = os.path.join(self.dir, f"s{t}-{barrier}")
        meta, n = _write_tensors(path, uniq)
        self.written += n
        state = replace(T, stack=[])
        T.stack = []
        return _DiskState(state, path, meta, slots, barrier, n)

    def load(self, t: int, state: _DiskState, device: torch.device, dtype: torch.dtype, last: bool) -> _Tile:
        """The parked tile on `device` / `dtype`, its halos refreshed; `last`: the state is
        not needed again (its files are removed)."""
        uniq = _read_tensors(state.path, state.meta)
        self.read += state.size
        keep = []
        for barrier, path, meta, boxes in self.edges.get(t, []):
            if barrier != state.barrier:
                keep.append((barrier, path, meta, boxes))
                continue
            pieces = _read_tensors(path, meta)
            if len(pieces) != len(boxes) * len(uniq):
                raise RuntimeError(f"tile {state.tile.key}: {len(pieces)} halo pieces for {len(boxes)} boxes x "
                                   f"{len(uniq)} tensors (the neighbours' states differ in layout)")
            for n, (dy, _, ny, dx, _, nx) in enumerate(boxes):
                for m, x in enumerate(uniq):
                    p = pieces[n * len(uniq) + m]
                    self.read += p.numel() * p.element_size()
                    x[_grid_box(x, state.tile.hw, state.tile.key, dy, ny, dx, nx)] = p
            if last:
                os.remove(path)
            else:
                keep.append((barrier, path, meta, boxes))
        self.edges[t] = keep
        if last:
            os.remove(state.path)
        T = replace(state.tile, stack=[uniq[i] for i in state.slots])
        T.move(device, dtype)
        return T

    def put_kv(self, msg: Message) -> Message:
        """Append a tile's core keys / values to the barrier's file; the message then
        carries where they are instead of the tensors."""
        layer, _, k, v = msg
        path = os.path.join(self.dir, f"kv{layer}")
        offset = os.path.getsize(path) if os.path.exists(path) else 0
        meta, n = _write_tensors(path, [k, v], mode="ab")
        self.written += n
        return (layer, "kv", path, offset, meta)

    def kv_reply(self, msgs: list[Message]) -> _DiskKV:
        return _DiskKV(msgs[0][2], [(m[3], m[4]) for m in msgs], self)

    def kv_blocks(self, kv: _DiskKV, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with open(kv.path, "rb") as f:
            for offset, meta in kv.blocks:
                f.seek(offset)
                pair = []
                for shape, dtype in meta:
                    t = _read_tensor(f, shape, dtype, kv.path)
                    self.read += t.numel() * t.element_size()
                    pair.append(t.to(device))
                yield pair[0], pair[1]

    def drop_kv(self, kv: Any) -> None:
        if isinstance(kv, _DiskKV) and os.path.exists(kv.path):
            os.remove(kv.path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if os.path.exists(self.dir):
            warnings.warn(f"could not remove the parking directory {self.dir}; delete it by hand", stacklevel=2)


def _sweep_stale(root: str, prefix: str) -> None:
    """Remove parking directories left by runs of this host that were killed (their
    process is gone): a killed decode cannot clean up, and its states may be gigabytes."""
    host = socket.gethostname()
    try:
        names = [n for n in os.listdir(root) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            with open(os.path.join(path, "owner"), encoding="utf-8") as fh:
                owner_host, pid = fh.read().split()
            if owner_host != host:
                continue
            os.kill(int(pid), 0)  # raises if the process is gone
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # no readable owner (being created, or not ours), or a live process of another user


def _attend_blocks(q: torch.Tensor, blocks: Iterator[tuple[torch.Tensor, torch.Tensor]],
                   scale: float | None) -> torch.Tensor:
    """softmax(q k^T * scale) v over keys / values that arrive in blocks, each read once:
    the online softmax (a running maximum m, normaliser l and weighted sum, rescaled by
    exp(m_old - m_new) when the maximum grows; Milakov & Gimelshein 2018). Equal to the
    one-piece attention up to float rounding, in float32."""
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    qf = q.float()
    m = torch.full((B, H, N, 1), -math.inf, device=q.device)
    den = torch.zeros(B, H, N, 1, device=q.device)
    acc = None
    for k, v in blocks:
        k, v = k.float(), v.float()
        if acc is None:
            acc = torch.zeros(B, H, N, v.shape[-1], device=q.device)
        for i in range(0, N, ATTENTION_QUERY_CHUNK):
            c = slice(i, i + ATTENTION_QUERY_CHUNK)
            s = torch.matmul(qf[:, :, c], k.transpose(-1, -2)).mul_(scale)
            new = torch.maximum(m[:, :, c], s.amax(dim=-1, keepdim=True))
            p = s.sub_(new).exp_()
            fix = torch.exp(m[:, :, c] - new)
            den[:, :, c] = den[:, :, c] * fix + p.sum(dim=-1, keepdim=True)
            acc[:, :, c] = acc[:, :, c] * fix + torch.matmul(p, v)
            m[:, :, c] = new
            del s, p
    if acc is None:
        raise RuntimeError("no keys / values to attend over")
    return acc.div_(den)


def _tile_pixels(plan: VAETilePlan) -> int:
    return sum(len(plan.y.input_indices(i)) * len(plan.x.input_indices(j)) for i, j in plan.tiles())


def _barrier_bytes(prof: _Profile, plan: VAETilePlan, batch: int, element_size: int) -> list[int]:
    """Bytes that parking every tile at each barrier holds."""
    px = _tile_pixels(plan) * batch
    return [int(v * px * element_size) for v in prof.values]


def _kv_bytes(prof: _Profile, plan: VAETilePlan, batch: int, element_size: int) -> int:
    return int(prof.kv_values * plan.y.length * plan.x.length * batch * element_size)


def _live_kv_bytes(prof: _Profile, plan: VAETilePlan, batch: int, element_size: int,
                   checkpoints: frozenset[int]) -> list[int]:
    """Per barrier b, and last for the final round, the canvas keys / values held while
    round b runs: those of every attention barrier from the latest checkpoint before b
    (where replays start) to b.
    Once tiles are parked at a later checkpoint none passes an earlier attention again,
    and `_run_tiled` frees its keys. (`_checkpoints` makes the same count as it chooses.)"""
    per_px = plan.y.length * plan.x.length * batch * element_size
    cps, live, out = checkpoints, 0.0, []
    for b, each in enumerate((*prof.kv_each, 0.0)):  # the last entry: the final round
        if b - 1 in cps:  # replays now start at b - 1: keys of barriers before it are gone
            live = prof.kv_each[b - 1] * per_px
        live += each * per_px
        out.append(int(live))
    return out


def parked_bytes_estimate(vae: Any, plan: VAETilePlan, *, decode: bool, element_size: int = 4,
                          batch: int = 1) -> int:
    """What the "park" strategy holds at its worst barrier: every tile's stack (halos
    included) at the barrier where the stacks are largest (SD's decoder: 256 channels at
    full resolution, 16384 values per latent pixel, 2.0 GiB at 1024^2 and 40 GiB at
    4096^2 with 64 px halos), plus the canvas keys and values of the mid-block attention
    (latent resolution)."""
    prof = _profile(vae_layout(vae, "decode" if decode else "encode"), canvas_attention=True)
    return max(_barrier_bytes(prof, plan, batch, element_size), default=0) + _kv_bytes(prof, plan, batch,
                                                                                     element_size)


def _free_bytes(device: Park) -> int:
    """Free memory of `device`: CUDA's free memory, the host's MemAvailable, or for a
    DiskPark the free space of its file system."""
    if isinstance(device, DiskPark):
        return int(shutil.disk_usage(device.root).free)
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


def _checkpoints(strategy: str, prof: _Profile, plan: VAETilePlan, *, batch: int, element_size: int,
                 budget: int) -> frozenset[int]:
    """The barriers at which every tile's state is parked.

    "park": all; "recompute": none (every barrier replays each tile from its input);
    "auto": every barrier whose parked states, plus the canvas keys / values replays may
    still need (`_live_kv_bytes`), fit in `budget` bytes. Only each tile's latest parked
    state is kept, so the parked memory
    peaks at the largest chosen barrier, and parking at every barrier that fits is the
    least recompute for that peak: a barrier that does not fit is reached by replaying
    each tile from its latest parked state (a checkpoint), not from its input."""
    n = len(prof.values)
    if strategy == "park":
        return frozenset(range(n))
    if strategy == "recompute":
        return frozenset()
    sizes = _barrier_bytes(prof, plan, batch, element_size)
    per_px = plan.y.length * plan.x.length * batch * element_size
    chosen: set[int] = set()
    live = 0.0
    for b in range(n):
        if b - 1 in chosen:  # replays now start at b - 1: nothing passes earlier attentions
            live = prof.kv_each[b - 1] * per_px
        live += prof.kv_each[b] * per_px
        if sizes[b] + live <= budget:
            chosen.add(b)
    return frozenset(chosen)


def _strategy_name(checkpoints: frozenset[int], n: int) -> str:
    return "park" if len(checkpoints) == n else "recompute" if not checkpoints else "checkpoint"


def resolve_sync_strategy(strategy: str, vae: Any, plan: VAETilePlan, *, decode: bool, park: str | Park,
                          park_budget_bytes: int | None = None, park_dtype: str | torch.dtype | None = None,
                          batch: int = 1) -> str:
    """What `strategy` runs as: "park", "recompute" or (from "auto" when only some barriers
    fit `park_budget_bytes`, default a quarter of `park`'s free memory) "checkpoint"."""
    check_choice("sync_strategy", strategy, SYNC_STRATEGIES)
    _check_budget(park_budget_bytes)
    layout = vae_layout(vae, "decode" if decode else "encode")
    prof = _profile(layout, canvas_attention=True)
    park_dtype = _park_dtype(park_dtype)
    size = park_dtype.itemsize if park_dtype is not None else layout.parameter.element_size()
    budget = _park_budget(park_budget_bytes, park_target(park)) if strategy == "auto" else 0
    cps = _checkpoints(strategy, prof, plan, batch=batch, element_size=size, budget=budget)
    return _strategy_name(cps, len(prof.values))


def schedule_estimate(vae: Any, plan: VAETilePlan | tuple[int, int], *, decode: bool = True,
                      sync_strategy: str = "auto", park_budget_bytes: int | None = None,
                      park: str | torch.device = "cpu", park_dtype: str | torch.dtype | None = None, batch: int = 1,
                      tile: int = 512, overlap: int | None = None, halo: int | None = None,
                      circular: CircularArg = False) -> dict[str, Any]:
    """What a synchronised tiled run will cost, without running it: the strategy it
    resolves to, the parked bytes at its peak (plus the canvas keys / values), what it
    holds at most beyond one tile's working set (`held_peak_bytes`: parked states and
    canvas keys / values, also when nothing is parked), the float32 output's bytes, its
    multiply-adds (convolutions, linears, canvas attention) relative to one park pass and
    to one full (untiled) pass, its halo and the halo exactness needs (pixels).

    `plan`: a `VAETilePlan`, or the (height, width) of the canvas in latent pixels, planned
    as `tiled_decode` / `tiled_encode` would with `tile`, `overlap`, `halo`, `circular`
    (halo=None: the exact halo of the resolved checkpoints). Counts come from one tiny tile
    run (`_profile`) scaled by each tile's pixels, and the replays are simulated round by
    round as `_run_tiled` schedules them. Use it to pick a `park_budget_bytes`, and to
    extrapolate canvases too large to decode here."""
    check_choice("sync_strategy", sync_strategy, SYNC_STRATEGIES)
    _check_budget(park_budget_bytes)
    layout = vae_layout(vae, "decode" if decode else "encode")
    prof = _profile(layout, canvas_attention=True, macs=True)
    park_dtype = _park_dtype(park_dtype)
    if isinstance(plan, VAETilePlan):
        given = plan
        make_plan: Callable[[int], VAETilePlan] = lambda h: given  # noqa: E731
        if halo is None:  # what the plan was made with (edge tiles have theirs clipped)
            halo = max(given.y.halo_lo + given.y.halo_hi + given.x.halo_lo + given.x.halo_hi) * layout.scale
        # a halo clipped at the canvas edge reaches it: no padding error enters from that side
        effective = min((h * layout.scale for h in _unclipped_halos(given)), default=math.inf)
    else:
        (lat_h, lat_w), ov = plan, _default_overlap(overlap, True, "canvas", halo, _reach_known(layout))
        mode = "x" if circular is True else circular

        def make_plan(h: int) -> VAETilePlan:
            return plan_vae_tiles(lat_h, lat_w, tile=tile, overlap=ov, halo=h, scale=layout.scale, circular=mode)

        effective = None

    sched = _schedule(layout, prof, make_plan, halo, default_halo=DEFAULT_DECODE_HALO_PX if decode else
                      DEFAULT_ENCODE_HALO_PX, sync=True, exact=_reach_known(layout), strategy=sync_strategy,
                      park=park_target(park), park_budget_bytes=park_budget_bytes, park_dtype=park_dtype,
                      batch=batch)
    plan, cps = sched.plan, sched.checkpoints
    size = park_dtype.itemsize if park_dtype is not None else layout.parameter.element_size()
    canvas_px = plan.y.length * plan.x.length
    attn = [0.0] * len(prof.step_macs)
    for b, kind in enumerate(prof.kinds):  # queries of a tile pixel x every canvas key, and x values
        if kind == "kv":
            attn[prof.barrier_steps[b]] += 2 * canvas_px * prof.kv_each[b] / 2
    n = len(prof.kinds)

    def total(cost: list[float]) -> tuple[float, float]:
        """(multiply-adds per tile pixel over all rounds, those of one pass)"""
        prefix = np.concatenate([[0.0], np.cumsum(cost)])
        acc, last = 0.0, 0  # last: step index of the latest parked state
        for k in range(n + 1):
            end = prof.barrier_steps[k] if k < n else len(cost)
            acc += prefix[end] - prefix[last]
            if k in cps:
                last = end
        return acc, prefix[-1]

    conv, conv_pass = total(list(prof.step_macs))
    att, att_pass = total(attn)
    px = _tile_pixels(plan) * batch
    # every tile sends each barrier's message once, computed over its core: the canvas
    sent = sum(prof.message_macs) * canvas_px * batch / px
    conv, conv_pass = conv + sent, conv_pass + sent
    states = _barrier_bytes(prof, plan, batch, size)
    live = _live_kv_bytes(prof, plan, batch, size, cps)
    sizes = [s + k for s, k in zip(states, live)]
    # what is held while each round runs: the latest checkpoint's states (while a round
    # parks at a new checkpoint, tile by tile, the larger of the old and the new), plus the
    # canvas keys / values that replays may still pass; the last round keeps those of
    # attentions after the last checkpoint (all of them without checkpoints)
    held, last = [], None
    for b in range(n + 1):
        old = states[last] if last is not None else 0
        held.append(max(old, states[b] if b in cps else 0) + live[b])
        if b in cps:
            last = b
    # the untiled decode: every step and key / value projection once per canvas pixel, and
    # canvas x canvas attention
    full_pass = (sum(prof.step_macs) + sum(prof.message_macs)) * canvas_px * batch
    full_pass += canvas_px * prof.kv_values * canvas_px * batch
    return {"strategy": _strategy_name(cps, n),
            "parked_peak_bytes": max((sizes[b] for b in cps), default=0),
            "held_peak_bytes": int(max(held)),
            "output_bytes": prof.out_channels * canvas_px * (layout.scale ** 2 if decode else 1) * batch * 4,
            "compute_vs_park": (conv + att) / (conv_pass + att_pass),
            "compute_vs_full": (conv + att) * px / full_pass,
            "macs": (conv + att) * px, "attention_macs": att * px,
            "barriers": n, "checkpoints": len(cps), "n_tiles": plan.n_tiles,
            "halo_px": sched.halo_px, "exact_halo_px": sched.needed_px,
            "exact": sched.needed_px is not None and (sched.halo_px if effective is None else effective)
            >= sched.needed_px}


def _park_budget(park_budget_bytes: int | None, park: Park) -> int:
    return int(PARK_BUDGET_FRACTION * _free_bytes(park)) if park_budget_bytes is None else park_budget_bytes


@dataclass(frozen=True)
class _Schedule:
    """What a tiled run will do: its plan, the barriers where tiles are parked (and their
    halos refreshed), the halo it runs with and the halo exactness needs (pixels)."""

    plan: VAETilePlan
    checkpoints: frozenset[int]
    halo_px: int
    needed_px: int | None  # None: no halo makes it exact (no sync, or attention within tiles)


def _schedule(layout: VAELayout, prof: _Profile, make_plan: Callable[[int], VAETilePlan], halo: int | None, *,
              default_halo: int, sync: bool, exact: bool, strategy: str, park: Park,
              park_budget_bytes: int | None, park_dtype: torch.dtype | None, batch: int) -> _Schedule:
    """Plan the tiles and the checkpoints together. With `halo=None` on an exact run
    (synchronised statistics and canvas attention) the halo is the smallest that is exact
    for the checkpoints chosen (`_exact_halo`); a larger halo makes tiles larger, which
    may drop checkpoints under the budget and need a larger halo again, so this iterates
    to the fixed point (it only grows, up to the halo of "recompute")."""
    size = park_dtype.itemsize if park_dtype is not None else layout.parameter.element_size()
    budget = _park_budget(park_budget_bytes, park) if sync and strategy == "auto" else 0
    n, n_steps, unit = len(prof.kinds), len(layout.steps), layout.scale

    def cps(plan: VAETilePlan) -> frozenset[int]:
        return _checkpoints(strategy, prof, plan, batch=batch, element_size=size, budget=budget) if sync else frozenset()

    if halo is not None or not exact:
        plan = make_plan(default_halo if halo is None else halo)
        chosen = cps(plan)
        needed = _exact_halo(prof, chosen, n_steps) * unit if exact else None
        return _Schedule(plan, chosen, default_halo if halo is None else halo, needed)
    h = _exact_halo(prof, frozenset(range(n)), n_steps)  # parking everywhere needs the least
    while True:
        plan = make_plan(h * unit)
        chosen = cps(plan)
        need = _exact_halo(prof, chosen, n_steps)
        if need <= h:
            return _Schedule(plan, chosen, h * unit, need * unit)
        h = need


def _run_tiled(
    *,
    layout: VAELayout,
    x: torch.Tensor,
    make_plan: Callable[[int], VAETilePlan],
    halo: int | None,
    default_halo: int,
    reach_known: bool,
    in_unit: int,
    out_unit: int,
    kernel: Kernel,
    blend_overlap: int,
    sync: bool,
    park: Park,
    out_device: torch.device | None,
    report: dict | None,
    strategy: str = "auto",
    canvas_attention: bool = True,
    park_budget_bytes: int | None = None,
    park_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run the layout's tile program over every tile of the plan and blend the outputs.

    `make_plan(halo_px)` plans the tiles; `halo=None` picks the halo (`_schedule`).
    `x` holds latents or pixels (`in_unit` samples per latent pixel); tile outputs have
    `out_unit` samples per latent pixel. No sync: tiles run one after another, each from
    input to output. Sync: round k ends at barrier k; in every round each tile runs from
    its latest parked state (or from its input) to barrier k, reports, and is parked on
    `park` if barrier k is a checkpoint (see `_checkpoints`), else dropped. When every
    tile is parked at a checkpoint, their halos are refreshed from their neighbours' cores
    (`_refresh_halos`). Round k + 1 resumes a tile parked at barrier k directly; from an
    older checkpoint it replays a copy, so that checkpoint stays for later rounds. All
    tiles have then reached barrier k, so the pooled reply k is final: no strategy ever
    uses a provisional value.
    """
    p = layout.parameter
    device, dtype = p.device, p.dtype
    out_device = device if out_device is None else out_device
    B = x.shape[0]
    steps = layout.steps
    # One tile with no wrap holds the whole canvas: its own statistics are the canvas's.
    probe = make_plan(0)
    sync = sync and not (probe.n_tiles == 1 and not (probe.y.wraps or probe.x.wraps))
    prof = _profile(layout, canvas_attention=sync and canvas_attention)
    sched = _schedule(layout, prof, make_plan, halo, default_halo=default_halo, sync=sync,
                      exact=sync and canvas_attention and reach_known, strategy=strategy, park=park,
                      park_budget_bytes=park_budget_bytes, park_dtype=park_dtype, batch=B)
    plan, checkpoints = sched.plan, sched.checkpoints
    # exact: one tile with no wrap is the full decode; else the halo must cover every round's
    # reach through every side that does not reach the canvas edge
    exact = True if probe.n_tiles == 1 and not (probe.y.wraps or probe.x.wraps) else (
        sched.needed_px is not None
        and min((h * layout.scale for h in _unclipped_halos(plan)), default=math.inf) >= sched.needed_px)
    out_channels = prof.out_channels
    n_barriers = len(prof.values) if sync else 0
    wy = _normalised_axis_weights(plan.y, kernel, out_unit, blend_overlap)
    wx = _normalised_axis_weights(plan.x, kernel, out_unit, blend_overlap)
    out = torch.zeros(B, out_channels, plan.y.length * out_unit, plan.x.length * out_unit,
                      dtype=torch.float32, device=out_device)
    tile_runs = resumes = 0

    def start(i: int, j: int, known: list) -> _Tile:
        ry, rx = plan.y.input_indices(i), plan.x.input_indices(j)
        iy = np.repeat(ry * in_unit, in_unit) + np.tile(np.arange(in_unit), len(ry))
        ix = np.repeat(rx * in_unit, in_unit) + np.tile(np.arange(in_unit), len(rx))
        nonlocal tile_runs
        tile_runs += 1
        # modulo-indexed gather: one code path for clipped and wrapping halos
        xt = x.index_select(2, torch.as_tensor(iy, device=x.device)).index_select(
            3, torch.as_tensor(ix, device=x.device))
        return _Tile((i, j), (len(ry), len(rx)), plan.y.core[i] + plan.x.core[j], sync,
                     [xt.to(device=device, dtype=dtype)], known=known, canvas_attention=sync and canvas_attention)

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

    tiles = list(plan.tiles())
    runs = (_axis_runs(plan.y), _axis_runs(plan.x))
    parked: list[Any] = [None] * len(tiles)  # _Tile, or _DiskState out of core
    parked_peak = 0
    known: list[Any] = []
    attn_barriers = 0
    disk = isinstance(park, DiskPark) and sync
    store: _DiskStore | None = None
    # give freed tile memory back to the OS
    host = device.type == "cpu" or (isinstance(park, torch.device) and park.type == "cpu") or disk
    try:
        store = _DiskStore(park.root, tiles, runs) if disk else None
        with torch.inference_mode():
            for k in range(n_barriers + 1):
                final = k == n_barriers
                msgs: list[Message] = []
                for t, (i, j) in enumerate(tiles):
                    state = parked[t]
                    if state is None:
                        T = start(i, j, known)
                    elif final or k in checkpoints:  # its next parked state replaces this one
                        parked[t] = None
                        if store is not None:
                            T = store.load(t, state, device, dtype, last=True)
                        else:
                            T = state
                            T.move(device, dtype)
                    else:  # replay: this checkpoint is needed again next round, so it is not written
                        if store is not None:
                            T = store.load(t, state, device, dtype, last=False)
                        else:
                            T = state.snapshot(device, dtype, copy_top=steps[state.pc].mutates_top)
                        resumes += 1
                    msg = _advance(T, steps)
                    if msg is None:
                        if not final:
                            raise RuntimeError(f"tile {T.key} finished before barrier {k}")
                        finish(T, T.stack.pop())
                    else:
                        if final or msg[0] != k:
                            raise RuntimeError("tiles reached different GroupNorm layers")
                        msgs.append(store.put_kv(msg) if store is not None and msg[1] == "kv" else msg)
                        del msg
                        if k in checkpoints:
                            if store is not None:
                                parked[t] = store.park(t, T, k, park_dtype)
                            else:
                                T.move(park, park_dtype)
                                parked[t] = T
                    del T, state
                    if host:
                        _malloc_trim()
                if sync and checkpoints:
                    parked_peak = max(parked_peak, sum(s.nbytes() for s in parked if s is not None))
                if not final and k in checkpoints:
                    if store is None:  # out of core, the owners' edge files refresh the halos on load
                        _refresh_halos(parked, tiles, runs)
                    # every tile now resumes at k or later: the canvas keys / values of earlier
                    # attention barriers are never read again
                    for a in range(min(k, len(known))):
                        if prof.kv_each[a]:
                            if store is not None:
                                store.drop_kv(known[a])
                            known[a] = None
                if not final:
                    kv = msgs[0][1] == "kv"
                    known.append(store.kv_reply(msgs) if store is not None and kv else _reply(msgs, device))
                    attn_barriers += kv
                    del msgs
    finally:
        if store is not None:
            store.close()
    if report is not None:
        report.update(n_tiles=plan.n_tiles, synced=sync, groupnorm_barriers=n_barriers - attn_barriers,
                      canvas_attention=bool(attn_barriers),
                      strategy=_strategy_name(checkpoints, n_barriers) if sync else "none", tile_runs=tile_runs,
                      resumes=resumes, checkpoints=len(checkpoints), parked_peak_bytes=parked_peak,
                      layout=layout.kind, halo_px=sched.halo_px, exact_halo_px=sched.needed_px, exact=exact,
                      park="disk" if disk else str(park) if sync else None,
                      disk_written_bytes=store.written if store is not None else 0,
                      disk_read_bytes=store.read if store is not None else 0)
    return out


def tiled_decode(
    vae: Any,
    latents: torch.Tensor,
    *,
    tile: int = 512,
    overlap: int | None = None,
    sync_groupnorm: bool = True,
    circular: CircularArg = False,
    kernel: str | Kernel = "linear",
    halo: int | None = None,
    offload: bool = False,
    park: str | torch.device = "cpu",
    sync_strategy: SyncStrategy = "auto",
    attention: Literal["canvas", "tile"] = "canvas",
    park_budget_bytes: int | None = None,
    park_dtype: str | None = None,
    report: dict | None = None,
) -> torch.Tensor:
    """Decode `latents` tile by tile: the same output as the one-piece decode.

    `vae`: a diffusers AutoencoderKL (returns what `vae.decode(latents).sample` returns),
    an LDM-layout autoencoder such as ComfyUI's `VAE.first_stage_model` (what its
    `decode(latents)` returns: post_quant_conv, then decoder) or a bare LDM Decoder (what
    `decoder(latents)` returns). The layout is read from the modules (`vae_layout`).
    `latents` are unscaled (diffusers: already divided by `vae.config.scaling_factor`;
    ComfyUI LATENTs are unscaled already), shape (B, latent_channels, h, w). `tile`,
    `overlap`, `halo` are pixels, multiples of the VAE scale factor; `tile` is the largest
    tile body (the fewest tiles that cover are used, shrunk to fit) and the VAE sees up to
    `tile + 2 * halo` px per tile. `halo=None`: on a synchronised run with canvas
    attention, the smallest halo that makes the result exact for the strategy's
    checkpoints (halos are refreshed from the neighbours at every checkpoint; 16 px for
    SD's decoder with "park"), else DEFAULT_DECODE_HALO_PX. `overlap=None`: 0 on such an
    exact run (nothing to blend), else DEFAULT_OVERLAP_PX. `circular`
    is False, True (= "x"), "x", "y" or "both". `offload=True` keeps the output canvas on
    the CPU; `park` is where tiles waiting at a barrier keep their activations (sync only):
    a device, or "disk" / "disk:<dir>" (out of core: parked states and the canvas keys /
    values go to files in a temporary directory under <dir> or `default_park_dir()`,
    removed at the end, so memory holds one tile plus the output at any canvas size; the
    canvas attention then streams the keys in blocks, float noise against in-memory runs;
    "auto"'s default budget is then a quarter of the free disk space, and
    `parked_peak_bytes` counts bytes on disk).
    `sync_strategy`: "park" (one pass; all tiles' activations parked on `park`, which grows
    with the canvas), "recompute" (memory of one tile on every device; each tile re-runs
    up to every GroupNorm, many times the compute) or "auto": park at every barrier
    where that fits in `park_budget_bytes` (default: a quarter of the park device's free
    memory) and replay from the latest such checkpoint elsewhere; it never parks more than
    the budget. With their default halos all equal the full decode to float noise (with
    one halo exact for all, bit for bit on CPU). `park_dtype` ("bfloat16" or
    "float16", opt-in) parks states in half precision: half the parked memory, but the
    result is no longer float-exact (rounded activations) and no longer identical across
    strategies. `attention` (sync only): "canvas" gives the mid-block self-attention the
    keys and values of the whole canvas, as the full decode has (two latent-sized
    activations, kept on the compute device); "tile" lets it attend within its tile + halo.
    Returns a float32 (B, out_channels, 8h, 8w) tensor (blending is done in float32).
    `report`, if given, is filled with n_tiles, synced, groupnorm_barriers, strategy,
    tile_runs, resumes, checkpoints, parked_peak_bytes, layout, halo_px, exact_halo_px
    (None when no halo can make the run exact), exact, park, and disk_written_bytes /
    disk_read_bytes (out of core).
    """
    layout = vae_layout(vae, "decode")
    reach_known = _reach_known(layout)
    overlap = _default_overlap(overlap, sync_groupnorm, attention, halo, reach_known)
    scale, k, circ, park_dev, pdt = _check_args(
        layout, latents, what="latents", tile=tile, overlap=overlap, halo=halo, circular=circular, kernel=kernel,
        sync_groupnorm=sync_groupnorm, park=park, pixel_input=False, sync_strategy=sync_strategy,
        attention=attention, park_budget_bytes=park_budget_bytes, park_dtype=park_dtype)

    def make_plan(h: int) -> VAETilePlan:
        return plan_vae_tiles(latents.shape[2], latents.shape[3], tile=tile, overlap=overlap, halo=h, scale=scale,
                              circular=circ)

    return _run_tiled(
        layout=layout, x=latents, make_plan=make_plan, halo=halo, default_halo=DEFAULT_DECODE_HALO_PX,
        reach_known=reach_known, in_unit=1,
        out_unit=scale, kernel=k, blend_overlap=overlap,
        sync=sync_groupnorm, park=park_dev, out_device=torch.device("cpu") if offload else None, report=report,
        strategy=sync_strategy, canvas_attention=attention == "canvas", park_budget_bytes=park_budget_bytes,
        park_dtype=pdt,
    )


def _posterior_ldm(moments: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Mode or sample of the diagonal Gaussian with (mean, log-variance) moments, as LDM's
    DiagonalGaussianDistribution (log-variance clamped to [-30, 20])."""
    mean, logvar = torch.chunk(moments, 2, dim=1)
    if not sample:
        return mean
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator is not None else "cpu")
    return mean + std * noise.to(mean.device, mean.dtype)


def tiled_encode(
    vae: Any,
    images: torch.Tensor,
    *,
    tile: int = 512,
    overlap: int | None = None,
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
    park_budget_bytes: int | None = None,
    park_dtype: str | None = None,
    report: dict | None = None,
) -> torch.Tensor:
    """Encode `images` tile by tile: the same output as the one-piece encode, unscaled.

    diffusers AutoencoderKL: `vae.encode(images).latent_dist.mode()` (`sample=True`:
    `.sample(generator)`). LDM-layout autoencoder (ComfyUI's `first_stage_model`): the
    posterior mode / sample of `quant_conv(encoder(images))` when that holds mean and
    log-variance (double_z), else the output itself. Bare LDM Encoder: `encoder(images)`.
    `images` in [-1, 1], shape (B, in_channels, H, W) with H, W multiples of the scale
    factor; `tile`, `overlap`, `halo` in pixels (`halo=None`: exact as in `tiled_decode`,
    else DEFAULT_ENCODE_HALO_PX).
    The posterior moments (mean, log-variance) are blended, then mode/sample is taken.
    The other options are those of `tiled_decode`.
    """
    layout = vae_layout(vae, "encode")
    reach_known = _reach_known(layout)
    overlap = _default_overlap(overlap, sync_groupnorm, attention, halo, reach_known)
    scale, k, circ, park_dev, pdt = _check_args(
        layout, images, what="images", tile=tile, overlap=overlap, halo=halo, circular=circular, kernel=kernel,
        sync_groupnorm=sync_groupnorm, park=park, pixel_input=True, sync_strategy=sync_strategy,
        attention=attention, park_budget_bytes=park_budget_bytes, park_dtype=park_dtype)
    if not isinstance(sample, bool):
        raise ConfigError(f"sample must be True (posterior sample) or False (posterior mode), got {sample!r}")

    def make_plan(h: int) -> VAETilePlan:
        return plan_vae_tiles(images.shape[2] // scale, images.shape[3] // scale, tile=tile, overlap=overlap, halo=h,
                              scale=scale, circular=circ)

    moments = _run_tiled(
        layout=layout, x=images, make_plan=make_plan, halo=halo, default_halo=DEFAULT_ENCODE_HALO_PX,
        reach_known=reach_known,
        in_unit=scale, out_unit=1, kernel=k, blend_overlap=overlap // scale,
        sync=sync_groupnorm, park=park_dev, out_device=torch.device("cpu") if offload else None, report=report,
        strategy=sync_strategy, canvas_attention=attention == "canvas", park_budget_bytes=park_budget_bytes,
        park_dtype=pdt,
    )
    if not layout.posterior:
        return moments
    if layout.kind == "diffusers":
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(moments)
        return dist.sample(generator) if sample else dist.mode()
    return _posterior_ldm(moments, sample, generator)


__all__ = [
    "ACCEPTED_VAES", "AxisTiles", "GroupStats", "VAELayout", "VAETilePlan", "blend_weight_sum",
    "parked_bytes_estimate", "plan_vae_tiles", "resolve_sync_strategy", "schedule_estimate", "tiled_decode",
    "tiled_encode",
    "vae_layout", "vae_scale_factor", "DEFAULT_DECODE_HALO_PX", "DEFAULT_ENCODE_HALO_PX", "DEFAULT_OVERLAP_PX",
    "PARK_DTYPES",
    "SYNC_STRATEGIES",
]
