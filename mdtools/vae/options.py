"""Options of the tiled VAE and their validation: defaults, choice lists, park targets, argument checks."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import torch

from ..choices import PARK_CHOICES, SYNC_STRATEGIES, SyncStrategy  # noqa: F401  (re-exported by mdtools.vae)
from ..errors import ConfigError, check_choice, check_multiple
from ..kernels import Kernel, get_kernel
from ..plan import CIRCULAR_MODES

if TYPE_CHECKING:
    from .layouts import VAELayout


#: Default halo in pixels of runs that cannot be exact (no sync, or attention within
#: tiles); exact runs take the halo their checkpoints need (`_exact_halo`). The decoder's
#: receptive field is wide; 8 latent px (64 px) brings tile errors near the blend floor
#: (see benchmarks/vae_memory.py). The encoder halo follows A1111's 32 px.
DEFAULT_DECODE_HALO_PX: int = 64
DEFAULT_ENCODE_HALO_PX: int = 32


#: Default overlap (px) of tiles that are blended: without sync, or with attention in tiles.
DEFAULT_OVERLAP_PX: int = 64


#: Where the mid-block self-attention takes its keys and values: the whole canvas, or its tile.
ATTENTION_MODES: tuple[str, ...] = ("canvas", "tile")
#: Half-precision parking (opt-in `park_dtype`): half the parked bytes, no longer float-exact.
PARK_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


#: With park_budget_bytes=None, "auto" may park at most this fraction of the free memory
#: of the park device (host MemAvailable, or free CUDA memory).
PARK_BUDGET_FRACTION: float = 0.25


@dataclass(frozen=True)
class DiskPark:
    """Park out of core: tile states and canvas keys / values in files under `root`."""

    root: str
    type: str = "disk"


Park = Union[torch.device, DiskPark]


#: file systems that keep their files in memory: parking there is not out of core
MEMORY_FILESYSTEMS: tuple[str, ...] = ("tmpfs", "ramfs")


def _filesystem(path: str) -> str | None:
    """The type of the file system holding `path` (/proc/mounts, longest mount point),
    or None where that cannot be read."""
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            mounts = [line.split()[1:3] for line in fh if len(line.split()) > 2]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = "", None
    for point, fs in mounts:
        point = point.replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fs
    return kind


def default_park_dir() -> str:
    """Where park="disk" puts its files: $MDTOOLS_PARK_DIR if set, else the system's
    temporary directory unless it is held in memory (tmpfs: /tmp on Fedora, Arch, Debian
    13), then /var/tmp."""
    env = os.environ.get("MDTOOLS_PARK_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    tmp = tempfile.gettempdir()
    if _filesystem(tmp) in MEMORY_FILESYSTEMS and os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK):
        return "/var/tmp"
    return tmp


def check_park(field: str, value: Any) -> Park:
    """The park option `value` (as tiled_decode / tiled_encode take it) -> a torch.device, or a
    DiskPark for "disk" (`default_park_dir()`) / "disk:<dir>"; a ConfigError naming `field` and
    a valid value otherwise, and a warning when the directory's file system is held in memory.
    The one validator of a park option (tiled_decode, pipelines, configs, nodes)."""
    if isinstance(value, DiskPark):
        return value
    if isinstance(value, str) and (value == "disk" or value.startswith("disk:")):
        root = os.path.abspath(os.path.expanduser(value[5:])) if value[5:] else default_park_dir()
        if not os.path.isdir(root) or not os.access(root, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}={value!r}: {root!r} is not a writable directory; use 'disk' (the system's "
                              "temporary directory, or $MDTOOLS_PARK_DIR) or 'disk:/path/to/scratch'")
        if (fs := _filesystem(root)) in MEMORY_FILESYSTEMS:
            warnings.warn(f"{field}={value!r}: {root} is on {fs}, which keeps files in memory, so parking there is "
                          "not out of core; give a directory on a disk ('disk:/path/to/scratch' or $MDTOOLS_PARK_DIR)",
                          stacklevel=3)
        return DiskPark(root)
    try:
        return torch.device(value)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(f"{field} must be a device such as 'cpu' or 'cuda', or 'disk' / 'disk:<dir>' (out of core), "
                          f"got {value!r}") from exc


def park_target(park: Any, field: str = "park") -> Park:
    """`check_park(field, park)`, under its former name (config.py and pipeline.py still call
    it; new code calls `check_park`)."""
    return check_park(field, park)


def _default_overlap(overlap: int | None, sync_groupnorm: Any, attention: Any, halo: Any = None,
                     reach_known: bool = True) -> Any:
    """`overlap=None`: 0 px on an exact run (synchronised, canvas attention, every
    spatial operation's reach known, and the halo left to mdtools, which makes it exact:
    tiles agree with the full decode, so there is nothing to blend), else
    DEFAULT_OVERLAP_PX (a given halo may be too small to be exact)."""
    if overlap is not None:
        return overlap
    exact = sync_groupnorm is True and attention == "canvas" and halo is None and reach_known
    return 0 if exact else DEFAULT_OVERLAP_PX


def _park_dtype(park_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A name of PARK_DTYPES or a torch.dtype -> the torch.dtype (ConfigError otherwise); None stays None."""
    if park_dtype is None:
        return None
    if isinstance(park_dtype, torch.dtype):
        park_dtype = {v: k for k, v in PARK_DTYPES.items()}.get(park_dtype, str(park_dtype))
    check_choice("park_dtype", park_dtype, tuple(PARK_DTYPES))
    return PARK_DTYPES[park_dtype]


