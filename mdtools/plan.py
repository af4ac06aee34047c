"""View plans: where the windows sit on the latent canvas.

Users speak pixels; the plan stores views in latent units (pixels / VAE scale factor).
Unlike diffusers' panorama `get_views` (stride-based, which leaves the last columns
uncovered when (L - window) % stride != 0), windows here are spread evenly between the
two edges, so every latent position is covered and the real overlap is never smaller
than the one asked for. Circular axes use modulo indices: a view may start near the right
edge and continue at the left one; the same flat-index code path serves every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Union

import numpy as np

from .errors import ConfigError, check_choice, check_multiple, check_positive_int

Circular = Union[Literal[False], Literal["x"], Literal["y"], Literal["both"]]
CIRCULAR_MODES: tuple = (False, "x", "y", "both")
#: the same modes as a menu offers them (ComfyUI nodes): "off" for False
CIRCULAR_CHOICES: tuple[str, ...] = ("off", "x", "y", "both")


@dataclass(frozen=True)
class View:
    """One window on the latent canvas, in latent units.

    `top + height` may exceed the canvas height on a circular axis: rows are then taken
    modulo the canvas height (likewise for columns).
    """

    top: int
    left: int
    height: int
    width: int

    def pixel_box(self, scale: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) in pixels."""
        return self.top * scale, self.left * scale, self.height * scale, self.width * scale


