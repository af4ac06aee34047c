"""Scene detectors: the horizon, the sky model, suns and moons, sky / ground / terrain labels (docs/scenes.md).

Pure NumPy / scikit-image, no learned model. They recover the structure of a landscape whose
sky is the top of the picture: exact on the procedural scenes of `mdtools.toy.scenes` and
meaningful on real landscapes. The scene-coherence metrics (`scene_coherence.py`) are built
on them.

Coordinates: pixel (i, j) covers rows [i, i + 1) and columns [j, j + 1), so its centre is
(i + 0.5, j + 0.5). A horizon value h(x) is the height of the sky in column x: rows y < h
are sky. Disc centres use the same continuous coordinates.

Import-light: scipy and scikit-image are imported inside the functions that use them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError


def as_rgb_array(image: Any, *, name: str = "image") -> np.ndarray:
    """Any image form the metrics accept -> (H, W, 3) float64 array in [0, 1]."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and np.issubdtype(image.dtype, np.floating):
        lo, hi = float(np.min(image)), float(np.max(image))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise ConfigError(f"{name} float values must lie in [0, 1]; got range [{lo:.4g}, {hi:.4g}]")
        return np.clip(image.astype(np.float64), 0.0, 1.0)
    from .common import to_image_tensor, to_rgb  # lazy: torch is not needed for arrays

    t = to_rgb(to_image_tensor(image, name=name))
    return t[0].permute(1, 2, 0).numpy()


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


class SceneAnalysis(NamedTuple):
    """What `analyse_scene` found; each detector returns one field of it."""

    sky: str
    ground: str
    terrain: str
    discs: list[tuple[float, float, float]]
    horizon: np.ndarray
    sky_colour: np.ndarray  # (H, W, 3): the fitted sky colour at each pixel (local models per row)
    sky_mask: np.ndarray  # (H, W) bool: sky pixels above the horizon, discs excluded


