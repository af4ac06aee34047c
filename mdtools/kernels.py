"""Blend kernels: per-view weights for fusing overlapping predictions.

A kernel maps a view size (h, w) — and the overlap, for the kernels that use it — to a
strictly positive, separable, symmetric (h, w) weight tensor: the outer product of two
1-D profiles. Strict positivity keeps the fused value a proper weighted average wherever
a view exists (no division by zero, no dropped view). Profiles are symmetric about the
pixel-centre (L - 1) / 2, which fixes the half-pixel skew of implementations that centre
at L / 2 (Mixture of Diffusers' tiling.py, the seed article).

Units do not matter to a kernel: the engine calls it in latent units, the tiled VAE in
pixels.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .errors import ConfigError

Profile = Callable[..., np.ndarray]


def _centred(length: int) -> np.ndarray:
    """Pixel offsets from the symmetric centre (L - 1) / 2."""
    return np.arange(length, dtype=np.float64) - (length - 1) / 2.0


def uniform(length: int, overlap: int = 0) -> np.ndarray:
    """Plain averaging: MultiDiffusion Eq. 5 with W_i = 1 (diffusers' panorama)."""
    return np.ones(length)


def gaussian(length: int, overlap: int = 0, *, sigma: float = 0.25) -> np.ndarray:
    """exp(-u^2 / (2 (sigma L)^2)), u from the window centre.

    `sigma` is a fraction of the window. Default 0.25: the edge weight is exp(-2) = 0.14
    of the centre, so where two windows overlap the weight hands over smoothly across the
    whole overlap instead of switching within a few pixels; Mixture of Diffusers' 0.1
    (edge weight ~4e-6) behaves almost like a hard cut at the midpoint between centres.
    Compare both with `get_kernel("gaussian", sigma=0.1)`.
    """
    return np.exp(-(_centred(length) ** 2) / (2.0 * (sigma * length) ** 2))


def cosine(length: int, overlap: int = 0, *, floor: float = 0.01) -> np.ndarray:
    """Raised cosine (Hann) profile over the window, lifted to a positive floor.

    w(u) = floor + (1 - floor) sin^2(pi (u + 0.5) / L): 1 at the centre, about `floor` at
    the edges; the floor keeps edge pixels of a view that no other view covers usable.
    """
    u = np.arange(length, dtype=np.float64)
    return floor + (1.0 - floor) * np.sin(np.pi * (u + 0.5) / length) ** 2


def linear(length: int, overlap: int = 0) -> np.ndarray:
    """Feather: flat 1 in the interior, linear ramp across the `overlap` width at each edge.

    Ramp values (k + 1) / (overlap + 1) for the k-th pixel from an edge, so the weight
    is positive and two views overlapping by exactly `overlap` sum to a constant.
    """
    u = np.arange(length, dtype=np.float64)
    if overlap <= 0:
        return np.ones(length)
    ramp = np.minimum((u + 1) / (overlap + 1), (length - u) / (overlap + 1))
    return np.minimum(1.0, ramp)


def seed_gaussian(length: int, overlap: int = 0, *, exact_article: bool = False) -> np.ndarray:
    """The seed article's weight: exp(-(u - L/2)^2 / (2 s^2)), s = (L - o) / 2, >= 1e-6.

    With `exact_article=False` (default) the centre is the symmetric (L - 1) / 2; the
    article's L / 2 shifts the peak by half a pixel, kept available for reproduction.
    """
    s = max((length - overlap) / 2.0, 1e-6)
    u = np.arange(length, dtype=np.float64) - (length / 2.0 if exact_article else (length - 1) / 2.0)
    return np.maximum(np.exp(-(u**2) / (2.0 * s**2)), 1e-6)


def mixture(length: int, overlap: int = 0, *, var: float = 0.01) -> np.ndarray:
    """Mixture of Diffusers' tile weight (Jiménez 2023, albarji/mixture-of-diffusers):
    exp(-u^2 / (L^2 * 2 var)) / sqrt(2 pi var), u from the centre (L - 1) / 2.

    var = 0.01 is the official value (a Gaussian with sigma = 0.1 L; edge weight ~4e-6 of the
    centre). The official tiling.py centres the y profile at L / 2; mdtools centres both at
    (L - 1) / 2, as the official canvas.py does. The constant 1 / sqrt(2 pi var) cancels in Eq. 5.
    """
    return np.exp(-(_centred(length) ** 2) / (length**2 * 2.0 * var)) / np.sqrt(2.0 * np.pi * var)


KERNELS: dict[str, Profile] = {
    "uniform": uniform,
    "gaussian": gaussian,
    "cosine": cosine,
    "linear": linear,
    "seed_gaussian": seed_gaussian,
    "mixture": mixture,
}

_PARAM_CHECKS: dict[str, Callable[[Any], bool]] = {
    "sigma": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
    "floor": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
    "exact_article": lambda v: isinstance(v, bool),
    "var": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
}
_PARAM_HINTS = {"sigma": "a number > 0, e.g. 0.25", "floor": "a number in (0, 1], e.g. 0.01",
                "exact_article": "true or false", "var": "a number > 0, e.g. 0.01"}


def kernel_params(name: str) -> dict[str, Any]:
    """The tunable parameters of kernel `name` and their defaults."""
    sig = inspect.signature(KERNELS[name])
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


@dataclass(frozen=True)
class Kernel:
    """A named kernel with its parameters bound. Call it to get an (h, w) weight tensor."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def profile(self, length: int, overlap: int = 0) -> np.ndarray:
        """1-D float64 profile of `length` samples."""
        return KERNELS[self.name](length, overlap, **self.params)

    def __call__(
        self,
        height: int,
        width: int,
        *,
        overlap: tuple[int, int] = (0, 0),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(height, width) weights, the outer product of the two axis profiles."""
        w2d = np.outer(self.profile(height, overlap[0]), self.profile(width, overlap[1]))
        return torch.as_tensor(w2d, dtype=dtype, device=device)

    def describe(self) -> str:
        """e.g. 'gaussian(sigma=0.25)'."""
        full = {**kernel_params(self.name), **self.params}
        args = ", ".join(f"{k}={v}" for k, v in sorted(full.items()))
        return f"{self.name}({args})"


def get_kernel(name: str | Kernel, **params: Any) -> Kernel:
    """Look up kernel `name` in KERNELS and bind its parameters (validated)."""
    if isinstance(name, Kernel):
        if params:
            return Kernel(name.name, {**name.params, **params})
        return name
    if name not in KERNELS:
        raise ConfigError(f"kernel={name!r} is not a known kernel; choose one of {sorted(KERNELS)}")
    allowed = kernel_params(name)
    for key, value in params.items():
        if key not in allowed:
            valid = sorted(allowed) or "none"
            raise ConfigError(f"kernel {name!r} has no parameter {key!r}; its parameters: {valid}")
        if not _PARAM_CHECKS[key](value):
            raise ConfigError(f"kernel {name!r} parameter {key}={value!r} is invalid; use {_PARAM_HINTS[key]}")
    return Kernel(name, dict(params))
