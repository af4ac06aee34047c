"""Records of a sweep: statuses, atomic writes, provenance, the driver's writer and the runs table.

Layout of an experiment's output folder:

    results/<name>/runs/<run_id>.json    one record per finished run (ok or failed)
    results/<name>/images/<run_id>.png   downscaled preview (full-size <run_id>_full.png on request)
    results/<name>/runs.parquet          one row per run, rebuilt from the records

A record is written last, with write-to-temp + os.replace, so after a SIGKILL at any moment
a run either has its complete record (and is skipped on re-run) or has none (and is run
again); a half-written file is never visible under its final name. Only the driver writes
(`Sweep`), whatever the executor, so these guarantees hold on Ray workers too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .config import Experiment, RunConfig

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


def _bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="runs", unit="run")


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
        if prov.get("load_start") is not None:  # a wall time taken on a machine busier than its cores
            row["prov.loaded"] = max(prov["load_start"], prov["load_end"]) > (prov.get("cores") or 1)
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
