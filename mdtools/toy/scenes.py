"""Procedural landscapes with ground truth: sky, one sun or moon, a horizon, ground (docs/scenes.md).

MultiDiffusion's failures are not only seams: a panorama grows three suns, its horizon
steps up and down from window to window, its sky changes colour mid-canvas. These scenes
know their structure (`SceneLabels`), so a generated image can be checked against it with
the detectors of `mdtools.metrics.scene_analysis` (pure NumPy / scikit-image, no learned
model) and the coherence metrics in `mdtools.metrics.scene_coherence`.

Coordinates: pixel (i, j) covers rows [i, i + 1) and columns [j, j + 1), so its centre is
(i + 0.5, j + 0.5). A horizon value h(x) is the height of the sky in column x: rows y < h
are sky. Disc centres use the same continuous coordinates.

Import-light: scipy is imported inside the functions that use it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import numpy as np

from ..errors import ConfigError, check_choice, check_positive_int

SKIES: tuple[str, ...] = ("day", "sunset", "night")
GROUNDS: tuple[str, ...] = ("sand", "grass", "water", "snow")
TERRAINS: tuple[str, ...] = ("mountains", "sea")
DISCS: tuple[str, ...] = ("sun", "moon")

#: The place words of the prompt template; the sea is always water, mountains stand on the rest.
PLACES: dict[tuple[str, str], str] = {
    ("sea", "water"): "the sea",
    ("mountains", "sand"): "sandy mountains",
    ("mountains", "grass"): "grassy mountains",
    ("mountains", "snow"): "snowy mountains",
}
PROMPT_TEMPLATE = "{sky} sky over {place} with a {disc}"

#: Every prompt the generator can produce (sky x place; the disc follows the sky).
SCENE_PROMPTS: tuple[str, ...] = tuple(
    PROMPT_TEMPLATE.format(sky=s, place=p, disc="moon" if s == "night" else "sun") for s in SKIES for p in PLACES.values()
)

# Smallest size a scene is drawn at: below it the disc is a few pixels and the bands overlap.
MIN_SIZE = 32

# Sampling ranges (fractions of the image height) and the margins that keep the disc and the
# clouds clear of the terrain: the detectors rely on a band of clean sky above the horizon.
HORIZON_RANGE = (0.35, 0.75)
RADIUS_RANGE = (0.045, 0.075)
RIDGE_RANGE = (0.08, 0.25)
ROUGHNESS_RANGE = (0.45, 0.65)
_TOP_MARGIN = 0.03  # disc top to image top
_SKY_GAP = 0.06  # disc bottom / cloud bottom to the highest peak

# Colours (linear blend endpoints, sRGB 0-1). Chosen so each label is separable by simple
# rules with wide margins (docs/scenes.md): night skies are dark, day skies blue (B >> R),
# sunsets red (R > B); grounds differ in which channel dominates, snow is unsaturated.
_SKY_TOP = {"day": (0.18, 0.38, 0.78), "sunset": (0.30, 0.16, 0.42), "night": (0.01, 0.01, 0.04)}
_SKY_BOTTOM = {"day": (0.55, 0.74, 0.95), "sunset": (0.98, 0.52, 0.30), "night": (0.12, 0.14, 0.34)}
_DISC_COLOUR = {"day": (1.0, 0.98, 0.84), "sunset": (1.0, 0.92, 0.58), "night": (0.88, 0.88, 0.82)}
_CLOUD_COLOUR = {"day": (1.0, 1.0, 1.0), "sunset": (1.0, 0.80, 0.74), "night": (0.35, 0.35, 0.40)}
_GROUND_COLOUR = {"sand": (0.86, 0.74, 0.52), "grass": (0.26, 0.56, 0.20), "water": (0.06, 0.30, 0.52), "snow": (0.92, 0.94, 0.98)}
_LIGHT = {"day": 1.0, "sunset": 0.8, "night": 0.4}  # ground brightness under each sky
_MOUNTAIN_SHADE = 0.72  # mountain flanks are the ground material in shade
_CLOUD_ALPHA = 0.38  # a cloud core covers < 40 % of the way to white: the disc test needs > 55 %
_JITTER = 0.03  # per-channel colour jitter drawn from the seed


@dataclass(frozen=True)
class SceneParams:
    """Everything random about a scene; `render_scene` is a pure function of it (and the size).

    Fractions are of the image height except `disc_x` (of the width the disc can take) and
    `disc_y` (of the sky above the highest peak, 0 = top). `seed` drives the ridge shape,
    the textures, stars, clouds and a small colour jitter.
    """

    sky: str
    ground: str
    terrain: str
    horizon: float  # base horizon row / height (the sea line, the foot of the mountains)
    ridge_height: float  # highest peak above the base horizon / height; 0 for the sea
    roughness: float  # midpoint-displacement amplitude decay per halving (higher = rougher)
    disc_radius: float
    disc_x: float
    disc_y: float
    clouds: bool
    seed: int

    def __post_init__(self) -> None:
        check_choice("sky", self.sky, SKIES)
        check_choice("ground", self.ground, GROUNDS)
        check_choice("terrain", self.terrain, TERRAINS)
        if (self.terrain == "sea") != (self.ground == "water"):
            raise ConfigError(
                f"terrain={self.terrain!r} with ground={self.ground!r} is not a scene; the sea is water "
                "(terrain='sea', ground='water') and mountains stand on sand, grass or snow"
            )
        for name, lo, hi in (("horizon", *HORIZON_RANGE), ("disc_radius", *RADIUS_RANGE), ("roughness", *ROUGHNESS_RANGE),
                             ("disc_x", 0.0, 1.0), ("disc_y", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not lo <= v <= hi:
                raise ConfigError(f"{name}={v!r} must lie in [{lo}, {hi}] (e.g. {(lo + hi) / 2:.3g})")
        room = self.sky_room()
        hi = 0.0 if self.terrain == "sea" else min(RIDGE_RANGE[1], room)
        if self.terrain == "sea" and self.ridge_height != 0:
            raise ConfigError(f"ridge_height={self.ridge_height!r} must be 0 for terrain='sea'")
        if self.terrain == "mountains" and not RIDGE_RANGE[0] <= self.ridge_height <= hi:
            raise ConfigError(
                f"ridge_height={self.ridge_height!r} must lie in [{RIDGE_RANGE[0]}, {hi:.3g}] for horizon={self.horizon} "
                f"and disc_radius={self.disc_radius} (the disc must fit above the peaks), e.g. {RIDGE_RANGE[0]}"
            )
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0 (e.g. 0), got {self.seed!r}")

    @property
    def disc(self) -> str:
        """"moon" under a night sky, else "sun"."""
        return "moon" if self.sky == "night" else "sun"

    def sky_room(self) -> float:
        """Height fraction left for the peaks once the disc and its margins fit above them."""
        return self.horizon - 2 * self.disc_radius - _TOP_MARGIN - _SKY_GAP


@dataclass(frozen=True, eq=False)
class SceneLabels:
    """Ground truth of a rendered scene (pixel units, see the module docstring for coordinates)."""

    sky: str
    ground: str
    terrain: str
    disc: str
    disc_center: tuple[float, float]  # (row, column)
    disc_radius: float
    horizon: np.ndarray = field(repr=False)  # (W,) float: sky height per column (the ridge line for mountains)
    clouds: bool
    height: int
    width: int

    @property
    def prompt(self) -> str:
        """The scene's prompt (`scene_prompt`)."""
        return scene_prompt(self)


