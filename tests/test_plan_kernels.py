"""View plans and blend kernels: coverage, geometry, kernel properties and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mdtools
from mdtools import ConfigError, get_kernel, plan_views
from mdtools.plan import CIRCULAR_MODES


@st.composite
def plan_args(draw):
    scale = draw(st.sampled_from([1, 4, 8]))
    window = scale * draw(st.integers(2, 40))
    overlap = scale * draw(st.integers(0, window // scale - 1))
    height = scale * draw(st.integers(1, 120))
    width = scale * draw(st.integers(1, 300))
    circular = draw(st.sampled_from(CIRCULAR_MODES))
    return height, width, window, overlap, scale, circular


@settings(max_examples=300, deadline=None)
@given(plan_args())
def test_plan_covers_every_latent_position(args):
    height, width, window, overlap, scale, circular = args
    plan = plan_views(height, width, window=window, overlap=overlap, scale=scale, circular=circular)
    cov = plan.coverage()
    assert cov.shape == (height // scale, width // scale)
    assert cov.min() >= 1
    H, W = plan.latent_height, plan.latent_width
    for v in plan.views:
        assert (v.height, v.width) == plan.view_size
        if not plan.wraps_y:
            assert 0 <= v.top and v.top + v.height <= H
        if not plan.wraps_x:
            assert 0 <= v.left and v.left + v.width <= W
    # neighbouring views overlap by at least the requested overlap (or share the axis)
    for axis, length, wraps in (("x", W, plan.wraps_x), ("y", H, plan.wraps_y)):
        starts = sorted({v.left if axis == "x" else v.top for v in plan.views})
        size = plan.view_size[1 if axis == "x" else 0]
        if len(starts) > 1 and size < length:
            gaps = np.diff(starts)
            assert gaps.max() <= window // scale - overlap // scale


def test_plan_2000_px_wide_512_window_is_covered_unlike_diffusers():
    plan = plan_views(512, 2000, window=512, overlap=64)
    assert plan.coverage().min() >= 1
    assert max(v.left + v.width for v in plan.views) == 250  # last window flush with the edge
    # diffusers' stride-8 plan would stop at latent column 64 + 8 * ((250 - 64) // 8) = 248
    assert 64 + 8 * ((250 - 64) // 8) < 250


def test_plan_matches_diffusers_views_when_they_divide():
    from diffusers import StableDiffusionPanoramaPipeline

    views = StableDiffusionPanoramaPipeline.get_views(None, 576, 1024, window_size=64, stride=8)
    plan = plan_views(576, 1024, window=512, overlap=448)
    ours = [(v.top, v.top + v.height, v.left, v.left + v.width) for v in plan.views]
    assert sorted(ours) == sorted(views)


def test_plan_geometry_and_seam_lines():
    plan = plan_views(512, 1536, window=512, overlap=128)
    # L=192 latent, win=64, ov=16 -> n = ceil(176/48) = 4, starts 0, 43, 85, 128
    assert [v.left for v in plan.views] == [0, 43, 85, 128]
    assert plan.n_views == 4 and plan.stride == (0, 43)
    assert plan.redundancy == pytest.approx(4 * 64 / 192)
    assert plan.seam_lines["y"] == ()
    assert plan.seam_lines["x"] == tuple(sorted({43 * 8, 85 * 8, 128 * 8, 64 * 8, 107 * 8, 149 * 8}))
    assert plan.center_lines["x"] == (256, 600, 936, 1280)


def test_window_larger_than_canvas_gives_one_view_per_axis():
    plan = plan_views(256, 1024, window=512, overlap=64)
    assert {v.top for v in plan.views} == {0} and plan.view_size[0] == 32


def test_circular_views_wrap_with_modulo_indices():
    plan = plan_views(512, 1024, window=512, overlap=128, circular="x")
    W = plan.latent_width
    wrapped = [v for v in plan.views if v.left + v.width > W]
    assert wrapped, "a circular plan must have a view crossing the wrap line"
    idx = plan.flat_indices[plan.views.index(wrapped[0])].reshape(plan.view_size)
    cols = idx[0] % W
    assert cols[0] > cols[-1]  # continues at column 0
    both = plan_views(1024, 1024, window=512, overlap=128, circular="both")
    assert any(v.top + v.height > both.latent_height for v in both.views)
    assert plan.wrap_lines == {"x": (0,), "y": ()}


def test_circular_axis_with_window_as_large_as_canvas_still_fuses_the_wrap():
    plan = plan_views(512, 2048, window=512, overlap=64, circular="both")
    assert sorted({v.top for v in plan.views}) == [0, 32]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=1001, width=2048), r"height=1001 is not a multiple of the VAE scale factor \(8\); use 1000 or 1008"),
        (dict(height=512, width=0), r"width must be > 0"),
        (dict(height=512, width=2048, window=500), r"window=500 .* use 496 or 504"),
        (dict(height=512, width=2048, overlap=512), r"overlap=512 must be smaller than window=512"),
        (dict(height=512, width=2048, overlap=-8), r"overlap must be an integer >= 0"),
        (dict(height=512, width=2048, overlap=60), r"overlap=60 is not a multiple .* use 56 or 64"),
        (dict(height=512, width=2048, circular="z"), r"circular='z' is not valid; choose one of \[False, 'x', 'y', 'both'\]"),
        (dict(height=-512, width=2048), r"height must be > 0"),
    ],
)
def test_plan_rejects_bad_inputs_with_named_field(kwargs, match):
    kwargs.setdefault("window", 512)
    kwargs.setdefault("overlap", 64)
    with pytest.raises(ConfigError, match=match):
        plan_views(**kwargs)


@pytest.mark.parametrize("name", sorted(mdtools.KERNELS))
@pytest.mark.parametrize("size", [(8, 8), (7, 12), (64, 64), (1, 5)])
def test_kernels_positive_separable_symmetric(name, size):
    k = get_kernel(name)
    w = k(*size, overlap=(min(2, size[0] - 1), min(3, size[1] - 1)), dtype=torch.float64).numpy()
    assert w.shape == size and (w > 0).all()
    assert np.allclose(w, w[::-1, :]) and np.allclose(w, w[:, ::-1])
    # separable: rank one
    s = np.linalg.svd(w, compute_uv=False)
    assert s[1:].max(initial=0) <= 1e-9 * s[0]


def test_gaussian_and_seed_gaussian_match_their_formulas():
    L = 64
    u = np.arange(L) - (L - 1) / 2
    g = get_kernel("gaussian", sigma=0.1).profile(L)
    assert np.allclose(g, np.exp(-(u**2) / (2 * (0.1 * L) ** 2)))
    o = 8
    s = (L - o) / 2
    art = get_kernel("seed_gaussian", exact_article=True).profile(L, o)
    assert np.allclose(art, np.maximum(np.exp(-((np.arange(L) - L / 2) ** 2) / (2 * s**2)), 1e-6))
    lin = get_kernel("linear").profile(16, 4)
    assert np.allclose(lin[:5], [0.2, 0.4, 0.6, 0.8, 1.0]) and np.allclose(lin[5:11], 1.0)


def test_linear_kernel_partition_of_unity_at_exact_overlap():
    # two views overlapping by exactly `o` sum to a constant across the overlap
    L, o = 16, 4
    p = get_kernel("linear").profile(L, o)
    tail, head = p[L - o:], p[:o]
    assert np.allclose(tail + head, 1.0)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("box", {}, r"kernel='box' is not a known kernel; choose one of \['cosine', 'gaussian', 'linear'"),
        ("gaussian", {"sigma": 0}, r"sigma=0 is invalid; use a number > 0"),
        ("gaussian", {"width": 3}, r"kernel 'gaussian' has no parameter 'width'; its parameters: \['sigma'\]"),
        ("cosine", {"floor": 0}, r"floor=0 is invalid"),
        ("uniform", {"sigma": 1}, r"its parameters: none"),
    ],
)
def test_get_kernel_rejects_bad_input(name, params, match):
    with pytest.raises(ConfigError, match=match):
        get_kernel(name, **params)
