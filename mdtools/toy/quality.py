"""Fixed, offline quality measures for the toy model (reusable for tiled outputs too).

* texture_features / NearestCentroid: a hand-crafted texture classifier (colour histograms,
  filter-bank energies, local binary pattern counts, radial power spectrum). Fit it on
  held-out real crops; it tells which material a generated window shows.
* RandomConvFeatures / kid: Kernel Inception Distance with a fixed, seeded random conv net in
  place of Inception (no download), through torchmetrics.
* psnr: peak signal-to-noise ratio for images in [0, 1].

Images are numpy arrays (N, H, W, 3), float in [0, 1], unless stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------- texture features


def _luma(images: np.ndarray) -> np.ndarray:
    return images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114


def _down2(g: np.ndarray) -> np.ndarray:
    h, w = g.shape[1] // 2 * 2, g.shape[2] // 2 * 2
    g = g[:, :h, :w]
    return 0.25 * (g[:, 0::2, 0::2] + g[:, 1::2, 0::2] + g[:, 0::2, 1::2] + g[:, 1::2, 1::2])


def _filter_energies(g: np.ndarray) -> np.ndarray:
    """Rotation-symmetrised mean |response| of derivative filters, and their correlation."""
    dx = g[:, 1:-1, 2:] - g[:, 1:-1, :-2]
    dy = g[:, 2:, 1:-1] - g[:, :-2, 1:-1]
    dxx = g[:, 1:-1, 2:] + g[:, 1:-1, :-2] - 2 * g[:, 1:-1, 1:-1]
    dyy = g[:, 2:, 1:-1] + g[:, :-2, 1:-1] - 2 * g[:, 1:-1, 1:-1]
    dxy = 0.25 * (g[:, 2:, 2:] - g[:, 2:, :-2] - g[:, :-2, 2:] + g[:, :-2, :-2])
    ex, ey = np.abs(dx).mean((1, 2)), np.abs(dy).mean((1, 2))
    exx, eyy = np.abs(dxx).mean((1, 2)), np.abs(dyy).mean((1, 2))
    exy = np.abs(dxy).mean((1, 2))
    eps = 1e-6
    # Sum and |difference| of the x/y pair: invariant to 90-degree rotations, still sees
    # anisotropy (bricks, grass blades) through the difference.
    aniso1 = np.abs(ex - ey) / (ex + ey + eps)
    aniso2 = np.abs(exx - eyy) / (exx + eyy + eps)
    return np.stack([np.log(ex + ey + eps), np.log(exx + eyy + eps), np.log(exy + eps), aniso1, aniso2], 1)


def _lbp_hist(g: np.ndarray, r: int) -> np.ndarray:
    """Histogram (9 bins) of how many of 8 neighbours at radius r are brighter than the centre."""
    c = g[:, r:-r, r:-r]
    h, w = c.shape[1:]
    count = np.zeros_like(c)
    for dy, dx in ((-r, -r), (-r, 0), (-r, r), (0, -r), (0, r), (r, -r), (r, 0), (r, r)):
        nb = g[:, r + dy : r + dy + h, r + dx : r + dx + w]
        count += nb > c + 1.0 / 255  # a small margin keeps flat regions from counting as noise
    hist = np.stack([(count == k).mean((1, 2)) for k in range(9)], 1)
    return hist


def _radial_spectrum(g: np.ndarray, bands: int = 8) -> np.ndarray:
    """Log power in octave-ish radial frequency bands, normalised by total power."""
    g = g - g.mean((1, 2), keepdims=True)
    p = np.abs(np.fft.rfft2(g)) ** 2
    fy = np.fft.fftfreq(g.shape[1])[:, None]
    fx = np.fft.rfftfreq(g.shape[2])[None, :]
    rad = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(1.0 / g.shape[1], 0.5 * np.sqrt(2) + 1e-9, bands + 1)
    total = p.sum((1, 2)) + 1e-12
    out = [p[:, (rad >= lo) & (rad < hi)].sum(1) / total for lo, hi in zip(edges[:-1], edges[1:])]
    return np.log(np.stack(out, 1) + 1e-8)


def texture_features(images: np.ndarray) -> np.ndarray:
    """A fixed feature vector per image (N, D) describing colour and texture.

    Rotation by 90 degrees and flips leave it (nearly) unchanged, as training augments with them.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got {x.shape}")
    x = x.clip(0.0, 1.0)
    n = x.shape[0]
    feats = []
    # Colour: 8-bin histograms per channel plus means, stds and mean saturation.
    for ch in range(3):
        idx = np.minimum((x[..., ch] * 8).astype(int), 7).reshape(n, -1)
        feats.append(np.stack([(idx == b).mean(1) for b in range(8)], 1))
    feats.append(x.mean((1, 2)))
    feats.append(x.std((1, 2)))
    feats.append((x.max(-1) - x.min(-1)).mean((1, 2))[:, None])
    g = _luma(x)
    g2 = _down2(g)
    feats += [_filter_energies(g), _filter_energies(g2), _lbp_hist(g, 1), _lbp_hist(g2, 1), _radial_spectrum(g)]
    return np.concatenate(feats, 1)


