"""GroupNorm statistics: per-core statistics, Chan's merge, and GroupNorm with given statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class GroupStats:
    """Running (count, mean, M2) per (sample, group), float64, merged with Chan's formula."""

    n: float = 0.0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def merge(self, n: float, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Fold in a part with `n` elements per group, its mean and (population) variance."""
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = float(n), mean, m2
            return
        tot = self.n + n
        delta = mean - self.mean
        # Chan et al. parallel variance: keeps the between-tile term delta^2 n_a n_b / n
        # that pooling per-tile variances alone (A1111) drops
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / tot)
        self.mean = self.mean + delta * (n / tot)
        self.n = tot

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / self.n


def _core_stats(x: torch.Tensor, groups: int, core: tuple[int, int, int, int], r: int
                ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, var) per (sample, group) over the core box (latent units x r), float32."""
    y0, y1, x0, x1 = core
    B = x.shape[0]
    flat = x[:, :, y0 * r:y1 * r, x0 * r:x1 * r].reshape(B, groups, -1).float()
    var, mean = torch.var_mean(flat, dim=-1, correction=0)
    return flat.shape[-1], mean, var


def _own_stats(x: torch.Tensor, mod: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(x.reshape(x.shape[0], mod.num_groups, -1).float(), dim=-1, correction=0)
    return mean, var


def _check_group_norm(mod: Any, where: str) -> nn.GroupNorm:
    if not isinstance(mod, nn.GroupNorm):
        raise ConfigError(f"unsupported normalisation layer {type(mod).__name__} at {where}; the tiled VAE needs "
                          "GroupNorm (a diffusers AutoencoderKL or an LDM-layout autoencoder)")
    return mod


def _group_norm(x: torch.Tensor, mod: nn.GroupNorm, stats: tuple[torch.Tensor, torch.Tensor] | None,
                inplace: bool = False) -> torch.Tensor:
    """GroupNorm of `x` in float32 with given (mean, var) per (sample, group), or with
    x's own statistics when `stats` is None. float32 because fp16 variances overflow.

    `inplace=True` (a float32 `x` that nothing else holds) overwrites `x`: one activation
    less at the peak, which is where a tile's memory goes."""
    # .to(x.device): layouts that keep weights elsewhere and cast them per call (ComfyUI's
    # low-VRAM modes) still normalise on the activation's device
    w = mod.weight.to(device=x.device, dtype=torch.float32) if mod.weight is not None else None
    b = mod.bias.to(device=x.device, dtype=torch.float32) if mod.bias is not None else None
    B, C = x.shape[:2]
    if stats is None:
        if not (inplace and x.dtype == torch.float32):
            return F.group_norm(x.float(), mod.num_groups, w, b, mod.eps).to(x.dtype)
        var, mean = torch.var_mean(x.reshape(B, mod.num_groups, -1), dim=-1, correction=0)
    else:
        mean, var = (t.to(device=x.device, dtype=torch.float32) for t in stats)
    rep = C // mod.num_groups
    scale = torch.rsqrt(var + mod.eps).repeat_interleave(rep, dim=1)
    shift = -mean.repeat_interleave(rep, dim=1) * scale
    if w is not None:
        scale, shift = scale * w, shift * w + b
    scale, shift = scale[:, :, None, None], shift[:, :, None, None]
    if inplace and x.dtype == torch.float32:
        return x.mul_(scale).add_(shift)
    return torch.addcmul(shift, x.float(), scale).to(x.dtype)
