"""SyncDiffusion (Lee, Kim, Sung, NeurIPS 2023): coherent panoramas by perceptual-gradient sync.

On a sync step i ((i + 1) % sync_freq == 0 and i < sync_steps), before the usual
MultiDiffusion step, every view's latent moves down the gradient of a perceptual loss
between the decoded predicted clean image of that view and of an anchor view (Sec. 3.2):

    x0(x_v) = (x_v - sqrt(1 - abar_t) eps(x_v)) / sqrt(abar_t)            (Tweedie / DDIM's x0)
    x'_v    = x_v - w_i * d/dx_v  L(D(x0(x_v)), D(x0(x_a)))               (Eq. 6)
    w_i     = weight * decay**i

The gradient flows through the UNet, the x0 formula, the VAE decoder, the clamp to
[-1, 1] and the loss; it is the raw gradient (the official `norm_grad` is not
normalised). Each view's prediction is then taken again at its moved latent, and the
step is taken from the moved latents: with DDIM, the average of per-view steps from
x'_v equals one canvas step on the fused moved latents with the fused predictions, which
is what mdtools does (for every scheduler).

Semantics pinned to the official code (KAIST-Visual-AI-Group/SyncDiffusion,
syncdiffusion_model.py): anchor "center" = views[len(views) // 2] in raster order; the
loss is called as loss(view_image, anchor_image) on images in [-1, 1] and summed; the
anchor is never moved. Defaults: weight 20, decay 0.95 (the paper's and the function's),
sync_freq 1, sync_steps 10 (the official shell script and notebook; the function's own
default is 50), loss LPIPS(VGG). Departures: the official code computes the anchor's own
gradient and discards it; mdtools skips it (identical result, one backward pass less per
sync step). It hard-codes SD's scale 0.18215 and DDIM; mdtools uses the VAE's scaling
factor and any scheduler (x0 from the scheduler's alpha-bar or sigma at step i; on SD3 /
FLUX's flow matching x0 = x - sigma v, `predicted_x0`).

Memory is bounded: one view with gradients at a time; `checkpointing=True` turns on the
UNet's and VAE's gradient checkpointing for the sync pass.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fusion import MultiDiffusion, ViewSet
from ..sampling import CallSpec, Run, StepContext
from .base import Method, Param, is_int, is_num, register

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Loss names usable from configs and the CLI (Python callers may pass any callable).
LOSSES = ("lpips", "lpips_featnet", "lpips_untrained", "mse")


def _lpips_pretrained() -> LossFn:
    from ..errors import MetricUnavailable
    from ..metrics.backbones import load_lpips_vgg

    try:
        return load_lpips_vgg()
    except MetricUnavailable as e:
        raise ConfigError(
            f"method.loss='lpips' (LPIPS with ImageNet VGG16, the official SyncDiffusion loss) is unavailable: {e}. "
            "Pass another loss: method_params={'loss': callable(img_a, img_b) -> scalar on images in [-1, 1]}, "
            "or loss='lpips_featnet' (mdtools' shipped feature network, offline), 'lpips_untrained' or 'mse'"
        ) from None


def _lpips_untrained() -> LossFn:
    """lpips.LPIPS(net='vgg') with its shipped linear layers on a VGG16 trunk initialised with
    seed 0: offline and deterministic, but not the calibrated perceptual distance."""
    import warnings

    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about `pretrained`
        torch.manual_seed(0)
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()


def _lpips_featnet() -> LossFn:
    """The LPIPS-style distance on mdtools' shipped feature network (mdtools.metrics.features):
    offline and trained on scenes and textures, but not calibrated on human judgements."""
    from ..metrics.features import FeatureLPIPS

    return FeatureLPIPS().eval()


def _mse() -> LossFn:
    return lambda a, b: F.mse_loss(a, b, reduction="none").mean(dim=(1, 2, 3))


_NAMED: dict[str, LossFn] = {}


def resolve_loss(loss: Any) -> LossFn:
    """A loss callable from a name in LOSSES or a callable; ConfigError when unavailable.
    Named losses are built once per process (a sweep validates many runs)."""
    if callable(loss):
        return loss
    if loss in _NAMED:
        return _NAMED[loss]
    build = {"lpips": _lpips_pretrained, "lpips_featnet": _lpips_featnet, "lpips_untrained": _lpips_untrained,
             "mse": _mse}.get(loss)
    if build is not None:
        _NAMED[loss] = build()
        return _NAMED[loss]
    raise ConfigError(f"method.loss={loss!r} is not known; use one of {list(LOSSES)} or pass a callable")


def alpha_bar(scheduler: Any, t: torch.Tensor) -> torch.Tensor:
    """abar_t of the current step, in the frame of the model input (after scale_model_input).

    Schedulers that scale the input (Euler, Heun, LMS, ...: init_noise_sigma > 1) hold sigma at
    step_index, and abar = 1 / (1 + sigma^2); the others index alphas_cumprod by t."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and float(scheduler.init_noise_sigma) > 1.0 and getattr(scheduler, "step_index", None) is not None:
        sigma = sigmas[scheduler.step_index].float()
        return 1.0 / (1.0 + sigma**2)
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise ConfigError(f"syncdiffusion needs a scheduler with alphas_cumprod or sigmas, not {type(scheduler).__name__}")
    return ac[int(t)].float()


