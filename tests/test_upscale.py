"""`upscale` / `md.upscale`: the path equals its parts run by hand, the record, image-space dispatch, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mdtools.errors import ConfigError
from mdtools.methods import Method
from mdtools.pipeline import MultiDiffusionPipeline
from mdtools.upscale import canvas_size, color_fix, resize_image, upscale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def md(sd_pipe):
    return MultiDiffusionPipeline.from_pipe(sd_pipe)  # window 64 px, VAE factor 8, DDIM


def _src(h: int = 32, w: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


class _Calls:
    """Counts forwards of the UNet and the VAE: bad input must fail before any of them."""

    def __init__(self, md):
        self.n = 0
        self.handles = [m.register_forward_pre_hook(self.hook) for m in (md.pipe.unet, md.pipe.vae.encoder, md.pipe.vae.decoder)]

    def hook(self, *_):
        self.n += 1

    def close(self):
        for h in self.handles:
            h.remove()


def test_upscale_equals_the_path_by_hand(md):
    src = _src()
    kw = dict(prompt="a photo", steps=4, strength=0.5, seed=3, guidance_scale=5.0, overlap=32)
    r = md.upscale(src, scale=2, vae_tiling={"tiling": True, "tile": 32}, progress=False, **kw)
    assert r.image.size == (96, 64) and r.tensor.shape == (1, 3, 64, 96)
    # by hand: Lanczos, full encode (posterior mode), md img2img, full decode
    t = torch.from_numpy(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    canvas = resize_image(t, (64, 96), "lanczos")
    vae = md.pipe.vae
    with torch.no_grad():
        init = vae.encode(canvas * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        lat = md(kw["prompt"], height=64, width=96, window=64, overlap=32, init_latents=init, strength=0.5,
                 generator=3, num_inference_steps=4, guidance_scale=5.0, output_type="latent", progress=False).latents
        ref = ((vae.decode(lat / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(r.tensor, ref, atol=1e-4, rtol=0)
    rec = r.record
    assert {"resize", "encode", "denoise", "decode", "total"} <= set(rec["phases"])
    assert all(rec["phases"][p]["seconds"] > 0 for p in ("resize", "encode", "denoise", "decode"))
    # 4 steps x strength 0.5 = 2 steps, 2 views, CFG 2 evaluations each
    assert rec["counts"]["model_evaluations"] == 8 and rec["counts"]["vae_encodes"] == 1 == rec["counts"]["vae_decodes"]
    assert rec["upscale"]["canvas_size"] == [64, 96] and rec["upscale"]["strength"] == 0.5


def test_color_fix_is_applied_to_the_decode_against_the_resized_source(md):
    kw = dict(scale=2, prompt="a photo", steps=3, overlap=32, progress=False)
    plain = upscale(md, _src(), **kw)
    r = upscale(md, _src(), color_fix="adain", color_fix_tiles=True, **kw)
    assert "color_fix" in r.record["phases"] and r.record["upscale"]["color_fix"] == "adain"
    canvas = resize_image(torch.from_numpy(np.asarray(_src(), dtype=np.float32) / 255).permute(2, 0, 1)[None],
                          (64, 96), "lanczos")
    tiles = [(0, 0, 64, 64), (0, 32, 64, 64)]  # the plan's two views in pixels
    torch.testing.assert_close(r.tensor, color_fix(plain.tensor, canvas, "adain", tiles=tiles))


class _PixelMethod(Method):
    """A stand-in image-space method (contract 3): adds 0.1 and reports counts."""

    name = "test_pixel"
    image_space = True

    def upscale_image(self, md, image, *, prompt, negative_prompt, strength, steps, guidance_scale, seed,
                      controlnet=None, control_image=None, controlnet_conditioning_scale=1.0, progress=False):
        self.seen = dict(shape=tuple(image.shape), strength=strength, steps=steps, seed=seed)
        return (image + 0.1).clamp(0, 1), {"unet_evaluations": 7, "vae_encodes": 2, "vae_decodes": 2, "tiles": 2}


def test_image_space_methods_get_the_resized_canvas(md):
    m = _PixelMethod()
    r = upscale(md, _src(), scale=2, method=m, strength=0.3, steps=5, seed=9, overlap=32, progress=False)
    assert m.seen == {"shape": (1, 3, 64, 96), "strength": 0.3, "steps": 5, "seed": 9}
    canvas = resize_image(torch.from_numpy(np.asarray(_src(), dtype=np.float32) / 255).permute(2, 0, 1)[None],
                          (64, 96), "lanczos")
    torch.testing.assert_close(r.tensor, (canvas + 0.1).clamp(0, 1))
    assert r.record["counts"]["model_evaluations"] == 7 and r.record["counts"]["tiles"] == 2


def test_callable_upscaler_and_conversions(md):
    calls = []

    def nearest2x(t):
        calls.append(tuple(t.shape))
        return t.repeat_interleave(2, -1).repeat_interleave(2, -2)

    rgba = _src().convert("RGBA")
    r = upscale(md, rgba, scale=2, upscaler=nearest2x, prompt="a photo", steps=3, overlap=32, progress=False)
    assert calls == [(1, 3, 32, 48)]
    assert any("alpha dropped" in n for n in r.record["upscale"]["notes"])
    grey16 = Image.fromarray((np.random.RandomState(1).rand(32, 48) * 65535).astype(np.uint16))
    r = upscale(md, grey16, scale=2, prompt="a photo", steps=3, overlap=32, progress=False)
    assert any("16-bit" in n for n in r.record["upscale"]["notes"])
    r = upscale(md, _src().convert("P"), scale=2, prompt="a photo", steps=3, overlap=32, progress=False)
    assert any("palette" in n for n in r.record["upscale"]["notes"])


def test_lanczos_in_float_matches_pil_8bit_on_a_smooth_image():
    y, x = np.mgrid[0:32, 0:48]
    smooth = np.stack([x / 47, y / 31, 0.5 + 0.3 * np.sin(x / 7) * np.cos(y / 5)], -1)
    src = Image.fromarray((smooth * 255).round().astype(np.uint8))
    t = torch.from_numpy(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    ours = resize_image(t, (64, 96), "lanczos")[0].permute(1, 2, 0).numpy()
    pil8 = np.asarray(src.resize((96, 64), Image.LANCZOS), dtype=np.float32) / 255
    assert np.abs(ours - pil8).max() <= 1.51 / 255  # PIL rounds to 8 bits after each of its two passes


def test_canvas_size_names_the_nearest_valid():
    assert canvas_size((32, 48), 2, 8) == (64, 96)
    assert canvas_size((32, 48), (64, 128), 8) == (64, 128)
    with pytest.raises(ConfigError, match=r"scale=\(80, 120\), the nearest valid size"):
        canvas_size((33, 50), 2.4, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(strength=0), "strength must be in"),
    (dict(strength=1.5), "strength must be in"),
    (dict(strength=True), "strength must be in"),
    (dict(strength=0.2, steps=4), "gives 0 denoising steps"),
    (dict(scale=1.9), "nearest valid size"),
    (dict(scale=1), "too small for the window"),
    (dict(method="demofusion"), "does not support img2img"),
    (dict(method="nope"), "not a known method"),
    (dict(color_fix="hist"), "color_fix"),
    (dict(upscaler="esrgan"), "upscaler"),
    (dict(noise_inversion={"steps": 0}), "noise_inversion.steps"),
    (dict(noise_inversion={"kernel": 3}), "unknown key"),
])
def test_bad_input_fails_before_any_model_call(md, kwargs, match):
    calls = _Calls(md)
    try:
        with pytest.raises(ConfigError, match=match):
            upscale(md, _src(), **{"scale": 2, "overlap": 32, "progress": False, **kwargs})
    finally:
        calls.close()
    assert calls.n == 0


def test_bad_images(md, tmp_path):
    for bad, match in ((np.zeros((4, 4, 2), np.uint8), "array must be"), (torch.full((1, 3, 8, 8), 2.0), "in \\[0, 1\\]"),
                       (tmp_path / "missing.png", "no image file"), ("not an image", "no image file"), (3, "must be a PIL")):
        with pytest.raises(ConfigError, match=match):
            upscale(md, bad, scale=2, overlap=32, progress=False)
    Image.new("I;16", (48, 32)).save(tmp_path / "deep.png")
    r = upscale(md, tmp_path / "deep.png", scale=2, prompt="a photo", steps=3, overlap=32, progress=False)
    assert r.image.size == (96, 64)


def test_controlnet_gets_the_resized_source(md):
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    cn = ControlNetModel(block_out_channels=(16, 32), layers_per_block=1, in_channels=4, cross_attention_dim=32,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), norm_num_groups=8,
                         attention_head_dim=4, conditioning_embedding_out_channels=(8, 8, 8, 16)).eval()
    with torch.no_grad():  # a fresh ControlNet's zero convolutions output nothing: give them weights
        for p in cn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = dict(scale=2, prompt="a photo", steps=3, overlap=32, progress=False, seed=1)
    plain = upscale(md, _src(), **kw)
    with_cn = upscale(md, _src(), controlnet=cn, **kw)
    given = upscale(md, _src(), controlnet=cn, control_image=_src(), **kw)  # at the source size: resized alike
    assert (with_cn.tensor - plain.tensor).abs().max() > 1e-4
    torch.testing.assert_close(given.tensor, with_cn.tensor)
    assert any("control image" in n for n in with_cn.record["upscale"]["notes"])
    with pytest.raises(ConfigError, match="must match the source"):
        upscale(md, _src(), controlnet=cn, control_image=_src(40, 40), **kw)


def test_cli_refuses_bad_input_before_loading_and_writes_nothing(tmp_path, capsys):
    from mdtools.cli import main

    src = tmp_path / "in.png"
    _src().save(src)
    out = tmp_path / "out.png"
    for extra, match in ((["--scale", "1.9"], "nearest valid size"), (["--strength", "0"], "strength must be in"),
                         (["--method", "demofusion"], "does not support img2img"), (["--scale", "2x"], "HEIGHTxWIDTH"),
                         (["--scale", "4", "--controlnet", "nowhere"], "neither an embedded name"),
                         (["--control-image", str(src)], "--control-image needs --controlnet"),
                         (["--scale", "4", "--controlnet", "toy-scenes-tile", "--control-image", str(tmp_path / "odd.png")],
                          "it must match the source")):
        _src(40, 40).save(tmp_path / "odd.png")
        assert main(["upscale", str(src), "--out", str(out), "--model", "toy-scenes", *extra]) == 2
        assert match in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()
