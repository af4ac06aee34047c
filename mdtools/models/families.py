"""Model families: every choice that depends on the model kind (SD, SDXL, pixel, SD3, FLUX, PixArt), one class each.

A family knows how to recognise a loaded pipeline (`detect`) and a config folder
(`transformer_class`), which module denoises (`denoiser`), its per-call options and their
checks (`check_call`), how many evaluations a step costs (`cfg_passes`), its flow schedule
(`flow_schedule`, flow-matching families only), and how to turn prompts into a view denoiser
(`adapter`). `MultiDiffusionPipeline` asks the family and never tests the kind itself.
Adding a model family is one class here (docs/models.md, "Adding a model family").
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import torch

from ..errors import ConfigError, check_choice, check_multiple, check_positive_int
from ..plan import TilePlan
from ..schedulers import MU_SOURCES, FlowMatchSchedule
from .denoisers import POSITIONS, FluxAdapter, PixArtAdapter, PixelAdapter, SD3Adapter, SDAdapter, SDXLAdapter

ModelKind = Literal["sd", "sdxl", "pixel", "sd3", "flux", "pixart"]
#: FLUX.1's training size (the transformer config has no sample_size): 1024 px, BFL's default.
FLUX_NATIVE_PX = 1024
#: Per-kind call options and their defaults; each applies to the families that name it in OPTIONS
#: and is ignored by the others (a sweep passes the same options to every model).
MODEL_OPTIONS: dict[str, Any] = {"sdxl_view_crops": False, "class_labels": None, "positions": "local",
                                 "flow_mu": "window", "true_cfg_scale": 1.0, "max_sequence_length": None}

#: kind -> family class, in detection order (filled by `@register_family`)
FAMILIES: dict[str, type["ModelFamily"]] = {}


def register_family(cls: type["ModelFamily"]) -> type["ModelFamily"]:
    """Class decorator: add a ModelFamily subclass to FAMILIES under its `kind`."""
    FAMILIES[cls.kind] = cls
    return cls


def model_options(options: dict[str, Any] | None = None, **aliases: Any) -> dict[str, Any]:
    """The call's model options: MODEL_OPTIONS' defaults, then `options`, then the keyword aliases
    (the old call keywords); an unknown name is a ConfigError that lists the valid ones."""
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"model_options must be a dict such as {{'positions': 'global'}}, got {type(options).__name__}")
    given = {**(options or {}), **aliases}
    unknown = sorted(set(given) - set(MODEL_OPTIONS))
    if unknown:
        raise ConfigError(f"model option(s) {unknown} are not known; valid: {sorted(MODEL_OPTIONS)}")
    return {**MODEL_OPTIONS, **given}


def stacked(enc: Sequence[Sequence[Any]], j: int, extra: Sequence[Any]) -> Any:
    """Output j of each prompt's encode_prompt: stacked (P, ...) with region/tile prompts, else prompt 0's."""
    if enc[0][j] is None:
        return None
    return torch.stack([e[j] for e in enc]) if extra else enc[0][j]


def check_patch_multiples(height: int, width: int, window: Any, m: int, scale: int) -> None:
    """Canvas and window must be multiples of `m` px (the VAE's `scale` px x the transformer's patches)."""
    what = f"{m} px (the VAE's {scale} px x 2x2 transformer patches)"
    check_multiple("height", height, m, what=what)
    check_multiple("width", width, m, what=what)
    for v in (window if isinstance(window, (tuple, list)) else (window,)) if window is not None else ():
        check_multiple("window", v, m, what=what)


class ModelFamily:
    """The kind-dependent part of a pipeline. Subclasses set the class attributes and override what differs."""

    kind: ClassVar[str] = ""
    #: flow matching (SD3, FLUX): flow-matching schedulers only, and a FlowMatchSchedule per call
    flow: ClassVar[bool] = False
    #: the denoiser's patch size in latent pixels: canvas and window are multiples of patch x VAE scale
    patch: ClassVar[int] = 1
    #: `_class_name` of its transformer config, to recognise a config folder before loading (None: a UNet)
    transformer_class: ClassVar[str | None] = None
    #: the training size in pixels when the denoiser config has no sample_size
    native_px: ClassVar[int | None] = None
    #: takes prompts (False: a pixel-space, class-conditioned UNet)
    text_conditioned: ClassVar[bool] = True
    #: the MODEL_OPTIONS this family reads
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @classmethod
    def detect(cls, pipe: Any) -> bool:
        """Whether loaded pipeline `pipe` is of this family."""
        t = getattr(pipe, "transformer", None)
        return cls.transformer_class is not None and t is not None and type(t).__name__ == cls.transformer_class

    def denoiser(self, vae_scale: int) -> Any:
        """The module the loop calls as `unet` (config.in_channels = the canvas's channels)."""
        return self.pipe.unet

    def check_call(self, height: int, width: int, window: Any, scale: int, opts: dict[str, Any]) -> None:
        """Per-kind argument checks, before any compute (ConfigError naming the field and a valid value)."""

    def cfg_passes(self, opts: dict[str, Any], negative_prompt: Any) -> int | None:
        """Model evaluations per sample and step; None: 2 with classifier-free guidance, else 1."""
        return None

    def flow_schedule(self, plan: TilePlan, opts: dict[str, Any]) -> FlowMatchSchedule | None:
        """The call's flow-matching schedule (flow families), else None."""
        return None

    def describe_call(self, opts: dict[str, Any]) -> dict[str, Any]:
        """Record entries of the call's model options."""
        return {}

    def timing_inputs(self, denoiser: Any, n: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any] | None:
        """Zero conditioning for timing `n` denoiser forwards (a sweep's time estimate), or None
        where the family has no such estimate yet (a guess would be worse than none)."""
        return None

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        """The view denoiser for (prompt, negative) pairs (prompt id 0 = the call's, then `extra`)."""
        raise NotImplementedError


class FlowFamily(ModelFamily):
    """What the flow-matching transformers (SD3, FLUX) share: 2x2 patches, flow schedulers, mu and positions."""

    flow = True
    patch = 2
    OPTIONS: ClassVar[tuple[str, ...]] = ("flow_mu", "max_sequence_length", "positions")

    def denoiser(self, vae_scale: int) -> Any:
        return self.pipe.transformer

    def check_call(self, height: int, width: int, window: Any, scale: int, opts: dict[str, Any]) -> None:
        check_flow_call(self.patch, height, width, window, scale, opts)

    def flow_schedule(self, plan: TilePlan, opts: dict[str, Any]) -> FlowMatchSchedule:
        return flow_schedule(self.pipe.scheduler, self.kind, plan, opts["flow_mu"])

    def describe_call(self, opts: dict[str, Any]) -> dict[str, Any]:
        return {"positions": opts["positions"]}


@register_family
class SD3Family(FlowFamily):
    """Stable Diffusion 3 (MMDiT, flow matching, CLIP-L + CLIP-G + T5)."""

    kind = "sd3"
    transformer_class = "SD3Transformer2DModel"

    def check_call(self, height: int, width: int, window: Any, scale: int, opts: dict[str, Any]) -> None:
        super().check_call(height, width, window, scale, opts)
        if opts["positions"] == "global":
            raise ConfigError("positions='global' is FLUX only: SD3's position embedding is a centred crop of a fixed "
                              "table, view-local by construction; use positions='local'")
        pe = getattr(self.pipe.transformer.pos_embed, "pos_embed_max_size", None)
        limit = None if pe is None else pe * 2 * scale
        for v in (window if isinstance(window, (tuple, list)) else (window,)):
            if limit is not None and v > limit:
                raise ConfigError(f"window={v} exceeds SD3's position table ({pe} patches = {limit} px); "
                                  f"use window <= {limit}")

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        enc = [self.pipe.encode_prompt(prompt=p, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                                       do_classifier_free_guidance=cfg, negative_prompt=n,
                                       max_sequence_length=opts["max_sequence_length"] or 256) for p, n in prompts]
        return SD3Adapter(denoiser, stacked(enc, 0, extra), stacked(enc, 1, extra), stacked(enc, 2, extra),
                          stacked(enc, 3, extra), guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, cfg=cfg)


@register_family
class FluxFamily(FlowFamily):
    """FLUX.1 (MMDiT, flow matching, CLIP-L + T5, guidance embedding; packed 2x2 latents)."""

    kind = "flux"
    transformer_class = "FluxTransformer2DModel"
    native_px = FLUX_NATIVE_PX
    OPTIONS = (*FlowFamily.OPTIONS, "true_cfg_scale")

    def denoiser(self, vae_scale: int) -> Any:
        t = self.pipe.transformer
        return LatentDenoiserView(t, in_channels=t.config.in_channels // 4, sample_size=FLUX_NATIVE_PX // vae_scale)

    def cfg_passes(self, opts: dict[str, Any], negative_prompt: Any) -> int:
        return flux_cfg_passes(opts["true_cfg_scale"], negative_prompt)

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        # FLUX-dev is guidance-distilled: guidance_scale feeds the guidance embedding (one forward
        # per step); a negative prompt with true_cfg_scale > 1 adds diffusers' true-CFG pass.
        msl = opts["max_sequence_length"] or 512
        true_cfg = opts["true_cfg_scale"] > 1.0 and negative_prompt is not None
        enc = [self.pipe.encode_prompt(prompt=p, prompt_2=None, device=device, num_images_per_prompt=1,
                                       max_sequence_length=msl) for p, _ in prompts]
        neg = [self.pipe.encode_prompt(prompt=n, prompt_2=None, device=device, num_images_per_prompt=1,
                                       max_sequence_length=msl) for _, n in prompts] if true_cfg else None
        return FluxAdapter(self.pipe.transformer, stacked(enc, 0, extra), None if neg is None else stacked(neg, 0, extra),
                           stacked(enc, 1, extra), None if neg is None else stacked(neg, 1, extra), enc[0][2],
                           guidance=guidance_scale, true_cfg_scale=opts["true_cfg_scale"], cfg=true_cfg, scale=plan.scale,
                           positions=opts["positions"])


@register_family
class PixArtFamily(ModelFamily):
    """PixArt-Sigma (and PixArt-Alpha without its resolution embedding): a DiT with a T5 encoder,
    epsilon prediction with learned sigma, 2x2 patches; DPM-Solver and the other UNet schedulers."""

    kind = "pixart"
    patch = 2
    transformer_class = "PixArtTransformer2DModel"
    OPTIONS = ("max_sequence_length",)

    def denoiser(self, vae_scale: int) -> Any:
        return self.pipe.transformer

    def check_call(self, height: int, width: int, window: Any, scale: int, opts: dict[str, Any]) -> None:
        check_patch_multiples(height, width, window, self.patch * scale, scale)
        if opts["max_sequence_length"] is not None:
            check_positive_int("max_sequence_length", opts["max_sequence_length"])

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        # diffusers' default negative prompt is ""; captions are not cleaned (clean_caption=False: no
        # ftfy / bs4 rewriting, so the text the user gave is the text encoded)
        enc = [self.pipe.encode_prompt(p, do_classifier_free_guidance=cfg, negative_prompt="" if n is None else n,
                                       num_images_per_prompt=1, device=device, clean_caption=False,
                                       max_sequence_length=opts["max_sequence_length"] or 300) for p, n in prompts]
        return PixArtAdapter(denoiser, stacked(enc, 0, extra), stacked(enc, 1, extra), stacked(enc, 2, extra),
                             stacked(enc, 3, extra), guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                             cfg=cfg)


@register_family
class SDXLFamily(ModelFamily):
    """Stable Diffusion XL (UNet with text_time embeddings, two text encoders)."""

    kind = "sdxl"
    OPTIONS = ("sdxl_view_crops",)

    def timing_inputs(self, denoiser: Any, n: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        m = denoiser.add_embedding.linear_1.in_features - 6 * denoiser.config.addition_time_embed_dim
        return {"encoder_hidden_states": torch.zeros(n, 8, denoiser.config.cross_attention_dim, device=device, dtype=dtype),
                "added_cond_kwargs": {"text_embeds": torch.zeros(n, m, device=device, dtype=dtype),
                                      "time_ids": torch.zeros(n, 6, device=device, dtype=dtype)}}

    @classmethod
    def detect(cls, pipe: Any) -> bool:
        unet = getattr(pipe, "unet", None)
        return unet is not None and (getattr(pipe, "text_encoder_2", None) is not None
                                     or getattr(unet.config, "addition_embed_type", None) == "text_time")

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        enc = [self.pipe.encode_prompt(prompt=p, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                       negative_prompt=n) for p, n in prompts]
        vh, vw = plan.view_size
        return SDXLAdapter(
            denoiser, *(stacked(enc, j, extra) for j in range(4)), guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale, canvas_px=(plan.height, plan.width), window_px=(vh * plan.scale, vw * plan.scale),
            scale=plan.scale, view_crops=opts["sdxl_view_crops"], cfg=cfg,
        )


@register_family
class SDFamily(ModelFamily):
    """Stable Diffusion 1.x / 2.x (conditional UNet, one CLIP text encoder; LCM's guidance embedding)."""

    kind = "sd"

    @classmethod
    def detect(cls, pipe: Any) -> bool:
        from diffusers import UNet2DConditionModel

        if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel):
            return False
        if getattr(pipe, "vae", None) is None:
            raise ConfigError(f"{type(pipe).__name__} has a conditional UNet but no VAE")
        return True

    def timing_inputs(self, denoiser: Any, n: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": torch.zeros(n, 8, denoiser.config.cross_attention_dim, device=device, dtype=dtype)}

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        enc = [self.pipe.encode_prompt(p, device, 1, cfg, n) for p, n in prompts]
        pos = torch.stack([e[0] for e in enc]) if extra else enc[0][0]
        neg = None if enc[0][1] is None else (torch.stack([e[1] for e in enc]) if extra else enc[0][1])
        tc = None
        if getattr(denoiser.config, "time_cond_proj_dim", None) is not None:
            g = torch.tensor(guidance_scale - 1).repeat(batch)
            tc = self.pipe.get_guidance_scale_embedding(g, embedding_dim=denoiser.config.time_cond_proj_dim)
            tc = tc.to(device=device, dtype=pos.dtype)
        return SDAdapter(denoiser, pos, neg, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                         timestep_cond=tc, cfg=cfg)


@register_family
class PixelFamily(ModelFamily):
    """A pixel-space UNet2DModel pipeline (DDPM; optional class labels)."""

    kind = "pixel"
    text_conditioned = False
    OPTIONS = ("class_labels",)

    @classmethod
    def detect(cls, pipe: Any) -> bool:
        return getattr(pipe, "unet", None) is not None

    def adapter(self, denoiser: Any, prompts: Sequence[tuple[Any, Any]], *, extra: Sequence[Any], guidance_scale: float,
                guidance_rescale: float, plan: TilePlan, batch: int, cfg: bool, opts: dict[str, Any],
                negative_prompt: Any, device: torch.device) -> Any:
        if extra:
            raise ConfigError("region and tile prompts need a text-conditioned model; this pipeline is pixel-space")
        labels = opts["class_labels"]
        labels = None if labels is None else torch.as_tensor(labels, device=device).reshape(-1)
        return PixelAdapter(denoiser, labels)


def detect_family(pipe: Any) -> ModelFamily:
    """The family of a loaded diffusers pipeline, or a ConfigError naming what mdtools supports."""
    for cls in FAMILIES.values():
        if cls.detect(pipe):
            return cls(pipe)
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        known = [c.transformer_class for c in FAMILIES.values() if c.transformer_class]
        raise ConfigError(f"{type(pipe).__name__} has a {type(transformer).__name__}; mdtools supports the transformers "
                          f"{known}")
    raise ConfigError(f"{type(pipe).__name__} has no `unet`; mdtools supports SD/SDXL/pixel UNet and SD3/FLUX "
                      f"transformer pipelines")


def family_of_transformer(class_name: str | None) -> type[ModelFamily] | None:
    """The family whose transformer config has `_class_name` == class_name (None for UNet families)."""
    return next((c for c in FAMILIES.values() if class_name and c.transformer_class == class_name), None)


def flux_cfg_passes(true_cfg_scale: float = 1.0, negative_prompt: Any = None) -> int:
    """Transformer evaluations per sample and step of FLUX: its guidance is an embedding
    (one pass), plus diffusers' true-CFG pass with a negative prompt and true_cfg_scale > 1."""
    return 2 if true_cfg_scale > 1.0 and negative_prompt is not None else 1


def check_flow_call(patch: int, height: int, width: int, window: Any, scale: int, opts: dict[str, Any]) -> None:
    """The checks every flow-matching (DiT) family shares."""
    check_patch_multiples(height, width, window, patch * scale, scale)  # FLUX packing, SD3 PatchEmbed
    check_choice("positions", opts["positions"], POSITIONS)
    mu = opts["flow_mu"]
    if not (mu in MU_SOURCES or (isinstance(mu, (int, float)) and not isinstance(mu, bool))):
        raise ConfigError(f"flow_mu={mu!r} is not valid; use 'window', 'canvas' or a number such as 1.15")
    tc = opts["true_cfg_scale"]
    if not isinstance(tc, (int, float)) or tc < 1:
        raise ConfigError(f"true_cfg_scale must be a number >= 1 (e.g. 4.0; 1 = off), got {tc!r}")
    if opts["max_sequence_length"] is not None:
        check_positive_int("max_sequence_length", opts["max_sequence_length"])


def flow_schedule(scheduler: Any, kind: str, plan: TilePlan, flow_mu: Any) -> FlowMatchSchedule:
    """The flow schedule of a call: mu from one window's token count ('window'), the canvas's, or a number."""
    vh, vw = plan.view_size
    tokens = (vh // 2) * (vw // 2) if flow_mu != "canvas" else (plan.latent_height // 2) * (plan.latent_width // 2)
    return FlowMatchSchedule(scheduler, family=kind, image_seq_len=tokens,
                             mu=None if isinstance(flow_mu, str) else float(flow_mu))


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


#: the flow-matching (diffusion transformer) kinds, from the registry
FLOW_KINDS: tuple[str, ...] = tuple(k for k, c in FAMILIES.items() if c.flow)

__all__ = ["FAMILIES", "FLOW_KINDS", "FLUX_NATIVE_PX", "MODEL_OPTIONS", "LatentDenoiserView", "ModelFamily", "ModelKind",
           "check_patch_multiples", "detect_family", "family_of_transformer", "flow_schedule", "flux_cfg_passes",
           "model_options", "register_family", "stacked"]
