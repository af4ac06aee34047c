"""`make demo`: naive tiles vs uniform overlap vs gaussian overlap on the embedded toy model, and one 4x upscale.

Runs experiments/quickstart.yaml into results/demo/quickstart/ (git-ignored, so a new
clone really generates; resumable like any experiment), writes its report, then copies the
three panoramas to results/demo/ with a labelled side-by-side comparison. The committed
reference run that notebook 01 reads lives in results/quickstart/. Then the scenes panorama
(experiments/quickstart_scenes.yaml) and one 4x upscale of a scene (`run_upscale`): bicubic,
Ultimate SD Upscale and mdtools' tiled upscale (Mixture of Diffusers with the embedded tile
ControlNet), each measured against the scene it was downsampled from; it adds about 15 s to
the demo (measured 2026-12-08 on this 2-core CPU at load ~2.7: 3.5 s to load the scenes model,
10.9 s for the two upscales, the figures and the comparison image).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from .analysis.report import report
from .sweep import execute, load_experiment, load_records


def _label(cfg: dict) -> str:
    """'naive' for no overlap (hard tile edges), else the kernel's name."""
    t = cfg["tiling"]
    return "naive" if t["overlap"] == 0 else t["kernel"]


Item = tuple[str, Path, dict]


def _seam_title(label: str, m: dict) -> str:
    s = m.get("seam_structure")
    return f"{label}: structural seam score {s:.2f} (1 = seamless)" if isinstance(s, (int, float)) else label


def _suns_title(label: str, m: dict) -> str:
    # horizon_breaks, not the seam ratio horizon_continuity: a horizon broken everywhere reads ~1 on the ratio
    return (f"{label}: {m.get('disc_count', float('nan')):.0f} sun(s) in the sky (1 is right), "
            f"{m.get('horizon_breaks', float('nan')):.2f} horizon breaks per height of width (0 = unbroken)")


