"""ControlNet per view: one window equals diffusers' ControlNet pipelines; two views equal a loop written here."""

from __future__ import annotations

import json

import pytest
import torch

import mdtools
from mdtools import MultiDiffusionPipeline
from mdtools.fusion import ViewSet
from mdtools.kernels import get_kernel

PROMPT = "a photo of a beach"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize_zeros(net, seed=0):
    """ControlNets start with zero convolutions (residuals 0): give them random weights so control matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def tiny_controlnet(unet, seed=0, union=False):
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(seed)
    net = (ControlNetUnionModel if union else ControlNetModel).from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8))
    if union:  # its control transformer at the tiny width (the default is SDXL's 320 channels)
        net = ControlNetUnionModel.from_config(net.config, num_trans_channel=16, num_trans_head=2, num_proj_channel=16)
    return randomize_zeros(net, seed)


def control(h, w, seed=0, batch=1):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def sd(sd_pipe):
    return sd_pipe, tiny_controlnet(sd_pipe.unet)


@pytest.fixture(scope="module")
def sdxl(sdxl_pipe):
    return sdxl_pipe, tiny_controlnet(sdxl_pipe.unet, seed=1)


def sd_cn_pipe(pipe, cn, img2img=False):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetPipeline

    cls = StableDiffusionControlNetImg2ImgPipeline if img2img else StableDiffusionControlNetPipeline
    ref = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=cn,
              scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def sdxl_cn_pipe(pipe, cn, img2img=False, union=False):
    import diffusers

    name = ("StableDiffusionXLControlNetUnion" if union else "StableDiffusionXLControlNet") + ("Img2Img" if img2img else "")
    c = pipe.components
    ref = getattr(diffusers, name + "Pipeline")(
        vae=c["vae"], text_encoder=c["text_encoder"], text_encoder_2=c["text_encoder_2"], tokenizer=c["tokenizer"],
        tokenizer_2=c["tokenizer_2"], unet=c["unet"], controlnet=cn, scheduler=c["scheduler"])
    ref.set_progress_bar_config(disable=True)
    return ref


def init_latents(vae, image, gen):
    """diffusers' img2img encode: scaling_factor * sample of the posterior, drawn from `gen` (which then draws the noise)."""
    return vae.config.scaling_factor * vae.encode(2 * image - 1).latent_dist.sample(gen)


# ---- one window equals diffusers ----------------------------------------------------------------

@pytest.mark.parametrize("guess, start, end, scale", [(False, 0.0, 1.0, 0.7), (True, 0.2, 0.8, 1.3)])
def test_sd_one_window_equals_diffusers_controlnet_pipeline(sd, guess, start, end, scale):
    pipe, cn = sd
    ref = sd_cn_pipe(pipe, cn)
    img = control(64, 64)
    kw = dict(height=64, width=64, num_inference_steps=5, guidance_scale=6.0, negative_prompt="city", output_type="latent",
              controlnet_conditioning_scale=scale, control_guidance_start=start, control_guidance_end=end,
              guess_mode=guess)
    want = ref(PROMPT, image=img, generator=torch.Generator().manual_seed(3), **kw).images
    md = MultiDiffusionPipeline.from_pipe(ref)  # the wrapped pipeline's own ControlNet
    out = md(PROMPT, control_image=img, window=64, overlap=0, generator=torch.Generator().manual_seed(3),
             progress=False, **kw)
    assert diff(out.latents, want) <= 1e-5
    plain = md(PROMPT, window=64, overlap=0, generator=3, progress=False,
               **{k: v for k, v in kw.items() if "control" not in k and k != "guess_mode"}).latents
    assert diff(plain, want) > 1e-3  # the ControlNet changed the result: the test can fail
    cost = out.record.extra["cost"]
    active = sum(1 for i in range(5) if not (i / 5 < start or (i + 1) / 5 > end))
    assert cost["controlnet_evaluations"] == active * (1 if guess else 2)
    assert cost["unet_equivalents"] > cost["unet_evaluations"] and cost["flops_controlnet_evaluation"] > 0
    assert out.record.extra["controlnet"]["guess_mode"] is guess


