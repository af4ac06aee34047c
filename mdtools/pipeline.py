"""`MultiDiffusionPipeline`: MultiDiffusion sampling on the components of a diffusers pipeline.

It holds a diffusers pipeline (SD 1.x/2.x, SDXL, or a pixel-space UNet2DModel pipeline)
and reuses its components without copying: prompt encoding is the pipeline's own
`encode_prompt`, so conditioning is bit-identical to diffusers.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from .adapters import POSITIONS, FluxAdapter, PixelAdapter, SD3Adapter, SDAdapter, SDXLAdapter
from .errors import ConfigError, check_choice, check_multiple, check_positive_int
from .instrument import PhaseStats, Record, Recorder
from .kernels import Kernel
from .methods import CallSpec, Method, Run, get_method
from .methods.regions import check_regions
from .plan import CIRCULAR_MODES, TilePlan, plan_views
from .schedulers import MU_SOURCES, FlowMatchSchedule, check_scheduler_fits, make_scheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: dtype names of the CLI, experiment files and the ComfyUI nodes
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO_TILE_PIXELS = 2048 * 2048  # "auto" VAE tiling above this canvas size
#: Default tile of the tiled VAE decode, in pixels (diffusers' tile_sample_min_size for SD).
VAE_TILE_PX = 512
ModelKind = Literal["sd", "sdxl", "pixel", "sd3", "flux"]
#: Diffusion-transformer kinds: flow matching, latents patchified 2x2 inside the model.
DIT_KINDS = ("sd3", "flux")
#: FLUX.1's training size (the transformer config has no sample_size): 1024 px, BFL's default.
FLUX_NATIVE_PX = 1024


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


def prepare_call(
    *,
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None = None,
    height: int,
    width: int,
    window: int | tuple[int, int],
    overlap: int | tuple[int, int],
    kernel: str | Kernel | None,
    kernel_params: dict | None = None,
    num_inference_steps: int,
    guidance_scale: float,
    view_batch_size: int,
    circular: Any,
    output_type: str,
    scale: int,
    guidance_rescale: float = 0.0,
    latents_shape: Sequence[int] | None = None,
    latent_channels: int | None = None,
    method: Any = "multidiffusion",
    method_params: dict | None = None,
    regions: Sequence[Any] | None = None,
    bootstrap_steps: int = 0,
    strength: float = 1.0,
    img2img: bool = False,
    cfg_passes: int | None = None,
) -> tuple[CallSpec, Method]:
    """Validate every generation argument; return the call spec and the method object.

    Raises ConfigError naming the field and a valid value. Needs no model: the CLI and the
    experiment runner call it before loading anything.
    """
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ConfigError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    if isinstance(prompt, list) and (not prompt or not all(isinstance(p, str) for p in prompt)):
        raise ConfigError("prompt list must be a non-empty list of strings, e.g. ['a photo of a beach']")
    batch = len(prompt) if isinstance(prompt, list) else 1
    if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
        raise ConfigError(
            f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch}; "
            f"give one negative prompt per prompt, or a single string"
        )
    check_positive_int("num_inference_steps", num_inference_steps)
    check_positive_int("view_batch_size", view_batch_size)
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be a number >= 0 (e.g. 7.5), got {guidance_scale!r}")
    if not isinstance(guidance_rescale, (int, float)) or not 0.0 <= guidance_rescale <= 1.0:
        raise ConfigError(f"guidance_rescale must be in [0, 1] (e.g. 0.7), got {guidance_rescale!r}")
    check_choice("output_type", output_type, OUTPUT_TYPES)
    if circular not in CIRCULAR_MODES and circular is not True:
        raise ConfigError(f"circular={circular!r} is not valid; choose one of {list(CIRCULAR_MODES)}")
    if method_params is not None and not isinstance(method_params, dict):
        raise ConfigError(f"method_params must be a dict of parameter names to values, got {type(method_params).__name__}")
    meth = get_method(method, **(method_params or {}))
    k = meth.resolve_kernel(kernel, kernel_params)
    plan = plan_views(height, width, window=window, overlap=overlap, scale=scale, circular=circular)
    if isinstance(bootstrap_steps, bool) or not isinstance(bootstrap_steps, int) or bootstrap_steps < 0:
        raise ConfigError(f"bootstrap_steps must be an integer >= 0 (e.g. 20), got {bootstrap_steps!r}")
    regs = check_regions(regions, height, width)
    if bootstrap_steps and not regs:
        raise ConfigError("bootstrap_steps needs regions: bootstrapping replaces a region's surroundings")
    call = CallSpec(height=height, width=width, plan=plan, kernel=k, scale=scale, window=plan.window,
                    overlap=plan.overlap, circular=plan.circular, steps=num_inference_steps,
                    guidance_scale=float(guidance_scale), batch=batch, view_batch_size=view_batch_size, regions=regs,
                    bootstrap_steps=bootstrap_steps, strength=float(strength), img2img=img2img,
                    cfg_passes=cfg_passes)
    meth.check(call)
    if latents_shape is not None and latent_channels is not None:
        want = meth.noise_shape(call, latent_channels)
        if tuple(latents_shape) != tuple(want):
            raise ConfigError(f"latents has shape {tuple(latents_shape)}; for this canvas, batch and method it must be {tuple(want)}")
    return call, meth


def check_generation_args(**kwargs: Any) -> tuple[TilePlan, Kernel, int]:
    """Validate every generation argument (see `prepare_call`); return (plan, kernel, batch size)."""
    call, _ = prepare_call(**kwargs)
    assert call.kernel is not None
    return call.plan, call.kernel, call.batch


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(id_or_path: str | os.PathLike) -> str:
    """'toy' / 'toy-scenes' -> the embedded model's folder; an existing path -> itself; a hub-style
    id ('org/name') -> itself; anything else -> ConfigError (path that does not exist)."""
    s = str(id_or_path)
    from .toy import EMBEDDED_MODELS

    if s in EMBEDDED_MODELS:
        from .toy import toy_model_dir

        return str(toy_model_dir(EMBEDDED_MODELS[s]))
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "model_index.json").exists():
            raise ConfigError(f"model={s!r} is a folder without model_index.json; give a diffusers pipeline folder")
        if p.is_file():
            from .loading import SINGLE_FILE_SUFFIXES, is_single_file

            if not is_single_file(p):
                raise ConfigError(f"model={s!r} is a file but not a checkpoint; give a {'/'.join(SINGLE_FILE_SUFFIXES)} "
                                  f"file, a diffusers pipeline folder or a hub id")
        return str(p)
    from .arch import is_arch, preset_dir

    if is_arch(s):
        return str(preset_dir(s))  # the shipped config folder: scale factor and native window read from it
    if _HUB_ID.match(s) and not s.startswith((".", "~")):
        return s
    raise ConfigError(f"model path {s!r} does not exist; give a diffusers pipeline folder, a single .safetensors "
                      f"file, a hub id, an 'arch:' preset (e.g. arch:sdxl) or one of {sorted(EMBEDDED_MODELS)}")


def read_scale_factor(path: str) -> int:
    """VAE scale factor of a local pipeline folder from its config, without loading weights.
    8 (SD's) when the config cannot be read (e.g. a hub id)."""
    import json

    path = _config_folder(path)
    cfg = Path(path) / "vae" / "config.json"
    if cfg.exists():
        blocks = json.loads(cfg.read_text()).get("block_out_channels", [0] * 4)
        return 2 ** (len(blocks) - 1)
    if Path(path).is_dir() and not (Path(path) / "vae").exists():
        return 1  # pixel-space pipeline
    return 8


def read_native_window(path: str, scale: int) -> int | None:
    """The model's training size in pixels from unet/config.json (None if unreadable)."""
    import json

    path = _config_folder(path)
    for comp in ("unet", "transformer"):
        cfg = Path(path) / comp / "config.json"
        if cfg.exists():
            c = json.loads(cfg.read_text())
            if c.get("_class_name") == "FluxTransformer2DModel":
                return FLUX_NATIVE_PX
            s = c.get("sample_size")
            s = s[0] if isinstance(s, list) else s
            return None if s is None else int(s) * scale
    return None


def flux_cfg_passes(true_cfg_scale: float = 1.0, negative_prompt: Any = None) -> int:
    """Transformer evaluations per sample and step of FLUX: its guidance is an embedding
    (one pass), plus diffusers' true-CFG pass with a negative prompt and true_cfg_scale > 1."""
    return 2 if true_cfg_scale > 1.0 and negative_prompt is not None else 1


def read_model_kind(path: str) -> ModelKind | None:
    """'sd3' / 'flux' for a transformer config folder (arch preset, single file, local folder), else None."""
    import json

    cfg = Path(_config_folder(path)) / "transformer" / "config.json"
    if not cfg.exists():
        return None
    name = json.loads(cfg.read_text()).get("_class_name")
    return {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}.get(name)


def _diffusers_takes_dtype() -> bool:
    """diffusers >= 0.36 names the loader's dtype argument `dtype`; older versions ignore it silently."""
    import diffusers
    from packaging.version import Version

    return Version(diffusers.__version__.split("+")[0]) >= Version("0.36")


def check_model_sizes(path: str, height: int, width: int, window: int | tuple[int, int] | None, scale: int) -> None:
    """Before loading: SD3/FLUX canvases and windows must be multiples of 2 x the VAE scale (16 px);
    the ConfigError suggests the nearest valid sizes. A no-op for UNet models."""
    if read_model_kind(path) is None:
        return
    _check_patch_multiples(height, width, window, 2 * scale, scale)


def _check_patch_multiples(height: int, width: int, window: Any, m: int, scale: int) -> None:
    what = f"{m} px (the VAE's {scale} px x 2x2 transformer patches)"
    check_multiple("height", height, m, what=what)
    check_multiple("width", width, m, what=what)
    for v in (window if isinstance(window, (tuple, list)) else (window,)) if window is not None else ():
        check_multiple("window", v, m, what=what)


def config_source(model: str, config: str | os.PathLike | None = None) -> str:
    """Where to read `model`'s configs before loading it: with `config` (single checkpoint
    files only: 'arch:<preset>' or a diffusers config folder) that folder, else the
    resolved model path (resolve_model_path). ConfigError for a config on anything but a
    single file, or a folder without model_index.json."""
    path = resolve_model_path(model)
    if config is None:
        return path
    from .arch import is_arch, preset_dir
    from .loading import is_single_file

    if not is_single_file(path):
        raise ConfigError(f"checkpoint_config={str(config)!r} applies to single checkpoint files only; {model!r} is a "
                          "diffusers folder or hub id, which carries its own configs (drop it)")
    if is_arch(str(config)):
        return str(preset_dir(str(config)))
    folder = Path(config).expanduser()
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"checkpoint_config={str(config)!r} is not a diffusers config folder (no model_index.json) nor "
                          "an 'arch:<preset>' name such as 'arch:sd21-768'")
    return str(folder)


