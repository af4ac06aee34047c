"""Methods side by side at one canvas: measured cost, wall time and peak memory.

Each method (at its default and at the cost-matched setting of experiments/methods.yaml)
runs in its own fresh process, so its peak memory is its own: a warm-up generation, then
`--repeats` timed generations with the same seed. Reported per method: UNet evaluations
with and without gradients, backward passes, in-loop VAE decodes, the run's cost in
UNet-forward equivalents (priced with the run's own seconds per evaluation), median
denoising and total seconds, and the peak memory of the denoising phase and of
SyncDiffusion's sync phase (CPU: VmHWM high-water mark, reset per phase; CUDA: allocator
peaks). The 1-minute load average before each method is recorded: on a shared CPU, wall
times are only comparable between rows measured at the same load.

    python benchmarks/methods_cost.py                          # toy model, 128 x 512, CPU
    python benchmarks/methods_cost.py --model stabilityai/stable-diffusion-2-1-base --height 512 --width 2048 \\
        --steps 50 --device cuda --dtype float16 --loss lpips --out results/bench/gpu_methods_cost.csv

Writes results/bench/methods_cost.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (label, method, params, overlap as a fraction of the window, steps factor): the settings of experiments/methods.yaml.
SETTINGS = [
    ("multidiffusion", "multidiffusion", {}, 0.5, 1.0),
    ("multidiffusion, overlap 0", "multidiffusion", {}, 0.0, 1.0),
    ("mixture", "mixture", {}, 0.5, 1.0),
    ("spotdiffusion", "spotdiffusion", {}, 0.0, 1.0),
    ("spotdiffusion, cost-matched (x1.75 steps)", "spotdiffusion", {}, 0.0, 1.75),
    ("syncdiffusion", "syncdiffusion", {}, 0.5, 1.0),
    ("syncdiffusion, cheapest (sync_steps 1, overlap 0)", "syncdiffusion", {"sync_steps": 1}, 0.0, 1.0),
    ("global_pass", "global_pass", {}, 0.5, 1.0),
    ("global_pass, cost-matched (strength 0.9)", "global_pass", {"strength": 0.9}, 0.5, 1.0),
    ("demofusion", "demofusion", {}, 0.5, 1.0),
    ("demofusion, cost-matched (2 stages, x0.53 steps)", "demofusion", {"stages": 2}, 0.5, 0.533),
]


def worker(args: argparse.Namespace) -> None:
    """Run one setting `args.repeats` times in this process; print one JSON line."""
    import torch

    from mdtools import MultiDiffusionPipeline

    torch.set_num_threads(args.threads)
    label, name, params, ov_frac, steps_f = SETTINGS[args.index]
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    md = MultiDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, device=args.device)
    if args.scheduler:
        md.set_scheduler(args.scheduler)
    window = md.native_window
    params = dict(params)
    if name == "syncdiffusion":
        params["loss"] = args.loss
    kw = dict(height=args.height, width=args.width, overlap=int(window * ov_frac) // 8 * 8,
              num_inference_steps=max(1, round(args.steps * steps_f)), guidance_scale=args.guidance,
              view_batch_size=args.view_batch_size, output_type="np", progress=False, method=name, method_params=params)
    md("warm-up", generator=0, **{**kw, "num_inference_steps": 2, "height": min(args.height, window),
                                   "width": min(args.width, window), "overlap": 0})
    totals, denoise, outs = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = md(args.prompt, generator=0, **kw)
        totals.append(time.perf_counter() - t0)
        denoise.append(out.record.phases["denoise"].seconds)
        outs.append(out)
    rec = outs[-1].record
    cost = rec.extra["cost"]

    def peak(phase: str) -> float | None:
        p = rec.phases.get(phase)
        if p is None:
            return None
        v = p.peak_allocated if p.peak_allocated is not None else p.peak_rss
        return None if v is None else v / 2**20

    row = {
        "setting": label, "method": name, "params": json.dumps({k: v for k, v in params.items()}),
        "height": args.height, "width": args.width, "window": window, "overlap": kw["overlap"],
        "steps": kw["num_inference_steps"], "views": outs[-1].plan.n_views, "stages": rec.extra["stages"],
        "model_evaluations": rec.counts["model_evaluations"], "unet_grad_evaluations": cost["unet_grad_evaluations"],
        "backward_calls": cost["backward_calls"], "vae_decode_calls": cost["vae_decode_calls"],
        "unet_equivalents": round(cost["unet_equivalents"], 1),
        "median_denoise_s": round(statistics.median(denoise), 3), "median_total_s": round(statistics.median(totals), 3),
        "peak_denoise_mb": peak("denoise"), "peak_sync_mb": peak("sync"),
        "peak_kind": "cuda allocated" if rec.phases["denoise"].peak_allocated is not None else "cpu rss (VmHWM)",
        "repeats": args.repeats, "threads": args.threads, "device_name": rec.device_name, "dtype": args.dtype,
    }
    print("ROW " + json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--prompt", default="brick wall")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--view-batch-size", type=int, default=16)
    ap.add_argument("--loss", default="lpips_untrained", help="SyncDiffusion's loss (lpips needs cached VGG16 weights)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", nargs="*", default=None, help="method names to run (default: all settings)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "methods_cost.csv"))
    ap.add_argument("--index", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.index is not None:
        worker(args)
        return
    rows = []
    for i, (label, name, *_rest) in enumerate(SETTINGS):
        if args.only and name not in args.only:
            continue
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--index", str(i)] + [a for a in sys.argv[1:]]
        print(f"[{i + 1}/{len(SETTINGS)}] {label} (load {load:.2f}) ...", flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("ROW ")), None)
        if res.returncode != 0 or line is None:
            err = (res.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"    failed: {err}", flush=True)
            rows.append({"setting": label, "method": name, "status": "failed", "error": err, "load_avg_1min": load})
            continue
        row = json.loads(line[4:]) | {"status": "ok", "load_avg_1min": round(load, 2)}
        rows.append(row)
        print(f"    {row['model_evaluations']} evaluations, {row['unet_equivalents']} UNet-forward equivalents, "
              f"{row['median_denoise_s']} s denoising, peak {row['peak_denoise_mb']:.0f} MB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
