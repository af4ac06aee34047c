"""SD3 and FLUX on the MultiDiffusion engine: one-window exactness against diffusers'
StableDiffusion3Pipeline / FluxPipeline, per-view packing, schedules and bad inputs.

Tiny random components built in code (as diffusers' own tests do, values from
/work/shared/dit-flow.md section 5), with in-code tokenizers: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdtools import MultiDiffusionPipeline
from mdtools.errors import ConfigError

from .conftest import tiny_tokenizer


def _clip(hidden: int, seed: int, vocab: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
                         layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab,
                         max_position_embeddings=16, projection_dim=hidden, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(seed: int):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = ByT5Tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, feed_forward_proj="relu", dropout_rate=0.0,
                   layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval(), tok


def _vae(latent_channels: int, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # two blocks: scale factor 2, so packing/patching and the VAE scale both matter; 16-ch like SD3/FLUX
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=4, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()


def make_flux_pipe(*, guidance_embeds: bool = True, dynamic: bool = True):
    import diffusers

    tok = tiny_tokenizer()
    t5, t5_tok = _t5(3)
    torch.manual_seed(0)
    tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                          pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                          guidance_embeds=guidance_embeds).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=dynamic, base_shift=0.5, max_shift=1.15,
                                                      base_image_seq_len=16, max_image_seq_len=256)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=_vae(4), text_encoder=_clip(32, 1, len(tok), False),
                                  tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sd3_pipe():
    import diffusers

    tok = tiny_tokenizer()
    t5, t5_tok = _t5(3)
    torch.manual_seed(0)
    tr = diffusers.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=1,
                                         attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                         joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
                                         pos_embed_max_size=24).eval()
    pipe = diffusers.StableDiffusion3Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(16),
        text_encoder=_clip(32, 1, len(tok), True), tokenizer=tok, text_encoder_2=_clip(32, 2, len(tok), True),
        tokenizer_2=tiny_tokenizer(), text_encoder_3=t5, tokenizer_3=t5_tok, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux_pipe():
    return make_flux_pipe()


@pytest.fixture(scope="module")
def sd3_pipe():
    return make_sd3_pipe()


def test_flux_one_window_equals_flux_pipeline(flux_pipe):
    from diffusers import FluxPipeline

    # FLUX's VAE here has 4 latent channels x 2x2 = 16 packed; 32 x 48 px = 16 x 24 latents = 96 tokens
    kw = dict(height=32, width=48, num_inference_steps=3, guidance_scale=3.5, max_sequence_length=16)
    ref = flux_pipe("a photo of a beach", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images
    ref = FluxPipeline._unpack_latents(ref, 32, 48, flux_pipe.vae_scale_factor)
    md = MultiDiffusionPipeline.from_pipe(flux_pipe)
    out = md("a photo of a beach", generator=0, output_type="latent", window=(32, 48), overlap=8, progress=False, **kw)
    assert out.plan.n_views == 1
    assert out.latents.shape == ref.shape == (1, 4, 16, 24)
    assert (out.latents - ref).abs().max().item() <= 1e-5
    fs = out.record.extra["flow_schedule"]
    assert fs["image_seq_len"] == 96 and fs["dynamic_shifting"]
    assert out.record.extra["random_weights"] is False


def test_flux_true_cfg_one_window_equals_flux_pipeline(flux_pipe):
    from diffusers import FluxPipeline

    kw = dict(height=32, width=32, num_inference_steps=2, guidance_scale=3.5, max_sequence_length=16,
              negative_prompt="city", true_cfg_scale=4.0)
    ref = flux_pipe("a photo of a beach", generator=torch.Generator().manual_seed(1), output_type="latent", **kw).images
    ref = FluxPipeline._unpack_latents(ref, 32, 32, flux_pipe.vae_scale_factor)
    out = MultiDiffusionPipeline.from_pipe(flux_pipe)("a photo of a beach", generator=1, output_type="latent", overlap=8,
                                                      progress=False, **kw)
    assert out.record.counts["model_evaluations"] == 2 * 2  # two passes per step
    assert (out.latents - ref).abs().max().item() <= 1e-5


def test_sd3_one_window_equals_sd3_pipeline(sd3_pipe):
    kw = dict(height=32, width=48, num_inference_steps=3, guidance_scale=5.0, negative_prompt="city",
              max_sequence_length=16)
    ref = sd3_pipe("a photo of a beach", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images
    md = MultiDiffusionPipeline.from_pipe(sd3_pipe)
    out = md("a photo of a beach", generator=0, output_type="latent", window=(32, 48), overlap=8, progress=False, **kw)
    assert out.plan.n_views == 1 and out.latents.shape == ref.shape
    assert (out.latents - ref).abs().max().item() <= 1e-5


def test_flux_views_packed_separately_and_positions_option(flux_pipe):
    md = MultiDiffusionPipeline.from_pipe(flux_pipe)
    kw = dict(height=32, width=96, window=32, overlap=16, num_inference_steps=2, guidance_scale=3.5,
              max_sequence_length=16, output_type="latent", progress=False)
    loc = md("a photo of a beach", generator=0, **kw)
    glo = md("a photo of a beach", generator=0, positions="global", **kw)
    assert loc.plan.n_views > 1 and torch.isfinite(loc.latents).all()
    # the same views with image ids offset by their canvas position: a different result
    assert (loc.latents - glo.latents).abs().max().item() > 1e-4
    # mu comes from the window's tokens (16 x 16 latents -> 64 tokens), not the canvas's
    assert loc.record.extra["flow_schedule"]["image_seq_len"] == 64
    can = md("a photo of a beach", generator=0, flow_mu="canvas", **kw)
    assert can.record.extra["flow_schedule"]["image_seq_len"] == 8 * 24


@pytest.mark.parametrize("method", ["mixture", "spotdiffusion", "global_pass"])
def test_methods_run_on_sd3(sd3_pipe, method):
    md = MultiDiffusionPipeline.from_pipe(sd3_pipe)
    out = md("a photo of a beach", height=32, width=64, window=32, overlap=16 if method != "spotdiffusion" else 0,
             method=method, num_inference_steps=2, guidance_scale=5.0, max_sequence_length=16, generator=0,
             output_type="latent", progress=False)
    assert torch.isfinite(out.latents).all() and out.latents.shape == (1, 16, 16, 32)


def test_syncdiffusion_x0_is_the_flow_euler_step_to_sigma_zero():
    """Outside reference: on the last step diffusers' FlowMatchEulerDiscreteScheduler steps
    to sigma = 0, so its result is the predicted clean latent x0 = x - sigma v."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from mdtools.methods.syncdiffusion import predicted_x0
    from mdtools.schedulers import FlowMatchSchedule

    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    fs = FlowMatchSchedule(sch, family="sd3", image_seq_len=64)
    fs.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    for i, t in enumerate(fs.timesteps):
        mine = predicted_x0(fs, x, v, t)
        if i == len(fs.timesteps) - 1:  # the last Euler step lands on sigma = 0: x0 itself
            ref = sch.step(v, t, x, return_dict=False)[0]
            assert torch.allclose(mine, ref, atol=1e-6)
        assert torch.allclose(mine, x - fs.sigmas[i] * v, atol=1e-6)


