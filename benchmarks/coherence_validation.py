"""Validate the scene detectors and the coherence metrics on procedural scenes with planted failures.

Writes results/bench/coherence_validation.csv (one row per scene x failure kind x strength x
blur x metric, plus detector recovery rates) and prints the markdown tables quoted in
docs/metrics.md and docs/scenes.md.
Run: .venv/bin/python benchmarks/coherence_validation.py   (about 130 s on 2 CPU cores)

Failures (panoramas 128 x 512, plan window 128 / overlap 32: five views, seam lines at
96, 128, 192, 224, 288, 320, 384, 416 px):
  disc     1, 2 or 3 discs (the scene's own plus copies in free sky)          -> disc_count
  horizon  terrain shifted down by k px between alternate seam lines (a step   -> horizon_continuity
           of k px at every seam line), k = 0, 2, 4, 8, 16
  sky      sky of view g tinted by a * g / (n_views - 1) along RGB (1, .5, -.5) -> sky_consistency
           (a drift across the canvas), a = 0, 0.01, 0.02, 0.04, 0.08
  mosaic   every view an independent scene of the same prompt (naive tiling)  -> all four
Detectors against the failures they count and their look-alikes (same panoramas):
  ground_blob   the scene's disc copied below the horizon (in the ground / sea): still 1 disc
  no_sun        the disc erased (the sky with none)                 -> disc_count 0, no_disc 1
  faint_sun     the erased scene with the disc blended back at alpha 0.8 / 0.6 / 0.4 (0.4 is cloud-level)
  everywhere    terrain lowered by k px on random 8-24 px stretches (broken everywhere), k = 0, 4, 8, 16
                -> horizon_breaks (absolute) beside horizon_continuity (seam ratio)
  horizon       the seam-line steps above, also read by horizon_breaks
`blur` = Gaussian sigma 1.5 px plus noise sd 0.02 after planting: a stand-in for the blurry
output of a small diffusion model.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np
from scipy.ndimage import gaussian_filter

from mdtools import plan_views
from mdtools.metrics import scene_analysis as A
from mdtools.metrics.scene_coherence import disc_count, horizon_breaks, horizon_continuity, no_disc, sky_consistency, view_columns
from mdtools.metrics.synthetic import erase_disc, plant_blob
from mdtools.toy import scenes as S

H, W = 128, 512
PLAN = plan_views(H, W, window=128, overlap=32)
TINT = np.array([1.0, 0.5, -0.5])
STRENGTHS = {"disc": (1, 2, 3), "horizon": (0, 2, 4, 8, 16), "sky": (0.0, 0.01, 0.02, 0.04, 0.08)}
METRIC = {"disc": "disc_count", "horizon": "horizon_continuity", "sky": "sky_consistency"}
FNS = {"disc_count": disc_count, "horizon_continuity": horizon_continuity, "sky_consistency": sky_consistency,
       "horizon_breaks": horizon_breaks}
DISC_COLOUR = {"day": (1.0, 0.98, 0.84), "sunset": (1.0, 0.92, 0.58), "night": (0.88, 0.88, 0.82)}  # the generator's
EVERYWHERE = (0, 4, 8, 16)


def degrade(img: np.ndarray, blur: bool, seed: int) -> np.ndarray:
    if not blur:
        return img
    out = gaussian_filter(img, (1.5, 1.5, 0)) + np.random.default_rng(seed).normal(0, 0.02, img.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def mosaic(params: S.SceneParams, rng: np.random.Generator) -> np.ndarray:
    """Each view's columns from its own scene of the same prompt: what naive tiling produces."""
    group, _ = view_columns(PLAN, H, W)
    out = np.empty((H, W, 3), dtype=np.float32)
    for g in range(int(group.max()) + 1):
        cols = np.flatnonzero(group == g)
        p = S.sample_params(rng, sky=params.sky, ground=params.ground, terrain=params.terrain)
        out[:, cols] = S.render_scene(p, H, len(cols))
    return out


def planted(params: S.SceneParams, img: np.ndarray, labels: S.SceneLabels, kind: str, strength: float, seed: int) -> np.ndarray:
    if kind == "disc":
        return S.plant_discs(img, labels, int(strength) - 1, np.random.default_rng(seed))
    if kind == "horizon":
        return S.render_scene(params, H, W, horizon_offset=strength * S.strip_profile(W, PLAN.seam_lines["x"]))
    group, _ = view_columns(PLAN, H, W)
    return S.tint_sky(img, labels, (strength * group / group.max())[:, None] * TINT[None, :])


def broken_everywhere(seed: int) -> np.ndarray:
    """(W,) 0/1 profile flipping after random stretches of 8-24 columns: a horizon broken everywhere, not only at seams."""
    rng = np.random.default_rng(seed)
    prof, x, v = np.zeros(W), 0, 0
    while x < W:
        n = int(rng.integers(8, 25))
        prof[x:x + n], x, v = v, x + n, 1 - v
    return prof


