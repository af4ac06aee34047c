"""Bad inputs are refused with a message naming the field and a valid value, before any
model loads; the CLI runs the README example on a saved tiny pipeline folder."""

from __future__ import annotations

import json

import pytest
import torch

from mdtools import ConfigError, MultiDiffusionPipeline, cli

BAD_CALLS = [
    (dict(height=500), r"height=500 is not a multiple of the VAE scale factor \(8\); use 496 or 504"),
    (dict(width=0), r"width must be > 0"),
    (dict(num_inference_steps=0), r"num_inference_steps must be > 0"),
    (dict(num_inference_steps=-3), r"num_inference_steps must be > 0"),
    (dict(window=60), r"window=60 is not a multiple of the VAE scale factor \(8\); use 56 or 64"),
    (dict(overlap=64, window=64), r"overlap=64 must be smaller than window=64"),
    (dict(kernel="box"), r"kernel='box' is not a known kernel; choose one of"),
    (dict(view_batch_size=0), r"view_batch_size must be > 0"),
    (dict(guidance_scale=-1.0), r"guidance_scale must be a number >= 0"),
    (dict(circular="left"), r"circular='left' is not valid; choose one of \[False, 'x', 'y', 'both'\]"),
    (dict(prompt=["a", "b"], negative_prompt=["c"]), r"negative_prompt has 1 entries but prompt has 2"),
    (dict(output_type="jpeg"), r"output_type='jpeg' is not valid; choose one of \['pil', 'np', 'pt', 'latent'\]"),
    (dict(guidance_rescale=2.0), r"guidance_rescale must be in \[0, 1\]"),
    (dict(init_latents="zeros", strength=0.04, num_inference_steps=20),
     r"strength=0.04 with num_inference_steps=20 runs no denoising step .* use strength >= 0.05"),
]


@pytest.mark.parametrize("kwargs, match", BAD_CALLS)
def test_pipeline_rejects_bad_input_before_compute(sd_pipe, monkeypatch, kwargs, match):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    monkeypatch.setattr(md, "_adapter", lambda *a, **k: pytest.fail("compute started before validation"))
    kwargs = {"prompt": "a beach", "height": 64, "width": 128, "overlap": 32, **kwargs}
    prompt = kwargs.pop("prompt")
    if isinstance(kwargs.get("init_latents"), str):  # clean latents of the canvas size
        kwargs["init_latents"] = torch.zeros(1, 4, kwargs["height"] // 8, kwargs["width"] // 8)
    with pytest.raises(ConfigError, match=match):
        md(prompt, **kwargs)


def test_unknown_scheduler_lists_valid_names(sd_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    with pytest.raises(ConfigError, match=r"scheduler='fastest' is unknown; use an alias \['ddim'"):
        md.set_scheduler("fastest")


def test_missing_model_path_is_reported():
    with pytest.raises(ConfigError, match=r"model path './no/such/model' does not exist"):
        MultiDiffusionPipeline.from_pretrained("./no/such/model")


CLI_BAD = [
    (["--model", "./missing-dir"], "model path './missing-dir' does not exist"),
    (["--height", "1001"], "height=1001 is not a multiple of the VAE scale factor (8); use 1000 or 1008"),
    (["--overlap", "512", "--window", "512"], "overlap=512 must be smaller than window=512"),
    (["--kernel", "box"], "kernel='box' is not a known kernel"),
    (["--scheduler", "nope"], "scheduler='nope' is unknown"),
    (["--scheduler", "flow_euler"], "--scheduler='flow_euler' does not fit this UNet model; use a diffusion scheduler"),
    (["--model", "arch:flux", "--scheduler", "ddim", "--height", "1024", "--width", "2048"],
     "--scheduler='ddim' does not fit this flux model; use a flow-matching scheduler such as 'flow_euler'"),
    (["--steps", "0"], "num_inference_steps must be > 0"),
    (["--view-batch-size", "0"], "view_batch_size must be > 0"),
    (["--guidance", "-2"], "guidance_scale must be a number >= 0"),
    (["--circular", "diag"], "circular='diag' is not valid"),
    (["--kernel-param", "sigma"], "--kernel-param 'sigma' must look like NAME=VALUE"),
    (["--out", "x.txt"], "--out 'x.txt' must end in one of"),
]


@pytest.mark.parametrize("extra, message", CLI_BAD)
def test_cli_rejects_bad_input_before_loading(saved_sd_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(MultiDiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("model loaded before validation")))
    argv = ["generate", "--model", str(saved_sd_dir), "--prompt", "a beach", "--out", str(tmp_path / "x.png")]
    argv += extra
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_readme_example_on_saved_tiny_pipeline(saved_sd_dir, tmp_path):
    """README's CLI example, with the SD 2.1 id replaced by a saved tiny pipeline folder."""
    out = tmp_path / "pano.png"
    rc = cli.main(["generate", "--model", str(saved_sd_dir), "--prompt", "a photo of a beach",
                   "--height", "64", "--width", "256", "--overlap", "32", "--kernel", "gaussian",
                   "--kernel-param", "sigma=0.1", "--steps", "3", "--guidance", "7.5", "--seed", "0",
                   "--scheduler", "dpmpp_2m", "--out", str(out)])
    assert rc == 0
    from PIL import Image

    assert Image.open(out).size == (256, 64)
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["counts"]["views"] == 7 and rec["extra"]["kernel"] == "gaussian(sigma=0.1)"
    assert rec["extra"]["scheduler"] == "DPMSolverMultistepScheduler"


def test_python_api_readme_example_on_saved_tiny_pipeline(saved_sd_dir):
    md = MultiDiffusionPipeline.from_pretrained(saved_sd_dir)
    out = md("a photo of a beach", height=64, width=256, overlap=32, num_inference_steps=3,
             generator=0, progress=False)
    assert out.images[0].size == (256, 64) and out.plan.n_views == 7


def test_hub_models_get_their_scheduler_family_checked_after_loading():
    """A hub id has no config on disk: its kind is unknown before loading, so a flow
    scheduler for a hub FLUX model is not refused as a UNet mismatch (set_scheduler checks
    it once the model is loaded)."""
    from mdtools.sweep import validate_runs

    (run,) = validate_runs([{"model": "black-forest-labs/FLUX.1-dev", "prompt": "x",
                             "sampler": {"scheduler": "flow_euler"}}])
    assert run.sampler.scheduler == "flow_euler"
