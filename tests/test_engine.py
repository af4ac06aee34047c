"""The engine against outside references: diffusers' own pipelines and exact identities."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mdtools
from mdtools import MultiDiffusion, MultiDiffusionPipeline, get_kernel, plan_views
from mdtools.plan import CIRCULAR_MODES

from .conftest import make_sd_pipe

PROMPT = "a photo of a beach"


# ---- fusion identities -------------------------------------------------------------

class Pointwise:
    """D(x, t) = c(t) * x: every view agrees, so fusion must change nothing."""

    def __call__(self, x, t, views):
        return x * (0.5 + 0.001 * float(t))


@pytest.mark.parametrize("kernel", sorted(mdtools.KERNELS))
@pytest.mark.parametrize("circular", CIRCULAR_MODES)
@pytest.mark.parametrize("overlap", [0, 16, 40])
def test_pointwise_denoiser_fused_equals_unfused(kernel, circular, overlap):
    plan = plan_views(96, 200, window=48, overlap=overlap, scale=1, circular=circular)
    md = MultiDiffusion(Pointwise(), plan, get_kernel(kernel), view_batch_size=3)
    x = torch.randn(2, 3, 96, 200)
    t = torch.tensor(500)
    out = md(x, t)
    assert torch.allclose(out, Pointwise()(x, t, []), atol=1e-6, rtol=1e-5)


class ViewLeft:
    """Returns each view's left column everywhere in that view: shows which views are fused."""

    def __call__(self, x, t, views):
        b = x.shape[0] // len(views)
        vals = torch.tensor([float(v.left) for v in views for _ in range(b)])
        return vals[:, None, None, None].expand_as(x).clone()


@pytest.mark.parametrize("circular", ["x", "both"])
def test_circular_wrap_seam_is_fused_by_views_crossing_the_border(circular):
    plan = plan_views(64, 256, window=64, overlap=16, scale=1, circular=circular)
    W = plan.latent_width
    crossing = [v for v in plan.views if v.left + v.width > W]
    assert crossing
    md = MultiDiffusion(ViewLeft(), plan, get_kernel("uniform"))
    out = md(torch.zeros(1, 1, 64, 256), torch.tensor(1))
    # column 0 is covered by the view starting at 0 AND the crossing view: average > 0
    assert out[0, 0, 0, 0] > 0
    flat = plan_views(64, 256, window=64, overlap=16, scale=1)
    out_flat = MultiDiffusion(ViewLeft(), flat, get_kernel("uniform"))(torch.zeros(1, 1, 64, 256), torch.tensor(1))
    assert out_flat[0, 0, 0, 0] == 0
    if circular == "both":
        assert any(v.top + v.height > plan.latent_height for v in plan.views)


def test_weighted_average_matches_numpy_formula():
    """Eq. 5 with weights: sum_i W_i D_i / sum_i W_i, computed independently with NumPy."""
    plan = plan_views(32, 80, window=32, overlap=16, scale=1)
    k = get_kernel("gaussian", sigma=0.2)

    class Noisy:
        def __call__(self, x, t, views):
            g = torch.Generator().manual_seed(sum(v.left for v in views))
            return torch.randn(x.shape, generator=g)

    preds = {}

    class Recording(Noisy):
        def __call__(self, x, t, views):
            out = super().__call__(x, t, views)
            for i, v in enumerate(views):
                preds[v] = out[i].numpy()
            return out

    out = MultiDiffusion(Recording(), plan, k, view_batch_size=2)(torch.zeros(1, 1, 32, 80), torch.tensor(0))
    num = np.zeros((32, 80))
    den = np.zeros((32, 80))
    w = k(32, 32, overlap=(16, 16), dtype=torch.float64).numpy()
    for v, p in preds.items():
        num[v.top:v.top + 32, v.left:v.left + 32] += w * p[0]
        den[v.top:v.top + 32, v.left:v.left + 32] += w
    assert np.allclose(out[0, 0].numpy(), num / den, atol=1e-5)


