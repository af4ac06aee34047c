"""MultiDiffusion (Bar-Tal, Yariv, Lipman, Dekel, ICML 2023) and Mixture of Diffusers (Jiménez 2023).

`multidiffusion`: every step, each view of the fixed plan is denoised and the predictions
are fused with the kernel's weights, F(x) = sum_i W_i D(F_i(x)) / sum_i W_i (Eq. 5, the
closed-form minimiser of Eq. 3); optional region prompts with bootstrapping (Sec. 4.2).

`mixture`: Mixture of Diffusers' exact Gaussian tile weights (kernel "mixture",
var = 0.01, i.e. sigma = 0.1 L, centre (L - 1) / 2) and an optional grid of per-tile
prompts and guidance scales: eps = sum_i G_i eps(F_i(x), c_i) / sum_i G_i, then one
scheduler step on the canvas, as albarji/mixture-of-diffusers does. The grid is the
plan's rows x columns. Departure: the official tiling.py centres the y profile at L / 2
(half a pixel off); mdtools uses (L - 1) / 2 on both axes, as its canvas.py does.
Per-tile seeds of the official code are not supported (one canvas noise).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..fusion import InputFn, ViewSet
from ..kernels import Kernel, get_kernel
from ..sampling import CallSpec, StepContext
from .base import Method, Param, is_int, is_num, register
from .regions import RegionState, bootstrap_draws, check_bootstrap, latent_masks


def _rgb_list(v: Any) -> bool:
    try:
        import numpy as np

        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return False
    return a.ndim == 2 and a.shape[1] == 3


def _int_array(v: Any) -> bool:
    try:
        import numpy as np

        a = np.asarray(v)
    except (TypeError, ValueError):
        return False
    return a.ndim == 3 and np.issubdtype(a.dtype, np.integer)


BOOTSTRAP_PARAMS = {
    "bootstrap_colors": Param(None, lambda v: v is None or _rgb_list(v), "a list of [r, g, b] in [0, 1], one per bootstrap step",
                              "pins the bootstrap background colours (default: drawn from the run's seed)"),
    "bootstrap_choices": Param(None, lambda v: v is None or _int_array(v),
                               "an integer array (bootstrap_steps, views, regions) of colour indices",
                               "pins which colour each step, view and region uses (default: drawn)"),
    "bootstrap_seed": Param(None, lambda v: v is None or is_int(v), "an integer",
                            "seed of the bootstrap draws (default: derived from the run's generator)"),
}


def derived_generator(ctx: StepContext, seed: int | None, salt: int) -> torch.Generator:
    """A CPU generator for a method's own draws, so they never shift the ctx's noise stream.
    Seeded by `seed`, or by the ctx generator's initial seed plus `salt`."""
    if seed is None:
        g = ctx.generator[0] if isinstance(ctx.generator, list) else ctx.generator
        seed = (g.initial_seed() if g is not None else torch.seed()) + salt
    return torch.Generator("cpu").manual_seed(int(seed) % (2**63))


@register
class MultiDiffusionMethod(Method):
    """MultiDiffusion over the call's plan and kernel; regions and bootstrapping when given."""

    name = "multidiffusion"
    per_step_wrapper = True
    PARAMS = dict(BOOTSTRAP_PARAMS)
    supports_regions = True

    # the prompt id of the first region (after the method's own extra prompts, e.g. tile prompts)
    def _first_region_id(self, call: CallSpec) -> int:
        return 1 + len(self.extra_prompts(call)) - len(call.regions)

    def extra_prompts(self, call: CallSpec) -> list[tuple[str, str | None]]:
        return [(r.prompt, r.negative_prompt) for r in call.regions]

    def check(self, call: CallSpec) -> None:
        super().check(call)
        if call.regions:
            if call.bootstrap_steps > 0:
                check_bootstrap(self.params.get("bootstrap_colors"), self.params.get("bootstrap_choices"), call.bootstrap_steps,
                                call.plan.n_views, len(call.regions))
        elif self.params.get("bootstrap_colors") is not None or self.params.get("bootstrap_choices") is not None:
            raise ConfigError("method.bootstrap_colors / bootstrap_choices need regions and bootstrap_steps > 0")

    def estimate(self, call: CallSpec) -> dict[str, float]:
        est = super().estimate(call)
        if call.regions:
            # each view once per prompt whose mask touches it: at most 1 + regions per view
            masks = latent_masks(call.regions, call.height, call.width, call.scale).reshape(len(call.regions) + 1, -1)
            import numpy as np

            idx = torch.as_tensor(np.asarray(call.plan.flat_indices))
            entries = int((masks[:, idx] > 0).any(-1).sum())
            est["unet_evaluations"] *= entries / call.plan.n_views
            est["vae_encodes"] = call.bootstrap_steps
        return est

    def base_viewset(self, ctx: StepContext) -> ViewSet:
        return ctx.stage.viewset

    def begin(self, ctx: StepContext) -> None:
        call = ctx.call
        self.regions_state: RegionState | None = None
        if not call.regions:
            return
        base = self.base_viewset(ctx)
        masks = latent_masks(call.regions, call.height, call.width, call.scale)
        st = RegionState(base, masks, first_region_id=self._first_region_id(call), base_cond=base.cond,
                         base_guidance=base.guidance, guidance_scale=call.guidance_scale)
        k = call.bootstrap_steps
        if k > 0:
            gen = derived_generator(ctx, self.params.get("bootstrap_seed"), salt=0xB007)
            colors, choices = bootstrap_draws(k, base.n, len(call.regions), colors=self.params.get("bootstrap_colors"),
                                              choices=self.params.get("bootstrap_choices"), generator=gen)
            h, w = base.size
            s = call.scale
            imgs = (2 * colors - 1)[:, :, None, None].expand(-1, -1, h * s, w * s)
            st.backgrounds = torch.cat([ctx.encode_images(imgs[c:c + 1]) for c in range(imgs.shape[0])])
            st.choices = choices
            self.draws = {"bootstrap_colors": colors.tolist(), "bootstrap_choices": choices.tolist()}
        self.regions_state = st

    def views(self, ctx: StepContext, i: int) -> ViewSet:
        st = getattr(self, "regions_state", None)
        return st.viewset if st is not None else self.base_viewset(ctx)

    def inputs(self, ctx: StepContext, i: int, t: torch.Tensor) -> InputFn | None:
        st = getattr(self, "regions_state", None)
        return None if st is None else st.bootstrap_fn(ctx, i, t)