def look_alikes(params: S.SceneParams, img: np.ndarray, labels: S.SceneLabels, seed: int) -> list[tuple[str, float, str, np.ndarray]]:
    """(kind, strength, metric, image): each detector on the failure it counts and on what it must not count."""
    (cy, cx), r = labels.disc_center, labels.disc_radius
    top = labels.horizon[int(max(0, cx - r - 2)):int(min(W, cx + r + 3))].max()
    blob = plant_blob(img, min(H - r - 3, top + r + 6), cx, r, DISC_COLOUR[params.sky])
    none = erase_disc(img, cy, cx, r)
    out = [("ground_blob", 1, "disc_count", blob), ("no_sun", 0, "disc_count", none), ("no_sun", 0, "no_disc", none),
           ("no_sun", 1, "no_disc", img)]
    out += [("faint_sun", a, "disc_count", plant_blob(none, cy, cx, r, DISC_COLOUR[params.sky], a)) for a in (1.0, 0.8, 0.6, 0.4)]
    prof = broken_everywhere(seed)
    for k in EVERYWHERE:
        im = S.render_scene(params, H, W, horizon_offset=k * prof)
        out += [("everywhere", k, "horizon_breaks", im), ("everywhere", k, "horizon_continuity", im)]
    for k in (0, 8):
        out.append(("seam_steps", k, "horizon_breaks", S.render_scene(params, H, W, horizon_offset=k * S.strip_profile(W, PLAN.seam_lines["x"]))))
    return out


def recovery(rows: list, n: int, size: tuple[int, int], blur: bool, seed: int) -> None:
    """Share of scenes whose labels the detectors recover, and the horizon error over all columns."""
    rng = np.random.default_rng(seed)
    hits = {k: 0 for k in ("sky", "ground", "terrain", "disc_count", "disc_position", "horizon")}
    errs = []
    for i in range(n):
        img, lab = S.make_scene(S.sample_params(rng), *size)
        a = A.analyse_scene(degrade(img, blur, i))
        e = np.abs(a.horizon - lab.horizon)
        errs.append(np.where(np.isnan(e), np.inf, e))
        hits["sky"] += a.sky == lab.sky
        hits["ground"] += a.ground == lab.ground
        hits["terrain"] += a.terrain == lab.terrain
        hits["disc_count"] += len(a.discs) == 1
        if len(a.discs) == 1:
            cy, cx, r = a.discs[0]
            hits["disc_position"] += bool(np.hypot(cy - lab.disc_center[0], cx - lab.disc_center[1]) <= 1.0)
        hits["horizon"] += bool(np.median(e) <= 0.5 and e.max() <= 2.5)  # NaN (no horizon) fails both
    tag = f"{size[0]}x{size[1]}"
    for k, v in hits.items():
        rows.append({"scene": tag, "blur": int(blur), "kind": "recovery", "strength": n, "metric": k, "value": v / n})
    e = np.concatenate(errs)
    for p in (50, 95, 99):
        rows.append({"scene": tag, "blur": int(blur), "kind": "recovery", "strength": n, "metric": f"horizon_error_p{p}_px",
                     "value": float(np.percentile(e, p))})


def timing(rows: list) -> None:
    """Milliseconds per call (median of repeats) for rendering, the detectors and the metrics."""
    rng = np.random.default_rng(5)
    params = [S.sample_params(rng) for _ in range(50)]
    pano = S.render_scene(params[0], H, W)
    cases = {
        "render_128x128": lambda i: S.render_scene(params[i], 128, 128),
        "render_128x512": lambda i: S.render_scene(params[i], H, W),
        "analyse_scene_128x128": lambda i: A.analyse_scene(S.render_scene(params[i], 128, 128)),
        "analyse_scene_128x512": lambda i: A.analyse_scene(pano),
        "horizon_continuity_128x512": lambda i: horizon_continuity(pano, PLAN),
        "sky_consistency_128x512": lambda i: sky_consistency(pano, PLAN),
    }
    for name, fn in cases.items():
        ts = []
        for i in range(50 if name.startswith("render") else 10):
            t = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - t)
        rows.append({"scene": name, "kind": "timing", "metric": "ms", "value": 1e3 * float(np.median(ts))})