# ---- against diffusers pipelines --------------------------------------------------------

@pytest.mark.parametrize("prediction_type, rescale", [("epsilon", 0.0), ("v_prediction", 0.7)])
def test_single_window_equals_stable_diffusion_pipeline(prediction_type, rescale):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = make_sd_pipe()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    ref = StableDiffusionPipeline(**pipe.components)
    ref.set_progress_bar_config(disable=True)
    kw = dict(height=64, width=64, num_inference_steps=4, guidance_scale=6.0, guidance_rescale=rescale,
              negative_prompt="city", output_type="latent")
    want = ref(PROMPT, generator=torch.Generator().manual_seed(7), **kw).images
    md = MultiDiffusionPipeline.from_pipe(pipe)
    got = md(PROMPT, window=64, overlap=0, kernel="gaussian", generator=torch.Generator().manual_seed(7),
             progress=False, **kw).latents
    assert md.unet is pipe.unet  # components shared, not copied
    assert (got - want).abs().max().item() <= 1e-5


def test_matches_diffusers_panorama_pipeline_on_a_fully_covered_canvas():
    from diffusers import StableDiffusionPanoramaPipeline

    pipe = make_sd_pipe(sample_size=64)  # get_views assumes an 8x VAE: 4-block VAE
    pano = StableDiffusionPanoramaPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"})
    pano.set_progress_bar_config(disable=True)
    kw = dict(height=576, width=576, num_inference_steps=3, guidance_scale=7.5, output_type="latent")
    want = pano(PROMPT, generator=torch.Generator().manual_seed(3), view_batch_size=2, **kw).images
    md = MultiDiffusionPipeline.from_pipe(pipe)
    out = md(PROMPT, window=512, overlap=448, kernel="uniform", generator=torch.Generator().manual_seed(3),
             view_batch_size=4, progress=False, **kw)
    assert out.plan.n_views == 4
    assert (out.latents - want).abs().max().item() <= 1e-4


def test_output_invariant_to_view_batch_size(sd_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    kw = dict(height=64, width=256, overlap=32, num_inference_steps=3, output_type="latent", progress=False)
    a = md(PROMPT, view_batch_size=1, generator=1, **kw).latents
    b = md(PROMPT, view_batch_size=3, generator=1, **kw).latents
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "heun", "pndm"])
def test_schedulers_run_with_finite_output(name):
    md = MultiDiffusionPipeline.from_pipe(make_sd_pipe())
    md.set_scheduler(name)
    out = md(PROMPT, height=64, width=192, overlap=32, num_inference_steps=4, generator=0,
             output_type="np", progress=False)
    assert np.isfinite(out.images).all() and out.images.shape == (1, 64, 192, 3)
    assert out.record.extra["finite"]


def test_multistep_solver_needs_no_scheduler_copies(sd_pipe):
    """One step per canvas: the solver history has the canvas shape, never a view's."""
    md = MultiDiffusionPipeline.from_pipe(copy.copy(sd_pipe))
    md.pipe.scheduler = copy.deepcopy(sd_pipe.scheduler)
    md.set_scheduler("dpmpp_2m")
    md(PROMPT, height=64, width=192, overlap=32, num_inference_steps=3, generator=0, output_type="latent",
       progress=False)
    hist = [m for m in md.scheduler.model_outputs if m is not None]
    assert hist and all(m.shape[-2:] == (8, 24) for m in hist)


