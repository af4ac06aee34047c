"""The method contract: a small strategy object on the one sampling loop.

A method never copies the pipeline. `Run.denoise` is the only sampling loop in mdtools:

    for i, t in enumerate(timesteps):
        latents = method.correct(run, i, t, latents)        # latent correction before the model call
        x_in = scheduler.scale_model_input(latents, t)
        pred, sample = method.predict(run, i, t, latents, x_in)   # default: fuse over method.views(run, i)
        latents = scheduler.step(pred, t, sample)            # ONE step on the whole canvas
        latents = method.after_step(run, i, t, latents)      # post-step action

Everything else is shared: CFG batching and per-view prompts (the adapter), view batching
and Eq. 5 fusion (`MultiDiffusion.fuse`), the scheduler step, the recorder and its cost
meter, and the tiled decode. A method with several stages (global pass, DemoFusion)
overrides `generate` and calls `run.denoise` once per stage.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..fusion import InputFn, MultiDiffusion, ViewSet
from ..kernels import Kernel, get_kernel
from ..plan import TilePlan, View


@dataclass
class CallSpec:
    """A validated generation call, known before any model loads (sizes in pixels)."""

    height: int
    width: int
    plan: TilePlan
    kernel: Kernel | None
    scale: int
    window: tuple[int, int]
    overlap: tuple[int, int]
    circular: Any
    steps: int
    guidance_scale: float
    batch: int
    view_batch_size: int
    regions: tuple = ()
    bootstrap_steps: int = 0
    strength: float = 1.0
    img2img: bool = False
    #: model evaluations per sample and step; None: 2 with classifier-free guidance
    #: (guidance_scale > 1), else 1. FLUX-dev's guidance is an embedding: 1 (2 with true CFG).
    cfg_passes: int | None = None

    @property
    def cfg_factor(self) -> int:
        """Model evaluations per sample and step (`cfg_passes`, or 2 with CFG, else 1)."""
        return self.cfg_passes or (2 if self.guidance_scale > 1 else 1)


@dataclass
class Cost:
    """What a generation's denoising really ran, counted and timed on the run.

    `unet_equivalents()` expresses all of it (UNet forwards with and without gradients,
    backward passes, in-loop VAE decodes/encodes, loss calls) in no-grad UNet
    evaluations, using the seconds per evaluation measured on this same run: the cost
    of a SyncDiffusion or DemoFusion run is measured, not assumed.
    """

    unet_calls: int = 0
    unet_evaluations: int = 0
    unet_seconds: float = 0.0
    unet_grad_calls: int = 0
    unet_grad_evaluations: int = 0
    unet_grad_seconds: float = 0.0
    backward_calls: int = 0
    backward_seconds: float = 0.0
    vae_decode_calls: int = 0
    vae_decode_grad_calls: int = 0
    vae_decode_seconds: float = 0.0
    vae_encode_calls: int = 0
    vae_encode_seconds: float = 0.0
    loss_calls: int = 0
    loss_seconds: float = 0.0

    @property
    def work_seconds(self) -> float:
        return (self.unet_seconds + self.unet_grad_seconds + self.backward_seconds + self.vae_decode_seconds
                + self.vae_encode_seconds + self.loss_seconds)

    def unet_equivalents(self) -> float:
        """Denoising work in no-grad UNet evaluations, priced with this run's own timings."""
        if self.unet_evaluations == 0 or self.unet_seconds <= 0:
            return float("nan")
        return self.work_seconds / (self.unet_seconds / self.unet_evaluations)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["unet_equivalents"] = self.unet_equivalents()
        return d


ParamCheck = Callable[[Any], bool]


