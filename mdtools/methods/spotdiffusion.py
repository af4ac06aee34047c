"""SpotDiffusion (Frolov, Moser, Dengel 2024): shifted non-overlapping windows, 1x cost.

Each step denoises a grid of non-overlapping windows (redundancy 1) whose offset relative
to the canvas changes from step to step, so a window edge never stays in one place and
seams average out over time instead of over overlapping views.

`shifts[i] = (dy, dx)` is the offset of the window grid at step i, in latent pixels. The
official text2panorama (stanifrolov/spotdiffusion, panorama.py) rolls the canvas left by
c_i = randint(0, W) after every step and never rolls it back; in the frame of the initial
noise, step i's windows start at (c_0 + ... + c_{i-1}) mod W. mdtools draws the same way
(c_i uniform in [0, L) per shifted axis, cumulative, shifts[0] = 0) and keeps the canvas
in place, so the output is in the canvas frame (the official output is rolled by the sum
of the c_i: a departure in presentation, not in content). An axis is shifted only when the
canvas is longer than the window there (the official code shifts only along the width).

`wrap=True` (default, the official behaviour) wraps windows around the canvas edge;
`wrap=False` is for ordinary canvases: the grid is shifted by at most one window spacing,
a window that would cross the far edge is clamped inside, and one extra window covers
the near edge, so no content is mixed across the border (redundancy slightly above 1).
The plan's overlap must be 0.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..fusion import ViewSet
from ..plan import View
from ..sampling import CallSpec, StepContext
from .base import Method, Param, is_int, register


def _shift_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(
        isinstance(s, (list, tuple)) and len(s) == 2 and all(is_int(x) for x in s) for s in v)


@register
class SpotDiffusionMethod(Method):
    """Non-overlapping windows shifted by a per-step offset (seeded or given)."""

    name = "spotdiffusion"
    per_step_wrapper = True
    needs_sigmas = True
    PARAMS = {
        "shifts": Param(None, lambda v: v is None or _shift_list(v), "a list of [dy, dx] pairs, one per step",
                        "the grid offset per step in latent pixels (default: drawn from `seed`)"),
        "seed": Param(None, lambda v: v is None or is_int(v), "an integer", "seed of the offsets (default: the run's)"),
        "wrap": Param(True, lambda v: isinstance(v, bool), "true or false",
                      "wrap windows around the canvas (official) or keep them inside it"),
    }

    def check(self, call: CallSpec) -> None:
        super().check(call)
        if call.overlap != (0, 0):
            raise ConfigError(f"method 'spotdiffusion' uses non-overlapping windows: overlap must be 0, got {call.overlap[1]} px")
        if self.shifts is not None and len(self.shifts) != call.steps:
            raise ConfigError(f"method.shifts has {len(self.shifts)} entries; give one (dy, dx) per step: {call.steps}")

    def estimate(self, call: CallSpec) -> dict[str, float]:
        est = super().estimate(call)
        if not self.wrap:
            p = call.plan
            rows, cols = len({v.top for v in p.views}), len({v.left for v in p.views})
            est["unet_evaluations"] *= (rows + 1) * (cols + 1) / (rows * cols)  # upper bound: one extra row and column
        return est

    def _draw(self, ctx: StepContext, n: int) -> list[tuple[int, int]]:
        from .multidiffusion import derived_generator

        plan = ctx.stage.plan
        H, W = plan.latent_height, plan.latent_width
        h, w = plan.view_size
        gen = derived_generator(ctx, self.seed, salt=0x5907)
        out, sy, sx = [], 0, 0
        for _ in range(n):
            out.append((sy, sx))
            # c_i = randint(0, L) on each axis the window does not span (official: width only)
            cy = int(torch.randint(0, H, (1,), generator=gen)) if H > h else 0
            cx = int(torch.randint(0, W, (1,), generator=gen)) if W > w else 0
            sy, sx = (sy + cy) % H, (sx + cx) % W
        return out

    def begin(self, ctx: StepContext) -> None:
        n = len(ctx.stage.timesteps)
        self._shifts = [tuple(s) for s in self.shifts] if self.shifts is not None else self._draw(ctx, n)
        self.draws = {"shifts": [list(s) for s in self._shifts]}
        self._cache: dict[tuple[int, int], ViewSet] = {}

    def _axis(self, starts: list[int], length: int, size: int, d: int) -> list[int]:
        if self.wrap:
            return [(s + d) % length for s in starts]
        if size >= length:
            return [0]
        gaps = [b - a for a, b in zip(starts, starts[1:])] or [size]
        d = d % max(gaps)  # at most one window spacing: the grid stays a grid
        out = {min(s + d, length - size) for s in starts}
        if d > 0:
            out.add(0)
        return sorted(out)

    def views(self, ctx: StepContext, i: int) -> ViewSet:
        dy, dx = self._shifts[i]
        key = (dy, dx)
        if key not in self._cache:
            plan = ctx.stage.plan
            H, W = plan.latent_height, plan.latent_width
            h, w = plan.view_size
            ys = self._axis(sorted({v.top for v in plan.views}), H, h, dy)
            xs = self._axis(sorted({v.left for v in plan.views}), W, w, dx)
            views = [View(t, left, h, w) for t in ys for left in xs]
            wrap = (self.wrap or plan.wraps_y, self.wrap or plan.wraps_x)
            ov = (min(plan.overlap[0] // plan.scale, h), min(plan.overlap[1] // plan.scale, w))
            vs = ViewSet.build(views, (H, W), kernel=ctx.kernel, overlap=ov, wrap=wrap, device=ctx.device)
            vs.check_coverage()
            self._cache[key] = vs
        return self._cache[key]
