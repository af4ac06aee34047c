"""Noise inversion (A1111 Tiled Diffusion, facts sheet §2.7) against an independent loop written here from the published algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import uniform_filter

from mdtools.errors import ConfigError
from mdtools.methods import get_method
from mdtools.pipeline import MultiDiffusionPipeline
from mdtools.upscale import check_noise_inversion, inversion_sigmas, resize_image, retouch_mask, upscale
from mdtools.upscale.inversion import InversionMethod, log_sigmas, sigma_to_t, uint8_cast

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def md(sd_pipe):
    return MultiDiffusionPipeline.from_pipe(sd_pipe)  # window 64 px, epsilon UNet, scaled_linear betas


def kdiff_sigmas(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """k-diffusion CompVisDenoiser.get_sigmas(steps) flipped, and log training sigmas, from the betas (NumPy)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    logs = np.log(np.sqrt((1 - abar) / abar))
    t = np.linspace(999, 0, steps)
    sig = np.exp(np.interp(t, np.arange(1000), logs))  # log-linear between integer timesteps
    return np.concatenate([sig, [0.0]])[::-1].copy(), logs


def test_schedule_and_sigma_to_t():
    sig, logs = kdiff_sigmas(10)
    ours = inversion_sigmas(torch.tensor(np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)), 10)
    np.testing.assert_allclose(ours.numpy(), sig, rtol=1e-10)
    t = sigma_to_t(torch.tensor(sig[1:]), torch.tensor(logs)).numpy()
    np.testing.assert_allclose(t, np.linspace(0, 999, 10), atol=1e-6)  # the timesteps the sigmas came from


def reference_inversion(md, init: torch.Tensor, prompt: str, steps: int, retouch: float, views: list[tuple[int, int]],
                        win: int) -> torch.Tensor:
    """The published loop: Euler, derivative at the target sigma, t / retouch, positive prompt, no CFG;
    per view UNet on the crop, uniform average over overlaps (MultiDiffusion with the uniform kernel)."""
    sig, logs = kdiff_sigmas(steps)
    emb = md.pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    x = init.double()
    for i in range(1, steps + 1):
        s, sp = sig[i], sig[i - 1]
        t = np.interp(np.log(s), logs, np.arange(1000)) / retouch
        c_in, c_out = 1 / np.sqrt(s * s + 1), -s
        num = torch.zeros_like(x)
        cnt = torch.zeros_like(x)
        for top, left in views:
            crop = x[:, :, top:top + win, left:left + win]
            with torch.no_grad():
                eps = md.pipe.unet((crop * c_in).float(), torch.tensor(t, dtype=torch.float32), emb).sample.double()
            num[:, :, top:top + win, left:left + win] += eps
            cnt[:, :, top:top + win, left:left + win] += 1
        eps = num / cnt
        denoised = x + eps * c_out
        x = x + (x - denoised) / s * (s - sp)
    return (x / sig[-1]).float()