def test_sd_img2img_one_window_equals_diffusers(sd):
    pipe, cn = sd
    ref = sd_cn_pipe(pipe, cn, img2img=True)
    img, ctl = control(64, 64, seed=1), control(64, 64, seed=2)
    kw = dict(height=64, width=64, num_inference_steps=6, strength=0.6, guidance_scale=5.0, output_type="latent",
              controlnet_conditioning_scale=0.8)
    want = ref(PROMPT, image=img, control_image=ctl, generator=torch.Generator().manual_seed(4), **kw).images
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        init = init_latents(pipe.vae, img, g)
    got = MultiDiffusionPipeline.from_pipe(pipe)(PROMPT, controlnet=cn, control_image=ctl, init_latents=init, window=64,
                                                 overlap=0, generator=g, progress=False, **kw).latents
    assert diff(got, want) <= 1e-5


@pytest.mark.parametrize("img2img", [False, True])
def test_sdxl_one_window_equals_diffusers(sdxl, img2img):
    pipe, cn = sdxl
    ref = sdxl_cn_pipe(pipe, cn, img2img=img2img)
    ctl = control(64, 64, seed=5)
    kw = dict(height=64, width=64, num_inference_steps=4, guidance_scale=5.0, output_type="latent",
              controlnet_conditioning_scale=0.9, control_guidance_end=0.8)
    g = torch.Generator().manual_seed(6)
    if img2img:
        img = control(64, 64, seed=7)
        want = ref(PROMPT, image=img, control_image=ctl, strength=0.75, generator=g, **kw).images
        g = torch.Generator().manual_seed(6)
        with torch.no_grad():
            extra = dict(init_latents=init_latents(pipe.vae, img, g), strength=0.75)
    else:
        want = ref(PROMPT, image=ctl, generator=g, **kw).images
        g, extra = torch.Generator().manual_seed(6), {}
    got = MultiDiffusionPipeline.from_pipe(pipe)(PROMPT, controlnet=cn, control_image=ctl, window=64, overlap=0,
                                                 generator=g, progress=False, **extra, **kw).latents
    assert diff(got, want) <= 1e-5


def test_multicontrolnet_one_window_equals_diffusers(sd):
    from diffusers import MultiControlNetModel

    pipe, cn = sd
    cn2 = tiny_controlnet(pipe.unet, seed=9)
    ref = sd_cn_pipe(pipe, MultiControlNetModel([cn, cn2]))
    imgs = [control(64, 64, seed=1), control(64, 64, seed=2)]
    kw = dict(height=64, width=64, num_inference_steps=4, guidance_scale=5.0, output_type="latent",
              controlnet_conditioning_scale=[0.5, 1.2], control_guidance_start=[0.0, 0.5])
    want = ref(PROMPT, image=imgs, generator=torch.Generator().manual_seed(2), **kw).images
    md = MultiDiffusionPipeline.from_pipe(pipe)
    for nets in ([cn, cn2], MultiControlNetModel([cn, cn2])):
        got = md(PROMPT, controlnet=nets, control_image=imgs, window=64, overlap=0,
                 generator=torch.Generator().manual_seed(2), progress=False, **kw)
        assert diff(got.latents, want) <= 1e-5
    # each ControlNet counts its own evaluations: 4 steps x CFG 2 for the first, 2 steps for the second
    assert got.record.extra["cost"]["controlnet_evaluations"] == 4 * 2 + 2 * 2


def test_union_control_mode_one_window_equals_diffusers(sdxl):
    pipe, _ = sdxl
    cn = tiny_controlnet(pipe.unet, seed=4, union=True)
    ref = sdxl_cn_pipe(pipe, cn, union=True)
    ctl = [control(64, 64, seed=1), control(64, 64, seed=2)]
    kw = dict(height=64, width=64, num_inference_steps=3, guidance_scale=5.0, output_type="latent",
              controlnet_conditioning_scale=[0.6, 1.0])
    md = MultiDiffusionPipeline.from_pipe(pipe)
    outs = []
    for mode in ([1], [5, 3]):
        imgs = ctl[:len(mode)]
        sc = kw["controlnet_conditioning_scale"][:len(mode)]
        want = ref(PROMPT, control_image=imgs, control_mode=mode, generator=torch.Generator().manual_seed(1),
                   **{**kw, "controlnet_conditioning_scale": sc}).images
        got = md(PROMPT, controlnet=cn, control_image=imgs, control_mode=mode, window=64, overlap=0,
                 generator=torch.Generator().manual_seed(1), progress=False,
                 **{**kw, "controlnet_conditioning_scale": sc}).latents
        assert diff(got, want) <= 1e-5
        outs.append(got)
    assert diff(outs[0], outs[1]) > 1e-3