def sample_params(
    rng: np.random.Generator,
    *,
    sky: str | None = None,
    ground: str | None = None,
    terrain: str | None = None,
    clouds: bool | None = None,
) -> SceneParams:
    """Draw a scene; any of sky, ground, terrain, clouds may be fixed (the rest is drawn).

    Terrain and ground are drawn together from the four places (sea, sandy / grassy /
    snowy mountains), so fixing one constrains the other.
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(0)), got {type(rng).__name__}")
    if sky is not None:
        check_choice("sky", sky, SKIES)
    places = [tp for tp in PLACES if (terrain is None or tp[0] == terrain) and (ground is None or tp[1] == ground)]
    if not places:
        raise ConfigError(f"terrain={terrain!r} with ground={ground!r} is not a scene; choose one of {list(PLACES)}")
    sky = sky if sky is not None else SKIES[int(rng.integers(len(SKIES)))]
    terrain, ground = places[int(rng.integers(len(places)))]
    horizon = float(rng.uniform(*HORIZON_RANGE))
    radius = float(rng.uniform(*RADIUS_RANGE))
    room = horizon - 2 * radius - _TOP_MARGIN - _SKY_GAP
    ridge = 0.0 if terrain == "sea" else float(rng.uniform(RIDGE_RANGE[0], min(RIDGE_RANGE[1], room)))
    return SceneParams(
        sky=sky, ground=ground, terrain=terrain, horizon=horizon, ridge_height=ridge,
        roughness=float(rng.uniform(*ROUGHNESS_RANGE)), disc_radius=radius,
        disc_x=float(rng.uniform()), disc_y=float(rng.uniform()),
        clouds=bool(rng.random() < 0.5) if clouds is None else bool(clouds),
        seed=int(rng.integers(2**31)),
    )


# ------------------------------------------------------------------------------ geometry


class _Geometry(NamedTuple):
    ridge: np.ndarray  # (W,) sky height per column (after any offset)
    base: np.ndarray  # (W,) row where the foreground ground starts
    disc: tuple[float, float, float]  # cy, cx, r
    peak_top: float  # highest peak row before any offset (clouds and disc stay above it)


def _check_size(height: int, width: int) -> None:
    for name, v in (("height", height), ("width", width)):
        check_positive_int(name, v)
        if v < MIN_SIZE:
            raise ConfigError(f"{name}={v} is too small for a scene; use at least {MIN_SIZE} (e.g. 128)")


def _stream(seed: int, k: int) -> np.random.Generator:
    """Independent random stream k of a scene: the ridge does not change when textures do."""
    return np.random.default_rng([int(seed), k])


def _ridge_profile(rng: np.random.Generator, width: int, height: int, roughness: float) -> np.ndarray:
    """Midpoint displacement on [0, width], control points every half height, scaled to [0, 1].

    The horizontal scale follows the height, so a panorama is a longer range of the same
    kind of mountains, not a stretched one.
    """
    span = max(1, math.ceil(width / (0.5 * height)))
    pts = rng.random(span + 1)
    amp = 0.5
    for _ in range(max(0, math.ceil(math.log2(width / span)))):  # until the spacing is <= 1 px
        mids = 0.5 * (pts[:-1] + pts[1:]) + amp * rng.standard_normal(len(pts) - 1)
        new = np.empty(2 * len(pts) - 1)
        new[0::2], new[1::2] = pts, mids
        pts, amp = new, amp * roughness
    g = np.interp(np.arange(width) + 0.5, np.linspace(0.0, width, len(pts)), pts)
    return (g - g.min()) / max(g.max() - g.min(), 1e-12)


def _geometry(params: SceneParams, height: int, width: int, horizon_offset: np.ndarray | None) -> _Geometry:
    H, W = height, width
    h0 = params.horizon * H
    if params.terrain == "mountains":
        ridge = h0 - params.ridge_height * H * _ridge_profile(_stream(params.seed, 0), W, H, params.roughness)
    else:
        ridge = np.full(W, h0)
    peak_top = float(ridge.min())
    r = params.disc_radius * H
    margin = _TOP_MARGIN * H
    cx = r + margin + params.disc_x * (W - 2 * (r + margin))
    cy = r + margin + params.disc_y * max(0.0, peak_top - _SKY_GAP * H - 2 * r - margin)
    base = np.full(W, h0)
    if horizon_offset is not None:
        ridge, base = ridge + horizon_offset, base + horizon_offset
    return _Geometry(ridge, base, (float(cy), float(cx), float(r)), peak_top)


def _check_offset(horizon_offset: Any, height: int, width: int) -> np.ndarray | None:
    if horizon_offset is None:
        return None
    off = np.asarray(horizon_offset, dtype=np.float64)
    if off.shape != (width,) or not np.isfinite(off).all():
        raise ConfigError(f"horizon_offset must be None or {width} finite row shifts (one per column); got shape {off.shape}")
    if off.min() < 0 or off.max() > 0.2 * height:
        raise ConfigError(
            f"horizon_offset must lie in [0, {0.2 * height:.0f}] px (downward shifts keep the disc in the sky); "
            f"got [{off.min():.3g}, {off.max():.3g}]"
        )
    return off


# ----------------------------------------------------------------------------- rendering


def _jitter(rng: np.random.Generator, colour: tuple[float, ...]) -> np.ndarray:
    return np.clip(np.asarray(colour) + rng.uniform(-_JITTER, _JITTER, 3), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / max(float(n.std()), 1e-6)


def _ground_texture(rng: np.random.Generator, ground: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) multiplicative brightness texture of a ground material (about 1 +- 0.15)."""
    H, W = shape
    if ground == "sand":  # fine speckle and faint horizontal ripples
        y = np.arange(H, dtype=np.float32)[:, None]
        return 1 + 0.05 * _smooth_noise(rng, shape, (0.7, 0.7)) + 0.03 * np.sin(y * 1.3 + 2 * _smooth_noise(rng, shape, (3, 8)))
    if ground == "grass":  # vertical blades
        return 1 + 0.15 * _smooth_noise(rng, shape, (2.0, 0.5))
    if ground == "water":  # horizontal wave streaks
        return 1 + 0.12 * _smooth_noise(rng, shape, (0.6, 6.0))
    return 1 + 0.04 * _smooth_noise(rng, shape, (4.0, 4.0))  # snow: soft drifts


