"""The engine: tiled_decode / tiled_encode, and the rounds that bring every tile to each barrier."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import torch

from ..errors import ConfigError
from ..kernels import Kernel
from .geometry import CircularArg, VAETilePlan, _normalised_axis_weights, plan_vae_tiles
from .halo import _axis_runs, _reach_known, _refresh_halos, _unclipped_halos
from .layouts import VAELayout, vae_layout
from .options import DEFAULT_DECODE_HALO_PX, DEFAULT_ENCODE_HALO_PX, DiskPark, Park, SyncStrategy, _check_args, _default_overlap
from .parking import _DiskStore, malloc_trim
from .profile import ProgramProfile, program_profile
from .program import Message, _advance, _reply, _Tile
from .ranks import _Ranks, check_shard
from .schedule import _park_budget, _replay_start, _schedule, _strategy_name

if TYPE_CHECKING:
    from ..distributed import Shard


@dataclass(frozen=True)
class _Job:
    """One tiled run, checked and planned (`_prepare`): what `_run_tiled` needs.

    `make_plan(halo_px)` plans the tiles; `halo=None` picks the halo (`_schedule`). `x`
    holds latents or pixels (`in_unit` samples per latent pixel); tile outputs have
    `out_unit` samples per latent pixel and are blended with `kernel` over `blend_overlap`
    output samples."""

    layout: VAELayout
    x: torch.Tensor
    make_plan: Callable[[int], VAETilePlan]
    halo: int | None
    default_halo: int
    reach_known: bool
    in_unit: int
    out_unit: int
    kernel: Kernel
    blend_overlap: int
    sync: bool
    park: Park
    out_device: torch.device | None
    report: dict | None
    strategy: str = "auto"
    canvas_attention: bool = True
    park_budget_bytes: int | None = None
    park_dtype: torch.dtype | None = None
    #: a torch.distributed shard (`mdtools.distributed.Shard`): this rank runs its block of tiles
    shard: Any = None


def _prepare(vae: Any, x: Any, direction: Literal["decode", "encode"], *, tile: Any, overlap: Any, halo: Any,
             circular: Any, kernel: Any, sync_groupnorm: Any, offload: bool, park: Any, sync_strategy: Any,
             attention: Any, park_budget_bytes: Any, park_dtype: Any, report: dict | None, shard: Any = None) -> _Job:
    """What tiled_decode and tiled_encode share: read the layout, default the overlap, check
    every argument (ConfigError before any compute) and describe the tiles."""
    decode = direction == "decode"
    layout = vae_layout(vae, direction)
    reach_known = _reach_known(layout)
    overlap = _default_overlap(overlap, sync_groupnorm, attention, halo, reach_known)
    scale, k, circ, park_dev, pdt = _check_args(
        layout, x, what="latents" if decode else "images", tile=tile, overlap=overlap, halo=halo, circular=circular,
        kernel=kernel, sync_groupnorm=sync_groupnorm, park=park, pixel_input=not decode, sync_strategy=sync_strategy,
        attention=attention, park_budget_bytes=park_budget_bytes, park_dtype=park_dtype)
    if shard is not None:
        check_shard(shard, park_on_disk=isinstance(park_dev, DiskPark) and sync_groupnorm)
    # the latent canvas: latents as given, or the images' pixels over the scale factor
    lat_h, lat_w = (x.shape[2], x.shape[3]) if decode else (x.shape[2] // scale, x.shape[3] // scale)

    def make_plan(h: int) -> VAETilePlan:
        return plan_vae_tiles(lat_h, lat_w, tile=tile, overlap=overlap, halo=h, scale=scale, circular=circ)

    return _Job(
        layout=layout, x=x, make_plan=make_plan, halo=halo,
        default_halo=DEFAULT_DECODE_HALO_PX if decode else DEFAULT_ENCODE_HALO_PX, reach_known=reach_known,
        in_unit=1 if decode else scale, out_unit=scale if decode else 1, kernel=k,
        blend_overlap=overlap if decode else overlap // scale, sync=sync_groupnorm, park=park_dev,
        out_device=torch.device("cpu") if offload else None, report=report, strategy=sync_strategy,
        canvas_attention=attention == "canvas", park_budget_bytes=park_budget_bytes, park_dtype=pdt,
        shard=shard if shard is not None and shard.world > 1 else None)


class _Canvas:
    """The float32 output: each finished tile's body, weighted by its normalised blend
    weights (which sum to 1 at every output sample), added where it lands."""

    def __init__(self, plan: VAETilePlan, job: _Job, batch: int, channels: int, device: torch.device) -> None:
        self.plan, self.unit, self.device = plan, job.out_unit, device
        self.wy = _normalised_axis_weights(plan.y, job.kernel, job.out_unit, job.blend_overlap)
        self.wx = _normalised_axis_weights(plan.x, job.kernel, job.out_unit, job.blend_overlap)
        self.out = torch.zeros(batch, channels, plan.y.length * job.out_unit, plan.x.length * job.out_unit,
                               dtype=torch.float32, device=device)

    def add(self, T: _Tile, y: torch.Tensor) -> None:
        """Blend tile T's output `y` (halo included) into the canvas."""
        plan, unit = self.plan, self.unit
        i, j = T.key
        if not torch.isfinite(y).all():
            raise FloatingPointError(f"non-finite output in tile {T.key}; the VAE overflowed (fp16?) - "
                                     "run it in float32 or bfloat16")
        hy, hx = plan.y.halo_lo[i] * unit, plan.x.halo_lo[j] * unit
        ny, nx = plan.y.size * unit, plan.x.size * unit
        body = y[:, :, hy:hy + ny, hx:hx + nx].float() * torch.outer(self.wy[i], self.wx[j]).to(y.device)
        body = body.to(self.device)
        for dy, sy, ly in plan.y.segments(i, unit):
            for dx, sx, lx in plan.x.segments(j, unit):
                self.out[:, :, dy:dy + ly, dx:dx + lx] += body[:, :, sy:sy + ly, sx:sx + lx]


