"""Seam score: how much the steps across the seam lines stand out (`seam_score`, `seam_score_lab`, `wrap_seam_score`).

Split like torchmetrics: `_seam_update` turns one batch into additive statistics and
`_seam_compute` turns summed statistics into the value; `classes.py` sums them over updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import torch

from ...errors import ConfigError, check_choice, check_positive_int
from ...plan import TilePlan
from ..color import rgb_to_lab
from ..common import Score, to_image_tensor, to_rgb
from .geometry import Lines, LinesLike, resolve_lines

Mode = Literal["rgb", "lab"]

# Steps below these floors are treated as invisible; they keep ratios finite on flat
# regions (a constant sky has reference 0). Half a uint8 level / a fifth of a JND.
_STEP_FLOOR = {"rgb": 0.5 / 255.0, "lab": 0.2}
DEFAULT_BAND = 16  # px each side of a line used for its local reference
DEFAULT_GRID = 8  # px; SD VAEs (and JPEG) have an 8-px phase, seam lines sit on it
DEFAULT_SEGMENT = 8  # px along a line over which signed steps are averaged


# ------------------------------------------------------------------ step profiles


def step_profiles(img: torch.Tensor, *, mode: Mode = "rgb", segment: int = DEFAULT_SEGMENT) -> dict[str, torch.Tensor]:
    """Mean step across every line: {"x": (N, W-1), "y": (N, H-1)}; entry p-1 is the line at p.

    The signed difference I_p - I_{p-1} is first averaged over runs of `segment` pixels
    along the line, then its magnitude is averaged over the runs. Texture differences
    change sign from pixel to pixel and shrink in the run average; a seam (an offset
    between two tiles) keeps its sign along the line and does not: this is why the eye
    sees a faint straight seam through busy texture. `segment=1` is the plain mean
    absolute step. "rgb": mean over channels of |run mean| (intensity, 0-1); "lab":
    Euclidean norm of the run-mean CIELAB difference (Delta E 1976).
    """
    x = rgb_to_lab(to_rgb(img)) if mode == "lab" else img
    dx = x[..., :, 1:] - x[..., :, :-1]  # (N, C, H, W-1)
    dy = x[..., 1:, :] - x[..., :-1, :]  # (N, C, H-1, W)
    if segment > 1:
        # ceil_mode keeps a short last run instead of dropping the image's last rows
        dx = torch.nn.functional.avg_pool2d(dx, (segment, 1), ceil_mode=True)
        dy = torch.nn.functional.avg_pool2d(dy, (1, segment), ceil_mode=True)
    if mode == "lab":
        mx, my = dx.pow(2).sum(1).sqrt(), dy.pow(2).sum(1).sqrt()
    else:
        mx, my = dx.abs().mean(1), dy.abs().mean(1)
    return {"x": mx.mean(1), "y": my.mean(2)}


def _banned_mask(n_lines: int, banned: Iterable[int]) -> torch.Tensor:
    """(n_lines + 2,) bool over line positions 0..n_lines+1: True within 1 px of a banned line."""
    mask = torch.zeros(n_lines + 2, dtype=torch.bool)
    for s in banned:
        mask[max(0, s - 1):s + 2] = True
    return mask


def _references(
    prof: torch.Tensor, positions: Sequence[int], *, band: int, banned: Iterable[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local reference of each line: mean step at lines p±2..p±band (N, n) and a validity mask (n,).

    Reference lines must be inside the image and not within 1 px of a seam. ±1 is skipped
    because a decoder or resampler spreads a real step over two pixels. A line needs at
    least 2 reference lines to be valid.
    """
    n_lines = prof.shape[1]
    offs = torch.tensor([o for o in range(-band, band + 1) if abs(o) >= 2])
    q = torch.tensor(list(positions), dtype=torch.long)[:, None] + offs[None, :]
    inside = (q >= 1) & (q <= n_lines)
    ok = inside & ~_banned_mask(n_lines, banned)[q.clamp(0, n_lines + 1)]
    vals = prof[:, (q.clamp(1, n_lines) - 1)]  # (N, n, 2*band-2)
    count = ok.sum(1)
    ref = (vals * ok).sum(2) / count.clamp_min(1)
    return ref, count >= 2


def control_lines(length: int, seams: Iterable[int], *, grid: int, band: int) -> tuple[int, ...]:
    """Lines on the `grid` phase (the seams' phase) more than band // 2 + 1 px from any seam.

    Same phase: an 8-px decoder or JPEG block pattern then affects seams and controls alike.
    The gap keeps controls out of a seam's own blur/step zone; their reference bands may
    still reach towards a seam, but the lines next to it are excluded there as well.
    """
    seams = tuple(seams)
    gap = band // 2 + 1
    return tuple(p for p in range(grid, length, grid) if all(abs(p - s) > gap for s in seams))


# --------------------------------------------------------------------- seam score


