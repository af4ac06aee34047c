"""Cost of live previews: seconds per preview against seconds per denoising step, on the embedded toy model.

The same canvas with `preview=callable, preview_every=1` and without previews, runs
interleaved, medians reported. The latent-to-RGB fit (one small VAE decode per VAE, cached)
is timed apart from the per-preview cost. Writes results/bench/preview_overhead.csv.

    .venv/bin/python benchmarks/preview_overhead.py [--repeats 5] [--width 1088] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.single_row import load_now, write_row  # noqa: E402
from mdtools import MultiDiffusionPipeline  # noqa: E402
from mdtools.preview import latent_rgb_factors  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=1088)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "preview_overhead.csv"))
    a = ap.parse_args()
    md = MultiDiffusionPipeline.from_pretrained("toy")
    t0 = time.perf_counter()
    latent_rgb_factors(md.vae, md.unet.config.in_channels, md.vae_scale_factor)
    fit_s = time.perf_counter() - t0
    kw = dict(height=a.height, width=a.width, overlap=64, num_inference_steps=a.steps, generator=0,
              output_type="latent", progress=False)
    load_before = load_now()
    plain, with_preview, per_preview = [], [], []
    for _ in range(a.repeats):
        r = md("a brick wall", **kw).record
        plain.append(r.phases["denoise"].seconds / a.steps)
        r = md("a brick wall", preview=lambda img, info: None, preview_every=1, **kw).record
        with_preview.append(r.phases["denoise"].seconds / a.steps)
        p = r.extra["preview"]
        per_preview.append(p["seconds"] / p["previews"])
    step = statistics.median(plain)
    row = {"model": "toy", "height": a.height, "width": a.width, "steps": a.steps, "repeats": a.repeats,
           "threads": torch.get_num_threads(), "step_s": round(step, 4),
           "step_with_preview_s": round(statistics.median(with_preview), 4),
           "preview_s": round(statistics.median(per_preview), 5),
           "preview_share_of_step": round(statistics.median(per_preview) / step, 4), "fit_once_s": round(fit_s, 3),
           "load_before": load_before, "torch": torch.__version__}
    write_row(a.out, row)


if __name__ == "__main__":
    main()
