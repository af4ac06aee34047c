"""Seam, coherence and reference metrics as pure functions.

Each metric is split like torchmetrics: a private `_*_update` turns one batch into
additive sufficient statistics and a `_*_compute` turns summed statistics into the value.
The functions here call both on one input; the `torchmetrics.Metric` classes in
`classes.py` sum the statistics over many `update` calls. See docs/metrics.md for the
definitions, units and blind spots.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

import torch

from ..errors import ConfigError, check_choice, check_positive_int
from ..plan import TilePlan
from ._common import MetricUnavailable, Score, to_image_tensor, to_rgb
from .color import rgb_to_lab

Lines = dict[str, tuple[int, ...]]
Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels
LinesLike = Union[TilePlan, Mapping[str, Iterable[int]], Sequence[Box], None]
Mode = Literal["rgb", "lab"]

# Steps below these floors are treated as invisible; they keep ratios finite on flat
# regions (a constant sky has reference 0). Half a uint8 level / a fifth of a JND.
_STEP_FLOOR = {"rgb": 0.5 / 255.0, "lab": 0.2}
DEFAULT_BAND = 16  # px each side of a line used for its local reference
DEFAULT_GRID = 8  # px; SD VAEs (and JPEG) have an 8-px phase, seam lines sit on it
DEFAULT_SEGMENT = 8  # px along a line over which signed steps are averaged


# ----------------------------------------------------------------------------- lines


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


# ------------------------------------------------------------------------ VAE seam


def _tile_boxes(tiles: TilePlan | Sequence[Box]) -> list[Box]:
    if isinstance(tiles, TilePlan):
        return [v.pixel_box(tiles.scale) for v in tiles.views]
    if isinstance(tiles, Sequence) and not isinstance(tiles, str):
        return [tuple(int(v) for v in b) for b in tiles]  # type: ignore[misc]
    raise ConfigError(
        f"tiles must be a TilePlan or a list of (top, left, height, width) pixel boxes; got {type(tiles).__name__}"
    )


def _crop(img: torch.Tensor, box: Box) -> torch.Tensor:
    """Crop with modulo indices: a tile of a circular plan may run past the right edge."""
    t, l, h, w = box
    H, W = img.shape[-2:]
    rows = torch.arange(t, t + h) % H
    cols = torch.arange(l, l + w) % W
    return img[..., rows, :][..., cols]


def vae_seam(
    tiled: Any,
    full: Any,
    tiles: TilePlan | Sequence[Box],
    *,
    band: int = DEFAULT_BAND,
) -> dict[str, Any]:
    """The VAE's share of seams: a latent decoded in tiles vs decoded in one piece.

    Returns {"psnr" (dB), "ssim", "mean_drift", "max_mean_drift", "std_drift",
    "max_std_drift" (intensity 0-1, mean/max over tiles of |tiled - full|),
    "seam_score_tiled", "seam_score_full" (seam_score at the tile edges of each image),
    "per_tile": [{"box", "mean_diff", "std_diff"}]}; signed diffs are tiled - full.
    """
    a = to_image_tensor(tiled, name="tiled")
    b = to_image_tensor(full, name="full")
    if a.shape != b.shape:
        raise ConfigError(f"tiled and full must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    boxes = _tile_boxes(tiles)
    if not boxes:
        raise ConfigError("tiles must hold at least one (top, left, height, width) box")
    per_tile = []
    for box in boxes:
        ca, cb = _crop(a, box), _crop(b, box)
        per_tile.append({
            "box": box,
            "mean_diff": float(ca.mean() - cb.mean()),
            # per-channel std, then averaged: a contrast change in one channel shows
            "std_diff": float(ca.std(dim=(-2, -1)).mean() - cb.std(dim=(-2, -1)).mean()),
        })
    md = torch.tensor([abs(t["mean_diff"]) for t in per_tile])
    sd = torch.tensor([abs(t["std_diff"]) for t in per_tile])
    lines = tiles if isinstance(tiles, TilePlan) else lines_from_boxes(boxes, a.shape[-2], a.shape[-1])
    return {
        "psnr": float(psnr(a, b)),
        "ssim": float(ssim(a, b)),
        "mean_drift": float(md.mean()), "max_mean_drift": float(md.max()),
        "std_drift": float(sd.mean()), "max_std_drift": float(sd.max()),
        "seam_score_tiled": seam_score(a, lines, band=band),
        "seam_score_full": seam_score(b, lines, band=band),
        "per_tile": per_tile,
    }


# ------------------------------------------------------------ reference metrics


def psnr(image: Any, reference: Any) -> Score:
    """Peak signal-to-noise ratio in dB against `reference` (data range 1; higher is better)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(image, reference)
    return Score(float(peak_signal_noise_ratio(a, b, data_range=1.0)))


