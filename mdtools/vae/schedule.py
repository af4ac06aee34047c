"""The cost planner: which barriers park (checkpoints), the halo, the budget, and schedule_estimate."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import check_choice
from .geometry import CircularArg, VAETilePlan, _tile_pixels, plan_vae_tiles
from .halo import _exact_halo, _reach_known, _unclipped_halos
from .layouts import VAELayout, vae_layout
from .options import (
    DEFAULT_DECODE_HALO_PX,
    DEFAULT_ENCODE_HALO_PX,
    PARK_BUDGET_FRACTION,
    SYNC_STRATEGIES,
    DiskPark,
    Park,
    _check_budget,
    _default_overlap,
    _park_dtype,
    check_park,
)
from .profile import ProgramProfile, program_profile


def _barrier_bytes(prof: ProgramProfile, plan: VAETilePlan, batch: int, element_size: int) -> list[int]:
    """Bytes that parking every tile at each barrier holds."""
    px = _tile_pixels(plan) * batch
    return [int(v * px * element_size) for v in prof.values]


def _kv_bytes(prof: ProgramProfile, plan: VAETilePlan, batch: int, element_size: int) -> int:
    """The canvas keys / values of every attention barrier of the program together."""
    return int(prof.kv_values * plan.y.length * plan.x.length * batch * element_size)


def _replay_start(b: int, checkpoints: frozenset[int] | set[int]) -> int:
    """The barrier where the replays of round b start: the latest checkpoint before b (0
    without one; tiles then run from their input). No tile passes an attention barrier
    before it again, so its canvas keys / values are dead: the engine frees them and the
    schedule stops counting them (`_live_kv_bytes`)."""
    return max((c for c in checkpoints if c < b), default=0)


def _live_kv_bytes(prof: ProgramProfile, plan: VAETilePlan, b: int, checkpoints: frozenset[int] | set[int], *,
                   batch: int, element_size: int) -> float:
    """The canvas keys / values held while round b runs (b = number of barriers: the final
    round): those of every attention barrier from `_replay_start(b)` to b, b's own being
    sent. The one count of live keys / values (`_checkpoints` and `schedule_estimate`)."""
    per_px = plan.y.length * plan.x.length * batch * element_size
    each = (*prof.kv_each, 0.0)  # the final round sends nothing
    return sum(each[a] * per_px for a in range(_replay_start(b, checkpoints), b + 1))


def parked_bytes_estimate(vae: Any, plan: VAETilePlan, *, decode: bool, element_size: int = 4,
                          batch: int = 1) -> int:
    """What the "park" strategy holds at its worst barrier: every tile's stack (halos
    included) at the barrier where the stacks are largest (SD's decoder: 256 channels at
    full resolution, 16384 values per latent pixel, 2.0 GiB at 1024^2 and 40 GiB at
    4096^2 with 64 px halos), plus the canvas keys and values of the mid-block attention
    (latent resolution)."""
    prof = program_profile(vae_layout(vae, "decode" if decode else "encode"), canvas_attention=True)
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
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _checkpoints(strategy: str, prof: ProgramProfile, plan: VAETilePlan, *, batch: int, element_size: int,
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
    chosen: set[int] = set()
    for b in range(n):  # the live keys of round b depend on the checkpoints before b only
        if sizes[b] + _live_kv_bytes(prof, plan, b, chosen, batch=batch, element_size=element_size) <= budget:
            chosen.add(b)
    return frozenset(chosen)


def _strategy_name(checkpoints: frozenset[int], n: int) -> str:
    """What a set of checkpoints among `n` barriers is called in reports."""
    return "park" if len(checkpoints) == n else "recompute" if not checkpoints else "checkpoint"


def resolve_sync_strategy(strategy: str, vae: Any, plan: VAETilePlan, *, decode: bool, park: str | Park,
                          park_budget_bytes: int | None = None, park_dtype: str | torch.dtype | None = None,
                          batch: int = 1) -> str:
    """What `strategy` runs as: "park", "recompute" or (from "auto" when only some barriers
    fit `park_budget_bytes`, default a quarter of `park`'s free memory) "checkpoint"."""
    check_choice("sync_strategy", strategy, SYNC_STRATEGIES)
    _check_budget(park_budget_bytes)
    layout = vae_layout(vae, "decode" if decode else "encode")
    prof = program_profile(layout, canvas_attention=True)
    park_dtype = _park_dtype(park_dtype)
    size = park_dtype.itemsize if park_dtype is not None else layout.parameter.element_size()
    budget = _park_budget(park_budget_bytes, check_park("park", park)) if strategy == "auto" else 0
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
    run (`program_profile`) scaled by each tile's pixels, and the replays are simulated
    round by round as the engine (`tiled._Rounds`) runs them. Use it to pick a
    `park_budget_bytes`, and to extrapolate canvases too large to decode here."""
    check_choice("sync_strategy", sync_strategy, SYNC_STRATEGIES)
    _check_budget(park_budget_bytes)
    layout = vae_layout(vae, "decode" if decode else "encode")
    prof = program_profile(layout, canvas_attention=True, macs=True)
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
                      park=check_park("park", park), park_budget_bytes=park_budget_bytes, park_dtype=park_dtype,
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
    live = [int(_live_kv_bytes(prof, plan, b, cps, batch=batch, element_size=size)) for b in range(n + 1)]
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
    """The bytes "auto" may park: as given, or PARK_BUDGET_FRACTION of `park`'s free memory."""
    return int(PARK_BUDGET_FRACTION * _free_bytes(park)) if park_budget_bytes is None else park_budget_bytes


@dataclass(frozen=True)
class _Schedule:
    """What a tiled run will do: its plan, the barriers where tiles are parked (and their
    halos refreshed), the halo it runs with and the halo exactness needs (pixels)."""

    plan: VAETilePlan
    checkpoints: frozenset[int]
    halo_px: int
    needed_px: int | None  # None: no halo makes it exact (no sync, or attention within tiles)


def _schedule(layout: VAELayout, prof: ProgramProfile, make_plan: Callable[[int], VAETilePlan], halo: int | None, *,
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
