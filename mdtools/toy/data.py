"""Training and evaluation data for the toy model: crops of images bundled with scikit-image.

Every source image is split once, deterministically, into a training region and a held-out
stripe (the right-most columns). Training only ever samples the training region; quality
figures (PSNR, texture classifier, KID) only ever use the held-out stripe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Native generation window of the toy model in pixels (latent 16 x 16 at VAE factor 8).
WINDOW = 128


@dataclass(frozen=True)
class ToySource:
    """One skimage.data image and the prompt that names its material."""

    name: str  # function name in skimage.data
    prompt: str
    scale: float = 1.0  # resize factor applied after the optional centre crop
    centre_crop: int | None = None  # side of a centred square taken before scaling


#: The classes the toy model knows. Textures come first: seams between tiles of these are
#: visible to a person and to a metric. Order is part of the model's identity (class index).
SOURCES: tuple[ToySource, ...] = (
    ToySource("brick", "brick wall"),
    ToySource("grass", "grass"),
    ToySource("gravel", "gravel"),
    ToySource("hubble_deep_field", "stars"),
    ToySource("moon", "moon surface"),
    # The fundus photo is 1411 px with a black surround; keep the inscribed square and halve
    # it so vessels have a texture-like scale in a 128 px window.
    ToySource("retina", "retina", scale=0.5, centre_crop=900),
    # Stained tissue: a stationary colour texture (a cat face was tried; its held-out stripe
    # is mostly background, so train and held-out crops disagreed).
    ToySource("immunohistochemistry", "stained cells"),
)

PROMPTS: tuple[str, ...] = tuple(s.prompt for s in SOURCES)

#: Scale jitter used for training crops (factor, probability).
SCALE_JITTER: tuple[tuple[float, float], ...] = ((0.85, 0.25), (1.0, 0.5), (1.18, 0.25))


def _to_rgb_float(img: np.ndarray) -> np.ndarray:
    """uint8 grey or RGB(A) -> float32 RGB in [0, 1]."""
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    return (img.astype(np.float32) / 255.0).clip(0.0, 1.0)


def _rescale(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return img
    from skimage.transform import rescale

    out = rescale(img, factor, channel_axis=-1, anti_aliasing=factor < 1.0, order=1)
    return out.astype(np.float32).clip(0.0, 1.0)


def load_source(src: ToySource) -> np.ndarray:
    """The full preprocessed image of a source as float32 HxWx3 in [0, 1]."""
    import skimage.data

    img = _to_rgb_float(getattr(skimage.data, src.name)())
    if src.centre_crop is not None:
        h, w = img.shape[:2]
        s = min(src.centre_crop, h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        img = img[y0 : y0 + s, x0 : x0 + s]
    return _rescale(img, src.scale)


def holdout_width(width: int) -> int:
    """Width of the held-out right stripe: a quarter of the image, at least a window + 16 px."""
    return max(WINDOW + 16, width // 4)


def split_source(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training region, held-out stripe) of a preprocessed image."""
    w = img.shape[1]
    hw = holdout_width(w)
    return img[:, : w - hw], img[:, w - hw :]


def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and 90-degree rotation (the dihedral group without a second flip)."""
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, k=int(rng.integers(4)))
    return np.ascontiguousarray(crop)


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly placed size x size crop of img."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} is smaller than the crop {size}")
    y = int(rng.integers(h - size + 1))
    x = int(rng.integers(w - size + 1))
    return img[y : y + size, x : x + size]


class CropSampler:
    """Deterministic class-balanced sampler of augmented training crops.

    Scale-jittered copies of every training region are made once, so sampling is cheap.
    """

    n_classes: int = len(SOURCES)
    prompts: tuple[str, ...] = PROMPTS

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.regions: list[list[np.ndarray]] = []  # [class][jitter index]
        self.scale_p = np.array([p for _, p in SCALE_JITTER])
        for src in SOURCES:
            train, _ = split_source(load_source(src))
            self.regions.append([_rescale(train, f) for f, _ in SCALE_JITTER])

    def sample(self, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """n crops (n, size, size, 3) float32 in [0, 1] and their class indices (n,)."""
        # Balanced classes: a shuffled repeat of all classes, so every batch sees most of them.
        k = len(SOURCES)
        labels = np.concatenate([self.rng.permutation(k) for _ in range((n + k - 1) // k)])[:n]
        crops = []
        for c in labels:
            j = int(self.rng.choice(len(SCALE_JITTER), p=self.scale_p))
            crops.append(augment(random_crop(self.regions[c][j], size, self.rng), self.rng))
        return np.stack(crops), labels.astype(np.int64)


def _class_crops(part: int, n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n_per_class augmented crops per class from part 0 (training region) or 1 (held-out
    stripe) of every source, in class order, with their labels."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for c, src in enumerate(SOURCES):
        region = split_source(load_source(src))[part]
        for _ in range(n_per_class):
            crops.append(augment(random_crop(region, size, rng), rng))
            labels.append(c)
    return np.stack(crops), np.asarray(labels, dtype=np.int64)


def holdout_crops(n_per_class: int, size: int = WINDOW, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic augmented crops from the held-out stripes, grouped by class.

    Returns images (n_per_class * n_classes, size, size, 3) float32 in [0, 1] and labels.
    """
    return _class_crops(1, n_per_class, size, seed)


def training_crops(n_per_class: int, size: int = WINDOW, seed: int = 4321) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic augmented crops from the training regions at native scale, grouped by class.

    Used as a 'real vs real' reference for the quality figures, never for fitting them.
    """
    return _class_crops(0, n_per_class, size, seed)
