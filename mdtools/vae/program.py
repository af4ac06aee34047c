"""The tile program: a tile's explicit state, the steps it runs, and the barriers where it stops."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from .groupnorm import GroupStats, _core_stats, _own_stats

if TYPE_CHECKING:
    from torch import nn

    from .blocks import _AttnSpec


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