@pytest.mark.parametrize("width, views", [(64, [(0, 0)]), (96, [(0, 0), (0, 4)])])
def test_inversion_equals_the_published_loop(md, width, views):
    g = torch.Generator().manual_seed(0)
    init = torch.randn(1, 4, 8, width // 8, generator=g)
    steps, retouch = 4, 2.0
    sch = md.pipe.scheduler
    wrapper = InversionMethod(get_method("multidiffusion"), inversion_sigmas(sch.alphas_cumprod, steps),
                              log_sigmas(sch.alphas_cumprod), retouch)
    got = md("a photo", height=64, width=width, window=64, overlap=32, kernel="uniform", method=wrapper, latents=init,
             guidance_scale=1.0, num_inference_steps=steps, output_type="latent", progress=False)
    ref = reference_inversion(md, init, "a photo", steps, retouch, views, 8)
    torch.testing.assert_close(got.latents, ref, atol=1e-4, rtol=1e-4)
    assert got.record.counts["model_evaluations"] == steps * len(views)  # one pass per view and step: no CFG


def reference_mask(grey: np.ndarray, k: int) -> np.ndarray:
    """TD-A get_retouch_mask: box guided filter (cv2.blur = reflect-101 box, here scipy's 'mirror'), x86 uint8 cast."""
    img = grey.astype(np.float64) / 255
    box = lambda a: uniform_filter(a, size=k, mode="mirror")  # noqa: E731
    m_i, m_ii = box(img), box(img * img)
    var = m_ii - m_i * m_i
    a = var / (var + 0.01)
    gf = (a * img + (m_i - a * m_i) - img) * 255
    wrapped = np.array([int(v) % 256 for v in gf.reshape(-1)], dtype=np.uint8).reshape(gf.shape)  # trunc, then mod 256
    return wrapped.astype(np.float32) / 255


def test_retouch_mask_matches_the_guided_filter_and_the_x86_cast():
    rng = np.random.RandomState(0)
    grey = (rng.rand(40, 56) * 255).astype(np.uint8)
    for k in (4, 7, 16):
        np.testing.assert_allclose(retouch_mask(grey, k), reference_mask(grey, k), atol=1.5 / 255)
    assert list(uint8_cast(np.array([-3.7, -0.2, 12.9, 300.2]))) == [253, 0, 12, 44]


def test_upscale_with_inversion_equals_the_steps_by_hand(md):
    src = Image.fromarray((np.random.RandomState(2).rand(32, 32, 3) * 255).astype(np.uint8))
    inv = {"steps": 3, "retouch": 1.0, "renoise_strength": 0.8, "renoise_kernel": 8}
    kw = dict(prompt="a photo", steps=4, strength=0.5, seed=5, guidance_scale=3.0, progress=False)
    scheduler_before = md.pipe.scheduler
    r = upscale(md, src, scale=2, noise_inversion=inv, **kw)
    assert md.pipe.scheduler is scheduler_before  # restored after the Euler sampling
    assert {"invert", "denoise"} <= set(r.record["phases"])
    # by hand
    from diffusers import EulerDiscreteScheduler

    t = torch.from_numpy(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    canvas = resize_image(t, (64, 64), "lanczos")
    vae = md.pipe.vae
    with torch.no_grad():
        init = vae.encode(canvas * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    latent = reference_inversion(md, init, "a photo", 3, 1.0, [(0, 0)], 8)
    sig, _ = kdiff_sigmas(3)
    eps_inv = latent - init / sig[-1]
    grey = np.asarray(Image.fromarray((canvas[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).convert("L"))
    gf = torch.nn.functional.interpolate(torch.from_numpy(reference_mask(grey, 8))[None, None], size=(8, 8),
                                         mode="bilinear", align_corners=False)
    m = ((1 - gf) * 0.8).clamp(0, 1)
    rand = torch.randn(init.shape, generator=torch.Generator().manual_seed(5))
    eps = ((1 - m) * eps_inv + m * rand) / torch.sqrt(m * m + (1 - m) ** 2)
    md.pipe.scheduler = EulerDiscreteScheduler.from_config(scheduler_before.config)
    try:
        lat = md("a photo", height=64, width=64, window=64, overlap=32, init_latents=init, strength=0.5, latents=eps,
                 num_inference_steps=4, guidance_scale=3.0, output_type="latent", progress=False).latents
    finally:
        md.pipe.scheduler = scheduler_before
    with torch.no_grad():
        ref = ((vae.decode(lat / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(r.tensor, ref, atol=1e-4, rtol=0)


def test_settings_are_checked():
    assert check_noise_inversion(True) == {"steps": 10, "retouch": 1.0, "renoise_strength": 1.0, "renoise_kernel": 64}
    assert check_noise_inversion(None) is None
    for bad, match in (({"steps": 201}, "steps"), ({"retouch": 0.5}, "retouch"), ({"renoise_strength": 3}, "renoise"),
                       ({"renoise_kernel": 1}, "renoise_kernel"), ("yes", "must be None, True or a dict")):
        with pytest.raises(ConfigError, match=match):
            check_noise_inversion(bad)
