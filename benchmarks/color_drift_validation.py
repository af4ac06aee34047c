"""Validate `color_drift` on planted colour shifts and on look-alikes it must not count.

Images: rendered scenes of the scenes generator (mdtools.toy.scenes, 256 x 256) and three
bundled photographs (skimage.data, centre crops resized to 256 x 256). Each is compared with
its unchanged self (the reference) after:
  planted (must count):  a warm shift of the whole image (R + d, B - d), a warm shift of one
                         tile of a 4 x 4 grid (the worst-tile value must see it), a luminance gain;
  look-alikes (must not): Gaussian blur, unsharp-mask sharpening, pixel noise, a 2x
                         down-and-up bicubic round trip, and the 2x-downsampled image itself
                         (a smaller reference is resized by the metric).
Writes results/bench/color_drift_validation.csv (image, case, kind, amount, color_drift,
color_drift_worst) and prints a summary: for each case, the median over images.
Run: .venv/bin/python benchmarks/color_drift_validation.py   (under a minute on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mdtools.metrics.functional.color_drift import color_drift, gaussian_blur

SIZE = 256
PHOTOS = ("astronaut", "coffee", "chelsea")
SCENE_SEEDS = (0, 1, 2, 3, 4)
WARM = (0.01, 0.02, 0.04, 0.08)  # R + d, B - d (0-1 scale)
TILE = (0.02, 0.04, 0.08)  # the same warm shift in one tile of a 4 x 4 grid
GAIN = (1.03, 1.06)  # luminance gain
BLUR = (1.0, 2.0, 4.0)  # Gaussian sigma, px
SHARPEN = (0.5, 1.0, 2.0)  # unsharp-mask amount (sigma 1.5 px)
NOISE = (0.02, 0.05, 0.1)  # pixel noise std (0-1 scale)


def images() -> dict[str, torch.Tensor]:
    import skimage.data

    from mdtools.toy.scenes import make_scene, sample_params

    out = {}
    for s in SCENE_SEEDS:
        img, _ = make_scene(sample_params(np.random.default_rng(s)), SIZE, SIZE)
        out[f"scene{s}"] = torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1)[None].double()
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        h, w = a.shape[:2]
        m = min(h, w)
        a = a[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
        t = torch.from_numpy(a.astype(np.float64) / 255).permute(2, 0, 1)[None]
        out[name] = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return out


def warm(img: torch.Tensor, d: float, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    out = img.clone()
    t, left, h, w = box or (0, 0, img.shape[-2], img.shape[-1])
    shift = torch.tensor([d, 0.0, -d], dtype=img.dtype).view(1, 3, 1, 1)
    out[:, :, t:t + h, left:left + w] += shift
    return out.clamp(0, 1)


def cases(img: torch.Tensor, rng: torch.Generator) -> list[tuple[str, str, float, torch.Tensor, torch.Tensor]]:
    """(case, kind, amount, image, reference)."""
    out = [("identical", "look-alike", 0.0, img, img)]
    out += [("warm_shift", "planted", d, warm(img, d), img) for d in WARM]
    out += [("warm_tile", "planted", d, warm(img, d, (64, 128, 64, 64)), img) for d in TILE]
    out += [("gain", "planted", g, (img * g).clamp(0, 1), img) for g in GAIN]
    out += [("blur", "look-alike", s, gaussian_blur(img, s), img) for s in BLUR]
    out += [("sharpen", "look-alike", a, (img + a * (img - gaussian_blur(img, 1.5))).clamp(0, 1), img) for a in SHARPEN]
    out += [("noise", "look-alike", s, (img + s * torch.randn(img.shape, generator=rng, dtype=img.dtype)).clamp(0, 1), img)
            for s in NOISE]
    half = F.interpolate(img, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    back = F.interpolate(half, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    out += [("resample_2x", "look-alike", 2.0, back, img), ("smaller_reference", "look-alike", 0.5, img, half)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench/color_drift_validation.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    rng = torch.Generator().manual_seed(0)
    for name, img in images().items():
        for case, kind, amount, x, ref in cases(img, rng):
            s = color_drift(x, ref)
            rows.append({"image": name, "case": case, "kind": kind, "amount": amount, "color_drift": float(s),
                         "color_drift_worst": s.details["worst_tile"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import pandas as pd

    df = pd.DataFrame(rows)
    table = df.groupby(["kind", "case", "amount"])[["color_drift", "color_drift_worst"]].median().round(3)
    print(table.to_string())
    planted = df[(df.kind == "planted")]
    looks = df[(df.kind == "look-alike")]
    print(f"\nlargest look-alike: color_drift {looks.color_drift.max():.3f}, worst tile {looks.color_drift_worst.max():.3f}; "
          f"smallest planted (warm_shift >= 0.02): {planted[(planted.case == 'warm_shift') & (planted.amount >= 0.02)].color_drift.min():.3f}; "
          f"smallest warm_tile worst tile (>= 0.04): {planted[(planted.case == 'warm_tile') & (planted.amount >= 0.04)].color_drift_worst.min():.3f}")
    print(f"wrote {args.out} ({len(rows)} rows); load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
