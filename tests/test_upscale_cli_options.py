"""`mdtools upscale --model-option KEY=VALUE`: parsed without eval, checked before any model loads, passed to md.upscale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mdtools import cli
from mdtools.errors import ConfigError
from mdtools.models import MODEL_OPTIONS
from mdtools.pipeline import MultiDiffusionPipeline


class _Stop(Exception):
    """Raised by the stand-in pipeline's upscale: the CLI got as far as the call."""


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_load(monkeypatch):
    monkeypatch.setattr(MultiDiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("model loaded before validation")))


def _argv(image, tmp_path, *extra):
    return ["upscale", str(image), "--out", str(tmp_path / "out.png"), *extra]


def test_values_are_typed_without_eval():
    got = cli.parse_model_options(["true_cfg_scale=4", "flow_mu=1.5e-1", "positions=global", "sdxl_view_crops=True",
                                  "max_sequence_length=+128", "class_labels=[3, 7]"])
    assert got == {"true_cfg_scale": 4, "flow_mu": 0.15, "positions": "global", "sdxl_view_crops": True,
                   "max_sequence_length": 128, "class_labels": [3, 7]}
    assert type(got["true_cfg_scale"]) is int and type(got["flow_mu"]) is float and got["sdxl_view_crops"] is True
    assert cli.parse_model_options(["class_labels=none", "sdxl_view_crops=false"]) == {
        "class_labels": None, "sdxl_view_crops": False}
    # no Python evaluation: an expression stays text (and the flow check then refuses it)
    assert cli.parse_model_options(["flow_mu=__import__('os')"]) == {"flow_mu": "__import__('os')"}
    assert cli.parse_model_options(["true_cfg_scale=nan"]) == {"true_cfg_scale": "nan"}
    assert cli.parse_model_options([]) == {}


BAD = [
    (["--model-option", "true_cfg_scale"], "--model-option 'true_cfg_scale' must look like KEY=VALUE, e.g. true_cfg_scale=4.0"),
    (["--model-option", "=4"], "--model-option '=4' must look like KEY=VALUE"),
    (["--model-option", "positions="], "--model-option 'positions=' must look like KEY=VALUE"),
    (["--model-option", "cfg=4"], f"--model-option 'cfg=4': 'cfg' is not a model option; valid: {sorted(MODEL_OPTIONS)}"),
    (["--model-option", "flow_mu=1", "--model-option", "flow_mu=2"], "--model-option flow_mu is given twice"),
    (["--model-option", "class_labels=[1,"], "--model-option 'class_labels=[1,': '[1,' is not a JSON list"),
    (["--model-option", "max_sequence_length=0"], "--model-option max_sequence_length must be > 0 (e.g. 120), got 0"),
    (["--method", "usdu", "--model-option", "positions=global"],
     "--model-option goes to the latent img2img; method 'usdu' runs its own per-tile img2img"),
    (["--model", "arch:flux", "--window", "128", "--model-option", "true_cfg_scale=0.5"],
     "--model-option true_cfg_scale must be a number >= 1 (e.g. 4.0; 1 = off), got 0.5"),
    (["--model", "arch:flux", "--window", "128", "--model-option", "positions=diag"], "--model-option positions='diag'"),
    (["--model", "arch:flux", "--window", "128", "--model-option", "flow_mu=__import__('os')"], "--model-option flow_mu="),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_model_options_fail_before_loading(image, tmp_path, no_load, capsys, extra, message):
    assert cli.main(_argv(image, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("extra, want", [
    ([], None),
    (["--model-option", "sdxl_view_crops=true", "--model-option", "max_sequence_length=77"],
     {"sdxl_view_crops": True, "max_sequence_length": 77}),
])
def test_model_options_reach_md_upscale(image, tmp_path, monkeypatch, extra, want):
    """The parsed options are md.upscale's `model_options` (None without the flag); nothing else changes."""
    calls = []

    class Fake:
        def upscale(self, *args, **kwargs):
            calls.append(kwargs)
            raise _Stop

    monkeypatch.setattr(MultiDiffusionPipeline, "from_pretrained", classmethod(lambda *a, **k: Fake()))
    with pytest.raises(_Stop):
        cli.main(_argv(image, tmp_path, "--scale", "2", *extra))
    assert len(calls) == 1 and calls[0]["model_options"] == want
    assert calls[0]["scale"] == 2 and calls[0]["method"] == "multidiffusion"


def test_parse_error_is_a_config_error():
    with pytest.raises(ConfigError, match="--model-option 'x' must look like KEY=VALUE"):
        cli.parse_model_options(["x"])