@dataclass
class SeamStats:
    """Additive statistics of `seam_score` over a batch (sums over lines and images)."""

    seam_sum: torch.Tensor
    seam_count: torch.Tensor
    control_sum: torch.Tensor
    control_count: torch.Tensor
    per_seam: list[dict[str, Any]] = field(default_factory=list)
    baseline: float = float("nan")
    reason: str | None = None


def _seam_update(
    img: torch.Tensor,
    lines: Lines,
    *,
    mode: Mode = "rgb",
    band: int = DEFAULT_BAND,
    grid: int = DEFAULT_GRID,
    segment: int = DEFAULT_SEGMENT,
    local: bool = True,
    avoid: Lines | None = None,
) -> SeamStats:
    """Per-line anomalies of `img` (N, C, H, W) at `lines` and at control lines.

    local=True (default): ratio R = step at the line / mean step at lines p±2..p±band;
    baseline b = median log R over the control lines of that image (cancels grid-phase
    artefacts common to all lines, e.g. JPEG or VAE 8-px blocks); anomaly
    A = exp(|log R - b|) (two-sided: a hard step and a blurred band both raise it).
    local=False: A = the raw mean step at the line (the naive statistic; see docs).
    """
    floor = _STEP_FLOOR[mode]
    profs = step_profiles(img, mode=mode, segment=segment)
    avoid = avoid or {}
    zeros = torch.zeros((), dtype=torch.float64)
    S_parts, C_parts, meta = [], [], []
    dropped = []
    for axis, length in (("x", img.shape[-1]), ("y", img.shape[-2])):
        prof = profs[axis]
        seams = tuple(lines.get(axis, ()))
        banned = tuple(sorted(set(seams) | set(avoid.get(axis, ()))))
        ctrls = control_lines(length, banned, grid=grid, band=band)
        for kind, group in (("seam", seams), ("control", ctrls)):
            if not group:
                continue
            step = prof[:, [p - 1 for p in group]]
            if local:
                ref, valid = _references(prof, group, band=band, banned=banned)
                val = torch.log((step + floor) / (ref + floor))
            else:
                ref, valid = torch.full_like(step, float("nan")), torch.ones(len(group), dtype=torch.bool)
                val = step
            dropped += [f"{axis}={p}" for p, v in zip(group, valid.tolist()) if not v]
            (S_parts if kind == "seam" else C_parts).append(val[:, valid])
            if kind == "seam":
                meta += [(axis, p, step[:, j], ref[:, j]) for j, p in enumerate(group) if valid[j]]
    S = torch.cat(S_parts, 1) if S_parts else None
    C = torch.cat(C_parts, 1) if C_parts else None
    if S is None or S.shape[1] == 0 or C is None or C.shape[1] == 0:
        no_seams = S is None or S.shape[1] == 0
        why = "no seam lines" if no_seams else "no control lines (image too small for the reference band?)"
        if dropped:
            why += f"; lines without room for a reference band: {dropped[:4]}"
        return SeamStats(zeros, zeros, zeros, zeros, reason=why)
    if local:
        base = C.median(1, keepdim=True).values
        S_a, C_a = torch.exp((S - base).abs()), torch.exp((C - base).abs())
    else:
        base = torch.zeros((S.shape[0], 1), dtype=S.dtype)
        S_a, C_a = S, C
    c_mean = C_a.mean()
    per_seam = []
    for j, (axis, p, step, ref) in enumerate(meta):
        per_seam.append({
            "axis": axis, "position": p,
            "step": float(step.mean()), "reference": float(ref.mean()),
            # >1: a harder step than its surroundings; <1: smoother (a blurred band)
            "ratio": float(torch.exp(S[:, j] - base[:, 0]).mean()) if local else float("nan"),
            "score": float(S_a[:, j].mean() / c_mean),
        })
    return SeamStats(
        S_a.sum(), torch.tensor(float(S_a.numel()), dtype=torch.float64),
        C_a.sum(), torch.tensor(float(C_a.numel()), dtype=torch.float64),
        per_seam=per_seam, baseline=float(torch.exp(base).mean()),
    )


def _seam_compute(seam_sum: torch.Tensor, seam_count: torch.Tensor, control_sum: torch.Tensor,
                  control_count: torch.Tensor) -> torch.Tensor:
    """Mean seam anomaly / mean control anomaly (NaN when either side is empty)."""
    if float(seam_count) == 0 or float(control_count) == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (seam_sum / seam_count) / (control_sum / control_count)


def _stats_to_score(stats: SeamStats, **extra: Any) -> Score:
    value = _seam_compute(stats.seam_sum, stats.seam_count, stats.control_sum, stats.control_count)
    if stats.reason is not None:
        return Score.nan(stats.reason, **extra)
    details = {
        "per_seam": stats.per_seam,
        "n_seams": int(stats.seam_count), "n_controls": int(stats.control_count),
        "baseline_ratio": stats.baseline, **extra,
    }
    return Score(float(value), details=details)


