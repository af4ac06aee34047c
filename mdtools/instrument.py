"""The recorder: wall time, counts and peak memory per phase of a generation.

Phases nest (`with rec.phase("denoise"):` inside a generation); each phase records
wall time and peak memory over its own span.

Peak memory:
- CUDA: `torch.cuda.max_memory_allocated` / `max_memory_reserved`, reset at each phase
  start (exact, from the caching allocator). Clocks are read after `synchronize()`.
- CPU (Linux): the kernel's resident-set high-water mark `VmHWM`, reset at each phase
  start by writing "5" to /proc/self/clear_refs. This is a true high-water mark, not a
  sample; its accuracy is the kernel's RSS accounting (page-granular, per-thread
  counters folded in lazily, so a spike shorter than a few hundred KiB may be missed).
  Where /proc is not writable the peak is `None` and `cpu_peak_method` says so.
Nested phases fold their peak into every enclosing phase before resetting, so an outer
phase's peak is never lost to an inner reset.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _read_status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_hwm() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def device_name(device: torch.device) -> str:
    """Human-readable device name, e.g. 'NVIDIA H100 80GB HBM3' or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@dataclass
class PhaseStats:
    """One phase's totals. Memory in bytes; None where not measurable."""

    name: str
    seconds: float = 0.0
    calls: int = 0
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    peak_rss: int | None = None


@dataclass
class Record:
    """Everything measured about one generation; `to_dict()` / `to_json()` serialise it."""

    device: str = ""
    device_name: str = ""
    dtype: str = ""
    torch_version: str = torch.__version__
    diffusers_version: str = ""
    date: str = ""
    cpu_peak_method: str = ""
    phases: dict[str, PhaseStats] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    disagreement: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phases"] = {k: asdict(v) for k, v in self.phases.items()}
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)

    def flat(self) -> dict[str, Any]:
        """One-level dict for tables: `time_<phase>`, `peak_rss_<phase>`, counts, ..."""
        out: dict[str, Any] = {"device_name": self.device_name, "dtype": self.dtype}
        for name, p in self.phases.items():
            out[f"time_{name}"] = p.seconds
            for key in ("peak_allocated", "peak_reserved", "peak_rss"):
                out[f"{key}_{name}"] = getattr(p, key)
        out.update(self.counts)
        if self.disagreement:
            out["disagreement_mean"] = sum(self.disagreement) / len(self.disagreement)
        return out


class Recorder:
    """Times and measures phases of a generation on `device`.

    `enabled=False` turns every method into a cheap no-op, for overhead measurements.
    """

    def __init__(self, device: torch.device | str = "cpu", *, dtype: torch.dtype | None = None, enabled: bool = True):
        self.device = torch.device(device)
        self.enabled = enabled
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self._stack: list[PhaseStats] = []
        import diffusers  # local: keep `import mdtools.instrument` light

        cpu_ok = (not self._cuda) and _reset_cpu_hwm()
        self.record = Record(
            device=str(self.device),
            device_name=device_name(self.device) if enabled else "",
            dtype=str(dtype).replace("torch.", "") if dtype is not None else "",
            diffusers_version=diffusers.__version__,
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            cpu_peak_method=(
                "cuda allocator" if self._cuda else ("VmHWM high-water mark, reset per phase" if cpu_ok else "unavailable")
            ),
        )

    def sync(self) -> None:
        """Wait for queued GPU work so that a clock read means something."""
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def _read_peaks(self) -> tuple[int | None, int | None, int | None]:
        if self._cuda:
            return (torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device), None)
        kib = _read_status_kib("VmHWM:")
        return None, None, None if kib is None else kib * 1024

    def _fold(self, stats: PhaseStats, peaks: tuple[int | None, int | None, int | None]) -> None:
        for key, value in zip(("peak_allocated", "peak_reserved", "peak_rss"), peaks):
            if value is not None:
                old = getattr(stats, key)
                setattr(stats, key, value if old is None else max(old, value))

    def _reset_peaks(self) -> None:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_cpu_hwm()

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseStats | None]:
        """Time and measure the enclosed block as phase `name` (accumulates if repeated)."""
        if not self.enabled:
            yield None
            return
        stats = self.record.phases.setdefault(name, PhaseStats(name))
        self.sync()
        if self._stack:  # fold the running peak into the enclosing phases before resetting
            peaks = self._read_peaks()
            for outer in self._stack:
                self._fold(outer, peaks)
        self._reset_peaks()
        self._stack.append(stats)
        t0 = time.perf_counter()
        try:
            yield stats
        finally:
            self.sync()
            stats.seconds += time.perf_counter() - t0
            stats.calls += 1
            self._stack.pop()
            peaks = self._read_peaks()
            for s in (stats, *self._stack):
                self._fold(s, peaks)

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to counter `key` (e.g. 'model_forward_calls')."""
        if self.enabled:
            self.record.counts[key] = self.record.counts.get(key, 0) + n

    def __call__(self, info: dict[str, Any]) -> None:
        """Step callback: records per-step wall time and the view disagreement if present."""
        if not self.enabled:
            return
        if "step_seconds" in info:
            self.record.step_seconds.append(info["step_seconds"])
        if info.get("disagreement") is not None:
            self.record.disagreement.append(float(info["disagreement"]))
