"""Tests of the embedded scenes model (mdtools/assets/toy-scenes) and `mdtools train-toy --data scenes`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from mdtools import ConfigError  # noqa: E402
from mdtools.metrics.scene_analysis import analyse_scene  # noqa: E402
from mdtools.stats import wilson_interval  # noqa: E402
from mdtools.toy import EMBEDDED_MODELS, REQUIRED_FILES, TOY_MODEL_DIR, TOY_SCENES_MODEL_DIR, load_toy_pipeline  # noqa: E402
from mdtools.toy.data import WINDOW  # noqa: E402
from mdtools.toy.scene_data import SceneSampler, heldout_scenes  # noqa: E402
from mdtools.toy.scene_report import CHECKS, fidelity  # noqa: E402
from mdtools.toy.scenes import SCENE_PROMPTS, parse_prompt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small CPU batches run fastest on 1 thread


def test_shipped_scenes_folder_is_complete_small_and_safetensors_only():
    assert EMBEDDED_MODELS["toy-scenes"] == TOY_SCENES_MODEL_DIR
    for rel in REQUIRED_FILES + ("MODEL_CARD.md", "training_info.json", "quality.json", "samples.png"):
        assert (TOY_SCENES_MODEL_DIR / rel).is_file(), rel
    files = [p for p in TOY_SCENES_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 1024 * 1024
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    info = json.loads((TOY_SCENES_MODEL_DIR / "training_info.json").read_text())
    assert info["config"]["data"] == "scenes"
    assert info["prompts"] == list(SCENE_PROMPTS)


def test_scenes_v2_folder_is_complete_small_and_its_card_quotes_its_quality_json():
    from mdtools.toy import TOY_SCENES_V2_MODEL_DIR, toy_model_dir

    assert EMBEDDED_MODELS["toy-scenes-v2"] == TOY_SCENES_V2_MODEL_DIR
    toy_model_dir(TOY_SCENES_V2_MODEL_DIR)  # every required file, readable safetensors
    files = [p for p in TOY_SCENES_V2_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 1024 * 1024
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    info = json.loads((TOY_SCENES_V2_MODEL_DIR / "training_info.json").read_text())
    assert info["config"]["latent_channels"] == 8 and info["prompts"] == list(SCENE_PROMPTS)
    q = json.loads((TOY_SCENES_V2_MODEL_DIR / "quality.json").read_text())
    card = (TOY_SCENES_V2_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert (q["steps"], q["guidance_scale"], q["generated"]["n"]) == (25, 7.5, 192)
    one = q["generated"]["one_disc"]
    lo, hi = (100 * v for v in one["ci95"])
    assert f"**65.1 %** [{lo:.1f}, {hi:.1f}]" in card and round(100 * one["share"], 1) == 65.1
    assert f"**VAE PSNR {q['vae_psnr_db']:.1f} dB**" in card
    assert f"**Time: {info['wall_time_s']['total'] / 60:.1f} min wall**" in card


def test_from_pretrained_toy_scenes_loads_offline_and_generates(monkeypatch):
    from mdtools import MultiDiffusionPipeline
    from mdtools.pipeline import resolve_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(resolve_model_path("toy-scenes")) == TOY_SCENES_MODEL_DIR
    assert Path(resolve_model_path("toy")) == TOY_MODEL_DIR  # the texture model is still the default
    md = MultiDiffusionPipeline.from_pretrained("toy-scenes")
    assert md.pipe.unet.config.sample_size * md.pipe.vae_scale_factor == WINDOW
    # every scene word is one token (tokenizer.scene_words orders the merges for that)
    for prompt in SCENE_PROMPTS:
        assert md.pipe.tokenizer.tokenize(prompt) == [w + "</w>" for w in prompt.split()]
    out = md(SCENE_PROMPTS[0], height=WINDOW, width=WINDOW, num_inference_steps=2, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(0), output_type="np")
    img = np.asarray(out.images[0])
    assert img.shape == (WINDOW, WINDOW, 3)
    assert np.isfinite(img).all() and 0.0 <= img.min() and img.max() <= 1.0
    assert out.plan.n_views == 1


def test_scenes_model_follows_sky_prompts():
    # 12 windows (one per prompt), 15 steps: the card reports the sky share on 192 windows at 25 steps.
    pipe = load_toy_pipeline(TOY_SCENES_MODEL_DIR)
    gens = [torch.Generator().manual_seed(7) for _ in SCENE_PROMPTS]
    imgs = np.asarray(pipe(prompt=list(SCENE_PROMPTS), height=WINDOW, width=WINDOW, num_inference_steps=15,
                           guidance_scale=5.0, generator=gens, output_type="np").images)
    res = fidelity(imgs, SCENE_PROMPTS)
    assert res["sky"]["share"] >= 0.75, res["per_prompt"]
    assert res["ground"]["share"] >= 0.5, res["per_prompt"]


def test_training_data_yields_labelled_scenes_whose_prompts_parse_back():
    imgs, classes, truth = SceneSampler(seed=3).sample_labelled(24, WINDOW)
    assert imgs.shape == (24, WINDOW, WINDOW, 3) and imgs.dtype == np.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    assert np.bincount(classes, minlength=len(SCENE_PROMPTS)).tolist() == [2] * len(SCENE_PROMPTS)  # balanced
    for img, c, lab in zip(imgs, classes, truth):
        want = parse_prompt(SCENE_PROMPTS[c])
        assert want == {"sky": lab.sky, "ground": lab.ground, "terrain": lab.terrain, "disc": lab.disc}
        assert lab.prompt == SCENE_PROMPTS[c]
        # the (possibly mirrored) image still shows its labels to the detectors
        a = analyse_scene(img)
        assert (a.sky, a.ground, a.terrain, len(a.discs)) == (lab.sky, lab.ground, lab.terrain, 1)
    crops, _ = SceneSampler(seed=3).sample(5, 64)
    assert crops.shape == (5, 64, 64, 3)
    # same seed, same data; held-out scenes come from another stream
    again, again_classes = SceneSampler(seed=3).sample(24, WINDOW)
    np.testing.assert_array_equal(again, imgs)
    np.testing.assert_array_equal(again_classes, classes)
    held, held_lab = heldout_scenes(1)
    assert held.shape[0] == len(SCENE_PROMPTS) and held_lab.tolist() == list(range(len(SCENE_PROMPTS)))
    assert not any(np.array_equal(h, i) for h in held for i in imgs)


def test_fidelity_of_rendered_scenes_is_complete_and_intervals_are_sound():
    held, lab = heldout_scenes(1, seed=5)
    res = fidelity(held, [SCENE_PROMPTS[c] for c in lab])
    assert res["n"] == len(SCENE_PROMPTS)
    for c in CHECKS:
        assert res[c]["share"] == 1.0, (c, res["per_prompt"])
        lo, hi = res[c]["ci95"]
        assert 0.7 < lo < 1.0 and hi == 1.0
    lo, hi = wilson_interval(9, 10)
    assert 0.55 < lo < 0.6 and 0.98 < hi < 0.99  # textbook values 0.596, 0.982
    assert wilson_interval(0, 10)[0] == 0.0


def test_train_toy_scenes_tiny_run_produces_a_loadable_folder(tmp_path: Path):
    from mdtools.toy.train import main

    out = tmp_path / "tiny-scenes"
    rc = main(["--data", "scenes", "--out", str(out), "--vae-steps", "2", "--unet-steps", "2", "--pool-per-class", "1",
               "--unet-batch", "4", "--offset-noise", "0.1"])
    assert rc == 0
    info = json.loads((out / "training_info.json").read_text())
    assert info["config"]["data"] == "scenes" and info["prompts"] == list(SCENE_PROMPTS)
    assert info["history"]["vae_l1"] and info["history"]["unet_mse"]
    p = load_toy_pipeline(out)
    assert p.tokenizer.tokenize(SCENE_PROMPTS[4]) == [w + "</w>" for w in SCENE_PROMPTS[4].split()]
    img = np.asarray(p(SCENE_PROMPTS[4], height=WINDOW, width=WINDOW, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(0), output_type="np").images)
    assert img.shape == (1, WINDOW, WINDOW, 3) and np.isfinite(img).all()


def test_train_toy_rejects_unknown_data_naming_the_field(tmp_path: Path):
    from mdtools.toy.train import ToyTrainConfig, main, train_toy

    with pytest.raises(ConfigError, match=r"data='photos'.*'textures', 'scenes'"):
        train_toy(tmp_path / "x", data="photos", config=ToyTrainConfig(vae_steps=1, unet_steps=1))
    with pytest.raises(SystemExit):
        main(["--data", "photos", "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists()


def test_texture_tokenizer_is_unchanged_and_scene_words_stay_whole():
    from mdtools.toy.tokenizer import EXTRA_WORDS, SCENE_EXTRA_WORDS, build_tokenizer, build_vocab, scene_words

    # The texture model's vocabulary is rebuilt bit for bit from the default word list.
    shipped = json.loads((TOY_MODEL_DIR / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert build_vocab()[0] == shipped
    tok = build_tokenizer(*scene_words())
    for w in set(EXTRA_WORDS) | set(SCENE_EXTRA_WORDS) | {w for p in SCENE_PROMPTS for w in p.split()}:
        assert tok.tokenize(w) == [w + "</w>"], w


def test_toy_scenes_is_accepted_by_experiment_configs_and_the_cli(tmp_path: Path):
    from mdtools import cli
    from mdtools.sweep import validate_runs

    runs = validate_runs([{"model": "toy-scenes", "prompt": SCENE_PROMPTS[8], "canvas": {"height": 128, "width": 256}}])
    assert runs[0].model == "toy-scenes"
    out = tmp_path / "night.png"
    rc = cli.main(["generate", "--model", "toy-scenes", "--prompt", SCENE_PROMPTS[8], "--height", "128", "--width", "256",
                   "--steps", "2", "--seed", "0", "--out", str(out)])
    assert rc == 0
    from PIL import Image

    assert Image.open(out).size == (256, 128)
    with pytest.raises(ConfigError, match=r"or one of \['toy', 'toy-scenes', 'toy-scenes-v2', 'toy-v2'\]"):
        validate_runs([{"model": "toy-scenery", "prompt": "x"}])


def test_disc_masks_follow_crop_and_mirror_and_weight_the_pool():
    """The disc-weighted loss's masks sit on the detected disc of the (cropped, mirrored) window."""
    imgs, classes, truth, masks = SceneSampler(seed=4).sample_with_discs(12, WINDOW)
    same, same_classes, _ = SceneSampler(seed=4).sample_labelled(12, WINDOW)
    np.testing.assert_array_equal(imgs, same)  # asking for masks draws no extra numbers
    np.testing.assert_array_equal(classes, same_classes)
    assert masks.shape == (12, WINDOW, WINDOW) and masks.dtype == bool
    for img, m, lab in zip(imgs, masks, truth):
        ((cy, cx, _r),) = analyse_scene(img).discs
        ys, xs = np.nonzero(m)
        assert abs(ys.mean() + 0.5 - cy) < 1.5 and abs(xs.mean() + 0.5 - cx) < 1.5  # mirrored too
        assert abs(m.sum() - np.pi * lab.disc_radius**2) < 0.15 * np.pi * lab.disc_radius**2
    crops, _, _, cmasks = SceneSampler(seed=4).sample_with_discs(6, 64)
    assert crops.shape[:3] == cmasks.shape == (6, 64, 64)

    from mdtools.toy.train import ToyTrainConfig, build_vae, encode_pool

    cfg = ToyTrainConfig(data="scenes", pool_per_class=1, disc_weight=6.0)
    pool = encode_pool(build_vae().eval(), cfg, SceneSampler(seed=4))
    assert len(pool) == 4 and pool[3].shape == (12, 1, 16, 16)
    assert set(torch.unique(pool[3]).tolist()) == {1.0, 7.0}
    assert ((pool[3] > 1).sum(dim=(1, 2, 3)) >= 4).all()  # every window has its disc weighted
    with pytest.raises(ValueError, match="disc_weight"):
        from mdtools.toy.data import CropSampler

        encode_pool(build_vae().eval(), ToyTrainConfig(pool_per_class=1, disc_weight=6.0), CropSampler(seed=0))
