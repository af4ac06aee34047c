"""MultiDiffusion as a ComfyUI model patch: MODEL -> MODEL, fused every model call.

`MultiDiffusionPatch` holds a method of `mdtools.methods` that works as a per-step model
wrapper (multidiffusion, mixture, spotdiffusion) and turns ComfyUI's model call on the
whole canvas into the method's fused prediction (MultiDiffusion Eq. 5):

    F(x) = sum_i W_i * D(crop_i(x)) / sum_i W_i

D is whatever ComfyUI's `apply_model` returns for a crop (the denoised x0 of the crop,
after any later wrapper in the chain). x0 = x - sigma * eps is affine in eps with the same
x and sigma at a shared pixel, so fusing x0 predictions is fusing eps predictions: the
sampler then takes ONE step on the canvas, as in `mdtools.sampling.Run.denoise`.

Nothing is copied from mdtools: the plan is `mdtools.plan_views`, the weights come from
`KERNELS` through the method's `resolve_kernel`, the crop / fuse loop is
`mdtools.fusion.MultiDiffusion.fuse`, and the views of step i are the method's own
`views(ctx, i)` (SpotDiffusion's shifted grids). The hooks receive a `mdtools.sampling.StepContext`
without the model: the same contract `Run` implements in mdtools' own loop.

Two ComfyUI APIs (both mirrored by tests/comfy_standin.py, after ComfyUI 0.3.64):
- the chaining wrapper API `ModelPatcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, key,
  fn)`; fn(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kw)
  calls `executor(...)` for each view batch, so wrappers of other nodes still run, per crop;
  with it a CALC_COND_BATCH wrapper defers ControlNets, which are then evaluated per view
  batch on each view's crop of the hint (mdtools.comfy.control);
- the older single slot `set_model_unet_function_wrapper(fn)` (fallback for ComfyUI
  without the wrapper API), fn(apply_model, {"input", "timestep", "c", "cond_or_uncond"});
  a wrapper already in that slot is called per view batch instead of `apply_model`;
  ControlNets are refused there (their residuals arrive computed for the whole canvas).

Only the patched clone is affected: ComfyUI itself is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError, check_choice, check_positive_int
from ..fusion import MultiDiffusion, ViewSet
from ..kernels import KERNELS, Kernel
from ..methods import METHODS, Method, get_method, per_step_methods
from ..plan import CIRCULAR_CHOICES, TilePlan, plan_views
from ..sampling import CallSpec, Stage, StepContext
from .control import PendingControl, calc_cond_batch_wrapper, crop_scaled, evaluate

#: The methods that work as a per-step model wrapper (flag `per_step_wrapper`; the others need
#: the whole pipeline: use the Generate (mdtools) node for them).
PATCH_METHODS = per_step_methods()
#: "auto": the method's own default kernel (gaussian; mixture's Gaussian tile weights).
KERNEL_CHOICES = ("auto", *KERNELS)
#: The key of the APPLY_MODEL wrapper on the patched clone (a second patch replaces the first).
WRAPPER_KEY = "mdtools.multidiffusion"


@dataclass(frozen=True)
class PatchSettings:
    """The node's inputs, validated by `MultiDiffusionPatch` (window and overlap in pixels)."""

    method: str = "multidiffusion"
    window: int = 512
    overlap: int = 64
    kernel: str = "auto"
    view_batch_size: int = 4
    circular: str = "off"
    seed: int = 0
    scale: int = 8


def _call_spec(s: PatchSettings, plan: TilePlan, kernel: Kernel, steps: int) -> CallSpec:
    return CallSpec(height=plan.height, width=plan.width, plan=plan, kernel=kernel, scale=s.scale, window=plan.window,
                    overlap=plan.overlap, circular=plan.circular, steps=steps, guidance_scale=1.0, batch=1,
                    view_batch_size=s.view_batch_size)


