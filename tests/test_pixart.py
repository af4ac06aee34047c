"""PixArt-Sigma, the model family added as a recipe (docs/models.md, "Adding a model family").

One window equals diffusers' PixArtSigmaPipeline to 1e-5 on tiny random components built in
code (as diffusers' own PixArt tests build them; T5 with the file-free ByT5 tokenizer), every
method runs on a two-view canvas, and the family is read from configs before loading."""

from __future__ import annotations

import json

import pytest
import torch

from mdtools import MultiDiffusionPipeline, Region
from mdtools.errors import ConfigError
from mdtools.methods import generation_methods
from mdtools.models import FAMILIES, read_model_kind, read_native_window

PROMPT = "a photo of a beach"


def make_pixart_pipe():
    import diffusers
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    tr = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6).eval()
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
                                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4).eval()
    torch.manual_seed(2)
    tok = ByT5Tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, feed_forward_proj="relu", dropout_rate=0.0,
                                 layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0)).eval()
    pipe = diffusers.PixArtSigmaPipeline(tokenizer=tok, text_encoder=t5, vae=vae, transformer=tr,
                                         scheduler=diffusers.DDIMScheduler())  # as diffusers' PixArt tests
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pixart_pipe():
    return make_pixart_pipe()


def test_family_is_detected_and_the_denoiser_is_the_transformer(pixart_pipe):
    md = MultiDiffusionPipeline.from_pipe(pixart_pipe)
    assert md.kind == "pixart" and md.family.patch == 2 and not md.family.flow
    assert md.unet is pixart_pipe.transformer
    assert md.native_window == 8 * 8  # sample_size x the VAE's scale factor


@pytest.mark.parametrize("guidance, negative", [(4.5, None), (4.5, "city"), (1.0, None)])
def test_one_window_equals_pixart_sigma_pipeline(pixart_pipe, guidance, negative):
    kw = dict(height=64, width=64, num_inference_steps=3, guidance_scale=guidance, max_sequence_length=32)
    ref = pixart_pipe(PROMPT, negative_prompt=negative or "", generator=torch.Generator().manual_seed(0),
                      output_type="latent", use_resolution_binning=False, clean_caption=False, **kw).images
    md = MultiDiffusionPipeline.from_pipe(pixart_pipe)
    out = md(PROMPT, negative_prompt=negative, generator=0, output_type="latent", overlap=32, progress=False, **kw)
    assert out.plan.n_views == 1 and out.latents.shape == ref.shape == (1, 4, 8, 8)
    assert (out.latents - ref).abs().max().item() <= 1e-5


def test_one_window_image_equals_pixart_sigma_pipeline(pixart_pipe):
    kw = dict(height=64, width=64, num_inference_steps=2, guidance_scale=4.5, max_sequence_length=32)
    ref = pixart_pipe(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt",
                      use_resolution_binning=False, clean_caption=False, **kw).images
    out = MultiDiffusionPipeline.from_pipe(pixart_pipe)(PROMPT, generator=3, output_type="pt", vae_tiling=False, overlap=32,
                                                        progress=False, **kw)
    assert (out.images - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", [*generation_methods(), "regions"])
def test_every_method_runs_on_pixart(pixart_pipe, method):
    extra: dict = {"method": method}
    overlap = 32
    if method == "regions":
        extra = {"regions": [Region("a red boat", box=(0, 64, 64, 64))], "bootstrap_steps": 1}
    if method == "syncdiffusion":  # mse: no LPIPS backbone download offline
        extra["method_params"] = {"loss": "mse", "weight": 5.0, "sync_steps": 2}
    if method == "spotdiffusion":
        overlap = 0
    if method == "demofusion":
        extra["method_params"] = {"stages": 2}
    out = MultiDiffusionPipeline.from_pipe(pixart_pipe)(
        PROMPT, height=64, width=128, window=64, overlap=overlap, num_inference_steps=2, guidance_scale=4.5,
        max_sequence_length=32, generator=0, output_type="latent", progress=False, **extra)
    assert torch.isfinite(out.latents).all() and out.latents.shape == (1, 4, 8, 16)
    assert out.record.counts["model_evaluations"] > 0


def test_sizes_are_patch_multiples_and_named(pixart_pipe):
    md = MultiDiffusionPipeline.from_pipe(pixart_pipe)
    with pytest.raises(ConfigError, match=r"width=120 is not a multiple of 16 px.*use 112 or 128"):
        md(PROMPT, height=64, width=120, window=64, progress=False)
    with pytest.raises(ConfigError, match="max_sequence_length"):
        md(PROMPT, height=64, width=128, window=64, max_sequence_length=0, progress=False)


def test_kind_and_window_read_from_a_config_folder(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel",
                                                                      "sample_size": 128}))
    assert read_model_kind(str(tmp_path)) == "pixart"
    assert read_native_window(str(tmp_path), 8) == 1024
    assert FAMILIES["pixart"].transformer_class == "PixArtTransformer2DModel"
