"""The Ray executor: same records as the local one, retries after worker death, resume after
a driver SIGKILL, and clear errors before any run. One local Ray (2 CPUs) serves the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from PIL import Image

from mdtools import ConfigError
from mdtools.cli import main as cli_main
from mdtools.sweep import RayExecutor, build_table, execute, load_experiment, load_records, make_executor

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs and no GPU for the whole module; its address for subprocess drivers."""
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 1024 ** 2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def quickstart(tmp_path: Path) -> Path:
    """experiments/quickstart.yaml (naive / uniform / gaussian on the toy model), shrunk to seconds."""
    spec = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    spec["base"].update(canvas={"height": 128, "width": 256}, sampler={"steps": 2, "guidance": 5.0},
                        metrics=["seam_score", "seam_structure", "tv"])
    p = tmp_path / "quickstart.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def tiny_sweep(tmp_path: Path, model: Path, seeds: list[int]) -> Path:
    """2 kernels x seeds on the tiny random SD model of conftest (well under a second a run)."""
    spec = {"name": "t", "base": {"model": str(model), "prompt": "a photo of a beach", "canvas": {"height": 64, "width": 128},
                                  "tiling": {"overlap": 32}, "sampler": {"steps": 2}, "metrics": ["seam_score", "tv"],
                                  "output": {"preview_max_side": 64}},
            "sweep": {"tiling.kernel": ["uniform", "gaussian"]}, "seeds": seeds}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_ray_gives_the_local_executors_records(cluster, tmp_path):
    exp = load_experiment(quickstart(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers (1 CPU each): the same reductions, so the same floats
    try:
        local = execute(exp, tmp_path / "local", **QUIET)
    finally:
        torch.set_num_threads(threads)
    lines: list[str] = []
    remote = execute(exp, tmp_path / "ray", progress=False, log=lines.append, executor=RayExecutor(cpus_per_run=1))
    assert list(remote["run_id"]) == list(local["run_id"]) and len(local) == 3
    assert list(remote["status"]) == list(local["status"]) == ["ok"] * 3
    metrics = [c for c in local.columns if c.startswith("metric.")]
    assert len(metrics) >= 3
    for c in metrics:
        assert (remote[c] - local[c]).abs().max() <= 1e-6, c
    assert set(remote["prov.executor"]) == {"ray"} and set(local["prov.executor"]) == {"local"}
    # the images came back through the object store and were written by the driver
    for name in remote["preview"]:
        a, b = Image.open(tmp_path / "ray" / "images" / name), Image.open(tmp_path / "local" / "images" / name)
        assert a.size == b.size and max(abs(x - y) for x, y in zip(a.getdata(0), b.getdata(0))) <= 1
    # two workers, each loaded the toy model once for all of its runs
    assert remote["prov.worker"].nunique() == 2 and remote["prov.model_loads"].max() == 1
    assert "ray plan: 2 worker(s) x (1 CPU, 0 GPU) per run; 3 run(s), up to 2 at once" in "\n".join(lines)
    # resume works across executors: everything the local executor finished is skipped by Ray
    again: list[str] = []
    execute(exp, tmp_path / "local", progress=False, log=again.append, executor=RayExecutor())
    assert "3 already done, 0 to run" in again[0]


def test_a_killed_worker_is_retried_then_a_failure_row(cluster, tmp_path, saved_sd_dir):
    exp = load_experiment(tiny_sweep(tmp_path, saved_sd_dir, seeds=[0, 1]))
    target = exp.runs[-1].run_id()  # last, on the only worker: two worker starts in all, not four
    dispatched: list[str] = []

    def kill_target(rid, actor):
        dispatched.append(rid)
        if rid == target:
            ray.kill(actor)  # the worker dies with the run on it, every time

    lines: list[str] = []
    df = execute(exp, tmp_path / "res", progress=False, log=lines.append,
                 executor=RayExecutor(retries=1, max_concurrent=1, on_dispatch=kill_target, poll_seconds=0.2))
    assert dispatched.count(target) == 2  # the first try and one retry
    assert len(df) == 4 and df["run_id"].is_unique and len(list((tmp_path / "res" / "runs").glob("*.json"))) == 4
    row = df.set_index("run_id").loc[target]
    assert row["status"] == "failed" and row["prov.attempts"] == 2
    assert row["error"].startswith("WorkerDied: the worker running this run died 2 time(s) (--retries 1)")
    others = df[df["run_id"] != target]
    assert set(others["status"]) == {"ok"} and set(others["prov.attempts"]) == {1}
    assert any(f"run {target}: worker" in s and "retry 1/1" in s for s in lines)
    assert load_records(tmp_path / "res")[target]["provenance"]["executor"] == "ray"


def test_driver_sigkill_then_rerun_loses_and_duplicates_nothing(cluster, tmp_path, saved_sd_dir):
    exp_path = tiny_sweep(tmp_path, saved_sd_dir, seeds=[0, 1, 2])
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # one worker per driver: fewer processes to start on a 2-core machine, same code path
    proc = subprocess.Popen([sys.executable, "-m", "mdtools", "run", str(exp_path), "--out", str(out), "--executor", "ray",
                             "--address", cluster, "--cpus-per-run", "1", "--max-concurrent", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    assert 2 <= len(before) < 6, "the kill should land mid-sweep"
    for data in before.values():
        rec = json.loads(data)  # every visible record is complete, and so are its images
        Image.open(out / "images" / rec["images"]["preview"]).load()
    df = execute(load_experiment(exp_path), out, **QUIET, executor=RayExecutor(max_concurrent=1))
    assert len(df) == 6 and df["run_id"].is_unique and set(df["status"]) == {"ok"}
    after = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    assert len(after) == 6 and all(after[n] == b for n, b in before.items())  # finished runs were not run again
    assert len(list((out / "images").glob("*.png"))) == 6
    build_table(out)


def test_dry_run_prints_the_cluster_and_the_concurrency(cluster, tmp_path, saved_sd_dir):
    exp = load_experiment(tiny_sweep(tmp_path, saved_sd_dir, seeds=[0, 1]))
    lines: list[str] = []
    execute(exp, tmp_path / "res", dry_run=True, progress=False, log=lines.append,
            executor=RayExecutor(max_concurrent=1, retries=3))
    text = "\n".join(lines)
    assert "ray cluster: 1 node(s), 2 CPU, 0 GPU" in text
    assert "ray plan: 1 worker(s) x (1 CPU, 0 GPU) per run; 4 run(s), up to 1 at once, 3 retries" in text
    assert not list((tmp_path / "res" / "runs").glob("*.json"))


def test_gpus_per_run_without_gpus_fails_before_any_run(cluster, tmp_path, saved_sd_dir, capsys):
    exp_path = tiny_sweep(tmp_path, saved_sd_dir, seeds=[0])
    t0 = time.time()
    rc = cli_main(["run", str(exp_path), "--out", str(tmp_path / "res"), "--executor", "ray", "--address", cluster,
                   "--gpus-per-run", "1"])
    assert rc == 2 and time.time() - t0 < 30
    err = capsys.readouterr().err
    assert "--gpus-per-run 1: the Ray cluster has no GPU (2 CPU, 0 GPU" in err and "use --gpus-per-run 0" in err
    assert not list((tmp_path / "res" / "runs").glob("*.json"))
    with pytest.raises(ConfigError, match="device: cuda, but --gpus-per-run 0"):
        exp = load_experiment(tiny_sweep(tmp_path, saved_sd_dir, seeds=[0]))
        exp.runs = [r.model_copy(update={"device": "cuda"}) for r in exp.runs]
        execute(exp, tmp_path / "res2", **QUIET, executor=RayExecutor(gpus_per_run=0))


@pytest.mark.parametrize("kwargs, message", [
    ({"cpus_per_run": 0}, "--cpus-per-run must be a number > 0"),
    ({"retries": -1}, "--retries must be an integer >= 0"),
    ({"max_concurrent": 0}, "--max-concurrent must be an integer >= 1"),
    ({"gpus_per_run": -1}, "--gpus-per-run must be a number >= 0"),
])
def test_bad_ray_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_executor("ray", **kwargs)


def test_executor_errors_without_ray_or_with_ray_only_flags(monkeypatch, tmp_path, saved_sd_dir, capsys):
    with pytest.raises(ConfigError, match="--gpus-per-run applies to --executor ray"):
        make_executor("local", gpus_per_run=1)
    with pytest.raises(ConfigError, match=r"--executor 'dask' is not valid; choose one of \['local', 'ray'\]"):
        make_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    rc = cli_main(["run", str(tiny_sweep(tmp_path, saved_sd_dir, seeds=[0])), "--out", str(tmp_path / "r"),
                   "--executor", "ray"])
    assert rc == 2 and 'install it with: pip install "mdtools[ray]"' in capsys.readouterr().err


def test_ray_actors_share_one_canvas(cluster, saved_sd_dir):
    """`MultiDiffusionPipeline.on_ray(model, ranks=2)`: two Ray actors form a gloo group; the driver
    gets rank 0's output, equal to one process to 1e-5 of the latents' range."""
    from mdtools import MultiDiffusionPipeline

    kw = dict(height=64, width=256, window=64, overlap=32, num_inference_steps=2, generator=0, output_type="latent",
              progress=False)
    ref = MultiDiffusionPipeline.from_pretrained(str(saved_sd_dir))("a photo of a beach", **kw)
    with MultiDiffusionPipeline.on_ray(str(saved_sd_dir), ranks=2) as pool:
        out = pool("a photo of a beach", **kw)
        with pytest.raises(ConfigError, match="cannot be distributed"):
            pool("a photo of a beach", **{**kw, "method": "syncdiffusion", "method_params": {"loss": "mse"}})
    span = float(ref.latents.max() - ref.latents.min())
    assert (out.latents - ref.latents).abs().max().item() <= 1e-5 * span
    d = out.record.extra["distributed"]
    assert d["world_size"] == 2 and [r["view_evaluations"] for r in d["ranks"]] == [3 * 2, 4 * 2]