def _axis_starts(length: int, window: int, overlap: int, circular: bool) -> tuple[list[int], int]:
    """Start positions and view size along one axis (latent units).

    Non-circular: n = ceil((L - o) / (win - o)) windows spread evenly from 0 to L - win
    (A1111's count; the spacing (L - win) / (n - 1) is <= win - o, so the real overlap
    is >= o). When (L - win) divides by the stride this gives exactly diffusers' views.
    Circular: n = ceil(L / (win - o)) windows spaced L / n apart around the ring.
    """
    if window >= length:
        if circular and length >= 2:
            # One full-length view never sees its two ends side by side; a second view
            # shifted by half the ring puts the wrap line in its middle and fuses it.
            return [0, length // 2], length
        return [0], length
    stride = window - overlap
    if circular:
        n = -(-length // stride)
        # integer round-half-up of i * L / n, so plans do not depend on float rounding
        return [(2 * i * length + n) // (2 * n) for i in range(n)], window
    n = -(-(length - overlap) // stride)
    span = length - window
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)], window


@dataclass(frozen=True)
class TilePlan:
    """A fixed schedule of views over a canvas, computed once before sampling.

    Sizes given by the user (`height`, `width`, `window`, `overlap`) are in pixels;
    `views`, `latent_height`, `latent_width` and `stride` are in latent units.
    """

    height: int
    width: int
    window: tuple[int, int]
    overlap: tuple[int, int]
    scale: int
    circular: Circular
    views: tuple[View, ...]

    @property
    def latent_height(self) -> int:
        return self.height // self.scale

    @property
    def latent_width(self) -> int:
        return self.width // self.scale

    @property
    def view_size(self) -> tuple[int, int]:
        """(height, width) of every view in latent units (all views have the same size)."""
        return self.views[0].height, self.views[0].width

    @property
    def n_views(self) -> int:
        return len(self.views)

    @property
    def stride(self) -> tuple[int, int]:
        """Largest distance between neighbouring view starts per axis (y, x), latent units.

        0 on an axis with a single view. With evenly spread views the real stride may be
        up to one latent pixel smaller than window - overlap.
        """
        out = []
        for starts, length, wraps in (
            (sorted({v.top for v in self.views}), self.latent_height, self.wraps_y),
            (sorted({v.left for v in self.views}), self.latent_width, self.wraps_x),
        ):
            gaps = np.diff(starts + ([starts[0] + length] if wraps and len(starts) > 1 else []))
            out.append(int(gaps.max()) if len(gaps) else 0)
        return out[0], out[1]

    @property
    def wraps_x(self) -> bool:
        return self.circular in ("x", "both")

    @property
    def wraps_y(self) -> bool:
        return self.circular in ("y", "both")

    @property
    def redundancy(self) -> float:
        """Sum of view areas / canvas area: how many times each latent pixel is denoised."""
        area = sum(v.height * v.width for v in self.views)
        return area / (self.latent_height * self.latent_width)

    def _edges(self, axis: str) -> tuple[int, ...]:
        length = self.latent_width if axis == "x" else self.latent_height
        wraps = self.wraps_x if axis == "x" else self.wraps_y
        edges = set()
        for v in self.views:
            start, size = (v.left, v.width) if axis == "x" else (v.top, v.height)
            for e in (start, start + size):
                e = e % length if wraps else e
                if 0 < e < length:
                    edges.add(e * self.scale)
        return tuple(sorted(edges))

    @property
    def seam_lines(self) -> dict[str, tuple[int, ...]]:
        """View edges strictly inside the canvas, in pixels.

        "x": column positions of vertical seam lines, "y": row positions of horizontal
        ones. A line at position p separates pixel p - 1 from pixel p.
        """
        return {"x": self._edges("x"), "y": self._edges("y")}

    @property
    def wrap_lines(self) -> dict[str, tuple[int, ...]]:
        """The wrap line (position 0 == width) of each circular axis, in pixels."""
        return {"x": (0,) if self.wraps_x else (), "y": (0,) if self.wraps_y else ()}

    @property
    def center_lines(self) -> dict[str, tuple[int, ...]]:
        """View centre lines in pixels (mod canvas on circular axes): control lines for
        seam metrics, far from that view's own edges."""
        xs = sorted({((v.left * 2 + v.width) * self.scale // 2) % self.width for v in self.views})
        ys = sorted({((v.top * 2 + v.height) * self.scale // 2) % self.height for v in self.views})
        return {"x": tuple(xs), "y": tuple(ys)}

    @cached_property
    def flat_indices(self) -> np.ndarray:
        """(n_views, h * w) int64 indices of each view's pixels into the flattened latent
        canvas (row-major), with modulo wrap on circular axes. One code path for all."""
        h, w = self.view_size
        H, W = self.latent_height, self.latent_width
        dy, dx = np.arange(h), np.arange(w)
        out = np.empty((self.n_views, h * w), dtype=np.int64)
        for i, v in enumerate(self.views):
            rows = (v.top + dy) % H
            cols = (v.left + dx) % W
            out[i] = (rows[:, None] * W + cols[None, :]).reshape(-1)
        return out

    def coverage(self) -> np.ndarray:
        """(H, W) latent map of how many views cover each position."""
        counts = np.bincount(self.flat_indices.reshape(-1), minlength=self.latent_height * self.latent_width)
        return counts.reshape(self.latent_height, self.latent_width)

    def summary(self) -> dict:
        """Plain-dict description for records and tables."""
        return {
            "height": self.height,
            "width": self.width,
            "window_h": self.window[0],
            "window_w": self.window[1],
            "overlap_h": self.overlap[0],
            "overlap_w": self.overlap[1],
            "scale": self.scale,
            "circular": self.circular,
            "n_views": self.n_views,
            "view_h": self.view_size[0],
            "view_w": self.view_size[1],
            "stride_y": self.stride[0],
            "stride_x": self.stride[1],
            "redundancy": self.redundancy,
        }


def _pair(field: str, value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(f"{field} must be an int or a (height, width) pair, got {value!r}")
        return value[0], value[1]
    return value, value


def plan_views(
    height: int,
    width: int,
    *,
    window: int | tuple[int, int] = 512,
    overlap: int | tuple[int, int] = 64,
    scale: int = 8,
    circular: Circular = False,
) -> TilePlan:
    """Plan the views for a `height` x `width` pixel canvas.

    `window` and `overlap` are pixels (an int or a (height, width) pair); `scale` is the
    VAE's downsampling factor (8 for SD/SDXL, 1 for a pixel-space model). `circular` is
    False, "x", "y" or "both": wrapped axes tile a 360-degree panorama. Every latent
    position is covered by at least one view; a window larger than the canvas on an axis
    gives one view of the canvas size on that axis (two on a circular axis, see
    `_axis_starts`).
    """
    check_positive_int("scale", scale)
    check_multiple("height", height, scale)
    check_multiple("width", width, scale)
    wh, ww = _pair("window", window)
    oh, ow = _pair("overlap", overlap)
    for name, v in (("window", wh), ("window", ww)):
        check_multiple(name, v, scale)
    for name, v, win in (("overlap", oh, wh), ("overlap", ow, ww)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name} must be an integer >= 0 pixels (e.g. 64), got {v!r}")
        if v % scale:
            lo = (v // scale) * scale
            raise ConfigError(
                f"{name}={v} is not a multiple of the VAE scale factor ({scale}); use {lo} or {lo + scale}"
            )
        if v >= win:
            raise ConfigError(
                f"{name}={v} must be smaller than window={win} (e.g. {min(64, win // 2 // scale * scale)})"
            )
    if circular is True:
        circular = "x"  # accepted shorthand for the common 360-degree horizontal panorama
    check_choice("circular", circular, CIRCULAR_MODES)
    H, W = height // scale, width // scale
    ys, vh = _axis_starts(H, wh // scale, oh // scale, circular in ("y", "both"))
    xs, vw = _axis_starts(W, ww // scale, ow // scale, circular in ("x", "both"))
    views = tuple(View(t, left, vh, vw) for t in ys for left in xs)
    return TilePlan(height, width, (wh, ww), (oh, ow), scale, circular, views)

