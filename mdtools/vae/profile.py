"""Static facts of a tile program (barriers, sizes, multiply-adds, reach), from one tiny tile run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .halo import _conv_reach
from .program import _advance, _reply, _Tile

if TYPE_CHECKING:
    from .layouts import VAELayout


@dataclass(frozen=True)
class ProgramProfile:
    """Static facts of a tile program, from one tiny tile run: per barrier its kind, its
    step index and the values (per latent pixel of the tile input, per sample) that a
    tile's stack holds there; the output channels; canvas keys + values per canvas latent
    pixel; optionally the convolution / linear multiply-adds of every step per latent
    pixel (`step_macs`, for `schedule_estimate`)."""

    kinds: tuple[str, ...]
    values: tuple[float, ...]
    out_channels: int
    kv_values: float
    barrier_steps: tuple[int, ...] = ()
    step_macs: tuple[float, ...] = ()
    message_macs: tuple[float, ...] = ()  # per core pixel, once per tile and barrier (keys, values)
    #: per step, how far (latent pixels) its convolutions carry a tile edge's zero padding
    #: inwards: the reach of each kernel at its input resolution (see `_conv_reach`)
    step_reach: tuple[float, ...] = ()
    #: per barrier, the canvas keys + values it sends per canvas latent pixel (0 at GroupNorms)
    kv_each: tuple[float, ...] = ()


def program_profile(layout: VAELayout, *, canvas_attention: bool, macs: bool = False) -> ProgramProfile:
    """Run the program on a 2 x 2 latent tile, answering each barrier with the tile's own
    statistics (the barrier sequence does not depend on the values)."""
    p = layout.parameter
    unit = 1 if layout.direction == "decode" else layout.scale
    L = 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, layout.in_channels, L * unit, L * unit, generator=g).to(p.device, p.dtype)
    T = _Tile((0, 0), (L, L), (0, L, 0, L), True, [x], canvas_attention=canvas_attention)
    kinds, values, where, sent, kv, kv_each = [], [], [], [], 0.0, []
    counts = [0.0] * len(layout.steps)
    reach = [0.0] * len(layout.steps)

    def count(mod: nn.Module, args: Any, out: Any) -> None:
        # multiply-adds of the step being run (T.pc); convs and linears are the cost
        if isinstance(mod, nn.Conv2d):
            if macs:
                counts[T.pc] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
                # input pixels per latent pixel; width, because row strips cut the height (floor:
                # Downsample2D pads its input by one pixel before the conv)
                reach[T.pc] += _conv_reach(mod) / max(1, args[0].shape[-1] // L)
        elif macs and isinstance(mod, nn.Linear):
            counts[T.pc] += out.numel() * mod.in_features

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        with torch.inference_mode():
            while (msg := _advance(T, layout.steps)) is not None:
                kinds.append(msg[1])
                where.append(T.pc)
                # what ran since the last step ended is the message (the core's keys and values)
                sent.append(counts[T.pc] / (L * L))
                counts[T.pc] = 0.0
                values.append(sum({id(t): t.numel() for t in T.stack}.values()) / (L * L))
                kv_each.append((msg[2].numel() + msg[3].numel()) / (L * L) if msg[1] == "kv" else 0.0)
                kv += kv_each[-1]
                T.known.append(_reply([msg], p.device))
    finally:
        hook.remove()
    return ProgramProfile(tuple(kinds), tuple(values), T.stack[-1].shape[1], kv, tuple(where),
                    tuple(c / (L * L) for c in counts), tuple(sent), tuple(reach), tuple(kv_each))
