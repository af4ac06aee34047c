"""ControlNet under the MultiDiffusion (mdtools) node, against the ComfyUI stand-in: each view gets its own crop of the hint.

The real-ComfyUI check (a tiny random ControlNet, one view bit-exact against the plain
KSampler) is in tests/test_comfy_real.py (opt-in, COMFYUI_DIR).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdtools import plan_views
from mdtools.comfy.control import crop_scaled
from mdtools.comfy.nodes import NODE_CLASS_MAPPINGS
from mdtools.errors import ConfigError
from mdtools.fusion import ViewSet
from mdtools.kernels import get_kernel

from . import comfy_standin as cs


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    cs.install(monkeypatch, tmp_path)
    return tmp_path


def _patched(patcher, **settings):
    return cs.run_node(NODE_CLASS_MAPPINGS["MultiDiffusionModel_mdtools"], model=patcher, **{
        "method": "multidiffusion", "window": 64, "overlap": 32, "kernel": "auto", "view_batch_size": 2, **settings})[0]


def _hint(h: int, w: int, seed: int = 4) -> torch.Tensor:
    """An IMAGE (1, h, w, 3) as Apply ControlNet passes it on: movedim(-1, 1), channels-last strides."""
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed)).movedim(-1, 1)


def _conds(control=None):
    g = torch.Generator().manual_seed(1)
    pos = {"c_crossattn": torch.randn(1, 3, 8, generator=g)}
    neg = {"c_crossattn": torch.zeros(1, 3, 8)}
    if control is not None:
        pos["control"] = neg["control"] = control  # Apply ControlNet (Advanced) sets both
    return pos, neg


def _sample(patcher, control, shape, steps=3):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    pos, neg = _conds(control)
    return cs.sample(patcher, noise, cs.karras_sigmas(steps), pos, neg, cfg=5.0)


def _chain(hint_a: torch.Tensor, hint_b: torch.Tensor):
    """Two chained ControlNets: A (strength 0.7, first half of the steps) <- B (strength 1.2)."""
    a = cs.ControlNet(cs.ToyControlModel(seed=10)).set_cond_hint(hint_a, 0.7, (0.0, 0.5))
    b = cs.ControlNet(cs.ToyControlModel(seed=11)).set_cond_hint(hint_b, 1.2)
    return b.set_previous_controlnet(a), a


def test_one_view_equals_plain_with_controlnet(comfy):
    """A window covering the canvas (uniform kernel) samples bit for bit like the unpatched
    model with the same chained ControlNets (hints of other sizes and aspect ratios: the
    centre crop and resize are ComfyUI's); the ControlNets change the result."""
    model = cs.ToyModel()
    base = cs.ModelPatcher(model)
    shape = (1, 4, 8, 16)
    head, _ = _chain(_hint(40, 100), _hint(64, 128, seed=5))
    plain = _sample(base, head, shape)
    patched = _patched(base, window=128, overlap=0, kernel="uniform")
    head2, _ = _chain(_hint(40, 100), _hint(64, 128, seed=5))
    got = _sample(patched, head2, shape)
    assert torch.equal(got, plain)
    assert not torch.equal(_sample(base, None, shape), plain)
    assert head2.cond_hint is None  # the sampler's cleanup emptied the cached whole-canvas hint


@pytest.mark.parametrize("view_batch_size", [1, 2])
def test_two_views_each_get_their_own_crop(comfy, view_batch_size):
    """Two views side by side, no overlap: the ControlNet runs once per view batch and sees,
    per view, exactly that view's crop of the hint; a patch that fed the whole hint to every
    view (the field's most reported bug) fails here. With one view per batch the crop keeps
    the hint's batch of 1 (it broadcasts over cond and uncond, as in ComfyUI); with both views
    in one batch it is laid out view-major: view 0 for (cond, uncond), then view 1."""
    hint = _hint(64, 128)  # the canvas in pixels: 8 x 16 latents, two 64 px views
    cn = cs.ControlNet(cs.ToyControlModel())
    cn.set_cond_hint(hint)
    patched = _patched(cs.ModelPatcher(cs.ToyModel()), window=64, overlap=0, kernel="uniform",
                       view_batch_size=view_batch_size)
    pos, neg = _conds(cn)
    cn.pre_run(None, cs.percent_to_sigma)
    x = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    sig = cs.karras_sigmas(3)
    cs.calc_cond_batch(patched, [pos, neg], x, sig[1], sig)
    crops = [hint[..., 64 * v:64 * (v + 1)] for v in range(2)]
    whole = cs.common_upscale(hint, 64, 64, "nearest-exact", "center")
    seen = cn.control_model.hints
    if view_batch_size == 1:
        assert len(seen) == 2  # one call per view
        for crop, got in zip(crops, seen):
            assert torch.equal(got, crop) and not torch.equal(got, whole)
    else:
        assert len(seen) == 1
        assert torch.equal(seen[0], torch.cat([crops[0], crops[0], crops[1], crops[1]]))


def _reference(model, cn, x, t, pos, neg, window_lat, overlap_lat):
    """Eq. 5 with the ControlNet by hand: for every view, crop the latents and the hint (8 x
    the latent coordinates), run the control model on the crop, add its residuals x strength,
    run the model, weight with the Gaussian kernel, divide by the summed weights."""
    plan = plan_views(x.shape[-2] * 8, x.shape[-1] * 8, window=window_lat * 8, overlap=overlap_lat * 8)
    ctx = torch.cat([pos["c_crossattn"], neg["c_crossattn"]])
    xx = torch.cat([x, x])
    hint = cn.cond_hint_original  # canvas-sized: ComfyUI's resize is the identity
    num = torch.zeros_like(xx, dtype=torch.float64)
    den = torch.zeros(x.shape[-2:], dtype=torch.float64)
    for v in plan.views:
        sl = (slice(None), slice(None), slice(v.top, v.top + v.height), slice(v.left, v.left + v.width))
        hc = hint[:, :, 8 * v.top:8 * (v.top + v.height), 8 * v.left:8 * (v.left + v.width)].expand(2, -1, -1, -1)
        xin = xx[sl] / (t ** 2 + 1) ** 0.5
        res = cn.control_model(x=xin, hint=hc, timesteps=t.expand(2), context=ctx)
        res = {k: [r * cn.strength for r in rs] for k, rs in res.items()}
        pred = model._apply_model(xx[sl], t.expand(2), None, ctx, control=res)
        uy = np.arange(v.height) - (v.height - 1) / 2
        ux = np.arange(v.width) - (v.width - 1) / 2
        w = torch.as_tensor(np.outer(np.exp(-uy**2 / (2 * (0.25 * v.height) ** 2)), np.exp(-ux**2 / (2 * (0.25 * v.width) ** 2))))
        num[sl] += pred.double() * w
        den[sl[2:]] += w
    return (num / den).float().chunk(2)


def test_views_with_controlnet_fuse_as_eq5(comfy):
    """3 x 5 overlapping views, 2 views per batch: the patched call equals the hand-written
    per-view loop (latents and hint cropped per view, ControlNet and model per view, fused)."""
    model = cs.ToyModel()
    cn = cs.ControlNet(cs.ToyControlModel()).set_cond_hint(_hint(128, 192), 0.8)
    patched = _patched(cs.ModelPatcher(model))
    x = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(2))
    pos, neg = _conds(cn)
    cn.pre_run(None, cs.percent_to_sigma)
    t = torch.tensor([3.0])
    got = cs.calc_cond_batch(patched, [pos, neg], x, t, cs.karras_sigmas(4))
    assert [h.shape[0] for h in cn.control_model.hints] == [4] * 7 + [1]  # 15 views, 2 per batch x (cond, uncond);
    # the last batch holds one view: its batch-1 crop broadcasts over (cond, uncond), as in ComfyUI
    want = _reference(model, cn, x, t, pos, neg, 8, 4)
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g - w).abs().max() < 1e-5


