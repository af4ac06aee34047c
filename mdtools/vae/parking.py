"""Out-of-core parking (park="disk": tile states and canvas keys / values in files) and glibc's malloc_trim."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch

from .halo import _grid_box, _halo_copies, _unique
from .program import Message, _Tile

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


#: Give freed heap memory back to the OS (glibc's malloc_trim(0); a no-op elsewhere): called
#: between tiles by the engine, and by benchmarks before measuring a resident set.
malloc_trim: Callable[[], None] = _load_malloc_trim()