class MultiDiffusionPatch:
    """The fused model call of one MultiDiffusion (mdtools) node.

    All settings are checked here, before sampling starts (ConfigError naming the input).
    Per canvas size (and, for SpotDiffusion, per sigma schedule) the plan, weights and
    fuser are built once and reused at every step.
    """

    def __init__(self, settings: PatchSettings):
        s = settings
        check_choice("method", s.method, PATCH_METHODS)
        check_choice("kernel", s.kernel, KERNEL_CHOICES)
        check_choice("circular", s.circular, CIRCULAR_CHOICES)
        check_positive_int("view_batch_size", s.view_batch_size)
        if isinstance(s.seed, bool) or not isinstance(s.seed, int):
            raise ConfigError(f"seed must be an integer, e.g. 0; got {s.seed!r}")
        self.settings = s
        self.method: Method = self._new_method()
        self.kernel: Kernel = self.method.resolve_kernel(None if s.kernel == "auto" else s.kernel, None)
        # the window and overlap checks of plan_views and the method's own (SpotDiffusion: overlap 0),
        # on a stand-in canvas (64 latent px): the real canvas is known only at sampling time
        probe = plan_views(64 * s.scale, 64 * s.scale, window=s.window, overlap=s.overlap, scale=s.scale,
                           circular=self._circular)
        self.method.check(_call_spec(s, probe, self.kernel, 1))
        self._runs: dict[tuple, StepContext] = {}
        self.calls = 0  # fused model calls, for tests and records

    def _new_method(self) -> Method:
        s = self.settings
        return get_method(s.method, **({"seed": s.seed} if "seed" in _params(s.method) else {}))

    @property
    def _circular(self) -> Any:
        return False if self.settings.circular == "off" else self.settings.circular

    def describe(self) -> dict[str, Any]:
        """Settings, method and kernel, JSON-safe, for run records."""
        s = self.settings
        return {"method": self.method.describe(), "kernel": self.kernel.describe(), "window": s.window,
                "overlap": s.overlap, "view_batch_size": s.view_batch_size, "circular": s.circular}

    # ---- per canvas ---------------------------------------------------------------------
    def _run(self, H: int, W: int, device: torch.device, sigmas: torch.Tensor | None) -> StepContext:
        spot = self.method.needs_sigmas
        if spot and sigmas is None:
            raise ConfigError(f"method {self.settings.method!r} needs the sampler's sigmas (transformer_options['sample_sigmas'], "
                              "set by ComfyUI's samplers); use method 'multidiffusion' with this sampler")
        steps = 1 if sigmas is None else max(1, len(sigmas) - 1)
        key = (H, W, str(device), tuple(sigmas.tolist()) if spot else None)
        run = self._runs.get(key)
        if run is None:
            s = self.settings
            # the canvas in pixels; a window larger than the canvas gives one view on that axis
            plan = plan_views(H * s.scale, W * s.scale, window=s.window, overlap=s.overlap, scale=s.scale,
                              circular=self._circular)
            fuser = MultiDiffusion(None, plan, self.kernel, view_batch_size=s.view_batch_size,  # type: ignore[arg-type]
                                   device=device)
            ts = sigmas[:-1] if sigmas is not None else torch.zeros(1)
            # ComfyUI owns noise and scheduler, so no generator is held; the methods' own draws are
            # seeded by the node's `seed` (method param `seed`); each canvas has its own method object
            run = StepContext(_call_spec(s, plan, self.kernel, steps), self.kernel, device,
                              stage=Stage(0, plan, fuser, fuser.viewset, ts), method=self._new_method())
            run.method.begin(run)  # SpotDiffusion draws its shifts here
            if len(self._runs) > 8:  # a long session with many canvas sizes: keep the cache small
                self._runs.clear()
            self._runs[key] = run
        return run

    @staticmethod
    def step_index(t: torch.Tensor, sigmas: torch.Tensor | None) -> int:
        """The step whose interval [sigma_i, sigma_i+1) holds `t` (intermediate evaluations of
        2nd-order samplers belong to their step)."""
        if sigmas is None:
            return 0
        s = float(t.reshape(-1)[0])
        sig = sigmas[:-1].float().cpu()
        hits = (sig >= s * (1 - 1e-4)).nonzero().reshape(-1)
        return int(hits[-1]) if len(hits) else 0

    # ---- the fused call -------------------------------------------------------------------
    def fused(self, model_call: Callable[[torch.Tensor, int, int, ViewSet], torch.Tensor], x: torch.Tensor,
              t: torch.Tensor, transformer_options: dict | None) -> torch.Tensor:
        """Eq. 5 over the views of this step. `model_call(crops, start, end, views)` runs the
        model on the crops of entries [start, end) of `views` ((end-start)*B, view-major)."""
        H, W = x.shape[-2:]
        sigmas = (transformer_options or {}).get("sample_sigmas")
        run = self._run(H, W, x.device, sigmas)
        i = self.step_index(t, sigmas)
        run.stage.step = i
        vs = run.method.views(run, i)
        span: list[int] = [0, 0]

        def note(crops: torch.Tensor, s: int, e: int) -> torch.Tensor:
            span[0], span[1] = s, e  # which entries the next denoiser call gets
            return crops

        def denoise(crops: torch.Tensor, _t: Any, views: Any, **_: Any) -> torch.Tensor:
            return model_call(crops, span[0], span[1], vs)

        run.stage.fuser.denoiser = denoise
        self.calls += 1
        try:
            return run.stage.fuser.fuse(x, t, vs, input_fn=note)
        finally:
            run.stage.fuser.denoiser = None  # type: ignore[assignment]  # drop the closure (holds the model)

    # ---- ComfyUI's two wrapper APIs ---------------------------------------------------------
    def apply_model_wrapper(self, executor: Callable, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None,
                            c_crossattn: Any = None, control: Any = None, transformer_options: dict | None = None,
                            **kwargs: Any) -> torch.Tensor:
        """WrappersMP.APPLY_MODEL wrapper: `executor(...)` runs the rest of the chain on a crop.
        A ControlNet deferred by `calc_cond_batch_wrapper` is evaluated here, per view batch, on
        each view's crop of its hint (mdtools.comfy.control)."""
        if control is not None and not isinstance(control, PendingControl):
            _refuse_control(control)
        opts = transformer_options if transformer_options is not None else {}
        B, (H, W) = x.shape[0], x.shape[-2:]

        def call(crops: torch.Tensor, s: int, e: int, vs: ViewSet) -> torch.Tensor:
            k = e - s
            conds = {name: _per_view(v, k, B, (H, W), vs, s, e) for name, v in kwargs.items()}
            cc = _per_view(c_concat, k, B, (H, W), vs, s, e)
            ca = _per_view(c_crossattn, k, B, (H, W), vs, s, e)
            ok = _options_for(opts, k)
            ctl = control
            if isinstance(control, PendingControl):
                cond = {**conds, "c_crossattn": ca, "transformer_options": ok}
                if cc is not None:
                    cond["c_concat"] = cc
                ctl = evaluate(control, crops, t.repeat(k), cond, control.batched_number * k, ok, vs, s, e, B)
            return executor(crops, t.repeat(k), cc, ca, ctl, ok, **conds)

        return self.fused(call, x, t, opts)

    def unet_function_wrapper(self, previous: Callable | None = None) -> Callable:
        """A `set_model_unet_function_wrapper` function (older ComfyUI). `previous`, a wrapper
        already in that single slot, is called per view batch, so it is kept, not replaced."""

        def wrapper(apply_model: Callable, args: dict[str, Any]) -> torch.Tensor:
            x, t, c, coc = args["input"], args["timestep"], dict(args["c"]), list(args["cond_or_uncond"])
            _refuse_control(c.get("control"))
            B, (H, W) = x.shape[0], x.shape[-2:]
            opts = c.get("transformer_options") or {}

            def call(crops: torch.Tensor, s: int, e: int, vs: ViewSet) -> torch.Tensor:
                k = e - s
                ck = {name: (_options_for(v, k) if name == "transformer_options" else _per_view(v, k, B, (H, W), vs, s, e))
                      for name, v in c.items()}
                sub = {"input": crops, "timestep": t.repeat(k), "c": ck, "cond_or_uncond": coc * k}
                if previous is not None:
                    return previous(apply_model, sub)
                return apply_model(crops, sub["timestep"], **ck)

            return self.fused(call, x, t, opts)

        wrapper.mdtools_patch = self  # type: ignore[attr-defined]  # lets a later patch find and replace it
        wrapper.mdtools_previous = previous  # type: ignore[attr-defined]
        return wrapper


