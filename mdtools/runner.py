"""Run an experiment: one JSON record per run, written atomically, resumable after a crash.

Layout of an experiment's output folder:

    results/<name>/runs/<run_id>.json    one record per finished run (ok or failed)
    results/<name>/images/<run_id>.png   downscaled preview (full-size <run_id>_full.png on request)
    results/<name>/runs.parquet          one row per run, rebuilt from the records

A record is written last, with write-to-temp + os.replace, so after a SIGKILL at any moment
a run either has its complete record (and is skipped on re-run) or has none (and is run
again); a half-written file is never visible under its final name.

Where a run happens is the executor's only business (mdtools.executors: in this process, or
on Ray workers); planning, validation, run ids, records and the table are this module's,
for every executor. Workers return a run's record body and image bytes; only the driver
writes, so the guarantees above hold whatever the executor.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import subprocess
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .config import Experiment, RunConfig
from .errors import ConfigError

STATUS_OK, STATUS_FAILED, STATUS_OOM, STATUS_NAN = "ok", "failed", "oom", "nan"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def git_hash() -> str:
    """The mdtools checkout's commit (with '+dirty' if modified), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if h.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return h.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mdtools", "torch", "diffusers", "transformers", "numpy", "torchmetrics"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["torch"] = torch.__version__  # the build tag (+cu130, +cpu) matters for timings
    out["cuda"] = str(torch.version.cuda)
    return out


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def weights_fingerprint(path: str | os.PathLike) -> str | None:
    """A short fingerprint of the weight files under a local model folder (or of one checkpoint
    file): sha256 over each file's relative name, size, and first and last MiB. None for what is
    not local (hub ids) or holds no weights (`arch:` presets, whose weights are seeded).

    Why: a run id names the model, not its weights, so a model retrained under the same name
    (the embedded toy models) would otherwise be indistinguishable in records and on resume.
    Reading 2 MiB per file keeps it fast for multi-GB checkpoints; a retrained file differs there
    (the safetensors header and the first tensors)."""
    import hashlib

    p = Path(path)
    if p.is_file():
        files, root = [p], p.parent
    elif p.is_dir():
        files, root = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES), p
    else:
        return None
    if not files:
        return None
    h = hashlib.sha256()
    mib = 1 << 20
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(mib))
            if size > 2 * mib:
                fh.seek(size - mib)
                h.update(fh.read(mib))
    return h.hexdigest()[:16]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _dtype(name: str) -> torch.dtype:
    from .pipeline import DTYPES

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
        from .pipeline import MultiDiffusionPipeline

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


def run_one(md: Any, cfg: RunConfig, images_dir: Path | dict[str, bytes]) -> dict[str, Any]:
    """Generate one run and measure it. Exceptions propagate; `perform_run` turns them into rows.

    `images_dir` is a folder (PNGs written there atomically) or a dict that collects the PNG
    bytes by file name, for the driver to write (`perform_run`)."""
    from .metrics import evaluate

    scale = md.vae_scale_factor
    h, w = cfg.canvas.resolve(scale)
    original_scheduler = md.pipe.scheduler
    if cfg.sampler.scheduler:
        md.set_scheduler(cfg.sampler.scheduler)
    name, params = cfg.method_call()
    try:
        out = md(
            cfg.prompt, negative_prompt=cfg.negative_prompt, height=h, width=w, window=cfg.tiling.window,
            overlap=cfg.tiling.overlap, kernel=cfg.kernel_arg(), kernel_params=cfg.tiling.kernel_params,
            method=name, method_params=params, regions=[r.model_dump() for r in cfg.regions],
            bootstrap_steps=cfg.bootstrap_steps,
            num_inference_steps=cfg.sampler.steps, guidance_scale=cfg.sampler.guidance,
            guidance_rescale=cfg.sampler.guidance_rescale, eta=cfg.sampler.eta,
            generator=torch.Generator("cpu").manual_seed(cfg.seed), circular=cfg.tiling.circular,
            view_batch_size=cfg.tiling.view_batch_size, output_type="np", diagnostics=cfg.diagnostics,
            vae_tiling=cfg.vae.model_dump(), progress=False,
        )
    finally:
        md.pipe.scheduler = original_scheduler
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


