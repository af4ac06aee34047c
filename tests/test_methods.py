"""The methods against their papers' algorithms as the official code runs them.

Each reference below is written here from the published equations and the official loops
(per-view DDIM steps averaged, per-view gradient updates, per-prompt denoising), not from
mdtools' code; mdtools' latents must equal them to <= 1e-4 relative with DDIM (eta 0),
given the same initial noise and the same shifts, colours, jitter and loss module.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mdtools
from mdtools import ConfigError, MultiDiffusionPipeline
from mdtools.methods import METHODS, Region, generation_methods, get_method

from .conftest import make_sd_pipe

PROMPT = "a photo of a beach"
TOL = 1e-4


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def md():
    return MultiDiffusionPipeline.from_pipe(make_sd_pipe())


def embeds(md, prompt, negative=None):
    pos, neg = md.pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    return torch.cat([neg, pos])  # [uncond; cond], as the official code batches it


def cfg_eps(unet, x, t, emb, g):
    """The official CFG call: batch [x; x] against [uncond; cond] embeddings of the same views."""
    n = x.shape[0]
    e = torch.cat([emb[:1].repeat(n, 1, 1), emb[1:].repeat(n, 1, 1)])
    out = unet(torch.cat([x, x]), t, encoder_hidden_states=e).sample
    u, c = out.chunk(2)
    return u + g * (c - u)


def ddim(md, steps):
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(md.scheduler.config)
    s.set_timesteps(steps)
    return s


def noise(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---- SyncDiffusion --------------------------------------------------------------------------

class TinyPerceptual(torch.nn.Module):
    """A fixed random conv feature distance: a stand-in for LPIPS (same module on both sides)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) * 0.3, requires_grad=False)

    def forward(self, a, b):
        fa, fb = F.conv2d(a, self.w, padding=1).tanh(), F.conv2d(b, self.w, padding=1).tanh()
        return ((fa - fb) ** 2).mean(dim=(1, 2, 3))


def ref_syncdiffusion(md, x_T, views, steps, g, *, weight, decay, freq, thres, loss, emb):
    """KAIST-Visual-AI-Group/SyncDiffusion sample_syncdiffusion, uniform averaging, DDIM."""
    unet, vae = md.unet, md.vae
    sched = ddim(md, steps)
    sf = vae.config.scaling_factor
    latent = x_T.clone()
    a = len(views) // 2

    def decode(x0):
        return (vae.decode(x0 / sf).sample / 2 + 0.5).clamp(0, 1)

    for i, t in enumerate(sched.timesteps):
        value = torch.zeros_like(latent)
        count = torch.zeros_like(latent)
        sync = (i + 1) % freq == 0 and i < thres
        if sync:
            with torch.no_grad():
                v = views[a]
                xa = latent[:, :, v.top:v.top + v.height, v.left:v.left + v.width]
                img_a = decode(sched.step(cfg_eps(unet, xa, t, emb, g), t, xa).pred_original_sample)
        for k, v in enumerate(views):
            sl = (slice(None), slice(None), slice(v.top, v.top + v.height), slice(v.left, v.left + v.width))
            xv = latent[sl].detach()
            copy = xv.clone()
            if sync:
                with torch.enable_grad():
                    xv = xv.requires_grad_()
                    x0 = sched.step(cfg_eps(unet, xv, t, emb, g), t, xv).pred_original_sample
                    lo = loss(decode(x0) * 2 - 1, img_a * 2 - 1).sum()
                    grad = torch.autograd.grad(lo, xv)[0]
                if k != a:
                    copy = copy - weight * decay**i * grad
            with torch.no_grad():
                den = sched.step(cfg_eps(unet, copy, t, emb, g), t, copy).prev_sample
            value[sl] += den
            count[sl] += 1
        latent = torch.where(count > 0, value / count, value)
    return latent