def _check_seam_options(mode: str, band: int, grid: int | None, segment: int = DEFAULT_SEGMENT) -> None:
    check_choice("mode", mode, ("rgb", "lab"))
    check_positive_int("segment", segment)
    check_positive_int("band", band)
    if band < 3:
        raise ConfigError(f"band={band} must be >= 3 px (the reference skips p±1; e.g. 16)")
    if grid is not None:
        check_positive_int("grid", grid)


def seam_score(
    image: Any,
    plan_or_lines: LinesLike,
    *,
    mode: Mode = "rgb",
    band: int = DEFAULT_BAND,
    grid: int | None = None,
    segment: int = DEFAULT_SEGMENT,
    local: bool = True,
) -> Score:
    """How much the steps across the plan's seam lines stand out; 1 = no seam, > 1 = seam.

    `plan_or_lines`: a TilePlan (its `seam_lines`), a dict {"x": cols, "y": rows} of pixel
    lines, or a list of (top, left, height, width) tile boxes. `mode="lab"` measures steps
    as CIELAB Delta E. `band`: px each side used as the local reference. `grid`: spacing of
    the control lines (default: the plan's scale, else 8). `segment`: px along the line
    over which signed steps are averaged (1 = plain |step|). `local=False` gives the naive
    unnormalised ratio. A batch (N, 3, H, W) pools all images. NaN with `.reason` when the
    image has no seam lines. `.details["per_seam"]` lists every line.
    """
    _check_seam_options(mode, band, grid, segment)
    img = to_image_tensor(image, batch=True)
    lines, plan_grid = resolve_lines(plan_or_lines, img.shape[-2], img.shape[-1])
    g = grid or plan_grid or DEFAULT_GRID
    stats = _seam_update(img, lines, mode=mode, band=band, grid=g, segment=segment, local=local)
    return _stats_to_score(stats, mode=mode, band=band, grid=g, segment=segment, local=local)


def seam_score_lab(image: Any, plan_or_lines: LinesLike, **kwargs: Any) -> Score:
    """`seam_score` with steps measured in CIELAB (Delta E 1976): sees pure colour shifts."""
    return seam_score(image, plan_or_lines, mode="lab", **kwargs)


def _wrap_setup(
    img: torch.Tensor, plan_or_lines: LinesLike, axes: str | None, grid: int
) -> tuple[torch.Tensor, Lines, Lines, str | None]:
    """Roll the image so each wrap line sits mid-image; return (img, wrap lines, avoid, reason)."""
    H, W = img.shape[-2:]
    if axes is None:
        if isinstance(plan_or_lines, TilePlan):
            axes = {"x": "x", "y": "y", "both": "both"}.get(plan_or_lines.circular or "", None)
            if axes is None:
                return img, {}, {}, "plan is not circular: it has no wrap line (pass axes='x' to measure anyway)"
        else:
            axes = "x"
    check_choice("axes", axes, ("x", "y", "both"))
    lines, _ = resolve_lines(plan_or_lines, H, W)
    # shift by a multiple of the grid so rolled lines keep the control lines' phase
    sx = max(grid, (W // 2) // grid * grid) if axes in ("x", "both") else 0
    sy = max(grid, (H // 2) // grid * grid) if axes in ("y", "both") else 0
    rolled = torch.roll(img, shifts=(sy, sx), dims=(-2, -1))
    avoid = {"x": tuple((p + sx) % W for p in lines.get("x", ())), "y": tuple((p + sy) % H for p in lines.get("y", ()))}
    wrap = {"x": (sx,) if sx else (), "y": (sy,) if sy else ()}
    return rolled, wrap, avoid, None


def wrap_seam_score(
    image: Any,
    plan_or_lines: LinesLike = None,
    *,
    axes: Literal["x", "y", "both"] | None = None,
    mode: Mode = "rgb",
    band: int = DEFAULT_BAND,
    grid: int | None = None,
    segment: int = DEFAULT_SEGMENT,
) -> Score:
    """`seam_score` of the wrap line of a 360-degree panorama (column W-1 against column 0).

    The image is rolled by about half its size so the wrap line is an ordinary interior
    line; the plan's own seam lines are kept out of the control lines. `axes` defaults to
    the plan's circular axes ("x" without a plan). NaN with a reason for a plan that is
    not circular.
    """
    _check_seam_options(mode, band, grid, segment)
    img = to_image_tensor(image, batch=True)
    g = grid or (plan_or_lines.scale if isinstance(plan_or_lines, TilePlan) else DEFAULT_GRID)
    rolled, wrap, avoid, reason = _wrap_setup(img, plan_or_lines, axes, g)
    if reason:
        return Score.nan(reason)
    stats = _seam_update(rolled, wrap, mode=mode, band=band, grid=g, segment=segment, avoid=avoid)
    return _stats_to_score(stats, mode=mode, band=band, grid=g, segment=segment, local=True)


__all__ = [
    "DEFAULT_BAND", "DEFAULT_GRID", "DEFAULT_SEGMENT", "Mode", "SeamStats", "control_lines", "seam_score", "seam_score_lab",
    "step_profiles", "wrap_seam_score",
]