def _cloud_alpha(rng: np.random.Generator, geo: _Geometry, height: int, width: int) -> np.ndarray:
    """(H, W) cloud opacity: soft blobs clear of the disc and of the band above the peaks.

    The width is cut into slots of half the height and clouds sit in every other slot at
    most, so no row is more than about half cloud: the sky colour of each row stays
    measurable (the horizon detector relies on it).
    """
    H, W = height, width
    alpha = np.zeros((H, W), dtype=np.float32)
    bottom = geo.peak_top - _SKY_GAP * H  # clouds end above the clean band over the peaks
    if bottom < 0.08 * H:
        return alpha
    y = np.arange(H, dtype=np.float32)[:, None] + 0.5
    x = np.arange(W, dtype=np.float32)[None, :] + 0.5
    slot = 0.5 * H
    n_slots = max(2, math.ceil(W / slot))
    parity = int(rng.integers(2))
    chosen = [i for i in range(parity, n_slots, 2) if rng.random() < 0.7] or [parity]
    for i in chosen:
        ry = float(rng.uniform(0.02, 0.045)) * H
        rx = float(rng.uniform(0.06, 0.11)) * H
        cy = float(rng.uniform(min(ry, bottom - ry), max(ry, bottom - ry)))
        cx = (i + 0.5 + rng.uniform(-0.15, 0.15)) * slot
        for _ in range(int(rng.integers(3, 6))):  # a cloud is a few overlapping puffs
            py, px = cy + rng.normal(0, 0.4) * ry, cx + rng.normal(0, 0.4) * rx
            sy, sx = ry * rng.uniform(0.6, 1.0), rx * rng.uniform(0.4, 0.7)
            alpha += np.exp(-0.5 * (((y - py) / sy) ** 2 + ((x - px) / sx) ** 2)).astype(np.float32)
    alpha = _CLOUD_ALPHA * np.clip(1.5 * alpha, 0.0, 1.0)
    # never over the disc: clear within r + 4 px, full opacity from r + 12 px
    cy, cx, r = geo.disc
    dist = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    alpha *= np.clip((dist - r - 4) / 8, 0.0, 1.0)
    alpha *= np.clip((bottom - y) / (0.03 * H), 0.0, 1.0)
    return alpha


