"""The one denoising loop: CallSpec, Cost, Stage, the StepContext that method hooks receive, and Run.

`Run.denoise` is the only sampling loop in mdtools:

    for i, t in enumerate(timesteps):
        latents = method.correct(ctx, i, t, latents)        # latent correction before the model call
        x_in = scheduler.scale_model_input(latents, t)
        pred, sample = method.predict(ctx, i, t, latents, x_in)   # default: fuse over method.views(ctx, i)
        latents = scheduler.step(pred, t, sample)            # ONE step on the whole canvas
        latents = method.after_step(ctx, i, t, latents)      # post-step action

A method's per-step hooks receive a `StepContext`: the call, the stage (plan, fuser, views,
step), the kernel, the device, the generator, `fuse`, `predict_views`, `decode_latents`, the
`unet` / `vae` / `scheduler` accessors and `with ctx.measure("loss"):` for cost accounting.
`Run` is the StepContext of a whole generation (it adds the loop and the noise); the ComfyUI
pack builds a plain StepContext for a canvas that ComfyUI samples. This module imports no
method and no pipeline.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .errors import ConfigError
from .fusion import InputFn, MultiDiffusion, ViewSet
from .kernels import Kernel
from .plan import TilePlan, View

#: what `StepContext.measure` counts: cost fields `<kind>_calls` and `<kind>_seconds`
MEASURED_KINDS = ("loss", "backward")


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


#: the kinds of work Cost prices by their floating-point operations, per call (per evaluation for the model)
FLOP_KINDS = ("unet_evaluation", "controlnet_evaluation", "vae_decode", "vae_encode", "loss", "backward")


@dataclass
class Cost:
    """What a generation's denoising really ran, counted and timed on the run.

    `unet_equivalents()` expresses all of it (UNet forwards with and without gradients,
    backward passes, in-loop VAE decodes/encodes, loss calls) in no-grad UNet evaluations.
    The counts are priced by work that does not depend on the machine's state: model
    evaluations count 1 each (a forward with gradients runs the same operations), and each
    other kind by its floating-point operations at its shape, counted once per run with
    torch.utils.flop_counter (`flops`: matrix products, convolutions and attention, the operations
    it counts; elementwise work is not counted) over those of one model evaluation. Identical work gives
    identical cost whatever the load. Wall time stays in the `*_seconds` fields, never the cost.
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
    #: ControlNet forwards, and samples through one ControlNet (a view with CFG counts 2, guess mode 1;
    #: each ControlNet of a MultiControlNet counts); their seconds are a part of unet_seconds
    controlnet_calls: int = 0
    controlnet_evaluations: int = 0
    controlnet_seconds: float = 0.0
    #: FLOPs of one unit of each kind of FLOP_KINDS (one model evaluation, one decode, ...), counted once
    flops: dict[str, float] = field(default_factory=dict)

    @property
    def work_seconds(self) -> float:
        return (self.unet_seconds + self.unet_grad_seconds + self.backward_seconds + self.vae_decode_seconds
                + self.vae_encode_seconds + self.loss_seconds)

    def unet_equivalents(self) -> float:
        """Denoising work in no-grad UNet evaluations: evaluations count 1, other work its FLOPs over
        one evaluation's. NaN when other work ran whose FLOPs were not counted."""
        other = {"controlnet_evaluation": self.controlnet_evaluations, "vae_decode": self.vae_decode_calls,
                 "vae_encode": self.vae_encode_calls, "loss": self.loss_calls,
                 "backward": self.backward_calls}
        total = float(self.unet_evaluations + self.unet_grad_evaluations)
        for kind, n in other.items():
            if n == 0:
                continue
            unit, per_eval = self.flops.get(kind), self.flops.get("unet_evaluation")
            if unit is None or not per_eval:  # 0 is a price: work without products or convolutions (an MSE loss)
                return float("nan")
            total += n * unit / per_eval
        return total if total > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "flops"}
        d.update({f"flops_{k}": v for k, v in self.flops.items()})
        d["unet_equivalents"] = self.unet_equivalents()
        d["pricing"] = "flops"
        return d


@dataclass
class Stage:
    """The state of one denoising loop: its plan, fuser and default view set."""

    index: int
    plan: TilePlan
    fuser: MultiDiffusion
    viewset: ViewSet
    timesteps: torch.Tensor
    step: int = 0


