"""CIEDE2000 against Sharma et al.'s published pairs, and the color_drift metric on planted shifts and look-alikes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdtools.metrics import METRICS, evaluate
from mdtools.metrics.color import ciede2000
from mdtools.metrics.functional.color_drift import color_drift, gaussian_blur
from mdtools.plan import plan_views

# Sharma, Wu and Dalal (2005), supplementary test data: L1 a1 b1 L2 a2 b2 dE00
SHARMA = np.array([
    [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
    [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
    [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
    [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
    [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
    [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
    [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
    [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
    [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
    [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
    [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
    [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
    [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
    [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
    [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
    [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
    [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
    [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
    [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
    [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ciede2000_matches_sharma_pairs():
    lab = torch.tensor(SHARMA, dtype=torch.float64)
    one = lab[:, 0:3].T[:, :, None]  # (3, 34, 1): channels in dim -3
    two = lab[:, 3:6].T[:, :, None]
    got = ciede2000(one, two)[:, 0].numpy()
    np.testing.assert_allclose(got, SHARMA[:, 6], atol=5e-5)
    back = ciede2000(two, one)[:, 0].numpy()  # symmetric
    np.testing.assert_allclose(back, SHARMA[:, 6], atol=5e-5)


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """A smooth colourful image with some texture, (1, 3, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    base = torch.stack([0.3 + 0.4 * x + 0 * y, 0.5 + 0.3 * y + 0 * x, 0.6 - 0.3 * x * y])
    tex = 0.08 * torch.rand(3, h, w, generator=g)
    return (base + tex).clamp(0, 1)[None].double()


def test_identical_is_zero_and_warm_shift_counts():
    img = _scene()
    assert float(color_drift(img, img)) == pytest.approx(0.0, abs=1e-9)
    warm = img.clone()
    warm[:, 0] += 0.06
    warm[:, 2] -= 0.06
    d = color_drift(warm.clamp(0, 1), img)
    assert float(d) > 3.0  # a clearly visible warm tone
    assert d.details["worst_tile"] >= float(d)


def test_look_alikes_do_not_count():
    img = _scene(256, 256)  # blur sigma 8 px: pixel noise averages over ~800 pixels
    warm = img.clone()
    warm[:, 0] += 0.04
    shifted = float(color_drift(warm.clamp(0, 1), img))
    blurred = gaussian_blur(img, 1.5)
    noisy = (img + 0.05 * torch.randn(img.shape, generator=torch.Generator().manual_seed(1), dtype=img.dtype)).clamp(0, 1)
    for look in (blurred, noisy):
        assert float(color_drift(look, img)) < 0.25 * shifted


def test_worst_tile_catches_one_tile_offset_and_reference_is_resized():
    img = _scene(128, 128)
    off = img.clone()
    off[:, :, 0:32, 96:128] = (off[:, :, 0:32, 96:128] + torch.tensor([0.1, 0.0, -0.1]).view(1, 3, 1, 1)).clamp(0, 1)
    small = torch.nn.functional.interpolate(img, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    d = color_drift(off, small)
    assert d.details["worst_tile"] > 3 * float(d)
    assert d.details["worst_box"] == [0, 96, 32, 32]
    assert float(color_drift(img, small)) < 0.5  # the resized reference alone is no drift


def test_registered_and_uses_the_plan_views():
    assert {"color_drift", "color_drift_worst"} <= set(METRICS)
    img = _scene(128, 192)
    warm = img.clone()
    warm[:, :, :, :64] = (warm[:, :, :, :64] + torch.tensor([0.08, 0.0, -0.08]).view(1, 3, 1, 1)).clamp(0, 1)
    plan = plan_views(128, 192, window=128, overlap=64, scale=8)
    out = evaluate(warm, plan, metrics=["color_drift", "color_drift_worst"], reference=img[:, :, ::2, ::2])
    boxes = [list(v.pixel_box(8)) for v in plan.views]
    assert out["color_drift"].details["worst_box"] in boxes
    assert float(out["color_drift_worst"]) == pytest.approx(out["color_drift"].details["worst_tile"])
    with pytest.raises(Exception, match="reference"):
        evaluate(warm, plan, metrics=["color_drift"])
