"""One canvas on many devices: each rank of a torch.distributed group evaluates its share of the views.

Every rank holds the model and the whole canvas. At each fused model call, rank r runs the
model on its contiguous block of the view set's entries (blocks balanced by count: the
entries of one view set have one size, so count is area), adds its weighted predictions into
the Eq. 5 numerator, and the numerators are summed with one all-reduce. Every rank then holds
the same fused prediction and takes the same scheduler step; the initial noise comes from the
same seed on every rank. NCCL on GPUs, gloo on CPU (docs/multi-device.md).

Start it with torchrun (`mdtools generate ... --distributed`), with `init()` in your own
script, or from Python with `run_on_devices` (one spawned process per device).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass
class Shard:
    """This process's place in the group and what it measured: views run, seconds in the model and in all-reduce."""

    rank: int
    world: int
    group: Any = None
    entries: int = 0
    forward_seconds: float = 0.0
    comm_seconds: float = 0.0
    comm_calls: int = 0

    def reset(self) -> None:
        """Zero the counters at the start of a generation."""
        self.entries, self.forward_seconds, self.comm_seconds, self.comm_calls = 0, 0.0, 0.0, 0

    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous entries [start, end) of a view set with n entries (balanced by count)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        self.comm_seconds += time.perf_counter() - t0
        self.comm_calls += 1
        return t

    def summary(self) -> list[dict[str, Any]]:
        """Every rank's views, model seconds and communication seconds (gathered to all ranks)."""
        mine = {"rank": self.rank, "view_evaluations": self.entries, "forward_seconds": self.forward_seconds,
                "comm_seconds": self.comm_seconds, "comm_calls": self.comm_calls}
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, mine, group=self.group)
        return out


def init(backend: str | None = None) -> Shard:
    """Join the process group torchrun (or the caller) describes in the environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT); gloo on CPU, NCCL when CUDA is available."""
    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this torch build; run on one device")
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ and not dist.is_initialized():
            raise ConfigError(f"--distributed needs the process group's environment ({var} is unset): start with "
                              "torchrun --nproc-per-node N -m mdtools generate ... --distributed")
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    return Shard(dist.get_rank(), dist.get_world_size())


