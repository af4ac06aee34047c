"""Tiny random diffusers pipelines built in code (no hub access), as diffusers' own tests do."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small-batch CPU work (use with pytest.mark.usefixtures).

    Why: a few hundred tiny ops per call gain nothing from a second thread, and with other jobs
    on a 2-core machine, 2 OpenMP threads preempted at barriers were measured ~50x slower than 1
    (25 s vs 0.5 s per toy window)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

WORDS = ["a", "photo", "of", "beach", "mountain", "sky", "city", "forest", "brick", "wall", "grass", "stars"]


def tiny_tokenizer(max_length: int = 16):
    """CLIP BPE tokenizer from an in-code vocab: every letter, plus each word merged whole."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for w in WORDS:
        cur = w[0]
        for i, c in enumerate(w[1:], 1):
            nxt = c + "</w>" if i == len(w) - 1 else c
            merges.append((cur, nxt))
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    # transformers 5 only accepts in-code merges as tuples
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tiny_text_encoder(vocab_size: int, *, projection: bool = False, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
        max_position_embeddings=16, projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def tiny_vae(blocks: int = 4, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8,) * blocks, in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64,
    ).eval()


def tiny_unet(*, sample_size: int = 8, cross_dim: int = 32, sdxl: bool = False, prediction_seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(prediction_seed)
    kw = dict(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim, norm_num_groups=8, attention_head_dim=4,
    )
    if sdxl:
        kw.update(addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=6 * 8 + cross_dim // 2, cross_attention_dim=cross_dim)
    return UNet2DConditionModel(**kw).eval()


def make_sd_pipe(*, sample_size: int = 8, vae_blocks: int = 4, scheduler: str = "DDIMScheduler"):
    import diffusers

    tok = tiny_tokenizer()
    sched = getattr(diffusers, scheduler)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    ) if scheduler == "DDIMScheduler" else getattr(diffusers, scheduler)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(vae_blocks), text_encoder=tiny_text_encoder(len(tok)), tokenizer=tok,
        unet=tiny_unet(sample_size=sample_size), scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sdxl_pipe(*, sample_size: int = 8):
    import diffusers

    tok = tiny_tokenizer()
    te1 = tiny_text_encoder(len(tok), hidden=16, seed=1)
    te2 = tiny_text_encoder(len(tok), hidden=16, projection=True, seed=2)
    unet = tiny_unet(sample_size=sample_size, cross_dim=32, sdxl=True)
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=tiny_vae(4), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tiny_tokenizer(),
        unet=unet, scheduler=sched,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sd_pipe():
    return make_sd_pipe()


@pytest.fixture(scope="session")
def sdxl_pipe():
    return make_sdxl_pipe()


@pytest.fixture(scope="session")
def saved_sd_dir(tmp_path_factory, sd_pipe):
    """A tiny SD pipeline saved as a diffusers folder (safetensors), for CLI and README tests."""
    d = tmp_path_factory.mktemp("tiny-sd")
    sd_pipe.save_pretrained(d, safe_serialization=True)
    return d
