"""Seam lines and tile boxes: where the views of a plan meet, shared by every metric family."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, Union

import torch

from ...errors import ConfigError
from ...plan import TilePlan

Lines = dict[str, tuple[int, ...]]
Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels
LinesLike = Union[TilePlan, Mapping[str, Iterable[int]], Sequence[Box], None]


def lines_from_boxes(boxes: Sequence[Box], height: int, width: int) -> Lines:
    """Tile edges strictly inside the image, from (top, left, height, width) pixel boxes."""
    xs, ys = set(), set()
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise ConfigError(f"tiles[{i}] must be a (top, left, height, width) pixel box; got {box!r}")
        t, l, h, w = (int(v) for v in box)
        if h <= 0 or w <= 0:
            raise ConfigError(f"tiles[{i}]={box!r} must have positive height and width")
        ys.update(e for e in (t, t + h) if 0 < e < height)
        xs.update(e for e in (l, l + w) if 0 < e < width)
    return {"x": tuple(sorted(xs)), "y": tuple(sorted(ys))}


def resolve_lines(
    plan_or_lines: LinesLike, height: int, width: int, *, name: str = "plan_or_lines"
) -> tuple[Lines, int | None]:
    """Seam lines (and the plan's pixel grid, if known) from a plan, a line dict or boxes."""
    if plan_or_lines is None:
        return {"x": (), "y": ()}, None
    if isinstance(plan_or_lines, TilePlan):
        plan = plan_or_lines
        if (plan.height, plan.width) != (height, width):
            raise ConfigError(
                f"{name} is a plan for {plan.height}x{plan.width} px but the image is {height}x{width} px; "
                "plan the same size as the image"
            )
        return dict(plan.seam_lines), plan.scale
    if isinstance(plan_or_lines, Mapping):
        bad = set(plan_or_lines) - {"x", "y"}
        if bad:
            raise ConfigError(f"{name} keys must be 'x' (column lines) and/or 'y' (row lines); got {sorted(bad)}")
        out: Lines = {}
        for axis, length in (("x", width), ("y", height)):
            vals = tuple(sorted({int(p) for p in plan_or_lines.get(axis, ())}))
            for p in vals:
                if not 0 < p < length:
                    raise ConfigError(
                        f"{name}[{axis!r}] line {p} must lie in 1..{length - 1} (a line at p separates p-1 and p)"
                    )
            out[axis] = vals
        return out, None
    if isinstance(plan_or_lines, Sequence) and not isinstance(plan_or_lines, str):
        return lines_from_boxes(plan_or_lines, height, width), None
    raise ConfigError(
        f"{name} must be a TilePlan, a dict {{'x': [...], 'y': [...]}} of pixel lines, a list of "
        f"(top, left, height, width) boxes, or None; got {type(plan_or_lines).__name__}"
    )


def crop_box(img: torch.Tensor, box: Box) -> torch.Tensor:
    """Crop with modulo indices: a tile of a circular plan may run past the right edge."""
    t, l, h, w = box
    H, W = img.shape[-2:]
    rows = torch.arange(t, t + h) % H
    cols = torch.arange(l, l + w) % W
    return img[..., rows, :][..., cols]


__all__ = ["Box", "Lines", "LinesLike", "crop_box", "lines_from_boxes", "resolve_lines"]