def rank_device(shard: Shard) -> torch.device:
    """cuda:<LOCAL_RANK> on a GPU machine, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", shard.rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def check_distributable(method: Any, n_views: int, world: int) -> None:
    """ConfigError, before any model call, for a method that cannot be spread or a group larger than the views."""
    name, why = getattr(method, "name", str(method)), getattr(method, "not_distributable", "")
    if why:  # a method whose work is not all inside fused view sets says why (Method.not_distributable)
        raise ConfigError(f"method {name!r} cannot be distributed: {why}; run it on one device "
                          "or use multidiffusion, mixture, spotdiffusion, global_pass or demofusion")
    if world > n_views:
        raise ConfigError(f"{world} ranks but the plan has {n_views} views: every rank needs at least one; use at most "
                          f"{n_views} ranks, or a smaller window / overlap")


#: how to install the optional Ray dependency (sweeps' --executor ray, RayDevicePool)
RAY_INSTALL = 'pip install "mdtools[ray]"'


def import_ray() -> Any:
    """The `ray` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"this needs Ray, which is not installed ({e}); install it with: {RAY_INSTALL}") from None
    return ray


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevicePool:
    """One process per device, each holding the model; a call runs on all of them and returns rank 0's output.

    `loader(device=...)` builds a MultiDiffusionPipeline in each process (`from_pretrained(...,
    devices=[...])` passes its own loader). The processes form a gloo group (NCCL when every
    device is CUDA) on 127.0.0.1 and stay up between calls; `close()` (or `with`) ends them."""

    def __init__(self, loader: Any, devices: list[str | torch.device], *, threads_per_rank: int | None = None):
        import torch.multiprocessing as mp

        if len(devices) < 2:
            raise ConfigError(f"devices={devices!r}: give at least two devices, e.g. ['cuda:0', 'cuda:1'] (one device: "
                              "device='cuda:0')")
        self.devices = [str(d) for d in devices]
        world = len(self.devices)
        threads = threads_per_rank or max(1, (os.cpu_count() or 1) // world)
        ctx = mp.get_context("spawn")
        self._in = [ctx.Queue() for _ in range(world)]
        self._out = ctx.Queue()
        port = free_port()
        self._procs = [ctx.Process(target=_pool_worker, daemon=True,
                                   args=(r, world, port, loader, self.devices, threads, self._in[r], self._out))
                       for r in range(world)]
        for p in self._procs:
            p.start()
        for _ in range(world):  # every rank loaded, or the first failure
            kind, payload = self._out.get()
            if kind == "error":
                self.close()
                raise RuntimeError(f"a rank failed to load the model: {payload}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for q in self._in:
            q.put((args, kwargs))
        kind, payload = self._out.get()
        if kind == "error":
            cls, msg = payload
            raise (ConfigError if cls == "ConfigError" else RuntimeError)(msg)
        return payload

    def close(self) -> None:
        for q, p in zip(self._in, self._procs):
            if p.is_alive():
                q.put(None)
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()

    def __enter__(self) -> "DevicePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _pool_worker(rank: int, world: int, port: int, loader: Any, devices: list[str], threads: int, inq: Any,
                 outq: Any) -> None:
    torch.set_num_threads(threads)
    backend = "nccl" if all(d.startswith("cuda") for d in devices) else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        try:
            md = loader(device=devices[rank])
            md.enable_distributed(Shard(rank, world))
            outq.put(("ready", rank))
        except Exception as e:  # noqa: BLE001  (reported to the driver, one line)
            outq.put(("error", f"{type(e).__name__}: {e}"))
            return
        while (job := inq.get()) is not None:
            args, kwargs = job
            try:
                res = md(*args, **kwargs)
                res.latents = res.latents.cpu()
                if rank == 0:
                    outq.put(("ok", res))
            except Exception as e:  # noqa: BLE001  (checks run alike on every rank: rank 0 reports)
                if rank == 0:
                    outq.put(("error", (type(e).__name__, str(e))))
    finally:
        dist.destroy_process_group()


class RayRank:
    """One rank of a RayDevicePool: a Ray actor holding the model (wrapped with ray.remote by the pool)."""

    def address(self) -> str:
        """host:port for the group's rendezvous, on this actor's node."""
        import ray

        return f"{ray.util.get_node_ip_address()}:{free_port()}"

    def setup(self, rank: int, world: int, address: str, loader: Any, threads: int) -> int:
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray gives each GPU actor its own device 0
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world,
                                init_method=f"tcp://{address}")
        self.md = loader(device=device)
        self.md.enable_distributed(Shard(rank, world))
        return rank

    def call(self, args: tuple, kwargs: dict) -> Any:
        try:
            res = self.md(*args, **kwargs)
        except ConfigError as e:  # alike on every rank, before any model call
            return ("error", str(e))
        res.latents = res.latents.cpu()
        return ("ok", res)

    def close(self) -> None:
        dist.destroy_process_group()


class RayDevicePool:
    """Ray actors (one per GPU, or per CPU slot) forming one process group; a call returns rank 0's output.

    For a notebook on a Ray cluster: `RayDevicePool(functools.partial(MultiDiffusionPipeline.from_pretrained,
    "model"), ranks=4, gpus_per_rank=1)`, or `MultiDiffusionPipeline.on_ray("model", ranks=4)`. The
    rendezvous is on rank 0's node; NCCL on GPUs, gloo on CPUs."""

    def __init__(self, loader: Any, ranks: int, *, gpus_per_rank: float = 0, cpus_per_rank: float = 1,
                 threads_per_rank: int = 1):
        if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 2:
            raise ConfigError(f"ranks={ranks!r}: give an integer >= 2 (one rank: a plain MultiDiffusionPipeline)")
        ray = import_ray()
        if not ray.is_initialized():
            ray.init()
        self.ray = ray
        actor = ray.remote(num_cpus=cpus_per_rank, num_gpus=gpus_per_rank)(RayRank)
        self.actors = [actor.remote() for _ in range(ranks)]
        address = ray.get(self.actors[0].address.remote())
        ray.get([a.setup.remote(r, ranks, address, loader, threads_per_rank) for r, a in enumerate(self.actors)])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        results = self.ray.get([a.call.remote(args, kwargs) for a in self.actors])
        kind, payload = results[0]
        if kind == "error":
            raise ConfigError(payload)
        return payload

    def close(self) -> None:
        self.ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self.ray.kill(a)

    def __enter__(self) -> "RayDevicePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["RAY_INSTALL", "DevicePool", "RayDevicePool", "RayRank", "Shard", "check_distributable",
           "free_port", "import_ray", "init", "rank_device"]