def perform_run(models: ModelCache, cfg: RunConfig) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run `cfg` here, on `models`' cached pipeline: (record fields, PNG bytes by file name).

    Every executor calls this where it places the run (the driver process, a Ray worker).
    Nothing is written: the driver commits the result (`Sweep.finished`). Any exception of
    the run becomes a failure outcome, so only the death of the process loses a run."""
    t0 = time.perf_counter()
    images: dict[str, bytes] = {}
    out: dict[str, Any] = {}
    try:
        md = models.get(cfg)
        out.update(run_one(md, cfg, images))
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
    }
    return out, images


class Sweep:
    """The driver's side of a sweep: commits results as records and shows progress.

    Executors call `started` when they place a run and `finished` with what came back;
    `finished` writes the images, then the record (both atomically), so a record on disk
    always has its images."""

    def __init__(self, exp: Experiment, out_dir: Path, total: int, *, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.exp, self.out_dir, self.log = exp, Path(out_dir), log
        self.prov_base = {"git": git_hash(), "versions": package_versions(), "experiment": exp.name,
                          "experiment_file": exp.path}
        self.in_flight: dict[str, str] = {}  # run id -> where it runs
        self.fingerprints: dict[str, str | None] = {}  # model -> weights_fingerprint, set by execute
        self._bar = _bar(total, progress)

    def started(self, rid: str, where: str) -> None:
        self.in_flight[rid] = where
        self._show()

    def requeued(self, rid: str, why: str) -> None:
        """Run `rid` left its worker without a result and waits to be placed again."""
        self.in_flight.pop(rid, None)
        self.note(f"run {rid}: {why}")
        self._show()

    def note(self, msg: str) -> None:
        """A line for the user that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(msg)
        else:
            self.log(msg)

    def finished(self, rid: str, cfg: RunConfig, outcome: dict[str, Any], images: dict[str, bytes],
                 **provenance: Any) -> dict[str, Any]:
        """Write run `rid`'s images and record (atomically, record last); returns the record."""
        flat = cfg.flat()
        rec: dict[str, Any] = {"run_id": rid, "config": cfg.model_dump(mode="json"), "config_flat": flat,
                               "swept": {k: flat.get(k) for k in self.exp.swept_keys}}
        rec.update({k: v for k, v in outcome.items() if k != "provenance"})
        rec["provenance"] = {**self.prov_base, **(outcome.get("provenance") or {}), **provenance}
        if self.fingerprints.get(cfg.model):
            rec["provenance"]["weights_fingerprint"] = self.fingerprints[cfg.model]
        if images:
            (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            atomic_write_bytes(self.out_dir / "images" / Path(name).name, data)
        atomic_write_text(self.out_dir / "runs" / f"{rid}.json", json.dumps(rec, indent=1, default=str))
        self.in_flight.pop(rid, None)
        if self._bar is not None:
            self._bar.update(1)
        if rec["status"] != STATUS_OK:
            self.note(f"run {rid}: {rec['status']}: {rec.get('error')}")
        self._show()
        return rec

    def refresh(self) -> None:
        """Redraw the bar (its clock and the runs in flight) while nothing finishes."""
        self._show()

    def _show(self) -> None:
        if self._bar is None:
            return
        runs = [f"{rid}@{where}" for rid, where in self.in_flight.items()]
        shown = ", ".join(runs[:4]) + (f", +{len(runs) - 4}" if len(runs) > 4 else "")
        self._bar.set_postfix_str(f"in flight: {shown}" if runs else "", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def load_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every complete record under out_dir/runs (temp files are ignored)."""
    recs = {}
    for p in sorted((out_dir / "runs").glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # cannot happen with atomic writes; a hand-edited file is skipped, not fatal
        recs[rec["run_id"]] = rec
    return recs


def build_table(out_dir: Path) -> pd.DataFrame:
    """runs.parquet rebuilt from the records: config columns, metrics, counts, status, provenance."""
    rows = []
    for rid, rec in load_records(out_dir).items():
        row: dict[str, Any] = {"run_id": rid, "status": rec["status"], "error": rec.get("error")}
        row.update(rec.get("config_flat", {}))
        row.update({f"plan.{k}": v for k, v in (rec.get("plan") or {}).items()})
        row.update({f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()})
        r = rec.get("record") or {}
        for name, ph in (r.get("phases") or {}).items():
            row[f"time.{name}"] = ph.get("seconds")
            for key in ("peak_allocated", "peak_reserved", "peak_rss"):
                row[f"mem.{key}.{name}"] = ph.get(key)
        row.update({f"count.{k}": v for k, v in (r.get("counts") or {}).items()})
        row.update({f"cost.{k}": v for k, v in ((r.get("extra") or {}).get("cost") or {}).items()})
        dis = r.get("disagreement") or []
        row["diag.disagreement_mean"] = float(np.mean(dis)) if dis else None
        row["diag.disagreement_trace"] = json.dumps(dis)
        row["preview"] = (rec.get("images") or {}).get("preview")
        row["seams_x"] = json.dumps((rec.get("seam_lines") or {}).get("x", []))
        prov = rec.get("provenance", {})
        row.update({f"prov.{k}": v for k, v in prov.items() if not isinstance(v, dict)})
        row.update({f"prov.{k}": v for k, v in (prov.get("versions") or {}).items()})
        row["swept"] = json.dumps(rec.get("swept", {}), sort_keys=True)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("run_id").reset_index(drop=True)
        # mixed None/float object columns would break parquet's schema inference
        for c in df.columns:
            if df[c].dtype == object and df[c].map(lambda v: v is None or isinstance(v, (int, float))).all():
                df[c] = pd.to_numeric(df[c], errors="coerce")
    tmp = out_dir / f".runs.parquet.{os.getpid()}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / "runs.parquet")
    return df


def model_kind(cfg: RunConfig) -> str | None:
    """'sd3' / 'flux' / None (a UNet model, or a hub id without a config on disk), from configs only."""
    from .pipeline import config_source, read_model_kind

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
    from .config import prepare_run
    from .pipeline import flux_cfg_passes

    if kind is True:
        kind = model_kind(cfg)
    call, meth = prepare_run(cfg, scale, native, cfg_passes=flux_cfg_passes() if kind == "flux" else None)
    return meth.estimate(call)


def estimate_evaluations(cfg: RunConfig, scale: int, native: int | None) -> int:
    """UNet sample evaluations (with and without gradients) a run needs."""
    w = estimate_work(cfg, scale, native)
    return int(round(w.get("unet_evaluations", 0) + w.get("unet_grad_evaluations", 0)))


def execute(
    exp: Experiment,
    out_dir: Path,
    *,
    max_runs: int | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    models: ModelCache | None = None,
    executor: Any = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run what is not finished yet; rebuild and return the table.

    `executor` (mdtools.executors) decides where the runs happen: None runs them here, one
    after the other, with `models`' cache; `RayExecutor(...)` spreads them over Ray
    workers. Everything else (what to run, run ids, records, the table) is the same."""
    from .executors import LocalExecutor
    from .pipeline import config_source, read_native_window, read_scale_factor, resolve_model_path

    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    done = load_records(out_dir)
    unique: dict[str, RunConfig] = {}
    for cfg in exp.runs:
        unique.setdefault(cfg.run_id(), cfg)
    finished = {rid for rid, rec in done.items() if rec["status"] == STATUS_OK or not retry_failed}
    todo = [(rid, c) for rid, c in unique.items() if rid not in finished]
    if max_runs is not None:
        todo = todo[:max_runs]
    # runs of one model together, so that each worker loads each model once
    by_model: dict[tuple, list] = defaultdict(list)
    for rid, c in todo:
        by_model[(c.model, c.checkpoint_config, c.dtype, c.device)].append((rid, c))
    todo = [item for group in by_model.values() for item in group]
    # (model, config) -> (scale, native window, kind), read once per model
    geometry: dict[tuple, tuple[int, int | None, str | None]] = {}
    work: dict[str, float] = defaultdict(float)
    for _, c in todo:
        m = (c.model, c.checkpoint_config)
        if m not in geometry:
            path = config_source(c.model, c.checkpoint_config)
            scale = read_scale_factor(path)
            geometry[m] = (scale, read_native_window(path, scale), model_kind(c))
        for k, v in estimate_work(c, *geometry[m]).items():
            work[k] += v
    evals = int(round(work["unet_evaluations"] + work.get("unet_grad_evaluations", 0)))
    extra = ", ".join(f"{int(v):,} {k.replace('_', ' ')}" for k, v in work.items() if k != "unet_evaluations" and v)
    fingerprints = {m: weights_fingerprint(resolve_model_path(m)) for m in {c.model for c in unique.values()}}
    _warn_changed_weights(done, finished, fingerprints, log)
    log(f"experiment {exp.name}: {len(unique)} runs, {len(unique) - len(todo)} already done, "
        f"{len(todo)} to run, {evals:,} model evaluations" + (f" (with {extra})" if extra else ""))
    executor = executor if executor is not None else LocalExecutor(models)
    if todo:
        executor.prepare([c for _, c in todo])  # bad executor settings: ConfigError before any run
        for line in executor.describe(len(todo)):
            log(line)
    cache = getattr(executor, "models", None)
    if todo and cache is not None:
        sync_run = next((c for _, c in todo if c.method_call()[0] == "syncdiffusion"), None)
        units = _calibrate(cache, todo[0][1], kinds=[k for k, v in work.items() if v], loss_run=sync_run)
        seconds = sum(units.get(k, float("nan")) * v for k, v in work.items() if v)
        log(f"estimated time: {seconds / 60:.1f} min ({units['unet_evaluations'] * 1e3:.2f} ms per model evaluation"
            + "".join(f", {units[k] * 1e3:.1f} ms per {UNIT_NAMES.get(k, k)}" for k in units if k != "unet_evaluations")
            + f", calibrated on {todo[0][1].model}; decode and metrics not included)")
    if dry_run:
        for rid, c in todo:
            flat = c.flat()
            log(f"  {rid}  " + ", ".join(f"{k}={flat.get(k)}" for k in exp.swept_keys if flat.get(k) is not None))
        return build_table(out_dir) if done else pd.DataFrame()
    sweep = Sweep(exp, out_dir, len(todo), progress=progress, log=log)
    sweep.fingerprints = fingerprints
    try:
        if todo:
            executor.run(todo, sweep)
    finally:
        sweep.close()
    return build_table(out_dir)


def _warn_changed_weights(done: dict[str, dict[str, Any]], finished: set[str], fingerprints: dict[str, str | None],
                          log: Callable[[str], None]) -> None:
    """Say when finished runs that resume would skip were made with other weights of the same model name."""
    stale: dict[str, int] = defaultdict(int)
    for rid in finished:
        rec = done[rid]
        model = (rec.get("config") or {}).get("model")
        old, new = (rec.get("provenance") or {}).get("weights_fingerprint"), fingerprints.get(model)
        if old and new and old != new:
            stale[model] += 1
    for model, n in stale.items():
        log(f"warning: {n} finished run(s) of model {model!r} were made with other weights (fingerprint now "
            f"{fingerprints[model]}); they are kept and skipped: delete their records to re-run them")


def _device_name(device: str) -> str:
    from .instrument import device_name

    return device_name(torch.device(device))


def _bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="runs", unit="run")


UNIT_NAMES = {"unet_grad_evaluations": "UNet evaluation with gradients", "backward": "backward pass",
              "vae_decodes": "VAE decode", "vae_decodes_grad": "VAE decode with backward", "vae_encodes": "VAE encode",
              "loss_calls": "loss call with backward"}


def _calibrate(models: ModelCache, cfg: RunConfig, kinds: Sequence[str] = ("unet_evaluations",),
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
    if md.kind not in ("sd", "sdxl"):
        # SD3 / FLUX transformers take other inputs (packed tokens, pooled text, guidance):
        # no time estimate for them yet rather than a guess; the evaluation counts still print.
        return {k: nan for k in kinds} | {"unet_evaluations": nan}
    unet = md.unet
    window = cfg.tiling.window or md.native_window
    s = window // md.vae_scale_factor
    cfg_mul = 2 if cfg.sampler.guidance > 1 else 1
    b = cfg.tiling.view_batch_size * cfg_mul

    def inputs(n: int) -> dict[str, Any]:
        kw = {}
        if md.kind in ("sd", "sdxl"):
            kw["encoder_hidden_states"] = torch.zeros(n, 8, unet.config.cross_attention_dim, device=md.device, dtype=md.dtype)
        if md.kind == "sdxl":
            m = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
            kw["added_cond_kwargs"] = {"text_embeds": torch.zeros(n, m, device=md.device, dtype=md.dtype),
                                       "time_ids": torch.zeros(n, 6, device=md.device, dtype=md.dtype)}
        return kw

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
        from .methods import get_method

        loss = get_method("syncdiffusion", **loss_run.method_call()[1]).loss_fn()
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
