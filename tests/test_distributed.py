"""One canvas on two ranks (torch.distributed, gloo on 127.0.0.1): the same latents as one process.

Two processes start their own gloo group; each evaluates its block of every view set and the
Eq. 5 numerators are all-reduced. The final latents equal the one-process run to 1e-5 of
their range for multidiffusion on the embedded toy model (gaussian kernel, 128 x 1024 px),
and for mixture, spotdiffusion and global_pass on tiny random SD components. A method that
cannot be spread, and a group larger than the plan, are refused before any model call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mdtools import MultiDiffusionPipeline
from mdtools.distributed import free_port
from mdtools.errors import ConfigError

PROMPT = "a photo of a beach"

CASES = {
    "toy_multidiffusion": ("toy", dict(height=128, width=1024, overlap=64, kernel="gaussian", num_inference_steps=2,
                                       guidance_scale=7.5, view_batch_size=8)),
    "mixture": ("tiny", dict(height=64, width=256, window=64, overlap=32, method="mixture", num_inference_steps=3)),
    "spotdiffusion": ("tiny", dict(height=64, width=256, window=64, overlap=0, method="spotdiffusion",
                                   num_inference_steps=3)),
    "global_pass": ("tiny", dict(height=64, width=256, window=64, overlap=32, method="global_pass",
                                 method_params={"factor": 2, "strength": 0.75}, num_inference_steps=3)),
    # the exact tiled decode across the ranks too (mdtools/vae/ranks.py): images compared
    "tiled_decode": ("tiny", dict(height=64, width=256, window=64, overlap=32, num_inference_steps=2, output_type="pt",
                                  vae_tiling={"tiling": True, "tile": 64})),
}


def build(kind: str) -> MultiDiffusionPipeline:
    if kind == "toy":
        return MultiDiffusionPipeline.from_pretrained("toy")
    from tests.conftest import make_sd_pipe

    return MultiDiffusionPipeline.from_pipe(make_sd_pipe())


def generate(md: MultiDiffusionPipeline, name: str):
    kind, kw = CASES[name]
    prompt = "a brick wall" if kind == "toy" else PROMPT
    return md(prompt, generator=0, progress=False, **{"output_type": "latent", **kw})


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    models: dict[str, MultiDiffusionPipeline] = {}
    try:
        for name, (kind, _) in CASES.items():
            md = models.get(kind) or models.setdefault(kind, build(kind).enable_distributed())
            res = generate(md, name)
            if rank == 0:
                torch.save(res.latents if res.images is None else res.images, Path(out) / f"{name}.pt")
                if name == "mixture":
                    rec = {"distributed": res.record.extra["distributed"], "counts": dict(res.record.counts)}
                    (Path(out) / "record.json").write_text(json.dumps(rec))
        md = models["tiny"]
        for bad in ({"method": "syncdiffusion", "method_params": {"loss": "mse"}}, {"width": 64}):
            try:
                md(PROMPT, height=64, width=bad.get("width", 128), window=64, overlap=32, num_inference_steps=1,
                   progress=False, **{k: v for k, v in bad.items() if k != "width"})
            except ConfigError as e:
                if rank == 0:
                    (Path(out) / f"refused_{len(list(Path(out).glob('refused_*')))}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(two_ranks, name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = generate(build(CASES[name][0]), name)
        ref = res.latents if res.images is None else res.images
    finally:
        torch.set_num_threads(threads)
    got = torch.load(two_ranks / f"{name}.pt", weights_only=True)
    span = float(ref.max() - ref.min())
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5 * span


def test_record_names_the_ranks_their_views_and_the_communication(two_ranks):
    rec = json.loads((two_ranks / "record.json").read_text())
    d = rec["distributed"]
    assert d["world_size"] == 2 and [r["rank"] for r in d["ranks"]] == [0, 1]
    # mixture 64 x 256, window 64, overlap 32: 7 views in blocks of 3 and 4, three steps
    assert [r["view_evaluations"] for r in d["ranks"]] == [3 * 3, 4 * 3]
    # one all-reduce per fused call (3 steps), one for the work counts at the end
    assert all(r["comm_calls"] == 3 + 1 and r["comm_seconds"] >= 0 for r in d["ranks"])
    assert rec["counts"]["model_evaluations"] == 7 * 3 * 2  # the canvas's work, summed over ranks (CFG: 2 each)


def test_refusals_name_the_method_and_the_rank_count(two_ranks):
    msgs = sorted(p.read_text() for p in two_ranks.glob("refused_*.txt"))
    assert any("method 'syncdiffusion' cannot be distributed" in m for m in msgs)
    assert any("2 ranks but the plan has 1 views" in m for m in msgs)


def test_from_pretrained_on_two_devices_equals_one_process(saved_sd_dir):
    """`from_pretrained(..., devices=[...])`: one spawned process per device, rank 0's output returned."""
    kw = dict(height=64, width=256, window=64, overlap=32, num_inference_steps=2, generator=0, output_type="latent",
              progress=False)
    ref = MultiDiffusionPipeline.from_pretrained(str(saved_sd_dir))(PROMPT, **kw)
    with MultiDiffusionPipeline.from_pretrained(str(saved_sd_dir), devices=["cpu", "cpu"]) as pool:
        out = pool(PROMPT, **kw)
        with pytest.raises(ConfigError, match="cannot be distributed"):
            pool(PROMPT, **{**kw, "method": "syncdiffusion", "method_params": {"loss": "mse"}})
    span = float(ref.latents.max() - ref.latents.min())
    assert (out.latents - ref.latents).abs().max().item() <= 1e-5 * span
    assert out.record.extra["distributed"]["world_size"] == 2
    with pytest.raises(ConfigError, match="at least two devices"):
        MultiDiffusionPipeline.from_pretrained(str(saved_sd_dir), devices=["cpu"])


def test_torchrun_generate_distributed_writes_rank0_image(tmp_path):
    """`torchrun --nproc-per-node 2 -m mdtools generate ... --distributed`: rank 0 writes the image and
    its record; the image equals the one-process CLI's to one 8-bit level."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    args = ["generate", "--model", "toy", "--prompt", "a brick wall", "--height", "128", "--width", "576", "--steps", "3",
            "--state-every", "0"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    subprocess.run([sys.executable, "-m", "mdtools", *args, "--out", str(one)], check=True, env=env, capture_output=True,
                   timeout=300)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                          "mdtools", *args, "--out", str(two), "--distributed"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rec = json.loads(two.with_suffix(".json").read_text())
    assert rec["extra"]["distributed"]["world_size"] == 2
    assert sum(r["view_evaluations"] for r in rec["extra"]["distributed"]["ranks"]) == 8 * 3  # 8 views, 3 steps
    a, b = np.asarray(Image.open(one)).astype(int), np.asarray(Image.open(two)).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