def _params(method: str) -> dict[str, Any]:
    return METHODS[method].PARAMS


def _refuse_control(control: Any) -> None:
    """Residuals computed for the whole canvas (no CALC_COND_BATCH wrapper deferred them): applying
    them to every view is the whole-hint-on-every-tile bug, so they are refused."""
    if control is not None:
        raise ConfigError("ControlNet under MultiDiffusion (mdtools) needs a ComfyUI whose ModelPatcher has the "
                          "wrapper API with WrappersMP.CALC_COND_BATCH (ComfyUI 0.3.x, e.g. 0.3.64): here its "
                          "residuals came computed for the whole canvas, not per view; update ComfyUI, or remove "
                          "the Apply ControlNet node or the MultiDiffusion (mdtools) node")


def _per_view(v: Any, k: int, B: int, hw: tuple[int, int], vs: ViewSet, s: int, e: int) -> Any:
    """A model input for k views of a batch-B canvas: spatial tensors (B, ..., H, W) are cropped
    like the latents (c_concat of inpainting models), or at f x coordinates when they are an
    integer f times finer (B, C, f H, f W); other batch tensors (B, ...) are repeated
    once per view (text embeddings, SDXL's `y`), anything else passes unchanged."""
    if not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != B:
        return v
    if v.ndim == 4 and tuple(v.shape[-2:]) == hw:
        return MultiDiffusion.gather(v, vs, s, e)
    f = v.shape[-2] // hw[0] if v.ndim == 4 else 0
    if f > 1 and tuple(v.shape[-2:]) == (hw[0] * f, hw[1] * f):  # finer than the latents: crop at f x coordinates
        return crop_scaled(v, vs, s, e, f)
    return torch.cat([v] * k) if k > 1 else v


