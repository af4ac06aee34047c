"""One call for a table row: `evaluate(image, plan, metrics=[...])` and the METRICS registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..errors import ConfigError
from ..plan import TilePlan
from . import functional as F
from . import scene_coherence as C
from .common import Score, to_image_tensor


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: how to call it and how to read it."""

    name: str
    fn: Callable[..., Any]
    higher_is_better: bool | None  # None: closest to 1 (seam scores are 1 when seamless)
    unit: str
    needs_reference: bool = False
    description: str = ""
    needs_option: str | None = None  # an evaluate() option it cannot run without (kid_featnet: reference_images)


def _seam(img, plan, ref, opts):
    return F.seam_score(img, plan, band=opts.get("band", F.DEFAULT_BAND))


def _seam_lab(img, plan, ref, opts):
    return F.seam_score_lab(img, plan, band=opts.get("band", F.DEFAULT_BAND))


def _wrap(img, plan, ref, opts):
    return F.wrap_seam_score(img, plan, band=opts.get("band", F.DEFAULT_BAND))


def _lpips(img, plan, ref, opts):
    # The registry keeps one backbone per name, so a run table never mixes LPIPS-VGG values with
    # feature-net values in one column: intra_lpips is LPIPS-VGG only (NaN offline), intra_lpips_featnet
    # the shipped network everywhere. The function intra_lpips itself falls back ("auto").
    if opts.get("lpips_net") is not None:
        return F.intra_lpips(img, crop=opts.get("crop") or plan, net=opts["lpips_net"])
    return _hint(F.intra_lpips(img, crop=opts.get("crop") or plan, backbone="lpips-vgg16"), "intra_lpips_featnet")


def _style(img, plan, ref, opts):
    if opts.get("style_features") is not None:
        return F.intra_style(img, crop=opts.get("crop") or plan, features=opts["style_features"])
    return _hint(F.intra_style(img, crop=opts.get("crop") or plan, backbone="vgg19"), "intra_style_featnet")


def _hint(score: Score, alternative: str) -> Score:
    if score.reason and "not found" in score.reason:
        return Score.nan(f"{score.reason}; metric {alternative!r} runs offline on the shipped feature network", **score.details)
    return score


def _lpips_featnet(img, plan, ref, opts):
    return F.intra_lpips(img, crop=opts.get("crop") or plan, backbone="mdtools-feature-net")


def _style_featnet(img, plan, ref, opts):
    return F.intra_style(img, crop=opts.get("crop") or plan, backbone="mdtools-feature-net")


