"""Global low-resolution pass (the seed article's step 4; claim C6).

First the whole canvas is generated at 1/`factor` of its size, where a window sees most
of it and can lay out global structure (sky gradients, horizons). Its latent is upscaled
(bicubic) to the full canvas, noised to `strength` and denoised again with MultiDiffusion
(SDEdit, Meng et al. 2022), so the tiled pass refines detail on a composition that was
decided globally. Both passes use the call's window, overlap and kernel; the low-res
canvas is never smaller than one latent pixel per axis. Its noise is drawn first from the
run's generator, then the full canvas's.

`tiled_method` picks the method of the tiled stage: `multidiffusion` (the default, as
before) or `spotdiffusion` (shifted non-overlapping windows at its defaults, so the call's
overlap must be 0; its shifts are drawn from the run's seed and recorded in the method's
draws). The low-res pass is MultiDiffusion either way. Cost and `estimate` count every
model evaluation of both stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..plan import plan_views
from ..sampling import CallSpec, Run
from .base import Param, is_int, is_num, register
from .multidiffusion import MultiDiffusionMethod
from .spotdiffusion import SpotDiffusionMethod

#: the methods the tiled stage can run (`tiled_method`); the first is the default
TILED_METHODS = ("multidiffusion", "spotdiffusion")


@register
class GlobalPassMethod(MultiDiffusionMethod):
    """Low-res whole-canvas pass, latent upscale, tiled img2img pass at `strength`."""

    name = "global_pass"
    per_step_wrapper = False  # a low-res pass, then a tiled stage: needs the whole pipeline
    PARAMS = {
        "factor": Param(4, lambda v: is_int(v) and v >= 2, "an integer >= 2, e.g. 4", "low-res canvas = canvas / factor"),
        "strength": Param(0.6, lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1], e.g. 0.6",
                          "how much of the schedule the tiled pass re-runs"),
        "tiled_method": Param(TILED_METHODS[0], lambda v: v in TILED_METHODS, f"one of {list(TILED_METHODS)}",
                              "the method of the tiled stage (spotdiffusion needs overlap 0)"),
    }
    supports_regions = False
    supports_img2img = False
    multi_stage = True

    def low_res(self, call: CallSpec) -> tuple[int, int]:
        s = call.scale
        return max(s, call.height // self.factor // s * s), max(s, call.width // self.factor // s * s)

    def low_plan(self, call: CallSpec):
        lh, lw = self.low_res(call)
        return plan_views(lh, lw, window=call.window, overlap=call.overlap, scale=call.scale, circular=call.circular)

    def check(self, call: CallSpec) -> None:
        super().check(call)
        try:
            self.low_plan(call)
        except ConfigError as e:
            raise ConfigError(f"method global_pass: the low-res canvas {self.low_res(call)} cannot be planned: {e}") from None
        if self.tiled_method == "spotdiffusion":
            try:
                SpotDiffusionMethod().check(call)
            except ConfigError as e:
                raise ConfigError(f"method global_pass with method.tiled_method=spotdiffusion: {e}") from None

    def noise_shape(self, call: CallSpec, channels: int) -> tuple[int, ...]:
        lh, lw = self.low_res(call)
        return (call.batch, channels, lh // call.scale, lw // call.scale)

    def estimate(self, call: CallSpec) -> dict[str, float]:
        """Both stages: the low-res pass's views x all steps, the tiled stage's windows x its steps
        (SpotDiffusion wraps its windows: as many per step as the call's plan at overlap 0)."""
        cfg = call.cfg_factor
        tiled = max(1, int(call.steps * self.strength))
        return {"unet_evaluations": (self.low_plan(call).n_views * call.steps + call.plan.n_views * tiled) * cfg * call.batch}

    def generate(self, run: Run) -> torch.Tensor:
        call = run.call
        low = self.low_plan(call)
        lat, ts = run.start_latents(self.noise_shape(call, run.channels))
        low_lat = run.denoise(self, lat, ts, low)
        lo_seconds = sum(f.forward_seconds for f in run.fusers)
        up = F.interpolate(low_lat.float(), size=(call.plan.latent_height, call.plan.latent_width), mode="bicubic",
                           align_corners=False).to(low_lat.dtype)
        ts = run.schedule(self.strength)
        noise = run.randn((call.batch, run.channels, call.plan.latent_height, call.plan.latent_width))
        run.noise = noise
        lat = run.scheduler.add_noise(up, noise, ts[:1].repeat(call.batch))
        self.draws = {}
        run.extra["global_pass"] = {
            "factor": self.factor, "strength": self.strength, "tiled_method": self.tiled_method,
            "low_res": list(self.low_res(call)),
            "low_res_views": low.n_views, "low_res_evaluations": sum(f.model_evaluations for f in run.fusers),
            "low_res_forward_seconds": lo_seconds,
        }
        if self.tiled_method == "multidiffusion":
            return run.denoise(self, lat, ts, call.plan)
        tiled = SpotDiffusionMethod()
        out = run.denoise(tiled, lat, ts, call.plan)
        self.draws = dict(tiled.draws)  # the tiled stage's shifts, for reproduction
        return out