@pytest.mark.parametrize("method", ["demofusion", "regions", "syncdiffusion"])
def test_methods_run_on_flux(flux_pipe, method):
    import mdtools

    extra = ({"regions": [mdtools.Region("a red boat", box=(0, 16, 32, 32))], "bootstrap_steps": 1}
             if method == "regions" else {"method": method})
    if method == "syncdiffusion":  # mse: no LPIPS backbone download offline
        extra["method_params"] = {"loss": "mse", "weight": 5.0, "sync_steps": 2}
    out = MultiDiffusionPipeline.from_pipe(flux_pipe)(
        "a photo of a beach", height=32, width=64, window=32, overlap=16, num_inference_steps=2, guidance_scale=3.5,
        max_sequence_length=16, generator=0, output_type="latent", progress=False, **extra)
    assert torch.isfinite(out.latents).all() and out.latents.shape == (1, 4, 16, 32)


def test_tiled_decode_of_16_channel_vae_equals_full_decode(sd3_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd3_pipe)
    lat = torch.randn(1, 16, 24, 40, generator=torch.Generator().manual_seed(0))
    full = md.decode(lat)
    tiled = md.decode(lat, tiling={"tile": 32, "overlap": 8, "sync_groupnorm": True, "sync_strategy": "auto",
                                   "circular": False})
    assert tiled.shape == full.shape == (1, 3, 48, 80)
    assert (tiled - full).abs().max().item() < 1e-4
    # the decode undoes SD3's scaling AND shift: latents / scaling_factor + shift_factor
    cfg = sd3_pipe.vae.config
    ref = sd3_pipe.vae.decode(lat / cfg.scaling_factor + cfg.shift_factor, return_dict=False)[0]
    assert (full - ref).abs().max().item() < 1e-6


