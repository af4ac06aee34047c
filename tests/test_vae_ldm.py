"""The tiled VAE on the original LDM module layout (ComfyUI's first_stage_model).

The reference is outside mdtools twice over: tests/ldm_vae.py is an LDM-layout
autoencoder written from the LDM equations, checked here to be the same function as
diffusers' AutoencoderKL loaded through diffusers' own `convert_ldm_vae_checkpoint`; and
the tiled decode / encode of that module are compared with its one-piece forward.
"""

from __future__ import annotations

import pytest
import torch

from mdtools import ConfigError
from mdtools.vae import tiled_decode, tiled_encode, vae_layout, vae_scale_factor
from tests.ldm_vae import tiny_ldm_vae, to_diffusers
from tests.test_vae import errors, one_thread, structured_latents  # noqa: F401 (one_thread: autouse fixture)

LAT = 16
# 2 x 2 tiles of 72 px on a 128 px canvas
KW = dict(tile=80, overlap=16)
WHOLE = 128  # a halo that lets every tile see the whole canvas: only float noise is left


@pytest.fixture(scope="module")
def ldm():
    return tiny_ldm_vae(seed=0)


@pytest.fixture(scope="module")
def z():
    return structured_latents(LAT, LAT)


@pytest.fixture(scope="module")
def full(ldm, z):
    with torch.no_grad():
        return ldm.decode(z)


def test_ldm_module_is_diffusers_autoencoder_after_diffusers_conversion(ldm, z, full):
    """Outside reference: diffusers' converter maps our LDM state dict onto its
    AutoencoderKL, which then computes the same decode and encode."""
    ref = to_diffusers(ldm)
    with torch.no_grad():
        assert errors(full, ref.decode(z).sample)["max"] < 1e-4
        img = full.clamp(-1, 1)
        assert errors(ldm.encode_moments(img), ref.encode(img).latent_dist.parameters)["max"] < 1e-4


def test_layout_is_detected(ldm):
    assert vae_layout(ldm, "decode").kind == "ldm" and vae_layout(to_diffusers(ldm), "decode").kind == "diffusers"
    assert vae_layout(ldm.decoder, "decode").in_channels == 4  # bare Decoder: no post_quant_conv
    assert vae_scale_factor(ldm) == 8 and vae_layout(ldm.encoder, "encode").scale == 8
    assert vae_layout(ldm, "encode").posterior and not vae_layout(ldm.encoder, "encode").posterior


def test_ldm_tiled_decode_equals_the_one_piece_decode(ldm, z, full):
    rep: dict = {}
    out = tiled_decode(ldm, z, halo=WHOLE, sync_strategy="park", report=rep, **KW)
    e = errors(out, full)
    assert rep["layout"] == "ldm" and rep["n_tiles"] == 4 and rep["canvas_attention"]
    assert e["max"] < 1e-4 and e["psnr"] > 110, e
    # the same engine on the diffusers layout of the same weights gives the same image
    assert errors(tiled_decode(to_diffusers(ldm), z, halo=WHOLE, sync_strategy="park", **KW), out)["max"] < 1e-4


def test_ldm_sync_is_what_removes_the_tile_error(ldm, z, full):
    """With a halo short of the canvas (48 px), what is left of the synced decode's error
    is the zero padding at the halo's outer edge (54 dB measured); plain tiling (own
    statistics and attention per tile, as ComfyUI's VAEDecodeTiled) adds the tile shifts
    (27 dB measured). With the whole canvas in every halo (above) sync is float noise."""
    s = errors(tiled_decode(ldm, z, halo=48, **KW), full)
    n = errors(tiled_decode(ldm, z, halo=48, sync_groupnorm=False, **KW), full)
    assert s["max"] < 0.1 and s["psnr"] > 50, s
    assert n["psnr"] < 30 and n["mean"] > 20 * s["mean"], (n, s)


def test_ldm_strategies_are_bit_identical(ldm, z):
    """park, recompute and a budget that parks only at the small barriers (checkpoint)
    run the same steps on the same values."""
    z = z[:, :, :8, :8]  # 2 x 2 tiles of 40 px: recompute replays every tile at each of 23 barriers
    kw = dict(halo=WHOLE, tile=48, overlap=16)  # a halo exact for every strategy
    runs = {}
    for name, extra in (("park", {"sync_strategy": "park"}), ("recompute", {"sync_strategy": "recompute"}),
                        ("auto", {"park_budget_bytes": 300_000})):
        rep: dict = {}
        runs[name] = (tiled_decode(ldm, z, report=rep, **extra, **kw), rep)
    assert runs["auto"][1]["strategy"] == "checkpoint" and runs["auto"][1]["parked_peak_bytes"] <= 300_000
    assert torch.equal(runs["park"][0], runs["recompute"][0]) and torch.equal(runs["park"][0], runs["auto"][0])