def comparison_png(items: list[Item], out: Path, title: Callable[[str, dict], str] = _seam_title) -> None:
    """Stack the images vertically, each titled by `title(label, metrics)` (default: its seam score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    imgs = [Image.open(p) for _, p, _ in items]
    w, h = imgs[0].size
    fig, axes = plt.subplots(len(imgs), 1, figsize=(12, 12 * h / w * len(imgs) + 0.6 * len(imgs)), squeeze=False)
    for ax, img, (label, _, metrics) in zip(axes[:, 0], imgs, items):
        ax.imshow(img)
        ax.set_title(title(label, metrics), fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def collect_images(out_dir: Path, demo: Path, label: Callable[[dict], str], prefix: str = "",
                   run_ids: set[str] | None = None) -> list[Item]:
    """Copy each finished run's image (full size when saved, else the preview) to demo/<prefix><label>.png;
    with `run_ids`, only those runs (an older version's runs in the same folder are left out)."""
    items = []
    for rec in sorted(load_records(out_dir).values(), key=lambda r: json.dumps(r["config"], sort_keys=True)):
        if run_ids is not None and rec["run_id"] not in run_ids:
            continue
        if rec["status"] != "ok":
            print(f"run {rec['run_id']} {rec['status']}: {rec.get('error')}")
            continue
        imgs = rec.get("images", {})
        src = out_dir / "images" / imgs.get("full", "")
        if not src.is_file():  # full-size images are optional; the preview always exists
            src = out_dir / "images" / imgs["preview"]
        name = label(rec["config"])
        dst = demo / f"{prefix}{name}.png"
        shutil.copyfile(src, dst)
        items.append((name, dst, rec.get("metrics", {})))
    return items


SCENES_EXPERIMENT = "experiments/quickstart_scenes.yaml"

#: The committed sweep that the demo's scene seed is chosen from, and the comparison it shows.
SCENES_SOURCE = "results/coherence"
SCENES_PAIR = ("multidiffusion", "demofusion")  # the fewest suns on 1:8 in results/coherence (notebook 07)
SCENES_CANVAS = (128, 1024)


def median_seed(runs, pair: tuple[str, str] = SCENES_PAIR, canvas: tuple[int, int] = SCENES_CANVAS,
                metric: str = "metric.disc_count") -> tuple[int, float, int]:
    """The seed whose paired difference pair[0] - pair[1] in `metric` is the median one, on `canvas`.

    Ordinary runs only (control == ""). With an even number of seeds the lower of the two middle
    differences is taken; ties go to the smallest seed. Returns (seed, its difference, n seeds).
    """
    from .analysis.tables import plain_runs
    from .errors import ConfigError

    df = plain_runs(runs[(runs["status"] == "ok") & (runs["canvas.height"] == canvas[0]) & (runs["canvas.width"] == canvas[1])])
    by = {m: df[df["method.name"] == m].set_index("seed")[metric] for m in pair}
    for m, s in by.items():
        if s.index.has_duplicates:
            raise ConfigError(f"median_seed: several {m} runs per seed on {canvas}; give one setting per method")
    diff = (by[pair[0]] - by[pair[1]]).dropna().sort_index()
    if diff.empty:
        raise ConfigError(f"median_seed: no seed has both {pair[0]} and {pair[1]} on canvas {canvas} in the runs")
    ranked = sorted(diff.items(), key=lambda kv: (kv[1], kv[0]))
    seed, d = ranked[(len(ranked) - 1) // 2]
    return int(seed), float(d), len(ranked)


def scene_seed_note(experiment: str, source: str = SCENES_SOURCE) -> str:
    """One line: the scenes panorama's seed and why it was chosen (the median seed of the committed sweep)."""
    import pandas as pd

    seed = load_experiment(experiment).runs[0].seed
    path = Path(source) / "runs.parquet"
    if not path.is_file():
        return f"{seed} ({path} is absent, so the seed's rank among the sweep's seeds is not known)"
    best, d, n = median_seed(pd.read_parquet(path))
    rank = "the median" if best == seed else f"not the median (that is seed {best})"
    return (f"{seed}: {rank} of the {n} seeds of {source} at {SCENES_CANVAS[0]} x {SCENES_CANVAS[1]} "
            f"({SCENES_PAIR[0]} minus {SCENES_PAIR[1]}: {d:+.0f} suns), a typical seed, not the best one")


def run_scenes(experiment: str, out_dir: Path, demo: Path) -> list[Item]:
    """A scenes panorama two ways (SCENES_PAIR: multidiffusion vs demofusion) with the number of suns."""
    exp = load_experiment(experiment)
    execute(exp, out_dir)
    items = collect_images(out_dir, demo, lambda cfg: cfg.get("method", {}).get("name", "multidiffusion"), "scenes_",
                           {c.run_id() for c in exp.runs})
    items.sort(key=lambda it: it[0] != "multidiffusion")
    if items:
        comparison_png(items, demo / "scenes_comparison.png", _suns_title)
    return items


#: The demo's upscale: a 128 x 256 scene (2 x 1 windows of the toy model) from a 32 x 64 source, 4x.
UPSCALE_SIZE = (128, 256)
UPSCALE_FACTOR = 4
UPSCALE_SEED = 3
UPSCALE_SETTINGS = {"strength": 0.3, "steps": 10, "guidance_scale": 5.0, "overlap": 32}  # as benchmarks/upscale_truth.py
UPSCALE_CONTROLNET = "toy-scenes-tile"


def _upscale_title(label: str, m: dict) -> str:
    return (f"{label}: PSNR {m['psnr']:.2f} dB vs the truth, color_drift {m['color_drift']:.2f}, "
            f"seam_structure {m['seam_structure']:.2f} (1 = seamless)")


def upscale_figures(image, truth, lines) -> dict[str, float]:
    """PSNR against the truth, color_drift against it (NaN when the metric is absent), seam_structure on `lines`."""
    from .metrics import METRICS, evaluate, psnr, seam_structure

    cd = float(evaluate(image, None, metrics=["color_drift"], reference=truth)["color_drift"]) if "color_drift" in METRICS else float("nan")
    return {"psnr": float(psnr(image, truth)), "color_drift": cd, "seam_structure": float(seam_structure(image, lines))}


def run_upscale(demo: Path, *, size: tuple[int, int] = UPSCALE_SIZE, seed: int = UPSCALE_SEED,
                settings: dict | None = None, md=None) -> list[Item]:
    """One 4x upscale of a scene three ways, with PSNR against the truth, color_drift and seams; images in `demo`."""
    import numpy as np
    from PIL import Image

    from .toy import EMBEDDED_CONTROLNETS
    from .toy.scenes import make_scene, sample_params

    settings = {**UPSCALE_SETTINGS, **(settings or {})}
    if md is None:
        from .pipeline import MultiDiffusionPipeline

        md = MultiDiffusionPipeline.from_pretrained("toy-scenes")
    arr, labels = make_scene(sample_params(np.random.default_rng(seed)), *size)
    truth = Image.fromarray(np.round(arr * 255).astype(np.uint8))
    low = truth.resize((size[1] // UPSCALE_FACTOR, size[0] // UPSCALE_FACTOR), Image.BICUBIC)
    win = int(md.native_window)
    grid = {"x": tuple(range(win, size[1], win)), "y": tuple(range(win, size[0], win))}
    cn = UPSCALE_CONTROLNET if (EMBEDDED_CONTROLNETS[UPSCALE_CONTROLNET] / "config.json").is_file() else None
    mine = "mdtools mixture + tile ControlNet" if cn else "mdtools mixture"
    outs = {"truth": (truth, grid), "bicubic": (low.resize(truth.size, Image.BICUBIC), grid)}
    common = dict(scale=UPSCALE_FACTOR, prompt=labels.prompt, seed=seed, progress=False, **settings)
    usdu = md.upscale(low, method="usdu", **{k: v for k, v in common.items() if k != "overlap"})
    outs["Ultimate SD Upscale"] = (usdu.image, grid)
    res = md.upscale(low, method="mixture", controlnet=cn, **common)
    outs[mine] = (res.image, res.plan)  # seams at its views' edges
    items = []
    for label, (img, lines) in outs.items():
        path = demo / f"upscale_{label.split()[0].lower() if label != mine else 'mdtools'}.png"
        img.save(path)
        items.append((label, path, upscale_figures(img, truth, lines)))
    comparison_png(items, demo / "upscale_comparison.png", _upscale_title)
    return items


def run_demo(*, experiment: str = "experiments/quickstart.yaml", out: str = "results/demo/quickstart",
             scenes: str | None = SCENES_EXPERIMENT, upscale: bool = True) -> int:
    t0 = time.perf_counter()
    exp = load_experiment(experiment)
    out_dir = Path(out)
    execute(exp, out_dir)
    summary, plots = report(out_dir)
    demo = Path("results/demo")
    demo.mkdir(parents=True, exist_ok=True)
    items = collect_images(out_dir, demo, _label, run_ids={c.run_id() for c in exp.runs})
    order = {"naive": 0, "uniform": 1, "gaussian": 2}
    items.sort(key=lambda it: order.get(it[0], 9))
    if items:
        comparison_png(items, demo / "comparison.png")
    scene_items = run_scenes(scenes, Path(out).parent / "scenes", demo) if scenes and Path(scenes).is_file() else []
    t_up = time.perf_counter()
    up_items = run_upscale(demo) if upscale else []
    t_up = time.perf_counter() - t_up
    print("\nmdtools demo done in {:.0f} s".format(time.perf_counter() - t0))
    for label, path, m in items:
        print(f"  image     {path}  seam_structure={m.get('seam_structure', float('nan')):.2f} (1 = seamless)")
    if items:
        print(f"  compare   {demo / 'comparison.png'}")
    print(f"  table     {out_dir / 'runs.parquet'}  (summary: {out_dir / 'summary.csv'})")
    for p in plots:
        print(f"  plot      {p}")
    print("  notebook  notebooks/01_quickstart.ipynb")
    for label, path, m in scene_items:
        print(f"  scene     {path}  {_suns_title(label, m)}")
    if scene_items:
        print(f"  compare   {demo / 'scenes_comparison.png'}  (notebook notebooks/07_coherence.ipynb)")
        print(f"  seed      {scene_seed_note(scenes)}")
    print_upscale(up_items, demo, t_up)
    return 0


def print_upscale(items: list[Item], demo: Path, seconds: float) -> None:
    """The upscale lines of the demo's summary: each image's path and figures, the comparison and its time."""
    for label, path, m in items:
        print(f"  upscale   {path}  {_upscale_title(label, m)}")
    if items:
        print(f"  compare   {demo / 'upscale_comparison.png'}  (one 4x upscale of a scene: {seconds:.0f} s; "
              "benchmark: notebooks/08_upscale.ipynb)")