def test_syncdiffusion_equals_the_official_algorithm(md):
    md.pipe.scheduler = ddim(md, 4)
    loss = TinyPerceptual()
    x_T = noise((1, 4, 8, 24), 5)
    kw = dict(height=64, width=192, window=64, overlap=32, kernel="uniform", num_inference_steps=4, guidance_scale=6.0,
              output_type="latent", progress=False)
    params = dict(weight=50.0, decay=0.9, sync_freq=1, sync_steps=3, loss=loss)
    out = md(PROMPT, latents=x_T, method="syncdiffusion", method_params=params, **kw)
    with torch.no_grad():
        want = ref_syncdiffusion(md, x_T, out.plan.views, 4, 6.0, weight=50.0, decay=0.9, freq=1, thres=3, loss=loss,
                                 emb=embeds(md, PROMPT))
    plain = md(PROMPT, latents=x_T, **kw).latents
    assert rel(out.latents, want) <= TOL
    assert rel(plain, want) > 10 * TOL  # the sync really moved the latents
    c = out.record.extra["cost"]
    V = out.plan.n_views
    assert c["unet_grad_evaluations"] == 3 * (V - 1) * 2 and c["backward_calls"] == 3 * (V - 1)
    assert c["vae_decode_calls"] == 3 * V and c["vae_decode_grad_calls"] == 3 * (V - 1)
    assert out.record.phases["sync"].calls == 3
    assert c["unet_equivalents"] > out.record.counts["model_evaluations"] - c["unet_grad_evaluations"]


def test_syncdiffusion_with_weight_zero_is_multidiffusion(md):
    md.set_scheduler("ddim")
    kw = dict(height=64, width=192, overlap=32, num_inference_steps=3, output_type="latent", progress=False)
    a = md(PROMPT, generator=3, method="syncdiffusion", method_params={"weight": 0.0, "loss": "mse"}, **kw).latents
    b = md(PROMPT, generator=3, **kw).latents
    assert rel(a, b) <= 1e-5


