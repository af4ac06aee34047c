"""Across ranks: the tiles of one tiled run split over a torch.distributed group, and what crosses at each barrier.

Each rank runs the programs of its contiguous block of tiles (`shard.block(n_tiles)`, row-major):
a block of whole tile rows (and part of one) borders the next rank along about one canvas row,
so few halos cross ranks. At a barrier every rank gathers every rank's messages (GroupNorm
(count, mean, var) per tile, or a tile's core keys / values) and pools them in global tile order
with the one-rank code (`_reply`): the reply is the one-rank reply, bit for bit. At a checkpoint
the halo boxes a tile's neighbour on another rank owns are gathered too (`refresh_halos`).
At the end the output canvases, each holding its rank's tiles (zero elsewhere), are summed.
All collectives are `all_gather` / `all_reduce` of tensors (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError
from .halo import _grid_box, _halo_copies, _unique

if TYPE_CHECKING:
    from ..distributed import Shard
    from .program import Message, _Tile

#: dtypes a gathered tensor may have (its index travels in the header)
_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                    torch.int32, torch.uint8, torch.bool)


def check_shard(shard: Any, *, park_on_disk: bool) -> None:
    """ConfigError, before any compute, for a shard that cannot run a tiled VAE: not a
    (rank, world) pair, a group that is not initialised or has another size, or out-of-core
    parking (its files and edge files are one process's)."""
    rank, world = getattr(shard, "rank", None), getattr(shard, "world", None)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (rank, world)) or not 0 <= rank < world:
        raise ConfigError(f"shard must be an mdtools.distributed.Shard (rank, world with 0 <= rank < world), e.g. "
                          f"Shard(dist.get_rank(), dist.get_world_size()); got {shard!r}")
    if world == 1:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(f"shard has world={world} but no torch.distributed process group is initialised; call "
                          "mdtools.distributed.init() (or dist.init_process_group) first, or pass shard=None")
    group = getattr(shard, "group", None)
    if dist.get_world_size(group) != world or dist.get_rank(group) != rank:
        raise ConfigError(f"shard (rank {rank}, world {world}) does not match its process group (rank "
                          f"{dist.get_rank(group)}, world {dist.get_world_size(group)}); use "
                          "Shard(dist.get_rank(), dist.get_world_size())")
    if park_on_disk:
        raise ConfigError(f"park='disk' cannot be used across ranks (world={world}): the out-of-core store is one "
                          "process's; use park='cpu' (or a device) with a shard, or shard=None")


