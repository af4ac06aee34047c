"""benchmarks/real_arch.py without building a real model: argument checks, failing sizes
becoming rows, and the depth probe (SD3 / FLUX measured through depth-reduced transformers)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_real_arch_check_rejects_bad_arguments_before_building(capsys):
    import real_arch

    assert real_arch.main(["--presets", "sd21,flux", "--sizes", "flux=1000", "--check"]) == 2
    assert "--sizes=1000 is not a multiple of flux's patch grid (16); use 992 or 1008" in capsys.readouterr().err
    assert real_arch.main(["--presets", "sd21", "--sizes", "sdxl=1024", "--check"]) == 2
    assert "--sizes names preset 'sdxl', which --presets does not run (sd21)" in capsys.readouterr().err
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


def test_depth_fit_recovers_block_costs_and_reports_its_residual():
    import real_arch

    # t = 2 + 6 * double + 5 * single, as FLUX's probes: the fit recovers the full model exactly
    pts = [({"num_layers": d, "num_single_layers": s}, 2 + 6 * d + 5 * s) for d, s in ((1, 1), (2, 1), (1, 2), (2, 2))]
    t, resid = real_arch.depth_fit(pts, {"num_layers": 19, "num_single_layers": 38})
    assert t == pytest.approx(2 + 6 * 19 + 5 * 38) and resid == pytest.approx(0, abs=1e-9)
    pts[3] = (pts[3][0], pts[3][1] + 0.4)  # one noisy point: a residual, spread by least squares
    t, resid = real_arch.depth_fit(pts, {"num_layers": 19, "num_single_layers": 38})
    assert 0.05 < resid < 0.4
    with pytest.raises(ValueError, match="do not determine"):
        real_arch.depth_fit([({"num_layers": 1}, 3.0), ({"num_layers": 1}, 3.1)], {"num_layers": 24})


def test_depth_probe_arguments_and_reduced_builds():
    """--depth-probe takes DiT presets, one size each; the reduced transformers have the
    asked block counts and say so (built on the meta device: no memory)."""
    import real_arch

    from mdtools.arch import build_from_folder, preset_dir
    from mdtools.errors import ConfigError

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert real_arch.main(["--depth-probe", "sd3=1024;flux=1024", "--check"]) == 0
    assert "flux: depth probe at 1024 px (4 depth-reduced transformers)" in out.getvalue()
    assert "sd21" not in out.getvalue()  # no --presets: only the probes run
    assert real_arch.main(["--depth-probe", "sd21=512", "--check"]) == 2
    for over in real_arch.DEPTH_PROBES["flux"]:
        pipe, info = build_from_folder(preset_dir("arch:flux"), device="meta", overrides={"transformer": over})
        assert len(pipe.transformer.transformer_blocks) == over["num_layers"]
        assert len(pipe.transformer.single_transformer_blocks) == over["num_single_layers"]
        assert "with {'transformer'" in info["architecture"]
    with pytest.raises(ConfigError, match=r"overrides name components \['unet'\]"):
        build_from_folder(preset_dir("arch:flux"), device="meta", overrides={"unet": {"num_layers": 1}})
