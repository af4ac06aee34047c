"""DemoFusion (Du, Chang, Ma, Liang, Chen, CVPR 2024): progressive upscaling with skip
residuals and dilated sampling.

Stage 1 generates the canvas at 1/S of its size (S = `stages`, default the number of
native windows along the longer side), where the model sees the whole composition. Each
later stage s = 2..S upsamples the previous stage's latents (bicubic) to s/S of the canvas
and denoises them again over the full schedule (the official pipeline_demofusion_sdxl.py):

- skip residual (Sec. 3.2): with the upsampled latents noised to every timestep by one
  noise draw, z_t = add_noise(up, noise, t), before each model call
  x <- (1 - c1) x + c1 z_t,  c1 = cf^cosine_scale_1,  cf = (1 + cos(pi (T - t) / T)) / 2
- local MultiDiffusion: windows of the call's window size at `stride` (default half a
  window, the official 64 of 128 latents), the last window clamped to the edge, each
  jittered by up to (window - stride) / 4 latents (zero padding outside the canvas),
  plain averaging;
- dilated sampling (Sec. 3.3): the s^2 interleaved sub-latents x[h::s, w::s] of the
  canvas (zero-padded at the top/left to a multiple of s) are denoised as global views;
  their model input is a Gaussian-smoothed copy (kernel 2s - 1, std sigma * c3,
  c3 = 0.99 cf^cosine_scale_3 + 0.01, renormalised to the unsmoothed mean and std), the
  step is taken from the unsmoothed latents;
- fusion: (1 - c2) local + c2 global, c2 = cf^cosine_scale_2;
- after each stage the latents are renormalised to stage 1's mean and std.

With DDIM, averaging per-view steps (as the official code does) equals one canvas step
on the same combination of predictions, which is what mdtools does for every scheduler.
Defaults are the official pipeline's: cosine scales 3, 1, 1, sigma 1.0 (the signature at
the commit read; the README example and some ports use 0.8), stride half a window.
Departures: the official first stage runs one UNet call on the whole small canvas; mdtools
runs MultiDiffusion there with the call's plan, which is the same when the stage-1 canvas
fits one window. On an axis where a stage is smaller than the window, the window shrinks
to the canvas (the official slicing would feed a short view). SDXL crop
micro-conditioning of local views follows `sdxl_view_crops`, not the official padded-frame
offsets. Circular canvases are not supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fusion import ViewSet
from ..plan import TilePlan, View, plan_views
from ..sampling import CallSpec, Run, StepContext
from .base import Method, Param, is_int, is_num, register


def _gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian filter with zero padding (the official gaussian_filter)."""
    c = torch.arange(size, dtype=x.dtype, device=x.device)
    g = torch.exp(-((c - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(x, k, padding=size // 2, groups=x.shape[1])


def local_starts(length: int, window: int, stride: int) -> list[int]:
    """The official get_views along one axis: starts k * stride, the last clamped to the edge."""
    if length <= window:
        return [0]
    n = int((length - window) / stride - 1e-6) + 2
    return [min(k * stride, length - window) for k in range(n)]


@register
class DemoFusionMethod(Method):
    """Progressive upscaling: stage 1 at 1/S size, then stages with skip residual and dilated sampling."""

    name = "demofusion"
    kernel_from_call = False  # its own view sets and weights per stage
    no_controlnet = ("its dilated global views sample the canvas with a stride and its jittered views reach over "
                     "the edge, which have no control-image crop; use multidiffusion, mixture, spotdiffusion or "
                     "global_pass")
    PARAMS = {
        "stages": Param(None, lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1, e.g. 2",
                        "number of stages S (default: native windows along the longer side)"),
        "stride": Param(None, lambda v: v is None or (is_int(v) and v > 0), "pixels, e.g. 256 for a 512 px window",
                        "stride of the local windows (default: half a window)"),
        "cosine_scale_1": Param(3.0, lambda v: is_num(v) and v >= 0, "a number >= 0, e.g. 3", "skip-residual decay"),
        "cosine_scale_2": Param(1.0, lambda v: is_num(v) and v >= 0, "a number >= 0, e.g. 1", "dilated-sampling decay"),
        "cosine_scale_3": Param(1.0, lambda v: is_num(v) and v >= 0, "a number >= 0, e.g. 1", "Gaussian-filter decay"),
        "sigma": Param(1.0, lambda v: is_num(v) and v > 0, "a number > 0, e.g. 1.0", "std of the Gaussian filter"),
        "jitter": Param(True, lambda v: isinstance(v, bool), "true or false", "random jitter of the local windows"),
        "seed": Param(None, lambda v: v is None or is_int(v), "an integer", "seed of the jitter (default: the run's)"),
    }
    supports_img2img = False
    supports_circular = False
    multi_stage = True

    # ---- geometry --------------------------------------------------------------------
    def n_stages(self, call: CallSpec) -> int:
        if self.stages is not None:
            return self.stages
        return max(1, int(max(call.height / call.window[0], call.width / call.window[1])))

    def stage_size(self, call: CallSpec, s: int) -> tuple[int, int]:
        """Stage s canvas in pixels: s/S of the canvas, floored to the VAE scale factor."""
        S, q = self.n_stages(call), call.scale
        return max(q, int(call.height * s / S) // q * q), max(q, int(call.width * s / S) // q * q)

    def stride_latent(self, call: CallSpec) -> tuple[int, int]:
        q = call.scale
        if self.stride is None:
            return max(1, call.window[0] // q // 2), max(1, call.window[1] // q // 2)
        return self.stride // q, self.stride // q

    def stage_plan(self, call: CallSpec, s: int) -> TilePlan:
        h, w = self.stage_size(call, s)
        return plan_views(h, w, window=call.window, overlap=call.overlap, scale=call.scale)

    def check(self, call: CallSpec) -> None:
        super().check(call)
        if self.stride is not None:
            if self.stride % call.scale:
                raise ConfigError(f"method.stride={self.stride} must be a multiple of the VAE scale factor ({call.scale})")
            if self.stride > min(call.window):
                raise ConfigError(f"method.stride={self.stride} must be <= the window ({min(call.window)} px)")
        S = self.n_stages(call)
        if S > 1 and call.regions:
            raise ConfigError("method 'demofusion' does not take regions")
        for s in range(1, S + 1):
            self.stage_plan(call, s)

    def noise_shape(self, call: CallSpec, channels: int) -> tuple[int, ...]:
        h, w = self.stage_size(call, 1)
        return (call.batch, channels, h // call.scale, w // call.scale)

    def _local_views(self, call: CallSpec, H: int, W: int) -> list[View]:
        wh, ww = min(call.window[0] // call.scale, H), min(call.window[1] // call.scale, W)
        sy, sx = self.stride_latent(call)
        return [View(t, left, wh, ww) for t in local_starts(H, wh, sy) for left in local_starts(W, ww, sx)]

    def estimate(self, call: CallSpec) -> dict[str, float]:
        cfg = call.cfg_factor
        S = self.n_stages(call)
        views = self.stage_plan(call, 1).n_views
        for s in range(2, S + 1):
            h, w = self.stage_size(call, s)
            views += len(self._local_views(call, h // call.scale, w // call.scale)) + s * s
        return {"unet_evaluations": views * call.steps * cfg * call.batch}

    # ---- sampling ----------------------------------------------------------------------
    def generate(self, run: Run) -> torch.Tensor:
        from .multidiffusion import derived_generator

        call = run.call
        S = self.n_stages(call)
        self._gen = derived_generator(run, self.seed, salt=0xDE30)
        self.draws = {"jitter": [], "stage_noise_shapes": []}
        self._s = 1
        lat, ts = run.start_latents(self.noise_shape(call, run.channels))
        latents = run.denoise(self, lat, ts, self.stage_plan(call, 1))
        self._anchor = (latents.mean(), latents.std())
        for s in range(2, S + 1):
            self._s = s
            plan = self.stage_plan(call, s)
            up = F.interpolate(latents, size=(plan.latent_height, plan.latent_width), mode="bicubic")
            ts = run.schedule()
            noise = run.randn(up.shape)
            self.draws["stage_noise_shapes"].append(list(up.shape))
            self._noised = [run.scheduler.add_noise(up, noise, t.reshape(1)) for t in ts]
            self.draws["jitter"].append([])
            latents = run.denoise(self, self._noised[0], ts, plan)
        return latents

    def _cosine(self, ctx: StepContext, t: torch.Tensor) -> float:
        T = ctx.scheduler.config.num_train_timesteps
        return 0.5 * (1 + math.cos(math.pi * (T - float(t)) / T))

    def correct(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        if self._s == 1:
            return latents
        c1 = self._cosine(ctx, t) ** self.cosine_scale_1  # skip residual
        return latents * (1 - c1) + self._noised[i] * c1

    def _jittered(self, ctx: StepContext, H: int, W: int) -> ViewSet:
        call = ctx.call
        base = self._local_views(call, H, W)
        wh, ww = base[0].height, base[0].width
        sy, sx = self.stride_latent(call)
        jy_r, jx_r = (wh - sy) // 4, (ww - sx) // 4
        views, draws = [], []

        def jit(start: int, size: int, length: int, r: int) -> int:
            # the official rule: edge windows jitter outwards only (into the zero padding)
            first, last = start == 0, start + size == length
            if first and last:
                return 0
            lo, hi = (-r, 0) if first else (0, r) if last else (-r, r)
            if not self.jitter or r == 0:
                return 0
            return int(torch.randint(lo, hi + 1, (1,), generator=self._gen))

        for v in base:
            jy, jx = jit(v.top, wh, H, jy_r), jit(v.left, ww, W, jx_r)
            draws.append((jy, jx))
            views.append(View(v.top + jy, v.left + jx, wh, ww))
        self.draws["jitter"][-1].append(draws)
        ones = torch.ones(wh * ww, device=ctx.device)
        return ViewSet.build(views, (H, W), weight=ones, pad=True, device=ctx.device)

    def _dilated(self, ctx: StepContext, Hp: int, Wp: int, s: int) -> ViewSet:
        key = (Hp, Wp, s)
        if getattr(self, "_dil_key", None) != key:
            hs, ws = Hp // s, Wp // s
            r = torch.arange(hs)[:, None] * s
            c = torch.arange(ws)[None, :] * s
            views, idx = [], []
            for h0 in range(s):
                for w0 in range(s):
                    views.append(View(h0, w0, hs, ws))
                    idx.append(((h0 + r) * Wp + (w0 + c)).reshape(-1))
            self._dil = ViewSet(tuple(views), (Hp, Wp), torch.stack(idx).to(ctx.device),
                                torch.ones(s * s, hs * ws, device=ctx.device))
            self._dil_key = key
        return self._dil

    def predict(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor,
                x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._s == 1:
            return super().predict(ctx, i, t, latents, x_in)
        s = self._s
        cf = self._cosine(ctx, t)
        B, C, H, W = latents.shape
        local = ctx.fuse(x_in, t, self._jittered(ctx, H, W))
        # dilated sampling on the canvas zero-padded at the top/left to a multiple of s
        h_pad, w_pad = (s - H % s) % s, (s - W % s) % s
        padded = F.pad(latents, (w_pad, 0, h_pad, 0))
        c3 = 0.99 * cf**self.cosine_scale_3 + 1e-2
        std, mean = padded.std(), padded.mean()
        blur = _gaussian_blur(padded, 2 * s - 1, self.sigma * c3)
        blur = (blur - blur.mean()) / blur.std() * std + mean
        glob = ctx.fuse(ctx.scheduler.scale_model_input(blur, t), t, self._dilated(ctx, H + h_pad, W + w_pad, s))
        glob = glob[:, :, h_pad:, w_pad:]
        c2 = cf**self.cosine_scale_2
        return local * (1 - c2) + glob * c2, latents

    def end(self, ctx: StepContext, latents: torch.Tensor) -> torch.Tensor:
        if self._s == 1:
            return latents
        mean, std = self._anchor
        return (latents - latents.mean()) / latents.std() * std + mean
