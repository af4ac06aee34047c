"""Run an experiment: what is left to do, its estimate, then the executor places the runs.

Resumable after a crash: finished runs have their record (sweep.records) and are skipped.
Where a run happens is the executor's only business (sweep.executors: in this process, or on
Ray workers); planning, run ids, records and the table are the same for every executor.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .config import Experiment, RunConfig
from .estimate import estimate_time, total_work
from .executors import LocalExecutor
from .records import STATUS_OK, Sweep, build_table, load_records, weights_fingerprint
from .run import ModelCache


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

    `executor` (mdtools.sweep.executors) decides where the runs happen: None runs them here,
    one after the other, with `models`' cache; `RayExecutor(...)` spreads them over Ray
    workers. Everything else (what to run, run ids, records, the table) is the same."""
    from ..models import resolve_model_path

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
    work = total_work(c for _, c in todo)
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
        log(estimate_time(cache, [c for _, c in todo], work))
    if dry_run:
        for rid, c in todo:
            flat = c.flat()
            # an ordinary run's empty `control` is left out: only control rows say control=<name>
            log(f"  {rid}  " + ", ".join(f"{k}={flat.get(k)}" for k in exp.swept_keys if flat.get(k) not in (None, "")))
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
