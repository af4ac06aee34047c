"""One run, wherever it runs (the driver or a Ray worker): load the model once, generate, measure.

`perform_run` is what every executor calls where it places a run; it writes nothing and turns
any exception of the run into a failure outcome, for the driver to commit (sweep.records.Sweep).
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from .config import RunConfig
from .records import STATUS_FAILED, STATUS_NAN, STATUS_OK, STATUS_OOM, atomic_write_bytes


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _dtype(name: str) -> torch.dtype:
    from ..models import DTYPES

    return DTYPES[name]


class ModelCache:
    """Loads each (model, dtype, device) once for all the runs that use it."""

    def __init__(self, loader: Callable[..., Any] | None = None):
        """`loader(model, dtype, device)` (plus `config=` for a run with checkpoint_config)
        builds a pipeline; default `MultiDiffusionPipeline.from_pretrained`."""
        self._loader = loader or self._default_loader
        self._key: tuple | None = None
        self._pipe: Any = None
        self.loads = 0

    @staticmethod
    def _default_loader(model: str, dtype: torch.dtype, device: str, config: str | None = None) -> Any:
        from ..pipeline import MultiDiffusionPipeline

        return MultiDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, device=device, config=config)

    def get(self, cfg: RunConfig) -> Any:
        key = (cfg.model, cfg.dtype, resolve_device(cfg.device), cfg.checkpoint_config)
        if key != self._key:
            self._pipe = None  # free the previous model before loading the next
            # a loader is called as loader(model, dtype, device), plus config= for a checkpoint_config
            extra = {"config": cfg.checkpoint_config} if cfg.checkpoint_config else {}
            self._pipe = self._loader(cfg.model, _dtype(cfg.dtype), key[2], **extra)
            self._key = key
            self.loads += 1
        return self._pipe


def run_one(md: Any, cfg: RunConfig, images_dir: Path | dict[str, bytes], state_dir: Path | None = None) -> dict[str, Any]:
    """Generate one run and measure it. Exceptions propagate; `perform_run` turns them into rows.

    `images_dir` is a folder (PNGs written there atomically) or a dict that collects the PNG
    bytes by file name, for the driver to write (`perform_run`). With `state_dir`, the canvas
    state is kept in `<state_dir>/<run id>.state` every step, and a run killed mid-canvas
    resumes from it the next time (the file is removed when the run finishes)."""
    from ..metrics import evaluate

    if cfg.upscale is not None:
        return _run_upscale(md, cfg, images_dir)
    kw = cfg.call_kwargs(md.vae_scale_factor)
    state = None if state_dir is None else Path(state_dir) / f"{cfg.run_id()}.state"
    original_scheduler = md.pipe.scheduler
    if cfg.sampler.scheduler:
        md.set_scheduler(cfg.sampler.scheduler)
    try:
        call = dict(**kw, eta=cfg.sampler.eta, output_type="np", diagnostics=cfg.diagnostics,
                    vae_tiling=cfg.vae.model_dump(), progress=False, state_path=state)
        try:
            resume = state if state is not None and state.is_file() else None
            out = md(**call, generator=torch.Generator("cpu").manual_seed(cfg.seed), resume=resume)
        except ConfigError as e:
            if resume is None or "resume=" not in str(e):
                raise
            state.unlink(missing_ok=True)  # a stale state (other weights, unreadable): start over
            out = md(**call, generator=torch.Generator("cpu").manual_seed(cfg.seed))
    finally:
        md.pipe.scheduler = original_scheduler
    if state is not None:
        state.unlink(missing_ok=True)
    img = out.images[0]
    result: dict[str, Any] = {"record": out.record.to_dict(), "plan": out.plan.summary(),
                              "seam_lines": {k: list(v) for k, v in out.plan.seam_lines.items()}}
    if not np.isfinite(img).all() or not out.record.extra.get("finite", True):
        result["status"] = STATUS_NAN
        result["error"] = "non-finite values in the latents or the decoded image"
        return result
    with_metrics = evaluate(img, out.plan, metrics=cfg.metrics)
    result["metrics"] = _plain_metrics(with_metrics)
    result["images"] = _save_images(img, cfg, images_dir)
    result["status"] = STATUS_OK
    return result


def _run_upscale(md: Any, cfg: RunConfig, images_dir: Path | dict[str, bytes]) -> dict[str, Any]:
    """An upscale run (mdtools.sweep.upscale_runs): its metrics take the ground truth as reference."""
    from ..metrics import evaluate
    from .upscale_runs import run_upscale

    original_scheduler = md.pipe.scheduler
    if cfg.sampler.scheduler:
        md.set_scheduler(cfg.sampler.scheduler)
    try:
        img, plan, record, truth = run_upscale(md, cfg)
    finally:
        md.pipe.scheduler = original_scheduler
    result: dict[str, Any] = {"record": record, "plan": plan.summary(),
                              "seam_lines": {k: list(v) for k, v in plan.seam_lines.items()}}
    if not np.isfinite(img).all():
        result["status"] = STATUS_NAN
        result["error"] = "non-finite values in the upscaled image"
        return result
    result["metrics"] = _plain_metrics(evaluate(img, plan, metrics=cfg.metrics, reference=truth))
    result["images"] = _save_images(img, cfg, images_dir)
    result["status"] = STATUS_OK
    return result


def _plain_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON-safe scalars; a metric that returned {value, reason} keeps both."""
    out: dict[str, Any] = {}
    for k, v in m.items():
        if isinstance(v, dict):
            if "value" in v:
                out[k] = _num(v["value"])
                if v.get("reason"):
                    out[f"{k}_unavailable"] = str(v["reason"])
            continue  # breakdowns are not table columns
        if isinstance(v, (list, tuple)):
            continue
        out[k] = _num(v)
        if getattr(v, "reason", None):  # metrics.Score: NaN with the reason it could not run
            out[f"{k}_unavailable"] = str(v.reason)
    return out


