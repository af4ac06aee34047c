"""Halo exactness: how deep a tile edge's zero padding reaches, the exact halo, and the halo refresh."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch import nn

from .geometry import AxisTiles, VAETilePlan

if TYPE_CHECKING:
    from .layouts import VAELayout
    from .profile import ProgramProfile
    from .program import _Tile


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


def _exact_halo(prof: ProgramProfile, checkpoints: frozenset[int], n_steps: int) -> int:
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
