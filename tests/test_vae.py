"""Tiled VAE: exactness against the full decode/encode, GroupNorm sync, wrap, coverage, checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mdtools import ConfigError
from mdtools.vae import GroupStats, blend_weight_sum, plan_vae_tiles, tiled_decode, tiled_encode

TOY_VAE_DIR = Path(__file__).resolve().parent.parent / "mdtools" / "assets" / "toy-sd" / "vae"
# canvas and tiling used by most tests: 16 x 16 latents (128 px), 3 x 3 tiles
LAT, TILE, OVERLAP = 16, 64, 16
# a halo well short of the canvas, so tiles really lack context (the default 64 px
# would let every 64 px tile see all of this small canvas)
HALO = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, and immune to the spin-wait
    slowdown (x40 measured) of two OpenMP threads on 2 cores shared with another job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_vae(*, attention: bool, seed: int = 0, channels: tuple[int, ...] = (32, 32, 32, 32)):
    """A tiny random SD-style AutoencoderKL: scale factor 8, 8 groups of 4 channels, 4 latent
    channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(
        block_out_channels=channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        mid_block_add_attention=attention, sample_size=TILE,
    ).eval()


def structured_latents(h: int, w: int, *, seed: int = 0) -> torch.Tensor:
    """Latents with large-scale structure (bright / dark regions) plus noise: per-tile
    GroupNorm statistics then really differ, as in a real image."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([3 * torch.sin(3 * xx + c) * torch.cos(2 * yy - c) + 2 * (xx - 0.5) for c in range(4)])
    return base[None] + 0.5 * torch.randn(1, 4, h, w, generator=g)


def errors(a: torch.Tensor, b: torch.Tensor, value_range: float = 2.0) -> dict[str, float]:
    d = (a.float() - b.float()).abs()
    mse = float((d**2).mean())
    return {"max": float(d.max()), "mean": float(d.mean()),
            "psnr": 10 * math.log10(value_range**2 / mse) if mse > 0 else math.inf}


def diffusers_tiling(vae, tile: int, overlap: int) -> None:
    """Match diffusers' enable_tiling to our tile size: tile px, overlap px."""
    vae.enable_tiling()
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // 8
    vae.tile_overlap_factor = overlap / tile


@pytest.fixture(scope="module", params=[False, True], ids=["no-attn", "mid-attn"])
def vae(request):
    return make_vae(attention=request.param)


@pytest.fixture(scope="module")
def latents():
    return structured_latents(LAT, LAT)


@pytest.fixture(scope="module")
def full(vae, latents):
    with torch.no_grad():
        return vae.decode(latents).sample


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("circular", [False, "x", "y", "both"])
@pytest.mark.parametrize("lat_h, lat_w, tile, overlap, halo", [(24, 24, 96, 32, 64), (17, 41, 64, 16, 32),
                                                               (8, 8, 128, 32, 64), (30, 12, 40, 0, 8)])
def test_cores_partition_canvas_and_weights_sum_to_one(lat_h, lat_w, tile, overlap, halo, circular):
    plan = plan_vae_tiles(lat_h, lat_w, tile=tile, overlap=overlap, halo=halo, scale=8, circular=circular)
    # every latent pixel counted exactly once in the GroupNorm statistics
    assert (plan.core_count() == 1).all()
    # every output pixel fully written: the normalised blend weights sum to 1
    for kernel in ("linear", "gaussian", "uniform"):
        ws = blend_weight_sum(plan, kernel, overlap=overlap)
        assert ws.shape == (lat_h * 8, lat_w * 8)
        assert torch.allclose(ws, torch.ones_like(ws), atol=1e-6)


def test_chan_merge_keeps_between_tile_variance():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(2, 3, n, generator=g) * s + m for n, s, m in ((50, 1.0, -2.0), (70, 3.0, 5.0), (9, 0.1, 0))]
    pooled = GroupStats()
    for p in parts:
        var, mean = torch.var_mean(p, dim=-1, correction=0)
        pooled.merge(p.shape[-1], mean, var)
    allx = torch.cat(parts, dim=-1).double()
    assert torch.allclose(pooled.mean, allx.mean(-1), atol=1e-6)
    assert torch.allclose(pooled.var, allx.var(-1, correction=0), atol=1e-5)
    # A1111's pooling (weighted mean of per-tile variances) is biased low here
    a1111 = sum(p.shape[-1] * p.var(-1, correction=0) for p in parts) / allx.shape[-1]
    assert (a1111 < pooled.var.float() * 0.5).all()


