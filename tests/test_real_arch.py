"""benchmarks/real_arch.py without building a real model: argument checks, failing sizes
becoming rows, and the depth probe (SD3 / FLUX measured through depth-reduced transformers)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_real_arch_check_rejects_bad_arguments_before_building(capsys):
    import real_arch

    assert real_arch.main(["--presets", "sd21,flux", "--sizes", "flux=1000", "--check"]) == 2
    assert "--sizes=1000 is not a multiple of flux's patch grid (16); use 992 or 1008" in capsys.readouterr().err
    assert real_arch.main(["--presets", "sd21", "--sizes", "sdxl=1024", "--check"]) == 2
    assert "--sizes names preset 'sdxl', which this run does not measure (sd21); add it to --presets or drop it" in capsys.readouterr().err
    assert real_arch.main(["--presets", "sd2", "--check"]) == 2
    assert "--presets: model='sd2' is not a known architecture preset; use one of: arch:sd15" in capsys.readouterr().err
    assert real_arch.main(["--presets", "sd21", "--tiled-decode", "sd21=5x", "--check"]) == 2
    assert "--tiled-decode='sd21=5x': 'sd21=5x' is not <preset>=<sides>; use e.g." in capsys.readouterr().err
    assert real_arch.main(["--device", "gpu0", "--check"]) == 2
    assert "--device='gpu0' is not a torch device" in capsys.readouterr().err


def test_a_failing_size_becomes_a_row_and_the_next_sizes_run():
    """real_arch.attempt: ok rows, 'oom' rows for out-of-memory, 'error' rows (first line of
    the message) for other runtime errors, such as a kernel's size limit on a huge canvas."""
    import real_arch

    base = {"preset": "sd21"}

    def ok():
        return {"seconds": 1.0}

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 120 GiB\nmore")

    def bad():
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\ndetails")

    assert real_arch.attempt(ok, base, "decode_full", 2048) == {"seconds": 1.0, "status": "ok"}
    row = real_arch.attempt(oom, base, "decode_full", 8192)
    assert row["status"] == "oom" and row["basis"] == "CUDA out of memory. Tried to allocate 120 GiB"
    assert row["size_px"] == 8192 and row["phase"] == "decode_full" and row["preset"] == "sd21"
    row = real_arch.attempt(bad, base, "decode_full", 4096)
    assert row["status"] == "error" and row["basis"] == "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"
    with pytest.raises(ValueError):  # not a runtime failure of the measured code: a bug, raised
        real_arch.attempt(lambda: int("x"), base, "denoise", 512)


def test_depth_fit_recovers_block_costs_and_reports_its_error():
    import real_arch

    # t = 2 + 6 * double + 5 * single over FLUX's probes: the fit recovers the full model exactly
    full = {"num_layers": 19, "num_single_layers": 38}
    pts = [(c, 2 + 6 * c["num_layers"] + 5 * c["num_single_layers"]) for c in real_arch.DEPTH_PROBES["flux"]]
    fit = real_arch.depth_fit(pts, full)
    assert fit["t"] == pytest.approx(2 + 6 * 19 + 5 * 38) and fit["residual"] == pytest.approx(0, abs=1e-9)
    assert fit["dof"] == 2 and fit["se"] == pytest.approx(0, abs=1e-6)
    # one noisy point: a residual and a standard error, as numpy's own least squares gives
    pts[3] = (pts[3][0], pts[3][1] + 0.4)
    fit = real_arch.depth_fit(pts, full)
    X = np.array([[1.0, c["num_layers"], c["num_single_layers"]] for c, _ in pts])
    y = np.array([t for _, t in pts])
    coef, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
    x0 = np.array([1.0, 19, 38])
    assert fit["t"] == pytest.approx(x0 @ coef)
    assert fit["se"] == pytest.approx(np.sqrt(x0 @ np.linalg.inv(X.T @ X) @ x0 * rss[0] / 2))
    assert 0.05 < fit["residual"] < 0.4
    exact = real_arch.depth_fit(pts[:3], full)  # as many points as unknowns: no error estimate
    assert exact["dof"] == 0 and exact["se"] is None
    with pytest.raises(ValueError, match="do not determine"):
        real_arch.depth_fit([({"num_layers": 1}, 3.0), ({"num_layers": 1}, 3.1)], {"num_layers": 24})


