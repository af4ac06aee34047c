"""The embedded tile ControlNet (mdtools/assets/toy-scenes-tile): loads, fits the toy-scenes UNet, its card, its training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mdtools.errors import ConfigError
from mdtools.toy import EMBEDDED_CONTROLNETS, TOY_SCENES_MODEL_DIR, TOY_SCENES_TILE_DIR
from mdtools.toy.train_controlnet import EvalConfig, TileTrainConfig, degrade, render_card, train_tile_controlnet

WEIGHTS = TOY_SCENES_TILE_DIR / "diffusion_pytorch_model.safetensors"


def _load(folder):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder, use_safetensors=True, local_files_only=True).eval()


def _json(name):
    return json.loads((TOY_SCENES_TILE_DIR / name).read_text(encoding="utf-8"))


def test_asset_is_a_small_safetensors_controlnet_of_the_scenes_unet():
    assert EMBEDDED_CONTROLNETS["toy-scenes-tile"] == TOY_SCENES_TILE_DIR
    assert WEIGHTS.stat().st_size < 20_000_000
    assert not [p for p in TOY_SCENES_TILE_DIR.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt"}]
    from diffusers import UNet2DConditionModel

    cn = _load(TOY_SCENES_TILE_DIR)
    unet = UNet2DConditionModel.from_pretrained(TOY_SCENES_MODEL_DIR / "unet", use_safetensors=True).eval()
    for key in ("block_out_channels", "cross_attention_dim", "in_channels", "down_block_types",
                "layers_per_block", "attention_head_dim", "norm_num_groups"):
        assert cn.config[key] == unet.config[key], key
    assert cn.config.conditioning_channels == 3
    # The 128 px control image maps to the 16 x 16 latent (the VAE's factor 8), and the UNet takes its residuals.
    g = torch.Generator().manual_seed(0)
    z, emb = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 16, 64, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        down, mid = cn(z, t, emb, controlnet_cond=torch.rand(1, 3, 128, 128, generator=g), return_dict=False)
        out = unet(z, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        plain = unet(z, t, emb).sample
    assert out.shape == plain.shape == z.shape
    assert (out - plain).abs().max() > 1e-3  # trained: the zero convolutions are no longer zero


def test_card_numbers_come_from_quality_json():
    info, quality = _json("training_info.json"), _json("quality.json")
    card = (TOY_SCENES_TILE_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == render_card(info, quality)
    assert quality["n_scenes"] >= 16 and "expanded" in quality["interval"]
    assert info["file_bytes"] == WEIGHTS.stat().st_size
    assert info["wall_time_s"]["total"] <= 60 * 60
    for s, r in quality["strengths"].items():
        for key in ("without", "with", "difference"):
            iv = r[key]
            assert iv["lo"] <= iv["mean"] <= iv["hi"] and iv["n"] == quality["n_scenes"], (s, key)
            assert f"{iv['mean']:.2f} [{iv['lo']:.2f}, {iv['hi']:.2f}]" in card
        # The paired difference's mean is the difference of the two means (rounded to 1e-3 each).
        assert abs(r["difference"]["mean"] - (r["with"]["mean"] - r["without"]["mean"])) <= 0.003


def test_degrade_is_the_enlarged_low_resolution_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    smooth = np.stack([yy, xx, 0.5 + 0.3 * np.sin(3 * xx)], axis=-1).astype(np.float32)
    noise = rng.random((64, 64, 3)).astype(np.float32)
    for resample in ("bicubic", "lanczos"):
        for factor in (2, 4):
            out = degrade(noise, factor, resample)
            assert out.shape == noise.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
            # Low frequencies survive, pixel-level detail does not; the box filter keeps the mean.
            assert np.abs(degrade(smooth, factor, resample) - smooth).mean() < 0.01
            assert np.abs(out - noise).mean() > 0.15
            assert abs(out.mean() - noise.mean()) < 0.01
    flat = np.full((16, 16, 3), 0.4, np.float32)
    np.testing.assert_allclose(degrade(flat, 2), np.rint(0.4 * 255) / 255, atol=1e-6)
    with pytest.raises(ConfigError, match="resample"):
        degrade(flat, 2, "nearest")


@pytest.mark.parametrize("kw, field", [({"minutes": 0}, "minutes"), ({"batch": 0}, "batch"), ({"lr": 2.0}, "lr"),
                                       ({"factors": (3,), "factor_probs": (1.0,)}, "factors")])
def test_bad_config_is_refused_naming_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        TileTrainConfig(**kw)


@pytest.mark.parametrize("kw, field", [({"n_scenes": 1}, "n_scenes"), ({"strengths": (0.0,)}, "strengths"),
                                       ({"factor": 3}, "factor"), ({"samples": (99,)}, "samples")])
def test_bad_evaluation_is_refused_naming_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        EvalConfig(**kw)


def test_two_step_training_writes_a_loadable_controlnet(tmp_path):
    cfg = TileTrainConfig(max_steps=2, pool_per_class=1, batch=2, val_size=2, val_every=1, log_every=1, warmup=1)
    out = train_tile_controlnet(tmp_path / "cn", cfg)
    cn = _load(out)
    assert list(cn.config.conditioning_embedding_out_channels) == list(cfg.cond_channels)
    info = json.loads((out / "training_info.json").read_text(encoding="utf-8"))
    assert info["steps"] == 2 and info["stopped_by"] == "max_steps"
    assert [s for s, _ in info["history"]["val_mse"]] == [1, 2]
    assert info["best_step"] in (1, 2) and info["parameters"] == sum(p.numel() for p in cn.parameters())