# ---------------------------------------------------------------- decode exactness


def test_one_tile_equals_full_decode(vae, latents, full):
    out = tiled_decode(vae, latents, tile=LAT * 8, overlap=0)
    assert out.shape == full.shape
    assert torch.allclose(out, full, atol=1e-4), errors(out, full)


def test_sync_with_whole_canvas_halo_equals_full_decode(vae, latents, full):
    """With halos reaching the whole canvas every tile computes the full activations, so
    exact statistics pooled over the cores must reproduce the full decode."""
    rep: dict = {}
    out = tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, halo=LAT * 8, report=rep)
    assert rep["n_tiles"] == 9 and rep["synced"]
    assert torch.allclose(out, full, atol=1e-3), errors(out, full)


def test_sync_beats_no_sync_and_diffusers_tiling(vae, latents, full):
    synced = errors(tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, halo=HALO), full)
    unsynced = errors(tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, halo=HALO, sync_groupnorm=False), full)
    diffusers_tiling(vae, TILE, OVERLAP)
    try:
        with torch.no_grad():
            ref_tiled = errors(vae.decode(latents).sample, full)
    finally:
        vae.disable_tiling()
    print(f"\ndecode vs full: sync {synced}\n  no-sync {unsynced}\n  diffusers tiling {ref_tiled}")
    for key in ("mean", "max"):
        assert synced[key] < unsynced[key] and synced[key] < ref_tiled[key]
    assert synced["psnr"] > unsynced["psnr"] + 3 and synced["psnr"] > ref_tiled["psnr"] + 8
    if not any(a is not None for a in vae.decoder.mid_block.attentions):
        # without attention the only approximation left is zero padding beyond the halo
        assert synced["psnr"] > 25


def test_encode_sync_beats_no_sync_and_diffusers(latents):
    vae = make_vae(attention=True)  # one variant keeps the suite fast; it is the harder one
    with torch.no_grad():
        decoded = vae.decode(latents).sample
        # an image with a strong left-right brightness gradient: tile statistics differ
        images = decoded.clamp(-1, 1) + 0.3 * torch.linspace(-1, 1, decoded.shape[-1])
        ref = vae.encode(images).latent_dist.mode()
    one = tiled_encode(vae, images, tile=LAT * 8, overlap=0)
    assert torch.allclose(one, ref, atol=1e-4), errors(one, ref)
    rng = float(ref.max() - ref.min())
    synced = errors(tiled_encode(vae, images, tile=TILE, overlap=OVERLAP, halo=HALO), ref, rng)
    unsynced = errors(tiled_encode(vae, images, tile=TILE, overlap=OVERLAP, halo=HALO, sync_groupnorm=False),
                      ref, rng)
    diffusers_tiling(vae, TILE, OVERLAP)
    try:
        with torch.no_grad():
            ref_tiled = errors(vae.encode(images).latent_dist.mode(), ref, rng)
    finally:
        vae.disable_tiling()
    print(f"\nencode vs full: sync {synced}\n  no-sync {unsynced}\n  diffusers tiling {ref_tiled}")
    assert synced["mean"] < unsynced["mean"] and synced["mean"] < ref_tiled["mean"]
    assert synced["psnr"] > ref_tiled["psnr"]
    s = tiled_encode(vae, images, tile=TILE, overlap=OVERLAP, sample=True, generator=torch.Generator().manual_seed(0))
    assert s.shape == ref.shape and not torch.equal(s, tiled_encode(vae, images, tile=TILE, overlap=OVERLAP))


# ---------------------------------------------------------------- 360-degree wrap


def test_circular_decode_matches_circularly_padded_full_decode():
    """Reference for a seamless torus: the full decode with every padded conv set to
    circular padding. Tiled circular="both" must match it, wrap lines included."""
    vae = make_vae(attention=False)
    z = structured_latents(12, 16)
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0)]
    try:
        for m in convs:
            m.padding_mode = "circular"
        with torch.no_grad():
            ref = vae.decode(z).sample
    finally:
        for m in convs:
            m.padding_mode = "zeros"
    out = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, circular="both")
    assert errors(out, ref)["psnr"] > 60
    d = (out - ref).abs()
    assert float(d[..., :, :8].max()) < 5e-3 and float(d[..., :, -8:].max()) < 5e-3
    # without wrap the two ends are not neighbours: large error at the wrap columns
    flat = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, circular=False)
    assert float((flat - ref).abs()[..., :8].mean()) > 20 * float(d[..., :8].mean())


