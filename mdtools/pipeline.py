"""`MultiDiffusionPipeline`: MultiDiffusion sampling on the components of a diffusers pipeline.

It holds a diffusers pipeline (SD 1.x/2.x, SDXL, SD3, FLUX, or a pixel-space UNet2DModel
pipeline) and reuses its components without copying: prompt encoding is the pipeline's own
`encode_prompt`, so conditioning is bit-identical to diffusers. What depends on the model
kind is asked of its family (`mdtools.models.families`); the loop is `mdtools.sampling.Run`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .call import OUTPUT_TYPES, check_generation_args, prepare_call
from .distributed import check_distributable
from .errors import ConfigError, check_choice, check_positive_int
from .instrument import PhaseStats, Record, Recorder
from .kernels import Kernel
from .methods import Method
from .models import (
    DTYPES,
    FLOW_KINDS,
    FLUX_NATIVE_PX,
    MODEL_OPTIONS,
    LatentDenoiserView,
    ModelKind,
    check_model_sizes,
    config_source,
    detect_family,
    flux_cfg_passes,
    load_pipeline,
    model_options,
    prepare_control,
    read_model_kind,
    read_native_window,
    read_scale_factor,
    resolve_model_path,
)
from .plan import TilePlan
from .preview import Previewer
from .sampling import Run, unscale_latents
from .schedulers import FlowMatchSchedule, check_scheduler_fits, make_scheduler
from .state import ResumeState, StateFile, call_identity
from .vae import SYNC_STRATEGIES, check_park, tiled_decode

AUTO_TILE_PIXELS = 2048 * 2048  # "auto" VAE tiling above this canvas size
#: Default tile of the tiled VAE decode, in pixels (diffusers' tile_sample_min_size for SD).
VAE_TILE_PX = 512
#: the diffusion-transformer kinds (flow matching, 2x2 patches): kept under its old name
DIT_KINDS = FLOW_KINDS


@dataclass
class MultiDiffusionOutput:
    """Result of a generation: decoded `images` (None for output_type="latent"), the final
    `latents`, the view `plan` used, the measurement `record` and, when asked for with
    `metrics=[...]`, the image metrics of the first image (mdtools.metrics.evaluate)."""

    images: Any
    latents: torch.Tensor
    plan: TilePlan
    record: Record | None = None
    metrics: dict[str, Any] | None = None


class MultiDiffusionPipeline:
    """MultiDiffusion over a canvas larger than the model's window.

    Build with `from_pipe(pipe)` (shares the components of a loaded diffusers pipeline)
    or `from_pretrained(id_or_path)` ('toy' loads the embedded model). Call it like a
    diffusers pipeline.
    """

    def __init__(self, pipe: Any, *, info: dict[str, Any] | None = None):
        self.pipe = pipe
        #: the model family: every kind-dependent choice (mdtools.models.families)
        self.family = detect_family(pipe)
        self.kind: ModelKind = self.family.kind  # type: ignore[assignment]
        #: what every record of this pipeline carries (arch presets: random_weights: true, ...)
        self.info: dict[str, Any] = dict(info or {})
        self._flow: FlowMatchSchedule | None = None  # the flow schedule of the current call
        #: mdtools.distributed.Shard when this process is one rank of a group sharing each canvas
        self.shard: Any = None

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_pipe(cls, pipe: Any) -> "MultiDiffusionPipeline":
        """Wrap an existing diffusers pipeline object; its modules are shared, not copied."""
        return cls(pipe)

    @classmethod
    def from_pretrained(cls, id_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        seed: int = 0, text_encoders: str = "stand-in", config: str | os.PathLike | None = None,
                        devices: Sequence[str | torch.device] | None = None, **kwargs: Any) -> "MultiDiffusionPipeline":
        """Load a model and wrap it: 'toy' (embedded), 'arch:<preset>' (exact architecture, seeded
        random weights, `seed` and `text_encoders` apply; mdtools.models.arch), a single checkpoint
        file ('model.safetensors'; `config` overrides the detected architecture;
        mdtools.models.single_file), a diffusers folder or a hub id.

        `kwargs` go to diffusers' loader (e.g. torch_dtype; for single files also tokenizers).
        A model that cannot be loaded raises `ModelLoadError`: one line with the cause.
        `devices=['cuda:0', 'cuda:1', ...]` returns a `mdtools.distributed.DevicePool`: one process per
        device, each holding the model, sharing every canvas (called like the pipeline).
        """
        if devices is not None:
            import functools

            from .distributed import DevicePool

            loader = functools.partial(cls.from_pretrained, id_or_path, seed=seed, text_encoders=text_encoders,
                                       config=config, **kwargs)
            return DevicePool(loader, list(devices))  # type: ignore[return-value]
        pipe, info = load_pipeline(id_or_path, device=device, seed=seed, text_encoders=text_encoders, config=config,
                                   **kwargs)
        return cls(pipe, info=info)

    @classmethod
    def on_ray(cls, id_or_path: str | os.PathLike, ranks: int, *, gpus_per_rank: float = 0, cpus_per_rank: float = 1,
               **kwargs: Any) -> Any:
        """A `mdtools.distributed.RayDevicePool`: `ranks` Ray actors, each loading the model with
        `from_pretrained(id_or_path, **kwargs)`, sharing every canvas (called like the pipeline)."""
        import functools

        from .distributed import RayDevicePool

        return RayDevicePool(functools.partial(cls.from_pretrained, id_or_path, **kwargs), ranks,
                             gpus_per_rank=gpus_per_rank, cpus_per_rank=cpus_per_rank)

    def enable_distributed(self, shard: Any = None) -> "MultiDiffusionPipeline":
        """Share every canvas with the other ranks of the process group (`mdtools.distributed`):
        `shard` from `mdtools.distributed.init()` (called here when None)."""
        from .distributed import init

        self.shard = shard if shard is not None else init()
        return self

    def to(self, *args: Any, **kwargs: Any) -> "MultiDiffusionPipeline":
        """Move/cast the wrapped pipeline (as diffusers' `.to`)."""
        self.pipe = self.pipe.to(*args, **kwargs)
        return self

    # ---- properties -----------------------------------------------------------------
    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser: the UNet, or for SD3/FLUX the transformer (FLUX's seen through
        `LatentDenoiserView`, whose config reports the unpacked canvas's channels)."""
        return self.family.denoiser(self.vae_scale_factor)

    @property
    def scheduler(self) -> Any:
        """The pipeline's scheduler; for SD3/FLUX during a call, the call's `FlowMatchSchedule`."""
        if self._flow is not None and self._flow.scheduler is self.pipe.scheduler:
            return self._flow
        return self.pipe.scheduler

    @property
    def vae(self) -> Any:
        return getattr(self.pipe, "vae", None)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (VAE down blocks - 1); 1 for pixel-space models."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_window(self) -> int:
        """The model's training resolution in pixels (e.g. 512 for SD 1.5, 1024 for SDXL)."""
        s = self.unet.config.sample_size
        s = s[0] if isinstance(s, (tuple, list)) else s
        return int(s) * self.vae_scale_factor

    def set_scheduler(self, name: str, **overrides: Any) -> None:
        """Swap the scheduler for `name` (alias like 'dpmpp_2m' or a diffusers class name).
        SD3/FLUX take flow-matching schedulers only ('flow_euler', 'flow_heun'), UNets the others."""
        check_scheduler_fits(name, self.kind)
        self.pipe.scheduler = make_scheduler(name, self.pipe.scheduler.config, **overrides)

    # ---- generation -------------------------------------------------------------------
    def vae_tiling_options(self, vae_tiling: Any, plan: TilePlan) -> dict[str, Any] | None:
        """Resolve `vae_tiling` (False, True, "auto" or a dict with keys tiling, tile, overlap,
        sync_groupnorm, sync_strategy, auto_pixels, park, park_budget_bytes, park_dtype) into
        tiled-decode options, or None for a full decode. sync_strategy: one of
        `mdtools.vae.SYNC_STRATEGIES`; park: where waiting tiles are kept ("cpu", a device, or
        "disk" / "disk:<dir>" out of core); park_budget_bytes caps what the "auto" strategy
        parks (see `mdtools.vae.tiled_decode`).

        "auto" tiles when the canvas has more than `auto_pixels` pixels (default 2048^2, where
        a full SD decode needs several GB of activations)."""
        if self.vae is None:
            return None
        opts: dict[str, Any] = {"tiling": vae_tiling} if not isinstance(vae_tiling, dict) else dict(vae_tiling)
        unknown = set(opts) - {"tiling", "tile", "overlap", "sync_groupnorm", "sync_strategy", "auto_pixels",
                               "park", "park_budget_bytes", "park_dtype"}
        if unknown:
            raise ConfigError(f"vae_tiling has unknown key(s) {sorted(unknown)}; valid keys: tiling, tile, overlap, "
                              "sync_groupnorm, sync_strategy, auto_pixels, park, park_budget_bytes, park_dtype")
        if opts.get("park") is not None:
            check_park("vae_tiling.park", opts["park"])  # a bad value fails here, before any denoising

        strategy = opts.get("sync_strategy") or "auto"
        check_choice("vae_tiling.sync_strategy", strategy, SYNC_STRATEGIES)
        mode = opts.get("tiling", "auto")
        check_choice("vae_tiling", mode, [True, False, "auto"])
        if mode == "auto":
            mode = plan.height * plan.width > (opts.get("auto_pixels") or AUTO_TILE_PIXELS)
        if not mode:
            return None
        return {
            # a VAE tile is unrelated to the UNet window: 512 px as diffusers' enable_tiling
            "tile": opts.get("tile") or VAE_TILE_PX,
            # None: tiled_decode's default (0 px on an exact run, whose tiles need no blending)
            "overlap": opts.get("overlap"),
            "sync_groupnorm": opts.get("sync_groupnorm", True),
            "sync_strategy": strategy,
            "circular": plan.circular,
            # None: tiled_decode's own default (a quarter of the park device's free memory, exact parking)
            **{k: opts[k] for k in ("park", "park_budget_bytes", "park_dtype") if opts.get(k) is not None},
        }

    def decode(self, latents: torch.Tensor, *, tiling: dict[str, Any] | None = None,
               report: dict | None = None) -> torch.Tensor:
        """Latents -> image tensor in [-1, 1]: the full-canvas VAE decode, or with `tiling`
        (options from `vae_tiling_options`) mdtools' tiled decode with GroupNorm sync, which
        fills `report` (tiles, strategy, barriers) when given.

        An fp16 VAE whose config asks for it (`force_upcast`, SDXL) decodes in float32,
        as diffusers does, to avoid overflow to NaN.
        """
        if self.vae is None:
            return latents
        vae = self.vae
        x = unscale_latents(latents, vae.config)
        if tiling is not None:
            return tiled_decode(vae, x, **tiling, report=report, shard=self.shard)  # across the ranks, when shared
        dtype = vae.dtype
        if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(torch.float32)
            try:
                return vae.decode(x.float(), return_dict=False)[0]
            finally:
                vae.to(dtype)
        return vae.decode(x.to(dtype), return_dict=False)[0]

    def _postprocess(self, image: torch.Tensor, output_type: str) -> Any:
        proc = getattr(self.pipe, "image_processor", None)
        if proc is None:
            from diffusers.image_processor import VaeImageProcessor

            proc = VaeImageProcessor(vae_scale_factor=1)
        return proc.postprocess(image, output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 2048,
        window: int | tuple[int, int] | None = None,
        overlap: int | tuple[int, int] = 64,
        kernel: str | Kernel | None = None,
        kernel_params: dict | None = None,
        method: str | Method = "multidiffusion",
        method_params: dict | None = None,
        regions: Sequence[Any] | None = None,
        bootstrap_steps: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | int | None = None,
        latents: torch.Tensor | None = None,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
        circular: Any = False,
        view_batch_size: int = 4,
        output_type: str = "pil",
        callback: Callable[[dict[str, Any]], None] | None = None,
        record: bool = True,
        diagnostics: bool = False,
        diagnostics_map: bool = False,
        vae_tiling: bool | str | dict = "auto",
        metrics: Sequence[str] | None = None,
        progress: bool = True,
        state_path: str | os.PathLike | None = None,
        state_every: int = 1,
        resume: str | os.PathLike | None = None,
        preview: Any = None,
        preview_every: int = 1,
        model_options: dict[str, Any] | None = None,
        control_image: Any = None,
        controlnet: Any = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_mode: int | list[int] | None = None,
        **model_kwargs: Any,
    ) -> MultiDiffusionOutput:
        """Generate a `height` x `width` canvas with MultiDiffusion or another method.

        Sizes are pixels. `window` defaults to the model's native size (`native_window`);
        `overlap` is the minimum overlap between neighbouring windows. `kernel` is a name in
        `mdtools.KERNELS` (parameters in `kernel_params`) or a `Kernel`; None: gaussian (or
        the method's own weights). `method` is a name in `mdtools.METHODS` (parameters in
        `method_params`) or a method object (docs/methods.md). `regions` (a list of
        `mdtools.Region`) add region prompts, the call's prompt being the background, with
        `bootstrap_steps` steps of bootstrapping (multidiffusion and mixture). `callback`
        receives a dict per step: step, stage, timestep, latents, prediction (the fused model
        output), step_seconds and, with `diagnostics`, the views' disagreement (weighted
        variance of overlapping predictions) and with `diagnostics_map` its (H, W) map.
        `generator` may be an int seed. `init_latents` (clean, scaled latents of the canvas
        size) with `strength` in (0, 1] starts from a noised image instead of pure noise
        (img2img). `vae_tiling`: False, True, "auto" (tiled decode above 2048^2 pixels) or a
        dict (see `vae_tiling_options`). `metrics` (names from mdtools.metrics.METRICS, e.g.
        ["seam_structure", "seam_score"]) are computed on the first image and returned in
        `.metrics`. `state_path` / `state_every` / `resume`: interrupt and resume (mdtools.state);
        `preview` / `preview_every`: live previews (mdtools.preview). Returns
        MultiDiffusionOutput(images, latents, plan, record).

        ControlNet (docs/controlnet.md), under diffusers' names and meanings: `control_image` at the
        canvas size (cropped to each view, whose ControlNet runs on its own crop), `controlnet` (default:
        the wrapped pipeline's; a ControlNetModel, ControlNetUnionModel, SD3ControlNetModel, a Multi... of
        them, a list, a folder or an embedded name such as "toy-scenes-tile"), `controlnet_conditioning_scale`,
        `control_guidance_start` / `control_guidance_end`, `guess_mode`, `control_mode` (Union ids).

        Options of one model kind go in `model_options` (or as keywords, their old form):
        `sdxl_view_crops`, `class_labels` (pixel UNets), and for the transformers `positions`,
        `flow_mu`, `true_cfg_scale`, `max_sequence_length` (mdtools.models.MODEL_OPTIONS and
        docs/models.md: what each means, and the 16 px size multiples of SD3, FLUX and PixArt).
        """
        opts = _model_options(model_options, model_kwargs)
        scale = self.vae_scale_factor
        window = self.native_window if window is None else window
        self.family.check_call(height, width, window, scale, opts)
        call, meth = prepare_call(
            prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, window=window,
            overlap=overlap, kernel=kernel, kernel_params=kernel_params, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, view_batch_size=view_batch_size, circular=circular,
            output_type=output_type, scale=scale, guidance_rescale=guidance_rescale,
            latents_shape=None if latents is None else latents.shape, latent_channels=self.unet.config.in_channels,
            method=method, method_params=method_params, regions=regions, bootstrap_steps=bootstrap_steps,
            strength=strength if init_latents is not None else 1.0, img2img=init_latents is not None,
            cfg_passes=self.family.cfg_passes(opts, negative_prompt),
        )
        plan = call.plan
        vae_opts = self.vae_tiling_options(vae_tiling, plan) if output_type != "latent" else None
        self._check_inputs(call, meth, prompt, init_latents, metrics, output_type)
        control = prepare_control(self, meth, call, controlnet=controlnet, control_image=control_image,
                                  controlnet_conditioning_scale=controlnet_conditioning_scale, guess_mode=guess_mode,
                                  control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end,
                                  control_mode=control_mode)
        if isinstance(generator, int):
            generator = torch.Generator("cpu").manual_seed(generator)
        states, resumed, changed = self._state_files(call, meth, state_path, state_every, resume,
                                                     dict(prompt=prompt, negative_prompt=negative_prompt,
                                                          guidance_scale=guidance_scale))
        viewer = None if preview is None else Previewer(preview, preview_every, vae=self.vae, scale=self.vae_scale_factor)
        self._flow = self.family.flow_schedule(plan, opts)
        rec = Recorder(self.device, dtype=self.dtype, enabled=record)
        with rec.phase("total"):
            with rec.phase("encode_prompt"):
                adapter = self._adapter(prompt, negative_prompt, guidance_scale, guidance_rescale, call, meth, opts)
                adapter.control = control
            dtype = adapter.pos.dtype if hasattr(adapter, "pos") else self.dtype  # as diffusers: embeds' dtype
            run = Run(self, call, adapter, kernel=call.kernel, generator=generator, recorder=rec, callback=callback,
                      progress=progress, eta=eta, diagnostics=diagnostics, diagnostics_map=diagnostics_map,
                      latents=latents, init_latents=init_latents, dtype=dtype, method=meth, states=states,
                      resume=resumed, preview=viewer)
            with rec.phase("denoise"):
                latents = meth.generate(run)
            run.finish()
            images = None
            vae_report: dict[str, Any] = {}
            if output_type != "latent":
                with rec.phase("decode"):
                    images = self._postprocess(self.decode(latents, tiling=vae_opts, report=vae_report), output_type)
        self._record(rec, run, latents, opts, vae_opts, vae_report)
        if record:
            rec.record.extra.update(_state_record(states, run, resume, changed, viewer, self.shard))
        scores = None
        if metrics:
            from .metrics import evaluate

            first = images[0] if output_type in ("pil", "np", "pt") else images
            scores = evaluate(first, plan, metrics=list(metrics))
        return MultiDiffusionOutput(images=images, latents=latents, plan=plan, record=rec.record if record else None,
                                    metrics=scores)

    def _adapter(self, prompt: Any, negative_prompt: Any, guidance_scale: float, guidance_rescale: float, call: Any,
                 meth: Method, opts: dict[str, Any]) -> Any:
        """The view denoiser of this call. The method's extra (prompt, negative) pairs get prompt ids
        1, 2, ... (region and tile prompts); each is encoded for every batch item."""
        batch, extra = call.batch, meth.extra_prompts(call)
        call_neg = negative_prompt if negative_prompt is None or isinstance(negative_prompt, list) else [negative_prompt] * batch
        pairs = [(prompt, negative_prompt)] + [([p] * batch, call_neg if n is None else [n] * batch) for p, n in extra]
        return self.family.adapter(self.unet, pairs, extra=extra, guidance_scale=guidance_scale,
                                   guidance_rescale=guidance_rescale, plan=call.plan, batch=batch, cfg=meth.needs_cfg(call),
                                   opts=opts, negative_prompt=negative_prompt, device=self.device)

    def _state_files(self, call: Any, meth: Method, state_path: Any, state_every: int, resume: Any,
                     described: dict[str, Any]) -> tuple[StateFile | None, ResumeState | None, list[str]]:
        """The state file to write and the state to resume from, checked before any model call."""
        if state_path is None and resume is None:
            return None, None, []
        check_positive_int("state_every", state_every, example=1)
        identity = call_identity(call, self)
        described = {**described, "method": meth.describe(), "multi_stage": meth.multi_stage}
        resumed = None if resume is None else ResumeState(resume)
        changed = [] if resumed is None else resumed.check(identity, described, meth.multi_stage)
        states = None if state_path is None else StateFile(state_path, state_every, identity, described)
        return states, resumed, changed

    def _check_inputs(self, call: Any, meth: Method, prompt: Any, init_latents: torch.Tensor | None,
                      metrics: Sequence[str] | None, output_type: str) -> None:
        """The checks that need the model (channels), the metric registry or the process group, before any compute."""
        if self.shard is not None:
            check_distributable(meth, call.plan.n_views, self.shard.world)
        if metrics:
            from .metrics import METRICS

            unknown = [m for m in metrics if m not in METRICS]
            if unknown:
                raise ConfigError(f"metrics: unknown {unknown}; choose from {sorted(METRICS)}")
            if output_type == "latent":
                raise ConfigError("metrics need decoded images; use output_type='pil', 'np' or 'pt'")
        if init_latents is not None:
            want = (call.batch, self.unet.config.in_channels, call.plan.latent_height, call.plan.latent_width)
            if tuple(init_latents.shape) != want:
                raise ConfigError(f"init_latents has shape {tuple(init_latents.shape)}; it must be {want}")
        if self.family.text_conditioned and prompt is None:
            raise ConfigError("prompt is required for a text-conditioned model, e.g. prompt='a photo of a beach'")

    def _record(self, rec: Recorder, run: Run, latents: torch.Tensor, opts: dict[str, Any], vae_opts: dict | None,
                vae_report: dict[str, Any]) -> None:
        """Counts, sub-phases and the call's description into the record."""
        call, meth, cost = run.call, run.method, run.cost
        rec.count("views", call.plan.n_views)
        rec.count("steps", run.total_steps)
        rec.count("model_forward_calls", cost.unet_calls + cost.unet_grad_calls)
        rec.count("model_evaluations", cost.unet_evaluations + cost.unet_grad_evaluations)
        if not rec.enabled:
            return
        r = rec.record
        # sub-phases of the denoising loop, timed inside the fuser and the method (time only)
        r.phases["model_forward"] = PhaseStats("model_forward", cost.unet_seconds + cost.unet_grad_seconds,
                                               cost.unet_calls + cost.unet_grad_calls)
        r.phases["fusion"] = PhaseStats("fusion", run.fusion_total, cost.unet_calls)
        r.extra["plan"] = call.plan.summary()
        r.extra["kernel"] = call.kernel.describe() if call.kernel is not None else None
        r.extra["method"] = meth.describe()
        r.extra["method_draws"] = _jsonable(meth.draws)
        r.extra["cost"] = cost.to_dict()
        control = getattr(run.adapter, "control", None)
        r.extra["controlnet"] = None if control is None else control.describe()
        r.extra["stages"] = run.n_stages
        if call.regions:
            r.extra["regions"] = [{"prompt": g.prompt, "box": g.box, "mask": g.mask is not None} for g in call.regions]
            r.extra["bootstrap_steps"] = call.bootstrap_steps
        r.extra.update(run.extra)
        r.extra["scheduler"] = type(self.pipe.scheduler).__name__
        r.extra["random_weights"] = bool(self.info.get("random_weights", False))
        if self.info:
            r.extra["model_info"] = dict(self.info)
        if self._flow is not None:
            r.extra["flow_schedule"] = {**self._flow.describe(), "mu_source": str(opts["flow_mu"])}
            r.extra.update(self.family.describe_call(opts))
        r.extra["finite"] = bool(torch.isfinite(latents).all())
        r.extra["vae_tiling"] = (vae_opts if vae_opts is None
                                 else {**vae_opts, "circular": str(call.plan.circular), **vae_report})

    def upscale(self, image: Any, **kwargs: Any) -> Any:
        """Upscale an existing image in tiles: `mdtools.upscale.upscale(self, image, **kwargs)` (docs/upscale.md)."""
        from .upscale import upscale

        return upscale(self, image, **kwargs)


def _state_record(states: StateFile | None, run: Run, resume: Any, changed: list[str], viewer: Previewer | None,
                  shard: Any) -> dict:
    """Record entries of the state file, the resume, the previews and the process group."""
    out: dict[str, Any] = {}
    if shard is not None:  # world size, and each rank's view evaluations, model seconds and all-reduce seconds
        out["distributed"] = {"world_size": shard.world, "ranks": shard.summary()}
    if states is not None:
        out["state"] = {"path": str(states.path), "every": states.every, "writes": states.writes}
    if resume is not None:
        out["resumed"] = {"from": str(resume), "stage_step": list(run.resumed_at) if run.resumed_at else None,
                          "changed": changed}
    if viewer is not None:
        out["preview"] = viewer.describe()
    return out


def _model_options(options: dict[str, Any] | None, aliases: dict[str, Any]) -> dict[str, Any]:
    """model_options plus the old keywords; any other keyword is a TypeError, as for a Python call."""
    unknown = sorted(set(aliases) - set(MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"MultiDiffusionPipeline.__call__() got unexpected keyword argument(s) {unknown}; "
                        f"model options: {sorted(MODEL_OPTIONS)}")
    return model_options(options, **aliases)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Draws are small lists; anything bigger than a few thousand numbers is summarised."""
    out = {}
    for k, v in d.items():
        blob = json.dumps(v, default=str)
        out[k] = v if len(blob) < 20000 else f"<{len(blob)} chars, not stored>"
    return out


# names that lived here before the models/ and call.py split, kept importable from mdtools.pipeline
__all__ = [
    "MultiDiffusionOutput", "MultiDiffusionPipeline", "check_generation_args", "prepare_call", "resolve_model_path",
    "read_scale_factor", "read_native_window", "read_model_kind", "check_model_sizes", "OUTPUT_TYPES", "DIT_KINDS",
    "flux_cfg_passes", "config_source", "DTYPES", "FLUX_NATIVE_PX", "LatentDenoiserView", "AUTO_TILE_PIXELS", "VAE_TILE_PX",
]
