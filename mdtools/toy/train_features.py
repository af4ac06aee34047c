"""Train the offline feature network shipped in mdtools/assets/feature-net (MODEL_CARD.md there).

    python -m mdtools.toy.train_features --out mdtools/assets/feature-net

Multi-head classification on two kinds of 64 px crops, half of each batch each:
  * procedural scenes (`mdtools.toy.scenes`, rendered 64-128 px high and 1-2.2x as wide, a
    random 64 px crop): sky type (3), ground type (4), terrain (2), and whether the disc's
    centre lies in the crop (2);
  * scikit-image textures (`mdtools.toy.data.CropSampler`, training regions only): material (7).
Augmentation: random crops, left-right flips (textures also 90-degree rotations and scale
jitter), and on a quarter of the crops each a Gaussian blur (sigma 0.3-1.5 px) and pixel noise
(sd up to 0.03), so the features also describe blurry generator output.

Held-out evaluation: scenes from another seed stream (one crop per scene) and crops of the
texture stripes the toy model never trains on; accuracy per head with Wilson 95% intervals.
Writes model.safetensors, config.json and training_info.json to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics.features import BACKBONE, CONFIG_FILE, DEFAULT_CHANNELS, DEFAULT_DEPTHS, WEIGHTS_FILE, FeatureNet, imagenet_normalize
from ..stats import wilson_interval
from .scenes import GROUNDS, SKIES, TERRAINS, make_scene, sample_params

SCENE_HEADS = ("sky", "ground", "terrain", "disc")
HEAD_LABELS: dict[str, list[str]] = {
    "sky": list(SKIES), "ground": list(GROUNDS), "terrain": list(TERRAINS), "disc": ["absent", "present"],
}
CROP = 64
SCENE_HEIGHTS = (64, 128)  # rendered scene height range (px): scale jitter
SCENE_ASPECT = (1.0, 2.2)  # width / height range: wide scenes give crops without the disc
HELDOUT_SCENE_SEED = 7_000_001  # far from the training seeds (0, 1, ...)


def _material_labels() -> list[str]:
    from .data import PROMPTS

    return list(PROMPTS)


class ScenePool:
    """Rendered scenes with their labels; `refresh(k)` replaces the k oldest with new ones (more variety, bounded memory)."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.items: list[tuple[np.ndarray, tuple[int, int, int], tuple[float, float]]] = [self._render() for _ in range(n)]
        self._next = 0

    def _render(self) -> tuple[np.ndarray, tuple[int, int, int], tuple[float, float]]:
        h = int(self.rng.integers(SCENE_HEIGHTS[0], SCENE_HEIGHTS[1] + 1))
        w = max(CROP, int(round(h * self.rng.uniform(*SCENE_ASPECT))))
        img, lab = make_scene(sample_params(self.rng), h, w)
        cls = (SKIES.index(lab.sky), GROUNDS.index(lab.ground), TERRAINS.index(lab.terrain))
        return (img * 255 + 0.5).astype(np.uint8), cls, lab.disc_center

    def refresh(self, k: int) -> None:
        for _ in range(k):
            self.items[self._next] = self._render()
            self._next = (self._next + 1) % len(self.items)

    def sample(self, n: int, rng: np.random.Generator, *, indices: list[int] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """n random CROP x CROP crops (n, CROP, CROP, 3) float32 and their labels per head."""
        idx = indices if indices is not None else rng.integers(len(self.items), size=n).tolist()
        crops, labels = [], {k: [] for k in SCENE_HEADS}
        for i in idx:
            img, cls, (cy, cx) = self.items[i]
            h, w = img.shape[:2]
            y, x = int(rng.integers(h - CROP + 1)), int(rng.integers(w - CROP + 1))
            crop = img[y:y + CROP, x:x + CROP]
            if rng.random() < 0.5:  # a mirrored scene has the same labels
                crop = crop[:, ::-1]
            crops.append(crop)
            for k, v in zip(SCENE_HEADS[:3], cls):
                labels[k].append(v)
            labels["disc"].append(int(y <= cy < y + CROP and x <= cx < x + CROP))
        return (np.stack(crops).astype(np.float32) / 255.0, {k: np.asarray(v, dtype=np.int64) for k, v in labels.items()})


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one (1, 3, H, W) image, reflect padding."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    x = nn.functional.conv2d(nn.functional.pad(x, (r, r, 0, 0), mode="reflect"), k, groups=3)
    return nn.functional.conv2d(nn.functional.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(-1, -2), groups=3)


def degrade(x: torch.Tensor, rng: np.random.Generator, p: float = 0.25) -> torch.Tensor:
    """Blur (sigma 0.3-1.5 px) and add noise (sd 0-0.03) to a random share p of the crops, each independently."""
    x = x.clone()
    for i in range(x.shape[0]):
        if rng.random() < p:
            x[i:i + 1] = _gaussian_blur(x[i:i + 1], float(rng.uniform(0.3, 1.5)))
        if rng.random() < p:
            x[i] += float(rng.uniform(0.0, 0.03)) * torch.from_numpy(rng.standard_normal(x[i].shape).astype(np.float32))
    return x.clamp(0.0, 1.0)


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()


def heldout_sets(n_scenes: int = 1000, n_texture_per_class: int = 100) -> dict[str, Any]:
    """Held-out crops: one crop of each of n_scenes scenes from the held-out stream, and texture crops of the held-out stripes."""
    from .data import holdout_crops

    pool = ScenePool(n_scenes, HELDOUT_SCENE_SEED)
    scenes, labels = pool.sample(n_scenes, np.random.default_rng(HELDOUT_SCENE_SEED + 1), indices=list(range(n_scenes)))
    tex, tex_labels = holdout_crops(n_texture_per_class, size=CROP)
    return {"scenes": scenes, "scene_labels": labels, "textures": tex, "texture_labels": tex_labels}


def evaluate_heads(net: FeatureNet, sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accuracy per head on the held-out sets: {head: {accuracy, n, ci95: [lo, hi], chance}}."""
    net.eval()
    out: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        def predict(x: np.ndarray) -> dict[str, np.ndarray]:
            preds: dict[str, list[np.ndarray]] = {}
            for s in range(0, len(x), 200):
                lg = net.logits(imagenet_normalize(_to_tensor(x[s:s + 200])))
                for k, v in lg.items():
                    preds.setdefault(k, []).append(v.argmax(1).numpy())
            return {k: np.concatenate(v) for k, v in preds.items()}

        ps, pt = predict(sets["scenes"]), predict(sets["textures"])
    for head in SCENE_HEADS:
        y = sets["scene_labels"][head]
        out[head] = _acc(ps[head], y)
    out["material"] = _acc(pt["material"], sets["texture_labels"])
    return out


def _acc(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    k, n = int((pred == y).sum()), len(y)
    counts = np.bincount(y)
    return {"accuracy": k / n, "n": n, "ci95": list(wilson_interval(k, n)), "majority_class_rate": float(counts.max() / n)}


def train(out: Path, *, steps: int = 3000, batch: int = 32, lr: float = 2e-3, seed: int = 0, pool: int = 800,
          refresh: int = 2, log_every: int = 100, eval_scenes: int = 1000, eval_textures: int = 100) -> dict[str, Any]:
    """Train, evaluate on held-out crops, and write the network to `out`; returns the training summary."""
    from safetensors.torch import save_file

    from .data import CropSampler

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    materials = _material_labels()
    heads = {k: len(v) for k, v in HEAD_LABELS.items()} | {"material": len(materials)}
    net = FeatureNet(DEFAULT_CHANNELS, DEFAULT_DEPTHS, heads)
    n_params = sum(p.numel() for p in net.parameters())
    net = net.to(memory_format=torch.channels_last)  # ~25 % faster convolutions on CPU
    scenes = ScenePool(pool, seed)
    textures = CropSampler(seed)
    t_data = time.perf_counter() - t0
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    ce = nn.CrossEntropyLoss()
    half = batch // 2
    log: list[dict[str, float]] = []
    run_loss: dict[str, float] = {}
    t_train = time.perf_counter()
    net.train()
    for step in range(1, steps + 1):
        scenes.refresh(refresh)
        xs, ys = scenes.sample(half, rng)
        xt, yt = textures.sample(batch - half, CROP)
        x = degrade(torch.cat([_to_tensor(xs), _to_tensor(xt)]), rng)
        x = imagenet_normalize(x).contiguous(memory_format=torch.channels_last)
        z = net.pooled(x)
        losses = {k: ce(net.heads[k](z[:half]), torch.from_numpy(ys[k])) for k in SCENE_HEADS}
        losses["material"] = ce(net.heads["material"](z[half:]), torch.from_numpy(yt))
        loss = sum(losses.values()) / len(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in losses.items():
            run_loss[k] = run_loss.get(k, 0.0) + v.item() / log_every
        if step % log_every == 0 or step == steps:
            el = time.perf_counter() - t_train
            log.append({"step": step, "seconds": round(el, 1), **{k: round(v, 4) for k, v in run_loss.items()}})
            eta = el / step * (steps - step)
            print(f"step {step}/{steps}  {el:.0f}s (eta {eta:.0f}s)  " + "  ".join(f"{k} {v:.3f}" for k, v in run_loss.items()), flush=True)
            run_loss = {}
    train_seconds = time.perf_counter() - t_train
    net = net.to(memory_format=torch.contiguous_format).eval()
    t_eval = time.perf_counter()
    acc = evaluate_heads(net, heldout_sets(eval_scenes, eval_textures))
    eval_seconds = time.perf_counter() - t_eval
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "architecture": BACKBONE})
    (out / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; package data must be readable by every user
    config = {
        "architecture": BACKBONE, "channels": list(DEFAULT_CHANNELS), "depths": list(DEFAULT_DEPTHS), "heads": heads,
        "head_labels": {**HEAD_LABELS, "material": materials}, "layers": [f"stage{i + 1}" for i in range(len(DEFAULT_CHANNELS))],
        "input": "RGB in [0, 1], ImageNet-normalised (mean 0.485 0.456 0.406, std 0.229 0.224 0.225)",
        "train_crop": CROP, "pooled_dim": DEFAULT_CHANNELS[-1],
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    info = {
        "command": f"python -m mdtools.toy.train_features --out {out} --steps {steps} --batch {batch} --lr {lr} --seed {seed}",
        "steps": steps, "batch": batch, "lr": lr, "seed": seed, "scene_pool": pool, "scene_refresh_per_step": refresh,
        "scenes_seen": pool + refresh * steps, "parameters": n_params,
        "weights_bytes": (out / WEIGHTS_FILE).stat().st_size, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "seconds": {"data_setup": round(t_data, 1), "train": round(train_seconds, 1),
                                                "heldout_eval": round(eval_seconds, 1), "total": round(time.perf_counter() - t0, 1)},
        "heldout": acc, "loss_log": log,
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ------------------------------------------------------------------------- validation

VAL_H, VAL_WINDOWS = 128, 5  # panoramas 128 x 640: five 128 px windows = five crops, ten pairs


def _degrade_val(img: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian blur sigma 1.5 px plus noise sd 0.02 (benchmarks/coherence_validation.py's stand-in for a small model)."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(img, (1.5, 1.5, 0)) + np.random.default_rng(seed).normal(0, 0.02, img.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def validation_panoramas(seed: int) -> dict[str, np.ndarray]:
    """One coherent 128 x 640 scene, and two panoramas of five independent 128 px windows: any scene
    per window ("independent"), and scenes of the coherent one's prompt ("same_prompt", naive tiling)."""
    rng = np.random.default_rng([seed, 11])
    params = sample_params(rng)
    coherent = make_scene(params, VAL_H, VAL_H * VAL_WINDOWS)[0]
    indep = np.concatenate([make_scene(sample_params(rng), VAL_H, VAL_H)[0] for _ in range(VAL_WINDOWS)], axis=1)
    same = np.concatenate([make_scene(sample_params(rng, sky=params.sky, ground=params.ground, terrain=params.terrain), VAL_H, VAL_H)[0]
                           for _ in range(VAL_WINDOWS)], axis=1)
    return {"coherent": coherent, "independent": indep, "same_prompt": same}


def validate(out_csv: Path, *, n: int = 20, kid_replicates: int = 10, kid_panoramas: int = 8) -> list[dict[str, Any]]:
    """Intra-LPIPS / Intra-Style (feature net) of coherent vs independent-window panoramas, and KID sanity sets.

    Per metric and panorama kind: mean over n panoramas with a 95% percentile-bootstrap interval,
    and the paired difference to the coherent panorama of the same seed. KID: `kid_replicates`
    independent replicates, each `kid_panoramas` panoramas' crops vs as many fresh single-window
    scenes; mean over replicates with a 95% bootstrap interval.
    """
    import csv

    from ..metrics import functional as F
    from ..metrics.features import load_feature_net, pooled_features
    from ..stats import bootstrap_ci

    net = load_feature_net()
    vals: dict[tuple[str, int, str], list[float]] = {}
    t0 = time.perf_counter()
    for i in range(n):
        for kind, img in validation_panoramas(i).items():
            for blur in (0, 1):
                x = _degrade_val(img, 1000 + i) if blur else img
                for name, fn in (("intra_lpips_featnet", lambda im: F.intra_lpips(im, crop=VAL_H, backbone="mdtools-feature-net")),
                                 ("intra_style_featnet", lambda im: F.intra_style(im, crop=VAL_H, backbone="mdtools-feature-net")),
                                 ("intra_color", lambda im: F.intra_color(im, crop=VAL_H))):
                    vals.setdefault((kind, blur, name), []).append(float(fn(x)))
    rows: list[dict[str, Any]] = []
    for (kind, blur, name), v in vals.items():
        ci = bootstrap_ci(v)
        row = {"block": "intra", "kind": kind, "blur": blur, "metric": name, "n": ci.n, "mean": ci.estimate, "ci_lo": ci.lo,
               "ci_hi": ci.hi, "median": float(np.median(v))}
        if kind != "coherent":
            d = np.asarray(v) - np.asarray(vals[("coherent", blur, name)])
            dci = bootstrap_ci(d)
            row.update({"diff_vs_coherent": dci.estimate, "diff_ci_lo": dci.lo, "diff_ci_hi": dci.hi,
                        "share_above_coherent": float((d > 0).mean())})
        rows.append(row)
    # KID: each set vs fresh single-window scenes (the reference a user would generate with window-sized calls)
    from .data import holdout_crops

    tex = holdout_crops(max(2, -(-kid_panoramas * VAL_WINDOWS // 7)), size=VAL_H)[0]
    kid_vals: dict[str, list[float]] = {}
    for r in range(kid_replicates):
        rng = np.random.default_rng([r, 23])
        m = kid_panoramas * VAL_WINDOWS
        ref = [make_scene(sample_params(rng), VAL_H, VAL_H)[0] for _ in range(m)]
        pans = [validation_panoramas(10_000 + r * kid_panoramas + k) for k in range(kid_panoramas)]
        single = [make_scene(sample_params(rng), VAL_H, VAL_H)[0] for _ in range(m)]
        sets = {
            "single_windows": single,
            "single_windows_blurred": [_degrade_val(im, 2000 + k) for k, im in enumerate(single)],
            "coherent": [p["coherent"] for p in pans],
            "independent": [p["independent"] for p in pans],
            "textures": list(tex[:m]),
        }
        fr = pooled_features(ref, net=net)
        for kind, imgs in sets.items():
            crops = [F.sliding_crops(im, VAL_H) for im in imgs]
            fx = pooled_features(crops, net=net)
            kid_vals.setdefault(kind, []).append(F.kid_from_features(fx, fr, subset_size=m // 2, n_subsets=100, seed=r)[0])
    for kind, v in kid_vals.items():
        ci = bootstrap_ci(v)
        rows.append({"block": "kid_vs_single_windows", "kind": kind, "blur": int(kind.endswith("blurred")), "metric": "kid_featnet",
                     "n": ci.n, "mean": ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi, "median": float(np.median(v))})
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    keys = ["block", "kind", "blur", "metric", "n", "mean", "ci_lo", "ci_hi", "median", "diff_vs_coherent", "diff_ci_lo",
            "diff_ci_hi", "share_above_coherent"]
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in keys})
    print(f"wrote {out_csv} ({len(rows)} rows) in {time.perf_counter() - t0:.0f}s")
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    """The tables quoted in docs/metrics.md."""
    lines = ["| panorama | blur | metric | n | mean [95% CI] | paired diff vs coherent [95% CI] | share above coherent |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["block"] != "intra":
            continue
        d = (f"{r['diff_vs_coherent']:.4g} [{r['diff_ci_lo']:.4g}, {r['diff_ci_hi']:.4g}]" if "diff_vs_coherent" in r else "-")
        sh = f"{r['share_above_coherent']:.0%}" if "share_above_coherent" in r else "-"
        lines.append(f"| {r['kind']} | {r['blur']} | {r['metric']} | {r['n']} | {r['mean']:.4g} [{r['ci_lo']:.4g}, {r['ci_hi']:.4g}] | {d} | {sh} |")
    lines += ["", "| set vs single-window scenes | replicates | KID mean [95% CI] |", "|---|---|---|"]
    for r in rows:
        if r["block"] == "kid_vs_single_windows":
            lines.append(f"| {r['kind']} | {r['n']} | {r['mean']:.4g} [{r['ci_lo']:.4g}, {r['ci_hi']:.4g}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdtools.toy.train_features", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder of the weights (e.g. mdtools/assets/feature-net)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32, help="crops per step, half scenes, half textures")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--validate", type=Path, metavar="CSV",
                    help="instead of training: validate the shipped network on scene panoramas and write CSV "
                         "(e.g. results/bench/features_validation.csv)")
    ap.add_argument("--n", type=int, default=20, help="panoramas per kind for --validate")
    args = ap.parse_args(argv)
    for name in ("steps", "batch", "threads", "n"):
        if getattr(args, name) < 1 or (name == "batch" and args.batch < 2):
            ap.error(f"--{name} must be a positive integer (batch at least 2); got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    if args.validate is not None:
        print(_markdown(validate(args.validate, n=args.n)))
        return 0
    if args.out is None:
        ap.error("--out is required for training (e.g. --out mdtools/assets/feature-net)")
    info = train(args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    print(json.dumps({"seconds": info["seconds"], "heldout": {k: round(v["accuracy"], 4) for k, v in info["heldout"].items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
