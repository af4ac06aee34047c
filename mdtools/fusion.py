"""MultiDiffusion as a denoiser wrapper, and the view sets every method fuses over.

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

The methods (mdtools.methods) fuse over a `ViewSet`: a list of entries, each a window of
latent pixels given by flat indices into the canvas, with its own fusion weights (kernel x
region mask), prompt id and guidance scale. A flat index equal to H * W is padding: the
entry reads zeros there and its prediction there is dropped (DemoFusion's jittered and
dilated views reach over the canvas edge). Views are gathered and scattered with these
flat indices, which also handle circular wrap with no second code path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from .kernels import Kernel
from .plan import TilePlan, View


class ViewDenoiser(Protocol):
    """`denoiser(x, t, views, cond=None, guidance=None) -> prediction`.

    `x` is (len(views) * B, C, h, w), view-major (all batch items of view 0, then view 1,
    ...); the result has the same layout. `views` lets adapters condition on the view's
    position (SDXL crop coordinates). `cond` (len(views),) selects a prompt per view and
    `guidance` (len(views),) a guidance scale per view (None: prompt 0, the call's scale).
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None = None,
                 guidance: torch.Tensor | None = None) -> torch.Tensor: ...


def view_indices(views: Sequence[View], canvas: tuple[int, int], *, wrap: tuple[bool, bool] = (False, False),
                 pad: bool = False) -> np.ndarray:
    """(n, h * w) flat indices of each view's pixels into the (H, W) canvas, row-major.

    On a wrapped axis positions are taken modulo the canvas; elsewhere a position outside
    the canvas is an error, or with `pad=True` the padding index H * W.
    """
    H, W = canvas
    h, w = views[0].height, views[0].width
    dy, dx = np.arange(h), np.arange(w)
    out = np.empty((len(views), h * w), dtype=np.int64)
    for i, v in enumerate(views):
        rows, cols = v.top + dy, v.left + dx
        rows = rows % H if wrap[0] else rows
        cols = cols % W if wrap[1] else cols
        ok = (rows[:, None] >= 0) & (rows[:, None] < H) & (cols[None, :] >= 0) & (cols[None, :] < W)
        if not ok.all() and not pad:
            raise ValueError(f"view {v} leaves the {H}x{W} canvas on an axis that does not wrap")
        out[i] = np.where(ok, rows[:, None] * W + cols[None, :], H * W).reshape(-1)
    return out