def test_syncdiffusion_loss_unavailable_is_a_clear_error_before_any_model_call(md, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no cached VGG16 weights
    calls = []
    monkeypatch.setattr(md.unet, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ConfigError, match=r"method.loss='lpips'.*unavailable.*Pass another loss"):
        md(PROMPT, height=64, width=192, overlap=32, method="syncdiffusion", progress=False)
    assert calls == []


# ---- SpotDiffusion --------------------------------------------------------------------------

def ref_spotdiffusion(md, x_T, window, steps, g, rolls, emb):
    """stanifrolov/spotdiffusion text2panorama: per-view DDIM on a fixed non-overlapping grid,
    then the canvas rolled left by c_i (never rolled back)."""
    sched = ddim(md, steps)
    latent = x_T.clone()
    W = latent.shape[-1]
    for i, t in enumerate(sched.timesteps):
        value = torch.zeros_like(latent)
        for left in range(0, W, window):
            xv = latent[..., left:left + window]
            value[..., left:left + window] += sched.step(cfg_eps(md.unet, xv, t, emb, g), t, xv).prev_sample
        c = rolls[i]
        latent = torch.cat([value, value], -1)[..., c:W + c]
    return latent


def test_spotdiffusion_equals_the_official_algorithm(md):
    md.pipe.scheduler = ddim(md, 4)
    rolls = [5, 17, 2, 11]
    shifts = [(0, sum(rolls[:i]) % 32) for i in range(4)]
    x_T = noise((1, 4, 8, 32), 1)
    out = md(PROMPT, height=64, width=256, overlap=0, latents=x_T, num_inference_steps=4, guidance_scale=7.5,
             method="spotdiffusion", method_params={"shifts": shifts}, output_type="latent", progress=False)
    with torch.no_grad():
        want = ref_spotdiffusion(md, x_T, 8, 4, 7.5, rolls, embeds(md, PROMPT))
    # the official output stays rolled by sum(c_i); mdtools returns the canvas frame
    assert rel(out.latents, torch.roll(want, sum(rolls), dims=-1)) <= TOL
    assert out.record.extra["method_draws"]["shifts"] == [list(s) for s in shifts]
    assert out.record.counts["model_evaluations"] == 4 * 4 * 2  # redundancy 1: 4 windows per step


def test_spotdiffusion_with_zero_shifts_is_multidiffusion_without_overlap(md):
    md.set_scheduler("ddim")
    kw = dict(height=64, width=200, overlap=0, num_inference_steps=3, output_type="latent", progress=False)
    for wrap in (True, False):
        a = md(PROMPT, generator=2, method="spotdiffusion", method_params={"shifts": [[0, 0]] * 3, "wrap": wrap}, **kw)
        b = md(PROMPT, generator=2, **kw)
        assert rel(a.latents, b.latents) <= 1e-5


def test_spotdiffusion_draws_are_seeded_and_cover_the_canvas(md):
    kw = dict(height=64, width=256, overlap=0, num_inference_steps=5, output_type="latent", progress=False)
    a = md(PROMPT, generator=4, method="spotdiffusion", **kw)
    b = md(PROMPT, generator=4, method="spotdiffusion", **kw)
    c = md(PROMPT, generator=4, method="spotdiffusion", method_params={"wrap": False}, **kw)
    d = a.record.extra["method_draws"]["shifts"]
    assert torch.equal(a.latents, b.latents) and d[0] == [0, 0] and len({tuple(s) for s in d}) > 1
    assert all(s[0] == 0 for s in d)  # the canvas height is one window: no vertical shift
    assert torch.isfinite(c.latents).all() and not torch.equal(a.latents, c.latents)


# ---- regions with bootstrapping ------------------------------------------------------------

def ref_regions(md, x_T, views, steps, g, masks, prompts, negative, colors, choices, k):
    """omerbt/MultiDiffusion region_based.generate with given colours and choices (posterior mean)."""
    unet, vae = md.unet, md.vae
    sched = ddim(md, steps)
    sf = vae.config.scaling_factor
    P = len(prompts)
    pos = torch.cat([md.pipe.encode_prompt(p, "cpu", 1, True, negative)[0] for p in prompts])
    neg = torch.cat([md.pipe.encode_prompt(p, "cpu", 1, True, negative)[1] for p in prompts])
    h, w = views[0].height, views[0].width
    img = (2 * torch.as_tensor(colors, dtype=torch.float32) - 1)[:, :, None, None].repeat(1, 1, h * 8, w * 8)
    bgs = torch.cat([vae.encode(img[c:c + 1]).latent_dist.mode() * sf for c in range(len(colors))])
    latent = x_T.clone()
    for i, t in enumerate(sched.timesteps):
        value = torch.zeros_like(latent)
        count = torch.zeros_like(latent)
        for vi, v in enumerate(views):
            sl = (slice(None), slice(None), slice(v.top, v.top + h), slice(v.left, v.left + w))
            m = masks[sl]
            lv = latent[sl].repeat(P, 1, 1, 1)
            if i < k:
                bg = bgs[torch.as_tensor(choices[i][vi])]
                bg = sched.add_noise(bg, x_T[sl].repeat(P - 1, 1, 1, 1), t)
                lv[1:] = lv[1:] * m[1:] + bg * (1 - m[1:])
            out = unet(torch.cat([lv, lv]), t, encoder_hidden_states=torch.cat([neg, pos])).sample
            u, c = out.chunk(2)
            den = sched.step(u + g * (c - u), t, lv).prev_sample
            value[sl] += (den * m).sum(0, keepdim=True)
            count[sl] += m.sum(0, keepdim=True)
        latent = torch.where(count > 0, value / count, value)
    return latent


def test_regions_with_bootstrapping_equal_the_official_algorithm(md):
    md.pipe.scheduler = ddim(md, 4)
    H, W = 64, 192
    regions = [Region("a photo of a mountain", box=(8, 16, 40, 64)), Region("city", box=(0, 120, 64, 48))]
    k = 2
    colors = [[0.1, 0.5, 0.9], [0.8, 0.2, 0.3]]
    x_T = noise((1, 4, 8, 24), 9)
    kw = dict(height=H, width=W, overlap=32, kernel="uniform", num_inference_steps=4, guidance_scale=5.0,
              negative_prompt="sky", output_type="latent", progress=False, latents=x_T)
    plan = mdtools.plan_views(H, W, window=64, overlap=32)
    choices = np.random.default_rng(0).integers(0, 2, size=(k, plan.n_views, 2)).tolist()
    out = md(PROMPT, regions=regions, bootstrap_steps=k, method_params={"bootstrap_colors": colors,
             "bootstrap_choices": choices}, **kw)
    px = torch.zeros(2, 1, H, W)
    px[0, :, 8:48, 16:80] = 1
    px[1, :, 0:64, 120:168] = 1
    fg = F.interpolate(px, size=(8, 24), mode="nearest")
    masks = torch.cat([(1 - fg.sum(0, keepdim=True)).clamp_min(0), fg])  # (P, 1, h, w) as the official code
    with torch.no_grad():
        want = ref_regions(md, x_T, plan.views, 4, 5.0, masks, [PROMPT, "a photo of a mountain", "city"], "sky",
                           colors, choices, k)
    assert rel(out.latents, want) <= TOL
    assert np.allclose(out.record.extra["method_draws"]["bootstrap_colors"], colors)
    # each view once per prompt whose mask touches it (not 3 prompts x every view)
    touch = sum(int((masks[:, :, v.top:v.top + 8, v.left:v.left + 8] > 0).any(-1).any(-1).sum()) for v in plan.views)
    assert out.record.counts["model_evaluations"] == touch * 2 * 4 < 3 * plan.n_views * 2 * 4


def test_one_full_canvas_region_is_the_plain_prompt(md):
    md.set_scheduler("ddim")
    kw = dict(height=64, width=192, overlap=32, num_inference_steps=3, output_type="latent", progress=False)
    mask = np.ones((64, 192))
    a = md(PROMPT, regions=[Region("city", mask=mask)], generator=1, **kw).latents
    b = md("city", generator=1, **kw).latents
    assert rel(a, b) <= 1e-5


# ---- Mixture of Diffusers ----------------------------------------------------------------

def mod_weights(h, w, var=0.01):
    """albarji/mixture-of-diffusers canvas.py Gaussian, written with NumPy."""
    def g(L):
        x = np.arange(L)
        return np.exp(-(x - (L - 1) / 2) ** 2 / (L * L) / (2 * var)) / np.sqrt(2 * np.pi * var)
    return np.outer(g(h), g(w))


def test_mixture_with_tile_prompts_equals_the_official_algorithm(md):
    md.pipe.scheduler = ddim(md, 3)
    x_T = noise((1, 4, 8, 24), 4)
    tiles = [["city", "a photo of a mountain", "stars", "city", "sky"]]
    guid = [[4.0, 7.0, 1.0, 2.5, 9.0]]
    out = md(PROMPT, height=64, width=192, overlap=32, latents=x_T, num_inference_steps=3, guidance_scale=7.5,
             method="mixture", method_params={"tile_prompts": tiles, "tile_guidance": guid}, output_type="latent",
             progress=False)
    views = out.plan.views
    assert len(views) == 5
    G = torch.as_tensor(mod_weights(8, 8), dtype=torch.float32)
    sched = ddim(md, 3)
    latent = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            num = torch.zeros_like(latent)
            den = torch.zeros_like(latent)
            for v, p, g in zip(views, tiles[0], guid[0]):
                sl = (slice(None), slice(None), slice(v.top, v.top + 8), slice(v.left, v.left + 8))
                num[sl] += G * cfg_eps(md.unet, latent[sl], t, embeds(md, p), g)
                den[sl] += G
            latent = sched.step(num / den, t, latent).prev_sample  # one step on the canvas
    assert rel(out.latents, latent) <= TOL


def test_mixture_with_one_prompt_is_multidiffusion_with_its_kernel(md):
    md.set_scheduler("ddim")
    kw = dict(height=64, width=192, overlap=32, num_inference_steps=3, output_type="latent", progress=False)
    a = md(PROMPT, generator=6, method="mixture", **kw)
    b = md(PROMPT, generator=6, kernel="mixture", **kw)
    assert rel(a.latents, b.latents) <= 1e-6
    assert a.record.extra["kernel"] == "mixture(var=0.01)"
    w = mdtools.get_kernel("mixture")(8, 8).numpy()
    assert np.allclose(w, mod_weights(8, 8), rtol=1e-6)
    with pytest.raises(ConfigError, match="fuses with its own Gaussian tile weights"):
        md(PROMPT, method="mixture", kernel="cosine", **kw)


# ---- DemoFusion -----------------------------------------------------------------------------

def ref_demofusion(md, seed, steps, g, jitters, *, c1s=3.0, c2s=1.0, c3s=1.0, sigma=1.0, emb):
    """PRIS-CV/DemoFusion pipeline_demofusion_sdxl.__call__ (SD conditioning), two stages, 64 px
    native window, 128 px target, with the jitters mdtools drew."""
    unet = md.unet
    gen = torch.Generator().manual_seed(seed)
    sched = ddim(md, steps)
    ts = sched.timesteps
    latents = torch.randn((1, 4, 8, 8), generator=gen)  # stage 1: the whole canvas, one call
    for t in ts:
        latents = sched.step(cfg_eps(unet, latents, t, emb, g), t, latents).prev_sample
    anchor_mean, anchor_std = latents.mean(), latents.std()
    s = 2
    latents = F.interpolate(latents, size=(16, 16), mode="bicubic")
    nz = torch.randn(latents.shape, generator=gen)
    noise_latents = [sched.add_noise(latents, nz, t.unsqueeze(0)) for t in ts]
    latents = noise_latents[0]
    window, stride = 8, 4
    jr = (window - stride) // 4
    T = sched.config.num_train_timesteps
    for i, t in enumerate(ts):
        cf = 0.5 * (1 + torch.cos(torch.pi * (T - t) / T))
        c1 = cf**c1s
        latents = latents * (1 - c1) + noise_latents[i] * c1
        starts = [0, 4, 8]
        views = [(h, w) for h in starts for w in starts]
        lat_ = F.pad(latents, (jr, jr, jr, jr), "constant", 0)
        value_local = torch.zeros_like(lat_)
        count_local = torch.zeros_like(lat_)
        for (h, w), (jy, jx) in zip(views, jitters[i]):
            hs, ws = h + jy + jr, w + jx + jr
            xv = lat_[:, :, hs:hs + window, ws:ws + window]
            value_local[:, :, hs:hs + window, ws:ws + window] += sched.step(cfg_eps(unet, xv, t, emb, g), t, xv).prev_sample
            count_local[:, :, hs:hs + window, ws:ws + window] += 1
        value_local = value_local[:, :, jr:jr + 16, jr:jr + 16]
        count_local = count_local[:, :, jr:jr + 16, jr:jr + 16]
        c2 = cf**c2s
        value = value_local / count_local * (1 - c2)
        count = torch.ones_like(value_local) * (1 - c2)
        c3 = 0.99 * cf**c3s + 1e-2
        std_, mean_ = latents.std(), latents.mean()
        k = 2 * s - 1
        x = torch.arange(k, dtype=torch.float32)
        g1 = torch.exp(-(x - (k - 1) / 2) ** 2 / (2 * (sigma * c3) ** 2))
        g1 = g1 / g1.sum()
        kern = (g1[:, None] * g1[None, :])[None, None].repeat(4, 1, 1, 1)
        blur = F.conv2d(latents, kern, padding=k // 2, groups=4)
        blur = (blur - blur.mean()) / blur.std() * std_ + mean_
        value_global = torch.zeros_like(latents)
        for h in range(s):
            for w in range(s):
                xv, xb = latents[:, :, h::s, w::s], blur[:, :, h::s, w::s]
                value_global[:, :, h::s, w::s] += sched.step(cfg_eps(unet, xb, t, emb, g), t, xv).prev_sample
        value += value_global * c2
        count += torch.ones_like(value_global) * c2
        latents = torch.where(count > 0, value / count, value)
    return (latents - latents.mean()) / latents.std() * anchor_std + anchor_mean


def test_demofusion_equals_the_official_algorithm(md):
    md.pipe.scheduler = ddim(md, 3)
    meth = get_method("demofusion", stages=2)
    out = md(PROMPT, height=128, width=128, window=64, overlap=32, num_inference_steps=3, guidance_scale=6.0,
             generator=torch.Generator().manual_seed(11), method=meth, output_type="latent", progress=False)
    jit = meth.draws["jitter"][0]
    assert len(jit) == 3 and any(j != (0, 0) for step in jit for j in step)  # the jitter really moved windows
    with torch.no_grad():
        want = ref_demofusion(md, 11, 3, 6.0, jit, emb=embeds(md, PROMPT))
    assert rel(out.latents, want) <= TOL
    assert out.record.extra["stages"] == 2
    assert out.record.counts["model_evaluations"] == (1 + 9 + 4) * 3 * 2


# ---- every method, every scheduler -----------------------------------------------------------

FAST = {"syncdiffusion": {"loss": "mse", "sync_steps": 1}, "demofusion": {"stages": 2}, "global_pass": {"factor": 2}}
SCHEDULERS = ["ddim", "dpmpp_2m", "euler", "euler_a", "heun", "unipc", "pndm", "lms"]


@pytest.mark.parametrize("name", sorted(generation_methods()))
def test_every_method_runs_with_every_scheduler(md, name):
    # the costly methods (gradients, stages) on a two-window canvas, to keep the suite fast
    width = 128 if name in ("syncdiffusion", "demofusion") else 192
    for sched in SCHEDULERS:
        md.set_scheduler(sched)
        overlap = 0 if name == "spotdiffusion" else 32
        # 4 steps: diffusers' PNDM needs at least its order (4) of steps
        out = md(PROMPT, height=64, width=width, overlap=overlap, num_inference_steps=4, generator=0, method=name,
                 method_params=FAST.get(name), output_type="latent", progress=False)
        assert torch.isfinite(out.latents).all(), (name, sched)
        assert out.latents.shape == (1, 4, 8, width // 8)


@pytest.mark.parametrize("name", sorted(generation_methods()))
def test_view_batch_size_does_not_change_the_result(md, name):
    md.set_scheduler("ddim")
    overlap = 0 if name == "spotdiffusion" else 32
    kw = dict(height=64, width=192, overlap=overlap, num_inference_steps=3, method=name, method_params=FAST.get(name),
              output_type="latent", progress=False)
    a = md(PROMPT, view_batch_size=1, generator=5, **kw).latents
    b = md(PROMPT, view_batch_size=3, generator=5, **kw).latents
    assert rel(a, b) <= 1e-4


@pytest.mark.parametrize("name", sorted(generation_methods()))
def test_circular_canvases_where_the_method_allows_them(md, name):
    md.set_scheduler("ddim")
    overlap = 0 if name == "spotdiffusion" else 32
    kw = dict(height=64, width=192, overlap=overlap, num_inference_steps=2, method=name, method_params=FAST.get(name),
              circular="x", output_type="latent", progress=False)
    if not METHODS[name].supports_circular:
        with pytest.raises(ConfigError, match="does not support circular"):
            md(PROMPT, **kw)
        return
    out = md(PROMPT, generator=1, **kw)
    assert torch.isfinite(out.latents).all()


# ---- bad inputs, each a ConfigError naming the field, before any model call -------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(method="multidifusion"), r"method='multidifusion' is not a known method; choose one of \['demofusion'"),
    (dict(method="syncdiffusion", method_params={"wieght": 1}), r"no parameter\(s\) \['wieght'\]; its parameters: \['anchor'"),
    (dict(method="syncdiffusion", method_params={"decay": 2}), r"method.decay=2 is invalid.*\(0, 1\]"),
    (dict(method="spotdiffusion"), r"overlap must be 0, got 32 px"),
    (dict(method="spotdiffusion", overlap=0, method_params={"shifts": [[0, 0]]}), r"method.shifts has 1 entries.*: 3"),
    (dict(regions=[Region("city", mask=np.ones((32, 192)))]), r"regions\[0\].mask has shape \(32, 192\); it must be .*\(64, 192\)"),
    (dict(regions=[Region("city", box=(0, 150, 64, 64))]), r"regions\[0\].box=\(0, 150, 64, 64\) lies outside the 64x192"),
    (dict(regions=[Region("city", box=(0, 0, 8, 8))], method="syncdiffusion"), r"regions are supported by methods"),
    (dict(bootstrap_steps=3), r"bootstrap_steps needs regions"),
    (dict(method="mixture", method_params={"tile_prompts": [["a", "b"]]}), r"method.tile_prompts must be a grid of 1 rows x 5"),
    (dict(method="demofusion", circular="x"), r"does not support circular"),
    (dict(method="syncdiffusion", method_params={"anchor": 9}), r"method.anchor=9 but the plan has 5 views"),
])
def test_bad_method_inputs_are_config_errors_before_any_model_call(md, monkeypatch, kwargs, match):
    calls = []
    monkeypatch.setattr(md.unet, "forward", lambda *a, **k: calls.append(1))
    kw = dict(height=64, width=192, overlap=32, num_inference_steps=3, output_type="latent", progress=False)
    kw.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        md(PROMPT, **kw)
    assert calls == []


def test_method_registry_and_describe():
    assert set(METHODS) == {"multidiffusion", "mixture", "syncdiffusion", "spotdiffusion", "global_pass", "demofusion",
                            "usdu", "naive_tiles"}
    assert set(generation_methods()) == set(METHODS) - {"usdu", "naive_tiles"}
    m = get_method("syncdiffusion", weight=5.0)
    assert m.describe()["weight"] == 5.0 and m.describe()["loss"] == "lpips"
    assert get_method(m) is m
    assert mdtools.get_method is get_method and mdtools.METHODS is METHODS
    assert math.isclose(get_method("mixture").var, 0.01)


# ---- CLI, experiment configs, runner ----------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--method", "nope"], "method='nope' is not a known method; choose one of"),
    (["--method", "spotdiffusion", "--overlap", "32"], "overlap must be 0, got 32 px"),
    (["--method", "syncdiffusion", "--method-param", "sync_steps"], "--method-param 'sync_steps' must look like NAME=VALUE"),
    (["--method", "syncdiffusion", "--method-param", "sync_stepz=3"], "no parameter(s) ['sync_stepz']"),
])
def test_cli_method_flags_are_validated_before_loading(saved_sd_dir, tmp_path, monkeypatch, capsys, extra, message):
    from mdtools import cli

    monkeypatch.setattr(MultiDiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("model loaded before validation")))
    argv = ["generate", "--model", str(saved_sd_dir), "--prompt", "a beach", "--width", "256", "--out",
            str(tmp_path / "x.png"), *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_generates_with_a_method(saved_sd_dir, tmp_path, capsys):
    import json

    from mdtools import cli

    out = tmp_path / "spot.png"
    rc = cli.main(["generate", "--model", str(saved_sd_dir), "--prompt", "a photo of a beach", "--height", "64",
                   "--width", "256", "--overlap", "0", "--steps", "2", "--method", "spotdiffusion",
                   "--method-param", "shifts=[[0, 0], [0, 5]]", "--out", str(out)])
    assert rc == 0 and "method spotdiffusion" in capsys.readouterr().out
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["extra"]["method"]["name"] == "spotdiffusion" and rec["extra"]["method_draws"]["shifts"] == [[0, 0], [0, 5]]


def test_experiment_method_block_sweeps_validates_and_keeps_old_run_ids(saved_sd_dir, tmp_path):
    import yaml

    from mdtools.sweep import RunConfig, execute, load_experiment

    base = {"model": str(saved_sd_dir), "prompt": "a photo of a beach", "canvas": {"height": 64, "width": 128},
            "tiling": {"overlap": 0}, "sampler": {"steps": 2}, "metrics": ["seam_score"], "output": {"preview_max_side": 64}}
    spec = {"name": "m", "base": base,
            "sweep": {"method.name": ["multidiffusion", "spotdiffusion", "syncdiffusion"]},
            "zip": [{"method.loss": ["mse"]}], "seeds": [0]}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"run 0: method 'multidiffusion' has no parameter\(s\) \['loss'\]"):
        load_experiment(p)
    spec["sweep"] = {}
    spec["zip"] = [{"method": [{"name": "multidiffusion"}, {"name": "spotdiffusion"},
                               {"name": "syncdiffusion", "loss": "mse", "sync_steps": 1}]}]
    p.write_text(yaml.safe_dump(spec))
    exp = load_experiment(p)
    assert [r.method.name for r in exp.runs] == ["multidiffusion", "spotdiffusion", "syncdiffusion"]
    # a config without a method block hashes as before methods existed
    plain = RunConfig.model_validate(base)
    assert exp.runs[0].run_id() == plain.run_id()
    assert RunConfig.model_validate({**base, "method": {"name": "spotdiffusion"}}).run_id() != plain.run_id()
    df = execute(exp, tmp_path / "out", progress=False, log=lambda s: None)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert set(df["method.name"]) == {"multidiffusion", "spotdiffusion", "syncdiffusion"}
    sync = df[df["method.name"] == "syncdiffusion"].iloc[0]
    plain_row = df[df["method.name"] == "multidiffusion"].iloc[0]
    assert sync["cost.unet_grad_evaluations"] > 0 and sync["cost.unet_equivalents"] > plain_row["cost.unet_equivalents"]


