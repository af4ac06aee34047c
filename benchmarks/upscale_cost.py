"""Time and peak memory of mdtools' tiled upscale against Ultimate SD Upscale at the same output size (CPU, toy model).

    .venv/bin/python benchmarks/upscale_cost.py            # writes results/bench/upscale_cost.csv

One source (a scene from mdtools.toy.scenes) per output size, upscaled 4x by each method with the
same strength, steps, guidance and seed on the embedded scenes model "toy-scenes". Runs go one at a
time in this process, after one unrecorded warm-up run per method (first calls allocate); each
setting is repeated `--repeats` times and every repeat is a row. Per row: the wall time of each
phase of the record (resize, encode, invert, denoise, decode, color_fix), the process's peak
resident memory over the call (Linux VmHWM, reset at the call's start: the models' weights are
included), the model evaluations, VAE encodes / decodes, and the 1-minute load average before and
after (the machine is shared: a load above the core count makes the times slower, not the counts).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: label -> upscale() keywords; the shared settings below are added
METHODS: dict[str, dict[str, Any]] = {
    "multidiffusion": {"method": "multidiffusion"},
    "mixture": {"method": "mixture"},
    "usdu": {"method": "usdu"},
}
SETTINGS = {"strength": 0.4, "steps": 20, "guidance_scale": 5.0, "seed": 0, "overlap": 32}
SIZES = ((128, 256), (256, 512))  # outputs (height, width); sources are a quarter of each side
FIELDS = ["method", "out_height", "out_width", "repeat", "status", "error", "time.total", "time.resize", "time.encode",
          "time.denoise", "time.decode", "peak_mb", "model_evaluations", "vae_encodes", "vae_decodes", "cpu_threads",
          "load_before", "load_after"]


def load1() -> float:
    return os.getloadavg()[0]


def source(size: tuple[int, int]) -> Any:
    from PIL import Image

    from mdtools.toy.scenes import make_scene, sample_params

    img, labels = make_scene(sample_params(np.random.default_rng(7)), *size)
    pil = Image.fromarray(np.round(img * 255).astype(np.uint8))
    return pil.resize((size[1] // 4, size[0] // 4), Image.BICUBIC), labels.prompt


def one(md: Any, label: str, size: tuple[int, int], repeat: int) -> dict[str, Any]:
    import torch

    from mdtools.upscale import upscale

    low, prompt = source(size)
    row: dict[str, Any] = {"method": label, "out_height": size[0], "out_width": size[1], "repeat": repeat,
                           "cpu_threads": torch.get_num_threads(), "load_before": f"{load1():.2f}"}
    try:
        res = upscale(md, low, scale=4, prompt=prompt, progress=False, **SETTINGS, **METHODS[label])
        phases = res.record["phases"]
        for k in ("total", "resize", "encode", "denoise", "decode"):
            row[f"time.{k}"] = round(phases[k]["seconds"], 4) if k in phases else ""
        peaks = [p.get("peak_allocated") or p.get("peak_rss") for p in phases.values()]
        row["peak_mb"] = round(max(p for p in peaks if p) / 2**20, 1)
        counts = res.record["counts"]
        for k in ("model_evaluations", "vae_encodes", "vae_decodes"):
            row[k] = counts.get(k, counts.get("unet_evaluations") if k == "model_evaluations" else "")
        row["status"], row["error"] = "ok", ""
    except Exception as exc:  # a failure is a row
        row["status"], row["error"] = "error", f"{type(exc).__name__}: {exc}"
    row["load_after"] = f"{load1():.2f}"
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench/upscale_cost.csv")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded per row)")
    ap.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], help="HxW outputs, e.g. 256x512")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    import torch

    torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    from mdtools import MultiDiffusionPipeline

    md = MultiDiffusionPipeline.from_pretrained("toy-scenes")
    for label in args.methods:  # warm-up, not recorded
        one(md, label, sizes[0], -1)
    rows = []
    jobs = [(s, r, m) for s in sizes for r in range(args.repeats) for m in args.methods]
    for size, r, label in tqdm(jobs, desc="upscale cost", unit="run"):
        rows.append(one(md, label, size, r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print({k: r.get(k) for k in ("method", "out_height", "out_width", "repeat", "status", "time.total", "peak_mb",
                                     "model_evaluations", "load_before")})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