# ---- several views -----------------------------------------------------------------------------

def test_two_views_equal_a_reference_loop(sd):
    """Crop the latents and the control image per view, run ControlNet and UNet per view with CFG,
    fuse with the plan's weights, one scheduler step: the published algorithm, written out here."""
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    ctl = control(64, 96, seed=3)
    steps, gs, cs = 4, 6.0, 0.9
    out = md(PROMPT, controlnet=cn, control_image=ctl, height=64, width=96, window=64, overlap=32, kernel="gaussian",
             num_inference_steps=steps, guidance_scale=gs, controlnet_conditioning_scale=cs, generator=5,
             output_type="latent", progress=False)
    plan = out.plan
    assert plan.n_views == 2
    weights = ViewSet.from_plan(plan, get_kernel("gaussian")).weight.reshape(2, 8, 8)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, None)
        emb = torch.cat([neg, pos])
        lat = randn_tensor((1, 4, 8, 12), generator=torch.Generator().manual_seed(5)) * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.scale_model_input(lat, t)
            num, den = torch.zeros_like(lat), torch.zeros(8, 12)
            for v, w in zip(plan.views, weights):
                box = (slice(None), slice(None), slice(v.top, v.top + 8), slice(v.left, v.left + 8))
                crop = torch.cat([x[box]] * 2)
                c = ctl[:, :, v.top * 8:(v.top + 8) * 8, v.left * 8:(v.left + 8) * 8]
                d, m = cn(crop, t, encoder_hidden_states=emb, controlnet_cond=torch.cat([c, c]), conditioning_scale=cs,
                          return_dict=False)
                e = pipe.unet(crop, t, encoder_hidden_states=emb, down_block_additional_residuals=d,
                              mid_block_additional_residual=m).sample
                u, te = e.chunk(2)
                num[box] += w * (u + gs * (te - u))
                den[v.top:v.top + 8, v.left:v.left + 8] += w
            lat = sched.step(num / den, t, lat).prev_sample
    assert diff(out.latents, lat) <= 1e-4


def test_view_batch_size_invariance_and_batch_of_prompts(sd):
    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    ctl = control(64, 160, seed=8, batch=2)
    kw = dict(controlnet=cn, control_image=ctl, height=64, width=160, overlap=32, num_inference_steps=3,
              output_type="latent", progress=False, guess_mode=True)
    a = md([PROMPT, "a forest"], view_batch_size=1, generator=1, **kw).latents
    b = md([PROMPT, "a forest"], view_batch_size=3, generator=1, **kw).latents
    assert diff(a, b) <= 1e-4
    c = md([PROMPT, "a forest"], view_batch_size=3, generator=1, **{**kw, "control_image": ctl.flip(0)}).latents
    assert diff(b, c) > 1e-3  # each prompt gets its own control image


# ---- methods ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, extra", [
    ("multidiffusion", {}), ("mixture", {}), ("spotdiffusion", {"overlap": 0}),
    ("global_pass", {"method_params": {"factor": 2, "strength": 0.5}, "width": 256}),
    ("multidiffusion", {"regions": "one"}),
    ("syncdiffusion", {"method_params": {"loss": "mse"}}),
])
def test_supported_methods_run_with_the_controlnet(sd, method, extra):
    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    kw = dict(height=64, width=128, overlap=32, num_inference_steps=2, output_type="latent", progress=False,
              method=method, generator=2)
    kw.update(extra)
    if kw.get("regions") == "one":
        kw["regions"] = [mdtools.Region("a forest", box=(0, 0, 64, 64))]
    ctl = control(kw["height"], kw["width"], seed=4)
    with_cn = md(PROMPT, controlnet=cn, control_image=ctl, **kw)
    without = md(PROMPT, **kw)
    assert torch.isfinite(with_cn.latents).all() and diff(with_cn.latents, without.latents) > 1e-3
    assert with_cn.record.extra["cost"]["controlnet_evaluations"] > 0