def test_bad_inputs_name_the_field(flux_pipe, sd3_pipe):
    flux = MultiDiffusionPipeline.from_pipe(flux_pipe)
    with pytest.raises(ConfigError, match=r"width=42 is not a multiple of 4 px.*use 40 or 44"):
        flux("a beach", height=32, width=42, num_inference_steps=1)
    with pytest.raises(ConfigError, match="flow_mu"):
        flux("a beach", height=32, width=32, flow_mu="big", num_inference_steps=1)
    sd3 = MultiDiffusionPipeline.from_pipe(sd3_pipe)
    with pytest.raises(ConfigError, match="positions='global' is FLUX only"):
        sd3("a beach", height=32, width=32, positions="global", num_inference_steps=1)
    with pytest.raises(ConfigError, match="flow-matching"):
        sd3.set_scheduler("ddim")
    sd3.set_scheduler("flow_euler")


def test_flow_schedule_matches_formula():
    """mu on the line through (256, 0.5) and (4096, 1.15): the table in docs/models.md."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from mdtools.schedulers import FlowMatchSchedule

    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    for tokens, mu in ((1024, 0.63), (4096, 1.15), (65536, 11.55)):
        fs = FlowMatchSchedule(sch, family="flux", image_seq_len=tokens)
        assert abs(fs.mu - mu) < 0.01
    fs = FlowMatchSchedule(sch, family="flux", image_seq_len=4096)
    fs.set_timesteps(4)
    s = np.linspace(1, 0.25, 4)
    want = np.exp(1.15) / (np.exp(1.15) + (1 / s - 1))  # sigma' = e^mu / (e^mu + (1/sigma - 1))
    assert np.allclose(fs.sigmas[:-1].numpy(), want, atol=1e-6)
    x0, noise = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    assert torch.allclose(fs.add_noise(x0, noise, fs.timesteps[:1]), (1 - fs.sigmas[0]) * x0)


def test_heun_cannot_take_flux_dynamic_shift_and_says_so():
    """FlowMatchHeunDiscreteScheduler.set_timesteps takes neither sigmas nor mu: a clear error, not a TypeError."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    from mdtools.schedulers import FlowMatchSchedule

    fs = FlowMatchSchedule(FlowMatchHeunDiscreteScheduler(), family="flux", image_seq_len=1024)
    with pytest.raises(ConfigError, match="flow_euler"):
        fs.set_timesteps(4)


def test_dry_run_estimate_counts_one_flux_pass_per_step():
    """FLUX-dev's guidance is an embedding: one transformer pass per view and step, where a
    UNet model with the same guidance value runs two (CFG)."""
    from mdtools.sweep import RunConfig, estimate_work

    base = {"prompt": "x", "canvas": {"height": 512, "width": 1024}, "tiling": {"window": 512, "overlap": 256},
            "sampler": {"steps": 4, "guidance": 3.5}}
    flux = estimate_work(RunConfig.model_validate({**base, "model": "arch:flux"}), 16, 512)
    unet = estimate_work(RunConfig.model_validate({**base, "model": "toy"}), 16, 512)
    assert unet["unet_evaluations"] == 2 * flux["unet_evaluations"] == 2 * 3 * 4