def q(v, p):
    return float(np.percentile(v, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=20, help="random panoramas per failure kind (default 20)")
    ap.add_argument("--recovery", type=int, default=200, help="random 128 x 128 scenes for the detector check (default 200)")
    ap.add_argument("--out", default="results/bench/coherence_validation.csv")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows: list[dict] = []
    timing(rows)
    for blur in (False, True):
        recovery(rows, args.recovery, (128, 128), blur, seed=11)
        recovery(rows, max(4, args.recovery // 10), (128, 512), blur, seed=12)
        recovery(rows, max(2, args.recovery // 40), (256, 1024), blur, seed=13)
    rng = np.random.default_rng(2024)
    fns = {**FNS, "no_disc": no_disc}
    for i in range(args.scenes):
        params = S.sample_params(rng)
        img, labels = S.make_scene(params, H, W)
        meta = {"scene": i, "sky": params.sky, "terrain": params.terrain, "clouds": int(params.clouds)}
        for blur in (False, True):
            for kind, strengths in STRENGTHS.items():
                for s in strengths:
                    im = degrade(planted(params, img, labels, kind, s, seed=i), blur, seed=i)
                    v = FNS[METRIC[kind]](im, PLAN)
                    rows.append({**meta, "blur": int(blur), "kind": kind, "strength": s, "metric": METRIC[kind], "value": float(v)})
            for kind, s, m, im in look_alikes(params, img, labels, seed=i):
                rows.append({**meta, "blur": int(blur), "kind": kind, "strength": s, "metric": m,
                             "value": float(fns[m](degrade(im, blur, seed=i), PLAN))})
            mos = degrade(mosaic(params, np.random.default_rng(1000 + i)), blur, seed=i)
            for m, fn in FNS.items():
                rows.append({**meta, "blur": int(blur), "kind": "mosaic", "strength": 1, "metric": m, "value": float(fn(mos, PLAN))})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    keys = ["scene", "sky", "terrain", "clouds", "blur", "kind", "strength", "metric", "value"]
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    print(f"wrote {args.out} ({len(rows)} rows, {time.perf_counter() - t0:.0f} s)\n")

    print("#### Detector recovery (share of scenes with the label right; horizon errors pooled over all columns)\n")
    print("| size | blur | scenes | sky | ground | terrain | one disc | disc centre <= 1 px | horizon | "
          "horizon error p50 / p95 / p99 (px) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rec = [r for r in rows if r["kind"] == "recovery"]
    for size in ("128x128", "128x512", "256x1024"):
        for blur in (0, 1):
            v = {r["metric"]: r["value"] for r in rec if r["scene"] == size and r["blur"] == blur}
            n = next(r["strength"] for r in rec if r["scene"] == size)
            cells = " | ".join(f"{v[k]:.0%}" for k in ("sky", "ground", "terrain", "disc_count", "disc_position", "horizon"))
            errs = " / ".join(f"{v[f'horizon_error_p{p}_px']:.2f}" for p in (50, 95, 99))
            print(f"| {size} | {'yes' if blur else 'no'} | {n} | {cells} | {errs} |")
    print("\nhorizon = median column error <= 0.5 px and every column <= 2.5 px\n")
    print("#### Timing (ms per call, median; 2-core CPU shared with other work)\n")
    print("| call | ms |")
    print("|---|---|")
    for r in rows:
        if r["kind"] == "timing":
            print(f"| {r['scene']} | {r['value']:.1f} |")
    print(f"\n#### Planted failures ({args.scenes} panoramas {H} x {W}; median [p10, p90])\n")
    print("| kind | strength | metric | clean | blurred | monotone per scene (clean / blurred) |")
    print("|---|---|---|---|---|---|")
    for kind, strengths in STRENGTHS.items():
        mono = []
        for blur in (0, 1):
            per = np.array([[r["value"] for r in rows if r["kind"] == kind and r["blur"] == blur and r["strength"] == s]
                            for s in strengths])  # (strengths, scenes)
            mono.append(float(np.mean(np.all(np.diff(per, axis=0) > 0, axis=0))))
        for j, s in enumerate(strengths):
            cells = []
            for blur in (0, 1):
                v = [r["value"] for r in rows if r["kind"] == kind and r["blur"] == blur and r["strength"] == s]
                cells.append(f"{q(v, 50):.2f} [{q(v, 10):.2f}, {q(v, 90):.2f}]")
            m = f"{mono[0]:.0%} / {mono[1]:.0%}" if j == 0 else ""
            print(f"| {kind} | {s} | {METRIC[kind]} | {cells[0]} | {cells[1]} | {m} |")
    print(f"\n#### Look-alikes and new failures ({args.scenes} panoramas; median [p10, p90], share of scenes at the expected value)\n")
    print("| kind | strength | metric | clean | blurred |")
    print("|---|---|---|---|---|")
    seen = []
    for r in rows:
        key = (r["kind"], r.get("strength"), r["metric"])
        if r["kind"] in ("ground_blob", "no_sun", "faint_sun", "everywhere", "seam_steps") and key not in seen:
            seen.append(key)
    for kind, st, m in seen:
        cells = []
        for blur in (0, 1):
            v = [r["value"] for r in rows if (r["kind"], r.get("strength"), r["metric"], r.get("blur")) == (kind, st, m, blur)]
            cells.append(f"{q(v, 50):.2f} [{q(v, 10):.2f}, {q(v, 90):.2f}] (=1: {np.mean(np.array(v) == 1):.0%})")
        print(f"| {kind} | {st} | {m} | {cells[0]} | {cells[1]} |")
    print("\n#### Naive tiling (each view an independent scene of the same prompt)\n")
    print("| metric | clean | blurred |")
    print("|---|---|---|")
    for m in FNS:
        cells = []
        for blur in (0, 1):
            v = [r["value"] for r in rows if r["kind"] == "mosaic" and r["blur"] == blur and r["metric"] == m]
            cells.append(f"{q(v, 50):.2f} [{q(v, 10):.2f}, {q(v, 90):.2f}]")
        print(f"| {m} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
