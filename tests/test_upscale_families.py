"""`md.upscale` on SDXL, SD3, FLUX and PixArt: the path equals its parts by hand, and one-window img2img equals diffusers'.

Tiny random components built in code (tests/conftest.py, tests/test_dit.py, tests/test_pixart.py).
The hand path is written here from diffusers' conventions: Lanczos resize, full VAE encode
(posterior mode), `(z - shift_factor) * scaling_factor`, `md(..., init_latents, strength,
latents=noise)` with the noise drawn here, `z / scaling_factor + shift_factor`, full decode. The
img2img's noising is checked against diffusers' own img2img pipelines on one window (SDXL:
`add_noise`; SD3 / FLUX: the flow schedule's `scale_noise` at the first timestep)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mdtools import MultiDiffusionPipeline
from mdtools.errors import ConfigError
from mdtools.upscale import check_upscale, resize_image

from .conftest import make_sdxl_pipe
from .test_dit import make_flux_pipe, make_sd3_pipe
from .test_pixart import make_pixart_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a photo of a beach"
#: family -> (tiny pipeline, call options): SD3 / FLUX have 16 px multiples (VAE 2 px here x 2x2 patches)
MAKERS = {"sdxl": (make_sdxl_pipe, {}), "sd3": (make_sd3_pipe, {"max_sequence_length": 16}),
          "flux": (make_flux_pipe, {"max_sequence_length": 16}), "pixart": (make_pixart_pipe, {})}
_PIPES: dict[str, object] = {}


def pipe_of(family: str):
    if family not in _PIPES:
        _PIPES[family] = MAKERS[family][0]()
    return _PIPES[family]


@pytest.fixture(scope="module", autouse=True)
def _drop_pipes():
    yield
    _PIPES.clear()


def _src(h: int = 32, w: int = 48, seed: int = 0) -> Image.Image:
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    smooth = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1) * 0.35 + 0.5
    return Image.fromarray(((smooth + 0.05 * rs.rand(h, w, 3)).clip(0, 1) * 255).astype(np.uint8))


def _to_model(vae, z):
    """diffusers' img2img scaling: (z - shift_factor) * scaling_factor (SD3/FLUX have a shift)."""
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def _to_vae(vae, lat):
    return lat / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "pixart"])
