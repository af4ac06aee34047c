"""Prompt fidelity of the scenes model, measured with the scene detectors (`mdtools.metrics.scene_analysis`).

For every one of the 12 scene prompts, n windows are generated and run through
`mdtools.metrics.scene_analysis.analyse_scene` (no learned model); a window follows its prompt when the
detected sky / ground / terrain equal the prompt's (`parse_prompt`) and a disc is found.
Shares come with 95 % Wilson intervals. The same detectors run on held-out rendered scenes
(the detectors' own accuracy), on their VAE reconstructions (the best any UNet on this VAE
can do) and on an untrained UNet + text encoder with the trained VAE (the floor).

`python -m mdtools.toy.scene_report --model DIR [--n-per-prompt 16] [--guidance G] [--csv PATH]`
writes DIR/quality.json and DIR/samples.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..metrics.scene_analysis import analyse_scene
from ..stats import wilson_interval
from .quality import psnr
from .report import samples_grid
from .scene_data import heldout_scenes
from .scenes import SCENE_PROMPTS, parse_prompt
from .texture_stats import REPORT_Z95

#: The checks of a window against its prompt, in report order.
CHECKS: tuple[str, ...] = ("sky", "ground", "terrain", "disc_present", "one_disc", "all")


def check_window(image: np.ndarray, prompt: str) -> dict[str, bool]:
    """Which of CHECKS a generated window passes for its prompt (detectors of mdtools.metrics.scene_analysis)."""
    want = parse_prompt(prompt)
    a = analyse_scene(image)
    out = {
        "sky": a.sky == want["sky"], "ground": a.ground == want["ground"], "terrain": a.terrain == want["terrain"],
        "disc_present": len(a.discs) >= 1, "one_disc": len(a.discs) == 1,
    }
    out["all"] = out["sky"] and out["ground"] and out["terrain"] and out["one_disc"]
    return out


def fidelity(images: np.ndarray, prompts: Sequence[str]) -> dict[str, Any]:
    """Share of windows passing each check, overall (with 95 % Wilson interval) and per prompt."""
    rows = [check_window(im, p) for im, p in zip(images, prompts)]
    prompts = list(prompts)
    res: dict[str, Any] = {"n": len(rows)}
    for c in CHECKS:
        k = sum(r[c] for r in rows)
        res[c] = {"share": k / len(rows), "k": k, "ci95": list(wilson_interval(k, len(rows), REPORT_Z95))}
    res["per_prompt"] = {}
    for p in dict.fromkeys(prompts):
        sel = [r for r, q in zip(rows, prompts) if q == p]
        res["per_prompt"][p] = {c: sum(r[c] for r in sel) / len(sel) for c in CHECKS} | {"n": len(sel)}
    return res


def generate_scenes(pipe: Any, n_per_prompt: int, *, steps: int = 25, guidance: float = 5.0, seed: int = 0,
                    prompts: Sequence[str] = SCENE_PROMPTS) -> tuple[np.ndarray, list[str]]:
    """n_per_prompt windows per prompt (window i of a prompt uses generator seed + i)."""
    from .report import generate

    imgs = [generate(pipe, p, n_per_prompt, steps=steps, guidance=guidance, seed=seed) for p in prompts]
    return np.concatenate(imgs), [p for p in prompts for _ in range(n_per_prompt)]


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """VAE reconstructions (posterior mode) of (N, H, W, 3) images in [0, 1]."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).permute(0, 3, 1, 2) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        out.append(((rec + 1) / 2).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def evaluate_scenes(model_dir: Path, *, n_per_prompt: int = 16, steps: int = 25, guidance: float = 5.0, seed: int = 0,
                    n_real_per_prompt: int = 16, references: bool = True, grid: bool = True) -> dict[str, Any]:
    """All figures of the scenes model card for model_dir (see the module docstring)."""
    from . import load_toy_pipeline
    from .report import untrained_pipeline

    pipe = load_toy_pipeline(model_dir)
    res: dict[str, Any] = {"model": str(model_dir), "n_per_prompt": n_per_prompt, "steps": steps, "guidance_scale": guidance,
                           "seed": seed}
    real, real_lab = heldout_scenes(n_real_per_prompt)
    real_prompts = [SCENE_PROMPTS[c] for c in real_lab]
    rec = reconstruct(pipe.vae, real)
    p = psnr(real, rec)
    res["vae_psnr_db"] = float(p.mean())
    res["vae_psnr_db_p5_p50_p95"] = [float(v) for v in np.percentile(p, [5, 50, 95])]
    res["vae_psnr_n"] = len(p)
    t = time.perf_counter()
    fake, prompts = generate_scenes(pipe, n_per_prompt, steps=steps, guidance=guidance, seed=seed)
    res["generation_s"] = round(time.perf_counter() - t, 1)
    res["generated"] = fidelity(fake, prompts)
    if references:
        res["real_heldout"] = fidelity(real, real_prompts)
        res["vae_reconstruction"] = fidelity(rec, real_prompts)
        raw = untrained_pipeline(model_dir, seed=seed)
        raw.vae = pipe.vae
        f0, p0 = generate_scenes(raw, min(n_per_prompt, 4), steps=steps, guidance=guidance, seed=seed)
        res["untrained_unet_trained_vae"] = fidelity(f0, p0)
    if grid:
        first = np.stack([real[real_lab == c][0] for c in range(len(SCENE_PROMPTS))])
        sheet = samples_grid(first, fake, n_per_prompt, cols=min(4, n_per_prompt), prompts=SCENE_PROMPTS, label_w=230)
        sheet.save(Path(model_dir) / "samples.png", optimize=True)
    return res


