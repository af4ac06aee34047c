"""Validate the seam metrics on bundled photographs/textures with planted seams.

Writes results/bench/metrics_validation.csv (one row per image crop x seam kind x
strength x metric) and prints the markdown tables quoted in docs/metrics.md.
Run: .venv/bin/python benchmarks/metrics_validation.py   (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np
import skimage.data
import torch

from mdtools import plan_views
from mdtools.metrics import seam_score, wrap_seam_score
from mdtools.metrics.synthetic import plant_blur, plant_colour, plant_offset

IMAGES = ("brick", "grass", "gravel", "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
KINDS = {
    "step": (plant_offset, (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)),  # brightness step height (0-1)
    "colour": (plant_colour, (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)),  # red-green shift height
    "blur": (plant_blur, (0.0, 0.5, 1.0, 2.0, 4.0)),  # Gaussian sigma (px) in a 12-px band
}
METRIC_FNS = {
    "seam_score": lambda im, plan: seam_score(im, plan),
    "seam_score_lab": lambda im, plan: seam_score(im, plan, mode="lab"),
    "seam_score_seg1": lambda im, plan: seam_score(im, plan, segment=1),
    "naive": lambda im, plan: seam_score(im, plan, local=False, segment=1),
}


def load(name: str) -> torch.Tensor:
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255.0


def crops(size: int, per_image: int, rng: np.random.Generator):
    """Random-offset square crops: a random offset of the plan relative to the content."""
    for name in IMAGES:
        im = load(name)
        H, W = im.shape[-2:]
        if H < size or W < size:
            continue
        for _ in range(per_image):
            y, x = int(rng.integers(0, H - size + 1)), int(rng.integers(0, W - size + 1))
            yield name, y, x, im[..., y:y + size, x:x + size]


def q(v, p):
    return float(np.percentile(v, p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-image", type=int, default=4)
    ap.add_argument("--out", default="results/bench/metrics_validation.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-line work is tiny; threads only add contention
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    t0 = time.time()

    # 1. planted seams on 256 px crops, plan window 128 / overlap 32 (3 seam lines per axis)
    plan = plan_views(256, 256, window=128, overlap=32)
    for name, y, x, c in crops(256, args.per_image, rng):
        for kind, (plant, strengths) in KINDS.items():
            for s in strengths:
                im = plant(c, plan.seam_lines, s)
                for m, fn in METRIC_FNS.items():
                    rows.append(dict(study="planted", image=name, y=y, x=x, size=256, kind=kind,
                                     strength=s, metric=m, value=float(fn(im, plan))))

    # 2. seamless spread vs image size (plan scaled with the image)
    for size, win, ov in ((128, 64, 16), (256, 128, 32), (384, 192, 32), (512, 256, 64)):
        p = plan_views(size, size, window=win, overlap=ov)
        for name, y, x, c in crops(size, 6, rng):
            for m in ("seam_score", "seam_score_lab", "naive"):
                rows.append(dict(study="size", image=name, y=y, x=x, size=size, kind="none", strength=0.0,
                                 metric=m, value=float(METRIC_FNS[m](c, p))))

    # 3. global brightness / contrast: same crop and planted step, transformed image
    for name, y, x, c in crops(256, 2, rng):
        for tname, tf in (("identity", lambda t: t), ("gain0.5", lambda t: t * 0.5),
                          ("offset+0.2", lambda t: (t + 0.2).clamp(0, 1)), ("gamma2.2", lambda t: t ** 2.2)):
            for s in (0.0, 0.02):
                im = tf(plant_offset(c, plan.seam_lines, s))
                for m in ("seam_score", "seam_score_lab"):
                    rows.append(dict(study=f"brightness:{tname}", image=name, y=y, x=x, size=256, kind="step",
                                     strength=s, metric=m, value=float(METRIC_FNS[m](im, plan))))

    # 4. wrap seam: a crop is not periodic (true wrap seam); rolling it by half makes the
    # wrap line an interior, seamless one
    cplan = plan_views(256, 512, window=128, overlap=32, circular="x")
    for name in IMAGES:
        im = load(name)
        if im.shape[-1] < 512:
            continue
        c = im[..., :256, :512]
        for label, img in (("cut (real wrap seam)", c), ("rolled (seamless wrap)", torch.roll(c, 256, -1))):
            rows.append(dict(study="wrap", image=name, y=0, x=0, size=512, kind=label, strength=0.0,
                             metric="wrap_seam_score", value=float(wrap_seam_score(img, cplan))))

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"<!-- {len(rows)} rows, {time.time() - t0:.0f} s, written to {args.out} -->\n")
    report(rows)


def report(rows: list[dict]) -> None:
    def sel(**kw):
        return [r for r in rows if all(r[k] == v for k, v in kw.items())]

    print("### Planted seams (256 px crops, 8 images x 4 random offsets; median [p10, p90])\n")
    metrics = list(METRIC_FNS)
    print("| kind | strength | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for kind, (_, strengths) in KINDS.items():
        for s in strengths:
            cells = []
            for m in metrics:
                v = [r["value"] for r in sel(study="planted", kind=kind, strength=s, metric=m)]
                cells.append(f"{np.median(v):.2f} [{q(v, 10):.2f}, {q(v, 90):.2f}]")
            print(f"| {kind} | {s:g} | " + " | ".join(cells) + " |")

    print("\n### Monotonicity per crop (share of the 32 crops whose score never drops as strength rises: "
          "all strengths / from the 2nd / the top 3)\n")
    print("| kind | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for kind, (_, strengths) in KINDS.items():
        cells = []
        for m in metrics:
            seqs: dict = {}
            for r in sel(study="planted", kind=kind, metric=m):
                seqs.setdefault((r["image"], r["y"], r["x"]), []).append(r["value"])
            full = np.mean([np.all(np.diff(v) >= 0) for v in seqs.values()])
            tail = np.mean([np.all(np.diff(v[1:]) >= 0) for v in seqs.values()])
            top = np.mean([np.all(np.diff(v[-3:]) >= 0) for v in seqs.values()])
            cells.append(f"{full:.0%} / {tail:.0%} / {top:.0%}")
        print(f"| {kind} | " + " | ".join(cells) + " |")

    print("\n### Seamless spread vs image size (images at least that large x 6 random offsets, unique crops)\n")
    print("| size (px) | metric | crops | mean | std | p5 | p95 | max |")
    print("|---|---|---|---|---|---|---|---|")
    for size in (128, 256, 384, 512):
        for m in ("seam_score", "seam_score_lab", "naive"):
            # 512 px images give one crop each however many offsets are drawn: count it once
            uniq = {(r["image"], r["y"], r["x"]): r["value"] for r in sel(study="size", size=size, metric=m)}
            v = np.array(list(uniq.values()))
            v = v[np.isfinite(v)]
            stats = f"{v.mean():.3f} | {v.std():.3f} | {q(v, 5):.2f} | {q(v, 95):.2f} | {v.max():.2f}"
            print(f"| {size} | {m} | {len(v)} | {stats} |")

    print("\n### Global brightness (median over 16 crops; step = planted 0.02 step)\n")
    print("| transform | seam_score none | seam_score step | seam_score_lab none | seam_score_lab step |")
    print("|---|---|---|---|---|")
    for t in ("identity", "gain0.5", "offset+0.2", "gamma2.2"):
        cells = [f"{np.median([r['value'] for r in sel(study='brightness:' + t, strength=s, metric=m)]):.3f}"
                 for m in ("seam_score", "seam_score_lab") for s in (0.0, 0.02)]
        print(f"| {t} | " + " | ".join(cells) + " |")

    print("\n### Wrap seam (256x512 crops, circular plan)\n")
    print("| image | cut (real wrap seam) | rolled (seamless wrap) |")
    print("|---|---|---|")
    for name in IMAGES:
        v = {r["kind"]: r["value"] for r in sel(study="wrap", image=name)}
        if v:
            print(f"| {name} | {v['cut (real wrap seam)']:.2f} | {v['rolled (seamless wrap)']:.2f} |")


if __name__ == "__main__":
    main()
