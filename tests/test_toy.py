"""Tests of the embedded toy model (mdtools.toy): shipped files, loading, generation, quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from mdtools.toy import (  # noqa: E402
    REQUIRED_FILES,
    TOY_MODEL_DIR,
    ToyModelError,
    load_toy_pipeline,
    toy_model_dir,
)
from mdtools.toy.data import PROMPTS, WINDOW, holdout_crops, training_crops  # noqa: E402
from mdtools.toy.quality import NearestCentroid, kid, psnr  # noqa: E402
from mdtools.toy.train import ToyTrainConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small CPU batches run fastest on 1 thread


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline()


@pytest.fixture(scope="module")
def held_out():
    return holdout_crops(8)


def _gen(pipe, prompt, seed, steps=6, n=1):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    out = pipe(prompt=[prompt] * n, height=WINDOW, width=WINDOW, num_inference_steps=steps,
               guidance_scale=7.5, generator=gens, output_type="np")
    return np.asarray(out.images)


def test_shipped_folder_is_complete_small_and_safetensors_only():
    assert toy_model_dir() == TOY_MODEL_DIR
    for rel in REQUIRED_FILES:
        assert (TOY_MODEL_DIR / rel).is_file(), rel
    files = [p for p in TOY_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 1024 * 1024
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    index = json.loads((TOY_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False


def test_plain_diffusers_loads_offline(monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR, local_files_only=True)
    assert p.vae_scale_factor == 8
    # 8 latent channels (mdtools/toy/train.py says why); the UNet and the VAE agree
    assert p.vae.config.latent_channels == ToyTrainConfig().latent_channels == p.unet.config.in_channels
    assert p.unet.config.sample_size * p.vae_scale_factor == WINDOW
    # SD convention: latents scaled to about unit variance by a measured factor, not 1.0.
    assert 0.05 < p.vae.config.scaling_factor < 5 and p.vae.config.scaling_factor != 1.0
    assert p.tokenizer.model_max_length == p.text_encoder.config.max_position_embeddings
    assert p.unet.config.cross_attention_dim == p.text_encoder.config.hidden_size
    assert all(m.dtype == torch.float32 for m in (p.vae, p.unet, p.text_encoder))


def test_tokenizer_keeps_prompt_words_whole(pipe):
    for prompt in PROMPTS:
        toks = pipe.tokenizer.tokenize(prompt)
        assert toks == [w + "</w>" for w in prompt.split()], toks
    # Unknown words still tokenize (byte-level fallback), and nothing maps to the unknown id.
    ids = pipe.tokenizer("zebra quartz").input_ids
    assert len(ids) > 4


def test_generation_is_finite_deterministic_and_prompt_dependent(pipe):
    a = _gen(pipe, "gravel", seed=3)
    b = _gen(pipe, "gravel", seed=3)
    c = _gen(pipe, "stars", seed=3)
    assert a.shape == (1, WINDOW, WINDOW, 3)
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0.02  # not a flat image
    assert np.abs(a - c).mean() > 0.05  # the prompt matters
    d = _gen(pipe, "gravel", seed=4)
    assert np.abs(a - d).mean() > 0.01  # the seed matters


def test_texture_classifier_recognises_real_held_out_material(held_out):
    real, lab = held_out
    clf = NearestCentroid.fit(real, lab)
    ref, ref_lab = training_crops(6)
    # Crops from the other (training) region of the same images: the classifier generalises.
    assert clf.accuracy(ref, ref_lab) >= 0.85


def test_generated_windows_show_the_prompted_material(pipe, held_out):
    real, lab = held_out
    clf = NearestCentroid.fit(real, lab)
    fake = np.concatenate([_gen(pipe, p, seed=100, steps=10, n=3) for p in PROMPTS])
    fake_lab = np.repeat(np.arange(len(PROMPTS)), 3)
    acc = clf.accuracy(fake, fake_lab)
    # Chance is 1/7 and the untrained model scores 0.14; the card reports 0.69 (0.81 for toy-v2;
    # 16 per prompt, 25 steps). Loose because 21 windows at 10 steps vary by a few windows between seeds.
    assert acc >= 0.5, (acc, clf.predict(fake))
    # Generated windows are closer to held-out real crops than uniform noise is.
    noise = np.random.default_rng(0).random(fake.shape, dtype=np.float32)
    assert kid(real, fake, subsets=20)[0] < kid(real, noise, subsets=20)[0]


@pytest.fixture(scope="module")
def pipe_v2():
    from mdtools.toy import TOY_V2_MODEL_DIR

    return load_toy_pipeline(TOY_V2_MODEL_DIR)


def test_simple_statistics_tell_the_prompts_apart(pipe_v2, held_out):
    """The retrained texture model (toy-v2; not yet the default, see mdtools.toy.TOY_V2_MODEL_DIR)."""
    from mdtools.toy.texture_stats import STAT_NAMES, StatsNearestCentroid, simple_stats

    pipe = pipe_v2
    fit, fit_lab = training_crops(8)
    clf = StatsNearestCentroid(fit, fit_lab)
    real, lab = held_out
    assert simple_stats(real).shape == (len(real), len(STAT_NAMES))
    # Seven plain statistics separate the real materials (held-out stripe, fit on the training region).
    assert (clf.predict(real) == lab).mean() >= 0.9
    fake = np.concatenate([_gen(pipe, p, seed=100, steps=10, n=3) for p in PROMPTS])
    fake_lab = np.repeat(np.arange(len(PROMPTS)), 3)
    acc = float((clf.predict(fake) == fake_lab).mean())
    # The card: v2 63 % (112 windows, 25 steps), v1 47 %; the VAE caps it at 71 % (grass and gravel
    # lose their fine detail). Grey materials must come out grey: v1 tinted them orange.
    assert acc >= 0.5, (acc, clf.predict(fake))
    grey = [PROMPTS.index(p) for p in ("brick wall", "moon surface")]
    sat = simple_stats(fake)[:, STAT_NAMES.index("saturation")]
    assert sat[np.isin(fake_lab, grey)].max() < 0.08, sat


def test_vae_reconstructs_held_out_crops(pipe, held_out):
    real, _ = held_out
    x = torch.from_numpy(real[::4]).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mode()
        rec = pipe.vae.decode(z).sample.clamp(-1, 1)
    assert z.shape[1:] == (ToyTrainConfig().latent_channels, WINDOW // 8, WINDOW // 8)
    rec = ((rec + 1) / 2).permute(0, 2, 3, 1).numpy()
    assert psnr(real[::4], rec).mean() > 18.0


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "toy"
    shutil.copytree(TOY_MODEL_DIR, dst)
    return dst


def test_missing_weight_file_is_named(model_copy: Path):
    bad = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="unet/diffusion_pytorch_model.safetensors"):
        toy_model_dir(model_copy)
    with pytest.raises(ToyModelError, match="missing"):
        load_toy_pipeline(model_copy)


def test_truncated_weight_file_is_named(model_copy: Path):
    bad = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ToyModelError, match=r"vae/diffusion_pytorch_model\.safetensors.*truncated"):
        load_toy_pipeline(model_copy)


def test_garbage_weight_file_is_named(model_copy: Path):
    bad = model_copy / "text_encoder" / "model.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(ToyModelError, match=r"text_encoder/model\.safetensors"):
        toy_model_dir(model_copy)
    bad.write_bytes(b"not a safetensors file at all, just text")
    with pytest.raises(ToyModelError, match=r"text_encoder/model\.safetensors"):
        toy_model_dir(model_copy)


def test_missing_folder_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        toy_model_dir(tmp_path / "nowhere")


def test_train_toy_tiny_budget_produces_a_loadable_pipeline(tmp_path: Path):
    from mdtools.toy.train import train_toy

    # 8 latent channels: the knob of the second version (MODEL_CARD.md) trains and loads too
    cfg = ToyTrainConfig(vae_steps=2, vae_batch=2, vae_full_batch=1, unet_steps=2, unet_batch=4,
                         pool_per_class=1, warmup=1, log_every=1, latent_channels=8)
    out = train_toy(tmp_path / "tiny", seed=0, config=cfg)
    info = json.loads((out / "training_info.json").read_text())
    assert info["history"]["vae_l1"] and info["history"]["unet_mse"]
    p = load_toy_pipeline(out)
    assert p.vae.config.latent_channels == p.unet.config.in_channels == 8
    img = _gen(p, "grass", seed=0, steps=2)
    assert np.isfinite(img).all()