def test_circular_x_has_no_wrap_seam():
    """Rolling the latent by half the width and rolling the image back changes only tile
    placement: with circular="x" the wrap line is as good as any other place."""
    vae = make_vae(attention=False)
    z = structured_latents(8, 24)
    a = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, circular="x")
    b = tiled_decode(vae, torch.roll(z, 12, dims=-1), tile=TILE, overlap=OVERLAP, circular="x")
    b = torch.roll(b, -96, dims=-1)
    assert errors(a, b)["psnr"] > 50


# ---------------------------------------------------------------- robustness and checks


def test_non_finite_values_raise(vae, latents):
    bad = latents.clone()
    bad[..., 3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        tiled_decode(vae, bad, tile=TILE, overlap=OVERLAP)
    with pytest.raises(FloatingPointError, match="non-finite"):
        tiled_decode(vae, bad, tile=TILE, overlap=OVERLAP, sync_groupnorm=False)


def test_bfloat16_vae_decodes_finite(latents):
    vae = make_vae(attention=True).to(torch.bfloat16)
    out = tiled_decode(vae, latents.to(torch.bfloat16), tile=TILE, overlap=OVERLAP, offload=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = tiled_decode(make_vae(attention=True), latents, tile=TILE, overlap=OVERLAP)
    assert errors(out, ref)["psnr"] > 25


@pytest.mark.parametrize("kwargs, match", [
    (dict(tile=36), r"tile=36 is not a multiple of the VAE scale factor \(8\); use 32 or 40"),
    (dict(tile=0), r"tile must be > 0"),
    (dict(tile=32, overlap=32), r"overlap=32 must be smaller than tile=32"),
    (dict(overlap=-8), r"overlap must be an integer >= 0"),
    (dict(overlap=12), r"overlap=12 is not a multiple of the VAE scale factor \(8\); use 8 or 16"),
    (dict(halo=4), r"halo=4 is not a multiple"),
    (dict(circular="z"), r"circular='z' is not valid; choose one of"),
    (dict(kernel="box"), r"kernel='box' is not a known kernel"),
    (dict(sync_groupnorm="yes"), r"sync_groupnorm must be True or False"),
    (dict(sync_strategy="lazy"), r"sync_strategy='lazy' is not valid; choose one of \['auto', 'park', 'recompute'\]"),
    (dict(attention="global"), r"attention='global' is not valid; choose one of \['canvas', 'tile'\]"),
    (dict(park="disk:/no/such/dir"), r"park='disk:/no/such/dir': '/no/such/dir' is not a writable directory"),
    (dict(park="ram"), r"park must be a device such as 'cpu' or 'cuda', or 'disk'"),
])
def test_bad_arguments_rejected(kwargs, match):
    vae = make_vae(attention=False)
    z = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ConfigError, match=match):
        tiled_decode(vae, z, **{"tile": 32, "overlap": 0, **kwargs})


def test_bad_inputs_rejected():
    vae = make_vae(attention=False)
    with pytest.raises(ConfigError, match="latents must have 4 channels"):
        tiled_decode(vae, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="4-D tensor"):
        tiled_decode(vae, torch.zeros(4, 8, 8))
    with pytest.raises(ConfigError, match=r"images height=60 is not a multiple .* use 56 or 64"):
        tiled_encode(vae, torch.zeros(1, 3, 60, 64))
    with pytest.raises(ConfigError, match="diffusers AutoencoderKL"):
        tiled_decode(torch.nn.Linear(2, 2), torch.zeros(1, 4, 8, 8))


# ---------------------------------------------------------------- the trained toy VAE


@pytest.mark.skipif(not (TOY_VAE_DIR / "config.json").is_file(), reason="toy model not trained yet")
def test_toy_vae_sync_beats_no_sync_and_diffusers():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(TOY_VAE_DIR).eval().float()
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    # a smooth image with dark and bright halves: the case where tile statistics differ
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 20 * f), torch.linspace(-1, 1, 20 * f), indexing="ij")
    img = torch.stack([0.8 * xx, 0.5 * torch.sin(4 * yy), -0.6 * xx * yy])[None].clamp(-1, 1)
    with torch.no_grad():
        z = vae.encode(img).latent_dist.mode()
        full = vae.decode(z).sample
    tile, overlap = 8 * f, 2 * f  # 3 x 3 tiles
    s = errors(tiled_decode(vae, z, tile=tile, overlap=overlap, halo=2 * f), full)
    n = errors(tiled_decode(vae, z, tile=tile, overlap=overlap, halo=2 * f, sync_groupnorm=False), full)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = tile, tile // f, overlap / tile
    with torch.no_grad():
        d = errors(vae.decode(z).sample, full)
    print(f"\ntoy VAE decode vs full: sync {s}\n  no-sync {n}\n  diffusers {d}")
    assert s["mean"] <= n["mean"] and s["mean"] < d["mean"]


