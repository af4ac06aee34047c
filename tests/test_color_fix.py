"""StableSR's wavelet and AdaIN colour fixes against a NumPy re-implementation of its formulas (facts sheet §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdtools.errors import ConfigError
from mdtools.upscale import adain_fix, color_fix, tile_weight, wavelet_fix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def np_blur(x: np.ndarray, r: int) -> np.ndarray:
    """StableSR's wavelet_blur: replicate pad r, 3x3 [1 2 1]^T[1 2 1]/16 with dilation r, per channel."""
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16
    c, h, w = x.shape
    p = np.pad(x, ((0, 0), (r, r), (r, r)), mode="edge")
    out = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out += k[i, j] * p[:, i * r:i * r + h, j * r:j * r + w]
    return out


def np_wavelet(content: np.ndarray, style: np.ndarray) -> np.ndarray:
    def decompose(x):
        high = np.zeros_like(x)
        for i in range(5):
            low = np_blur(x, 2 ** i)
            high += x - low
            x = low
        return high, x

    return np.clip(decompose(content)[0] + decompose(style)[1], 0, 1)


def np_adain(content: np.ndarray, style: np.ndarray) -> np.ndarray:
    def ms(x):
        f = x.reshape(x.shape[0], -1)
        return f.mean(1)[:, None, None], np.sqrt(f.var(1, ddof=1) + 1e-5)[:, None, None]

    mc, sc = ms(content)
    mstyle, ss = ms(style)
    return np.clip((content - mc) / sc * ss + mstyle, 0, 1)


@pytest.fixture()
def pair():
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 40, 56, generator=g, dtype=torch.float64)
    style = (0.3 + 0.4 * torch.rand(1, 3, 40, 56, generator=g, dtype=torch.float64))
    return content, style


def test_wavelet_matches_numpy(pair):
    c, s = pair
    np.testing.assert_allclose(wavelet_fix(c, s)[0].numpy(), np_wavelet(c[0].numpy(), s[0].numpy()), atol=1e-12)


def test_adain_matches_numpy(pair):
    c, s = pair
    np.testing.assert_allclose(adain_fix(c, s)[0].numpy(), np_adain(c[0].numpy(), s[0].numpy()), atol=1e-12)


def test_whole_image_and_per_tile(pair):
    c, s = pair
    np.testing.assert_allclose(color_fix(c, s, "wavelet").numpy(), wavelet_fix(c, s).numpy())
    tiles = [(0, 0, 40, 32), (0, 24, 40, 32)]
    got = color_fix(c, s, "adain", tiles=tiles)[0].numpy()
    # independent gather: each tile fixed alone, Gaussian weights (var 0.01 of the tile size), normalised
    def w(h, wd):
        gy = np.exp(-((np.arange(h) - (h - 1) / 2) ** 2) / (h * h) / 0.02) / np.sqrt(2 * np.pi * 0.01)
        gx = np.exp(-((np.arange(wd) - (wd - 1) / 2) ** 2) / (wd * wd) / 0.02) / np.sqrt(2 * np.pi * 0.01)
        return np.outer(gy, gx)
    num = np.zeros((3, 40, 56))
    den = np.zeros((40, 56))
    for t, left, h, wd in tiles:
        sl = (slice(None), slice(t, t + h), slice(left, left + wd))
        num[sl] += np_adain(c[0].numpy()[sl], s[0].numpy()[sl]) * w(h, wd)
        den[sl[1:]] += w(h, wd)
    np.testing.assert_allclose(got, num / den, atol=1e-12)
    np.testing.assert_allclose(tile_weight(4, 6, dtype=torch.float64).numpy(), w(4, 6), rtol=1e-12)


def test_fix_moves_colour_to_the_reference(pair):
    c, s = pair
    warm = (s + torch.tensor([0.1, 0.0, -0.1], dtype=s.dtype).view(1, 3, 1, 1)).clamp(0, 1)
    for mode in ("wavelet", "adain"):
        fixed = color_fix(warm, s, mode)
        assert (fixed.mean((2, 3)) - s.mean((2, 3))).abs().max() < 0.02 < (warm.mean((2, 3)) - s.mean((2, 3))).abs().max()


def test_bad_input(pair):
    c, s = pair
    with pytest.raises(ConfigError, match="wavelet"):
        color_fix(c, s, "histogram")
    with pytest.raises(ConfigError, match="size"):
        color_fix(c, s[..., :20], "adain")
    with pytest.raises(ConfigError, match="cover"):
        color_fix(c, s, "adain", tiles=[(0, 0, 8, 8)])