def _num(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _save_images(img: np.ndarray, cfg: RunConfig, images_dir: Path | dict[str, bytes]) -> dict[str, str]:
    from PIL import Image

    rid = cfg.run_id()
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    paths = {}
    if cfg.output.save_full:
        paths["full"] = _put_png(pil, f"{rid}_full.png", images_dir)
    m = cfg.output.preview_max_side
    if max(pil.size) > m:
        f = m / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * f)), max(1, round(pil.height * f))), Image.LANCZOS)
    paths["preview"] = _put_png(pil, f"{rid}.png", images_dir)
    return paths


def _put_png(pil: Any, name: str, images_dir: Path | dict[str, bytes]) -> str:
    """PNG-encode `pil` into the sink (dict) or atomically into the folder; returns `name`."""
    import io

    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    if isinstance(images_dir, dict):
        images_dir[name] = buf.getvalue()
    else:
        Path(images_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(images_dir) / name, buf.getvalue())
    return name


def _classify(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return STATUS_OOM
    return STATUS_FAILED


def failure_outcome(exc: BaseException) -> dict[str, Any]:
    """The record fields of a run that ended in `exc`: status (oom / failed), error, traceback."""
    return {"status": _classify(exc), "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc, limit=8))}


def perform_run(models: ModelCache, cfg: RunConfig,
                state_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run `cfg` here, on `models`' cached pipeline: (record fields, PNG bytes by file name).

    Every executor calls this where it places the run (the driver process, a Ray worker).
    Nothing is written: the driver commits the result (`records.Sweep.finished`). Any exception of
    the run becomes a failure outcome, so only the death of the process loses a run."""
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    images: dict[str, bytes] = {}
    out: dict[str, Any] = {}
    try:
        md = models.get(cfg)
        out.update(run_one(md, cfg, images, state_dir))
    except Exception as exc:  # a failed run is a row; the sweep goes on
        out.update(failure_outcome(exc))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    device = resolve_device(cfg.device)
    out["provenance"] = {
        "device": device, "device_name": _device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t0, "host": socket.gethostname(), "pid": os.getpid(),
        "model_loads": models.loads,
        # the 1-minute load average at the start and end of the run, and the cores: wall times taken
        # while the load exceeded the cores are flagged in the table (`prov.loaded`)
        "load_start": load_start, "load_end": os.getloadavg()[0], "cores": os.cpu_count(),
    }
    return out, images


def _device_name(device: str) -> str:
    from ..instrument import device_name

    return device_name(torch.device(device))