def ssim(image: Any, reference: Any) -> Score:
    """Structural similarity against `reference` (Gaussian 11x11, sigma 1.5; 1 = identical)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(image, reference)
    return Score(float(structural_similarity_index_measure(a, b, data_range=1.0)))


def total_variation(image: Any) -> Score:
    """Mean absolute neighbour difference (x plus y), per pixel and channel, intensity units.

    torchmetrics' total_variation sums over pixels; dividing by C*H*W makes images of
    different sizes comparable.
    """
    from torchmetrics.functional.image import total_variation as tm_tv

    img = to_image_tensor(image, batch=True)
    n, c, h, w = img.shape
    return Score(float(tm_tv(img, reduction="mean")) / (c * h * w))


def _pair(image: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = to_rgb(to_image_tensor(image, batch=True))
    b = to_rgb(to_image_tensor(reference, name="reference", batch=True))
    if a.shape != b.shape:
        raise ConfigError(f"reference must have the image's shape {tuple(a.shape)}; got {tuple(b.shape)}")
    return a, b


# ------------------------------------------------------------- coherence metrics


def crop_grid(height: int, width: int, crop: int | tuple[int, int]) -> list[Box]:
    """Non-overlapping crops of `crop` px from the top-left, as SyncDiffusion's eval code
    (`(L - crop) // crop + 1` per axis; the remainder at the right/bottom is dropped)."""
    ch, cw = crop if isinstance(crop, tuple) else (crop, crop)
    if ch > height or cw > width:
        return []
    return [(i * ch, j * cw, ch, cw) for i in range((height - ch) // ch + 1) for j in range((width - cw) // cw + 1)]


def _crops(image: Any, crop: int | tuple[int, int] | TilePlan | None) -> tuple[torch.Tensor, str | None]:
    img = to_rgb(to_image_tensor(image)).float()
    H, W = img.shape[-2:]
    if isinstance(crop, TilePlan):
        crop = crop.window
    elif crop is None:
        crop = min(512, H)  # SyncDiffusion: 512 px crops of 512-px-high panoramas
    size = crop if isinstance(crop, tuple) else (crop, crop)
    for v in size:
        check_positive_int("crop", v)
    boxes = crop_grid(H, W, size)
    if len(boxes) < 2:
        return img[:0], (
            f"needs at least 2 non-overlapping {size[0]}x{size[1]} crops; the image {H}x{W} gives {len(boxes)}"
        )
    return torch.cat([_crop(img, b) for b in boxes], 0), None


def _pairs(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


def _intra_lpips_update(
    crops: torch.Tensor, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """Sum of LPIPS over all crop pairs and the number of pairs (crops in [0, 1])."""
    from .features import FeatureLPIPS, pairwise_lpips

    pairs = _pairs(crops.shape[0])
    x = crops * 2 - 1  # LPIPS expects [-1, 1]
    i, j = zip(*pairs)
    with torch.no_grad():
        if isinstance(net, FeatureLPIPS):  # same formula, each crop's features computed once instead of once per pair
            d = pairwise_lpips(net.features(x), list(i), list(j))
        else:
            d = net(x[list(i)], x[list(j)])
    return d.sum().double(), len(pairs)


LPIPS_BACKBONES = ("auto", "lpips-vgg16", "mdtools-feature-net")
STYLE_BACKBONES = ("auto", "vgg19", "mdtools-feature-net")


def _pick_backbone(backbone: str, pretrained: str, load_pretrained: Callable[[], Any], load_own: Callable[[], Any],
                   choices: tuple[str, ...], *, given: Any = None, given_arg: str = "net",
                   metric: str = "") -> tuple[Any, dict[str, Any], str | None]:
    """(network, details, reason-if-none): a `given` network as it is, else the pretrained one when
    asked for or cached, else the shipped one.

    "auto" takes the pretrained ImageNet network when its weights are in the local torch hub
    cache (numbers comparable with the literature) and the shipped feature network otherwise,
    so the metric is never NaN offline; details record which ran and why.
    """
    if given is not None:
        if backbone != "auto":
            raise ConfigError(f"pass either {given_arg}= or backbone= to {metric}, not both (got backbone={backbone!r})")
        return given, {"backbone": getattr(given, "backbone", "custom")}, None
    check_choice("backbone", backbone, choices)
    details: dict[str, Any] = {}
    if backbone in ("auto", pretrained):
        try:
            return load_pretrained(), {"backbone": pretrained}, None
        except MetricUnavailable as e:
            if backbone == pretrained:
                return None, {"backbone": pretrained}, str(e)
            details["fallback_reason"] = str(e)
    from .features import BACKBONE

    try:
        return load_own(), {"backbone": BACKBONE, **details}, None
    except MetricUnavailable as e:
        return None, {"backbone": BACKBONE, **details}, str(e)


def intra_lpips(
    image: Any,
    *,
    crop: int | tuple[int, int] | TilePlan | None = None,
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    backbone: str = "auto",
) -> Score:
    """Intra-LPIPS (SyncDiffusion): mean LPIPS over all pairs of non-overlapping crops.

    Lower = the crops look more alike (a more coherent panorama). `crop`: crop size in px,
    or a plan (its window); default 512 (or the image height if smaller). `net`: any
    callable (x, y) in [-1, 1] -> per-pair distances, e.g. an `lpips.LPIPS` instance.
    Without `net`, `backbone` chooses: "lpips-vgg16" (LPIPS with the ImageNet VGG16 trunk from
    the local torch hub cache; NaN with a reason when it is not there), "mdtools-feature-net"
    (the shipped offline network, `features.FeatureLPIPS`: uniform layer and channel weights,
    no human calibration, so its values are not comparable with LPIPS-VGG's), or "auto"
    (default: the first when cached, else the second). `.details["backbone"]` says which ran.
    """
    crops, reason = _crops(image, crop)
    if reason:
        return Score.nan(reason)
    from .backbones import load_lpips_vgg
    from .features import FeatureLPIPS

    net, details, why = _pick_backbone(backbone, "lpips-vgg16", load_lpips_vgg, FeatureLPIPS, LPIPS_BACKBONES,
                                       given=net, given_arg="net", metric="intra_lpips")
    if net is None:
        return Score.nan(why, **details)
    total, n = _intra_lpips_update(crops, net)
    return Score(float(total) / n, details={"n_crops": crops.shape[0], "n_pairs": n, **details})


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices divided by C*H*W (the SyncDiffusion/PyTorch
    style-transfer normalisation)."""
    n, c, h, w = feat.shape
    f = feat.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def conv_features(features: torch.nn.Module, x: torch.Tensor, n_conv: int = 5) -> list[torch.Tensor]:
    """Outputs of the first `n_conv` Conv2d layers of a VGG-style Sequential (before their ReLU).

    ReLUs run out of place so the stored conv outputs are not overwritten. A module that is
    not a Sequential is called directly and must return a list of feature maps.
    """
    if not isinstance(features, torch.nn.Sequential):
        return list(features(x))
    outs: list[torch.Tensor] = []
    for layer in features:
        x = torch.relu(x) if isinstance(layer, torch.nn.ReLU) else layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            outs.append(x)
            if len(outs) == n_conv:
                break
    return outs


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _intra_style_update(crops: torch.Tensor, features: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """Sum over crop pairs of sum over layers of MSE(Gram_i, Gram_j), and the pair count."""
    mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = conv_features(features, (crops - mean) / std)
        grams = [gram_matrix(f) for f in feats]
    pairs = _pairs(crops.shape[0])
    i, j = (list(v) for v in zip(*pairs))
    total = sum(((g[i] - g[j]) ** 2).mean(dim=(1, 2)).sum() for g in grams)
    return torch.as_tensor(total).double(), len(pairs)


def intra_style(
    image: Any,
    *,
    crop: int | tuple[int, int] | TilePlan | None = None,
    features: torch.nn.Module | None = None,
    reduction: Literal["sum", "mean"] = "sum",
    backbone: str = "auto",
) -> Score:
    """Intra-Style-L (SyncDiffusion): Gram-matrix MSE between crops over a network's layers.

    For each pair of non-overlapping crops, sum over layers of the MSE between Gram matrices
    (`gram_matrix`); `reduction="sum"` (SyncDiffusion's) sums over pairs, so the value grows
    with the number of crops; "mean" divides by the pair count. Lower = more coherent.
    `features`: a VGG-style Sequential (e.g. `torchvision.models.vgg19().features`: its
    first five conv outputs) or a module returning a list of feature maps of
    ImageNet-normalised input. Without it, `backbone` chooses: "vgg19" (ImageNet VGG19 from
    the local torch hub cache, NaN with a reason when absent), "mdtools-feature-net" (the
    five stage outputs of the shipped network), or "auto" (default: the first when cached,
    else the second). `.details["backbone"]` says which ran.
    """
    check_choice("reduction", reduction, ("sum", "mean"))
    crops, reason = _crops(image, crop)
    if reason:
        return Score.nan(reason)
    from .backbones import load_vgg19_features
    from .features import StyleFeatures

    features, details, why = _pick_backbone(backbone, "vgg19", load_vgg19_features, StyleFeatures, STYLE_BACKBONES,
                                            given=features, given_arg="features", metric="intra_style")
    if features is None:
        return Score.nan(why, **details)
    total, n = _intra_style_update(crops, features)
    value = float(total) if reduction == "sum" else float(total) / n
    return Score(value, details={"n_crops": crops.shape[0], "n_pairs": n, "reduction": reduction, **details})


# ------------------------------------------------------------------------- KID


def poly_kernel(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> torch.Tensor:
    """Polynomial kernel (gamma x.y + coef)^degree between rows; gamma defaults to 1 / feature dimension (KID's)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * g + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> torch.Tensor:
    """Unbiased estimate of the squared MMD between samples x (m, d) and y (n, d) with `poly_kernel`.

    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n); for m = n it is torchmetrics' `poly_mmd`. It can be
    slightly negative when the two distributions are equal.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ConfigError(f"the unbiased MMD needs at least 2 samples on each side; got {m} and {n}")
    kxx = poly_kernel(x, x, degree=degree, gamma=gamma, coef=coef)
    kyy = poly_kernel(y, y, degree=degree, gamma=gamma, coef=coef)
    kxy = poly_kernel(x, y, degree=degree, gamma=gamma, coef=coef)
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def kid_from_features(
    x: torch.Tensor, y: torch.Tensor, *, subset_size: int | None = None, n_subsets: int = 100, degree: int = 3,
    gamma: float | None = None, coef: float = 1.0, seed: int = 0,
) -> tuple[float, float, int]:
    """KID (Binkowski et al. 2018, as torchmetrics): mean and std over `n_subsets` random subsets of
    `subset_size` rows from each side of `mmd2_unbiased`; returns (mean, std, subset size used).

    `subset_size` defaults to min(m, n, 1000). When it covers both sets entirely every subset is
    the same, so the estimate is computed once (std 0). Deterministic given `seed`.
    """
    x, y = x.double(), y.double()
    m, n = x.shape[0], y.shape[0]
    s = min(m, n, 1000) if subset_size is None else int(subset_size)
    if s < 2 or s > min(m, n):
        raise ConfigError(f"subset_size={s} must lie in [2, {min(m, n)}] (the smaller set has {min(m, n)} samples)")
    check_positive_int("n_subsets", n_subsets)
    kw = {"degree": degree, "gamma": gamma, "coef": coef}
    if s == m and s == n:
        return float(mmd2_unbiased(x, y, **kw)), 0.0, s
    g = torch.Generator().manual_seed(seed)
    vals = torch.stack([mmd2_unbiased(x[torch.randperm(m, generator=g)[:s]], y[torch.randperm(n, generator=g)[:s]], **kw)
                        for _ in range(n_subsets)])
    return float(vals.mean()), float(vals.std(unbiased=False)), s


def sliding_crops(image: Any, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None, *,
                  name: str = "image") -> torch.Tensor:
    """(n, 3, h, w) crops of every image in `image` (one image or a batch) on a grid from the top left.

    `stride` defaults to the crop size (non-overlapping, as `crop_grid`); the remainder at the
    right / bottom is dropped. An image smaller than the crop gives none.
    """
    img = to_rgb(to_image_tensor(image, name=name, batch=True)).float()
    ch, cw = size if isinstance(size, tuple) else (size, size)
    sh, sw = (stride if isinstance(stride, tuple) else (stride, stride)) if stride is not None else (ch, cw)
    for nm, v in (("crop", ch), ("crop", cw), ("stride", sh), ("stride", sw)):
        check_positive_int(nm, v)
    H, W = img.shape[-2:]
    if ch > H or cw > W:
        return img.new_zeros((0, 3, ch, cw))
    boxes = [(i, j) for i in range(0, H - ch + 1, sh) for j in range(0, W - cw + 1, sw)]
    return torch.cat([img[:, :, i:i + ch, j:j + cw] for i, j in boxes])


def _image_set(images: Any, crop: int | tuple[int, int] | None, stride: int | tuple[int, int] | None, name: str) -> list[Any]:
    """A set of images (a list, or one image / an (N, 3, H, W) batch) as a list of tensors or crops."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ConfigError(f"{name} must hold at least 2 images; got none")
    if crop is None:
        return [to_rgb(to_image_tensor(im, name=f"{name}[{i}]", batch=True)).float() for i, im in enumerate(items)]
    return [sliding_crops(im, crop, stride, name=f"{name}[{i}]") for i, im in enumerate(items)]


def kid(
    images: Any,
    reference_images: Any,
    *,
    crop: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    net: Any = None,
    subset_size: int | None = None,
    n_subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> Score:
    """Kernel Inception Distance between a set of images and a reference set, on the shipped feature network.

    Each image (a list of images of any sizes, or an (N, 3, H, W) batch in [0, 1]) gives one
    feature vector: the global average of the network's last stage (256-d), as KID uses
    Inception's pool features. With `crop`, every image is first cut into crop x crop tiles
    every `stride` px (default: non-overlapping) and each tile is a sample. The value is the
    unbiased polynomial-kernel MMD^2 (`kid_from_features`; degree 3, gamma 1 / 256, coef 1),
    the mean over `n_subsets` subsets of `subset_size` samples per side; `.details["std"]` is
    its spread over subsets. 0 = same distribution (slightly negative values happen); lower
    is better. Values are not comparable with Inception-based KID. `net`: a FeatureNet
    (default: the shipped one).
    """
    from .features import BACKBONE, load_feature_net, pooled_features

    try:
        net = net if net is not None else load_feature_net()
    except MetricUnavailable as e:
        return Score.nan(str(e), backbone=BACKBONE)
    a = _image_set(images, crop, stride, "images")
    b = _image_set(reference_images, crop, stride, "reference_images")
    fa, fb = pooled_features(a, net=net), pooled_features(b, net=net)
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        return Score.nan(f"KID needs at least 2 samples per side; got {fa.shape[0]} images and {fb.shape[0]} reference "
                         "samples (use more images, or a smaller crop / stride)", backbone=BACKBONE)
    mean, std, s = kid_from_features(fa, fb, subset_size=subset_size, n_subsets=n_subsets, degree=degree,
                                     gamma=gamma, coef=coef, seed=seed)
    return Score(mean, details={"std": std, "n_images": fa.shape[0], "n_reference": fb.shape[0], "subset_size": s,
                                "n_subsets": 1 if s == fa.shape[0] == fb.shape[0] else n_subsets,
                                "feature_dim": fa.shape[1], "backbone": getattr(net, "backbone", "custom")})


__all__ = [
    "SeamStats", "control_lines", "conv_features", "crop_grid", "gram_matrix", "intra_lpips", "intra_style", "kid",
    "kid_from_features", "lines_from_boxes", "mmd2_unbiased", "poly_kernel", "psnr", "resolve_lines", "seam_score",
    "seam_score_lab", "sliding_crops", "ssim", "step_profiles", "total_variation", "vae_seam", "wrap_seam_score",
]



def intra_color(image: Any, *, crop: int | tuple[int, int] | TilePlan | None = None) -> Score:
    """Global colour consistency: mean CIELAB Delta E between the mean colours of all pairs
    of non-overlapping window-sized crops (same crops as intra_lpips).

    Lower = the windows agree on colour and brightness (a sky gradient that does not break
    from window to window). Needs no pretrained network, so it runs everywhere; it is blind
    to structure (two crops of the same colour with different content score 0).
    """
    crops, reason = _crops(image, crop)
    if reason is not None:
        return Score.nan(reason)
    means = rgb_to_lab(crops.clamp(0, 1).double()).mean(dim=(-2, -1))  # (n, 3)
    n = means.shape[0]
    d = torch.cdist(means, means)
    pairs = n * (n - 1) / 2
    return Score(float(d.triu(1).sum() / pairs), details={"n_crops": n, "n_pairs": int(pairs)})


# ------------------------------------------------------------------ structural seams

DEFAULT_DEPTH = 8  # px each side of a line compared by seam_structure
DEFAULT_STRUCT_SEGMENT = 32  # px along the line per correlation segment


def decorrelation_profile(gray: torch.Tensor, *, depth: int = DEFAULT_DEPTH,
                          segment: int = DEFAULT_STRUCT_SEGMENT) -> torch.Tensor:
    """For every vertical line p in [depth, W - depth], how decorrelated the two sides are.

    d(p) = 1 - sum cov(a, b) / sum sd(a) sd(b), pooled over mirror column pairs
    a = column p-1-j, b = column p+j (j < depth) and over `segment`-row runs along the
    line. Pooling by sd(a) sd(b) lets flat runs (no structure) count for nothing instead
    of for noise. (H, W) float tensor in, (W - 2 depth + 1,) out; index i is line depth + i.
    """
    H, W = gray.shape
    n = H // segment
    if n == 0 or W < 2 * depth + 1:
        return gray.new_zeros(0)
    g = gray[: n * segment].double().reshape(n, segment, W)
    g = g - g.mean(dim=1, keepdim=True)
    P = torch.arange(depth, W - depth + 1)
    cov = torch.zeros(len(P), dtype=torch.float64)
    sds = torch.zeros(len(P), dtype=torch.float64)
    for j in range(depth):
        a, b = g[:, :, P - 1 - j], g[:, :, P + j]
        cov += (a * b).sum(dim=1).sum(dim=0)
        sds += ((a * a).sum(dim=1).sqrt() * (b * b).sum(dim=1).sqrt()).sum(dim=0)
    return 1.0 - cov / sds.clamp_min(1e-12)


def seam_structure(
    image: Any,
    plan_or_lines: LinesLike,
    *,
    depth: int = DEFAULT_DEPTH,
    segment: int = DEFAULT_STRUCT_SEGMENT,
) -> Score:
    """Structural seam score: how much less the two sides of a seam line predict each other
    than the two sides of a control line do. 1 = no seam; > 1 = seam.

    Tiles decoded by a VAE rarely leave a one-pixel step: the decoder blurs the boundary,
    while the content (a mortar line, a horizon) stops matching across it. This score
    compares luminance columns mirrored about each line (p-1-j vs p+j, j < `depth`) with
    a pooled normalised cross-correlation over `segment`-px runs, and divides the mean
    decorrelation on seam lines by its mean on every line at least `depth` px from a
    seam. Blind spot: content with no structure wider than 2 * depth px (stars, noise)
    scores about 1 whatever the seams. `.details["per_seam"]` lists every line.
    """
    for name, v in (("depth", depth), ("segment", segment)):
        check_positive_int(name, v)
    img = to_rgb(to_image_tensor(image)).double()
    gray = img.mean(dim=-3)
    gray = gray.reshape(-1, *gray.shape[-2:])[0]
    lines, _ = resolve_lines(plan_or_lines, gray.shape[0], gray.shape[1])
    seam_vals, ctrl_vals, per = [], [], []
    for axis, g in (("x", gray), ("y", gray.T)):
        seams = lines.get(axis, ())
        prof = decorrelation_profile(g, depth=depth, segment=segment)
        if prof.numel() == 0:
            continue
        pos = torch.arange(depth, depth + prof.numel())
        near = torch.zeros(prof.numel(), dtype=torch.bool)
        for s in seams:
            near |= (pos - s).abs() < depth  # at distance >= depth the mirror pairs stay on one side
            if depth <= s <= depth + prof.numel() - 1:
                v = float(prof[s - depth])
                seam_vals.append(v)
                per.append({"axis": axis, "line": int(s), "decorrelation": v})
        ctrl_vals.append(prof[~near])
    if not seam_vals:
        return Score.nan(f"no seam line lies at least depth={depth} px inside the image")
    ctrl = torch.cat(ctrl_vals) if ctrl_vals else torch.zeros(0)
    if ctrl.numel() == 0:
        return Score.nan("no control line farther than depth px from every seam")
    base = float(ctrl.mean())
    for d in per:
        d["score"] = d["decorrelation"] / max(base, 1e-12)
    return Score(sum(seam_vals) / len(seam_vals) / max(base, 1e-12),
                 details={"control_decorrelation": base, "per_seam": per, "depth": depth, "segment": segment})