@pytest.mark.parametrize("attention", [False, True])
def test_default_halo_is_exact_for_every_strategy(attention):
    """halo=None: each strategy runs with the smallest halo that is exact for its
    checkpoints, because tiles parked at a checkpoint take their halo from the
    neighbours' cores (`_refresh_halos`). "park" refreshes at every barrier, so 2 latent
    px (the deepest zero-padding reach between two barriers: conv2, then the upsampling
    conv) suffice; "recompute" needs the whole program's reach. All equal the full decode
    to float noise; without the refresh, park at 16 px is far off."""
    import mdtools.vae as V
    import mdtools.vae.options as VO
    import mdtools.vae.tiled as VT

    vae = make_vae(attention=attention)
    z = structured_latents(LAT, 20)
    with torch.no_grad():
        full = vae.decode(z).sample
    halos = {}
    for strategy, extra in (("park", {}), ("recompute", {}), ("auto", {"park_budget_bytes": 300_000})):
        rep: dict = {}
        out = tiled_decode(vae, z, tile=TILE, sync_strategy=strategy, report=rep, **extra)
        e = errors(out, full)
        assert rep["exact"] and rep["halo_px"] == rep["exact_halo_px"] and rep["n_tiles"] > 1, rep
        assert e["max"] < 2e-5 and e["psnr"] > 120, (strategy, e)
        halos[rep["strategy"]] = rep["halo_px"]
    assert halos["park"] == 16 < halos["checkpoint"] < halos["recompute"], halos
    # the same encode: exact with its own small park halo
    img = full.clamp(-1, 1)
    with torch.no_grad():
        ref = vae.encode(img).latent_dist.mode()
    rep = {}
    enc = tiled_encode(vae, img, tile=TILE, sync_strategy="park", report=rep)
    assert rep["exact"] and errors(enc, ref)["max"] < 2e-5, (rep, errors(enc, ref))
    # a given halo below what the checkpoints need is run as given, and reported inexact
    rep = {}
    tiled_decode(vae, z, tile=TILE, halo=16, overlap=0, sync_strategy="recompute", report=rep)
    assert not rep["exact"] and rep["exact_halo_px"] == halos["recompute"]
    # a given halo is not known to be exact beforehand, so the default overlap blends
    assert VO._default_overlap(None, True, "canvas", 16) == V.DEFAULT_OVERLAP_PX
    assert VO._default_overlap(None, True, "canvas", None) == 0 == VO._default_overlap(0, False, "tile", 16)
    assert VO._default_overlap(None, False, "canvas", None) == V.DEFAULT_OVERLAP_PX
    # without the refresh, the same 16 px park run carries the zero padding inwards
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VT, "_refresh_halos", lambda *a: calls.append(1))
        stale = tiled_decode(vae, z, tile=TILE, halo=16, overlap=0, sync_strategy="park")
    assert calls and errors(stale, full)["max"] > 1e-3


# ---------------------------------------------------------------- canvas-wide attention


