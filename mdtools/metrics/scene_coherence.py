"""Scene-coherence metrics: one sun, one continuous horizon, one sky (docs/metrics.md).

MultiDiffusion fuses windows that each believe they see a whole picture, so a panorama can
grow a sun per window, a horizon that steps at window edges, a sky that drifts in colour
from window to window. These metrics turn those failures into numbers with the scene
detectors of `scene_analysis.py` (pure NumPy / scikit-image); they are exact on the
procedural scenes and meaningful on landscapes whose sky is the top of the picture.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from ..errors import ConfigError, check_positive_int
from ..plan import TilePlan
from .common import Score
from .functional.geometry import LinesLike, resolve_lines
from .scene_analysis import as_rgb_array, find_discs, fit_horizon, sky_mask

DEFAULT_WINDOW = 4  # columns each side of a line fitted by horizon_continuity
DEFAULT_JUMP_FLOOR = 0.5  # px added to both sides of the horizon ratio (a flat sea has no natural jumps)
DEFAULT_TOLERANCE = 2  # px each side of a seam zone (blur moves a break by a pixel or two)
DEFAULT_DELTA_E_FLOOR = 1.0  # CIELAB units added to both sides of the sky ratio (below a just-noticeable 2.3)


DEFAULT_BREAK_STEP = 0.03  # a horizon break: a line-fit step of more than 3 % of the height


def _sky_discs(image: Any) -> list[tuple[float, float, float]]:
    img = as_rgb_array(image)
    h, sky, _ = fit_horizon(img)
    return find_discs(img, h, sky)


def _disc_details(discs: list[tuple[float, float, float]]) -> dict:
    return {"discs": [tuple(round(v, 2) for v in d) for d in discs], "n_discs": len(discs), "expected": 1}


def disc_count(image: Any, plan: TilePlan | None = None) -> Score:
    """Number of suns / moons in the sky: bright, compact, round blobs above the horizon and ringed by sky. 1 is right.

    0 (no sun: see `no_disc`) and 2+ (a disc per window) are the failures. A bright blob in
    the ground or the sea is not counted (`scene_analysis.find_discs`). `plan` is not needed
    (accepted so every coherence metric has the same signature).
    `.details["discs"]` lists (row, column, radius) in pixels, left to right.
    """
    _check_plan(plan)
    discs = _sky_discs(image)
    return Score(float(len(discs)), details=_disc_details(discs))


def no_disc(image: Any, plan: TilePlan | None = None) -> Score:
    """1.0 when the sky holds no sun or moon (`disc_count` == 0), else 0.0: its mean over runs is the no-sun rate."""
    _check_plan(plan)
    discs = _sky_discs(image)
    return Score(float(len(discs) == 0), details=_disc_details(discs))


def one_disc(image: Any, plan: TilePlan | None = None) -> Score:
    """1.0 when the sky holds exactly one sun or moon (`disc_count` == 1), else 0.0: its mean over runs is the success rate."""
    _check_plan(plan)
    discs = _sky_discs(image)
    return Score(float(len(discs) == 1), details=_disc_details(discs))


def horizon_breaks(image: Any, plan: TilePlan | None = None, *, window: int = DEFAULT_WINDOW,
                   step: float = DEFAULT_BREAK_STEP) -> Score:
    """Breaks of the horizon per height-wide stretch of the width, wherever they are; 0 = unbroken.

    Absolute, unlike `horizon_continuity` (a ratio of seam to interior steps, which reads a
    horizon broken everywhere as ~1): at every vertical line the step is `line_steps`
    (straight-line fits over `window` columns each side, so slopes and peaks give ~0); a
    break is a run of consecutive lines whose step exceeds `step` x the height (3 %: the
    generator's ridges never do). Score = number of breaks x height / width. `plan` is not
    needed. `.details`: "breaks" (count), "break_lines" (share of lines above the
    threshold), "mean_step_pct" (mean step, % of the height), "at" (first line of each
    break). NaN with `.reason` when the horizon is found in fewer than half the columns.
    """
    _check_plan(plan)
    check_positive_int("window", window)
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
        raise ConfigError(f"step must be a fraction of the height in (0, 1) (e.g. {DEFAULT_BREAK_STEP}), got {step!r}")
    img = as_rgb_array(image)
    H, W = img.shape[:2]
    h = fit_horizon(img)[0]
    found = float(np.mean(~np.isnan(h)))
    if found < 0.5:
        return Score.nan(f"no horizon: a sky-to-ground boundary was found in {found:.0%} of the columns", horizon_found=found)
    steps = line_steps(h, np.arange(W), window)
    big = np.nan_to_num(steps, nan=0.0) > step * H
    starts = np.flatnonzero(big & ~np.r_[False, big[:-1]])
    return Score(
        len(starts) * H / W,
        details={"breaks": int(len(starts)), "at": [int(a) for a in starts], "break_lines": float(big.mean()),
                 "mean_step_pct": float(100 * np.nanmean(steps) / H), "threshold_px": step * H, "horizon_found": found},
    )


def _intercept_weights(window: int) -> np.ndarray:
    """Weights c with c @ h[p:p+window] = the least-squares line through those columns, evaluated at the line p.

    Column j has its centre at j + 0.5, so the fitted points sit at 0.5, 1.5, ... from the line.
    """
    t = np.arange(window) + 0.5
    return np.linalg.pinv(np.stack([np.ones(window), t], 1))[0]


def line_steps(horizon: np.ndarray, positions: np.ndarray, window: int = DEFAULT_WINDOW, *, periodic: bool = False) -> np.ndarray:
    """|right fit - left fit| of the horizon at each vertical line (px); NaN where a window leaves the image or hits NaN.

    A line at p separates column p - 1 from p. Each side's `window` columns get a straight
    line (least squares) extrapolated to the line, so a sloping ridge gives ~0 and a step
    gives its height; this is steadier than the single-column jump |h(p) - h(p-1)|.
    """
    W = len(horizon)
    pos = np.asarray(positions, dtype=int)
    c = _intercept_weights(window)
    off = np.arange(window)
    right, left = pos[:, None] + off[None, :], pos[:, None] - 1 - off[None, :]
    if periodic:
        right, left, inside = right % W, left % W, np.ones(len(pos), dtype=bool)
    else:
        inside = (left.min(1) >= 0) & (right.max(1) < W)
        right, left = np.clip(right, 0, W - 1), np.clip(left, 0, W - 1)
    step = np.abs(horizon[right] @ c - horizon[left] @ c)
    step[~inside] = np.nan
    return step


def seam_zones(plan_or_lines: LinesLike, height: int, width: int, *, tolerance: int = DEFAULT_TOLERANCE) -> list[tuple[int, int]]:
    """Column-line intervals [a, b] where a horizon may break: each overlap of neighbouring views, widened by `tolerance`.

    With overlapping views the content passes from one view to the next anywhere inside the
    overlap (where the fusion weights cross), so the whole overlap is one zone; abutting
    views, a dict of lines or tile boxes give one zone per line. `tolerance` px on each side
    absorbs a break that blur moved by a pixel or two. On a circular plan the zones wrap
    (a may exceed b, read modulo the width).
    """
    if isinstance(plan_or_lines, TilePlan):
        plan = plan_or_lines
        if (plan.height, plan.width) != (height, width):
            raise ConfigError(f"plan is for {plan.height}x{plan.width} px but the image is {height}x{width} px; plan the same size as the image")
        spans = sorted({(v.left * plan.scale, v.width * plan.scale) for v in plan.views})
        pairs = list(zip(spans, spans[1:]))
        if plan.wraps_x and len(spans) > 1:
            last, first = spans[-1], spans[0]
            pairs.append((last, (first[0] + width, first[1])))
        zones = []
        for (l0, w0), (l1, _) in pairs:
            a, b = l1, max(l1, l0 + w0)  # overlap [l1, l0 + w0); abutting views meet at one line
            if plan.wraps_x:
                zones.append(((a - tolerance) % width, (b + tolerance) % width))
            elif 0 < a < width:
                zones.append((max(1, a - tolerance), min(width - 1, b + tolerance)))
        return zones
    lines, _ = resolve_lines(plan_or_lines, height, width)
    return [(max(1, p - tolerance), min(width - 1, p + tolerance)) for p in lines.get("x", ())]


def _zone_lines(zone: tuple[int, int], width: int) -> np.ndarray:
    a, b = zone
    return np.arange(a, b + 1) if a <= b else np.r_[np.arange(a, width), np.arange(0, b + 1)]


def horizon_continuity(
    image: Any,
    plan_or_lines: LinesLike,
    *,
    window: int = DEFAULT_WINDOW,
    floor: float = DEFAULT_JUMP_FLOOR,
    tolerance: int = DEFAULT_TOLERANCE,
) -> Score:
    """How much the horizon steps where views meet compared with elsewhere; 1 = as smooth there, higher = broken.

    The horizon row h(x) is detected per column (`scene_analysis.detect_horizon`). At
    each vertical line the step is |right fit - left fit| of straight lines through the
    `window` columns on either side (`line_steps`), which ignores a ridge's slope. A zone
    where views meet (`seam_zones`: the overlap of two neighbouring views, +-`tolerance` px)
    scores its largest line step; interior zones of the same width, `window` px or more from
    every seam zone, are the reference. Score = (mean seam-zone step + floor) / (mean
    interior-zone step + floor); `floor` (px) keeps a flat sea (interior steps ~0) from
    turning sub-pixel noise into a large ratio. On a circular plan the wrap counts as a zone.
    When the overlaps cover the whole canvas (no interior reference), the view edges
    (+-`tolerance`) are the zones instead (`details["zones"]` says which were used).
    NaN with `.reason` when there is no seam or the horizon is found in fewer than half of
    the columns. `.details["per_zone"]` gives each zone's lines and step (px).
    """
    check_positive_int("window", window)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
        raise ConfigError(f"floor must be a number of pixels > 0 (e.g. {DEFAULT_JUMP_FLOOR}), got {floor!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ConfigError(f"tolerance must be an integer >= 0 px (e.g. {DEFAULT_TOLERANCE}), got {tolerance!r}")
    img = as_rgb_array(image)
    H, W = img.shape[:2]
    zones = seam_zones(plan_or_lines, H, W, tolerance=tolerance)
    periodic = isinstance(plan_or_lines, TilePlan) and plan_or_lines.wraps_x
    if not zones:
        return Score.nan("no vertical seam lines (plan is None or has one view across the width)")
    h = fit_horizon(img)[0]
    found = float(np.mean(~np.isnan(h)))
    if found < 0.5:
        return Score.nan(f"no horizon: a sky-to-ground boundary was found in {found:.0%} of the columns", horizon_found=found)
    steps = line_steps(h, np.arange(W), window, periodic=periodic)  # entry p: the line at p (p = 0 only when periodic)
    out = _zone_score(steps, zones, W, window=window, floor=floor, periodic=periodic)
    if isinstance(out, str) and isinstance(plan_or_lines, TilePlan) and plan_or_lines.seam_lines["x"]:
        # Dense plans (e.g. half-window overlap) leave no column outside an overlap, so no interior
        # reference exists; judge the view edges themselves (+-tolerance) against the lines >= window
        # px from every edge instead.
        edges = [(max(1, e - tolerance), min(W - 1, e + tolerance)) for e in plan_or_lines.seam_lines["x"]]
        out = _zone_score(steps, edges, W, window=window, floor=floor, periodic=periodic)
        if not isinstance(out, str):
            out.details["zones"] = "view edges (the overlaps cover the canvas)"
    if isinstance(out, str):
        return Score.nan(out, horizon_found=found)
    out.details.update({"tolerance": tolerance, "horizon_found": found})
    out.details.setdefault("zones", "overlaps")
    return out


def _zone_score(steps: np.ndarray, zones: list[tuple[int, int]], W: int, *, window: int, floor: float,
                periodic: bool) -> Score | str:
    """The horizon_continuity ratio for these seam zones, or the reason it cannot be computed."""
    per_zone, seam_vals = [], []
    near = np.zeros(W, dtype=bool)  # lines whose own windows reach a seam zone
    for z in zones:
        lines = _zone_lines(z, W)
        vals = steps[lines]
        for d in range(-window + 1, window):
            near[(lines + d) % W if periodic else np.clip(lines + d, 0, W - 1)] = True
        if np.isnan(vals).all():
            continue
        v = float(np.nanmax(vals))
        seam_vals.append(v)
        per_zone.append({"lines": (int(z[0]), int(z[1])), "step": v, "at": int(lines[int(np.nanargmax(vals))])})
    if not seam_vals:
        return f"no seam zone has {window} columns of horizon on both sides"
    width = int(np.median([len(_zone_lines(z, W)) for z in zones]))
    ok = ~near & ~np.isnan(steps)
    if not periodic:
        ok[:window] = False
    # interior zones: every run of `width` consecutive usable lines; its step is the run's largest
    idx = np.arange(W - width + 1)[:, None] + np.arange(width)[None, :]
    if periodic:
        idx = np.arange(W)[:, None] + np.arange(width)[None, :]
        idx %= W
    usable = ok[idx].all(1)
    if not usable.any():
        return f"no interior run of {width} lines lies {window} px from every seam zone"
    interior = steps[idx[usable]].max(1)
    seam_mean, int_mean = float(np.mean(seam_vals)), float(interior.mean())
    return Score(
        (seam_mean + floor) / (int_mean + floor),
        details={
            "per_zone": per_zone, "seam_step": seam_mean, "interior_step": int_mean,
            "interior_step_p90": float(np.percentile(interior, 90)), "n_interior": int(usable.sum()), "zone_width": width,
            "window": window, "floor": floor,
        },
    )


def view_columns(plan: TilePlan | None, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(group (W,), signed offset (W,)): the view whose horizontal centre is nearest each column, and the column's offset from it.

    Views that share a horizontal span (several rows of views) form one group. Without a
    plan, the width is cut into round(width / height) equal strips (square windows).
    Groups are numbered left to right; on a circular plan distances wrap around.
    """
    x = np.arange(width) + 0.5
    if plan is None:
        n = max(1, round(width / height))
        centres = (np.arange(n) + 0.5) * width / n
        periodic = False
    else:
        spans = sorted({(v.left * plan.scale, v.width * plan.scale) for v in plan.views})
        centres = np.array(sorted({(left + w / 2) % width if plan.wraps_x else left + w / 2 for left, w in spans}))
        periodic = plan.wraps_x
    off = x[:, None] - centres[None, :]
    if periodic:
        off = (off + width / 2) % width - width / 2
    group = np.argmin(np.abs(off), axis=1)
    return group, off[np.arange(width), group]


def _row_medians(lab: np.ndarray, mask: np.ndarray, cols: np.ndarray, min_px: int) -> np.ndarray:
    """(H, 3) median CIELAB of the masked pixels of `cols` in each row; NaN where fewer than min_px."""
    sub = np.where(mask[:, cols, None], lab[:, cols], np.nan)
    out = np.full((lab.shape[0], 3), np.nan)
    rows = mask[:, cols].sum(1) >= min_px
    if rows.any():
        out[rows] = np.nanmedian(sub[rows], axis=1)
    return out


def _offset(med: np.ndarray, ref: np.ndarray, min_rows: int = 3) -> np.ndarray:
    """Median over rows of (group colour - reference colour), (3,); NaN with fewer than min_rows shared rows."""
    diff = med - ref
    ok = ~np.isnan(diff).any(1)
    return np.median(diff[ok], axis=0) if ok.sum() >= min_rows else np.full(3, np.nan)


def sky_consistency(image: Any, plan: TilePlan | None = None, *, floor: float = DEFAULT_DELTA_E_FLOOR) -> Score:
    """Does the sky keep one colour from view to view? 1 = views differ no more than the two halves of a view; higher = drifting.

    Sky pixels are those above the detected horizon (2 px margin) outside the detected discs
    (grown by 3 px), in CIELAB. Columns are grouped by the nearest view centre
    (`view_columns`; without a plan, height-wide strips) and each group is cut into a left
    and a right half. For row y let m_p(y) be the median colour of part p's sky pixels and
    R(y) the median over the groups' m_g(y); the part's offset o_p is the median over rows of
    m_p(y) - R(y). Rows are matched, so a vertical gradient seen over different rows under a
    ridge cancels, and clouds covering a minority of rows are ignored.
    between = mean |o_p - o_q| over pairs of halves from different views; within = mean
    |o_left - o_right| over views (Delta E 1976). Both compare halves, so pixel noise weighs
    the same on either side. Score = (between + floor) / (within + floor). NaN with
    `.reason` when fewer than two views have sky. `.details["per_view"]` holds each view's
    offset from the reference.
    """
    _check_plan(plan)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
        raise ConfigError(f"floor must be a Delta E > 0 (e.g. {DEFAULT_DELTA_E_FLOOR}), got {floor!r}")
    from skimage.color import rgb2lab

    img = as_rgb_array(image)
    H, W = img.shape[:2]
    if plan is not None and (plan.height, plan.width) != (H, W):
        raise ConfigError(f"plan is for {plan.height}x{plan.width} px but the image is {H}x{W} px; plan the same size as the image")
    group, off = view_columns(plan, H, W)
    n_groups = int(group.max()) + 1
    if n_groups < 2:
        return Score.nan("one view across the width: no other view to compare the sky with")
    h, sky, _ = fit_horizon(img)
    mask = sky_mask(H, W, h, find_discs(img, h, sky))
    lab = rgb2lab(img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are handled explicitly
        meds, halves = [], []
        for g in range(n_groups):
            cols = np.flatnonzero(group == g)
            meds.append(_row_medians(lab, mask, cols, max(3, len(cols) // 4)))
            parts = (cols[off[cols] < 0], cols[off[cols] >= 0])
            halves.append([_row_medians(lab, mask, c, max(3, len(c) // 4)) for c in parts])
        stack = np.stack(meds)  # (G, H, 3)
        enough = (~np.isnan(stack).any(2)).sum(0) >= 2
        ref = np.where(enough[:, None], np.nanmedian(stack, axis=0), np.nan)
    offsets = [_offset(m, ref) for m in meds]
    half_off = [[_offset(m, ref) for m in hv] for hv in halves]
    valid = [g for g in range(n_groups) if not np.isnan(half_off[g][0]).any() and not np.isnan(half_off[g][1]).any()]
    if len(valid) < 2:
        return Score.nan(f"sky found in {len(valid)} of {n_groups} views; need two to compare", n_views=n_groups)
    parts = [(g, half_off[g][i]) for g in valid for i in (0, 1)]
    between = float(np.mean([np.linalg.norm(p - q) for (g, p), (k, q) in itertools.combinations(parts, 2) if g != k]))
    within = float(np.mean([np.linalg.norm(half_off[g][0] - half_off[g][1]) for g in valid]))
    per_view = [
        {"view": g, "offset_lab": [round(float(v), 3) for v in offsets[g]], "delta_e": float(np.linalg.norm(offsets[g]))}
        for g in valid
    ]
    return Score(
        (between + floor) / (within + floor),
        details={"between": between, "within": within, "floor": floor, "n_views": n_groups, "per_view": per_view,
                 "sky_fraction": float(mask.mean())},
    )


def _check_plan(plan: Any) -> None:
    if plan is not None and not isinstance(plan, TilePlan):
        raise ConfigError(f"plan must be a TilePlan (from mdtools.plan_views) or None; got {type(plan).__name__}")


__all__ = [
    "disc_count", "horizon_breaks", "horizon_continuity", "line_steps", "no_disc", "one_disc", "seam_zones", "sky_consistency",
    "view_columns",
]
