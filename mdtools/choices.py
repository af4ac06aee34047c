"""The choice lists that the CLI, experiment files, the pipeline and the ComfyUI nodes share, defined once (no torch import)."""

from __future__ import annotations

from typing import Literal

#: dtype names of the CLI, experiment files and the ComfyUI nodes (mdtools.models.DTYPES maps them to torch dtypes)
DtypeName = Literal["float32", "float16", "bfloat16"]
DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: How a synchronised tiled VAE run keeps the tiles waiting at a barrier (see mdtools.vae.tiled_decode).
SyncStrategy = Literal["auto", "park", "recompute"]
SYNC_STRATEGIES: tuple[str, ...] = ("auto", "park", "recompute")
#: The park targets a menu offers (host RAM, or out of core); mdtools.vae.check_park also takes
#: any torch device ("cuda", "cuda:1") and "disk:<dir>".
PARK_CHOICES: tuple[str, ...] = ("cpu", "disk")

__all__ = ["DTYPE_NAMES", "PARK_CHOICES", "SYNC_STRATEGIES", "DtypeName", "SyncStrategy"]