def _config_folder(path: str) -> str:
    """A single checkpoint file -> the shipped config folder of its detected architecture (header only)."""
    from .loading import is_single_file

    if is_single_file(path) and Path(path).is_file():
        from .arch import preset_dir
        from .loading import detect_architecture

        return str(preset_dir("arch:" + detect_architecture(path)))
    return path


def _detect_kind(pipe: Any) -> ModelKind:
    from diffusers import UNet2DConditionModel

    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        name = type(transformer).__name__
        if name == "SD3Transformer2DModel":
            return "sd3"
        if name == "FluxTransformer2DModel":
            return "flux"
        raise ConfigError(f"{type(pipe).__name__} has a {name}; mdtools supports SD3 and FLUX transformers")
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise ConfigError(f"{type(pipe).__name__} has no `unet`; mdtools supports SD/SDXL/pixel UNet and SD3/FLUX "
                          f"transformer pipelines")
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    if isinstance(unet, UNet2DConditionModel):
        if getattr(pipe, "vae", None) is None:
            raise ConfigError(f"{type(pipe).__name__} has a conditional UNet but no VAE")
        return "sd"
    return "pixel"


class LatentDenoiserView:
    """A FLUX transformer seen as a denoiser of the unpacked latent canvas.

    mdtools' loop and methods read `unet.config.in_channels` as the canvas's channel count and
    `unet.config.sample_size` as the native window in latents. FLUX's transformer takes packed
    2x2 patches (in_channels 64 = 16 x 4) and has no sample_size; this view reports the
    canvas's 16 channels and 1024 px, and passes everything else (forward, parameters,
    device, dtype) to the transformer.
    """

    def __init__(self, module: torch.nn.Module, *, in_channels: int, sample_size: int):
        from diffusers.configuration_utils import FrozenDict

        self.module = module
        self.config = FrozenDict({**dict(module.config), "in_channels": in_channels, "sample_size": sample_size})

    def __getattr__(self, key: str) -> Any:
        return getattr(self.__dict__["module"], key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class MultiDiffusionPipeline:
    """MultiDiffusion over a canvas larger than the model's window.

    Build with `from_pipe(pipe)` (shares the components of a loaded diffusers pipeline)
    or `from_pretrained(id_or_path)` ('toy' loads the embedded model). Call it like a
    diffusers pipeline.
    """

    def __init__(self, pipe: Any, *, info: dict[str, Any] | None = None):
        self.pipe = pipe
        self.kind: ModelKind = _detect_kind(pipe)
        #: what every record of this pipeline carries (arch presets: random_weights: true, ...)
        self.info: dict[str, Any] = dict(info or {})
        self._flow: FlowMatchSchedule | None = None  # the flow schedule of the current call

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_pipe(cls, pipe: Any) -> "MultiDiffusionPipeline":
        """Wrap an existing diffusers pipeline object; its modules are shared, not copied."""
        return cls(pipe)

    @classmethod
    def from_pretrained(cls, id_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        seed: int = 0, text_encoders: str = "stand-in", config: str | os.PathLike | None = None,
                        **kwargs: Any) -> "MultiDiffusionPipeline":
        """Load a model and wrap it: 'toy' (embedded), 'arch:<preset>' (exact architecture, seeded
        random weights, `seed` and `text_encoders` apply; mdtools.arch), a single checkpoint file
        ('model.safetensors'; `config` overrides the detected architecture; mdtools.loading), a
        diffusers folder or a hub id.

        `kwargs` go to diffusers' loader (e.g. torch_dtype; for single files also tokenizers).
        A model that cannot be loaded raises `mdtools.loading.ModelLoadError`: one line with the cause.
        """
        from .arch import build_pipeline, is_arch
        from .loading import hub_error, is_single_file, load_single_file

        info: dict[str, Any] = {}
        if is_arch(str(id_or_path)):
            unknown = set(kwargs) - {"torch_dtype"}
            if unknown:
                raise ConfigError(f"arch presets take seed, text_encoders, torch_dtype and device, not {sorted(unknown)}")
            pipe, info = build_pipeline(str(id_or_path), seed=seed, torch_dtype=kwargs.get("torch_dtype", torch.float32),
                                        device=device, text_encoders=text_encoders)  # type: ignore[arg-type]
            return cls(pipe, info=info)
        path = resolve_model_path(id_or_path)
        from .toy import EMBEDDED_MODELS

        if str(id_or_path) in EMBEDDED_MODELS:  # 'toy', 'toy-v2', 'toy-scenes': checked files, offline
            from .toy import load_toy_pipeline

            pipe = load_toy_pipeline(path, dtype=kwargs.pop("torch_dtype", torch.float32))
        elif is_single_file(path):
            pipe, info = load_single_file(path, config=config, **kwargs)
        else:
            if config is not None:
                raise ConfigError(f"config={str(config)!r} applies to single checkpoint files only; {str(id_or_path)!r} "
                                  "is a diffusers folder or hub id, which carries its own configs (drop config)")
            if _is_sd_folder(path):
                kwargs.setdefault("safety_checker", None)  # a research tool: no NSFW filter on outputs
            if "torch_dtype" in kwargs and _diffusers_takes_dtype():  # >= 0.36 calls it dtype (torch_dtype warns)
                kwargs["dtype"] = kwargs.pop("torch_dtype")
            from diffusers import DiffusionPipeline  # imports every pipeline: only when needed
            from diffusers.utils import logging as dlog

            level = dlog.get_verbosity()
            if not Path(path).is_dir():
                dlog.set_verbosity_error()  # a failed hub load logs hub warnings; its cause is in our one-line error
            try:
                pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
            except (OSError, ValueError) as e:  # missing, misspelt, gated, offline: huggingface_hub errors are OSErrors
                raise hub_error(str(id_or_path), e) from None
            finally:
                dlog.set_verbosity(level)
        if device is not None:
            pipe = pipe.to(device)
        return cls(pipe, info=info)

    def to(self, *args: Any, **kwargs: Any) -> "MultiDiffusionPipeline":
        """Move/cast the wrapped pipeline (as diffusers' `.to`)."""
        self.pipe = self.pipe.to(*args, **kwargs)
        return self

    # ---- properties -----------------------------------------------------------------
    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser: the UNet, or for SD3/FLUX the transformer (FLUX's seen through
        `LatentDenoiserView`, whose config reports the unpacked canvas's channels)."""
        if self.kind == "sd3":
            return self.pipe.transformer
        if self.kind == "flux":
            t = self.pipe.transformer
            return LatentDenoiserView(t, in_channels=t.config.in_channels // 4,  # type: ignore[return-value]
                                      sample_size=FLUX_NATIVE_PX // self.vae_scale_factor)
        return self.pipe.unet

    @property
    def scheduler(self) -> Any:
        """The pipeline's scheduler; for SD3/FLUX during a call, the call's `FlowMatchSchedule`."""
        if self.kind in DIT_KINDS and self._flow is not None and self._flow.scheduler is self.pipe.scheduler:
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
    def _adapter(self, prompt: Any, negative_prompt: Any, guidance_scale: float, guidance_rescale: float, plan: TilePlan,
                 batch: int, sdxl_view_crops: bool, class_labels: Any, *, extra: Sequence[tuple[str, str | None]] = (),
                 cfg: bool | None = None, positions: str = "local", true_cfg_scale: float = 1.0,
                 max_sequence_length: int | None = None) -> Any:
        """The view denoiser for this call. `extra` (prompt, negative) pairs get prompt ids 1, 2, ...
        (region and tile prompts); each is encoded for every batch item."""
        dev = self.device
        cfg = guidance_scale > 1.0 if cfg is None else cfg
        if self.kind == "pixel":
            if extra:
                raise ConfigError("region and tile prompts need a text-conditioned model; this pipeline is pixel-space")
            labels = None if class_labels is None else torch.as_tensor(class_labels, device=dev).reshape(-1)
            return PixelAdapter(self.unet, labels)
        call_neg = negative_prompt if negative_prompt is None or isinstance(negative_prompt, list) else [negative_prompt] * batch
        pairs = [(prompt, negative_prompt)] + [([p] * batch, call_neg if n is None else [n] * batch) for p, n in extra]
        if self.kind == "sd3":
            enc = [self.pipe.encode_prompt(prompt=p, prompt_2=None, prompt_3=None, device=dev, num_images_per_prompt=1,
                                           do_classifier_free_guidance=cfg, negative_prompt=n,
                                           max_sequence_length=max_sequence_length or 256) for p, n in pairs]
            return SD3Adapter(self.unet, _stacked(enc, 0, extra), _stacked(enc, 1, extra), _stacked(enc, 2, extra),
                              _stacked(enc, 3, extra), guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                              cfg=cfg)
        if self.kind == "flux":
            # FLUX-dev is guidance-distilled: guidance_scale feeds the guidance embedding (one forward
            # per step); a negative prompt with true_cfg_scale > 1 adds diffusers' true-CFG pass.
            msl = max_sequence_length or 512
            true_cfg = true_cfg_scale > 1.0 and negative_prompt is not None
            enc = [self.pipe.encode_prompt(prompt=p, prompt_2=None, device=dev, num_images_per_prompt=1,
                                           max_sequence_length=msl) for p, _ in pairs]
            neg = [self.pipe.encode_prompt(prompt=n, prompt_2=None, device=dev, num_images_per_prompt=1,
                                           max_sequence_length=msl) for _, n in pairs] if true_cfg else None
            return FluxAdapter(self.pipe.transformer, _stacked(enc, 0, extra), None if neg is None else _stacked(neg, 0, extra),
                               _stacked(enc, 1, extra), None if neg is None else _stacked(neg, 1, extra), enc[0][2],
                               guidance=guidance_scale, true_cfg_scale=true_cfg_scale, cfg=true_cfg, scale=plan.scale,
                               positions=positions)
        if self.kind == "sd":
            enc = [self.pipe.encode_prompt(p, dev, 1, cfg, n) for p, n in pairs]
            pos = torch.stack([e[0] for e in enc]) if extra else enc[0][0]
            neg = None if enc[0][1] is None else (torch.stack([e[1] for e in enc]) if extra else enc[0][1])
            tc = None
            if getattr(self.unet.config, "time_cond_proj_dim", None) is not None:
                g = torch.tensor(guidance_scale - 1).repeat(batch)
                tc = self.pipe.get_guidance_scale_embedding(g, embedding_dim=self.unet.config.time_cond_proj_dim)
                tc = tc.to(device=dev, dtype=pos.dtype)
            return SDAdapter(self.unet, pos, neg, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                             timestep_cond=tc, cfg=cfg)
        enc = [self.pipe.encode_prompt(prompt=p, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                       negative_prompt=n) for p, n in pairs]
        vh, vw = plan.view_size
        return SDXLAdapter(
            self.unet, *(_stacked(enc, j, extra) for j in range(4)), guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale, canvas_px=(plan.height, plan.width), window_px=(vh * plan.scale, vw * plan.scale),
            scale=plan.scale, view_crops=sdxl_view_crops, cfg=cfg,
        )

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
        from .vae import SYNC_STRATEGIES, park_target

        if opts.get("park") is not None:
            park_target(opts["park"], "vae_tiling.park")  # a bad value fails here, before any denoising

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
        cfg = vae.config
        x = latents / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None) is not None:
            x = x + cfg.shift_factor
        if tiling is not None:
            from .vae import tiled_decode

            return tiled_decode(vae, x, **tiling, report=report)
        dtype = vae.dtype
        if dtype == torch.float16 and getattr(cfg, "force_upcast", False):
            vae.to(torch.float32)
            try:
                return vae.decode(x.float(), return_dict=False)[0]
            finally:
                vae.to(dtype)
        return vae.decode(x.to(dtype), return_dict=False)[0]

    def _check_dit_call(self, height: int, width: int, window: Any, positions: str, flow_mu: Any,
                        true_cfg_scale: float, max_sequence_length: int | None) -> None:
        """SD3/FLUX argument checks, before any compute (errors name the field and a valid value)."""
        scale = self.vae_scale_factor
        m = 2 * scale  # 2x2 patches (FLUX packing, SD3 PatchEmbed) of VAE latents
        _check_patch_multiples(height, width, window, m, scale)
        check_choice("positions", positions, POSITIONS)
        if positions == "global" and self.kind == "sd3":
            raise ConfigError("positions='global' is FLUX only: SD3's position embedding is a centred crop of a fixed "
                              "table, view-local by construction; use positions='local'")
        if not (flow_mu in MU_SOURCES or (isinstance(flow_mu, (int, float)) and not isinstance(flow_mu, bool))):
            raise ConfigError(f"flow_mu={flow_mu!r} is not valid; use 'window', 'canvas' or a number such as 1.15")
        if not isinstance(true_cfg_scale, (int, float)) or true_cfg_scale < 1:
            raise ConfigError(f"true_cfg_scale must be a number >= 1 (e.g. 4.0; 1 = off), got {true_cfg_scale!r}")
        if max_sequence_length is not None:
            check_positive_int("max_sequence_length", max_sequence_length)
        if self.kind == "sd3":
            pe = getattr(self.pipe.transformer.pos_embed, "pos_embed_max_size", None)
            limit = None if pe is None else pe * m
            for v in (window if isinstance(window, (tuple, list)) else (window,)):
                if limit is not None and v > limit:
                    raise ConfigError(f"window={v} exceeds SD3's position table ({pe} patches = {limit} px); "
                                      f"use window <= {limit}")

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
        sdxl_view_crops: bool = False,
        class_labels: Sequence[int] | None = None,
        record: bool = True,
        diagnostics: bool = False,
        diagnostics_map: bool = False,
        vae_tiling: bool | str | dict = "auto",
        metrics: Sequence[str] | None = None,
        progress: bool = True,
        positions: str = "local",
        flow_mu: str | float = "window",
        true_cfg_scale: float = 1.0,
        max_sequence_length: int | None = None,
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
        `.metrics`. Returns MultiDiffusionOutput(images, latents, plan, record).

        SD3 / FLUX only (docs/models.md): sizes are multiples of 16 px (8 px VAE x 2x2 patches);
        `guidance_scale` is CFG for SD3 and the guidance embedding for FLUX-dev (`true_cfg_scale`
        > 1 with a negative prompt adds a CFG pass); `positions` "local" (default) or "global"
        (FLUX image ids offset by the view's canvas position); `flow_mu` "window" (default: the
        dynamic shift of one window's token count), "canvas" or a number; `max_sequence_length`
        is the T5 length (None: 256 SD3, 512 FLUX, as diffusers).
        """
        scale = self.vae_scale_factor
        window = self.native_window if window is None else window
        if self.kind in DIT_KINDS:
            self._check_dit_call(height, width, window, positions, flow_mu, true_cfg_scale, max_sequence_length)
        if init_latents is not None and not (isinstance(strength, (int, float)) and 0 < strength <= 1):
            raise ConfigError(f"strength must be in (0, 1] (e.g. 0.6), got {strength!r}")
        call, meth = prepare_call(
            prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, window=window,
            overlap=overlap, kernel=kernel, kernel_params=kernel_params, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, view_batch_size=view_batch_size, circular=circular,
            output_type=output_type, scale=scale, guidance_rescale=guidance_rescale,
            latents_shape=None if latents is None else latents.shape, latent_channels=self.unet.config.in_channels,
            method=method, method_params=method_params, regions=regions, bootstrap_steps=bootstrap_steps,
            strength=strength if init_latents is not None else 1.0, img2img=init_latents is not None,
            cfg_passes=flux_cfg_passes(true_cfg_scale, negative_prompt) if self.kind == "flux" else None,
        )
        plan, batch = call.plan, call.batch
        vae_opts = self.vae_tiling_options(vae_tiling, plan) if output_type != "latent" else None
        if metrics:
            from .metrics import METRICS

            unknown = [m for m in metrics if m not in METRICS]
            if unknown:
                raise ConfigError(f"metrics: unknown {unknown}; choose from {sorted(METRICS)}")
            if output_type == "latent":
                raise ConfigError("metrics need decoded images; use output_type='pil', 'np' or 'pt'")
        if init_latents is not None:
            want = (batch, self.unet.config.in_channels, plan.latent_height, plan.latent_width)
            if tuple(init_latents.shape) != want:
                raise ConfigError(f"init_latents has shape {tuple(init_latents.shape)}; it must be {want}")
        if self.kind != "pixel" and prompt is None:
            raise ConfigError("prompt is required for a text-conditioned model, e.g. prompt='a photo of a beach'")
        if isinstance(generator, int):
            generator = torch.Generator("cpu").manual_seed(generator)
        if self.kind in DIT_KINDS:
            vh, vw = plan.view_size
            tokens = (vh // 2) * (vw // 2) if flow_mu != "canvas" else (plan.latent_height // 2) * (plan.latent_width // 2)
            self._flow = FlowMatchSchedule(self.pipe.scheduler, family=self.kind, image_seq_len=tokens,
                                           mu=None if isinstance(flow_mu, str) else float(flow_mu))
        device = self.device
        rec = Recorder(device, dtype=self.dtype, enabled=record)
        with rec.phase("total"):
            with rec.phase("encode_prompt"):
                adapter = self._adapter(prompt, negative_prompt, guidance_scale, guidance_rescale, plan, batch,
                                        sdxl_view_crops, class_labels, extra=meth.extra_prompts(call),
                                        cfg=meth.needs_cfg(call), positions=positions, true_cfg_scale=true_cfg_scale,
                                        max_sequence_length=max_sequence_length)
            dtype = adapter.pos.dtype if hasattr(adapter, "pos") else self.dtype  # as diffusers: embeds' dtype
            run = Run(self, call, adapter, kernel=call.kernel, generator=generator, recorder=rec, callback=callback,
                      progress=progress, eta=eta, diagnostics=diagnostics, diagnostics_map=diagnostics_map,
                      latents=latents, init_latents=init_latents, dtype=dtype, method_name=meth.name)
            with rec.phase("denoise"):
                latents = meth.generate(run)
            cost = run.finish()
            images = None
            vae_report: dict[str, Any] = {}
            if output_type != "latent":
                with rec.phase("decode"):
                    images = self._postprocess(self.decode(latents, tiling=vae_opts, report=vae_report), output_type)
        rec.count("views", plan.n_views)
        rec.count("steps", run.total_steps)
        rec.count("model_forward_calls", cost.unet_calls + cost.unet_grad_calls)
        rec.count("model_evaluations", cost.unet_evaluations + cost.unet_grad_evaluations)
        if record:
            # sub-phases of the denoising loop, timed inside the fuser and the method (time only)
            rec.record.phases["model_forward"] = PhaseStats("model_forward", cost.unet_seconds + cost.unet_grad_seconds,
                                                            cost.unet_calls + cost.unet_grad_calls)
            rec.record.phases["fusion"] = PhaseStats("fusion", run.fusion_total, cost.unet_calls)
            rec.record.extra["plan"] = plan.summary()
            rec.record.extra["kernel"] = call.kernel.describe() if call.kernel is not None else None
            rec.record.extra["method"] = meth.describe()
            rec.record.extra["method_draws"] = _jsonable(meth.draws)
            rec.record.extra["cost"] = cost.to_dict()
            rec.record.extra["stages"] = run.n_stages
            if call.regions:
                rec.record.extra["regions"] = [{"prompt": r.prompt, "box": r.box, "mask": r.mask is not None}
                                               for r in call.regions]
                rec.record.extra["bootstrap_steps"] = call.bootstrap_steps
            rec.record.extra.update(run.extra)
            rec.record.extra["scheduler"] = type(self.pipe.scheduler).__name__
            rec.record.extra["random_weights"] = bool(self.info.get("random_weights", False))
            if self.info:
                rec.record.extra["model_info"] = dict(self.info)
            if self.kind in DIT_KINDS and self._flow is not None:
                rec.record.extra["flow_schedule"] = {**self._flow.describe(), "mu_source": str(flow_mu)}
                rec.record.extra["positions"] = positions
            rec.record.extra["finite"] = bool(torch.isfinite(latents).all())
            rec.record.extra["vae_tiling"] = (vae_opts if vae_opts is None
                                              else {**vae_opts, "circular": str(plan.circular), **vae_report})
        scores = None
        if metrics:
            from .metrics import evaluate

            first = images[0] if output_type in ("pil", "np", "pt") else images
            scores = evaluate(first, plan, metrics=list(metrics))
        return MultiDiffusionOutput(images=images, latents=latents, plan=plan, record=rec.record if record else None,
                                    metrics=scores)


def _stacked(enc: Sequence[Sequence[Any]], j: int, extra: Sequence[Any]) -> Any:
    """Output j of each prompt's encode_prompt: stacked (P, ...) with region/tile prompts, else prompt 0's."""
    if enc[0][j] is None:
        return None
    return torch.stack([e[j] for e in enc]) if extra else enc[0][j]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Draws are small lists; anything bigger than a few thousand numbers is summarised."""
    import json

    out = {}
    for k, v in d.items():
        blob = json.dumps(v, default=str)
        out[k] = v if len(blob) < 20000 else f"<{len(blob)} chars, not stored>"
    return out


def _is_sd_folder(path: str) -> bool:
    idx = Path(path) / "model_index.json"
    return idx.exists() and "safety_checker" in idx.read_text()


def _step_kwargs(scheduler: Any, generator: Any, eta: float) -> dict[str, Any]:
    """eta / generator for schedulers whose step() takes them (as diffusers pipelines do)."""
    params = set(inspect.signature(scheduler.step).parameters)
    out: dict[str, Any] = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generator
    return out


__all__ = [
    "MultiDiffusionOutput", "MultiDiffusionPipeline", "check_generation_args", "prepare_call", "resolve_model_path",
    "read_scale_factor", "read_native_window", "read_model_kind", "check_model_sizes", "OUTPUT_TYPES", "DIT_KINDS",
    "flux_cfg_passes", "config_source",
]