class _Rounds:
    """The driver of one run. No sync: one round, every tile from input to output. Sync:
    round k ends at barrier k; in every round each tile runs from its latest parked state
    (or from its input) to barrier k, reports, and is parked on `park` if barrier k is a
    checkpoint (see `_checkpoints`), else dropped. When every tile is parked at a
    checkpoint, their halos are refreshed from their neighbours' cores (`_refresh_halos`).
    Round k + 1 resumes a tile parked at barrier k directly; from an older checkpoint it
    replays a copy, so that checkpoint stays for later rounds. All tiles have then reached
    barrier k, so the pooled reply k is final: no strategy ever uses a provisional value."""

    def __init__(self, job: _Job, prof: ProgramProfile, plan: VAETilePlan, checkpoints: frozenset[int],
                 sync: bool, ranks: _Ranks | None = None) -> None:
        p = job.layout.parameter
        self.device, self.dtype = p.device, p.dtype
        self.job, self.prof, self.plan, self.checkpoints, self.sync = job, prof, plan, checkpoints, sync
        self.steps = job.layout.steps
        self.n_barriers = len(prof.values) if sync else 0
        self.tiles = list(plan.tiles())
        #: across ranks (`ranks`), this rank runs its block of tiles; the others' stay None in `parked`
        self.ranks = ranks
        self.mine = ranks.mine if ranks is not None else range(len(self.tiles))
        self.runs = (_axis_runs(plan.y), _axis_runs(plan.x))
        self.parked: list[Any] = [None] * len(self.tiles)  # _Tile, or _DiskState out of core
        #: replies of the barriers passed, shared by every tile (dead canvas keys: None)
        self.known: list[Any] = []
        self.tile_runs = self.resumes = self.parked_peak = self.attn_barriers = 0
        self.disk = isinstance(job.park, DiskPark) and sync
        self.store: _DiskStore | None = None
        # give freed tile memory back to the OS
        self.host = (self.device.type == "cpu" or (isinstance(job.park, torch.device) and job.park.type == "cpu")
                     or self.disk)

    def run(self, canvas: _Canvas) -> None:
        """Every round; the parking directory is removed at the end, also on failure."""
        try:
            self.store = _DiskStore(self.job.park.root, self.tiles, self.runs) if self.disk else None
            with torch.inference_mode():
                for k in range(self.n_barriers + 1):
                    self._round(k, canvas)
        finally:
            if self.store is not None:
                self.store.close()

    def _round(self, k: int, canvas: _Canvas) -> None:
        """Bring every tile to barrier k (the last round: to its output, blended into `canvas`)."""
        final = k == self.n_barriers
        msgs: list[Message] = []
        for t in self.mine:
            i, j = self.tiles[t]
            T = self._take(t, i, j, k, final)
            msg = _advance(T, self.steps)
            if msg is None:
                if not final:
                    raise RuntimeError(f"tile {T.key} finished before barrier {k}")
                canvas.add(T, T.stack.pop())
            else:
                if final or msg[0] != k:
                    raise RuntimeError("tiles reached different GroupNorm layers")
                msgs.append(self.store.put_kv(msg) if self.store is not None and msg[1] == "kv" else msg)
                del msg
                if k in self.checkpoints:
                    self._park(t, T, k)
            del T
            if self.host:
                malloc_trim()
        self._end_round(k, final, msgs)

    def _start(self, i: int, j: int) -> _Tile:
        """Tile (i, j) at its input: a modulo-indexed gather, one code path for clipped and
        wrapping halos."""
        plan, u, x = self.plan, self.job.in_unit, self.job.x
        ry, rx = plan.y.input_indices(i), plan.x.input_indices(j)
        iy = np.repeat(ry * u, u) + np.tile(np.arange(u), len(ry))
        ix = np.repeat(rx * u, u) + np.tile(np.arange(u), len(rx))
        self.tile_runs += 1
        xt = x.index_select(2, torch.as_tensor(iy, device=x.device)).index_select(
            3, torch.as_tensor(ix, device=x.device))
        return _Tile((i, j), (len(ry), len(rx)), plan.y.core[i] + plan.x.core[j], self.sync,
                     [xt.to(device=self.device, dtype=self.dtype)], known=self.known,
                     canvas_attention=self.sync and self.job.canvas_attention)

    def _take(self, t: int, i: int, j: int, k: int, final: bool) -> _Tile:
        """Tile t's state to run in round k: from its input; its parked state resumed (its
        next parked state replaces it); or a replay of a copy (the checkpoint is needed
        again next round, so it is not written)."""
        state = self.parked[t]
        if state is None:
            return self._start(i, j)
        if final or k in self.checkpoints:
            self.parked[t] = None
            if self.store is not None:
                return self.store.load(t, state, self.device, self.dtype, last=True)
            state.move(self.device, self.dtype)
            return state
        if self.store is not None:
            T = self.store.load(t, state, self.device, self.dtype, last=False)
        else:
            T = state.snapshot(self.device, self.dtype, copy_top=self.steps[state.pc].mutates_top)
        self.resumes += 1
        return T

    def _park(self, t: int, T: _Tile, k: int) -> None:
        """Keep tile t's state at checkpoint k: on the park device, or on disk."""
        if self.store is not None:
            self.parked[t] = self.store.park(t, T, k, self.job.park_dtype)
        else:
            T.move(self.job.park, self.job.park_dtype)
            self.parked[t] = T

    def _end_round(self, k: int, final: bool, msgs: list[Message]) -> None:
        """After every tile reached barrier k: refresh the halos at a checkpoint, free the
        canvas keys / values no replay reads again, and pool reply k."""
        if self.sync and self.checkpoints:
            self.parked_peak = max(self.parked_peak, sum(s.nbytes() for s in self.parked if s is not None))
        if final:
            return
        if k in self.checkpoints:
            if self.ranks is not None:  # owners on other ranks send their boxes
                self.ranks.refresh_halos(self.parked, self.tiles, self.runs)
            elif self.store is None:  # out of core, the owners' edge files refresh the halos on load
                _refresh_halos(self.parked, self.tiles, self.runs)
            for a in range(_replay_start(k + 1, self.checkpoints)):
                if self.prof.kv_each[a]:
                    if self.store is not None:
                        self.store.drop_kv(self.known[a])
                    self.known[a] = None
        if self.ranks is not None:  # every tile's message, in tile order
            msgs = self.ranks.gather_messages(msgs)
        kv = msgs[0][1] == "kv"
        self.known.append(self.store.kv_reply(msgs) if self.store is not None and kv else _reply(msgs, self.device))
        self.attn_barriers += kv