def _check_budget(park_budget_bytes: Any) -> None:
    if park_budget_bytes is not None and (isinstance(park_budget_bytes, bool) or not isinstance(
            park_budget_bytes, int) or park_budget_bytes < 0):
        raise ConfigError(f"park_budget_bytes must be None (a quarter of the park device's free memory) or an "
                          f"integer >= 0 bytes (e.g. {4 << 30} for 4 GiB), got {park_budget_bytes!r}")


def _check_args(layout: VAELayout, x: Any, *, what: str, tile: Any, overlap: Any, halo: Any,
                circular: Any, kernel: Any, sync_groupnorm: Any, park: Any, pixel_input: bool,
                sync_strategy: Any = "auto", attention: Any = "canvas", park_budget_bytes: Any = None,
                park_dtype: Any = None) -> tuple[int, Kernel, Any, Park, torch.dtype | None]:
    """Check the arguments of tiled_decode / tiled_encode (ConfigError naming the field and a
    valid value); returns the scale factor, the kernel, the circular mode, the park target
    and the park dtype."""
    scale, channels = layout.scale, layout.in_channels
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ConfigError(f"{what} must be a 4-D tensor (batch, channels, height, width), "
                          f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] != channels:
        raise ConfigError(f"{what} must have {channels} channels for this VAE, got {x.shape[1]}")
    if pixel_input:
        check_multiple(f"{what} height", x.shape[2], scale)
        check_multiple(f"{what} width", x.shape[3], scale)
    check_multiple("tile", tile, scale)
    for name, v in (("overlap", overlap), ("halo", halo)):
        if v is None and name == "halo":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name} must be an integer >= 0 pixels (e.g. {8 * scale}), got {v!r}")
        if v % scale:
            lo = v // scale * scale
            raise ConfigError(f"{name}={v} is not a multiple of the VAE scale factor ({scale}); "
                              f"use {lo} or {lo + scale}")
    if overlap >= tile:
        raise ConfigError(f"overlap={overlap} must be smaller than tile={tile} "
                          f"(e.g. {max(0, tile // 8 // scale * scale)})")
    if circular is not True:
        check_choice("circular", circular, CIRCULAR_MODES)
    if not isinstance(sync_groupnorm, bool):
        raise ConfigError(f"sync_groupnorm must be True or False, got {sync_groupnorm!r}")
    check_choice("sync_strategy", sync_strategy, SYNC_STRATEGIES)
    check_choice("attention", attention, ATTENTION_MODES)
    _check_budget(park_budget_bytes)
    park_dtype = _park_dtype(park_dtype)
    return scale, get_kernel(kernel), ("x" if circular is True else circular), check_park("park", park), park_dtype