@dataclass(frozen=True)
class Param:
    """One method parameter: its default, a validity check and a hint naming a valid value."""

    default: Any
    check: ParamCheck
    hint: str
    doc: str = ""


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Method:
    """Base strategy: plain MultiDiffusion hooks. Subclasses override what differs.

    Parameters are declared in `PARAMS` (name -> Param); unknown names and bad values are
    ConfigErrors naming `method.<param>` and a valid value.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}
    supports_regions: ClassVar[bool] = False
    supports_img2img: ClassVar[bool] = True
    supports_circular: ClassVar[bool] = True
    multi_stage: ClassVar[bool] = False

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            valid = sorted(self.PARAMS) or "none"
            raise ConfigError(f"method {self.name!r} has no parameter(s) {unknown}; its parameters: {valid}")
        self.params: dict[str, Any] = {}
        for key, spec in self.PARAMS.items():
            value = params.get(key, spec.default)
            if key in params and not spec.check(value):
                raise ConfigError(f"method.{key}={value!r} is invalid for method {self.name!r}; use {spec.hint}")
            self.params[key] = value
        self.draws: dict[str, Any] = {}  # random draws of the last run (shifts, jitter, colours), for reproduction

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(key)

    def describe(self) -> dict[str, Any]:
        """Name and parameters, JSON-safe (callables by their name), for records and tables."""
        def safe(v: Any) -> Any:
            if callable(v):
                return getattr(v, "__name__", type(v).__name__)
            return v
        return {"name": self.name, **{k: safe(v) for k, v in self.params.items()}}

    # ---- before any model loads ------------------------------------------------------
    def resolve_kernel(self, kernel: str | Kernel | None, kernel_params: dict | None) -> Kernel:
        """The blend kernel this method fuses with (default: the call's, gaussian if none given)."""
        return get_kernel(kernel if kernel is not None else "gaussian", **(kernel_params or {}))

    def check(self, call: CallSpec) -> None:
        """Validate what depends on the canvas and plan; raise ConfigError naming the field."""
        if call.regions and not self.supports_regions:
            raise ConfigError(f"regions are supported by methods 'multidiffusion' and 'mixture', not {self.name!r}")
        if call.img2img and not self.supports_img2img:
            raise ConfigError(f"method {self.name!r} runs its own stages; init_latents (img2img) is not supported")
        if call.circular and not self.supports_circular:
            raise ConfigError(f"method {self.name!r} does not support circular canvases; use circular=False")

    def needs_cfg(self, call: CallSpec) -> bool:
        """Whether the model runs with classifier-free guidance (as diffusers: scale > 1)."""
        return call.guidance_scale > 1.0

    def extra_prompts(self, call: CallSpec) -> list[tuple[str, str | None]]:
        """(prompt, negative prompt) pairs beyond the call's own (prompt id 0), in id order."""
        return []

    def noise_shape(self, call: CallSpec, channels: int) -> tuple[int, ...]:
        """Shape of the initial noise (`latents=`) of the first stage."""
        return (call.batch, channels, call.plan.latent_height, call.plan.latent_width)

    def estimate(self, call: CallSpec) -> dict[str, float]:
        """Expected work, for dry runs: UNet sample evaluations (CFG counts 2) and other calls."""
        cfg = call.cfg_factor
        steps = max(1, int(call.steps * call.strength)) if call.img2img else call.steps
        return {"unet_evaluations": call.plan.n_views * steps * cfg * call.batch}

    # ---- sampling hooks -----------------------------------------------------------------
    def generate(self, run: "Run") -> torch.Tensor:
        """The whole sampling: by default one denoising loop over the call's canvas."""
        latents, timesteps = run.start_latents()
        return run.denoise(self, latents, timesteps, run.call.plan)

    def begin(self, run: "Run") -> None:
        """Called at the start of each denoising loop (run.stage is set)."""

    def views(self, run: "Run", i: int) -> ViewSet:
        """The entries fused at step i (default: the stage plan with the kernel)."""
        return run.stage.viewset

    def inputs(self, run: "Run", i: int, t: torch.Tensor) -> InputFn | None:
        """A function replacing view crops before the model call (region bootstrapping), or None."""
        return None

    def correct(self, run: "Run", i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Latent correction before the model call (DemoFusion's skip residual)."""
        return latents

    def predict(self, run: "Run", i: int, t: torch.Tensor, latents: torch.Tensor,
                x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused model output, sample the scheduler steps from); default Eq. 5 over views(i)."""
        return run.fuse(x_in, t, self.views(run, i), input_fn=self.inputs(run, i, t)), latents

    def after_step(self, run: "Run", i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Post-step action on the stepped latents."""
        return latents

    def end(self, run: "Run", latents: torch.Tensor) -> torch.Tensor:
        """Called at the end of each denoising loop; returns the loop's result."""
        return latents


@dataclass
class Stage:
    """The state of one denoising loop: its plan, fuser and default view set."""

    index: int
    plan: TilePlan
    fuser: MultiDiffusion
    viewset: ViewSet
    timesteps: torch.Tensor
    step: int = 0


class Run:
    """The shared machinery a method's hooks use during one generation.

    Holds the pipeline, the adapter (prompt conditioning, CFG), the scheduler, the
    generator, the recorder and the cost meter; `denoise` is the sampling loop.
    """

    def __init__(self, md: Any, call: CallSpec, adapter: Any, *, kernel: Kernel, generator: Any, recorder: Any,
                 callback: Callable[[dict[str, Any]], None] | None, progress: bool, eta: float, diagnostics: bool,
                 diagnostics_map: bool, latents: torch.Tensor | None, init_latents: torch.Tensor | None, dtype: torch.dtype,
                 method_name: str):
        from ..pipeline import _step_kwargs

        self.md = md
        self.call = call
        self.adapter = adapter
        self.kernel = kernel
        self.generator = generator
        self.rec = recorder
        self.callback = callback
        self.progress = progress
        self.diagnostics = diagnostics
        self.diagnostics_map = diagnostics_map
        self.user_latents = latents
        self.init_latents = init_latents
        self.dtype = dtype
        self.device = md.device
        self.scheduler = md.scheduler
        self.step_kwargs = _step_kwargs(self.scheduler, generator, eta)
        self.method_name = method_name
        self.cost = Cost()
        self.fusers: list[MultiDiffusion] = []
        self.stage: Stage = None  # type: ignore[assignment]  # set by denoise
        self.n_stages = 0
        self.total_steps = 0
        self.noise: torch.Tensor | None = None  # the initial N(0, 1) noise of the current stage
        self.extra: dict[str, Any] = {}
        self.fusion_total = 0.0

    # ---- noise and schedules ----------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.md.unet.config.in_channels

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """N(0, 1) noise from the run's generator, as diffusers draws it."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(tuple(shape), generator=self.generator, device=self.device, dtype=self.dtype)

    def schedule(self, strength: float = 1.0) -> torch.Tensor:
        """Fresh timesteps for a loop; with strength < 1 the last part only (img2img, as diffusers' get_timesteps)."""
        sch = self.scheduler
        n = self.call.steps
        sch.set_timesteps(n, device=self.device)
        ts = sch.timesteps
        if strength < 1.0:
            t_start = n - min(int(n * strength), n)
            ts = ts[t_start * sch.order:]
            if hasattr(sch, "set_begin_index"):
                sch.set_begin_index(t_start * sch.order)
        return ts

    def start_latents(self, shape: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial latents and timesteps of a one-stage generation: the user's `latents` or fresh
        noise, scaled by init_noise_sigma, or for img2img the noised `init_latents`."""
        shape = tuple(shape or (self.call.batch, self.channels, self.call.plan.latent_height, self.call.plan.latent_width))
        noise = self.user_latents.to(self.device, self.dtype) if self.user_latents is not None else self.randn(shape)
        self.noise = noise
        if self.init_latents is None:
            return noise * self.scheduler.init_noise_sigma, self.schedule()
        ts = self.schedule(self.call.strength)
        init = self.init_latents.to(device=self.device, dtype=self.dtype)
        return self.scheduler.add_noise(init, noise, ts[:1].repeat(self.call.batch)), ts

    # ---- model calls ------------------------------------------------------------------------
    def fuse(self, x_in: torch.Tensor, t: torch.Tensor, vs: ViewSet, *, input_fn: InputFn | None = None) -> torch.Tensor:
        """Eq. 5 over the entries of `vs` with the stage's fuser (counted and timed)."""
        return self.stage.fuser.fuse(x_in, t, vs, input_fn=input_fn)

    def predict_views(self, crops: torch.Tensor, t: torch.Tensor, views: Sequence[View], *,
                      cond: torch.Tensor | None = None, grad: bool = False) -> torch.Tensor:
        """The adapter's guided prediction for view crops outside the fuser (SyncDiffusion), counted."""
        n_eval = crops.shape[0] * getattr(self.adapter, "evaluations_per_sample", 1)
        self.sync()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = self.adapter(crops, t, views, cond)
        self.sync()
        dt = time.perf_counter() - t0
        if grad:
            self.cost.unet_grad_calls += 1
            self.cost.unet_grad_evaluations += n_eval
            self.cost.unet_grad_seconds += dt
        else:
            self.cost.unet_calls += 1
            self.cost.unet_evaluations += n_eval
            self.cost.unet_seconds += dt
        return out

    def decode_latents(self, latents: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Scaled latents -> image in [-1, 1] (unclamped) with the VAE, counted; keeps the graph with `grad`."""
        vae = self.md.vae
        cfg = vae.config
        x = latents / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None) is not None:
            x = x + cfg.shift_factor
        self.sync()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            img = vae.decode(x.to(vae.dtype), return_dict=False)[0]
        self.sync()
        self.cost.vae_decode_seconds += time.perf_counter() - t0
        self.cost.vae_decode_calls += 1
        self.cost.vae_decode_grad_calls += int(grad)
        return img

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (the posterior mean), counted."""
        vae = self.md.vae
        cfg = vae.config
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            lat = vae.encode(images.to(device=self.device, dtype=vae.dtype)).latent_dist.mode()
        self.sync()
        self.cost.vae_encode_seconds += time.perf_counter() - t0
        self.cost.vae_encode_calls += 1
        if getattr(cfg, "shift_factor", None) is not None:
            lat = lat - cfg.shift_factor
        return (lat * cfg.scaling_factor).to(self.dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A recorder phase (time and peak memory) inside the denoising loop, e.g. 'sync'."""
        with self.rec.phase(name):
            yield

    # ---- the sampling loop ------------------------------------------------------------------
    def new_stage(self, plan: TilePlan, timesteps: torch.Tensor, *, kernel: Kernel | None = None) -> Stage:
        fuser = MultiDiffusion(self.adapter, plan, kernel or self.kernel, view_batch_size=self.call.view_batch_size,
                               device=self.device, diagnostics=self.diagnostics, diagnostics_map=self.diagnostics_map,
                               sync_timing=self.rec.enabled and self.device.type == "cuda")
        self.fusers.append(fuser)
        return Stage(self.n_stages, plan, fuser, fuser.viewset, timesteps)

    def denoise(self, method: Method, latents: torch.Tensor, timesteps: torch.Tensor, plan: TilePlan, *,
                kernel: Kernel | None = None) -> torch.Tensor:
        """One denoising loop over `plan`'s canvas: the only sampling loop in mdtools."""
        self.stage = self.new_stage(plan, timesteps, kernel=kernel)
        self.n_stages += 1
        sch = self.scheduler
        method.begin(self)
        for i, t in enumerate(_progress(timesteps, self.progress, self.method_name, self.stage.index)):
            self.stage.step = i
            t0 = time.perf_counter()
            latents = method.correct(self, i, t, latents)
            x_in = sch.scale_model_input(latents, t)
            pred, sample = method.predict(self, i, t, latents, x_in)
            latents = sch.step(pred, t, sample, **self.step_kwargs, return_dict=False)[0]
            latents = method.after_step(self, i, t, latents)
            if self.rec.enabled:
                self.rec.sync()
            self.total_steps += 1
            info = {
                "step": i, "stage": self.stage.index, "timestep": t, "latents": latents, "prediction": pred,
                "step_seconds": time.perf_counter() - t0,
                "disagreement": self.stage.fuser.last_disagreement,
                "disagreement_map": self.stage.fuser.last_disagreement_map,
            }
            self.rec(info)
            if self.callback is not None:
                self.callback(info)
        return method.end(self, latents)

    def finish(self) -> Cost:
        """Fold the fusers' counters into the cost meter (call once, after the last loop)."""
        self.fusion_total = sum(f.fusion_seconds for f in self.fusers)
        for f in self.fusers:
            self.cost.unet_calls += f.forward_calls
            self.cost.unet_evaluations += f.model_evaluations
            self.cost.unet_seconds += f.forward_seconds
        self.fusers = []
        return self.cost


def _progress(it: Any, enabled: bool, method: str, stage: int) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    desc = f"denoise ({method}{', stage ' + str(stage + 1) if stage else ''})"
    return tqdm(it, desc=desc, unit="step", leave=False)

