"""Before a sweep starts: its work (model evaluations and more, from each run's method) and time.

The counts come from the runs' plans, no model loaded; the time multiplies them by seconds
per unit measured on the first run's model (`calibrate`), where the model is in this process.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import torch

from ..errors import ConfigError
from .config import ModelConfigs, RunConfig, prepare_run, read_model_configs
from .run import ModelCache


def model_kind(cfg: RunConfig) -> str | None:
    """'sd3' / 'flux' / None (a UNet model, or a hub id without a config on disk), from configs only."""
    from ..models import config_source, read_model_kind

    try:
        return read_model_kind(config_source(cfg.model, cfg.checkpoint_config))
    except (ConfigError, OSError, ValueError):  # unreadable configs: planned as a UNet model
        return None


def estimate_work(cfg: RunConfig, scale: int, native: int | None, kind: str | None | bool = True) -> dict[str, float]:
    """Expected work of a run, from its method: model sample evaluations (views x steps x 2
    with CFG; FLUX 1, its guidance is an embedding), and for SyncDiffusion gradient
    evaluations, backward passes and VAE decodes. `kind`: the model's kind (`model_kind`,
    pass it when estimating many runs of one model), or True to read it here. Solvers with
    more than one model call per step (Heun) take more; the record counts the real numbers."""
    from ..models import FAMILIES, MODEL_OPTIONS

    if kind is True:
        kind = model_kind(cfg)
    if cfg.upscale is not None:  # img2img at the run's strength, plus noise inversion
        from .upscale_runs import check_upscale_run

        return check_upscale_run(cfg, scale, native, 2 if kind is not None else 1).estimate()
    passes = FAMILIES[kind](None).cfg_passes(MODEL_OPTIONS, None) if kind in FAMILIES else None
    call, meth = prepare_run(cfg, scale, native, cfg_passes=passes)
    return meth.estimate(call)


def total_work(runs: Iterable[RunConfig]) -> dict[str, float]:
    """The summed `estimate_work` of `runs` (a defaultdict: absent kinds of work read 0), each
    model's configs read once."""
    models: dict[tuple, ModelConfigs] = {}
    work: dict[str, float] = defaultdict(float)
    for c in runs:
        m = (c.model, c.checkpoint_config)
        if m not in models:
            models[m] = read_model_configs(*m)
        mc = models[m]
        for k, v in estimate_work(c, mc.scale, mc.native, mc.kind).items():
            work[k] += v
    return work


UNIT_NAMES = {"unet_grad_evaluations": "UNet evaluation with gradients", "backward": "backward pass",
              "vae_decodes": "VAE decode", "vae_decodes_grad": "VAE decode with backward", "vae_encodes": "VAE encode",
              "loss_calls": "loss call with backward"}