@pytest.mark.parametrize("strategy", ["park", "recompute"])
def test_canvas_attention_makes_the_synced_decode_equal_the_full_decode(strategy):
    """With GroupNorm sync, the only non-local operation left is the mid-block
    self-attention; giving it the canvas keys / values (each canvas pixel once, from the
    tile cores) leaves only the halo's zero padding: 78 dB here with a 64 px halo, 130 dB
    with 128 (measured). Attention within tiles is far off."""
    vae = make_vae(attention=True)
    z = structured_latents(LAT, 20)
    with torch.no_grad():
        full = vae.decode(z).sample
    kw = dict(tile=TILE, overlap=OVERLAP, halo=64, sync_strategy=strategy)
    canvas = errors(tiled_decode(vae, z, **kw), full)
    tile = errors(tiled_decode(vae, z, attention="tile", **kw), full)
    assert canvas["max"] < 1e-2 and canvas["psnr"] > 70, canvas
    assert tile["mean"] > 10 * canvas["mean"], (tile, canvas)
    img = full.clamp(-1, 1)
    with torch.no_grad():
        ref = vae.encode(img).latent_dist.mode()
    enc = errors(tiled_encode(vae, img, **kw), ref, value_range=float(ref.max() - ref.min()))
    enc_tile = errors(tiled_encode(vae, img, attention="tile", **kw), ref, value_range=float(ref.max() - ref.min()))
    assert enc["max"] < 1e-3 and enc_tile["mean"] > 10 * enc["mean"], (enc, enc_tile)


# ---------------------------------------------------------------- memory strategies


@pytest.mark.parametrize("attention", [False, True])
def test_recompute_strategy_gives_the_park_result_bit_for_bit(attention):
    """"recompute" re-runs every tile up to each GroupNorm with the final statistics of the
    earlier layers: the same arithmetic as lock-step parking, so the same bits."""
    vae = make_vae(attention=attention)
    z = structured_latents(LAT, 20)
    park, rec = {}, {}
    # recompute's own (exact) halo for both: park then refreshes halos that are exact already
    b = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, sync_strategy="recompute", report=rec)
    kw = dict(tile=TILE, overlap=OVERLAP, halo=rec["halo_px"])
    a = tiled_decode(vae, z, sync_strategy="park", report=park, **kw)
    assert rec["exact"] and rec["halo_px"] == rec["exact_halo_px"] > park["exact_halo_px"]
    assert torch.equal(a, b)
    assert park["strategy"] == "park" and rec["strategy"] == "recompute"
    # one run per tile and barrier, plus the final pass
    barriers = rec["groupnorm_barriers"] + int(rec["canvas_attention"])
    assert rec["canvas_attention"] == attention
    assert rec["tile_runs"] == rec["n_tiles"] * (barriers + 1) and park["tile_runs"] == park["n_tiles"]
    img = a.clamp(-1, 1)
    e1 = tiled_encode(vae, img, sync_strategy="park", **kw)
    e2 = tiled_encode(vae, img, sync_strategy="recompute", **kw)
    assert torch.equal(e1, e2)