def _draw_disc(img: np.ndarray, cy: float, cx: float, r: float, colour: np.ndarray) -> None:
    """Anti-aliased disc (coverage = r + 0.5 - distance, clipped), drawn in place."""
    H, W = img.shape[:2]
    y0, y1 = max(0, int(cy - r - 2)), min(H, int(cy + r + 3))
    x0, x1 = max(0, int(cx - r - 2)), min(W, int(cx + r + 3))
    y = np.arange(y0, y1)[:, None] + 0.5
    x = np.arange(x0, x1)[None, :] + 0.5
    cov = np.clip(r + 0.5 - np.sqrt((y - cy) ** 2 + (x - cx) ** 2), 0.0, 1.0)[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - cov) + colour * cov


def make_scene(
    params: SceneParams, height: int, width: int, *, horizon_offset: Any = None
) -> tuple[np.ndarray, SceneLabels]:
    """Render a scene and return (image (H, W, 3) float32 in [0, 1], its labels).

    Any size works: a panorama is the same scene extended sideways, with one disc and one
    continuous horizon. `horizon_offset` ((W,) rows, 0 to 20 % of the height, downwards)
    shifts the terrain per column, for planting broken horizons; the disc and the clouds
    stay where the unshifted scene has them.
    """
    if not isinstance(params, SceneParams):
        raise ConfigError(f"params must be a SceneParams (from sample_params), got {type(params).__name__}")
    _check_size(height, width)
    off = _check_offset(horizon_offset, height, width)
    H, W = height, width
    geo = _geometry(params, H, W, off)
    rng = _stream(params.seed, 1)
    top, bottom = _jitter(rng, _SKY_TOP[params.sky]), _jitter(rng, _SKY_BOTTOM[params.sky])
    ground_c = _jitter(rng, _GROUND_COLOUR[params.ground]) * _LIGHT[params.sky]
    disc_c = np.asarray(_DISC_COLOUR[params.sky])
    y = np.arange(H, dtype=np.float32)[:, None] + 0.5
    # sky: a vertical gradient from the top to the base horizon
    t = np.clip(y / (params.horizon * H), 0.0, 1.0)[..., None]
    img = np.broadcast_to((top + (bottom - top) * t).astype(np.float32), (H, W, 3)).copy()
    if params.sky == "night":  # single-pixel stars of random brightness
        n = int(0.004 * H * W)
        sy, sx = rng.integers(0, H, n), rng.integers(0, W, n)
        img[sy, sx] = np.maximum(img[sy, sx], rng.uniform(0.5, 1.0, n)[:, None].astype(np.float32))
    if params.clouds:
        a = _cloud_alpha(_stream(params.seed, 2), geo, H, W)[..., None]
        img = img * (1 - a) + np.asarray(_CLOUD_COLOUR[params.sky], dtype=np.float32) * a
    _draw_disc(img, *geo.disc, disc_c)
    # terrain: ground material, shaded on the mountain flanks, anti-aliased along the ridge
    tex = _ground_texture(rng, params.ground, (H, W))
    flank = np.clip(y + 0.5 - geo.base[None, :], 0.0, 1.0)  # 1 on the foreground ground
    shade = _MOUNTAIN_SHADE + (1 - _MOUNTAIN_SHADE) * flank
    terrain = ground_c[None, None, :] * (tex * shade)[..., None]
    if params.ground == "water" and params.sky != "night":  # the sea lightens towards the horizon
        terrain = terrain * (1 + 0.25 * np.exp(-(y - geo.base[None, :]) / (0.05 * H)))[..., None]
    elif params.ground == "water":  # a night sea is darker than the sky glow above it
        terrain = terrain * 0.75
    cov = np.clip(y + 0.5 - geo.ridge[None, :], 0.0, 1.0)[..., None]
    img = img * (1 - cov) + terrain * cov
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    labels = SceneLabels(
        sky=params.sky, ground=params.ground, terrain=params.terrain, disc=params.disc,
        disc_center=(geo.disc[0], geo.disc[1]), disc_radius=geo.disc[2], horizon=geo.ridge.copy(),
        clouds=params.clouds, height=H, width=W,
    )
    return img, labels