def _run_tiled(job: _Job) -> torch.Tensor:
    """Run the layout's tile program over every tile of the plan and blend the outputs
    (`_Rounds`); fills `job.report`."""
    layout = job.layout
    device = layout.parameter.device
    # One tile with no wrap holds the whole canvas: its own statistics are the canvas's,
    # and it is the full decode.
    probe = job.make_plan(0)
    # across ranks: the tiles split (ConfigError for more ranks than tiles), one schedule on all
    ranks = _Ranks(job.shard, probe.n_tiles, device) if job.shard is not None else None
    whole = probe.n_tiles == 1 and not (probe.y.wraps or probe.x.wraps)
    sync = job.sync and not whole
    if ranks is not None and sync and job.strategy == "auto" and job.park_budget_bytes is None:
        # every rank must choose the same checkpoints: the smallest rank's budget
        job = replace(job, park_budget_bytes=ranks.min_int(_park_budget(None, job.park)))
    prof = program_profile(layout, canvas_attention=sync and job.canvas_attention)
    sched = _schedule(layout, prof, job.make_plan, job.halo, default_halo=job.default_halo, sync=sync,
                      exact=sync and job.canvas_attention and job.reach_known, strategy=job.strategy, park=job.park,
                      park_budget_bytes=job.park_budget_bytes, park_dtype=job.park_dtype, batch=job.x.shape[0])
    plan = sched.plan
    # exact: the whole canvas in one tile, or halos that cover every round's reach through
    # every side that does not reach the canvas edge
    exact = whole or (sched.needed_px is not None and min(
        (h * layout.scale for h in _unclipped_halos(plan)), default=math.inf) >= sched.needed_px)
    canvas = _Canvas(plan, job, job.x.shape[0], prof.out_channels, device if job.out_device is None else job.out_device)
    rounds = _Rounds(job, prof, plan, sched.checkpoints, sync, ranks)
    rounds.run(canvas)
    if ranks is not None:
        ranks.sum_canvas(canvas.out)
    if job.report is not None:
        store = rounds.store
        job.report.update(
            n_tiles=plan.n_tiles, synced=sync, groupnorm_barriers=rounds.n_barriers - rounds.attn_barriers,
            canvas_attention=bool(rounds.attn_barriers),
            strategy=_strategy_name(sched.checkpoints, rounds.n_barriers) if sync else "none",
            tile_runs=rounds.tile_runs, resumes=rounds.resumes, checkpoints=len(sched.checkpoints),
            parked_peak_bytes=rounds.parked_peak, layout=layout.kind, halo_px=sched.halo_px,
            exact_halo_px=sched.needed_px, exact=exact, park="disk" if rounds.disk else str(job.park) if sync else None,
            disk_written_bytes=store.written if store is not None else 0,
            disk_read_bytes=store.read if store is not None else 0,
            world=ranks.world if ranks is not None else 1, rank=ranks.rank if ranks is not None else 0,
            rank_tiles=len(rounds.mine), comm_seconds=ranks.seconds if ranks is not None else 0.0,
            comm_calls=ranks.calls if ranks is not None else 0)
    return canvas.out


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
    shard: Shard | None = None,
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
    disk_read_bytes (out of core), and across ranks world, rank, rank_tiles (this rank's
    tiles), comm_seconds / comm_calls (this rank's collectives; 1, 0, n_tiles, 0.0, 0 on one).
    `shard` (an `mdtools.distributed.Shard` of an initialised torch.distributed group, every
    rank calling with the same arguments): each rank runs its block of tiles
    (`shard.block(n_tiles)`), the barrier messages and halos cross ranks, and every rank
    returns the whole output, equal to the one-rank run (docs/vae.md, "Across ranks").
    ConfigError before any compute for more ranks than tiles, or park="disk" with sync.
    """
    job = _prepare(vae, latents, "decode", tile=tile, overlap=overlap, halo=halo, circular=circular, kernel=kernel,
                   sync_groupnorm=sync_groupnorm, offload=offload, park=park, sync_strategy=sync_strategy,
                   attention=attention, park_budget_bytes=park_budget_bytes, park_dtype=park_dtype, report=report,
                   shard=shard)
    return _run_tiled(job)


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
    shard: Shard | None = None,
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
    The other options (`shard` too) are those of `tiled_decode`; across ranks, `sample=True`
    draws the same noise on every rank only from generators seeded alike.
    """
    job = _prepare(vae, images, "encode", tile=tile, overlap=overlap, halo=halo, circular=circular, kernel=kernel,
                   sync_groupnorm=sync_groupnorm, offload=offload, park=park, sync_strategy=sync_strategy,
                   attention=attention, park_budget_bytes=park_budget_bytes, park_dtype=park_dtype, report=report,
                   shard=shard)
    if not isinstance(sample, bool):
        raise ConfigError(f"sample must be True (posterior sample) or False (posterior mode), got {sample!r}")
    moments = _run_tiled(job)
    layout = job.layout
    if not layout.posterior:
        return moments
    if layout.kind == "diffusers":
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(moments)
        return dist.sample(generator) if sample else dist.mode()
    return _posterior_ldm(moments, sample, generator)