def test_spotdiffusion_crops_the_control_image_where_its_shifted_windows_are(sd):
    """Wrapped windows take their control crop modulo the canvas: rolling canvas and control together
    by whole windows' shift equals shifting the windows (here: shifts that sum to the roll)."""
    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    ctl = control(64, 128, seed=6)
    kw = dict(height=64, width=128, overlap=0, num_inference_steps=2, output_type="latent", progress=False,
              method="spotdiffusion", controlnet=cn, guidance_scale=1.0)
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    a = md(PROMPT, control_image=ctl, latents=noise, method_params={"shifts": [[0, 3], [0, 3]]}, **kw).latents
    b = md(PROMPT, control_image=ctl.roll(-24, dims=3), latents=noise.roll(-3, dims=3),
           method_params={"shifts": [[0, 0], [0, 0]]}, **kw).latents
    assert diff(a.roll(-3, dims=3), b) <= 1e-4


@pytest.mark.parametrize("method", ["demofusion"])
def test_refused_methods_say_why(sd, method):
    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    reason = mdtools.METHODS[method].no_controlnet
    assert reason
    calls, handle = _count_calls(pipe.unet)
    try:
        with pytest.raises(mdtools.ConfigError, match=f"method '{method}' cannot run a ControlNet: {reason[:30]}"):
            md(PROMPT, controlnet=cn, control_image=control(64, 128), height=64, width=128, overlap=32, method=method,
               progress=False)
    finally:
        handle.remove()
    assert calls == []


# ---- loading ------------------------------------------------------------------------------------

def test_controlnet_from_a_folder_equals_the_object(sd, tmp_path):
    pipe, cn = sd
    cn.save_pretrained(tmp_path / "cn", safe_serialization=True)
    md = MultiDiffusionPipeline.from_pipe(pipe)
    kw = dict(control_image=control(64, 96), height=64, width=96, overlap=32, num_inference_steps=2, generator=0,
              output_type="latent", progress=False)
    a = md(PROMPT, controlnet=cn, **kw)
    b = md(PROMPT, controlnet=str(tmp_path / "cn"), **kw)
    assert diff(a.latents, b.latents) == 0.0
    assert b.record.extra["controlnet"]["controlnets"] == [str(tmp_path / "cn")]


def test_embedded_name_loads_or_says_it_is_missing(sd, tmp_path, monkeypatch):
    from mdtools.models.controlnet import load_controlnet
    from mdtools.toy import EMBEDDED_CONTROLNETS, TOY_SCENES_TILE_DIR

    net = load_controlnet("toy-scenes-tile")  # the shipped one, from safetensors
    assert type(net).__name__ == "ControlNetModel"
    assert net.config.cross_attention_dim == json.loads((TOY_SCENES_TILE_DIR / "config.json").read_text())[
        "cross_attention_dim"]
    pipe, _ = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    monkeypatch.setitem(EMBEDDED_CONTROLNETS, "toy-scenes-tile", tmp_path / "absent")  # an install without it
    with pytest.raises(mdtools.ConfigError, match="embedded ControlNet is not installed"):
        md(PROMPT, controlnet="toy-scenes-tile", control_image=control(64, 64), height=64, width=64, overlap=0,
           progress=False)


# ---- bad input: one clear error before any model call ---------------------------------------------