#: Default blur augmentation of the classifier's fit set (see NearestCentroid.fit).
BLUR_SIGMAS: tuple[float, ...] = (1.0,)


@dataclass
class NearestCentroid:
    """Nearest-centroid classifier on standardised texture features."""

    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray  # (n_classes, D) in standardised units

    @classmethod
    def fit(cls, images: np.ndarray, labels: np.ndarray, blur_sigmas: tuple[float, ...] = BLUR_SIGMAS) -> "NearestCentroid":
        """Fit on real images with integer labels 0..K-1 (every class must be present).

        Gaussian-blurred copies (blur_sigmas, in pixels) join the fit set: a factor-8
        autoencoder loses fine detail, and without them a blurred brick wall or star field
        sits closer to a smoother material's centroid than to its own.
        """
        labels = np.asarray(labels)
        if blur_sigmas:
            from scipy.ndimage import gaussian_filter

            blurred = [np.stack([gaussian_filter(im, (s, s, 0)) for im in images]) for s in blur_sigmas]
            images = np.concatenate([images, *blurred])
            labels = np.concatenate([labels] * (1 + len(blur_sigmas)))
        f = texture_features(images)
        mean, scale = f.mean(0), f.std(0) + 1e-6
        z = (f - mean) / scale
        k = int(labels.max()) + 1
        cents = np.stack([z[labels == c].mean(0) for c in range(k)])
        return cls(mean=mean, scale=scale, centroids=cents)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class index per image."""
        z = (texture_features(images) - self.mean) / self.scale
        d = ((z[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        return d.argmin(1)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of images classified as their label."""
        return float((self.predict(images) == np.asarray(labels)).mean())


# ----------------------------------------------------------------------------- KID


class RandomConvFeatures(nn.Module):
    """A fixed random conv net (seeded) as a stand-in for Inception features, offline.

    Input: float images (N, 3, H, W) in [0, 1] (or uint8 0..255). Output: (N, 240) float64,
    the spatial mean and std of every stage's ReLU activations (multi-scale statistics).
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths = (3, 24, 32, 32, 32)
        self.convs = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = x.float() * 2.0 - 1.0
        stats = []
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            stats += [x.mean((2, 3)), x.std((2, 3))]
            if i < len(self.convs) - 1:
                x = nn.functional.avg_pool2d(x, 2)
        return torch.cat(stats, 1).double()


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = 50, subset_size: int | None = None, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between two image sets with RandomConvFeatures.

    Lower is better; 0 means indistinguishable under these features.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    size = int(subset_size or min(n, 50))
    metric = KernelInceptionDistance(feature=RandomConvFeatures(seed), subsets=subsets, subset_size=size)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(0, 3, 1, 2)  # noqa: E731
    for i in range(0, len(real), 64):
        metric.update(to_t(real[i : i + 64]), real=True)
    for i in range(0, len(fake), 64):
        metric.update(to_t(fake[i : i + 64]), real=False)
    with torch.random.fork_rng():  # subset draws use the global RNG: fix them, restore it after
        torch.manual_seed(seed)
        m, s = metric.compute()
    return float(m), float(s)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per image for images in [0, 1] (shape (N, H, W, C))."""
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))