def _options_for(opts: dict, k: int) -> dict:
    """transformer_options for k views: the per-chunk lists (cond_or_uncond, uuids) repeated,
    view-major, so patches that split the batch by chunk still line up."""
    if k == 1 or not isinstance(opts, dict):
        return opts
    out = dict(opts)
    for key in ("cond_or_uncond", "uuids"):
        if isinstance(opts.get(key), list):
            out[key] = opts[key] * k
    return out


def apply_patch(model: Any, patch: MultiDiffusionPatch) -> Any:
    """A clone of ComfyUI `model` (a ModelPatcher) with `patch` on it; `model` is unchanged.

    Uses the chaining APPLY_MODEL wrapper when the ModelPatcher has it (with a CALC_COND_BATCH
    wrapper that defers ControlNets to the per-view call), else the single
    `model_function_wrapper` slot (no ControlNet then). An earlier MultiDiffusion (mdtools) patch on the same
    model is replaced (views of views would re-tile crops)."""
    m = model.clone()
    if hasattr(m, "add_wrapper_with_key"):
        from comfy.patcher_extension import WrappersMP

        kinds = [(WrappersMP.APPLY_MODEL, patch.apply_model_wrapper)]
        if hasattr(WrappersMP, "CALC_COND_BATCH"):  # ControlNet per view (mdtools.comfy.control)
            kinds.append((WrappersMP.CALC_COND_BATCH, calc_cond_batch_wrapper))
        for kind, fn in kinds:
            if hasattr(m, "remove_wrappers_with_key"):
                m.remove_wrappers_with_key(kind, WRAPPER_KEY)
            m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return m
    previous = m.model_options.get("model_function_wrapper")
    while getattr(previous, "mdtools_patch", None) is not None:  # replace, not nest, an earlier mdtools patch
        previous = previous.mdtools_previous
    m.set_model_unet_function_wrapper(patch.unet_function_wrapper(previous))
    return m