def test_ldm_tiled_encode_equals_the_one_piece_encode(ldm, full):
    img = full.clamp(-1, 1)
    with torch.no_grad():
        ref = ldm.encode(img)
        moments = ldm.encode_moments(img)
    span = float(ref.max() - ref.min())
    e = errors(tiled_encode(ldm, img, halo=WHOLE, **KW), ref, value_range=span)
    assert e["max"] < 1e-4, e
    bare = tiled_encode(ldm.encoder, img, halo=WHOLE, **KW)  # bare Encoder: its raw output
    with torch.no_grad():
        assert errors(bare, ldm.encoder(img))["max"] < 1e-4 and bare.shape == moments.shape
    s = errors(tiled_encode(ldm, img, halo=32, **KW), ref, value_range=span)
    n = errors(tiled_encode(ldm, img, halo=32, sync_groupnorm=False, **KW), ref, value_range=span)
    assert n["mean"] > 5 * s["mean"], (n, s)
    g = torch.Generator().manual_seed(0)
    smp = tiled_encode(ldm, img, halo=WHOLE, sample=True, generator=g, **KW)
    assert smp.shape == ref.shape and not torch.equal(smp, ref)


@pytest.mark.parametrize("opts", [{"tanh_out": True}, {"give_pre_end": True}, {"attn_levels": (0, 1)}])
def test_ldm_decoder_options(opts):
    """Decoder.tanh_out squashes the output; give_pre_end returns the last features before
    norm_out (other channels); attn_levels puts an AttnBlock after every resnet of those
    levels (canvas-wide at every resolution). A bare Decoder is decoded as `decoder(latents)`."""
    vae = tiny_ldm_vae(seed=1, ch_mult=(1, 2), **opts)  # scale 2: a 32 px canvas
    z = structured_latents(LAT, LAT)
    with torch.no_grad():
        ref = vae.decoder(z)
    out = tiled_decode(vae.decoder, z, tile=16, overlap=4, halo=32)
    assert out.shape == ref.shape and errors(out, ref)["max"] < 1e-4


def test_unknown_objects_are_rejected(ldm):
    class ComfyVAE:  # what ComfyUI's node passes: the wrapper, not the module
        first_stage_model = ldm

    with pytest.raises(ConfigError, match="first_stage_model"):
        tiled_decode(ComfyVAE(), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ConfigError, match="LDM-layout autoencoder"):
        tiled_decode(torch.nn.Linear(2, 2), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ConfigError, match="an encoder"):
        tiled_encode(ldm.decoder, torch.zeros(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="4 channels"):
        tiled_decode(ldm, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="park_budget_bytes"):
        tiled_decode(ldm, torch.zeros(1, 4, 8, 8), park_budget_bytes=-1)
    with pytest.raises(ConfigError, match="park_dtype"):
        tiled_decode(ldm, torch.zeros(1, 4, 8, 8), park_dtype="int8")


def test_schedule_estimate_counts_the_work_a_run_does(ldm, z):
    """schedule_estimate simulates the rounds without running them: its convolution
    multiply-adds equal those counted in a real run, for every strategy, and the
    checkpointed schedule sits between park (one pass) and recompute."""
    from mdtools.vae import plan_vae_tiles, schedule_estimate

    z = z[:, :, :8, :8]
    kw = dict(tile=48, overlap=16, halo=16)
    plan = plan_vae_tiles(8, 8, scale=8, **kw)
    done = []

    def count(mod, _args, out):
        if isinstance(mod, torch.nn.Conv2d):
            done[-1] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

    runs = (("park", {"sync_strategy": "park"}), ("recompute", {"sync_strategy": "recompute"}),
            ("auto", {"park_budget_bytes": 300_000}))
    est = {name: schedule_estimate(ldm, plan, **extra) for name, extra in runs}
    for name, extra in runs:
        done.append(0)
        hook = torch.nn.modules.module.register_module_forward_hook(count)
        try:
            # (its own tiny profile run is counted too: subtract it below)
            tiled_decode(ldm, z, **extra, **kw)
        finally:
            hook.remove()
    tiny = schedule_estimate(ldm, plan_vae_tiles(2, 2, tile=16, overlap=0, halo=0, scale=8), sync_strategy="park")
    profile = tiny["macs"] - tiny["attention_macs"]  # the 2 x 2 latent profile run
    for (name, _), got in zip(runs, done):
        want = est[name]["macs"] - est[name]["attention_macs"] + profile
        assert got == pytest.approx(want, rel=1e-6), name
    assert est["park"]["compute_vs_park"] == 1
    assert 1 < est["auto"]["compute_vs_park"] < est["recompute"]["compute_vs_park"]
    assert est["auto"]["strategy"] == "checkpoint" and est["auto"]["parked_peak_bytes"] <= 300_000
    # held beyond one tile: without checkpoints, the canvas keys / values (kept to the end:
    # every replay passes the attention); with them, at least the parked peak
    from mdtools.vae import program_profile, vae_layout

    kv = program_profile(vae_layout(ldm, "decode"), canvas_attention=True).kv_values * 8 * 8 * 4
    assert est["recompute"]["held_peak_bytes"] == int(kv) > 0 and est["recompute"]["parked_peak_bytes"] == 0
    assert est["park"]["held_peak_bytes"] >= est["park"]["parked_peak_bytes"] > kv
    assert est["park"]["output_bytes"] == 3 * 64 * 64 * 4