class StepContext:
    """What a method's per-step hooks may use: the narrow contract between a method and a loop.

    `call`, `stage` (plan, fuser, default views, step), `kernel`, `device`, `generator`,
    `method` (this canvas's own method object), `extra` (record entries), `cost` (the meter)
    and `fuse`. A context that holds the whole model (`Run`) also gives `unet`, `vae`,
    `scheduler`, `predict_views` and `decode_latents`; a context without them (a canvas
    sampled by ComfyUI) raises ConfigError naming what is missing.
    """

    def __init__(self, call: CallSpec, kernel: Kernel, device: torch.device, *, stage: Stage | None = None,
                 generator: Any = None, method: Any = None):
        self.call = call
        self.kernel = kernel
        self.device = device
        self.stage: Stage = stage  # type: ignore[assignment]  # set by the loop
        self.generator = generator
        self.method = method
        self.extra: dict[str, Any] = {}
        self.cost = Cost()

    # ---- fusion and cost accounting --------------------------------------------------------
    def fuse(self, x_in: torch.Tensor, t: torch.Tensor, vs: ViewSet, *, input_fn: InputFn | None = None) -> torch.Tensor:
        """Eq. 5 over the entries of `vs` with the stage's fuser (counted and timed)."""
        fuser = self.stage.fuser
        c = self.cost
        if "unet_evaluation" in c.flops or not (c.vae_encode_calls or c.vae_decode_calls or c.loss_calls or c.backward_calls):
            return fuser.fuse(x_in, t, vs, input_fn=input_fn)  # only model evaluations so far: they price themselves
        before = fuser.model_evaluations
        with self.count_flops("unet_evaluation", lambda: fuser.model_evaluations - before):
            return fuser.fuse(x_in, t, vs, input_fn=input_fn)

    def sync(self) -> None:
        """Wait for the device (CUDA) so that a clock read measures finished work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        """`with ctx.measure("loss"):` counts one call of `kind` (MEASURED_KINDS) and its seconds in `cost`."""
        if kind not in MEASURED_KINDS:
            raise ConfigError(f"measure({kind!r}) is not a counted kind; choose one of {list(MEASURED_KINDS)}")
        self.sync()
        t0 = time.perf_counter()
        try:
            with self.count_flops(kind):
                yield
        finally:
            self.sync()
            setattr(self.cost, f"{kind}_calls", getattr(self.cost, f"{kind}_calls") + 1)
            setattr(self.cost, f"{kind}_seconds", getattr(self.cost, f"{kind}_seconds") + time.perf_counter() - t0)

    @contextmanager
    def count_flops(self, kind: str, units: int | Callable[[], int] = 1) -> Iterator[None]:
        """The first time `kind` runs in this generation, count its FLOPs per unit (`units`: a number,
        or a function read afterwards) into `cost.flops`."""
        if kind in self.cost.flops:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            yield
        n = units() if callable(units) else units
        if n > 0:
            self.cost.flops[kind] = counter.get_total_flops() / n

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A recorder phase (time and peak memory) inside the loop; a no-op without a recorder."""
        yield

    # ---- the model (a context that holds it) --------------------------------------------------
    def _missing(self, what: str) -> ConfigError:
        name = getattr(self.method, "name", "this method")
        return ConfigError(f"{what} is not available where this canvas is sampled (method {name!r} needs the whole "
                           "pipeline); use MultiDiffusionPipeline or the Generate (mdtools) node")

    @property
    def unet(self) -> Any:
        raise self._missing("the denoiser (unet)")

    @property
    def vae(self) -> Any:
        raise self._missing("the VAE")

    @property
    def scheduler(self) -> Any:
        raise self._missing("the scheduler")

    def predict_views(self, crops: torch.Tensor, t: torch.Tensor, views: Sequence[View], *,
                      cond: torch.Tensor | None = None, grad: bool = False) -> torch.Tensor:
        raise self._missing("predict_views")

    def decode_latents(self, latents: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        raise self._missing("decode_latents")


class Run(StepContext):
    """The StepContext of one generation: the model, the loop, the noise and the recorder.

    Holds the pipeline, the adapter (prompt conditioning, CFG), the scheduler, the
    generator, the recorder and the cost meter; `denoise` is the sampling loop. A method
    with several stages (global pass, DemoFusion) overrides `generate` and calls
    `run.denoise` once per stage.
    """

    def __init__(self, md: Any, call: CallSpec, adapter: Any, *, kernel: Kernel, generator: Any, recorder: Any,
                 callback: Callable[[dict[str, Any]], None] | None, progress: bool, eta: float, diagnostics: bool,
                 diagnostics_map: bool, latents: torch.Tensor | None, init_latents: torch.Tensor | None, dtype: torch.dtype,
                 method: Any, states: Any = None, resume: Any = None, preview: Any = None):
        super().__init__(call, kernel, md.device, generator=generator, method=method)
        self.md = md
        self.adapter = adapter
        self.rec = recorder
        self.callback = callback
        self.progress = progress
        self.diagnostics = diagnostics
        self.diagnostics_map = diagnostics_map
        self.user_latents = latents
        self.init_latents = init_latents
        self.dtype = dtype
        self.step_kwargs = step_kwargs(self.scheduler, generator, eta)
        self.method_name = method.name
        self.fusers: list[MultiDiffusion] = []
        self.n_stages = 0
        self.total_steps = 0
        self.noise: torch.Tensor | None = None  # the initial N(0, 1) noise of the current stage
        self.fusion_total = 0.0
        self.states = states  # mdtools.state.StateFile: snapshots every step, written every k and on interruption
        self.resume = resume  # mdtools.state.ResumeState: where an interrupted run continues
        self.preview = preview  # mdtools.preview.Previewer: a cheap RGB canvas every k steps
        self.resumed_at: tuple[int, int] | None = None  # (stage, step) a resumed run continued from
        if getattr(md, "shard", None) is not None:
            md.shard.reset()
        if getattr(adapter, "control", None) is not None:
            adapter.control.bind(self)  # its keep schedule and canvas size follow this loop's stage

    # ---- the model ----------------------------------------------------------------------------
    @property
    def unet(self) -> Any:
        return self.md.unet

    @property
    def vae(self) -> Any:
        return self.md.vae

    @property
    def scheduler(self) -> Any:
        return self.md.scheduler

    @property
    def channels(self) -> int:
        return self.md.unet.config.in_channels

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A recorder phase (time and peak memory) inside the denoising loop, e.g. 'sync'."""
        with self.rec.phase(name):
            yield

    # ---- noise and schedules ----------------------------------------------------------------
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
    def predict_views(self, crops: torch.Tensor, t: torch.Tensor, views: Sequence[View], *,
                      cond: torch.Tensor | None = None, grad: bool = False) -> torch.Tensor:
        """The adapter's guided prediction for view crops outside the fuser (SyncDiffusion), counted."""
        n_eval = crops.shape[0] * getattr(self.adapter, "evaluations_per_sample", 1)
        self.sync()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad), self.count_flops("unet_evaluation", n_eval):
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
        x = unscale_latents(latents, vae.config)
        self.sync()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad), self.count_flops("vae_decode"):
            img = vae.decode(x.to(vae.dtype), return_dict=False)[0]
        self.sync()
        self.cost.vae_decode_seconds += time.perf_counter() - t0
        self.cost.vae_decode_calls += 1
        self.cost.vae_decode_grad_calls += int(grad)
        return img

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (the posterior mean), counted."""
        vae = self.md.vae
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad(), self.count_flops("vae_encode"):
            lat = vae.encode(images.to(device=self.device, dtype=vae.dtype)).latent_dist.mode()
        self.sync()
        self.cost.vae_encode_seconds += time.perf_counter() - t0
        self.cost.vae_encode_calls += 1
        return scale_latents(lat, vae.config).to(self.dtype)

    # ---- the sampling loop ------------------------------------------------------------------
    def new_stage(self, plan: TilePlan, timesteps: torch.Tensor, *, kernel: Kernel | None = None) -> Stage:
        fuser = MultiDiffusion(self.adapter, plan, kernel or self.kernel, view_batch_size=self.call.view_batch_size,
                               device=self.device, diagnostics=self.diagnostics, diagnostics_map=self.diagnostics_map,
                               sync_timing=self.rec.enabled and self.device.type == "cuda",
                               shard=getattr(self.md, "shard", None))
        self.fusers.append(fuser)
        return Stage(self.n_stages, plan, fuser, fuser.viewset, timesteps)

    def denoise(self, method: Any, latents: torch.Tensor, timesteps: torch.Tensor, plan: TilePlan, *,
                kernel: Kernel | None = None) -> torch.Tensor:
        """One denoising loop over `plan`'s canvas: the only sampling loop in mdtools."""
        index = self.n_stages
        if self.resume is not None and index < self.resume.position[0]:
            return self._skip_stage(index)  # finished before the interruption: its saved output
        self.stage = self.new_stage(plan, timesteps, kernel=kernel)
        self.n_stages += 1
        sch = self.scheduler
        method.begin(self)
        start = 0
        if self.resume is not None:
            latents, start = self._resume_stage(method, latents)
        try:
            for i, t in enumerate(_progress(timesteps, self.progress, self.method_name, self.stage.index)):
                if i < start:
                    continue
                latents = self._step(method, i, t, latents, sch)
        except KeyboardInterrupt:
            if self.states is not None and self.states.current is not None:
                self.states.write()  # Ctrl-C: the last finished step, so `resume=` continues from it
            raise
        out = method.end(self, latents)
        if self.states is not None:
            self.states.stage_done(index, out, self.generator)
        return out

    def _step(self, method: Any, i: int, t: torch.Tensor, latents: torch.Tensor, sch: Any) -> torch.Tensor:
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
        if self.states is not None:
            self.states.after_step(self, method, self.stage.index, i, latents)
        if self.preview is not None:
            self.preview(self, i, latents)
        if self.callback is not None:
            self.callback(info)
        return latents

    def _skip_stage(self, index: int) -> torch.Tensor:
        """A stage the interrupted run finished: its output, and the generators as they were after it."""
        from .state import restore_generators

        saved = self.resume.stages[index]
        restore_generators(self.generator, saved["rng"])
        self.n_stages += 1
        out = saved["latents"].to(self.device)
        if self.states is not None:
            self.states.stage_done(index, out, self.generator)
        return out

    def _resume_stage(self, method: Any, latents: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Restore the interrupted stage (latents, scheduler, generators, noise, method draws); the next step."""
        from .state import restore_generators, restore_method, restore_scheduler

        cur, self.resume = self.resume.current, None  # consumed: later stages run as usual
        if cur is None:
            return latents, 0  # interrupted between stages: this stage starts from its own inputs
        restore_scheduler(self.scheduler, cur["scheduler"])
        restore_generators(self.generator, cur["rng"])
        restore_method(method, cur["method"])
        self.noise = None if cur["noise"] is None else cur["noise"].to(self.device)
        self.total_steps = int(cur["total_steps"])
        self.resumed_at = (int(cur["stage"]), int(cur["step"]) + 1)
        return cur["latents"].to(self.device, self.dtype), int(cur["step"]) + 1

    def finish(self) -> Cost:
        """Fold the fusers' counters into the cost meter (call once, after the last loop)."""
        self.fusion_total = sum(f.fusion_seconds for f in self.fusers)
        for f in self.fusers:
            self.cost.unet_calls += f.forward_calls
            self.cost.unet_evaluations += f.model_evaluations
            self.cost.unet_seconds += f.forward_seconds
        control = getattr(self.adapter, "control", None)
        if control is not None:
            self.cost.controlnet_calls += control.calls
            self.cost.controlnet_evaluations += control.evaluations
            self.cost.controlnet_seconds += control.seconds
            self.cost.flops.update(control.flops)  # both counted without nesting: the cleanest prices
        shard = getattr(self.md, "shard", None)
        if shard is not None:  # the canvas's work is every rank's: counts summed (seconds stay this rank's)
            counts = torch.tensor([self.cost.unet_calls, self.cost.unet_evaluations], dtype=torch.float64)
            shard.all_reduce(counts)
            self.cost.unet_calls, self.cost.unet_evaluations = (int(v) for v in counts.tolist())
        self.fusers = []
        return self.cost


def scale_latents(latents: torch.Tensor, vae_config: Any) -> torch.Tensor:
    """VAE latents -> the diffusion model's latents: (z - shift_factor) * scaling_factor (as diffusers)."""
    shift = getattr(vae_config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae_config.scaling_factor


def unscale_latents(latents: torch.Tensor, vae_config: Any) -> torch.Tensor:
    """The diffusion model's latents -> VAE latents: z / scaling_factor + shift_factor (as diffusers)."""
    x = latents / vae_config.scaling_factor
    shift = getattr(vae_config, "shift_factor", None)
    if shift is not None:
        x = x + shift
    return x


def step_kwargs(scheduler: Any, generator: Any, eta: float) -> dict[str, Any]:
    """eta / generator for schedulers whose step() takes them (as diffusers pipelines do)."""
    params = set(inspect.signature(scheduler.step).parameters)
    out: dict[str, Any] = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generator
    return out


def _progress(it: Any, enabled: bool, method: str, stage: int) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    desc = f"denoise ({method}{', stage ' + str(stage + 1) if stage else ''})"
    return tqdm(it, desc=desc, unit="step", leave=False)


__all__ = ["FLOP_KINDS", "MEASURED_KINDS", "CallSpec", "Cost", "Run", "Stage", "StepContext", "scale_latents", "step_kwargs",
           "unscale_latents"]