def test_dry_run_estimates_method_work(saved_sd_dir, tmp_path):
    import yaml

    from mdtools.sweep import estimate_work, execute, load_experiment

    base = {"model": str(saved_sd_dir), "prompt": "a photo of a beach", "canvas": {"height": 64, "width": 192},
            "tiling": {"overlap": 32}, "sampler": {"steps": 4}}
    spec = {"name": "d", "base": base, "zip": [{"method": [{"name": "multidiffusion"},
                                                            {"name": "syncdiffusion", "loss": "mse", "sync_steps": 2},
                                                            {"name": "demofusion", "stages": 2}]}]}
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(spec))
    exp = load_experiment(p)
    md_, sync, demo = (estimate_work(r, 8, 64) for r in exp.runs)
    assert md_ == {"unet_evaluations": 5 * 4 * 2}
    assert sync["unet_grad_evaluations"] == 2 * 4 * 2 and sync["backward"] == 2 * 4 and sync["vae_decodes_grad"] == 8
    assert sync["loss_calls"] == 8
    assert demo["unet_evaluations"] > md_["unet_evaluations"]
    lines = []
    execute(exp, tmp_path / "dry", dry_run=True, progress=False, log=lines.append)
    assert "backward" in lines[0] and "estimated time" in lines[1] and "per backward pass" in lines[1]
    assert "per loss call with backward" in lines[1]