def test_crop_scaled_follows_wrapped_views():
    """On a circular axis a view that wraps takes the hint's columns modulo the canvas, at 8 x
    the latent coordinates, as the latents' crop does."""
    plan = plan_views(64, 128, window=64, overlap=32, circular="x")
    vs = ViewSet.from_plan(plan, get_kernel("uniform"))
    t = torch.arange(2 * 64 * 128, dtype=torch.float32).reshape(2, 1, 64, 128)
    wrapped = [i for i, v in enumerate(vs.views) if v.left + v.width > 16]
    assert wrapped
    i = wrapped[0]
    v = vs.views[i]
    want = torch.roll(t, -8 * v.left, dims=3)[..., :8 * v.width]
    assert torch.equal(crop_scaled(t, vs, i, i + 1, 8), want)
    lat = t[..., ::8, ::8].contiguous()
    assert torch.equal(crop_scaled(lat, vs, i, i + 1, 1), want[..., ::8, ::8])
    # a channels-last source (ComfyUI's hints) gives channels-last crops: convolutions round per layout
    t3 = torch.cat([t, -t, 2 * t], dim=1)
    cl = crop_scaled(t3.contiguous(memory_format=torch.channels_last), vs, i, i + 2, 8)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl[:2], crop_scaled(t3, vs, i, i + 1, 8))


def test_refusals(comfy):
    """A T2I-Adapter, and residuals computed for the whole canvas (a ComfyUI without the
    CALC_COND_BATCH wrapper: the legacy single slot), are refused with a ConfigError."""
    x = torch.randn(1, 4, 8, 16)
    sig = cs.karras_sigmas(3)
    t2i = cs.T2IAdapter().set_cond_hint(_hint(64, 128))
    pos, neg = _conds(t2i)
    with pytest.raises(ConfigError, match="T2IAdapter is not a ComfyUI ControlNet"):
        cs.calc_cond_batch(_patched(cs.ModelPatcher(cs.ToyModel())), [pos, neg], x, sig[1], sig)
    cn = cs.ControlNet(cs.ToyControlModel()).set_cond_hint(_hint(64, 128))
    cn.pre_run(None, cs.percent_to_sigma)
    pos, neg = _conds(cn)
    with pytest.raises(ConfigError, match="CALC_COND_BATCH"):
        cs.calc_cond_batch(_patched(cs.LegacyModelPatcher(cs.ToyModel())), [pos, neg], x, sig[1], sig)
    latent_cn = cs.ControlNet(cs.ToyControlModel()).set_cond_hint(_hint(64, 128))
    latent_cn.latent_format = object()  # a latent-space ControlNet applied without its VAE
    pos, neg = _conds(latent_cn)
    with pytest.raises(ConfigError, match="needs a VAE"):
        cs.calc_cond_batch(_patched(cs.ModelPatcher(cs.ToyModel())), [pos, neg], x, sig[1], sig)