def calibrate(models: ModelCache, cfg: RunConfig, kinds: Sequence[str] = ("unet_evaluations",),
               loss_run: RunConfig | None = None) -> dict[str, float]:
    """Seconds per unit of work, measured on the first run's model and window: a no-grad UNet
    evaluation, and where the sweep needs them a UNet evaluation with gradients, a backward
    pass, a VAE decode (with and without gradients) and encode of one window, and the first
    SyncDiffusion run's loss with its backward pass."""
    nan = float("nan")
    try:
        md = models.get(cfg)
    except Exception:
        return {k: nan for k in kinds} | {"unet_evaluations": nan}
    if md.family.timing_inputs(md.unet, 1, md.device, md.dtype) is None:
        # SD3 / FLUX transformers take other inputs (packed tokens, pooled text, guidance):
        # no time estimate for them yet rather than a guess; the evaluation counts still print.
        return {k: nan for k in kinds} | {"unet_evaluations": nan}
    unet = md.unet
    window = cfg.tiling.window or md.native_window
    s = window // md.vae_scale_factor
    cfg_mul = 2 if cfg.sampler.guidance > 1 else 1
    b = cfg.tiling.view_batch_size * cfg_mul

    def inputs(n: int) -> dict[str, Any]:
        return md.family.timing_inputs(unet, n, md.device, md.dtype)

    def clock(fn: Callable[[], Any], reps: int = 2) -> float:
        fn()  # warm-up
        if md.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if md.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    t = torch.tensor(500, device=md.device)
    x = torch.randn(b, unet.config.in_channels, s, s, device=md.device, dtype=md.dtype)
    kw = inputs(b)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["unet_evaluations"] = clock(lambda: unet(x, t, **kw)) / b
    one = inputs(cfg_mul)
    x1 = torch.randn(cfg_mul, unet.config.in_channels, s, s, device=md.device, dtype=md.dtype)
    if "unet_grad_evaluations" in kinds or "backward" in kinds:
        def fwd() -> torch.Tensor:
            with torch.enable_grad():
                return unet(x1.clone().requires_grad_(True), t, **one).sample

        out["unet_grad_evaluations"] = clock(fwd) / cfg_mul

        def fwd_bwd() -> None:
            with torch.enable_grad():
                xg = x1.clone().requires_grad_(True)
                torch.autograd.grad(unet(xg, t, **one).sample.sum(), xg)

        out["backward"] = max(0.0, clock(fwd_bwd) - out["unet_grad_evaluations"] * cfg_mul)
    vae = getattr(md, "vae", None)
    if vae is not None and any(k.startswith("vae_") for k in kinds):
        z = torch.randn(1, vae.config.latent_channels, s, s, device=md.device, dtype=vae.dtype)
        with torch.no_grad():
            out["vae_decodes"] = clock(lambda: vae.decode(z), reps=1)
        if "vae_decodes_grad" in kinds:
            def dec_bwd() -> None:
                with torch.enable_grad():
                    zg = z.clone().requires_grad_(True)
                    torch.autograd.grad(vae.decode(zg).sample.sum(), zg)

            out["vae_decodes_grad"] = clock(dec_bwd, reps=1)
        if "vae_encodes" in kinds:
            img = torch.zeros(1, 3, window, window, device=md.device, dtype=vae.dtype)
            with torch.no_grad():
                out["vae_encodes"] = clock(lambda: vae.encode(img), reps=1)
    if "loss_calls" in kinds and loss_run is not None:
        from ..methods import get_method

        name, params = loss_run.method_call()
        loss = get_method(name, **params).loss_fn()
        if isinstance(loss, torch.nn.Module):
            loss.to(md.device)
        a = torch.rand(1, 3, window, window, device=md.device) * 2 - 1
        b = torch.rand(1, 3, window, window, device=md.device) * 2 - 1

        def loss_bwd() -> None:
            with torch.enable_grad():
                ag = a.clone().requires_grad_(True)
                torch.autograd.grad(loss(ag, b).sum(), ag)

        out["loss_calls"] = clock(loss_bwd, reps=1)
    return out


def estimate_time(models: ModelCache, runs: Sequence[RunConfig], work: dict[str, float]) -> str:
    """The sweep's time estimate for the log: `work` (`total_work`) at the seconds per unit that
    `calibrate` measures on the first run's model (and the first SyncDiffusion run's loss)."""
    from ..methods import METHODS

    loss_run = next((c for c in runs if "loss_calls" in METHODS[c.method_call()[0]].calibration_kinds), None)
    units = calibrate(models, runs[0], kinds=[k for k, v in work.items() if v], loss_run=loss_run)
    seconds = sum(units.get(k, float("nan")) * v for k, v in work.items() if v)
    return (f"estimated time: {seconds / 60:.1f} min ({units['unet_evaluations'] * 1e3:.2f} ms per model evaluation"
            + "".join(f", {units[k] * 1e3:.1f} ms per {UNIT_NAMES.get(k, k)}" for k in units if k != "unet_evaluations")
            + f", calibrated on {runs[0].model}; decode and metrics not included)")
