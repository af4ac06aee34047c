"""benchmarks/gpu_suite.sh is run only when a GPU is lent, rarely and against a time limit:
these checks make sure that such a run is not wasted on a typo. Every real_arch.py
invocation of the suite passes real_arch's own validation (--check, nothing is built), its
exact tiled decodes resolve to 'park' under the suite's budget (a replaying schedule could
not finish in its time limit), the time limits fit the device tool's 600 s per command, and
on a machine without CUDA the script stops in its preflight with one clear line, having run
nothing."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _runs() -> list[tuple[int, list[str]]]:
    """The suite's RUNS array: (time limit in s, real_arch.py arguments) per line."""
    text = SUITE.read_text()
    body = re.search(r"^RUNS=\(\n(.*?)^\)$", text, re.S | re.M)
    assert body, "gpu_suite.sh has no RUNS=( ... ) block"
    runs = []
    for line in body.group(1).splitlines():
        limit, _, args = line.strip().strip('"').partition("|")
        runs.append((int(limit), args.replace("$DEST", "/tmp/gpu-suite-check").split()))
    return runs


def test_the_script_parses_and_its_time_limits_fit_one_device_command():
    subprocess.run(["bash", "-n", str(SUITE)], check=True)
    runs = _runs()
    assert len(runs) == 4
    test_s = int(re.search(r"^TEST_S=(\d+)$", SUITE.read_text(), re.M).group(1))
    # the device tool stops a command at 600 s; the preflight (wheels, imports, 4 checks) takes ~30 s
    assert test_s + sum(limit for limit, _ in runs) <= 540


def test_deselected_tests_exist():
    """A renamed test would make --deselect a no-op: the suite would then fail on it."""
    ids = re.findall(r"--deselect (\S+)", SUITE.read_text())
    assert ids
    for node in ids:
        path, _, name = node.partition("::")
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), node


@pytest.mark.parametrize("i", range(4))
def test_every_benchmark_invocation_passes_validation(i):
    import real_arch

    limit, args = _runs()[i]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert real_arch.main(args + ["--check"]) == 0
    tiled = [line for line in out.getvalue().splitlines() if line.strip().startswith("tiled ")]
    if any(real_arch._sizes(args[args.index("--tiled-decode") + 1], {}).values()):
        # 2048, 4096 and 8192 px, every one parked once: no replays within the time limit
        assert [t.split(":")[0].strip() for t in tiled] == ["tiled 2048 px", "tiled 4096 px", "tiled 8192 px"]
        assert all(": park," in t for t in tiled), tiled
    else:
        assert tiled == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_the_suite_stops_in_its_preflight(tmp_path):
    env = dict(os.environ, GPU_SUITE_OUT=str(tmp_path), PY=sys.executable)
    r = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "sees no CUDA device; this suite measures a GPU (nothing was run)" in r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_suite.log"]  # no CSV, no test report


def test_gpu_slim_sets_the_toy_weights_aside_and_back(tmp_path):
    """On a copy: the toy weights leave the tree (configs stay), the size line says what would
    travel, and `back` restores every file byte for byte."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_slim.sh").write_text((ROOT / "benchmarks" / "gpu_slim.sh").read_text())
    weights = repo / "mdtools" / "assets" / "toy-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(os.urandom(3 << 20))
    config = weights.parent / "config.json"
    config.write_text("{}")
    other = repo / "mdtools" / "assets" / "feature-net" / "model.safetensors"  # not a toy model: stays
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x" * 1000)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    content = weights.read_bytes()
    env = dict(os.environ, GPU_SLIM_DIR=str(tmp_path / "aside"))
    r = subprocess.run(["bash", "benchmarks/gpu_slim.sh", "aside"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not weights.exists() and config.is_file() and other.is_file()
    assert "working tree 0.0 MiB + .whl 0.0 MiB = 0.0 MiB (within the device tool's 64 MiB)" in r.stdout
    r = subprocess.run(["bash", "benchmarks/gpu_slim.sh", "back"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert weights.read_bytes() == content
    assert "working tree 3.0 MiB" in r.stdout
    r = subprocess.run(["bash", "benchmarks/gpu_slim.sh", "back"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "nothing set aside" in r.stderr