def _count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("bad, match", [
    (dict(control_image=control(64, 64)), r"control_image is 64x64 \(width x height\) but the canvas is 128x64"),
    (dict(control_image=control(64, 128) * 2), r"control_image values must be in \[0, 1\]"),
    (dict(controlnet=None), "control_image needs a ControlNet"),
    (dict(control_image=None), "controlnet needs control_image"),
    (dict(controlnet="multi", control_image=control(64, 128)), "2 ControlNets need a list of 2 control images"),
    (dict(control_guidance_start=0.6, control_guidance_end=0.4), "need 0 <= start < end <= 1"),
    (dict(control_mode=3), "control_mode applies to a ControlNetUnionModel only"),
    (dict(controlnet="sdxl"), "controlnet is for another model family: its addition_embed_type is text_time"),
    (dict(controlnet="nowhere"), "neither an embedded name"),
    (dict(controlnet="coarse"), r"its control image downsampling .* is 2, the model's is 8"),
    (dict(controlnet_conditioning_scale=[1.0, 2.0]), "controlnet_conditioning_scale has 2 entries for 1 ControlNet"),
])
def test_bad_input_fails_before_any_model_call(sd, sdxl, bad, match):
    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    kw = dict(controlnet=cn, control_image=control(64, 128), height=64, width=128, overlap=32, progress=False)
    kw.update(bad)
    if kw["controlnet"] == "multi":
        kw["controlnet"] = [cn, cn]
    elif kw["controlnet"] == "sdxl":
        kw["controlnet"] = sdxl[1]
    elif kw["controlnet"] == "coarse":  # a control embedding that downsamples 2x, not the VAE's 8x
        from diffusers import ControlNetModel

        kw["controlnet"] = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(4, 8))
    elif kw["controlnet"] == "nowhere":
        kw["controlnet"] = "/no/such/controlnet"
    if kw["controlnet"] is None:
        kw.pop("controlnet")
    calls, h1 = _count_calls(pipe.unet)
    te, h2 = _count_calls(pipe.text_encoder)
    try:
        with pytest.raises(mdtools.ConfigError, match=match):
            md(PROMPT, **kw)
    finally:
        h1.remove()
        h2.remove()
    assert calls == [] and te == []


def test_controlnet_of_another_text_width_is_refused(sd):
    from diffusers import ControlNetModel

    from .conftest import tiny_unet

    pipe, _ = sd
    other = ControlNetModel.from_unet(tiny_unet(cross_dim=16), conditioning_embedding_out_channels=(4, 8, 8, 8))
    with pytest.raises(mdtools.ConfigError, match="its cross_attention_dim is 16, the model's is 32"):
        MultiDiffusionPipeline.from_pipe(pipe)(PROMPT, controlnet=other, control_image=control(64, 64), height=64,
                                              width=64, overlap=0, progress=False)


def test_pil_control_image_of_the_canvas_aspect_is_resized_as_diffusers_does(sd):
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    pipe, cn = sd
    md = MultiDiffusionPipeline.from_pipe(pipe)
    small = Image.fromarray((control(32, 48, seed=2)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).convert("RGBA")
    kw = dict(controlnet=cn, height=64, width=96, overlap=32, num_inference_steps=2, generator=0, output_type="latent",
              progress=False)
    a = md(PROMPT, control_image=small, **kw).latents
    resized = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False).preprocess(small, 64, 96)
    b = md(PROMPT, control_image=resized, **kw).latents
    assert diff(a, b) == 0.0
    with pytest.raises(mdtools.ConfigError, match="convert it to 8-bit RGB"):
        md(PROMPT, control_image=Image.new("I;16", (96, 64)), **kw)


def test_union_needs_a_mode_in_range(sdxl):
    pipe, _ = sdxl
    cn = tiny_controlnet(pipe.unet, seed=4, union=True)
    md = MultiDiffusionPipeline.from_pipe(pipe)
    kw = dict(controlnet=cn, control_image=control(64, 64), height=64, width=64, overlap=0,
           progress=False)
    with pytest.raises(mdtools.ConfigError, match="control_mode is required"):
        md(PROMPT, **kw)
    with pytest.raises(mdtools.ConfigError, match=r"control_mode \[9\] is out of range.*6 control types"):
        md(PROMPT, control_mode=9, **kw)


# ---- SD3: latent-space control ------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd3():
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    from .test_dit import make_sd3_pipe

    pipe = make_sd3_pipe()
    torch.manual_seed(2)  # two layers: the last one is context-pre-only and takes no control samples
    pipe.transformer = SD3Transformer2DModel.from_config({**pipe.transformer.config, "num_layers": 2}).eval()
    with torch.no_grad():  # a near-deterministic posterior (std e^-15): diffusers samples, mdtools takes the mode
        conv = pipe.vae.encoder.conv_out
        conv.weight[16:] = 0
        conv.bias[16:] = -30.0
    torch.manual_seed(3)
    cn = SD3ControlNetModel.from_config({**pipe.transformer.config, "num_layers": 1, "extra_conditioning_channels": 0})
    return pipe, randomize_zeros(cn, seed=3)