def _fit_sky(img_s: np.ndarray, mask: np.ndarray, extend: int, fallback: np.ndarray | None = None) -> np.ndarray:
    """Sky colour per row of each block from its masked pixels: (B, H, W_b, 3), (B, H, W_b) -> (B, H, 3).

    A row's colour is the mean of the pixels ranked 10-35 % by luminance among its masked
    pixels: clouds, the disc and stars are brighter than the sky, so more than half the row
    may be covered without moving it (the terrain, darker, is kept out by the mask). The
    `extend` rows below the lowest estimated one continue the linear trend of the last few
    estimated rows (the sky gradient is smooth), rows further down keep the last value, rows
    above copy the first estimate. A block with fewer than two usable rows takes `fallback`
    ((H, 3)), or its overall median colour.
    """
    B, H, Wb = mask.shape
    counts = mask.sum(2)  # (B, H)
    usable = counts >= max(3, Wb // 10)
    lum = np.where(mask, _luminance(img_s), np.inf)
    srt = np.sort(lum, axis=2)
    lo = (0.1 * counts).astype(int)
    hi = np.maximum(lo, (0.35 * counts).astype(int) - 1)
    l_lo = np.take_along_axis(srt, np.minimum(lo, Wb - 1)[..., None], axis=2)
    l_hi = np.take_along_axis(srt, np.minimum(hi, Wb - 1)[..., None], axis=2)
    sel = (lum >= l_lo) & (lum <= l_hi)  # the pixels ranked 10-35 % (ties included)
    est = np.einsum("bhwc,bhw->bhc", img_s, sel) / np.maximum(sel.sum(2), 1)[..., None]
    out = np.empty((B, H, 3))
    ys = np.arange(H, dtype=float)
    for i in range(B):
        rows = np.flatnonzero(usable[i])
        if len(rows) < 2:
            out[i] = fallback if fallback is not None else np.median(img_s[i].reshape(-1, 3), axis=0)
            continue
        e = est[i, rows]
        for c in range(3):
            out[i, :, c] = np.interp(ys, rows, e[:, c])
        tail = rows[-max(5, min(len(rows), H // 8)):]
        if len(tail) >= 2 and rows[-1] < H - 1 and extend > 0:
            coef = np.polyfit(tail.astype(float), e[-len(tail):], 1)  # (2, 3): slope, intercept
            below = np.minimum(ys[rows[-1] + 1:], rows[-1] + extend)
            out[i, rows[-1] + 1:] = coef[0][None, :] * below[:, None] + coef[1][None, :]
    return out


def _scan_horizon(sky_like: np.ndarray, k: int) -> np.ndarray:
    """Per column: the row below the lowest run of k sky-like rows (NaN: no run, or fewer than k rows of ground below)."""
    H, W = sky_like.shape
    c = np.concatenate([np.zeros((1, W)), np.cumsum(sky_like, 0)], 0)
    run = np.zeros((H, W), dtype=bool)
    run[k - 1:] = (c[k:] - c[:-k]) == k
    last = H - 1 - np.argmax(run[::-1], axis=0)
    h = (last + 1).astype(float)
    ok = run.any(0) & (h <= H - k)  # at least k rows of ground
    # the part below must be mostly ground, not a stray dark pixel at the bottom of a sky column
    below = (c[H] - c[np.minimum(last + 1, H), np.arange(W)]) / np.maximum(H - h, 1)
    ok &= below < 0.5
    h[~ok] = np.nan
    return h


def _without_stars(img: np.ndarray) -> np.ndarray:
    """Stars and specks (one or two pixels) replaced by the median of their four neighbours.

    A speck is 0.1 brighter in luminance than both neighbours along one axis and than at
    least one along the other (so a pair of adjacent stars goes too).
    """
    L = np.pad(_luminance(img), 1, mode="edge")
    c = L[1:-1, 1:-1]
    up, down, left, right = (c - n > 0.1 for n in (L[:-2, 1:-1], L[2:, 1:-1], L[1:-1, :-2], L[1:-1, 2:]))
    star = (left & right & (up | down)) | (up & down & (left | right))
    if not star.any():
        return img
    P = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    nbrs = np.stack([P[:-2, 1:-1][star], P[2:, 1:-1][star], P[1:-1, :-2][star], P[1:-1, 2:][star]])
    out = img.copy()
    out[star] = np.median(nbrs, axis=0)
    return out


def _blocks(height: int, width: int) -> list[tuple[int, int]]:
    """Column ranges of the local sky models: half the height wide, a quarter apart (one block if the image is narrow)."""
    bw = max(16, height // 2)
    if width < 2 * bw:
        return [(0, width)]
    n = math.ceil((width - bw) / (bw / 2)) + 1
    return [(int(round(c)), int(round(c)) + bw) for c in np.linspace(0, width - bw, n)]


class SkyFit(NamedTuple):
    """What `fit_horizon` returns: the horizon per column, the fitted sky colour and each pixel's distance to it."""

    horizon: np.ndarray  # (W,)
    sky: np.ndarray  # (H, W, 3) sky colour at each pixel (the nearest block's model)
    distance: np.ndarray  # (H, W) distance to the closest local sky model


def fit_horizon(img: np.ndarray) -> SkyFit:
    """Horizon, sky model and distance-to-sky of an (H, W, 3) float array in [0, 1] (`as_rgb_array`).

    The sky is modelled as a colour per row (`_fit_sky`), fitted in blocks of columns half
    the height wide (so a sky that changes colour across a panorama is still recognised); a
    pixel is sky-like when it is within tau of the model of a block that contains it, and
    the sky is the sky-like region connected to the top rows (so a patch of sky-coloured
    ground below the horizon does not count). Scanning up from the bottom, the horizon is
    just below the lowest run of k sky pixels. The models start from the top tenth of the
    image and are refitted to everything above the horizon found; the first passes
    extrapolate their trend 30 % of the height downwards so the sky can grow to the
    horizon, the last ones do not (so pale ground is not mistaken for a lighter sky).
    A sub-pixel position comes from where the distance to the sky crosses half the
    column's sky-to-ground contrast (unbiased for a symmetric blur).
    """
    from scipy.ndimage import gaussian_filter
    from scipy.ndimage import label as cc_label

    H, W = img.shape[:2]
    s = _without_stars(img)
    # vertical smoothing only: texture and noise shrink, one-pixel-wide peaks of the ridge survive
    s = gaussian_filter(s, (1.0, 0.0, 0.0), mode="nearest")
    k = max(3, H // 40)
    top = max(3, H // 10)
    margin = max(3, round(0.05 * H))
    rows = np.arange(H)[:, None]
    blocks = _blocks(H, W)
    cols = np.array([np.arange(a, b) for a, b in blocks])  # (B, block width): blocks are equally wide
    mask = np.zeros((H, W), dtype=bool)
    mask[:top] = True  # first guess: the top tenth of a landscape is sky
    tau = 0.07
    h = np.full(W, np.nan)
    prev = None
    for it in range(5):
        ext = int(0.3 * H) if it < 2 else margin + 1  # later passes: just across the rows left out below
        glob = _fit_sky(s[None], mask[None], ext)[0] if len(blocks) > 1 else None
        models = _fit_sky(s[:, cols].transpose(1, 0, 2, 3), mask[:, cols].transpose(1, 0, 2), ext, glob)  # (B, H, 3)
        d = np.full((H, W), np.inf)
        for (a, b), m in zip(blocks, models):
            d[:, a:b] = np.minimum(d[:, a:b], np.linalg.norm(s[:, a:b] - m[:, None, :], axis=2))
        lab, _ = cc_label(d < tau)
        keep = np.unique(lab[:top])
        sky = np.isin(lab, keep[keep > 0])
        h = _scan_horizon(sky, k)
        if np.isnan(h).all() or (it >= 3 and np.array_equal(h, prev, equal_nan=True)):
            break
        prev = h
        hf = np.where(np.isnan(h), -1, h)
        # fit only rows clear of the horizon's blur: a blurred edge mixes ground into the last sky rows
        mask = rows < hf[None, :] - margin
        # contrast just below the horizon sets the threshold for the next pass
        idx = np.clip(hf.astype(int)[None, :] + np.arange(1, 5)[:, None], 0, H - 1)
        contrast = np.median(d[idx, np.arange(W)], axis=0)
        tau = float(np.clip(0.5 * np.nanmedian(np.where(np.isnan(h), np.nan, contrast)), 0.03, 0.15))
    centres = np.array([(a + b) / 2 for a, b in blocks])
    nearest = np.argmin(np.abs(np.arange(W)[:, None] + 0.5 - centres[None, :]), axis=1)
    sky_map = models[nearest].transpose(1, 0, 2)  # (H, W, 3)
    if np.isnan(h).all():
        return SkyFit(h, sky_map, d)
    # sub-pixel: where d crosses half the column's contrast, between the last sky-like row and below
    valid = ~np.isnan(h)
    cols = np.flatnonzero(valid)
    b = h[valid].astype(int)
    idx = np.clip(b[None, :] + np.arange(2, 6)[:, None], 0, H - 1)
    half = 0.5 * np.median(d[idx, cols], axis=0)
    out = h.copy()
    found = np.zeros(len(cols), dtype=bool)
    for j in range(-1, 4):  # first row at or after b - 1 whose distance reaches half the contrast
        r1 = np.clip(b + j, 1, H - 1)
        d0, d1 = d[r1 - 1, cols], d[r1, cols]
        hit = ~found & (d1 >= half) & (d0 < half)
        frac = (half - d0) / np.maximum(d1 - d0, 1e-12)
        # row r1 - 1 has its centre at r1 - 0.5; a symmetric blur of a step at e is half-way at e
        out[cols[hit]] = (r1 - 0.5 + frac)[hit]
        found |= hit
    return SkyFit(out, sky_map, d)


def fill_horizon(horizon: np.ndarray, height: int) -> np.ndarray:
    """The horizon with NaN columns filled by linear interpolation between found ones (all NaN: `height`, all sky).

    A column without a sky-to-ground boundary inside a landscape whose other columns have one
    (a blob, a hole, a patch of sky-coloured ground) keeps the horizon of its neighbours,
    so it does not count as sky from top to bottom.
    """
    h = np.asarray(horizon, dtype=np.float64)
    ok = ~np.isnan(h)
    if not ok.any():
        return np.full(len(h), float(height))
    if ok.all():
        return h.copy()
    x = np.arange(len(h))
    return np.interp(x, x[ok], h[ok])


def _in_sky(img: np.ndarray, hf: np.ndarray, sky: np.ndarray, cy: float, cx: float, r: float) -> tuple[float, float]:
    """(share of the ring r + 2 .. r + 4 px around a blob above the horizon, share closer to the sky model than to the ground).

    The ground colour is the median of the pixels 3 px or more below the horizon in the
    columns within 2 r + 4 px of the blob; with no ground there the colour share is 1.
    """
    H, W = img.shape[:2]
    y0, y1 = max(0, int(cy - r - 5)), min(H, int(cy + r + 6))
    x0, x1 = max(0, int(cx - r - 5)), min(W, int(cx + r + 6))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dist = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
    ring = (dist >= r + 2) & (dist <= r + 4)
    if not ring.any():
        return 0.0, 0.0
    ry, rx = yy[ring], xx[ring]
    above = float(np.mean(ry + 0.5 < hf[rx]))
    g0, g1 = max(0, int(cx - 2 * r - 4)), min(W, int(cx + 2 * r + 5))
    below = np.arange(H)[:, None] + 0.5 >= hf[None, g0:g1] + 3
    if below.sum() < 10:
        return above, 1.0
    ground = np.median(img[:, g0:g1][below], axis=0)
    px = img[ry, rx]
    sky_like = np.linalg.norm(px - sky[ry, rx], axis=1) < np.linalg.norm(px - ground, axis=1)
    return above, float(np.mean(sky_like))


def find_discs(img: np.ndarray, horizon: np.ndarray, sky: np.ndarray) -> list[tuple[float, float, float]]:
    """Bright compact round blobs in the sky: (row, column, radius) each, left to right.

    A pixel is disc-like when its luminance covers more than 55 % of the way from the
    fitted sky to white (and at least 0.1): clouds are kept below that, the sun and moon far
    above. Components must be at least ~(0.015 H)^2 pi px (stars are single pixels), at most
    a quarter of the height in radius, and round (minor / major axis >= 0.6, solidity >= 0.8).
    Only the sky counts: pixels above the horizon (NaN columns take their neighbours'
    horizon, `fill_horizon`), and a blob whose surrounding ring (r + 2 to r + 4 px) is not
    at least 60 % above the horizon and at least half sky-coloured (closer to the sky model
    than to the ground below) is a bright patch of ground, not a sun.
    """
    from skimage.measure import label, regionprops

    H, W = img.shape[:2]
    L = _luminance(img)
    LS = _luminance(sky)
    res = L - LS
    f = res / np.maximum(1 - LS, 0.05)
    hf = fill_horizon(horizon, H)
    mask = (f > 0.55) & (res > 0.1) & (np.arange(H)[:, None] < hf[None, :] - 1)
    min_area = max(6.0, math.pi * (0.015 * H) ** 2)
    max_area = math.pi * (0.25 * H) ** 2
    out = []
    for reg in regionprops(label(mask, connectivity=2)):
        if not min_area <= reg.area <= max_area:
            continue
        if reg.axis_major_length <= 0 or reg.axis_minor_length / reg.axis_major_length < 0.6 or reg.solidity < 0.8:
            continue
        cy, cx = reg.centroid
        cy, cx, r = float(cy) + 0.5, float(cx) + 0.5, math.sqrt(reg.area / math.pi)
        above, sky_like = _in_sky(img, hf, sky, cy, cx, r)
        if above < 0.6 or sky_like < 0.5:
            continue
        out.append((cy, cx, r))
    return sorted(out, key=lambda d: d[1])


def sky_mask(H: int, W: int, horizon: np.ndarray, discs: list[tuple[float, float, float]], margin: float = 2.0) -> np.ndarray:
    """Sky pixels: above the horizon by `margin` rows, outside each disc grown by 3 px (columns without a horizon: none)."""
    y = np.arange(H)[:, None] + 0.5
    x = np.arange(W)[None, :] + 0.5
    hf = np.where(np.isnan(horizon), -np.inf, horizon)
    m = y < hf[None, :] - margin
    for cy, cx, r in discs:
        m &= (y - cy) ** 2 + (x - cx) ** 2 > (r + 3) ** 2
    return m


def _classify_sky(img: np.ndarray, mask: np.ndarray) -> str:
    px = img[mask] if mask.sum() >= 10 else img[: max(1, img.shape[0] // 5)].reshape(-1, 3)
    r, g, b = np.median(px, axis=0)
    if max(r, g, b) < 0.33:  # night skies stay below ~0.2 in every channel; others exceed 0.45
        return "night"
    return "day" if b - r > 0.2 else "sunset"


def _classify_ground(img: np.ndarray, horizon: np.ndarray) -> str:
    H = img.shape[0]
    top = np.nanmax(horizon) if not np.isnan(horizon).all() else 0.8 * H
    y0 = int(min(H - 2, max(0.0, top + 0.4 * (H - top))))
    r, g, b = np.median(img[y0:].reshape(-1, 3), axis=0)
    mx = max(r, g, b)
    if mx <= 1e-6 or (mx - min(r, g, b)) / mx < 0.2:
        return "snow"
    return ("sand", "grass", "water")[int(np.argmax([r, g, b]))]


def _classify_terrain(horizon: np.ndarray, height: int) -> str:
    h = horizon[~np.isnan(horizon)]
    if len(h) < 2:
        return "sea"
    # a sea line is flat to a pixel; the lowest ridge spans 8 % of the height
    return "mountains" if np.percentile(h, 95) - np.percentile(h, 5) > max(2.0, 0.03 * height) else "sea"


def analyse_scene(image: Any) -> SceneAnalysis:
    """Run every detector once (they share the horizon and the sky fit)."""
    img = as_rgb_array(image)
    H, W = img.shape[:2]
    horizon, sky, _ = fit_horizon(img)
    discs = find_discs(img, horizon, sky)
    mask = sky_mask(H, W, horizon, discs)
    return SceneAnalysis(
        sky=_classify_sky(img, mask), ground=_classify_ground(img, horizon), terrain=_classify_terrain(horizon, H),
        discs=discs, horizon=horizon, sky_colour=sky, sky_mask=mask,
    )


def detect_horizon(image: Any) -> np.ndarray:
    """Sky height per column ((W,) float, NaN where a column has no sky-to-ground boundary)."""
    return fit_horizon(as_rgb_array(image))[0]


def detect_discs(image: Any) -> list[tuple[float, float, float]]:
    """Suns and moons: bright, compact, round blobs above the horizon, as (row, column, radius)."""
    img = as_rgb_array(image)
    h, sky, _ = fit_horizon(img)
    return find_discs(img, h, sky)


def detect_sky(image: Any) -> str:
    """"day", "sunset" or "night" from the median colour of the sky above the horizon."""
    return analyse_scene(image).sky


def detect_ground(image: Any) -> str:
    """"sand", "grass", "water" or "snow" from the median colour of the lower part of the ground."""
    img = as_rgb_array(image)
    return _classify_ground(img, fit_horizon(img)[0])


def detect_terrain(image: Any) -> str:
    """"sea" for a flat horizon, "mountains" when it spans more than 3 % of the height."""
    img = as_rgb_array(image)
    return _classify_terrain(fit_horizon(img)[0], img.shape[0])


__all__ = [
    "SceneAnalysis", "SkyFit", "analyse_scene", "as_rgb_array", "detect_discs", "detect_ground", "detect_horizon", "detect_sky",
    "detect_terrain", "fill_horizon", "find_discs", "fit_horizon", "sky_mask",
]