def csv_rows(res: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """Flat rows for results/bench/toy_scenes_fidelity.csv: one per image set x check (prompt 'all') and per prompt."""
    rows = []
    for sname in ("generated", "real_heldout", "vae_reconstruction", "untrained_unet_trained_vae"):
        if sname not in res:
            continue
        fid = res[sname]
        base = {"model": label, "images": sname, "steps": res["steps"], "guidance": res["guidance_scale"], "seed": res["seed"]}
        for c in CHECKS:
            lo, hi = fid[c]["ci95"]
            rows.append({**base, "prompt": "all", "check": c, "n": fid["n"], "share": round(fid[c]["share"], 4),
                         "ci95_lo": round(lo, 4), "ci95_hi": round(hi, 4)})
        for p, d in fid["per_prompt"].items():
            for c in CHECKS:
                k = round(d[c] * d["n"])
                lo, hi = wilson_interval(k, d["n"], REPORT_Z95)
                rows.append({**base, "prompt": p, "check": c, "n": d["n"], "share": round(d[c], 4),
                             "ci95_lo": round(lo, 4), "ci95_hi": round(hi, 4)})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows to a CSV, keeping rows of other (model, guidance) pairs already there."""
    path = Path(path)
    keep: list[dict[str, Any]] = []
    keys = {(r["model"], str(r["guidance"])) for r in rows}
    if path.exists():
        with path.open(newline="") as fh:
            keep = [r for r in csv.DictReader(fh) if (r["model"], str(r["guidance"])) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep + rows)


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m mdtools.toy.scene_report --model DIR [--n-per-prompt N] [--guidance G] [--csv PATH]."""
    from . import TOY_SCENES_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=TOY_SCENES_MODEL_DIR)
    ap.add_argument("--label", default=None, help="model name in the CSV (default: the folder name)")
    ap.add_argument("--n-per-prompt", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-references", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write DIR/quality.json and DIR/samples.png")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = evaluate_scenes(args.model, n_per_prompt=args.n_per_prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                          references=not args.no_references, grid=not args.no_write)
    if not args.no_write:
        (args.model / "quality.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    if args.csv:
        write_csv(args.csv, csv_rows(res, args.label or args.model.name))
    short = {s: {c: (round(res[s][c]["share"], 3), [round(v, 3) for v in res[s][c]["ci95"]]) for c in CHECKS}
             for s in ("generated", "real_heldout", "vae_reconstruction", "untrained_unet_trained_vae") if s in res}
    print(json.dumps({"vae_psnr_db": res["vae_psnr_db"], **short}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
