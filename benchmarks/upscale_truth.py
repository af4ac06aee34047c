"""Upscalers against ground truth: render, downsample, upscale back with each method, measure against the original.

    .venv/bin/python benchmarks/upscale_truth.py            # all cells; resumes where it stopped
    .venv/bin/python benchmarks/upscale_truth.py --factors 4 --seeds 8 --methods lanczos usdu

The truth is known by construction:
- scenes: `mdtools.toy.scenes.make_scene` renders any size (and returns the horizon and the sun);
- textures: crops of the held-out stripes of the texture sources (`mdtools.toy.data`: never
  seen by any embedded model in training), one source per seed in turn.
Both run on the embedded scenes model "toy-scenes": the one model with an embedded tile ControlNet
("toy-scenes-tile"), so every method runs on both datasets; for the scenes model the textures are
content it never saw (as a photograph is for a model not trained on its kind), with the empty prompt.
Each truth (uint8) is downsampled by the factor (PIL bicubic, antialiased), upscaled back with
every method at the same strength, steps, guidance and seed, and measured against the truth:
PSNR, SSIM (Wang et al.'s, by scikit-image: `ssim_wang`), feature-LPIPS (the shipped feature
network), color_drift (overall, and its worst tile on a fixed 4 x 4 grid so methods compare on
the same tiles), seam_structure on the method's own tile lines (Ultimate SD Upscale / naive
tiles: their tile grid; latent methods: their views' edges; bicubic / Lanczos: the window grid),
and on scenes the suns counted in the sky and the horizon's mean error in px against the
generator's labels. One image per seed: image i and seed i go together; pairs are (image, seed).
Defaults: scenes 128 x 256, textures 256 x 128 (3 views each), strength 0.3, 10 steps, guidance
5, 32 px overlap, Lanczos resize, one torch thread. 384 runs (12 methods x 2 datasets x 2
factors x 8 seeds) take about 4 minutes on this 2-core CPU at load ~2.

Every run appends one JSON line to <out>/runs.jsonl at once (a failure is a row with its error),
so nothing written is lost; a re-run skips what is there (--retry-failed re-runs the failures).
Provenance per row: commit, dirty flag (tracked files outside the output folder), versions,
device, load average before and after. Then summary.csv, comparisons.csv and findings.md are
rendered (mdtools.analysis.upscale_findings) and the image grid written (grid.png).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdtools.analysis.upscale_findings import BICUBIC, LANCZOS, METHOD_LABELS, write_tables  # noqa: E402
from mdtools.instrument import Recorder  # noqa: E402

MODEL = "toy-scenes"
CONTROLNET = "toy-scenes-tile"
DATASETS = ("scenes", "textures")
#: (height, width) of the truth per dataset, 2 x 1 windows of the 128 px model (3 views at 32 px overlap):
#: scenes one window tall (each view sees the whole sky-to-ground height, as in a panorama: on a 256 px tall
#: canvas the toy model paints a horizon in every view row), textures one window wide (a held-out stripe
#: is 144+ px wide)
SIZES = {"scenes": (128, 256), "textures": (256, 128)}
SCENE_SEED0, TEXTURE_SEED0 = 10_000, 20_000  # image i draws from default_rng(SEED0 + i)
#: the settings every diffusion method shares (`--strength` etc. override)
DEFAULTS = {"strength": 0.3, "steps": 10, "guidance": 5.0, "overlap": 32}
#: label -> upscale() keywords (the shared settings are added); bicubic and Lanczos are plain PIL resizes
METHOD_KWARGS: dict[str, dict[str, Any]] = {
    "naive_tiles": {"method": "naive_tiles"},
    "usdu": {"method": "usdu"},
    "usdu+seamfix": {"method": "usdu", "method_params": {"seam_fix": "half_tile"}},
    "usdu+cn": {"method": "usdu", "controlnet": CONTROLNET},
    "multidiffusion": {"method": "multidiffusion"},
    "multidiffusion+cn": {"method": "multidiffusion", "controlnet": CONTROLNET},
    "mixture": {"method": "mixture"},
    "mixture+cn": {"method": "mixture", "controlnet": CONTROLNET},
    "mixture+wavelet": {"method": "mixture", "color_fix": "wavelet"},
    "mixture+inversion": {"method": "mixture", "noise_inversion": True},
}
PIXEL_RESIZES = {BICUBIC: Image.BICUBIC, LANCZOS: Image.LANCZOS}
if set(METHOD_KWARGS) | set(PIXEL_RESIZES) != set(METHOD_LABELS):  # one list of methods: upscale_findings.METHOD_LABELS
    raise RuntimeError(f"METHOD_KWARGS and METHOD_LABELS disagree: {sorted(set(METHOD_LABELS) ^ (set(METHOD_KWARGS) | set(PIXEL_RESIZES)))}")
#: the methods of the image grid (scenes, 4x, image 0)
GRID = ("truth", BICUBIC, "usdu", "multidiffusion", "multidiffusion+cn", "mixture+cn")


# ------------------------------------------------------------------------------------------ the truth


class Truth:
    """One ground-truth image: uint8 pixels, its prompt, and for scenes the generator's labels."""

    def __init__(self, dataset: str, image: int, size: tuple[int, int]):
        self.dataset, self.image = dataset, image
        if dataset == "scenes":
            from mdtools.toy.scenes import make_scene, sample_params

            arr, self.labels = make_scene(sample_params(np.random.default_rng(SCENE_SEED0 + image)), *size)
            self.prompt = self.labels.prompt
        else:
            from mdtools.toy.data import SOURCES, load_source, split_source

            src = SOURCES[image % len(SOURCES)]
            stripe = split_source(load_source(src))[1]
            rng = np.random.default_rng(TEXTURE_SEED0 + image)
            h, w = size
            y, x = int(rng.integers(stripe.shape[0] - h + 1)), int(rng.integers(stripe.shape[1] - w + 1))
            arr, self.labels, self.prompt = stripe[y:y + h, x:x + w], None, ""
            self.source = src.name
        self.pil = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
        self.tensor = pil_tensor(self.pil)

    def low(self, factor: int) -> Image.Image:
        w, h = self.pil.size
        return self.pil.resize((w // factor, h // factor), Image.BICUBIC)


def pil_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()


# ------------------------------------------------------------------------------------------ metrics


def grid_lines(height: int, width: int, tile: int) -> dict[str, tuple[int, ...]]:
    """Tile borders of a grid of `tile` px squares from the top left (Ultimate SD Upscale, naive tiles)."""
    return {"x": tuple(range(tile, width, tile)), "y": tuple(range(tile, height, tile))}


def measure(out: torch.Tensor, truth: Truth, lines: Any, plan: Any) -> dict[str, float]:
    """Every metric of one output against its truth (NaN with the reason in `notes` where one cannot run)."""
    from mdtools.metrics import evaluate, psnr, seam_structure
    from mdtools.metrics.features import feature_maps, lpips_distance
    from mdtools.metrics.scene_analysis import detect_horizon
    from mdtools.metrics.scene_coherence import disc_count

    m: dict[str, float] = {}
    notes: list[str] = []
    m["metric.psnr"] = float(psnr(out, truth.tensor))
    m["metric.ssim"] = ssim_wang(out, truth.tensor)
    m["metric.lpips_feat"] = float(lpips_distance(feature_maps(out), feature_maps(truth.tensor))[0])
    try:
        cd = evaluate(out, None, metrics=["color_drift"], reference=truth.tensor)["color_drift"]  # worst of a fixed 4 x 4 grid
        m["metric.color_drift"] = float(cd)
        m["metric.color_drift_worst"] = float(worst_tile(cd.details))
    except Exception as exc:  # the metric lands with helper "up"; a row says why it is missing
        m["metric.color_drift"] = m["metric.color_drift_worst"] = math.nan
        notes.append(f"color_drift: {type(exc).__name__}: {exc}")
    s = seam_structure(out, lines)
    m["metric.seam_structure"] = float(s)
    if truth.labels is not None:
        n = float(disc_count(out))
        m["metric.disc_count"], m["metric.one_disc"] = n, float(n == 1)
        m["metric.horizon_err"] = horizon_error(detect_horizon(out), truth.labels.horizon)
    if notes:
        m["notes"] = "; ".join(notes)  # type: ignore[assignment]
    return m


def ssim_wang(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM as Wang et al. 2004 (Gaussian 11 x 11 window, sigma 1.5, data range 1, mean over channels), by scikit-image.

    The same definition as `mdtools.metrics.ssim` (torchmetrics) up to the border handling, at a
    thirtieth of its time on this CPU (that one computes in float64 through torchmetrics: 2 s per image).
    """
    from skimage.metrics import structural_similarity

    x, y = (t[0].permute(1, 2, 0).double().numpy() for t in (a, b))
    return float(structural_similarity(x, y, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def worst_tile(details: dict) -> float:
    """The worst tile's color_drift from the Score's details (the key names the metric's module gives)."""
    for key in ("worst_tile", "worst", "max_tile", "tile_max"):
        if key in details:
            return float(details[key])
    raise KeyError(f"no worst-tile value in color_drift details {sorted(details)}")


def horizon_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |detected - true| horizon in px over the columns where one is found; NaN when under half are."""
    found = np.asarray(found, dtype=float)
    ok = ~np.isnan(found)
    return float(np.mean(np.abs(found[ok] - truth[ok]))) if ok.mean() >= 0.5 else math.nan


# ------------------------------------------------------------------------------------------ runs


def provenance() -> dict[str, Any]:
    """Commit and dirty flag of the checkout (tracked files outside results/ count), versions, device."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else "unknown"

    import diffusers

    from mdtools.instrument import device_name

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"prov.commit": git("rev-parse", "HEAD"), "prov.dirty": bool(dirty), "prov.torch": torch.__version__,
            "prov.diffusers": diffusers.__version__, "prov.device": device_name(torch.device("cpu")),
            "prov.threads": torch.get_num_threads()}


def load_now() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_key(row: dict[str, Any]) -> tuple:
    return (row["dataset"], int(row["factor"]), row["method"], int(row["image"]), int(row["seed"]))


def done_keys(path: Path, retry_failed: bool) -> set[tuple]:
    if not path.is_file():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("status") == "ok" or not retry_failed:
                keys.add(run_key(row))
    return keys


def append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_plain) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)


def pixel_resize(low: Image.Image, size: tuple[int, int], label: str) -> tuple[torch.Tensor, dict[str, Any]]:
    rec = Recorder("cpu")
    with rec.phase("total"):
        out = low.resize((size[1], size[0]), PIXEL_RESIZES[label])
    ph = rec.record.phases["total"]
    return pil_tensor(out), {"time.total": ph.seconds, "peak_mb.total": (ph.peak_rss or 0) / 2**20,
                             "count.unet_evaluations": 0}


def diffusion(md: Any, low: Image.Image, truth: Truth, label: str, factor: int, seed: int, settings: dict[str, Any],
              controlnet: Any) -> tuple[torch.Tensor, dict[str, Any], Any, Any]:
    """One upscale through mdtools.upscale; (output, cost columns, seam lines, plan)."""
    from mdtools.upscale import upscale

    kw = dict(METHOD_KWARGS[label])
    if kw.get("controlnet") == CONTROLNET and controlnet is not None:
        kw["controlnet"] = controlnet  # loaded once, passed as the object
    res = upscale(md, low, scale=factor, strength=settings["strength"], steps=settings["steps"],
                  guidance_scale=settings["guidance"], seed=seed, prompt=truth.prompt, overlap=settings["overlap"],
                  upscaler="lanczos", progress=False, **kw)
    rec = res.record
    phases = rec.get("phases", {})
    cols: dict[str, Any] = {f"time.{k}": v.get("seconds") for k, v in phases.items()}
    peaks = [v.get("peak_allocated") or v.get("peak_rss") for v in phases.values()]
    cols["peak_mb.total"] = max((p for p in peaks if p), default=0) / 2**20
    counts = rec.get("counts", {})
    cols["count.unet_evaluations"] = counts.get("unet_evaluations", counts.get("model_evaluations"))
    cols["count.vae_encodes"], cols["count.vae_decodes"] = counts.get("vae_encodes"), counts.get("vae_decodes")
    cols["count.tiles"] = counts.get("tiles")
    if METHOD_KWARGS[label]["method"] in ("usdu", "naive_tiles"):
        lines = grid_lines(*truth.tensor.shape[-2:], tile_size(rec, md))
    else:
        lines = res.plan
    return res.tensor, cols, lines, res.plan


def tile_size(rec: dict, md: Any) -> int:
    """The pixel tile of an image-space method from its record (the model's window when it does not say)."""
    desc = rec.get("upscale", {}).get("method", {})
    params = desc.get("params", desc) if isinstance(desc, dict) else {}
    for key in ("tile_width", "tile", "tile_size"):
        if isinstance(params.get(key), int):
            return params[key]
    return int(md.native_window)


def load_models(methods: list[str]) -> tuple[Any, Any]:
    if all(m in PIXEL_RESIZES for m in methods):
        return None, None
    from mdtools import MultiDiffusionPipeline
    from mdtools.toy import EMBEDDED_CONTROLNETS

    md = MultiDiffusionPipeline.from_pretrained(MODEL)
    cn = None
    if any(METHOD_KWARGS.get(m, {}).get("controlnet") for m in methods) and (EMBEDDED_CONTROLNETS[CONTROLNET] / "config.json").is_file():
        from diffusers import ControlNetModel

        cn = ControlNetModel.from_pretrained(EMBEDDED_CONTROLNETS[CONTROLNET], use_safetensors=True)
    return md, cn


def plan_cells(datasets: list[str], factors: list[int], seeds: int, methods: list[str]) -> list[tuple[str, int, int, str]]:
    """(dataset, factor, seed, method) in run order: factor, then seed, so a stopped run leaves whole seeds."""
    return [(ds, f, s, m) for f in factors for s in range(seeds) for ds in datasets for m in methods]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/upscale")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--factors", nargs="+", type=int, default=[4, 2], choices=[2, 4])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=list(METHOD_LABELS), choices=METHOD_LABELS)
    ap.add_argument("--strength", type=float, default=DEFAULTS["strength"])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--guidance", type=float, default=DEFAULTS["guidance"])
    ap.add_argument("--overlap", type=int, default=DEFAULTS["overlap"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared, oversubscribed machine more threads only spin)")
    ap.add_argument("--retry-failed", action="store_true")
    ap.add_argument("--no-tables", action="store_true", help="do not render summary / comparisons / findings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    runs = out / "runs.jsonl"
    settings = {"strength": args.strength, "steps": args.steps, "guidance": args.guidance, "overlap": args.overlap}
    prov = provenance()
    if prov["prov.dirty"]:
        print("warning: the checkout has uncommitted changes; rows are flagged prov.dirty (commit before the committed tables)")
    done = done_keys(runs, args.retry_failed)
    todo = [c for c in plan_cells(args.datasets, args.factors, args.seeds, args.methods)
            if (c[0], c[1], c[3], c[2], c[2]) not in done]
    print(f"{len(todo)} runs to do ({len(done)} in {runs})")
    if not todo:
        return finish(out, args)
    md, cn = load_models(sorted({c[3] for c in todo}))
    truths: dict[tuple[str, int], Truth] = {}
    from tqdm.auto import tqdm

    for ds, factor, seed, label in tqdm(todo, desc="upscale runs", unit="run"):
        key = (ds, seed)
        if key not in truths:
            truths[key] = Truth(ds, seed, SIZES[ds])
        truth = truths[key]
        row: dict[str, Any] = {"dataset": ds, "factor": factor, "method": label, "image": seed, "seed": seed,
                               "height": SIZES[ds][0], "width": SIZES[ds][1], "prompt": truth.prompt,
                               **({"source": truth.source} if ds == "textures" else {}), **settings, **prov,
                               "prov.load_before": load_now(), "prov.started": dt.datetime.now(dt.timezone.utc).isoformat()}
        try:
            low = truth.low(factor)
            if label in PIXEL_RESIZES:
                tensor, cols = pixel_resize(low, SIZES[ds], label)
                lines = grid_lines(*SIZES[ds], 128 if md is None else int(md.native_window))
                plan = None
            else:
                tensor, cols, lines, plan = diffusion(md, low, truth, label, factor, seed, settings, cn)
            row.update(cols)
            row.update(measure(tensor, truth, lines, plan))
            row["status"] = "ok"
            if seed == 0:
                Image.fromarray((tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                    out / "images" / f"{ds}_{factor}x_{label}.png")
                truth.pil.save(out / "images" / f"{ds}_{factor}x_truth.png")
        except Exception as exc:  # a failing run is a row with its error; the others go on
            row["status"] = "error"
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=6)
        row["prov.load_after"] = load_now()
        append(runs, row)
    return finish(out, args)


def finish(out: Path, args: argparse.Namespace) -> int:
    if not args.no_tables and (out / "runs.jsonl").is_file():
        for p in write_tables(out):
            print(f"wrote {p}")
    write_grid(out)
    return 0


def write_grid(out: Path, dataset: str = "scenes", factor: int = 4) -> Path | None:
    """A small PNG: image 0 of the GRID methods (truth first), side by side, each titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [(m, out / "images" / f"{dataset}_{factor}x_{m}.png") for m in GRID]
    paths = [(m, p) for m, p in paths if p.is_file()]
    if len(paths) < 2:
        return None
    fig, axes = plt.subplots(1, len(paths), figsize=(2.0 * len(paths), 1.25))
    for ax, (m, p) in zip(axes, paths):
        ax.imshow(Image.open(p).convert("RGB"), interpolation="nearest")
        ax.set_title(m, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    dst = out / "grid.png"
    fig.savefig(dst, dpi=80)
    plt.close(fig)
    return dst


if __name__ == "__main__":
    raise SystemExit(main())