def test_sd3_one_window_equals_diffusers_sd3_controlnet_pipeline(sd3, monkeypatch):
    from diffusers import StableDiffusion3ControlNetPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    pipe, cn = sd3
    ref = StableDiffusion3ControlNetPipeline(**{k: v for k, v in pipe.components.items()
                                                if k not in ("image_encoder", "feature_extractor")}, controlnet=cn)
    ref.set_progress_bar_config(disable=True)
    from PIL import Image

    # a PIL image: diffusers' SD3 ControlNet pipeline normalises PIL images to [-1, 1] but passes tensors as they are
    ctl = Image.fromarray((control(32, 32, seed=4)[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    kw = dict(height=32, width=32, num_inference_steps=3, guidance_scale=4.0, output_type="latent",
              controlnet_conditioning_scale=0.8, control_guidance_end=0.7)
    with monkeypatch.context() as m:  # diffusers encodes the control with a posterior sample, mdtools with its mode
        m.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
        want = ref(PROMPT, control_image=ctl, generator=torch.Generator().manual_seed(2), **kw).images
    md = MultiDiffusionPipeline.from_pipe(ref)
    out = md(PROMPT, control_image=ctl, window=32, overlap=0, generator=torch.Generator().manual_seed(2),
             progress=False, **kw)
    assert diff(out.latents, want) <= 1e-5
    plain = md(PROMPT, controlnet=None, window=32, overlap=0, generator=2, progress=False,
               **{k: v for k, v in kw.items() if "control" not in k}).latents
    assert diff(plain, want) > 1e-3
    assert out.record.extra["cost"]["controlnet_evaluations"] == 2 * 2 and out.record.extra["controlnet"]["vae_encodes"] == 1


def test_sd3_two_views_crop_the_latent_control(sd3):
    """The canvas's control image is VAE-encoded once and each view's ControlNet gets its latent box of it
    (as ComfyUI-TiledDiffusion slices latent-space hints), duplicated for CFG."""
    pipe, cn = sd3
    md = MultiDiffusionPipeline.from_pipe(pipe)
    ctl = control(32, 64, seed=5)
    seen = []
    handle = cn.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["controlnet_cond"].clone()),
                                          with_kwargs=True)
    try:
        md(PROMPT, controlnet=cn, control_image=ctl, height=32, width=64, window=32, overlap=0, num_inference_steps=1,
           guidance_scale=4.0, view_batch_size=1, output_type="latent", progress=False, generator=1)
    finally:
        handle.remove()
    with torch.no_grad():  # force_zeros_for_pooled_projection: no shift factor, as diffusers' SD3 ControlNet pipeline
        lat = pipe.vae.encode(2 * ctl - 1).latent_dist.mode() * pipe.vae.config.scaling_factor
    assert len(seen) == 2
    for got, box in zip(seen, (slice(0, 16), slice(16, 32))):
        assert got.shape == (2, 16, 16, 16) and diff(got, torch.cat([lat[..., box]] * 2)) <= 1e-6


def test_sd3_refuses_guess_mode_and_flux_controlnets(sd3):
    from diffusers import FluxControlNetModel

    pipe, cn = sd3
    md = MultiDiffusionPipeline.from_pipe(pipe)
    kw = dict(control_image=control(32, 32), height=32, width=32, window=32, overlap=0, progress=False)
    with pytest.raises(mdtools.ConfigError, match="guess_mode applies to SD / SDXL ControlNets"):
        md(PROMPT, controlnet=cn, guess_mode=True, **kw)
    flux_cn = FluxControlNetModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                  axes_dims_rope=(2, 2, 4))
    with pytest.raises(mdtools.ConfigError, match="FluxControlNetModel .* is not supported per view yet"):
        md(PROMPT, controlnet=flux_cn, **kw)