def is_flow_matching(scheduler: Any) -> bool:
    """SD3 / FLUX schedules (mdtools.schedulers.FlowMatchSchedule, or a diffusers FlowMatch* scheduler)."""
    inner = getattr(scheduler, "scheduler", scheduler)
    return bool(getattr(scheduler, "is_flow_matching", False)) or type(inner).__name__.startswith("FlowMatch")


def predicted_x0(scheduler: Any, x_in: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model's predicted clean latent from the scaled input and its output (DDIM's pred_original_sample).

    Flow matching (SD3, FLUX): x_t = sigma x_noise + (1 - sigma) x0 and the model predicts
    the velocity v = x_noise - x0, so x0 = x_t - sigma v, where sigma = t / num_train_timesteps
    (diffusers' FlowMatchEulerDiscreteScheduler sets timesteps = sigmas * num_train_timesteps);
    this is the Euler step to sigma = 0."""
    if is_flow_matching(scheduler):
        sigma = t.float().to(x_in.device) / float(scheduler.config.get("num_train_timesteps", 1000))
        return x_in - sigma.to(x_in.dtype) * out
    abar = alpha_bar(scheduler, t).to(x_in.device)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return (x_in - (1 - abar).sqrt() * out) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * x_in - (1 - abar).sqrt() * out
    if kind == "sample":
        return out
    raise ConfigError(f"syncdiffusion does not know prediction_type={kind!r}")


@register
class SyncDiffusionMethod(Method):
    """MultiDiffusion with SyncDiffusion's gradient sync of every view towards an anchor view."""

    name = "syncdiffusion"
    calibration_kinds = ("loss_calls",)
    not_distributable = ("its gradient step runs the model and VAE per view outside the fused call (an anchor view every "
                         "view depends on)")
    PARAMS = {
        "weight": Param(20.0, lambda v: is_num(v) and v >= 0, "a number >= 0, e.g. 20", "gradient step weight w"),
        "decay": Param(0.95, lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1], e.g. 0.95", "w_i = weight * decay**i"),
        "sync_freq": Param(1, lambda v: is_int(v) and v >= 1, "an integer >= 1", "sync every n-th step"),
        "sync_steps": Param(10, lambda v: is_int(v) and v >= 0, "an integer >= 0, e.g. 10", "sync only while i < this"),
        "anchor": Param("center", lambda v: v == "center" or (is_int(v) and v >= 0), "'center' or a view index",
                        "the anchor view: 'center' = views[len(views) // 2]"),
        "loss": Param("lpips", lambda v: callable(v) or v in LOSSES, f"one of {list(LOSSES)} or a callable",
                      "perceptual loss(img_view, img_anchor) on images in [-1, 1]"),
        "checkpointing": Param(False, lambda v: isinstance(v, bool), "true or false",
                               "gradient checkpointing in the UNet and VAE during sync"),
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._loss: LossFn | None = None

    def loss_fn(self) -> LossFn:
        if self._loss is None:
            self._loss = resolve_loss(self.loss)
        return self._loss

    def check(self, call: CallSpec) -> None:
        super().check(call)
        if isinstance(self.anchor, int) and self.anchor >= call.plan.n_views:
            raise ConfigError(f"method.anchor={self.anchor} but the plan has {call.plan.n_views} views; "
                              f"use 'center' or an index < {call.plan.n_views}")
        self.loss_fn()  # load (or fail) before any model call

    def anchor_index(self, n_views: int) -> int:
        return n_views // 2 if self.anchor == "center" else int(self.anchor)

    def is_sync(self, i: int) -> bool:
        return (i + 1) % self.sync_freq == 0 and i < self.sync_steps

    def estimate(self, call: CallSpec) -> dict[str, float]:
        cfg = call.cfg_factor
        V, B = call.plan.n_views, call.batch
        n_sync = sum(self.is_sync(i) for i in range(call.steps))
        return {
            "unet_evaluations": (V * call.steps + n_sync) * cfg * B,
            "unet_grad_evaluations": n_sync * (V - 1) * cfg * B,
            "backward": n_sync * (V - 1),
            "vae_decodes": n_sync,
            "vae_decodes_grad": n_sync * (V - 1),
            "loss_calls": n_sync * (V - 1),
        }

    def generate(self, run: Run) -> torch.Tensor:
        unet, vae = run.unet, run.vae
        if vae is None:
            raise ConfigError("syncdiffusion decodes predicted images; it needs a latent model with a VAE")
        self._loss_module = self.loss_fn()
        if isinstance(self._loss_module, torch.nn.Module):
            self._loss_module.to(run.device)
        # frozen weights for the sync pass (the official code freezes them): no parameter grads
        saved = [(p, p.requires_grad) for m in (unet, vae) for p in m.parameters()]
        ckpt = [(m, getattr(m, "is_gradient_checkpointing", False)) for m in (unet, vae)]
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            if self.checkpointing:
                for m, _ in ckpt:
                    m.enable_gradient_checkpointing()
            return super().generate(run)
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)
            for m, was in ckpt:
                if self.checkpointing and not was:
                    m.disable_gradient_checkpointing()

    def predict(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor,
                x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_sync(i):
            return super().predict(ctx, i, t, latents, x_in)
        vs = ctx.stage.viewset
        with ctx.phase("sync"):
            moved = self._moved_views(ctx, i, t, latents, vs)
        sch = ctx.scheduler
        moved_in = sch.scale_model_input(moved, t)
        B = latents.shape[0]
        pred = ctx.fuse(x_in, t, vs, input_fn=lambda crops, s, e: moved_in[s * B:e * B])
        sample = MultiDiffusion.scatter(moved, vs, B).to(latents.dtype)
        return pred, sample

    def _moved_views(self, ctx: StepContext, i: int, t: torch.Tensor, latents: torch.Tensor, vs: ViewSet) -> torch.Tensor:
        """x'_v for every view (n * B, C, h, w), view-major; the anchor stays where it is."""
        sch = ctx.scheduler
        B = latents.shape[0]
        n = vs.n
        a = self.anchor_index(n)
        crops = MultiDiffusion.gather(latents, vs, 0, n).detach()
        cond = vs.cond
        xa = crops[a * B:(a + 1) * B]
        xa_in = sch.scale_model_input(xa, t)
        eps_a = ctx.predict_views(xa_in, t, vs.views[a:a + 1], cond=None if cond is None else cond[a:a + 1])
        img_a = ctx.decode_latents(predicted_x0(sch, xa_in, eps_a, t)).clamp(-1, 1).float()
        w_i = self.weight * self.decay**i
        moved = crops.clone()
        loss_fn = self._loss_module
        for v in range(n):
            if v == a:
                continue  # the anchor is never moved (its gradient would be discarded)
            xv = crops[v * B:(v + 1) * B].clone().requires_grad_(True)
            with torch.enable_grad():
                xv_in = sch.scale_model_input(xv, t)
                eps = ctx.predict_views(xv_in, t, vs.views[v:v + 1], cond=None if cond is None else cond[v:v + 1], grad=True)
                img = ctx.decode_latents(predicted_x0(sch, xv_in, eps, t), grad=True).clamp(-1, 1).float()
                with ctx.measure("loss"):
                    loss = loss_fn(img, img_a).sum()
                with ctx.measure("backward"):
                    (grad,) = torch.autograd.grad(loss, xv)
            moved[v * B:(v + 1) * B] = xv.detach() - w_i * grad.to(xv.dtype)
        return moved