def test_auto_strategy_parks_only_within_its_budget(monkeypatch):
    """"auto" parks every tile at each barrier whose parked states fit the budget (default
    a quarter of the free memory), and replays tiles from their latest parked state
    (checkpoint) to reach the others: "park" when all fit, "recompute" when none does,
    "checkpoint" in between, never more than the budget parked, and always the same bits."""
    import mdtools.vae as V
    import mdtools.vae.schedule as VS

    vae = make_vae(attention=False)
    # a halo that is exact for every strategy (the whole canvas), so all give the same bits
    plan = plan_vae_tiles(LAT, LAT, tile=TILE, overlap=OVERLAP, halo=LAT * 8, scale=8)
    need = V.parked_bytes_estimate(vae, plan, decode=True)
    # decoder worst barrier: norm2 of a resnet at full resolution holds its skip and
    # conv1's output, 2 x 32 channels x 64 values per latent pixel; no attention, no keys
    px = sum(len(plan.y.input_indices(i)) * len(plan.x.input_indices(j)) for i, j in plan.tiles())
    assert need == 2 * 32 * 64 * px * 4
    cpu = torch.device("cpu")
    monkeypatch.setattr(VS, "_free_bytes", lambda device: 4 * need)
    assert V.resolve_sync_strategy("auto", vae, plan, decode=True, park=cpu) == "park"
    monkeypatch.setattr(VS, "_free_bytes", lambda device: 4 * need - 4)
    assert V.resolve_sync_strategy("auto", vae, plan, decode=True, park=cpu) == "checkpoint"
    assert V.resolve_sync_strategy("auto", vae, plan, decode=True, park=cpu, park_budget_bytes=1000) == "recompute"
    assert V.resolve_sync_strategy("park", vae, plan, decode=True, park=cpu, park_budget_bytes=0) == "park"
    z = structured_latents(LAT, LAT)
    kw = dict(tile=TILE, overlap=OVERLAP, halo=LAT * 8)
    rep32: dict = {}
    ref = tiled_decode(vae, z, sync_strategy="park", report=rep32, **kw)
    for budget, strategy in ((need // 3, "checkpoint"), (0, "recompute")):
        rep: dict = {}
        out = tiled_decode(vae, z, park_budget_bytes=budget, report=rep, **kw)
        assert rep["strategy"] == strategy and rep["parked_peak_bytes"] <= budget, rep
        assert torch.equal(out, ref)
    # opt-in half-precision parking: half the parked bytes, close but not float-exact
    rep16: dict = {}
    half = tiled_decode(vae, z, sync_strategy="park", park_dtype="bfloat16", report=rep16, **kw)
    assert rep16["parked_peak_bytes"] * 2 == rep32["parked_peak_bytes"]
    assert 0 < errors(half, ref)["max"] < 0.1


def test_disk_parking_equals_memory_parking(tmp_path, monkeypatch):
    """park="disk" keeps parked states and canvas keys / values in files: the same bits
    as parking in memory where only states move (attention within tiles), float noise
    with canvas attention (the keys stream in blocks through an online softmax); the halo
    refresh comes from edge files (without it this 16 px park run would be far off, see
    above). Its files are gone afterwards, also when the decode fails."""
    import socket
    import subprocess
    import sys

    import mdtools.vae.parking as VP
    import mdtools.vae.program as VG

    vae = make_vae(attention=True)
    z = structured_latents(LAT, 20)
    with torch.no_grad():
        full = vae.decode(z).sample
    park = f"disk:{tmp_path}"
    for strategy, extra in (("park", {}), ("auto", {"park_budget_bytes": 300_000}), ("recompute", {})):
        mem, disk = {}, {}
        a = tiled_decode(vae, z, tile=TILE, sync_strategy=strategy, report=mem, **extra)
        b = tiled_decode(vae, z, tile=TILE, sync_strategy=strategy, park=park, report=disk, **extra)
        assert disk["park"] == "disk" and disk["strategy"] == mem["strategy"] and disk["halo_px"] == mem["halo_px"]
        assert disk["parked_peak_bytes"] == mem["parked_peak_bytes"] and disk["disk_read_bytes"] > 0
        assert errors(b, full)["max"] < 2e-5 and errors(a, b)["max"] < 2e-5, (errors(b, full), errors(a, b))
        # wrapping halos (a tile may own part of its own halo), states only on disk: same bits
        kw = dict(tile=TILE, sync_strategy=strategy, attention="tile", halo=HALO, overlap=OVERLAP, circular="both",
                  **extra)
        assert torch.equal(tiled_decode(vae, z, **kw), tiled_decode(vae, z, park=park, **kw))
        assert list(tmp_path.iterdir()) == []
    img = full.clamp(-1, 1)
    kw = dict(tile=TILE, sync_strategy="park", attention="tile", halo=HALO, overlap=OVERLAP)
    ref = tiled_encode(vae, img, **kw)
    monkeypatch.setattr(VP, "READ_CHUNK_BYTES", 1000)  # tensors read back in many pieces
    assert torch.equal(ref, tiled_encode(vae, img, park=park, **kw))
    monkeypatch.undo()
    kw = dict(tile=TILE, sync_strategy="park", circular="x")
    assert errors(tiled_encode(vae, img, park=park, **kw), tiled_encode(vae, img, **kw))["max"] < 2e-5
    # a failure after files were written removes them too
    real = VG._stats_message

    def failing(T, mod):
        if T.layer >= 8:  # states of 8 barriers were parked on disk by then
            raise FloatingPointError("injected")
        return real(T, mod)

    monkeypatch.setattr(VG, "_stats_message", failing)
    with pytest.raises(FloatingPointError, match="injected"):
        tiled_decode(vae, z, tile=TILE, sync_strategy="park", park=park)
    assert list(tmp_path.iterdir()) == []
    # a directory left by a killed run of this host is removed by the next run
    stale = tmp_path / "mdtools-park-stale"
    stale.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale / "owner").write_text(f"{socket.gethostname()} {dead.pid}\n")
    monkeypatch.setattr(VG, "_stats_message", real)
    tiled_decode(vae, z, tile=TILE, sync_strategy="park", park=park)
    assert list(tmp_path.iterdir()) == []


def test_online_softmax_attention_equals_one_piece_attention():
    """The block-wise attention of disk parking against a float64 one-piece attention: its
    rounding error is that of torch's float32 one-piece attention (within 2x)."""
    import torch.nn.functional as F

    from mdtools.vae.blocks import _attend_blocks

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) * 3 for n in (70, 90, 90))
    blocks = [(k[:, :, a:b], v[:, :, a:b]) for a, b in ((0, 7), (7, 50), (50, 90))]
    for scale in (None, 0.5):
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
        torch32 = (F.scaled_dot_product_attention(q, k, v, scale=scale).double() - exact).abs().max()
        ours = (_attend_blocks(q, iter(blocks), scale).double() - exact).abs().max()
        assert ours <= 2 * torch32 + 1e-6, (scale, ours, torch32)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("height", [16, 37])
