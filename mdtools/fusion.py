"""MultiDiffusion as a denoiser wrapper.

`MultiDiffusion(denoiser, plan, kernel)` is itself a denoiser of the whole canvas: it
crops the plan's views, runs the view denoiser on batches of them and returns

    F(x) = sum_i W_i * D(crop_i(x)) / sum_i W_i          (MultiDiffusion Eq. 5, with
                                                           the closed-form minimiser of
                                                           Eq. 3 applied to predictions)

The sampler then takes ONE scheduler step on the whole canvas. For samplers whose step
is affine in the model output given x (DDIM with eta = 0, Euler, DDPM's mean) this is
exactly the paper's average of per-view steps, because every view sees the same x at a
shared pixel. For multistep solvers it is the consistent choice: the solver history lives
on the canvas, so no per-view scheduler copies are needed (diffusers #3494).

Views are gathered and scattered with flat indices (`TilePlan.flat_indices`), which
handle circular wrap with no second code path.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, Sequence

import torch

from .kernels import Kernel
from .plan import TilePlan, View


class ViewDenoiser(Protocol):
    """`denoiser(x, t, views) -> prediction`.

    `x` is (len(views) * B, C, h, w), view-major (all batch items of view 0, then view 1,
    ...); the result has the same layout. `views` lets adapters condition on the view's
    position (SDXL crop coordinates).
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View]) -> torch.Tensor: ...


class MultiDiffusion:
    """Fuse a view denoiser's predictions over a plan into a canvas prediction.

    Weights and their per-pixel sum are built once per plan (the denominator of Eq. 5 is
    the same at every step). Accumulation is in float32 whatever the model dtype, so
    fp16 models do not lose precision in the sum over views.
    """

    def __init__(
        self,
        denoiser: ViewDenoiser,
        plan: TilePlan,
        kernel: Kernel,
        *,
        view_batch_size: int = 4,
        device: torch.device | str = "cpu",
        diagnostics: bool = False,
        diagnostics_map: bool = False,
        sync_timing: bool = False,
    ):
        self.denoiser = denoiser
        self.plan = plan
        self.view_batch_size = view_batch_size
        self.diagnostics = diagnostics or diagnostics_map
        self.diagnostics_map = diagnostics_map
        self.sync_timing = sync_timing
        device = torch.device(device)
        self.device = device
        h, w = plan.view_size
        ov = (min(plan.overlap[0] // plan.scale, h), min(plan.overlap[1] // plan.scale, w))
        self.weight = kernel(h, w, overlap=ov, dtype=torch.float32, device=device).reshape(-1)
        idx = torch.as_tensor(plan.flat_indices, device=device)
        # (views, flat pixel indices, their weights) per model call, built once
        self.batches: list[tuple[list[View], torch.Tensor, torch.Tensor]] = []
        for s in range(0, plan.n_views, view_batch_size):
            views = list(plan.views[s : s + view_batch_size])
            self.batches.append((views, idx[s : s + view_batch_size].reshape(-1), self.weight.repeat(len(views))))
        n_pix = plan.latent_height * plan.latent_width
        den = torch.zeros(n_pix, dtype=torch.float32, device=device)
        den.index_add_(0, idx.reshape(-1), self.weight.repeat(plan.n_views))
        self.inv_den = 1.0 / den  # > 0 everywhere: plans cover every pixel, kernels are > 0
        coverage = torch.zeros(n_pix, device=device).index_add_(0, idx.reshape(-1), torch.ones(idx.numel(), device=device))
        self.overlap_mask = coverage > 1
        # counters read by the recorder
        self.forward_calls = 0
        self.model_evaluations = 0
        self.forward_seconds = 0.0
        self.fusion_seconds = 0.0
        self.last_disagreement: float | None = None
        self.last_disagreement_map: torch.Tensor | None = None

    def _sync(self) -> None:
        if self.sync_timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        """Fused prediction for the canvas latent `x` (B, C, H, W) at timestep `t`."""
        B, C, H, W = x.shape
        h, w = self.plan.view_size
        flat = x.reshape(B, C, H * W)
        num: torch.Tensor | None = None
        num2: torch.Tensor | None = None
        for views, idx, wk in self.batches:
            k = len(views)
            t0 = time.perf_counter()
            # (B, C, k*h*w) -> (k*B, C, h, w), view-major
            crops = flat.index_select(2, idx).reshape(B, C, k, h, w).permute(2, 0, 1, 3, 4).reshape(k * B, C, h, w)
            self._sync()
            t1 = time.perf_counter()
            pred = self.denoiser(crops, t, views)
            self._sync()
            t2 = time.perf_counter()
            if num is None:
                C_out = pred.shape[1]
                num = torch.zeros(B, C_out, H * W, dtype=torch.float32, device=x.device)
                if self.diagnostics:
                    num2 = torch.zeros_like(num)
            p = pred.float().reshape(k, B, -1, h * w).permute(1, 2, 0, 3).reshape(B, -1, k * h * w)
            num.index_add_(2, idx, p * wk)
            if num2 is not None:
                num2.index_add_(2, idx, p * p * wk)
            self._sync()
            t3 = time.perf_counter()
            self.forward_seconds += t2 - t1
            self.fusion_seconds += (t1 - t0) + (t3 - t2)
            self.forward_calls += 1
            self.model_evaluations += k * B * getattr(self.denoiser, "evaluations_per_sample", 1)
        assert num is not None
        mean = num * self.inv_den
        if num2 is not None:
            # weighted variance of the views' predictions at each pixel, mean over B and C
            var = (num2 * self.inv_den - mean * mean).clamp_min(0).mean(dim=(0, 1))
            self.last_disagreement = float(var[self.overlap_mask].mean()) if self.overlap_mask.any() else 0.0
            if self.diagnostics_map:
                self.last_disagreement_map = var.reshape(H, W).cpu()
        return mean.reshape(B, -1, H, W).to(x.dtype)