def test_upscale_equals_the_path_by_hand(family):
    pipe = pipe_of(family)
    opts = MAKERS[family][1]
    md = MultiDiffusionPipeline.from_pipe(pipe)
    src = _src()
    # a 64 x 96 canvas, 64 px windows overlapping by 32: two views on every family
    kw = dict(prompt=PROMPT, steps=4, strength=0.5, seed=3, guidance_scale=5.0, window=64, overlap=32)
    r = md.upscale(src, scale=2, vae_tiling={"tiling": True, "tile": 32}, model_options=opts or None, progress=False, **kw)
    assert r.image.size == (96, 64) and r.tensor.shape == (1, 3, 64, 96)
    assert r.plan.n_views == 2 and r.record["upscale"]["canvas_size"] == [64, 96]
    # by hand: Lanczos, full encode (posterior mode), scaling with the shift, md img2img from noise drawn here, full decode
    t = torch.from_numpy(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    canvas = resize_image(t, (64, 96), "lanczos")
    vae = md.pipe.vae
    f = md.vae_scale_factor
    noise = torch.randn((1, vae.config.latent_channels, 64 // f, 96 // f), generator=torch.Generator().manual_seed(3))
    call = dict(height=64, width=96, window=64, overlap=32, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                output_type="latent", progress=False, **opts)
    with torch.no_grad():
        z = vae.encode(canvas * 2 - 1).latent_dist.mode()
        lat = md(PROMPT, init_latents=_to_model(vae, z), latents=noise, **call).latents
        ref = ((vae.decode(_to_vae(vae, lat)).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(r.tensor, ref, atol=1e-4, rtol=0)
    # 2 views x int(4 x 0.5) steps x (CFG 2 passes; FLUX's guidance is an embedding: 1)
    passes = 1 if family == "flux" else 2
    assert r.record["counts"]["model_evaluations"] == 2 * 2 * passes
    if vae.config.shift_factor:  # the shift matters: without it the result is another one (the test can fail)
        with torch.no_grad():
            lat0 = md(PROMPT, init_latents=z * vae.config.scaling_factor, latents=noise, **call).latents
        assert (lat0 - lat).abs().max().item() > 1e-2


def _one_window_reference(family, pipe, init, noise_seed, strength, steps, **kw):
    """diffusers' own img2img pipeline of the family on the scaled latents `init` (given as the image:
    no encode), its noise drawn from `noise_seed`; returns the unpacked latents."""
    import diffusers

    c = pipe.components
    if family == "sdxl":
        ref = diffusers.StableDiffusionXLImg2ImgPipeline(**c)
    elif family == "sd3":
        ref = diffusers.StableDiffusion3Img2ImgPipeline(**c)
    else:
        ref = diffusers.FluxImg2ImgPipeline(**c)
        kw.update(height=init.shape[-2] * pipe.vae_scale_factor, width=init.shape[-1] * pipe.vae_scale_factor)
    ref.set_progress_bar_config(disable=True)
    out = ref(PROMPT, image=init, strength=strength, num_inference_steps=steps, output_type="latent",
              generator=torch.Generator().manual_seed(noise_seed), **kw).images
    if family == "flux":
        out = diffusers.FluxPipeline._unpack_latents(out, kw["height"], kw["width"], pipe.vae_scale_factor)
    return out


@pytest.mark.parametrize("family, hw, strength", [("sdxl", (64, 64), 0.5), ("sd3", (32, 48), 0.5),
                                                  ("sd3", (32, 48), 0.75), ("flux", (32, 48), 0.5),
                                                  ("flux", (32, 48), 0.75)])
def test_one_window_img2img_equals_diffusers_img2img(family, hw, strength):
    pipe = pipe_of(family)
    opts = MAKERS[family][1]
    md = MultiDiffusionPipeline.from_pipe(pipe)
    vae = pipe.vae
    f = md.vae_scale_factor
    canvas = resize_image(torch.from_numpy(np.asarray(_src(), dtype=np.float32) / 255).permute(2, 0, 1)[None], hw, "lanczos")
    with torch.no_grad():
        init = _to_model(vae, vae.encode(canvas * 2 - 1).latent_dist.mode())
    assert init.shape[-2:] == (hw[0] // f, hw[1] // f)
    kw = dict(guidance_scale=5.0, negative_prompt="city", **opts)
    want = _one_window_reference(family, pipe, init, 4, strength, 4, **kw)
    got = md(PROMPT, height=hw[0], width=hw[1], window=hw, overlap=0, init_latents=init, strength=strength,
             num_inference_steps=4, generator=4, output_type="latent", progress=False, **kw)
    assert got.plan.n_views == 1 and got.latents.shape == want.shape
    assert (got.latents - want).abs().max().item() <= 1e-5
    assert got.record.counts["steps"] == int(4 * strength)
    # img2img: the source shows through (txt2img from the same seed is another result)
    txt = md(PROMPT, height=hw[0], width=hw[1], window=hw, overlap=0, num_inference_steps=4, generator=4,
             output_type="latent", progress=False, **kw).latents
    assert (txt - want).abs().max().item() > 1e-2


def test_flow_img2img_starts_from_scale_noise_at_the_first_timestep():
    """The first transformer input is sigma_0 * noise + (1 - sigma_0) * init (rectified flow), sigma_0 the
    schedule's sigma at the first of int(steps x strength) timesteps, read from diffusers' scheduler here."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = pipe_of("sd3")
    md = MultiDiffusionPipeline.from_pipe(pipe)
    g = torch.Generator().manual_seed(0)
    init, noise = torch.randn((1, 16, 16, 24), generator=g), torch.randn((1, 16, 16, 24), generator=g)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"].clone()), with_kwargs=True)
    try:
        md(PROMPT, height=32, width=48, window=(32, 48), overlap=0, init_latents=init, latents=noise, strength=0.5,
           num_inference_steps=4, guidance_scale=1.0, output_type="latent", progress=False, max_sequence_length=16)
    finally:
        hook.remove()
    sch = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # shift 3, static
    sch.set_timesteps(4)
    s0 = float(sch.sigmas[4 - int(4 * 0.5)])
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], s0 * noise + (1 - s0) * init, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_noise_inversion_is_refused_for_flow_models_before_any_model_call(family):
    pipe = pipe_of(family)
    md = MultiDiffusionPipeline.from_pipe(pipe)
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in (pipe.transformer, pipe.vae.encoder)]
    try:
        with pytest.raises(ConfigError) as e:
            md.upscale(_src(), scale=2, window=64, noise_inversion=True, steps=4, progress=False)
    finally:
        for h in hooks:
            h.remove()
    msg = str(e.value)
    assert "noise_inversion" in msg and "flow-matching" in msg and "noise_inversion=None" in msg
    assert calls == []


def test_flux_model_options_reach_the_denoising():
    """FLUX's true CFG (a model option) runs a second pass per step when a negative prompt is given."""
    md = MultiDiffusionPipeline.from_pipe(pipe_of("flux"))
    kw = dict(scale=2, window=64, overlap=32, steps=2, strength=1.0, negative_prompt="city", progress=False)
    plain = md.upscale(_src(), model_options={"max_sequence_length": 16}, **kw)
    true_cfg = md.upscale(_src(), model_options={"max_sequence_length": 16, "true_cfg_scale": 4.0}, **kw)
    assert plain.record["counts"]["model_evaluations"] == 2 * 2 * 1
    assert true_cfg.record["counts"]["model_evaluations"] == 2 * 2 * 2
    assert (plain.tensor - true_cfg.tensor).abs().max().item() > 1e-3
    with pytest.raises(ConfigError, match="model option"):
        md.upscale(_src(), model_options={"true_cfg": 4.0}, **kw)
    with pytest.raises(ConfigError, match="model_options=None"):
        md.upscale(_src(), model_options={"max_sequence_length": 16}, method="usdu", **kw)
    # the dry-run estimate counts FLUX's passes as the run does
    chk = check_upscale(_src(), scale=2, window=64, overlap=32, steps=2, strength=1.0, vae_scale_factor=2,
                        size_multiple=4, native_window=64, cfg_passes=1)
    assert chk.estimate()["unet_evaluations"] == plain.record["counts"]["model_evaluations"]
