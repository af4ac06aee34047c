"""The `upscale:` block of experiment files: validation before any model, the truth and its source, one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mdtools.errors import ConfigError
from mdtools.metrics import evaluate
from mdtools.pipeline import MultiDiffusionPipeline
from mdtools.sweep.config import RunConfig, load_experiment
from mdtools.sweep.estimate import estimate_work
from mdtools.sweep.run import run_one
from mdtools.sweep.upscale_runs import truth_and_source

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model": "toy-scenes", "prompt": "x", "canvas": {"height": 128, "width": 256}, "tiling": {"overlap": 64},
        "sampler": {"steps": 10}, "upscale": {"downsample": 2}}


def _load(tmp_path, base=None, sweep=None, **extra):
    spec = {"name": "t", "base": {**BASE, **(base or {})}, **({"sweep": sweep} if sweep else {}), **extra}
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(spec))
    return load_experiment(p)


def test_the_shipped_experiment_validates_and_estimates_img2img_work():
    exp = load_experiment(ROOT / "experiments" / "upscale.yaml")
    assert len(exp.runs) == 4 and {"upscale.strength", "upscale.color_fix"} <= set(exp.swept_keys)
    cfg = exp.runs[0]
    # 3 views x int(20 x 0.2) steps x CFG 2
    assert estimate_work(cfg, 8, 128, None) == {"unet_evaluations": 3 * 4 * 2}


def test_sweeps_and_inversion_counted(tmp_path):
    exp = _load(tmp_path, base={"upscale": {"downsample": 2, "noise_inversion": {"steps": 5}}},
                sweep={"upscale.strength": [0.3, 0.5]})
    assert [r.upscale.strength for r in exp.runs] == [0.3, 0.5]
    assert estimate_work(exp.runs[1], 8, 128, None) == {"unet_evaluations": 3 * 5 * 2 + 5 * 3}


@pytest.mark.parametrize("upscale, match", [
    ({"strength": 0}, "upscale.strength"),
    ({"strength": 1.2}, "upscale.strength"),
    ({"colour_fix": "wavelet"}, "valid keys here"),
    ({"color_fix": "hist"}, "upscale.color_fix"),
    ({"downsample": 3}, "downsample=3 must divide"),
    ({"scale": 1}, "too small for the window"),
    ({"noise_inversion": {"stepz": 3}}, "unknown key"),
    ({"upscaler": "esrgan"}, "upscale.upscaler"),
])
def test_bad_blocks_are_named(tmp_path, upscale, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, base={"upscale": {"downsample": 2, **upscale}})


def test_model_options_are_checked_and_leave_old_run_ids_alone(tmp_path):
    with pytest.raises(ConfigError, match="upscale.model_options"):
        _load(tmp_path, base={"upscale": {"downsample": 2, "model_options": {"true_cfg_scalez": 4.0}}})
    with pytest.raises(ConfigError, match="model_options go to the latent img2img"):
        _load(tmp_path, base={"method": {"name": "usdu"}, "tiling": {"overlap": 0},
                              "upscale": {"downsample": 2, "model_options": {"max_sequence_length": 16}}})
    plain = _load(tmp_path).runs[0].run_id()
    assert _load(tmp_path, base={"upscale": {"downsample": 2, "model_options": None}}).runs[0].run_id() == plain
    assert _load(tmp_path, base={"upscale": {"downsample": 2, "model_options": {"max_sequence_length": 16}}}).runs[0].run_id() != plain


def test_methods_without_img2img_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="demofusion.*does not support img2img"):
        _load(tmp_path, base={"method": {"name": "demofusion"}})


def test_run_ids_of_generation_runs_are_unchanged():
    d = {"model": "toy", "prompt": "brick wall", "canvas": {"height": 512, "width": 2048}, "seed": 3}
    assert RunConfig.model_validate(d).run_id() == "902ba2cf7682"  # its id before the upscale block existed
    assert RunConfig.model_validate({**d, "upscale": None}).run_id() == "902ba2cf7682"
    assert RunConfig.model_validate({**d, "upscale": {}}).run_id() != "902ba2cf7682"


def test_truth_and_source():
    cfg = RunConfig.model_validate({**BASE, "upscale": {"downsample": 2, "scene_seed": 3}})
    truth, source, prompt = truth_and_source(cfg, 8)
    assert truth.shape == (128, 256, 3) and source.size == (128, 64)
    assert prompt != "x" and " sky over " in prompt  # the scene's own prompt
    plain = RunConfig.model_validate({**BASE, "upscale": {"downsample": 2, "scene_seed": 3, "scene_prompt": False}})
    assert truth_and_source(plain, 8)[2] == "x"


@pytest.mark.usefixtures("one_torch_thread")
def test_one_run_measures_against_the_truth(sd_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)  # 64 px window
    cfg = RunConfig.model_validate({"model": "toy", "prompt": "a photo", "canvas": {"height": 64, "width": 128},
                                    "tiling": {"overlap": 32}, "sampler": {"steps": 4, "guidance": 3.0},
                                    "upscale": {"downsample": 2, "scene_prompt": False, "strength": 0.5},
                                    "metrics": ["psnr", "color_drift"]})
    images: dict[str, bytes] = {}
    out = run_one(md, cfg, images)
    assert out["status"] == "ok" and set(out["metrics"]) == {"psnr", "color_drift"}
    assert out["record"]["counts"]["model_evaluations"] == 3 * 2 * 2 and images
    truth, source, _ = truth_and_source(cfg, 8)
    again = md.upscale(source, scale=2, prompt="a photo", strength=0.5, steps=4, guidance_scale=3.0, overlap=32,
                       seed=0, progress=False, vae_tiling=cfg.vae.model_dump())
    ref = evaluate(again.tensor, again.plan, metrics=["psnr", "color_drift"], reference=truth)
    assert out["metrics"]["psnr"] == pytest.approx(float(ref["psnr"]), rel=1e-6)
    assert out["metrics"]["color_drift"] == pytest.approx(float(ref["color_drift"]), rel=1e-6)
    assert np.isfinite(out["metrics"]["psnr"])


def test_controlnet_settings_reach_upscale():
    """upscale.controlnet / controlnet_conditioning_scale / control_mode go to md.upscale (control_mode only with a
    ControlNet: a sweep axis over controlnet: [null, ...] keeps one base block)."""
    from mdtools.sweep.upscale_runs import run_upscale

    seen: list[dict] = []

    class Spy:
        vae_scale_factor = 8

        def upscale(self, source, **kw):
            seen.append(kw)
            raise RuntimeError("stop")

    base = {"prompt": "x", "canvas": {"height": 64, "width": 128}, "upscale": {"downsample": 2, "control_mode": 6}}
    for cn, want in ((None, {}), ("toy-scenes-tile", {"controlnet": "toy-scenes-tile", "controlnet_conditioning_scale": 0.5,
                                                      "control_mode": 6})):
        cfg = RunConfig.model_validate({**base, "upscale": {**base["upscale"], "controlnet": cn,
                                                            "controlnet_conditioning_scale": 0.5}})
        with pytest.raises(RuntimeError, match="stop"):
            run_upscale(Spy(), cfg)
        got = {k: v for k, v in seen[-1].items() if k.startswith("control")}
        assert got == want
    with pytest.raises(ValueError, match="control_mode"):
        RunConfig.model_validate({**base, "upscale": {"downsample": 2, "control_mode": -1}})
