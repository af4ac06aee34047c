"""Train the toy Stable Diffusion from scratch on CPU: `mdtools train-toy --out DIR [--data scenes]`.

Two phases, as Stable Diffusion itself was made: an AutoencoderKL (factor 8, 4 latent
channels) is trained on image crops and frozen, then a text-conditioned UNet and a small
CLIP text encoder learn epsilon prediction on its scaled latents. The result is saved as a
diffusers StableDiffusionPipeline folder (safetensors only) that loads offline.

`--data textures` (the default, mdtools/assets/toy-sd) trains on crops of scikit-image
pictures (mdtools/toy/data.py); `--data scenes` (mdtools/assets/toy-scenes) on procedural
landscapes with ground-truth labels (mdtools/toy/scenes.py, mdtools/toy/scene_data.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import check_choice
from .data import PROMPTS, SOURCES, WINDOW, CropSampler
from .tokenizer import EXTRA_WORDS, MAX_LENGTH, build_tokenizer, scene_words, write_vocab_files

log = logging.getLogger("mdtools.toy.train")

# Stable Diffusion's training noise schedule; the saved DDIM config repeats it.
BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS = 0.00085, 0.012, 1000

#: Training data sets: crops of bundled pictures (the texture model) or procedural scenes.
DATASETS: tuple[str, ...] = ("textures", "scenes")


@dataclass
class ToyTrainConfig:
    """Budget and optimisation knobs of train_toy (defaults: well under an hour on 2 CPU cores)."""

    seed: int = 0
    data: str = "textures"  # one of DATASETS
    # One thread: with other jobs on the CPU, OpenMP threads that get preempted at barriers make
    # 2 threads ~6x slower than 1 (seen here: 12 s vs 2 s per VAE step); on an idle machine use 2.
    threads: int = 1
    # SD's 4. 8 halves the compression (VAE PSNR 24.3 -> 28.5 dB, KID 0.0049 -> 0.0017) but,
    # with 1200 / 4000 steps and grass enlarged 1.5x, the texture classifier fell from 69 % to
    # 56 % (MODEL_CARD.md, "A second version"), so the shipped model keeps 4.
    latent_channels: int = 4
    vae_steps: int = 700
    vae_batch: int = 16
    vae_crop: int = 64  # the VAE is convolutional: small crops are 4x cheaper per step...
    vae_full_frac: float = 0.2  # ...but the last steps use full windows so GroupNorm sees real statistics
    vae_full_batch: int = 4
    vae_lr: float = 6e-4
    vae_kl_weight: float = 1e-6
    vae_grad_weight: float = 0.5
    pool_per_class: int = 256
    unet_steps: int = 2000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    prompt_drop: float = 0.1
    # Offset noise (Guttenberg 2023): a per-image, per-channel constant of this std joins the
    # training noise. At t = 1000 SD's schedule keeps 7 % of the signal, and the mean of a 16 x 16
    # latent is only 1/16 noise, so without it the UNet reads each window's mean colour from the
    # starting noise instead of the prompt (texture v1 drew grey materials in the all-class
    # average orange, MODEL_CARD.md). 0 (texture v1's setting) draws no extra random numbers.
    offset_noise: float = 0.0
    # Disc-weighted loss (scenes only): the epsilon error on latent pixels that a sun or moon
    # touches (the disc mask pooled to 1/8, dilated by one latent pixel) counts (1 + w) times.
    # Why: a disc of radius 6-10 px covers about 4 of a window's 256 latent pixels, so an
    # unweighted MSE barely notices a missing sun; the first scenes model drew one in 73 % of
    # windows (toy-scenes/MODEL_CARD.md). 0 keeps the plain loss and draws no extra numbers.
    disc_weight: float = 0.0
    log_every: int = 50


# ----------------------------------------------------------------------------- models


def build_vae(latent_channels: int = 4) -> "Any":
    """A small AutoencoderKL: 4 blocks (factor 8), `latent_channels` channels, real GroupNorms."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=WINDOW,
        scaling_factor=1.0,  # replaced by the measured value after VAE training
        force_upcast=False,
    )


def build_unet(latent_channels: int = 4) -> "Any":
    """A small UNet2DConditionModel; cross-attention only at 8x8 and 4x4 latent resolution."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=WINDOW // 8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=(32, 80, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,  # diffusers reads this as the number of heads
        norm_num_groups=16,
    )


def build_text_encoder(vocab_size: int, bos: int, eos: int, pad: int) -> "Any":
    """A 2-layer, 64-wide CLIPTextModel whose context equals the tokenizer's MAX_LENGTH."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=64,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return CLIPTextModel(cfg)


