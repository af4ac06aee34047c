"""Tile geometry: tiles on the latent grid, their halos and cores, and the blend weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Union

import numpy as np
import torch

from ..kernels import Kernel, get_kernel
from ..plan import plan_views

CircularArg = Union[bool, Literal["x"], Literal["y"], Literal["both"]]


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


def _tile_pixels(plan: VAETilePlan) -> int:
    return sum(len(plan.y.input_indices(i)) * len(plan.x.input_indices(j)) for i, j in plan.tiles())