def test_methods_table_and_paired_comparisons_on_a_constructed_table():
    import pandas as pd

    from mdtools import stats
    from mdtools.analysis.tables import methods_table, paired_vs

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(8):
        base = rng.normal(1.2, 0.05)
        for name, extra, shift, cost in (("multidiffusion", None, 0.0, 210), ("spotdiffusion", None, 0.3, 120),
                                         ("syncdiffusion", "mse", -0.1, 900)):
            rows.append({"status": "ok", "seed": seed, "method.name": name, "method.loss": extra, "tiling.kernel": "gaussian",
                         "plan.height": 128, "plan.width": 512, "metric.seam_structure": base + shift + rng.normal(0, 0.01),
                         "cost.unet_equivalents": cost, "swept": json.dumps({"method.name": name, "seed": seed})})
    df = pd.DataFrame(rows)
    t = methods_table(df)
    assert list(t["method.label"]) == ["multidiffusion(gaussian)", "spotdiffusion(gaussian)", "syncdiffusion(gaussian, loss=mse)"]
    assert (t["n"] == 8).all() and t["cost.unet_equivalents"].tolist() == [210, 120, 900]
    md_vals = df[df["method.name"] == "multidiffusion"]["metric.seam_structure"].to_numpy()
    iv = stats.bootstrap_ci(md_vals)
    assert t.loc[0, "metric.seam_structure"] == pytest.approx(md_vals.mean())
    assert t.loc[0, "metric.seam_structure.ci"] == f"[{iv.lo:.3g}, {iv.hi:.3g}]"
    p = paired_vs(df, "multidiffusion(gaussian)", "metric.seam_structure").set_index("setting")
    assert p.loc["spotdiffusion(gaussian)", "verdict"] == "worse" and p.loc["spotdiffusion(gaussian)", "diff"] == pytest.approx(0.3, abs=0.02)
    assert p.loc["syncdiffusion(gaussian, loss=mse)", "verdict"] == "better" and (p["pairs"] == 8).all()


def test_claim_c6_on_scenes_is_judged_on_paired_coherence_metrics():
    import pandas as pd

    from mdtools.analysis.article_claims import claim_c6_scenes

    rng = np.random.default_rng(1)
    rows = []
    for prompt in ("day sky over the sea with a sun", "night sky over the sea with a moon"):
        for seed in range(6):
            for name, discs, horizon in (("multidiffusion", 3, 2.0), ("global_pass", 1, 2.0)):
                rows.append({"status": "ok", "prompt": prompt, "seed": seed, "method.name": name, "plan.height": 128,
                             "plan.width": 512, "metric.disc_count": discs + int(rng.integers(0, 2)),
                             "metric.horizon_continuity": horizon + rng.normal(0, 0.05),
                             "metric.sky_consistency": 1.2 + rng.normal(0, 0.05), "cost.unet_equivalents": 100.0})
    v = claim_c6_scenes(pd.DataFrame(rows))
    assert v.verdict.startswith("holds on the scenes model: better on 512x128 disc_error")
    assert "horizon_continuity" in v.evidence and "no difference shown" in v.evidence
    assert v.numbers["global_pass_minus_multidiffusion"]["512x128 disc_error"]["n"] == 12  # paired on (prompt, seed)