def test_callback_and_record(sd_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    seen = []
    out = md(PROMPT, height=64, width=192, overlap=32, num_inference_steps=3, generator=0, output_type="pil",
             callback=seen.append, diagnostics_map=True, metrics=["seam_structure", "tv"], progress=False)
    assert set(out.metrics) == {"seam_structure", "tv"} and out.metrics["tv"] > 0
    assert [s["step"] for s in seen] == [0, 1, 2]
    assert seen[0]["prediction"].shape == seen[0]["latents"].shape == (1, 4, 8, 24)
    assert seen[0]["disagreement"] > 0 and seen[0]["disagreement_map"].shape == (8, 24)
    assert out.images[0].size == (192, 64)
    rec = out.record
    n = out.plan.n_views
    assert rec.counts["views"] == n and rec.counts["model_evaluations"] == n * 2 * 3
    assert rec.counts["model_forward_calls"] == -(-n // 4) * 3
    assert rec.phases["denoise"].seconds >= rec.phases["model_forward"].seconds > 0
    assert rec.phases["decode"].peak_rss is None or rec.phases["decode"].peak_rss > 0
    assert '"model_evaluations"' in rec.to_json()


def test_sdxl_runs_and_view_crops_change_conditioning(sdxl_pipe):
    md = MultiDiffusionPipeline.from_pipe(sdxl_pipe)
    assert md.kind == "sdxl"
    kw = dict(height=64, width=128, overlap=32, num_inference_steps=2, output_type="latent", progress=False)
    a = md(PROMPT, generator=0, **kw).latents
    b = md(PROMPT, generator=0, sdxl_view_crops=True, **kw).latents
    assert torch.isfinite(a).all() and not torch.equal(a, b)


def test_sdxl_single_window_equals_diffusers(sdxl_pipe):
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline(**sdxl_pipe.components)
    ref.set_progress_bar_config(disable=True)
    kw = dict(height=64, width=64, num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    want = ref(PROMPT, generator=torch.Generator().manual_seed(2), **kw).images
    got = MultiDiffusionPipeline.from_pipe(sdxl_pipe)(
        PROMPT, window=64, overlap=0, generator=torch.Generator().manual_seed(2), progress=False, **kw).latents
    assert (got - want).abs().max().item() <= 1e-5


def test_pixel_space_unet_runs_without_vae():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    md = MultiDiffusionPipeline.from_pipe(DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)))
    assert md.kind == "pixel" and md.vae_scale_factor == 1 and md.native_window == 16
    out = md(None, height=16, width=40, overlap=8, num_inference_steps=3, generator=0, output_type="np",
             progress=False)
    assert out.images.shape == (1, 16, 40, 3) and np.isfinite(out.images).all()


def test_img2img_strength_runs_the_last_part_of_the_schedule(sd_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    init = torch.zeros(1, 4, 8, 24)
    seen = []
    out = md(PROMPT, height=64, width=192, overlap=32, num_inference_steps=6, init_latents=init, strength=0.5,
             generator=0, output_type="latent", callback=seen.append, progress=False)
    md.scheduler.set_timesteps(6)
    assert [int(s["timestep"]) for s in seen] == [int(t) for t in md.scheduler.timesteps[3:]]
    assert out.record.counts["steps"] == 3 and torch.isfinite(out.latents).all()
    with pytest.raises(mdtools.ConfigError, match=r"strength must be in \(0, 1\]"):
        md(PROMPT, height=64, width=192, overlap=32, init_latents=init, strength=0.0, progress=False)
    with pytest.raises(mdtools.ConfigError, match=r"init_latents has shape \(1, 4, 8, 8\); it must be \(1, 4, 8, 24\)"):
        md(PROMPT, height=64, width=192, overlap=32, init_latents=init[..., :8], progress=False)


def test_global_pass_adds_a_low_res_pass_and_counts_it(sd_pipe):
    from mdtools.refine import generate_with_global_pass

    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    out = generate_with_global_pass(md, PROMPT, height=64, width=256, factor=2, strength=0.5, overlap=32,
                                    num_inference_steps=4, generator=0, output_type="latent", progress=False)
    gp = out.record.extra["global_pass"]
    low = plan_views(32, 128, window=64, overlap=32)  # the low-res canvas with the same window
    assert gp["low_res"] == [32, 128] and gp["low_res_evaluations"] == low.n_views * 2 * 4
    assert out.record.counts["model_evaluations"] == gp["low_res_evaluations"] + out.plan.n_views * 2 * 2