def test_conv_strips_equal_the_one_shot_convolution(monkeypatch, up, height):
    import mdtools.vae.blocks as V

    monkeypatch.setattr(V, "STRIP_MIN_VALUES", 0)
    monkeypatch.setattr(V, "STRIPS", 5)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, height, 11)
    pre = lambda t: torch.nn.functional.silu(t * 0.7 + 0.1)  # noqa: E731
    with torch.no_grad():
        ref = conv(pre(torch.nn.functional.interpolate(x, scale_factor=2.0) if up == 2 else x))
        got = V._conv_strips(conv, x, pre, up=up)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-6)


def test_strip_execution_does_not_change_the_decode(monkeypatch, vae, latents):
    import mdtools.vae.blocks as V

    kw = dict(tile=TILE, overlap=OVERLAP, halo=HALO)
    a = tiled_decode(vae, latents, **kw)
    monkeypatch.setattr(V, "STRIP_MIN_VALUES", 0)
    monkeypatch.setattr(V, "STRIPS", 3)
    b = tiled_decode(vae, latents, **kw)
    assert torch.allclose(a, b, atol=1e-5), errors(a, b)


@pytest.mark.parametrize("length, tile, overlap, n, size", [(128, 64, 8, 3, 48), (64, 64, 8, 1, 64), (65, 64, 8, 2, 37),
                                                           (40, 64, 8, 1, 40)])
def test_tiles_shrink_to_the_fewest_that_cover(length, tile, overlap, n, size):
    """`tile` is a maximum: a 1024 px canvas at tile 512 / overlap 64 takes 3 tiles of 384 px
    (not 3 tiles of 512 spread with 256 px overlaps: 1.8x the pixels to decode)."""
    plan = plan_vae_tiles(length, 8, tile=tile * 8, overlap=overlap * 8, halo=0, scale=8)
    assert len(plan.y.starts) == n and plan.y.size == min(size, length)
    assert (plan.core_count() == 1).all()


def test_numpy_free_of_warnings_on_plan():
    # plans for degenerate canvases (one latent pixel) still partition
    plan = plan_vae_tiles(1, 1, tile=8, overlap=0, halo=8, scale=8)
    assert plan.n_tiles == 1 and np.array_equal(plan.core_count(), [[1]])


# ---------------------------------------------------------------- wired into generation


def test_generation_uses_tiled_decode_and_records_the_choice(sd_pipe):
    """md(..., vae_tiling=...) decodes with tiled_decode (same pixels as calling it on the
    final latents), and the run record says which tiling and sync strategy ran."""
    from mdtools import MultiDiffusionPipeline

    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    kw = dict(height=64, width=192, overlap=32, num_inference_steps=2, generator=0, progress=False)
    opts = {"tiling": True, "tile": 64, "overlap": 16, "sync_strategy": "recompute"}
    out = md("a", output_type="pt", vae_tiling=opts, **kw)
    rec = out.record.extra["vae_tiling"]
    assert rec["tile"] == 64 and rec["overlap"] == 16 and rec["sync_groupnorm"] is True
    assert rec["strategy"] == "recompute" and rec["n_tiles"] == 4 and rec["groupnorm_barriers"] > 0
    z = out.latents / md.vae.config.scaling_factor
    ref = tiled_decode(md.vae, z, tile=64, overlap=16, sync_strategy="park")
    img = out.images if isinstance(out.images, torch.Tensor) else torch.as_tensor(np.asarray(out.images))
    assert torch.allclose(img.reshape(ref.shape), (ref / 2 + 0.5).clamp(0, 1), atol=1e-5)
    off = md("a", output_type="latent", vae_tiling=False, **kw)
    assert torch.equal(off.latents, out.latents)
    with pytest.raises(ConfigError, match=r"vae_tiling.sync_strategy='fast' is not valid"):
        md("a", vae_tiling={"tiling": True, "sync_strategy": "fast"}, **kw)
    with pytest.raises(ConfigError, match=r"vae_tiling.park='disk:/no/such': '/no/such' is not a writable directory"):
        md("a", vae_tiling={"tiling": True, "park": "disk:/no/such"}, **kw)
    disk = md("a", output_type="pt", vae_tiling={**opts, "sync_strategy": "park", "park": "disk"}, **kw)
    assert disk.record.extra["vae_tiling"]["park"] == "disk"
    assert torch.allclose(disk.images, out.images, atol=1e-5)


