"""Measure a toy model: VAE PSNR, texture-classifier accuracy, KID, speed; draw the samples grid.

`python -m mdtools.toy.report --model DIR` prints the figures as JSON and writes
DIR/samples.png and DIR/quality.json. The same figures for an untrained (random-init) model
of identical architecture are measured alongside, as the reference the card compares to.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data import PROMPTS, WINDOW, holdout_crops, training_crops
from .quality import NearestCentroid, kid, psnr


def generate(
    pipe: Any,
    prompt: str,
    n: int,
    *,
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    batch: int = 8,
) -> np.ndarray:
    """n windows (n, 128, 128, 3) in [0, 1] for a prompt; image i uses generator seed + i."""
    out = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(k)]
        res = pipe(
            prompt=[prompt] * k, height=WINDOW, width=WINDOW, num_inference_steps=steps,
            guidance_scale=guidance, generator=gens, output_type="np",
        )
        out.append(np.asarray(res.images, dtype=np.float32))
    return np.concatenate(out)


def generate_all(pipe: Any, n_per_class: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """n_per_class windows for every toy prompt, with labels."""
    imgs = [generate(pipe, p, n_per_class, **kw) for p in PROMPTS]
    labels = np.repeat(np.arange(len(PROMPTS)), n_per_class)
    return np.concatenate(imgs), labels


@torch.no_grad()
def vae_psnr(vae: Any, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """PSNR (dB) per image of VAE reconstructions through the posterior mode."""
    recs = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        recs.append(((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
    return psnr(images, np.concatenate(recs))


def time_window(pipe: Any, *, steps: int = 25, guidance: float = 7.5, threads: int = 2, repeats: int = 3) -> dict[str, float]:
    """Median wall and CPU seconds for one 128 px window with CFG, after one warm-up call.

    CPU seconds are reported too because wall time on a shared machine mostly measures the
    other jobs; the 1-minute load average at the end tells how busy the machine was.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generate(pipe, PROMPTS[0], 1, steps=steps, guidance=guidance)
        wall, cpu = [], []
        for r in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            generate(pipe, PROMPTS[0], 1, steps=steps, guidance=guidance, seed=r)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    finally:
        torch.set_num_threads(old)
    return {"threads": threads, "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "load_avg_1min": os.getloadavg()[0]}


def untrained_pipeline(model_dir: Path, seed: int = 0) -> Any:
    """A random-init pipeline with the configs (and tokenizer/scheduler) of model_dir."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from . import load_toy_pipeline

    trained = load_toy_pipeline(model_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(trained.vae.config)
    unet = UNet2DConditionModel.from_config(trained.unet.config)
    te = CLIPTextModel(trained.text_encoder.config)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=te.eval(), tokenizer=trained.tokenizer, unet=unet.eval(),
        scheduler=trained.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def samples_grid(real: np.ndarray, fake: np.ndarray, n_per_class: int, cols: int = 4, tile: int = 96, *,
                 prompts: "Sequence[str]" = PROMPTS, label_w: int = 110) -> "Any":
    """PIL image: one row per prompt, first column a held-out real crop, then generated ones."""
    from PIL import Image, ImageDraw

    k = len(prompts)
    grid = Image.new("RGB", (label_w + (cols + 1) * (tile + 2), k * (tile + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for c, prompt in enumerate(prompts):
        y = c * (tile + 2)
        draw.text((4, y + tile // 2 - 6), prompt, fill="black")
        row = [real[c]] + [fake[c * n_per_class + j] for j in range(cols)]
        for j, im in enumerate(row):
            pil = Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)).resize((tile, tile), Image.LANCZOS)
            grid.paste(pil, (label_w + j * (tile + 2), y))
    return grid


def evaluate_toy(
    model_dir: Path, *, n_per_class: int = 16, steps: int = 25, guidance: float = 7.5, seed: int = 0,
    timing_threads: tuple[int, ...] = (2, 1),
) -> dict[str, Any]:
    """All quality figures of the model card for model_dir, plus the untrained reference.

    timing_threads: thread counts of the speed figure (2 threads on a busy 2-core machine mostly
    measures OpenMP contention and takes minutes; pass (1,) there).
    """
    from . import load_toy_pipeline

    torch.manual_seed(seed)
    real, real_lab = holdout_crops(max(n_per_class, 16))
    ref, ref_lab = training_crops(max(n_per_class, 16))
    clf = NearestCentroid.fit(real, real_lab)
    pipe = load_toy_pipeline(model_dir)
    res: dict[str, Any] = {"n_per_class": n_per_class, "steps": steps, "guidance_scale": guidance, "seed": seed}

    p = vae_psnr(pipe.vae, real)
    res["vae_psnr_db"] = float(p.mean())
    res["vae_psnr_db_per_prompt"] = {pr: float(p[real_lab == c].mean()) for c, pr in enumerate(PROMPTS)}

    fake, lab = generate_all(pipe, n_per_class, steps=steps, guidance=guidance, seed=seed)
    pred = clf.predict(fake)
    res["classifier_accuracy"] = float((pred == lab).mean())
    res["classifier_accuracy_per_prompt"] = {pr: float((pred[lab == c] == c).mean()) for c, pr in enumerate(PROMPTS)}
    res["classifier_accuracy_real_training_crops"] = clf.accuracy(ref, ref_lab)
    res["kid"] = kid(real, fake, seed=seed)
    res["kid_real_training_crops"] = kid(real, ref, seed=seed)
    res["time_per_window_25_steps_cfg"] = [time_window(pipe, steps=25, guidance=guidance, threads=t) for t in timing_threads]

    # References: everything random-init, and the trained VAE under a random-init UNet/text encoder.
    raw = untrained_pipeline(model_dir, seed=seed)
    f0, l0 = generate_all(raw, n_per_class, steps=steps, guidance=guidance, seed=seed)
    res["untrained"] = {"classifier_accuracy": clf.accuracy(f0, l0), "kid": kid(real, f0, seed=seed),
                        "vae_psnr_db": float(vae_psnr(raw.vae, real).mean())}
    raw.vae = pipe.vae
    f1, l1 = generate_all(raw, n_per_class, steps=steps, guidance=guidance, seed=seed)
    res["untrained_unet_trained_vae"] = {"classifier_accuracy": clf.accuracy(f1, l1), "kid": kid(real, f1, seed=seed)}

    grid_real = np.stack([real[real_lab == c][0] for c in range(len(PROMPTS))])
    samples_grid(grid_real, fake, n_per_class, cols=min(4, n_per_class)).save(Path(model_dir) / "samples.png", optimize=True)
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m mdtools.toy.report [--model DIR] [--n-per-class N]."""
    from . import TOY_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=TOY_MODEL_DIR)
    ap.add_argument("--n-per-class", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-threads", type=int, nargs="+", default=[2, 1], help="thread counts of the speed figure")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = evaluate_toy(args.model, n_per_class=args.n_per_class, steps=args.steps, guidance=args.guidance,
                       timing_threads=tuple(args.timing_threads))
    text = json.dumps(res, indent=1)
    (args.model / "quality.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
