"""The naive baseline (method "naive_tiles"): per-tile img2img on a non-overlapping grid, pasted hard.

The reference redraws each tile alone with diffusers' StableDiffusionImg2ImgPipeline (written here:
encode the tile's posterior mean, img2img, decode, uint8) and pastes it at its place; nothing is blended.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdtools import ConfigError, MultiDiffusionPipeline
from mdtools.methods import get_method

from .conftest import make_sd_pipe

PROMPT = "a photo of a beach"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def md():
    return MultiDiffusionPipeline.from_pipe(make_sd_pipe())  # native window 64 px


@torch.no_grad()
def redraw_alone(md, tile: np.ndarray, *, strength: float, steps: int, g: float, seed: int) -> np.ndarray:
    """One tile (uint8 HxWx3) through diffusers' img2img on its own: 255 x the decoded image in [0, 1] (float)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    px = torch.from_numpy(tile.astype(np.float32) / 255).permute(2, 0, 1)[None]
    vae = md.pipe.vae
    lat = vae.encode(px * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    ref = StableDiffusionImg2ImgPipeline(**md.pipe.components)
    ref.set_progress_bar_config(disable=True)
    out = ref(PROMPT, image=lat, strength=strength, num_inference_steps=steps, guidance_scale=g,
              generator=torch.Generator().manual_seed(seed), output_type="latent").images
    dec = vae.decode(out / vae.config.scaling_factor).sample
    return (255 * ((dec[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).double().numpy())


def test_each_tile_is_its_own_redraw_pasted_hard(md):
    md.set_scheduler("ddim")
    g = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, 6, 11, generator=g), size=(96, 176), mode="bilinear").clamp(0, 1)
    source = (255 * image[0].permute(1, 2, 0).numpy()).astype(np.uint8)
    out, counts = get_method("naive_tiles", tile_width=64).upscale_image(
        md, image, prompt=PROMPT, negative_prompt=None, strength=0.7, steps=3, guidance_scale=3.0, seed=4)
    got = np.round(out[0].permute(1, 2, 0).double().numpy() * 255)
    # grid ceil(176/64) x ceil(96/64) = 3 x 2; the last column is 48 px wide, the last row 32 px high
    boxes = [(x, y, min(x + 64, 176), min(y + 64, 96)) for y in (0, 64) for x in (0, 64, 128)]
    ref = np.zeros(source.shape)
    for x1, y1, x2, y2 in boxes:
        ref[y1:y2, x1:x2] = redraw_alone(md, source[y1:y2, x1:x2], strength=0.7, steps=3, g=3.0, seed=4)
    # every pixel comes from its own tile alone (no blending, no context), to the last uint8 level; a level may
    # differ only where the reference's float lies within 1e-3 levels of the truncation boundary
    lo, hi = np.floor(ref - 1e-3), np.floor(ref + 1e-3)
    assert ((got == lo) | (got == hi)).all()
    assert counts["tiles"] == 6 and counts["grid"] == [2, 3] and counts["seam_fix_jobs"] == 0
    assert counts["unet_evaluations"] == 6 * 2 * 2 and counts["vae_encodes"] == counts["vae_decodes"] == 6
    # the hard edge: columns 63 | 64 come from two independent redraws, which differ from the source there
    assert not np.array_equal(got[:, 63:65], source[:, 63:65].astype(float))


def test_refusals_and_bad_values(md, monkeypatch):
    calls = []
    monkeypatch.setattr(md.unet, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ConfigError, match=r"^naive_tiles upscales an existing image; use md.upscale\(\.\.\.\)"):
        md(PROMPT, height=64, width=128, overlap=32, method="naive_tiles", progress=False)
    with pytest.raises(ConfigError, match=r"method.tile_width=12 is invalid.*multiple of 8 px, e.g. 512"):
        get_method("naive_tiles", tile_width=12)
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['padding'\]; its parameters: \['tile_height', 'tile_width'\]"):
        get_method("naive_tiles", padding=8)
    meth = get_method("naive_tiles")
    with pytest.raises(ConfigError, match=r"strength must be in \(0, 1\]"):
        meth.upscale_image(md, torch.rand(1, 3, 64, 64), prompt=PROMPT, negative_prompt=None, strength=0.0, steps=4,
                           guidance_scale=1.0, seed=0)
    assert calls == []
