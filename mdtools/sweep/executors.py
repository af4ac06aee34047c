"""Where the runs of a sweep happen: here, one after the other, or on Ray workers.

An executor only places runs. `sweep.runner.execute` plans the sweep (validation, run
ids, what is already done), and the driver's `records.Sweep` writes every record; an executor
gets the runs to do and hands back, for each, what `run.perform_run` returned where
it ran. So resume, failure rows and the table are the same whichever executor ran a run.

    LocalExecutor()                       # this process, one model cache (the default)
    RayExecutor(address="auto", gpus_per_run=1, retries=2)   # one Ray actor per device slot

Ray is an optional dependency (`pip install "mdtools[ray]"`), imported only here and only
when a RayExecutor is used.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import deque
from typing import Any, Callable, Sequence

from ..distributed import import_ray
from ..errors import ConfigError
from .config import RunConfig
from .records import STATUS_FAILED, STATUS_OOM, Sweep
from .run import ModelCache, perform_run

EXECUTORS = ("local", "ray")


class Executor:
    """Places runs. Subclasses implement `run`; `prepare` and `describe` are optional."""

    name = "executor"
    models: ModelCache | None = None  # a driver-side cache, when runs happen in the driver (calibration uses it)

    def prepare(self, runs: Sequence[RunConfig]) -> None:
        """Check that these runs can be placed (ConfigError if not); called before any run starts."""

    def describe(self, n_runs: int) -> list[str]:
        """Lines for the plan (`--dry-run` and the start of a sweep): resources and concurrency."""
        return []

    def run(self, todo: list[tuple[str, RunConfig]], sweep: Sweep) -> None:
        """Run every (run id, config) of `todo`, reporting each to `sweep.started` / `sweep.finished`."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """Every run in this process, in order, on one cache (a model loads once for all its runs)."""

    name = "local"

    def __init__(self, models: ModelCache | None = None):
        self.models = models or ModelCache()

    def run(self, todo: list[tuple[str, RunConfig]], sweep: Sweep) -> None:
        where = f"{socket.gethostname()}:{os.getpid()}"
        for rid, cfg in todo:
            sweep.started(rid, "local")
            t0 = time.perf_counter()
            outcome, images = perform_run(self.models, cfg, sweep.out_dir / "states")
            sweep.finished(rid, cfg, outcome, images, executor=self.name, worker=where, attempts=1,
                           turnaround_seconds=time.perf_counter() - t0)


class _Worker:
    """A Ray actor on one device slot. It keeps a ModelCache, so each model loads once per
    worker, not once per run, and returns each run's record fields and PNG bytes."""

    def __init__(self, threads: int):
        import torch

        # Ray sets OMP_NUM_THREADS from the actor's CPUs; torch's own pool is set here too
        # so that a worker uses exactly the CPUs it was given.
        torch.set_num_threads(max(1, threads))
        self.models = ModelCache()

    def run(self, cfg_json: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
        cfg = RunConfig.model_validate(cfg_json)
        return perform_run(self.models, cfg)


class RayExecutor(Executor):
    """Runs on a Ray cluster: one actor per device slot, one run per actor at a time.

    The driver keeps the queue. Results (record fields and image bytes) come back through
    Ray's object store and the driver writes them, so workers need no shared file system
    and the driver stays the only writer (the atomic-write and resume guarantees of the
    local executor carry over unchanged). A run whose worker dies (OOM kill, lost node,
    `ray.kill`) is put back at the head of the queue on a fresh worker, up to `retries`
    times; then it becomes a failure row with the reason, and the sweep goes on.

    address: None starts a local Ray (or joins the one `ray start` made on this machine),
        "auto" or "ray://host:10001" or "host:6379" joins that cluster.
    gpus_per_run: GPUs per worker; None: 1 if the cluster has GPUs and the runs may use
        one (device auto or cuda), else 0. Fractions pack several workers on one GPU.
    cpus_per_run: CPUs per worker (also its torch thread count).
    max_concurrent: at most this many workers.
    retries: how many times a run is retried after its worker died.
    on_dispatch: called with (run id, actor) after each dispatch (tests kill actors here).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, gpus_per_run: float | None = None, cpus_per_run: float = 1.0,
                 max_concurrent: int | None = None, retries: int = 2, poll_seconds: float = 1.0,
                 on_dispatch: Callable[[str, Any], None] | None = None):
        if gpus_per_run is not None and (not _is_number(gpus_per_run) or gpus_per_run < 0):
            raise ConfigError(f"--gpus-per-run must be a number >= 0 (e.g. 1), got {gpus_per_run!r}")
        if not _is_number(cpus_per_run) or cpus_per_run <= 0:
            raise ConfigError(f"--cpus-per-run must be a number > 0 (e.g. 1), got {cpus_per_run!r}")
        if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                           or max_concurrent < 1):
            raise ConfigError(f"--max-concurrent must be an integer >= 1 (e.g. 4), got {max_concurrent!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"--retries must be an integer >= 0 (e.g. 2), got {retries!r}")
        self.ray = import_ray()
        self.address, self.gpus_per_run, self.cpus_per_run = address, gpus_per_run, float(cpus_per_run)
        self.max_concurrent, self.retries, self.poll_seconds = max_concurrent, retries, poll_seconds
        self.on_dispatch = on_dispatch
        self.resources: dict[str, float] = {}
        self.gpus: float = 0.0
        self.slots = 0

    # --- planning -----------------------------------------------------------------------
    def connect(self) -> dict[str, float]:
        """Join (or start) the cluster; returns its total resources."""
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address)
            except ConnectionError as e:
                raise ConfigError(f"--address {self.address!r}: cannot reach a Ray cluster ({e}); start one with "
                                  f"`ray start --head`, or leave --address out to start a local one") from None
        self.resources = {k: float(v) for k, v in ray.cluster_resources().items()}
        return self.resources

    def prepare(self, runs: Sequence[RunConfig]) -> None:
        """Check the runs against the cluster and size the worker pool; ConfigError before any run."""
        res = self.connect()
        cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        pinned = sorted({c.device for c in runs if c.device.startswith("cuda:")})
        if pinned:
            raise ConfigError(f"device={pinned[0]!r}: with --executor ray, Ray gives each worker its own GPU; "
                              f"use device: cuda (or auto) and --gpus-per-run")
        wants_cuda = any(c.device.startswith("cuda") for c in runs)
        may_use_gpu = any(c.device != "cpu" for c in runs)
        g = self.gpus_per_run
        if g is None:
            g = 1.0 if gpus > 0 and may_use_gpu else 0.0
        if g > 0 and gpus == 0:
            raise ConfigError(f"--gpus-per-run {_fmt(g)}: the Ray cluster has no GPU ({_fmt_resources(res)}); "
                              f"use --gpus-per-run 0 to run on CPUs, or join nodes with GPUs")
        if g > gpus:
            raise ConfigError(f"--gpus-per-run {_fmt(g)}: the Ray cluster has only {_fmt(gpus)} GPU(s); "
                              f"use --gpus-per-run {_fmt(gpus)} or less")
        if wants_cuda and g == 0:
            raise ConfigError("device: cuda, but --gpus-per-run 0 gives the workers no GPU; "
                              "use --gpus-per-run 1 (or device: cpu)")
        if self.cpus_per_run > cpus:
            raise ConfigError(f"--cpus-per-run {_fmt(self.cpus_per_run)}: the Ray cluster has only {_fmt(cpus)} CPU(s); "
                              f"use --cpus-per-run {_fmt(max(1.0, math.floor(cpus)))}")
        slots = math.floor(cpus / self.cpus_per_run + 1e-9)
        if g > 0:
            slots = min(slots, math.floor(gpus / g + 1e-9))
        if self.max_concurrent is not None:
            slots = min(slots, self.max_concurrent)
        self.gpus, self.slots = g, max(1, min(slots, len(runs)))

    def describe(self, n_runs: int) -> list[str]:
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return [f"ray cluster: {nodes} node(s), {_fmt_resources(self.resources)}",
                f"ray plan: {self.slots} worker(s) x ({_fmt(self.cpus_per_run)} CPU, {_fmt(self.gpus)} GPU) per run; "
                f"{n_runs} run(s), up to {self.slots} at once, {self.retries} retr{'y' if self.retries == 1 else 'ies'} "
                f"after a worker dies"]

    # --- running ------------------------------------------------------------------------
    def _new_worker(self) -> Any:
        # max_restarts=0: a dead worker is replaced by the driver, which knows which run it held.
        # Ray starts workers at nice 15; on a machine shared with other jobs that made runs ~2x
        # slower than the local executor (benchmarks/ray_overhead.py). A worker here is the
        # sweep's compute, as the local process is, so it gets the normal priority, as Ray
        # gives a job's driver (RAY_worker_niceness=0); env_vars merge with the job's runtime_env.
        cls = self.ray.remote(_Worker).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus, max_restarts=0,
                                               runtime_env={"env_vars": {"RAY_worker_niceness": "0"}})
        return cls.remote(max(1, int(self.cpus_per_run)))

    def run(self, todo: list[tuple[str, RunConfig]], sweep: Sweep) -> None:
        ray = self.ray
        from ray.exceptions import ActorUnavailableError, OutOfMemoryError, RayActorError, WorkerCrashedError

        # a dead or OOM-killed worker; an exception *inside* a run never gets here (perform_run makes it a row)
        died = (RayActorError, ActorUnavailableError, WorkerCrashedError, OutOfMemoryError)
        queue = deque(todo)
        attempts: dict[str, int] = {}
        workers: dict[int, Any] = {i: self._new_worker() for i in range(self.slots)}  # None: dead, replaced on demand
        idle = list(workers)
        running: dict[Any, tuple[int, str, RunConfig, float]] = {}  # result ref -> (slot, run id, config, t0)
        try:
            while queue or running:
                while queue and idle:
                    slot = idle.pop(0)
                    if workers[slot] is None:
                        workers[slot] = self._new_worker()
                    rid, cfg = queue.popleft()
                    attempts[rid] = attempts.get(rid, 0) + 1
                    ref = workers[slot].run.remote(cfg.model_dump(mode="json"))
                    running[ref] = (slot, rid, cfg, time.perf_counter())
                    sweep.started(rid, f"w{slot}" + (f" try {attempts[rid]}" if attempts[rid] > 1 else ""))
                    if self.on_dispatch is not None:
                        self.on_dispatch(rid, workers[slot])
                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    slot, rid, cfg, t0 = running.pop(ref)
                    try:
                        outcome, images = ray.get(ref)
                    except died as exc:
                        # the worker is gone (and its model cache with it): a fresh one takes the
                        # slot when there is work for it
                        _kill(ray, workers[slot])
                        workers[slot] = None
                        idle.append(slot)
                        reason = _first_line(exc)
                        if attempts[rid] <= self.retries:
                            sweep.requeued(rid, f"worker w{slot} died ({reason}); retry {attempts[rid]}/{self.retries}")
                            queue.appendleft((rid, cfg))
                            continue
                        status = STATUS_OOM if _is_oom(exc) else STATUS_FAILED
                        outcome = {"status": status, "traceback": str(exc)[-4000:],
                                   "error": f"WorkerDied: the worker running this run died {attempts[rid]} time(s) "
                                            f"(--retries {self.retries}); last: {reason}"}
                        images = {}
                    except Exception as exc:  # the result could not come back (e.g. unpicklable): a failure row
                        idle.append(slot)
                        outcome, images = {"status": STATUS_FAILED, "traceback": str(exc)[-4000:],
                                           "error": _first_line(exc)}, {}
                    else:
                        idle.append(slot)
                    wp = outcome.get("provenance") or {}
                    sweep.finished(rid, cfg, outcome, images, executor=self.name, attempts=attempts[rid],
                                   worker=f"w{slot}@{wp.get('host', '?')}:{wp.get('pid', '?')}",
                                   turnaround_seconds=time.perf_counter() - t0)
                if not ready:
                    sweep.refresh()  # nothing finished this poll: keep the bar's clock and in-flight list live
        finally:
            for w in workers.values():  # free the slots now, not when the driver exits
                if w is not None:
                    _kill(ray, w)


def make_executor(name: str = "local", *, address: str | None = None, gpus_per_run: float | None = None,
                  cpus_per_run: float | None = None, max_concurrent: int | None = None,
                  retries: int | None = None) -> Executor:
    """The executor the CLI asks for; Ray-only options given to the local executor are an error."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r} is not valid; choose one of {list(EXECUTORS)}")
    if name == "local":
        given = [flag for flag, v in (("--address", address), ("--gpus-per-run", gpus_per_run),
                                      ("--cpus-per-run", cpus_per_run), ("--max-concurrent", max_concurrent),
                                      ("--retries", retries)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --executor ray; "
                              f"add --executor ray or drop {given[0]}")
        return LocalExecutor()
    given = {k: v for k, v in (("gpus_per_run", gpus_per_run), ("cpus_per_run", cpus_per_run),
                               ("max_concurrent", max_concurrent), ("retries", retries)) if v is not None}
    return RayExecutor(address, **given)


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # already dead, or the cluster is gone: nothing left to free
        pass


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:g}"


def _fmt_resources(res: dict[str, float]) -> str:
    gib = 1024 ** 3
    return (f"{_fmt(res.get('CPU', 0))} CPU, {_fmt(res.get('GPU', 0))} GPU, "
            f"{res.get('memory', 0) / gib:.1f} GiB memory, {res.get('object_store_memory', 0) / gib:.1f} GiB object store")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _is_oom(exc: BaseException) -> bool:
    """Ray's memory monitor kills a worker with a message about memory; so does a CUDA OOM that took the process down."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "outofmemory" in text or "low on memory" in text
