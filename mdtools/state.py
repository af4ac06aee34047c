"""Interrupt and resume: a canvas's sampling state (latents, scheduler, generators, method draws) saved atomically.

`md(..., state_path=p, state_every=k)` snapshots the state after every step and writes it to
`p` every k steps (and once more when the run is interrupted: KeyboardInterrupt, Ctrl-C).
`md(..., resume=p)` with the same arguments continues from it and gives the same bits as an
uninterrupted run. A state file holds, for each finished stage of a multi-stage method, its
output latents and the generator states after it, and for the current stage: the step, the
latents, the scheduler's state (multistep solvers' history included), the generators'
states, the stage's initial noise and the method's own random generators and draws.

The file is written with `torch.save` to a temporary name and renamed (atomic), and read with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

STATE_VERSION = 1
#: scheduler attribute types a state keeps (everything a diffusers scheduler mutates while stepping)
_PLAIN = (int, float, bool, str, type(None))


def module_fingerprint(module: torch.nn.Module, *, n: int = 4096) -> str:
    """A cheap fingerprint of a model's weights: parameter names, shapes and the first and last
    `n` values of every parameter, hashed (reads weights, runs nothing)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        for part in (flat[:n], flat[-n:]):
            h.update(part.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _plain_value(v: Any) -> bool:
    if isinstance(v, (torch.Tensor, *_PLAIN)):
        return True
    if isinstance(v, (list, tuple)):
        return all(isinstance(x, (torch.Tensor, *_PLAIN)) for x in v)
    return False


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The mutable state of a diffusers scheduler (or of the scheduler a FlowMatchSchedule wraps):
    every attribute that is a tensor, a number, a string, None, or a list of those, copied."""
    inner = scheduler.__dict__.get("scheduler", scheduler)
    out: dict[str, Any] = {}
    for k, v in vars(inner).items():
        if k.startswith("__") or k in ("config", "_internal_dict") or not _plain_value(v):
            continue
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
        elif isinstance(v, (list, tuple)):
            out[k] = {"__seq__": type(v).__name__, "items": [x.detach().clone() if isinstance(x, torch.Tensor) else x
                                                             for x in v]}
        else:
            out[k] = v
    return out


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    inner = scheduler.__dict__.get("scheduler", scheduler)
    for k, v in state.items():
        if isinstance(v, dict) and "__seq__" in v:
            v = list(v["items"]) if v["__seq__"] == "list" else tuple(v["items"])
        setattr(inner, k, v)


def generators(gen: Any) -> list[torch.Generator]:
    if gen is None:
        return []
    return list(gen) if isinstance(gen, (list, tuple)) else [gen]


def generator_states(gen: Any) -> dict[str, Any]:
    """States of the call's generators; with none, torch's global RNG (what diffusers then draws from)."""
    gens = generators(gen)
    if gens:
        return {"generators": [g.get_state() for g in gens]}
    out: dict[str, Any] = {"global_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["global_cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_generators(gen: Any, state: dict[str, Any]) -> None:
    gens = generators(gen)
    if "generators" in state:
        if len(gens) != len(state["generators"]):
            raise ConfigError(f"resume: the state holds {len(state['generators'])} generator(s), the call has {len(gens)}; "
                              "pass the same generator / seed as the interrupted run")
        for g, s in zip(gens, state["generators"]):
            g.set_state(s)
    else:
        torch.set_rng_state(state["global_cpu"])
        if "global_cuda" in state:
            torch.cuda.set_rng_state_all(state["global_cuda"])


def method_state(method: Any) -> dict[str, Any]:
    """A method's own random generators (by attribute name) and its draws (JSON)."""
    gens = {k: v.get_state() for k, v in vars(method).items() if isinstance(v, torch.Generator)}
    return {"generators": gens, "draws": json.dumps(getattr(method, "draws", {}), default=str)}


def restore_method(method: Any, state: dict[str, Any]) -> None:
    for k, s in state["generators"].items():
        g = getattr(method, k, None)
        if isinstance(g, torch.Generator):
            g.set_state(s)
    method.draws = json.loads(state["draws"])


def call_identity(call: Any, md: Any) -> dict[str, Any]:
    """What a resumed call must share with the interrupted one: canvas, plan, steps, scheduler, model."""
    plan = call.plan
    return {"height": call.height, "width": call.width, "window": list(plan.window), "overlap": list(plan.overlap),
            "circular": str(plan.circular), "steps": call.steps, "strength": call.strength, "batch": call.batch,
            "scheduler": type(md.pipe.scheduler).__name__, "model": module_fingerprint(md.unet)}


class StateFile:
    """Snapshots of one generation's state, written to `path` every `every` steps and on interruption."""

    def __init__(self, path: str | os.PathLike, every: int, identity: dict[str, Any], described: dict[str, Any]):
        self.path = Path(path)
        self.every = every
        self.identity = identity
        self.described = described  # prompt, guidance and method of this call (a resume may change them)
        self.stages: list[dict[str, Any]] = []  # finished stages: output latents, generator states after
        self.current: dict[str, Any] | None = None
        self.writes = 0

    def stage_done(self, index: int, latents: torch.Tensor, gen: Any) -> None:
        del self.stages[index:]
        self.stages.append({"latents": latents.detach().clone(), "rng": generator_states(gen)})
        self.current = None

    def after_step(self, run: Any, method: Any, stage: int, step: int, latents: torch.Tensor) -> None:
        """Snapshot the state after `step` of `stage`; write it every `every` steps."""
        self.current = {
            "stage": stage, "step": step, "latents": latents.detach().clone(),
            "scheduler": scheduler_state(run.scheduler), "rng": generator_states(run.generator),
            "noise": None if run.noise is None else run.noise.detach().clone(),
            "method": method_state(method), "total_steps": run.total_steps,
        }
        if (step + 1) % self.every == 0:
            self.write()

    def write(self) -> None:
        """Write the latest snapshot atomically (a temporary file, then a rename)."""
        blob = {"version": STATE_VERSION, "identity": self.identity, "described": self.described,
                "stages": self.stages, "current": self.current}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, self.path)
        self.writes += 1


