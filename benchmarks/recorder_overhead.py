"""Recorder overhead: the same denoising with `record=True` and `record=False`.

Alternating runs (on, off, on, off, ...) on the benchmark UNet of overhead.py; the median
ratio on/off is the recorder's cost (target <= 1.01). Writes results/bench/recorder_overhead.csv.

    python benchmarks/recorder_overhead.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mdtools  # noqa: E402
from benchmarks.overhead import bench_components  # noqa: E402
from mdtools.instrument import device_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "recorder_overhead.csv"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**bench_components())
    md = mdtools.MultiDiffusionPipeline.from_pipe(pipe)
    kw = dict(height=512, width=args.width, overlap=256, num_inference_steps=args.steps, output_type="latent",
              progress=False)

    def run(record: bool) -> float:
        t0 = time.perf_counter()
        md("a photo of a beach", generator=0, record=record, **kw)
        return time.perf_counter() - t0

    run(True), run(False)  # warm-up
    on, off = [], []
    for _ in range(args.repeats):
        on.append(run(True))
        off.append(run(False))
    row = {"device": device_name(torch.device("cpu")), "threads": args.threads, "width": args.width,
           "steps": args.steps, "repeats": args.repeats, "median_on_s": statistics.median(on),
           "median_off_s": statistics.median(off), "ratio_on_over_off": statistics.median(on) / statistics.median(off),
           "median_pairwise_ratio": statistics.median(a / b for a, b in zip(on, off))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    for k, v in row.items():
        print(f"{k:24s} {v}")


if __name__ == "__main__":
    main()
