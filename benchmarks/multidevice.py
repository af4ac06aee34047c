"""One canvas on 1 and on 2 ranks (torch.distributed; gloo on CPU, NCCL on GPUs): speed-up of the denoising phase.

The same canvas, model, steps and seed on one process and on a group of 2 (one torch thread
per rank on CPU), runs interleaved (1, 2, 1, 2, ...), the median of `--repeats` taken. Each
run is fresh processes; the timed phase is the record's `denoise` (model load, prompt
encoding and decode excluded). Reported: seconds per step, the speed-up, and the share of
the 2-rank denoising spent in all-reduce (the slower rank's). Writes results/bench/multidevice.csv.
Time one thing at a time: a second job on the machine makes these numbers meaningless.

    .venv/bin/python benchmarks/multidevice.py [--repeats 3] [--width 1088] [--steps 10]
    .venv/bin/python benchmarks/multidevice.py --devices cuda:0 cuda:1 --model arch:sdxl --height 1024 --width 8192
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.single_row import load_now, write_row  # noqa: E402
from mdtools.distributed import free_port  # noqa: E402


def _run(rank: int, world: int, port: int, a: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    from mdtools import MultiDiffusionPipeline

    torch.set_num_threads(a.threads)
    device = a.devices[rank] if a.devices else "cpu"
    md = MultiDiffusionPipeline.from_pretrained(a.model, device=device)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        md.enable_distributed()
    res = md(a.prompt, height=a.height, width=a.width, overlap=a.overlap, num_inference_steps=a.steps,
             view_batch_size=a.view_batch_size, generator=0, output_type="latent", progress=False)
    if rank == 0:
        d = res.record.extra.get("distributed", {})
        comm = max((r["comm_seconds"] for r in d.get("ranks", [])), default=0.0)
        Path(out).write_text(json.dumps({"denoise_s": res.record.phases["denoise"].seconds, "comm_s": comm,
                                         "views": res.plan.n_views, "ranks": d.get("ranks")}))
    if world > 1:
        dist.destroy_process_group()


def once(world: int, a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "r.json")
        mp.spawn(_run, args=(world, free_port(), a, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--prompt", default="a brick wall")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=1088, help="pixels (toy: 16 views of 128 px at overlap 64)")
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--view-batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--devices", nargs="*", default=None, help="one per rank, e.g. cuda:0 cuda:1 (default: the CPU)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "multidevice.csv"))
    a = ap.parse_args()
    load_before = load_now()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(a.repeats):
        for world in (1, 2):
            r = once(world, a)
            runs[world].append(r)
            print(f"[rep {rep + 1}] {world} rank(s): denoise {r['denoise_s']:.2f} s, all-reduce {r['comm_s']:.2f} s",
                  flush=True)
    t1 = statistics.median(r["denoise_s"] for r in runs[1])
    t2 = statistics.median(r["denoise_s"] for r in runs[2])
    comm = statistics.median(r["comm_s"] for r in runs[2])
    row = {"device": (a.devices or ["cpu"])[0], "threads_per_rank": a.threads, "model": a.model,
           "height": a.height, "width": a.width, "views": runs[1][0]["views"], "steps": a.steps,
           "repeats": a.repeats, "denoise_1rank_s": round(t1, 3), "denoise_2ranks_s": round(t2, 3),
           "step_1rank_s": round(t1 / a.steps, 3), "step_2ranks_s": round(t2 / a.steps, 3),
           "speedup": round(t1 / t2, 3), "comm_share_2ranks": round(comm / t2, 4),
           "load_before": load_before, "torch": torch.__version__}
    write_row(a.out, row)


if __name__ == "__main__":
    main()