def test_depth_probe_keeps_failed_probes_as_rows_and_fits_the_rest(monkeypatch, tmp_path):
    """A probe that fails to build or run is a row with its error; the fit uses the others
    (here SD3's 3 probes, one failing: 2 points, no spare, still extrapolated); every row is
    flushed as it comes."""
    import argparse

    import real_arch

    import mdtools.models.arch as arch

    class FakeMD:
        device, native_window = torch.device("cpu"), 1024

        def __init__(self, pipe, info):
            self.layers = pipe

    def build(folder, *, overrides, **kw):
        n = overrides["transformer"]["num_layers"]
        if n == 4:
            raise RuntimeError("could not allocate 3 GB\nmore")
        return n, {}

    def denoise(md, preset, size, args):
        return {"per_view_forward_s": 1.0 + 3.0 * md.layers, "peak_above_weights_gb": 0.5 + 0.01 * md.layers,
                "model_evaluations": 1, "views": 1, "kind": "measured"}

    monkeypatch.setattr(arch, "build_from_folder", build)
    monkeypatch.setattr(real_arch, "MultiDiffusionPipeline", FakeMD)
    monkeypatch.setattr(real_arch, "denoise_row", denoise)
    flushed = []
    args = argparse.Namespace(dtype="float32", device="cpu", steps=1)
    rows = real_arch.depth_probe("sd3", 1024, [2048], args, flush=lambda r: flushed.append(len(r)))
    assert [r["status"] for r in rows[:3]] == ["ok", "error", "ok"]
    assert rows[1]["basis"] == "transformer with num_layers=4: could not allocate 3 GB"
    full = [r for r in rows if r["kind"] == "extrapolated"]
    assert [r["size_px"] for r in full] == [1024, 2048]
    assert full[0]["per_view_forward_s"] == pytest.approx(1.0 + 3.0 * 24) and full[0]["per_view_forward_se_s"] is None
    assert full[0]["peak_above_weights_gb"] == pytest.approx(0.58) and full[1]["views"] == 9
    assert full[0]["weights_gb"] == pytest.approx(2.03e9 * 4 / 2**30, rel=0.01)
    assert "an exact fit: no spare point" in full[0]["basis"]
    assert flushed == [1, 2, 3, 5]


def test_depth_probe_arguments_and_reduced_builds():
    """--depth-probe takes DiT presets, one size each; the reduced transformers have the
    asked block counts and say so (built on the meta device: no memory)."""
    import real_arch

    from mdtools.errors import ConfigError
    from mdtools.models.arch import build_from_folder, preset_dir

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert real_arch.main(["--depth-probe", "sd3=1024;flux=1024", "--check"]) == 0
    assert "flux: depth probe at 1024 px (5 depth-reduced transformers)" in out.getvalue()
    assert "sd21" not in out.getvalue()  # no --presets: only the probes run
    assert real_arch.main(["--depth-probe", "sd21=512", "--check"]) == 2
    for over in real_arch.DEPTH_PROBES["flux"]:
        pipe, info = build_from_folder(preset_dir("arch:flux"), device="meta", overrides={"transformer": over})
        assert len(pipe.transformer.transformer_blocks) == over["num_layers"]
        assert len(pipe.transformer.single_transformer_blocks) == over["num_single_layers"]
        assert "with {'transformer'" in info["architecture"]
    with pytest.raises(ConfigError, match=r"overrides name components \['unet'\]"):
        build_from_folder(preset_dir("arch:flux"), device="meta", overrides={"unet": {"num_layers": 1}})
    with pytest.raises(ConfigError, match=r"overrides for \['text_encoder_2'\] would be ignored"):
        build_from_folder(preset_dir("arch:flux"), device="meta", overrides={"text_encoder_2": {"num_layers": 1}})
    assert real_arch.main(["--presets", "flux", "--depth-probe", "flux=1024", "--check"]) == 2
    assert real_arch.main(["--depth-probe", "flux=1024", "--extrapolate", "sd3=2048", "--check"]) == 2