def render_scene(params: SceneParams, height: int, width: int, *, horizon_offset: Any = None) -> np.ndarray:
    """The scene as an (H, W, 3) float32 image in [0, 1]; deterministic given params and size."""
    return make_scene(params, height, width, horizon_offset=horizon_offset)[0]


def scene_labels(params: SceneParams, height: int, width: int, *, horizon_offset: Any = None) -> SceneLabels:
    """The labels `make_scene` would return, without rendering."""
    if not isinstance(params, SceneParams):
        raise ConfigError(f"params must be a SceneParams (from sample_params), got {type(params).__name__}")
    _check_size(height, width)
    geo = _geometry(params, height, width, _check_offset(horizon_offset, height, width))
    return SceneLabels(
        sky=params.sky, ground=params.ground, terrain=params.terrain, disc=params.disc,
        disc_center=(geo.disc[0], geo.disc[1]), disc_radius=geo.disc[2], horizon=geo.ridge.copy(),
        clouds=params.clouds, height=height, width=width,
    )


# ------------------------------------------------------------------------------- prompts


def scene_prompt(labels: SceneLabels | SceneParams) -> str:
    """The prompt of a scene: "{sky} sky over {place} with a {disc}"."""
    place = PLACES.get((labels.terrain, labels.ground))
    if place is None:
        raise ConfigError(f"terrain={labels.terrain!r} with ground={labels.ground!r} has no prompt; choose one of {list(PLACES)}")
    return PROMPT_TEMPLATE.format(sky=labels.sky, place=place, disc=labels.disc)


_PROMPT_RE = re.compile(
    r"^\s*(?P<sky>" + "|".join(SKIES) + r") sky over (?P<place>" + "|".join(PLACES.values())
    + r") with a (?P<disc>" + "|".join(DISCS) + r")\s*$"
)