class ResumeState:
    """A state file read back, checked against the call, and consumed as the loop reaches it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"resume={str(path)!r} does not exist; give the state_path of an interrupted run")
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("version") != STATE_VERSION:
                raise ValueError(f"not an mdtools state file of version {STATE_VERSION}")
            self.identity: dict[str, Any] = blob["identity"]
            self.described: dict[str, Any] = blob["described"]
            self.stages: list[dict[str, Any]] = list(blob["stages"])
            self.current: dict[str, Any] | None = blob["current"]
        except Exception as e:  # a truncated or foreign file: one line, no traceback
            raise ConfigError(f"resume={str(path)!r} is not a readable state file ({type(e).__name__}: {e}); "
                              "delete it and run again without resume") from None

    def check(self, identity: dict[str, Any], described: dict[str, Any], multi_stage: bool) -> list[str]:
        """ConfigError when the call is not the one the state came from; returns what it changes
        (prompt, negative prompt, guidance, method) for the record."""
        diff = [k for k in identity if self.identity.get(k) != identity[k]]
        if diff:
            what = ", ".join(f"{k}: state {self.identity.get(k)!r} vs call {identity[k]!r}" for k in diff)
            raise ConfigError(f"resume={str(self.path)!r} comes from another canvas, plan or model ({what}); resume "
                              "with the interrupted run's size, window, overlap, steps, scheduler and weights")
        changed = [k for k in described if self.described.get(k) != described[k]]
        if "method" in changed and (multi_stage or self.described.get("multi_stage")):
            raise ConfigError("resume cannot change the method of a multi-stage run (global_pass, demofusion): its "
                              f"stages differ; resume with method {self.described['method']['name']!r}")
        return changed

    @property
    def position(self) -> tuple[int, int]:
        """(stage, next step) where the loop continues."""
        if self.current is None:
            return len(self.stages), 0
        return int(self.current["stage"]), int(self.current["step"]) + 1


__all__ = ["STATE_VERSION", "ResumeState", "StateFile", "call_identity", "generator_states", "method_state",
           "restore_generators", "restore_method", "restore_scheduler", "scheduler_state", "module_fingerprint"]