def _kid_featnet(img, plan, ref, opts):
    crop = opts.get("crop") or (plan.window if plan is not None else min(512, *img.shape[-2:]))
    size = crop if isinstance(crop, tuple) else (crop, crop)
    # half-crop stride: a 512 x 2048 canvas gives 7 samples instead of 4 (overlapping crops are
    # correlated, which widens the subset spread but does not bias the estimate)
    stride = opts.get("kid_stride") or (max(1, size[0] // 2), max(1, size[1] // 2))
    return F.kid(img, opts["reference_images"], crop=size, stride=stride)


def _vae(img, plan, ref, opts):
    out = F.vae_seam(img, ref, opts.get("tiles") or plan)
    # headline: mean |tile mean drift|; the whole report rides along in .details
    return Score(out["mean_drift"], details=out)


def _drift(img, plan, ref, opts):
    tiles = [v.pixel_box(plan.scale) for v in plan.views] if plan is not None else None
    return F.color_drift(img, ref, tiles)


def _drift_worst(img, plan, ref, opts):
    s = _drift(img, plan, ref, opts)
    return Score(s.details["worst_tile"], details=s.details)


METRICS: dict[str, MetricSpec] = {
    s.name: s for s in (
        MetricSpec("seam_score", _seam, False, "ratio (1 = seamless)",
                   description="steps across seam lines vs control lines, locally normalised"),
        MetricSpec("seam_score_lab", _seam_lab, False, "ratio (1 = seamless)",
                   description="seam_score with CIELAB Delta E steps"),
        MetricSpec("seam_structure", lambda i, p, r, o: F.seam_structure(i, p), False, "ratio (1 = seamless)",
                   description="decorrelation of the two sides of seam lines vs control lines (structural seams)"),
        MetricSpec("wrap_seam_score", _wrap, False, "ratio (1 = seamless)",
                   description="seam_score of the 360-degree wrap line"),
        MetricSpec("intra_lpips", _lpips, False, "LPIPS distance",
                   description="mean LPIPS(VGG16, ImageNet weights from the local cache) over pairs of non-overlapping crops "
                               "(SyncDiffusion); NaN offline"),
        MetricSpec("intra_style", _style, False, "Gram MSE (summed over pairs)",
                   description="VGG19 conv1..5 Gram-matrix MSE summed over crop pairs (SyncDiffusion); NaN offline"),
        MetricSpec("intra_lpips_featnet", _lpips_featnet, False, "LPIPS-style distance (feature net)",
                   description="intra_lpips on the shipped mdtools-feature-net (uniform layer weights); runs offline"),
        MetricSpec("intra_style_featnet", _style_featnet, False, "Gram MSE (summed over pairs, feature net)",
                   description="intra_style on the five stages of the shipped mdtools-feature-net; runs offline"),
        MetricSpec("kid_featnet", _kid_featnet, False, "MMD^2 (feature net)", needs_option="reference_images",
                   description="KID between crops of the canvas and crops of reference_images (e.g. single-window "
                               "generations), window-sized crops every half window, shipped mdtools-feature-net"),
        MetricSpec("intra_color", lambda i, p, r, o: F.intra_color(i, crop=o.get("crop") or p), False,
                   "CIELAB Delta E", description="mean Delta E between mean colours of non-overlapping window crops"),
        MetricSpec("psnr", lambda i, p, r, o: F.psnr(i, r), True, "dB", needs_reference=True,
                   description="PSNR against reference"),
        MetricSpec("ssim", lambda i, p, r, o: F.ssim(i, r), True, "similarity (1 = identical)", needs_reference=True,
                   description="SSIM against reference"),
        MetricSpec("color_drift", _drift, False, "Delta E 2000", needs_reference=True,
                   description="mean CIEDE2000 between the heavily blurred image and the blurred reference resized to "
                               "its size (sigma = min side / 32): colour drift of an upscale vs its source; details hold "
                               "the worst tile"),
        MetricSpec("color_drift_worst", _drift_worst, False, "Delta E 2000", needs_reference=True,
                   description="color_drift's largest tile mean (tiles: the plan's views, else a 4 x 4 grid)"),
        MetricSpec("tv", lambda i, p, r, o: F.total_variation(i), None, "intensity per pixel",
                   description="mean absolute neighbour difference (x + y)"),
        MetricSpec("vae_seam", _vae, False, "intensity (0-1)", needs_reference=True,
                   description="tiled vs one-piece decode (reference = the one-piece decode): "
                               "mean |per-tile mean drift|; details hold PSNR, SSIM, std drift"),
        MetricSpec("disc_count", lambda i, p, r, o: C.disc_count(i, p), None, "count (1 = one sun or moon)",
                   description="bright compact round blobs in the sky (above the horizon, ringed by sky): suns / moons; "
                               "0 or 2+ are failures"),
        MetricSpec("no_disc", lambda i, p, r, o: C.no_disc(i, p), False, "indicator (1 = no sun or moon in the sky)",
                   description="1 when disc_count is 0; its mean over runs is the no-sun rate"),
        MetricSpec("one_disc", lambda i, p, r, o: C.one_disc(i, p), True, "indicator (1 = exactly one sun or moon)",
                   description="1 when disc_count is 1; its mean over runs is the rate of exactly one disc"),
        MetricSpec("horizon_breaks", lambda i, p, r, o: C.horizon_breaks(i, p), False,
                   "breaks per height-wide stretch (0 = unbroken)",
                   description="runs of lines where the horizon's line-fit step exceeds 3 % of the height, anywhere "
                               "(absolute: a horizon broken everywhere reads broken)"),
        MetricSpec("horizon_continuity", lambda i, p, r, o: C.horizon_continuity(i, p), False,
                   "ratio (1 = as smooth at seams as elsewhere)",
                   description="horizon step at seam lines vs interior lines (line fits over 4 columns each side)"),
        MetricSpec("sky_consistency", lambda i, p, r, o: C.sky_consistency(i, p), False, "ratio (1 = one sky colour)",
                   description="spread of the sky's CIELAB colour between views vs between the halves of a view"),
    )
}

#: What `evaluate` computes when `metrics` is None: wrap_seam_score only for a circular plan, plus psnr and ssim
#: when a reference is given. (Not the metrics a run records: that default is the run configuration's.)
EVALUATE_DEFAULT_METRICS = ("seam_score", "seam_score_lab", "wrap_seam_score", "tv")


def evaluate(
    image: Any,
    plan: TilePlan | None = None,
    metrics: Iterable[str] | None = None,
    reference: Any = None,
    **options: Any,
) -> dict[str, Score]:
    """Compute `metrics` (names from METRICS) on one image; {name: Score}.

    `image`: PIL image, HxWx3 uint8/float array or (1,)3xHxW tensor in [0, 1]. `plan`: the
    TilePlan that made it (seam lines, crop size). `reference`: the image to compare with
    for psnr/ssim, or the one-piece decode for vae_seam; for color_drift the source image
    at any size (resized to the image's). Default metrics: seam_score,
    seam_score_lab, wrap_seam_score (only for circular plans), tv, plus psnr and ssim when
    a reference is given. `options`: band, crop, lpips_net, style_features, tiles,
    reference_images (a list of images for kid_featnet, e.g. single-window generations of the
    same prompts), kid_stride. A metric that cannot run here (no weights, no seams) gives NaN
    with `.reason`.
    """
    if plan is not None and not isinstance(plan, TilePlan):
        raise ConfigError(f"plan must be a TilePlan (from mdtools.plan_views) or None; got {type(plan).__name__}")
    allowed_opts = {"band", "crop", "lpips_net", "style_features", "tiles", "reference_images", "kid_stride"}
    bad = set(options) - allowed_opts
    if bad:
        raise ConfigError(f"unknown option(s) {sorted(bad)}; valid options: {sorted(allowed_opts)}")
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics is None:
        names = [m for m in EVALUATE_DEFAULT_METRICS if m != "wrap_seam_score" or (plan is not None and plan.circular)]
        if reference is not None:
            names += ["psnr", "ssim"]
    else:
        names = list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; valid names: {sorted(METRICS)}")
    img = to_image_tensor(image)
    ref = None
    if reference is not None:
        ref = to_image_tensor(reference, name="reference")
    for m in names:
        if METRICS[m].needs_reference and ref is None:
            raise ConfigError(f"metric {m!r} needs reference= (an image of the same size)")
        opt = METRICS[m].needs_option
        if opt is not None and options.get(opt) is None:
            raise ConfigError(f"metric {m!r} needs {opt}= (a list of reference images, e.g. single-window generations "
                              "of the same prompts); see docs/metrics.md")
    if plan is not None and (plan.height, plan.width) != tuple(img.shape[-2:]):
        raise ConfigError(
            f"plan is for {plan.height}x{plan.width} px but image is {img.shape[-2]}x{img.shape[-1]} px"
        )
    out: dict[str, Score] = {}
    for m in names:
        if plan is None and m in ("seam_score", "seam_score_lab") and "tiles" not in options:
            out[m] = Score.nan("no plan given: no seam lines to measure")
            continue
        out[m] = METRICS[m].fn(img, plan, ref, options)
    return out