def build_scheduler() -> "Any":
    """Stable Diffusion's DDIM inference config over the training betas (scaled_linear)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def n_params(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- helpers


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % (short runs need the decay to settle)."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0


def _grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between finite differences: penalises blur on textures more than plain L1 does."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def _progress(iterable: Any, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, dynamic_ncols=True, mininterval=2.0)


# ----------------------------------------------------------------------------- phases


def train_vae(cfg: ToyTrainConfig, sampler: Any, history: dict[str, list], init: Any = None) -> Any:
    """Phase 1: train the autoencoder on augmented crops (L1 + gradient L1 + small KL).

    init: an AutoencoderKL to continue training (warm start) instead of a fresh one.
    """
    vae = (init if init is not None else build_vae(cfg.latent_channels)).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    full_from = int(cfg.vae_steps * (1.0 - cfg.vae_full_frac))
    running: list[float] = []
    bar = _progress(range(cfg.vae_steps), "vae")
    for step in bar:
        size, bs = (cfg.vae_crop, cfg.vae_batch) if step < full_from else (WINDOW, cfg.vae_full_batch)
        x = _to_tensor(sampler.sample(bs, size)[0])
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _lr_factor(step, cfg.vae_steps, cfg.warmup)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + cfg.vae_grad_weight * _grad_l1(rec, x) + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running.append(l1.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.vae_steps:
            m = float(np.mean(running))
            history["vae_l1"].append([step + 1, m])
            bar.set_postfix(l1=f"{m:.4f}")
            log.info("vae step %d/%d  l1 %.4f  (crop %d)", step + 1, cfg.vae_steps, m, size)
            running.clear()
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(vae: Any, cfg: ToyTrainConfig, sampler: Any) -> tuple[torch.Tensor, ...]:
    """Encode a fixed pool of augmented full windows once: (mean, std, labels[, disc weights]).

    sampler: a CropSampler or SceneSampler (anything with `n_classes` and `sample(n, size)`).
    With `cfg.disc_weight > 0` (a SceneSampler) a fourth tensor (N, 1, h, w) holds each
    latent pixel's loss weight, 1 + disc_weight where the disc reaches.
    """
    n = cfg.pool_per_class * sampler.n_classes
    weighted = cfg.disc_weight > 0
    if weighted and not hasattr(sampler, "sample_with_discs"):
        raise ValueError(f"disc_weight needs the scenes data (--data scenes), got data={cfg.data!r}")
    means, stds, labels, weights = [], [], [], []
    for _ in _progress(range(0, n, 32), "encode"):
        if weighted:
            imgs, lab, _, masks = sampler.sample_with_discs(32, WINDOW)
            m = torch.from_numpy(masks).float()[:, None]
            f = WINDOW // vae_scale(vae)
            # Any disc pixel marks its latent pixel; one more latent pixel around it, because the
            # decoder's receptive field draws a disc edge from its neighbours too.
            m = torch.nn.functional.max_pool2d(torch.nn.functional.adaptive_max_pool2d(m, f), 3, 1, 1)
            weights.append(1.0 + cfg.disc_weight * m)
        else:
            imgs, lab = sampler.sample(32, WINDOW)
        dist = vae.encode(_to_tensor(imgs)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        labels.append(torch.from_numpy(lab))
    pool = (torch.cat(means)[:n], torch.cat(stds)[:n], torch.cat(labels)[:n])
    return (*pool, torch.cat(weights)[:n]) if weighted else pool


def vae_scale(vae: Any) -> int:
    """Pixels per latent pixel of a diffusers AutoencoderKL (2 ** (blocks - 1))."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def train_unet(
    cfg: ToyTrainConfig,
    pool: tuple[torch.Tensor, ...],
    scaling_factor: float,
    tokenizer: Any,
    history: dict[str, list],
    prompts: Sequence[str] = PROMPTS,
) -> tuple[Any, Any]:
    """Phase 2: train UNet + text encoder on latents (epsilon, min-SNR weighting, EMA, CFG drop).

    The pool's label c means prompts[c]; a fourth pool tensor, if any, weights each latent
    pixel's error (`ToyTrainConfig.disc_weight`).
    """
    from diffusers import DDPMScheduler

    unet = build_unet(cfg.latent_channels).train()
    text_encoder = build_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ).train()
    noise_sched = DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
        beta_schedule="scaled_linear", prediction_type="epsilon",
    )
    alphas_cumprod = noise_sched.alphas_cumprod
    snr_all = alphas_cumprod / (1.0 - alphas_cumprod)
    # Index len(prompts) is the empty prompt used for classifier-free guidance.
    ids = tokenizer(list(prompts) + [""], padding="max_length", max_length=MAX_LENGTH,
                    truncation=True, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in params]
    mean, std, labels = pool[:3]
    pix_weight = pool[3] if len(pool) > 3 else None
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    running: list[float] = []
    bar = _progress(range(cfg.unet_steps), "unet")
    for step in bar:
        idx = torch.randint(0, mean.shape[0], (cfg.unet_batch,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor
        lab = labels[idx].clone()
        lab[torch.rand(cfg.unet_batch, generator=gen) < cfg.prompt_drop] = len(prompts)
        noise = torch.randn(z0.shape, generator=gen)
        if cfg.offset_noise > 0:
            noise = noise + cfg.offset_noise * torch.randn((*z0.shape[:2], 1, 1), generator=gen)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (cfg.unet_batch,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * _lr_factor(step, cfg.unet_steps, cfg.warmup)
        cond = text_encoder(ids[lab])[0]
        pred = unet(zt, t, cond).sample
        # Min-SNR-gamma weighting (Hang et al. 2023) for epsilon targets: faster convergence.
        snr = snr_all[t]
        w = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
        err = (pred - noise).pow(2)
        mse = err.mean(dim=(1, 2, 3))
        if pix_weight is not None:  # a weighted mean per window: the loss scale stays that of the MSE
            pw = pix_weight[idx]
            loss = (w * (err * pw).sum(dim=(1, 2, 3)) / (pw.sum(dim=(1, 2, 3)) * err.shape[1])).mean()
        else:
            loss = (w * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1.0 - decay)
        running.append(mse.mean().item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.unet_steps:
            m = float(np.mean(running))
            history["unet_mse"].append([step + 1, m])
            bar.set_postfix(mse=f"{m:.4f}")
            log.info("unet step %d/%d  eps-mse %.4f", step + 1, cfg.unet_steps, m)
            running.clear()
    with torch.no_grad():  # ship the EMA weights: they sample much better after short training
        for e, p in zip(ema, params):
            p.copy_(e)
    return unet.eval(), text_encoder.eval()


# ----------------------------------------------------------------------------- entry points


def train_toy(
    out_dir: Path,
    *,
    seed: int = 0,
    vae_steps: int | None = None,
    unet_steps: int | None = None,
    threads: int | None = None,
    vae_from: Path | None = None,
    config: ToyTrainConfig | None = None,
    data: str | None = None,
    vae_init: Path | None = None,
) -> Path:
    """Train the toy model from scratch and save it as a diffusers pipeline folder in out_dir.

    vae_from: reuse the VAE of an existing toy model folder (skips phase 1).
    vae_init: start phase 1 from the VAE of this folder and train it `vae_steps` more (warm start).
    data: "textures" (the default) or "scenes"; overrides config.data.
    Returns out_dir. Deterministic for a seed on a given machine/torch build.
    """
    cfg = config or ToyTrainConfig()
    cfg.seed = seed
    if vae_steps is not None:
        cfg.vae_steps = vae_steps
    if unet_steps is not None:
        cfg.unet_steps = unet_steps
    if threads is not None:
        cfg.threads = threads
    if data is not None:
        cfg.data = data
    check_choice("data", cfg.data, DATASETS)
    out_dir = Path(out_dir)
    # Global torch settings are restored afterwards: callers (tests, the CLI) keep theirs.
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train_toy(out_dir, cfg, vae_from, vae_init)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _train_toy(out_dir: Path, cfg: ToyTrainConfig, vae_from: Path | None, vae_init: Path | None = None) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0, cpu0 = time.perf_counter(), time.process_time()
    history: dict[str, list] = {"vae_l1": [], "unet_mse": []}
    if cfg.data == "scenes":
        from .scene_data import SceneSampler

        sampler: Any = SceneSampler(seed=cfg.seed)
        # All scene words in one order that keeps each a single token (tokenizer.scene_words).
        vocab_words: tuple[Sequence[str], Sequence[str]] = scene_words()
    else:
        sampler = CropSampler(seed=cfg.seed)
        vocab_words = (PROMPTS, EXTRA_WORDS)
    if vae_from is not None:
        vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae", use_safetensors=True).eval().requires_grad_(False)
        log.info("reusing VAE from %s", vae_from)
    else:
        init = None
        if vae_init is not None:
            init = AutoencoderKL.from_pretrained(Path(vae_init) / "vae", use_safetensors=True)
            log.info("continuing VAE training from %s", vae_init)
        vae = train_vae(cfg, sampler, history, init)
        # Saved early so a failed UNet phase can restart from it with --vae-from.
        vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    t_vae = time.perf_counter() - t0

    # Seeds the UNet / text-encoder initialisation the same whether the VAE was trained or reused.
    torch.manual_seed(cfg.seed + 2)
    pool = encode_pool(vae, cfg, sampler)
    # As in SD: scale latents to unit variance, measured on sampled posterior latents.
    lat = pool[0] + pool[1] * torch.randn(pool[0].shape, generator=torch.Generator().manual_seed(cfg.seed))
    scaling_factor = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    log.info("latent std %.4f -> scaling_factor %.5f", float(lat.std()), scaling_factor)
    t_pool = time.perf_counter() - t0 - t_vae

    tokenizer = build_tokenizer(*vocab_words)
    unet, text_encoder = train_unet(cfg, pool, scaling_factor, tokenizer, history, sampler.prompts)
    t_total = time.perf_counter() - t0

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    write_vocab_files(out_dir / "tokenizer", *vocab_words)
    sources: Any = [asdict(s) for s in SOURCES]
    if cfg.data == "scenes":
        sources = "mdtools.toy.scenes: a fresh random scene per window (scene_data.SceneSampler, balanced classes)"
    info = {
        "config": asdict(cfg),
        "prompts": list(sampler.prompts),
        "sources": sources,
        "scaling_factor": scaling_factor,
        "parameters": {
            "vae": n_params(vae), "unet": n_params(unet), "text_encoder": n_params(text_encoder),
        },
        "wall_time_s": {"vae": round(t_vae, 1), "encode_pool": round(t_pool, 1), "total": round(t_total, 1)},
        # CPU seconds of this process: unlike wall time, not inflated by other jobs on the machine.
        "cpu_time_s": round(time.process_time() - cpu0, 1),
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "history": history,
    }
    if vae_from is not None or vae_init is not None:  # provenance of a VAE trained in an earlier run
        info["vae_from" if vae_from is not None else "vae_init"] = str(vae_from or vae_init)
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    log.info("saved toy model to %s in %.1f min", out_dir, t_total / 60)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: `mdtools train-toy --out DIR [--data textures|scenes] [--seed N] [--vae-steps N] [--unet-steps N]`."""
    d = ToyTrainConfig()
    ap = argparse.ArgumentParser(prog="mdtools train-toy", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (diffusers layout)")
    ap.add_argument("--data", choices=DATASETS, default=d.data,
                    help="textures: crops of bundled pictures (toy-sd); scenes: procedural landscapes (toy-scenes)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--vae-steps", type=int, default=d.vae_steps)
    ap.add_argument("--unet-steps", type=int, default=d.unet_steps)
    ap.add_argument("--pool-per-class", type=int, default=d.pool_per_class,
                    help="encoded training windows per class for the UNet phase")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    ap.add_argument("--latent-channels", type=int, default=d.latent_channels, help="VAE latent channels (SD: 4)")
    ap.add_argument("--offset-noise", type=float, default=d.offset_noise,
                    help="std of a per-channel constant added to the training noise (0: off; scenes model: 0.1)")
    ap.add_argument("--unet-batch", type=int, default=d.unet_batch)
    ap.add_argument("--disc-weight", type=float, default=d.disc_weight,
                    help="extra loss weight on latent pixels a sun or moon touches (scenes only; 0: off)")
    ap.add_argument("--vae-from", type=Path, default=None, help="reuse the VAE of this toy model folder")
    ap.add_argument("--vae-init", type=Path, default=None, help="continue training the VAE of this toy model folder")
    args = ap.parse_args(argv)
    if args.latent_channels < 1:
        ap.error(f"--latent-channels must be >= 1 (SD uses 4), got {args.latent_channels}")
    if args.vae_from is not None and args.vae_init is not None:
        ap.error("give --vae-from (reuse a VAE) or --vae-init (continue training one), not both")
    if not 0.0 <= args.offset_noise <= 1.0:
        ap.error(f"--offset-noise must lie in [0, 1] (e.g. 0.1), got {args.offset_noise}")
    if args.disc_weight < 0 or (args.disc_weight > 0 and args.data != "scenes"):
        ap.error(f"--disc-weight must be >= 0 and needs --data scenes (e.g. 10), got {args.disc_weight} with --data {args.data}")
    if args.unet_batch < 1:
        ap.error(f"--unet-batch must be >= 1 (e.g. 32), got {args.unet_batch}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = ToyTrainConfig(pool_per_class=args.pool_per_class, latent_channels=args.latent_channels, data=args.data,
                         offset_noise=args.offset_noise, unet_batch=args.unet_batch, disc_weight=args.disc_weight)
    train_toy(args.out, seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
              threads=args.threads, vae_from=args.vae_from, config=cfg, vae_init=args.vae_init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