def parse_prompt(prompt: str) -> dict[str, str]:
    """{"sky", "ground", "terrain", "disc"} of a prompt written with the scene template."""
    m = _PROMPT_RE.match(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ConfigError(
            f"prompt={prompt!r} does not follow the scene template {PROMPT_TEMPLATE!r}; e.g. {SCENE_PROMPTS[0]!r}"
        )
    terrain, ground = next(tp for tp, p in PLACES.items() if p == m["place"])
    return {"sky": m["sky"], "ground": ground, "terrain": terrain, "disc": m["disc"]}


def scene_batch(n: int, size: int | tuple[int, int], seed: int = 0) -> Iterator[tuple[np.ndarray, str, SceneLabels]]:
    """Yield n (image, prompt, labels) triples of random scenes; `size` is an int or (height, width)."""
    check_positive_int("n", n)
    h, w = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else tuple(size)
    _check_size(h, w)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        img, labels = make_scene(sample_params(rng), h, w)
        yield img, scene_prompt(labels), labels


# ------------------------------------------------------------------------ planted failures


def plant_discs(image: np.ndarray, labels: SceneLabels, extra: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of a rendered scene with `extra` more discs like its own, in free sky above the horizon.

    Extra discs are at least 3 radii from every other disc and fully above the horizon.
    Raises ConfigError when the sky has no room for them (use a wider image).
    """
    if isinstance(extra, bool) or not isinstance(extra, (int, np.integer)) or extra < 0:
        raise ConfigError(f"extra must be an integer >= 0 (e.g. 2), got {extra!r}")
    img = np.array(image, dtype=np.float32, copy=True)
    H, W = img.shape[:2]
    r = labels.disc_radius
    if img.shape[:2] != (labels.height, labels.width):
        raise ConfigError(
            f"image is {img.shape[0]}x{img.shape[1]} px but labels are for {labels.height}x{labels.width} px; "
            "pass the labels of this image"
        )
    colour = np.asarray(_DISC_COLOUR[labels.sky])
    placed = [labels.disc_center]
    for _ in range(extra):
        for _attempt in range(200):
            cx = float(rng.uniform(r + 2, W - r - 2))
            lo = int(max(0, cx - r - 1))
            top_ground = float(labels.horizon[lo:int(min(W, cx + r + 2))].min())
            if top_ground - 2 * r - 6 < 2:
                continue
            cy = float(rng.uniform(r + 2, top_ground - r - 6))
            if all((cy - py) ** 2 + (cx - px) ** 2 >= (3 * r) ** 2 for py, px in placed):
                break
        else:
            raise ConfigError(f"no room for {extra} extra discs of radius {r:.1f} px in a {H}x{W} scene; use a wider image")
        _draw_disc(img, cy, cx, r, colour)
        placed.append((cy, cx))
    return img


def tint_sky(image: np.ndarray, labels: SceneLabels, shift: np.ndarray) -> np.ndarray:
    """A copy of a rendered scene with `shift` ((W, 3) RGB offsets per column) added to its sky (rows above the true horizon)."""
    img = np.array(image, dtype=np.float32, copy=True)
    H, W = img.shape[:2]
    shift = np.asarray(shift, dtype=np.float32)
    if shift.shape != (W, 3):
        raise ConfigError(f"shift must be one RGB offset per column, shape ({W}, 3); got {shift.shape}")
    # anti-aliased like the terrain: a pixel row is sky in proportion to the part above the horizon
    sky = np.clip(labels.horizon[None, :] - np.arange(H)[:, None], 0.0, 1.0)[..., None]
    return np.clip(img + sky * shift[None, :, :], 0.0, 1.0).astype(np.float32)


def strip_profile(width: int, lines: tuple[int, ...] | list[int]) -> np.ndarray:
    """(W,) 0/1 profile that flips at every line: a horizon offset k * profile steps by k at each line."""
    cols = np.arange(width)
    return (np.searchsorted(np.asarray(sorted(lines)), cols, side="right") % 2).astype(np.float64)


__all__ = [
    "DISCS", "GROUNDS", "PLACES", "PROMPT_TEMPLATE", "SCENE_PROMPTS", "SKIES", "TERRAINS", "SceneLabels", "SceneParams",
    "make_scene", "parse_prompt", "plant_discs", "render_scene", "sample_params", "scene_batch", "scene_labels", "scene_prompt",
    "strip_profile", "tint_sky",
]
