"""Tiled VAE: decode and encode any canvas in bounded memory, GroupNorm synchronised (docs/vae.md).

`tiled_decode(vae, latents)` returns what `vae.decode(latents).sample` returns and
`tiled_encode(vae, images)` what `vae.encode(images).latent_dist.mode()` returns, to float
noise, for diffusers' AutoencoderKL and the LDM layout (ComfyUI's `first_stage_model`).
`schedule_estimate` says what a run will cost without running it. The submodules:
options (defaults, choice lists, `check_park`), geometry (tiles), groupnorm, program (tile
state and barriers), blocks (resnet / attention steps), layouts (the two readers), halo
(exactness, refresh), profile (one tiny tile run), parking (out of core), schedule (cost
planner), ranks (tiles split over torch.distributed ranks), tiled (the engine). Tunables (STRIPS, STRIP_MIN_VALUES, READ_CHUNK_BYTES,
ATTENTION_QUERY_CHUNK) are read from their submodule: set them there, not here.
"""

from __future__ import annotations

from .blocks import ATTENTION_QUERY_CHUNK, STRIP_MIN_VALUES, STRIPS
from .geometry import AxisTiles, CircularArg, VAETilePlan, blend_weight_sum, plan_vae_tiles
from .groupnorm import GroupStats
from .layouts import ACCEPTED_VAES, VAELayout, vae_layout, vae_scale_factor
from .options import (
    ATTENTION_MODES,
    DEFAULT_DECODE_HALO_PX,
    DEFAULT_ENCODE_HALO_PX,
    DEFAULT_OVERLAP_PX,
    MEMORY_FILESYSTEMS,
    PARK_BUDGET_FRACTION,
    PARK_CHOICES,
    PARK_DTYPES,
    SYNC_STRATEGIES,
    DiskPark,
    Park,
    SyncStrategy,
    check_park,
    default_park_dir,
    park_target,
)
from .parking import READ_CHUNK_BYTES, malloc_trim
from .profile import ProgramProfile, program_profile
from .program import Message
from .schedule import parked_bytes_estimate, resolve_sync_strategy, schedule_estimate
from .tiled import tiled_decode, tiled_encode

__all__ = [
    # running
    "tiled_decode", "tiled_encode",
    # planning and cost
    "schedule_estimate", "resolve_sync_strategy", "parked_bytes_estimate", "plan_vae_tiles", "blend_weight_sum",
    "AxisTiles", "VAETilePlan", "CircularArg", "ProgramProfile", "program_profile",
    # layouts
    "ACCEPTED_VAES", "VAELayout", "vae_layout", "vae_scale_factor",
    # options and their validation
    "DEFAULT_DECODE_HALO_PX", "DEFAULT_ENCODE_HALO_PX", "DEFAULT_OVERLAP_PX", "SYNC_STRATEGIES", "SyncStrategy",
    "ATTENTION_MODES", "PARK_CHOICES", "PARK_DTYPES", "PARK_BUDGET_FRACTION", "MEMORY_FILESYSTEMS", "DiskPark", "Park",
    "check_park", "park_target", "default_park_dir",
    # internals with public names
    "GroupStats", "Message", "malloc_trim", "STRIPS", "STRIP_MIN_VALUES", "READ_CHUNK_BYTES", "ATTENTION_QUERY_CHUNK",
]