@dataclass
class ViewSet:
    """The entries fused at one step: windows of one size over an (H, W) latent canvas.

    `index` (n, h*w) holds flat canvas indices (H * W = padding), `weight` (n, h*w) the
    fusion weights, `cond` (n,) the prompt id of each entry and `guidance` (n,) its
    guidance scale (None: prompt 0 and the call's scale for every entry). `views` keeps
    each entry's geometry for records and position-aware adapters.
    """

    views: tuple[View, ...]
    canvas: tuple[int, int]
    index: torch.Tensor
    weight: torch.Tensor
    cond: torch.Tensor | None = None
    guidance: torch.Tensor | None = None
    _den: torch.Tensor | None = field(default=None, repr=False)
    _overlap: torch.Tensor | None = field(default=None, repr=False)
    _padded: bool | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.views[0].height, self.views[0].width

    @property
    def n(self) -> int:
        return len(self.views)

    @property
    def padded(self) -> bool:
        """Whether some entry reaches over the canvas edge (reads the padding index), cached."""
        if self._padded is None:
            H, W = self.canvas
            self._padded = bool((self.index == H * W).any())
        return self._padded

    @classmethod
    def build(cls, views: Sequence[View], canvas: tuple[int, int], *, kernel: Kernel | None = None,
              overlap: tuple[int, int] = (0, 0), wrap: tuple[bool, bool] = (False, False), pad: bool = False,
              device: torch.device | str = "cpu", weight: torch.Tensor | None = None,
              cond: Sequence[int] | None = None, guidance: Sequence[float] | None = None) -> "ViewSet":
        """Entries for `views` with `kernel` weights (or explicit `weight`, (n, h*w) or (h*w,))."""
        views = tuple(views)
        idx = torch.as_tensor(view_indices(views, canvas, wrap=wrap, pad=pad), device=device)
        h, w = views[0].height, views[0].width
        if weight is None:
            assert kernel is not None
            weight = kernel(h, w, overlap=overlap, dtype=torch.float32, device=device).reshape(1, -1)
        weight = weight.to(device=device, dtype=torch.float32).reshape(-1, h * w).expand(len(views), h * w).contiguous()
        c = None if cond is None else torch.as_tensor(list(cond), dtype=torch.long, device=device)
        g = None if guidance is None else torch.as_tensor(list(guidance), dtype=torch.float32, device=device)
        return cls(views, canvas, idx, weight, c, g)

    @classmethod
    def from_plan(cls, plan: TilePlan, kernel: Kernel, *, device: torch.device | str = "cpu") -> "ViewSet":
        """The plan's views with the kernel's weights (the kernel sees the plan's overlap)."""
        h, w = plan.view_size
        ov = (min(plan.overlap[0] // plan.scale, h), min(plan.overlap[1] // plan.scale, w))
        return cls.build(plan.views, (plan.latent_height, plan.latent_width), kernel=kernel, overlap=ov,
                         wrap=(plan.wraps_y, plan.wraps_x), device=device)

    def denominator(self) -> torch.Tensor:
        """(H * W,) sum of the weights at each canvas pixel (padding dropped), cached."""
        if self._den is None:
            H, W = self.canvas
            den = torch.zeros(H * W + 1, dtype=torch.float32, device=self.index.device)
            den.index_add_(0, self.index.reshape(-1), self.weight.reshape(-1))
            self._den = den[: H * W]
        return self._den

    def overlap_mask(self) -> torch.Tensor:
        """(H * W,) bool: canvas pixels covered by more than one entry (where views can disagree), cached."""
        if self._overlap is None:
            H, W = self.canvas
            cov = torch.zeros(H * W + 1, device=self.index.device)
            cov.index_add_(0, self.index.reshape(-1), torch.ones(self.index.numel(), device=self.index.device))
            self._overlap = cov[: H * W] > 1
        return self._overlap

    def check_coverage(self) -> None:
        """Every canvas pixel must get weight from some entry (else Eq. 5 divides by zero)."""
        den = self.denominator()
        if not bool((den > 0).all()):
            H, W = self.canvas
            miss = int((den <= 0).sum())
            raise ValueError(f"{miss} of {H * W} latent pixels are covered by no view with weight > 0")


InputFn = Callable[[torch.Tensor, int, int], torch.Tensor]


class MultiDiffusion:
    """Fuse a view denoiser's predictions over a plan (or any `ViewSet`) into a canvas prediction.

    Weights and their per-pixel sum are built once per view set (the denominator of Eq. 5
    is the same at every step for a fixed plan). Accumulation is in float32 whatever the
    model dtype, so fp16 models do not lose precision in the sum over views. Counters
    (`forward_calls`, `model_evaluations`, `forward_seconds`) are read by the recorder.
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
        shard: Any = None,
    ):
        self.denoiser = denoiser
        #: mdtools.distributed.Shard: run only this rank's block of each view set, all-reduce the sums
        self.shard = shard
        self.plan = plan
        self.view_batch_size = view_batch_size
        self.diagnostics = diagnostics or diagnostics_map
        self.diagnostics_map = diagnostics_map
        self.sync_timing = sync_timing
        self.device = torch.device(device)
        self.viewset = ViewSet.from_plan(plan, kernel, device=self.device)
        self.viewset.check_coverage()  # plans cover every pixel and kernels are > 0
        self.weight = self.viewset.weight[0]
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
        """Fused prediction for the canvas latent `x` (B, C, H, W) at timestep `t` over the plan."""
        return self.fuse(x, t, self.viewset)

    def _reduce(self, num: torch.Tensor | None, num2: torch.Tensor | None,
                x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sum the ranks' Eq. 5 numerators (a rank without entries in this view set adds zeros)."""
        B, C, H, W = x.shape
        if num is None:
            num = torch.zeros(B, C, H * W + 1, dtype=torch.float32, device=x.device)
            num2 = torch.zeros_like(num) if self.diagnostics else None
        self.shard.all_reduce(num)
        if num2 is not None:
            self.shard.all_reduce(num2)
        return num, num2

    @staticmethod
    def _flat(x: torch.Tensor, vs: ViewSet) -> torch.Tensor:
        """(B, C, H*W) view of the canvas, with one zero pixel appended when `vs` reads padding."""
        B, C, H, W = x.shape
        flat = x.reshape(B, C, H * W)
        return torch.cat([flat, flat.new_zeros(B, C, 1)], dim=2) if vs.padded else flat

    @staticmethod
    def _take(flat: torch.Tensor, vs: ViewSet, start: int, end: int) -> torch.Tensor:
        B, C, _ = flat.shape
        h, w = vs.size
        k = end - start
        idx = vs.index[start:end].reshape(-1)
        return flat.index_select(2, idx).reshape(B, C, k, h, w).permute(2, 0, 1, 3, 4).reshape(k * B, C, h, w)

    @staticmethod
    def gather(x: torch.Tensor, vs: ViewSet, start: int, end: int) -> torch.Tensor:
        """Crops of entries [start, end) of `vs` from canvas `x` (B, C, H, W): ((end-start)*B, C, h, w), view-major."""
        return MultiDiffusion._take(MultiDiffusion._flat(x, vs), vs, start, end)

    @staticmethod
    def scatter(values: torch.Tensor, vs: ViewSet, batch: int) -> torch.Tensor:
        """Eq. 5 on per-entry tensors: (n*B, C, h, w) view-major -> (B, C, H, W) weighted average."""
        H, W = vs.canvas
        h, w = vs.size
        n = vs.n
        p = values.float().reshape(n, batch, -1, h * w).permute(1, 2, 0, 3).reshape(batch, -1, n * h * w)
        num = torch.zeros(batch, p.shape[1], H * W + 1, dtype=torch.float32, device=values.device)
        num.index_add_(2, vs.index.reshape(-1), p * vs.weight.reshape(-1))
        return (num[..., : H * W] / vs.denominator()).reshape(batch, -1, H, W)

    def fuse(self, x: torch.Tensor, t: torch.Tensor, vs: ViewSet, *, input_fn: InputFn | None = None) -> torch.Tensor:
        """Weighted average (Eq. 5) of the denoiser's predictions for the entries of `vs`.

        `input_fn(crops, start, end)` may replace the crops of entries [start, end) before
        the model sees them (region bootstrapping). Entries are run `view_batch_size` at a time.
        """
        B, C, H, W = x.shape
        h, w = vs.size
        vb = self.view_batch_size
        num: torch.Tensor | None = None
        num2: torch.Tensor | None = None
        flat = self._flat(x, vs)  # once per call, not per view batch
        first, last = (0, vs.n) if self.shard is None else self.shard.block(vs.n)
        for s in range(first, last, vb):
            e = min(s + vb, last)
            k = e - s
            t0 = time.perf_counter()
            crops = self._take(flat, vs, s, e)
            if input_fn is not None:
                crops = input_fn(crops, s, e)
            self._sync()
            t1 = time.perf_counter()
            extra = {}  # denoisers that know one prompt take (x, t, views) only
            if vs.cond is not None:
                extra["cond"] = vs.cond[s:e]
            if vs.guidance is not None:
                extra["guidance"] = vs.guidance[s:e]
            pred = self.denoiser(crops, t, vs.views[s:e], **extra)
            self._sync()
            t2 = time.perf_counter()
            if num is None:
                num = torch.zeros(B, pred.shape[1], H * W + 1, dtype=torch.float32, device=x.device)
                if self.diagnostics:
                    num2 = torch.zeros_like(num)
            idx = vs.index[s:e].reshape(-1)
            wk = vs.weight[s:e].reshape(-1)
            p = pred.float().reshape(k, B, -1, h * w).permute(1, 2, 0, 3).reshape(B, -1, k * h * w)
            num.index_add_(2, idx, p * wk)
            if num2 is not None:
                num2.index_add_(2, idx, p * p * wk)
            self._sync()
            t3 = time.perf_counter()
            self.forward_seconds += t2 - t1
            self.fusion_seconds += (t1 - t0) + (t3 - t2)
            if self.shard is not None:
                self.shard.entries += k
                self.shard.forward_seconds += t2 - t1
            self.forward_calls += 1
            self.model_evaluations += k * B * getattr(self.denoiser, "evaluations_per_sample", 1)
        if self.shard is not None:
            num, num2 = self._reduce(num, num2, x)
        assert num is not None
        inv = 1.0 / vs.denominator()
        mean = num[..., : H * W] * inv
        if num2 is not None:
            # weighted variance of the views' predictions at each pixel, mean over B and C
            var = (num2[..., : H * W] * inv - mean * mean).clamp_min(0).mean(dim=(0, 1))
            overlap = vs.overlap_mask()
            self.last_disagreement = float(var[overlap].mean()) if overlap.any() else 0.0
            if self.diagnostics_map:
                self.last_disagreement_map = var.reshape(H, W).cpu()
        return mean.reshape(B, -1, H, W).to(x.dtype)