def test_experiment_configs_can_sweep_the_vae_strategy():
    from mdtools.sweep import RunConfig

    cfg = RunConfig.model_validate({"prompt": "x", "vae": {"tiling": True, "sync_strategy": "recompute"}})
    assert cfg.vae.sync_strategy == "recompute"
    with pytest.raises(Exception, match="sync_strategy"):
        RunConfig.model_validate({"prompt": "x", "vae": {"sync_strategy": "fast"}})
    # vae.park: validated on reading, out of the run id while unset
    plain = RunConfig.model_validate({"prompt": "x"})
    recorded = json.loads(next((Path(__file__).parents[1] / "results" / "overlap_kernel" / "runs").glob("*.json"))
                          .read_text())
    assert RunConfig.model_validate(recorded["config"]).run_id() == recorded["run_id"]  # ids from before vae.park
    disk = RunConfig.model_validate({"prompt": "x", "vae": {"park": "disk"}})
    assert disk.run_id() != plain.run_id() == RunConfig.model_validate({"prompt": "x", "vae": {"park": None}}).run_id()
    with pytest.raises(Exception, match=r"vae.park='disk:/no/such'"):
        RunConfig.model_validate({"prompt": "x", "vae": {"park": "disk:/no/such"}})


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_replays_never_write_into_their_checkpoint(layout):
    """A replay shares its checkpoint's tensors except a top that the next step writes in
    place (`_Step.mutates_top`): at every barrier of the decoder and encoder programs,
    running one round from a snapshot leaves the parked state's tensors unchanged."""
    import mdtools.vae as V
    import mdtools.vae.program as VG
    from tests.ldm_vae import tiny_ldm_vae

    vae = make_vae(attention=True) if layout == "diffusers" else tiny_ldm_vae(seed=0)
    for direction, x in (("decode", structured_latents(4, 4)), ("encode", torch.randn(1, 3, 32, 32))):
        lay = V.vae_layout(vae, direction)
        T = VG._Tile((0, 0), (4, 4), (0, 4, 0, 4), True, [x], canvas_attention=True)
        checked = 0
        with torch.inference_mode():
            while (msg := VG._advance(T, lay.steps)) is not None:
                before = [t.clone() for t in T.stack]
                reply = VG._reply([msg], torch.device("cpu"))
                T.known.append(reply)
                twin = T.snapshot(torch.device("cpu"), None, copy_top=lay.steps[T.pc].mutates_top)
                VG._advance(twin, lay.steps)  # one round: to the next barrier (or the end)
                assert all(torch.equal(a, b) for a, b in zip(before, T.stack)), (direction, T.pc)
                checked += 1
                T.layer += 1  # pass the barrier on the original too
                lay.steps[T.pc].body(T, reply)
                T.pc += 1
        assert checked > 10


def test_unknown_spatial_ops_are_never_claimed_exact():
    """The exact halo counts nn.Conv2d reaches (and non-overlapping pools): a VAE with
    another spatial operation (here a transposed-conv upsampler) gets the default halo and
    overlap, and its report says it is not exact."""
    import mdtools.vae as V
    from mdtools.vae.halo import _reach_known

    vae = make_vae(attention=False)
    assert _reach_known(V.vae_layout(vae, "decode"))
    up = vae.decoder.up_blocks[0].upsamplers[0]
    up.conv = torch.nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
    up.use_conv_transpose = True
    assert not _reach_known(V.vae_layout(vae, "decode"))
    rep: dict = {}
    tiled_decode(vae, structured_latents(LAT, 2 * LAT), tile=2 * TILE, report=rep)  # default 64 px overlap
    assert rep["n_tiles"] > 1 and not rep["exact"] and rep["exact_halo_px"] is None and rep["halo_px"] == V.DEFAULT_DECODE_HALO_PX