@register
class MixtureMethod(MultiDiffusionMethod):
    """Mixture of Diffusers: Gaussian tile weights, optional per-tile prompts and guidance."""

    name = "mixture"
    kernel_from_call = False  # Gaussian tile weights of its own
    PARAMS = {
        "var": Param(0.01, lambda v: is_num(v) and v > 0, "a number > 0, e.g. 0.01",
                     "variance of the Gaussian in units of the tile size (official 0.01: sigma = 0.1 L)"),
        "tile_prompts": Param(None, lambda v: v is None or _grid(v, str), "a list of rows, each a list of prompts",
                              "one prompt per tile, rows x columns of the plan (default: the call's prompt everywhere)"),
        "tile_negative_prompts": Param(None, lambda v: v is None or _grid(v, str), "a grid like tile_prompts",
                                       "one negative prompt per tile (default: the call's)"),
        "tile_guidance": Param(None, lambda v: v is None or _grid(v, (int, float)), "a list of rows of numbers",
                               "one guidance scale per tile (default: the call's)"),
        **BOOTSTRAP_PARAMS,
    }

    def resolve_kernel(self, kernel: str | Kernel | None, kernel_params: dict | None) -> Kernel:
        if kernel is not None:
            raise ConfigError("method 'mixture' fuses with its own Gaussian tile weights (method.var); leave kernel unset, "
                              "or use method 'multidiffusion' with kernel='mixture' and a kernel of your choice")
        return get_kernel("mixture", var=self.var)

    def grid(self, call: CallSpec) -> tuple[int, int]:
        p = call.plan
        return len({v.top for v in p.views}), len({v.left for v in p.views})

    def check(self, call: CallSpec) -> None:
        super().check(call)
        rows, cols = self.grid(call)
        for key in ("tile_prompts", "tile_negative_prompts", "tile_guidance"):
            g = self.params[key]
            if g is not None and (len(g) != rows or any(len(r) != cols for r in g)):
                shape = f"{len(g)} x {[len(r) for r in g]}"
                raise ConfigError(f"method.{key} must be a grid of {rows} rows x {cols} columns matching the plan's "
                                  f"views, got {shape}")
        if self.tile_negative_prompts is not None and self.tile_prompts is None:
            raise ConfigError("method.tile_negative_prompts needs method.tile_prompts")

    def needs_cfg(self, call: CallSpec) -> bool:
        return call.guidance_scale > 1.0 or (self.tile_guidance is not None and any(g > 1 for r in self.tile_guidance for g in r))

    def extra_prompts(self, call: CallSpec) -> list[tuple[str, str | None]]:
        tiles = []
        if self.tile_prompts is not None:
            negs = self.tile_negative_prompts
            for r, row in enumerate(self.tile_prompts):
                for c, p in enumerate(row):
                    tiles.append((p, None if negs is None else negs[r][c]))
        return tiles + [(r.prompt, r.negative_prompt) for r in call.regions]

    def estimate(self, call: CallSpec) -> dict[str, float]:
        est = super().estimate(call)
        if self.tile_guidance is not None and call.guidance_scale <= 1 and any(g > 1 for row in self.tile_guidance for g in row):
            est["unet_evaluations"] *= 2  # CFG runs for every tile once any tile asks for it
        return est

    def base_viewset(self, ctx: StepContext) -> ViewSet:
        vs = ctx.stage.viewset
        if self.tile_prompts is None and self.tile_guidance is None:
            return vs
        call = ctx.call
        rows = sorted({v.top for v in call.plan.views})
        cols = sorted({v.left for v in call.plan.views})
        cond, guid = [], []
        for v in vs.views:
            r, c = rows.index(v.top), cols.index(v.left)
            cond.append(0 if self.tile_prompts is None else 1 + r * len(cols) + c)
            guid.append(call.guidance_scale if self.tile_guidance is None else float(self.tile_guidance[r][c]))
        return ViewSet(vs.views, vs.canvas, vs.index, vs.weight, torch.tensor(cond, device=vs.index.device),
                       torch.tensor(guid, dtype=torch.float32, device=vs.index.device))

    def begin(self, ctx: StepContext) -> None:
        self._base = self.base_viewset(ctx)
        super().begin(ctx)

    def views(self, ctx: StepContext, i: int) -> ViewSet:
        st = getattr(self, "regions_state", None)
        return st.viewset if st is not None else self._base


def _grid(v: Any, kind: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(r, (list, tuple)) and len(r) > 0 for r in v)
            and all(isinstance(x, kind) and not isinstance(x, bool) for r in v for x in r))
