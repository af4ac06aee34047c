"""Experiment sweeps: validated run configs, one run wherever it runs, resumable records, local and Ray executors."""

from .config import (
    DEFAULT_RUN_METRICS,
    Experiment,
    ModelConfigs,
    RunConfig,
    expand,
    flatten,
    load_experiment,
    prepare_run,
    read_model_configs,
    validate_runs,
)
from .estimate import estimate_work, model_kind, total_work
from .executors import EXECUTORS, Executor, LocalExecutor, RayExecutor, make_executor
from .records import (
    STATUS_FAILED,
    STATUS_NAN,
    STATUS_OK,
    STATUS_OOM,
    Sweep,
    build_table,
    git_hash,
    load_records,
    package_versions,
    weights_fingerprint,
)
from .run import ModelCache, failure_outcome, perform_run, run_one
from .runner import execute

__all__ = [
    "DEFAULT_RUN_METRICS", "EXECUTORS", "Executor", "Experiment", "LocalExecutor", "ModelCache", "ModelConfigs", "RayExecutor",
    "RunConfig", "STATUS_FAILED", "STATUS_NAN", "STATUS_OK", "STATUS_OOM", "Sweep", "build_table", "estimate_work",
    "execute", "expand", "failure_outcome", "flatten", "git_hash", "load_experiment", "load_records", "make_executor",
    "model_kind", "package_versions", "perform_run", "prepare_run", "read_model_configs", "run_one", "total_work",
    "validate_runs", "weights_fingerprint",
]
