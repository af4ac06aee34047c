"""Engine overhead: mdtools denoising vs the bare UNet forwards it needs vs diffusers' panorama.

Same tiny-but-not-trivial SD model, canvas, views (window 64 latent, stride 8 — diffusers'
plan), DDIM steps and CFG for all three:
  (a) mdtools `MultiDiffusionPipeline(...)`, output_type="latent", recorder on;
  (b) only the batched UNet forwards for exactly those views and steps (the floor);
  (c) diffusers' StableDiffusionPanoramaPipeline, output_type="latent".
Runs alternate a, b, c so that machine noise hits all three alike; medians are reported.
Writes results/bench/overhead.csv.

    python benchmarks/overhead.py [--repeats 7] [--steps 5] [--width 1024]
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
from tests.conftest import tiny_text_encoder, tiny_tokenizer, tiny_vae  # noqa: E402


def bench_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).eval()


def bench_components() -> dict:
    """Components of the benchmark SD pipeline (tiny text encoder and VAE, benchmark UNet, DDIM)."""
    from diffusers import DDIMScheduler

    tok = tiny_tokenizer()
    return dict(
        vae=tiny_vae(4), text_encoder=tiny_text_encoder(len(tok)), tokenizer=tok, unet=bench_unet(),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--view-batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "overhead.csv"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPanoramaPipeline

    pano = StableDiffusionPanoramaPipeline(**bench_components())
    sched = pano.scheduler
    pano.set_progress_bar_config(disable=True)
    md = mdtools.MultiDiffusionPipeline.from_pipe(pano)
    prompt, H, W, steps, vb = "a photo of a beach", args.height, args.width, args.steps, args.view_batch_size
    common = dict(height=H, width=W, num_inference_steps=steps, guidance_scale=7.5, output_type="latent")

    def run_a():
        out = md(prompt, window=512, overlap=448, kernel="uniform", view_batch_size=vb,
                 generator=torch.Generator().manual_seed(0), progress=False, **common)
        return out.latents, out.plan

    def run_c():
        return pano(prompt, view_batch_size=vb, generator=torch.Generator().manual_seed(0), **common).images

    plan = mdtools.plan_views(H, W, window=512, overlap=448)
    pos, neg = pano.encode_prompt(prompt, "cpu", 1, True, None)
    x = torch.randn(1, 4, plan.latent_height, plan.latent_width)
    h, w = plan.view_size
    batches = [plan.views[i:i + vb] for i in range(0, plan.n_views, vb)]
    crops = [torch.cat([x[:, :, v.top:v.top + h, v.left:v.left + w] for v in b]) for b in batches]
    inputs = [(torch.cat([c, c]), torch.cat([neg.repeat(len(c), 1, 1), pos.repeat(len(c), 1, 1)])) for c in crops]
    timesteps = (sched.set_timesteps(steps), sched.timesteps)[1]

    @torch.no_grad()
    def run_b():
        for t in timesteps:
            for xin, emb in inputs:
                pano.unet(xin, t, encoder_hidden_states=emb, return_dict=False)

    # warm-up (allocator, lazy init), then alternate
    lat_a, plan_a = run_a()
    lat_c = run_c()
    run_b()
    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for _ in range(args.repeats):
        for name, fn in (("a", run_a), ("b", run_b), ("c", run_c)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = (lat_a - lat_c).abs().max().item()
    row = {
        "device": mdtools.instrument.device_name(torch.device("cpu")), "threads": args.threads,
        "height": H, "width": W, "steps": steps, "views": plan_a.n_views, "view_batch_size": vb,
        "repeats": args.repeats, "mdtools_s": med["a"], "bare_unet_s": med["b"], "diffusers_panorama_s": med["c"],
        "ratio_a_over_b": med["a"] / med["b"], "ratio_a_over_c": med["a"] / med["c"],
        "max_abs_latent_diff_vs_diffusers": diff, "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(row))
        wr.writeheader()
        wr.writerow(row)
    for k, v in row.items():
        print(f"{k:36s} {v}")


if __name__ == "__main__":
    main()