class _Ranks:
    """This rank's tiles and the collectives of one run, timed (`seconds`, `calls`)."""

    def __init__(self, shard: Shard, n_tiles: int, device: torch.device) -> None:
        import torch.distributed as dist

        if shard.world > n_tiles:
            raise ConfigError(f"{shard.world} ranks but the tiled VAE has {n_tiles} tiles: every rank needs at least "
                              f"one; use at most {n_tiles} ranks, or a smaller tile")
        self.dist, self.shard, self.group = dist, shard, getattr(shard, "group", None)
        self.rank, self.world = shard.rank, shard.world
        # NCCL moves CUDA tensors only (the VAE's device, or the current one); gloo CPU tensors
        if dist.get_backend(self.group) == "nccl":
            self.device = device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.seconds, self.calls = 0.0, 0
        self.start, self.end = shard.block(n_tiles)
        blocks = self._timed(lambda: self._all_gather(torch.tensor([self.start, self.end], device=self.device)))
        self.owner = np.full(n_tiles, -1, dtype=np.int64)
        for r, b in enumerate(blocks):
            s, e = (int(v) for v in b)
            self.owner[s:e] = r
        if (self.owner < 0).any() or any(int(b[1]) <= int(b[0]) for b in blocks):
            raise ConfigError(f"shard.block({n_tiles}) must give every rank a non-empty block and cover every tile "
                              f"once; got {[tuple(int(v) for v in b) for b in blocks]}")

    @property
    def mine(self) -> range:
        return range(self.start, self.end)

    def _timed(self, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.seconds += dt
        self.calls += 1
        # the shard's own counters hold all of this process's communication
        if hasattr(self.shard, "comm_seconds"):
            self.shard.comm_seconds += dt
            self.shard.comm_calls += 1
        return out

    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(out, t, group=self.group)
        return out

    def gather(self, items: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Every rank's `items` (tensors of any shape and of `_DTYPES`), in rank order: one
        header gather (sizes), then one gather of each rank's bytes, padded to the longest."""
        head: list[int] = []
        for t in items:
            head += [_DTYPES.index(t.dtype), t.ndim, *t.shape]
        parts = [torch.tensor(head, dtype=torch.int64).view(torch.uint8).to(self.device)]
        parts += [t.detach().contiguous().reshape(-1).view(torch.uint8).to(self.device) for t in items]
        payload = torch.cat(parts)
        mine = torch.tensor([len(head), payload.numel()], device=self.device)
        sizes = self._timed(lambda: self._all_gather(mine))
        longest = max(1, max(int(s[1]) for s in sizes))
        buf = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        buf[:payload.numel()] = payload
        del parts, payload
        bufs = self._timed(lambda: self._all_gather(buf))
        return [_unpack(b, int(s[0])) for b, s in zip(bufs, sizes)]

    def gather_messages(self, msgs: list[Message]) -> list[Message]:
        """Every tile's message at one barrier, in global tile order (rank blocks are
        contiguous and ascending): what `_reply` pools on one rank."""
        items: list[torch.Tensor] = []
        for m in msgs:
            if m[1] == "stats":
                items += [torch.tensor([m[0], 0, m[2]], dtype=torch.int64), m[3], m[4]]
            else:
                items += [torch.tensor([m[0], 1, 0], dtype=torch.int64), m[2], m[3]]
        out: list[Message] = []
        for got in self.gather(items):
            for a in range(0, len(got), 3):
                layer, kv, n = (int(v) for v in got[a])
                if kv:
                    out.append((layer, "kv", got[a + 1], got[a + 2]))
                else:  # as `_stats_message` sends them: on the CPU
                    out.append((layer, "stats", n, got[a + 1].cpu(), got[a + 2].cpu()))
        return out

    def refresh_halos(self, parked: list[_Tile | None], tiles: list[tuple[int, int]], runs: tuple[list, list]) -> None:
        """`_refresh_halos` across ranks: copies between two tiles of this rank are local; a box
        owned here for a tile elsewhere is sent, one owned elsewhere for a tile here received."""
        own = self.owner
        width = len(_unique(parked[self.start].stack)[0])  # tensors per state, the same for every tile
        send: list[torch.Tensor] = []
        copies = list(_halo_copies(tiles, runs))
        for t, o, box in copies:
            if own[o] == self.rank:
                src = _box_values(parked[o], box[1], box[4], box[2], box[5], width)
                if own[t] == self.rank:
                    _write_box(parked[t], box, src)
                else:
                    send += src
        got = self.gather(send)
        for r in range(self.world):
            if r == self.rank:
                continue
            at = 0
            for t, o, box in copies:  # the order rank r sent in
                if own[o] != r or own[t] == r:
                    continue
                if own[t] == self.rank:
                    _write_box(parked[t], box, got[r][at:at + width])
                at += width

    def sum_canvas(self, out: torch.Tensor) -> None:
        """Sum every rank's canvas into `out` (each holds its tiles' blended outputs, zero elsewhere)."""
        buf = out if out.device == self.device else out.to(self.device)
        self._timed(lambda: self.dist.all_reduce(buf, group=self.group))
        if buf is not out:
            out.copy_(buf)

    def min_int(self, value: int) -> int:
        """The smallest of every rank's `value`."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._timed(lambda: self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN, group=self.group))
        return int(t.item())


def _unpack(buf: torch.Tensor, n_head: int) -> list[torch.Tensor]:
    """The tensors of one rank's gathered bytes (`_Ranks.gather`), as CPU / device tensors."""
    head = buf[:8 * n_head].clone().view(torch.int64).tolist()
    at, pos, out = 0, 8 * n_head, []
    while at < len(head):
        dtype, ndim = _DTYPES[head[at]], head[at + 1]
        shape = head[at + 2:at + 2 + ndim]
        at += 2 + ndim
        nbytes = math.prod(shape) * dtype.itemsize
        # a copy: the slice may start off the dtype's alignment
        out.append(buf[pos:pos + nbytes].clone().view(dtype).reshape(shape))
        pos += nbytes
    return out


def _box_values(S: _Tile, sy: int, sx: int, ny: int, nx: int, width: int) -> list[torch.Tensor]:
    """The latent box [sy:sy+ny, sx:sx+nx] of every distinct tensor of S's stack."""
    src, _ = _unique(S.stack)
    if len(src) != width:
        raise RuntimeError(f"tile {S.key} holds {len(src)} tensors at a barrier where others hold {width}")
    return [s[_grid_box(s, S.hw, S.key, sy, ny, sx, nx)] for s in src]


def _write_box(T: _Tile, box: tuple[int, int, int, int, int, int], values: list[torch.Tensor]) -> None:
    """Put `values` (one per distinct tensor of T's stack) at T's latent box [dy:dy+ny, dx:dx+nx]."""
    dy, _, ny, dx, _, nx = box
    dst, _ = _unique(T.stack)
    if len(dst) != len(values):
        raise RuntimeError(f"tile {T.key} holds {len(dst)} tensors, its halo refresh brings {len(values)}")
    for d, v in zip(dst, values):
        d[_grid_box(d, T.hw, T.key, dy, ny, dx, nx)] = v.to(d.device)
