"""Model adapters: turn a diffusers UNet plus its conditioning into a view denoiser.

Each adapter is a `ViewDenoiser` (see fusion.py): `adapter(x, t, views) -> prediction`
in the model's own parameterisation (epsilon, v or sample). Fusion is a convex
combination of predictions at pixels where every view sees the same x, and every
parameterisation is an affine function of the others given x and t, so fusing in the
native parameterisation is exact for all of them; no conversion is needed.

Classifier-free guidance (and guidance_rescale) is applied per view, before fusion: each
view's guided prediction is the denoiser output MultiDiffusion averages.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..plan import View


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale, Lin et al. 2023 ("Common diffusion noise schedules ...") Sec. 3.4:
    rescale the guided prediction to the per-sample std of the text prediction, then mix."""
    dims = list(range(1, noise_cfg.ndim))
    rescaled = noise_cfg * (noise_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * noise_cfg


class _GuidedAdapter:
    """Shared CFG logic: batch [uncond; cond] for the views, run the model, combine.

    `cond` (one prompt id per view) and `guidance` (one scale per view) come from the
    method's view set (region prompts, Mixture of Diffusers' tile prompts); None means
    prompt 0 and the call's guidance scale for every view.
    """

    def __init__(self, unet: torch.nn.Module, *, guidance_scale: float, guidance_rescale: float = 0.0,
                 cfg: bool | None = None):
        self.unet = unet
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        # as diffusers: scale <= 1 means a single conditional pass (unless a view asks for more)
        self.cfg = guidance_scale > 1.0 if cfg is None else cfg
        self.evaluations_per_sample = 2 if self.cfg else 1
        #: mdtools.models.controlnet.ViewControl: ControlNet residuals of each view's own crop (SD, SDXL)
        self.control: Any = None

    def _forward(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None,
                 cfg_half: int) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None = None,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        if not self.cfg:
            return self._forward(x, t, views, cond, cfg_half=-1)
        out = self._forward(torch.cat([x, x]), t, views, cond, cfg_half=x.shape[0])
        uncond, text = out.chunk(2)
        g: float | torch.Tensor = self.guidance_scale
        if guidance is not None:
            b = x.shape[0] // len(views)
            g = guidance.to(device=out.device, dtype=out.dtype).repeat_interleave(b).reshape(-1, *([1] * (x.ndim - 1)))
        guided = uncond + g * (text - uncond)
        if self.guidance_rescale > 0.0:
            guided = rescale_noise_cfg(guided, text, self.guidance_rescale)
        return guided


def _tile_cond(cond: torch.Tensor, n_views: int) -> torch.Tensor:
    """(B, ...) -> (n_views * B, ...), view-major like the crops."""
    return cond.repeat(n_views, *([1] * (cond.ndim - 1)))


def _pick(stacked: torch.Tensor, cond: torch.Tensor | None, n_views: int) -> torch.Tensor:
    """(P, B, ...) per-prompt conditioning -> (n_views * B, ...) for the views' prompt ids."""
    if cond is None:
        return _tile_cond(stacked[0], n_views)
    return stacked[cond.to(stacked.device)].reshape(-1, *stacked.shape[2:])


def _stack(embeds: torch.Tensor | None) -> torch.Tensor | None:
    """(B, ...) one prompt, or (P, B, ...) several -> (P, B, ...)."""
    if embeds is None or embeds.ndim == 4:
        return embeds
    return embeds.unsqueeze(0)


class SDAdapter(_GuidedAdapter):
    """SD 1.x / 2.x UNet2DConditionModel (epsilon or v-prediction).

    `prompt_embeds` is (B, L, D) for one prompt or (P, B, L, D) for P prompts (prompt 0 is
    the call's prompt; the others are region or tile prompts), likewise the negatives.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        *,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        timestep_cond: torch.Tensor | None = None,
        cfg: bool | None = None,
    ):
        super().__init__(unet, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, cfg=cfg)
        self.pos_all = _stack(prompt_embeds)
        self.neg_all = _stack(negative_prompt_embeds)
        self.pos = self.pos_all[0]
        self.neg = None if self.neg_all is None else self.neg_all[0]
        self.timestep_cond = timestep_cond

    def _embeds(self, n_views: int, cond: torch.Tensor | None, cfg_half: int) -> torch.Tensor:
        pos = _pick(self.pos_all, cond, n_views)
        if cfg_half < 0:
            return pos
        assert self.neg_all is not None
        return torch.cat([_pick(self.neg_all, cond, n_views), pos])

    def _added(self, views: Sequence[View], cond: torch.Tensor | None, cfg_half: int) -> dict | None:
        return None

    def _set_pooled(self, pooled: torch.Tensor, negative_pooled: torch.Tensor | None) -> None:
        """Pooled text embeddings (SDXL, SD3, FLUX): (B, D) or (P, B, D) like the prompt embeddings."""
        self.pooled_all = pooled.unsqueeze(0) if pooled.ndim == 2 else pooled
        self.neg_pooled_all = None if negative_pooled is None else (
            negative_pooled.unsqueeze(0) if negative_pooled.ndim == 2 else negative_pooled)

    def _pooled(self, n_views: int, cond: torch.Tensor | None, cfg_half: int) -> torch.Tensor:
        """The views' pooled embeddings, [negative; positive] under CFG (the order of `_embeds`)."""
        text = _pick(self.pooled_all, cond, n_views)
        if cfg_half < 0:
            return text
        assert self.neg_pooled_all is not None
        return torch.cat([_pick(self.neg_pooled_all, cond, n_views), text])

    def _forward(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None,
                 cfg_half: int) -> torch.Tensor:
        n = len(views)
        tc = self.timestep_cond
        if tc is not None:
            tc = _tile_cond(tc, x.shape[0] // tc.shape[0])
        kw = dict(encoder_hidden_states=self._embeds(n, cond, cfg_half), timestep_cond=tc,
                  added_cond_kwargs=self._added(views, cond, cfg_half))
        if self.control is not None:
            return self.control.unet_call(self.unet, x, t, views, cfg_half, **kw)
        return self.unet(x, t, **kw, return_dict=False)[0]


class SDXLAdapter(SDAdapter):
    """SDXL: two text encoders' embeddings, pooled text embeddings and add_time_ids.

    `view_crops=False` (default) conditions every view as a whole native image:
    original = target = window size, crop (0, 0). `view_crops=True` tells the model each
    view is a crop of the canvas: original = canvas size, crop = the view's pixel offset,
    target = window size (SDXL micro-conditioning, Podell et al. 2023 Sec. 2.2).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        pooled: torch.Tensor,
        negative_pooled: torch.Tensor | None,
        *,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        canvas_px: tuple[int, int],
        window_px: tuple[int, int],
        scale: int,
        view_crops: bool = False,
        cfg: bool | None = None,
    ):
        super().__init__(unet, prompt_embeds, negative_prompt_embeds, guidance_scale=guidance_scale,
                         guidance_rescale=guidance_rescale, cfg=cfg)
        self._set_pooled(pooled, negative_pooled)
        self.canvas_px = canvas_px
        self.window_px = window_px
        self.scale = scale
        self.view_crops = view_crops

    def _time_ids(self, views: Sequence[View], batch: int) -> torch.Tensor:
        rows = []
        for v in views:
            if self.view_crops:
                ids = [*self.canvas_px, v.top * self.scale, v.left * self.scale, *self.window_px]
            else:
                ids = [*self.window_px, 0, 0, *self.window_px]
            rows.extend([ids] * batch)
        return torch.tensor(rows, dtype=self.pos.dtype, device=self.pos.device)

    def _added(self, views: Sequence[View], cond: torch.Tensor | None, cfg_half: int) -> dict:
        n, b = len(views), self.pos.shape[0]
        ids = self._time_ids(views, b)
        if cfg_half >= 0:
            ids = torch.cat([ids, ids])
        return {"text_embeds": self._pooled(n, cond, cfg_half), "time_ids": ids}


#: Position ids of FLUX views: "local" (0..h/2-1 per view, what the model saw in training) or
#: "global" (the view's offset on the canvas added, like SDXL crop coordinates).
POSITIONS = ("local", "global")
_PER_SAMPLE = ("timestep", "guidance", "pooled_projections", "encoder_hidden_states")


class SD3Adapter(SDAdapter):
    """SD3 / SD3.5 MMDiT (flow matching: the model predicts the velocity v).

    Joint text tokens (CLIP-L and CLIP-G penultimate states zero-padded to T5's width, then
    T5) and the pooled CLIP embeddings (`pooled_projections`) go with every view; CFG is
    batched [uncond; cond] as in `StableDiffusion3Pipeline` (the negative prompt is encoded,
    "" by default). Positions are view-local by construction: the transformer crops its fixed
    sin-cos table centred on whatever patch grid it gets, so equal-size views get equal
    embeddings wherever they sit on the canvas.
    """

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: torch.Tensor | None, pooled: torch.Tensor, negative_pooled: torch.Tensor | None,
                 *, guidance_scale: float, guidance_rescale: float = 0.0, cfg: bool | None = None):
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale=guidance_scale,
                         guidance_rescale=guidance_rescale, cfg=cfg)
        self._set_pooled(pooled, negative_pooled)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None,
                 cfg_half: int) -> torch.Tensor:
        n = len(views)
        # timestep on the 0..1000 scale, one per sample, as the diffusers pipeline passes it
        kw = dict(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=self._embeds(n, cond, cfg_half),
                  pooled_projections=self._pooled(n, cond, cfg_half))
        if self.control is not None:  # SD3 ControlNet: block samples of each view's latent control crop
            return self.control.transformer_call(self.unet, views, cfg_half, **kw)
        return self.unet(**kw, return_dict=False)[0]


class PixArtAdapter(SDAdapter):
    """PixArt-Sigma / PixArt-Alpha DiT (epsilon prediction, learned sigma; T5 tokens with an attention mask).

    As `PixArtSigmaPipeline`: CFG batched [uncond; cond] with the prompts' attention masks, the
    timestep one per sample, `added_cond_kwargs` with no resolution / aspect-ratio embedding
    (PixArt-Sigma's), and the learned-sigma half of the output dropped (the first
    `in_channels` channels are the noise). Positions are view-local: the patch embedding
    builds its sin-cos table for the patch grid it gets.
    """

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor,
                 negative_prompt_embeds: torch.Tensor | None, negative_mask: torch.Tensor | None, *,
                 guidance_scale: float, guidance_rescale: float = 0.0, cfg: bool | None = None):
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale=guidance_scale,
                         guidance_rescale=guidance_rescale, cfg=cfg)
        self._set_pooled(prompt_mask, negative_mask)  # (B, L) masks, picked per view like pooled embeddings

    def _forward(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None,
                 cfg_half: int) -> torch.Tensor:
        n = len(views)
        out = self.unet(x, encoder_hidden_states=self._embeds(n, cond, cfg_half),
                        encoder_attention_mask=self._pooled(n, cond, cfg_half), timestep=t.expand(x.shape[0]),
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        channels = self.unet.config.in_channels
        if self.unet.config.out_channels // 2 == channels:  # learned sigma: keep the noise half
            out = out.chunk(2, dim=1)[0]
        return out


class FluxAdapter(SDAdapter):
    """FLUX.1 (dev / schnell) MMDiT on an unpacked latent canvas; each view is packed on its own.

    The canvas stays (B, 16, H/8, W/8) so fusion, kernels and every method work per latent
    pixel; a view crop (N, 16, h, w) is packed into (N, h/2 * w/2, 64) tokens (2x2 patches,
    `FluxPipeline._pack_latents`), run, and the packed velocity unpacked again. Image ids are
    the view's token grid from 0 ("local", default: what the model saw in training) or with the
    view's canvas offset added ("global"; RoPE then changes only image-text attention, and ids
    leave the trained range on large canvases). `guidance` is FLUX-dev's guidance embedding
    (one forward per step; per-view guidance scales from Mixture of Diffusers tiles go there);
    `true_cfg_scale` > 1 with a negative prompt adds diffusers' "true CFG" second pass.
    """

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: torch.Tensor | None, pooled: torch.Tensor, negative_pooled: torch.Tensor | None,
                 text_ids: torch.Tensor, *, guidance: float | None, true_cfg_scale: float = 1.0, cfg: bool = False,
                 scale: int, positions: str = "local"):
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale=true_cfg_scale, cfg=cfg)
        self._set_pooled(pooled, negative_pooled)
        self.text_ids = text_ids
        self.embedded_guidance = guidance if getattr(transformer.config, "guidance_embeds", False) else None
        self.scale = scale
        self.positions = positions
        self._view_guidance: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None = None,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedded_guidance is None:
            return super().__call__(x, t, views, cond, guidance)
        self._view_guidance = guidance  # per-view scales feed the guidance embedding, not CFG
        try:
            return super().__call__(x, t, views, cond, None)
        finally:
            self._view_guidance = None

    def _guidance(self, n_views: int, samples: int) -> torch.Tensor | None:
        if self.embedded_guidance is None:
            return None
        dev = self.pos.device
        if self._view_guidance is None:
            return torch.full((samples,), float(self.embedded_guidance), device=dev, dtype=torch.float32)
        g = self._view_guidance.to(device=dev, dtype=torch.float32).repeat_interleave(samples // n_views // self._halves)
        return g.repeat(self._halves)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None,
                 cfg_half: int) -> torch.Tensor:
        from diffusers import FluxPipeline

        N, C, h, w = x.shape
        n = len(views)
        self._halves = 1 if cfg_half < 0 else 2
        packed = FluxPipeline._pack_latents(x, N, C, h, w)
        kw = dict(timestep=t.expand(N).to(x.dtype) / 1000, guidance=self._guidance(n, N), txt_ids=self.text_ids,
                  pooled_projections=self._pooled(n, cond, cfg_half), encoder_hidden_states=self._embeds(n, cond, cfg_half),
                  return_dict=False)
        ids = FluxPipeline._prepare_latent_image_ids(N, h // 2, w // 2, x.device, self.pos.dtype)
        if self.positions == "local":
            out = self.unet(hidden_states=packed, img_ids=ids, **kw)[0]
        else:
            # one image-id grid per forward (the transformer takes 2-D ids): one view at a time
            per = N // (n * self._halves)
            outs = []
            order = torch.arange(N, device=x.device).reshape(self._halves, n, per).transpose(0, 1).reshape(n, -1)
            for j, v in enumerate(views):
                rows = order[j]
                off = torch.tensor([0.0, v.top / 2, v.left / 2], device=x.device, dtype=ids.dtype)
                sub = {k: (val[rows] if k in _PER_SAMPLE and val is not None else val) for k, val in kw.items()}
                outs.append((rows, self.unet(hidden_states=packed[rows], img_ids=ids + off, **sub)[0]))
            out = torch.empty(N, *outs[0][1].shape[1:], dtype=outs[0][1].dtype, device=x.device)
            for rows, o in outs:
                out[rows] = o
        return FluxPipeline._unpack_latents(out, h * self.scale, w * self.scale, self.scale)


class PixelAdapter:
    """Pixel-space UNet2DModel (unconditional or class-conditional); no VAE, no CFG."""

    evaluations_per_sample = 1

    def __init__(self, unet: torch.nn.Module, class_labels: torch.Tensor | None = None):
        self.unet = unet
        self.class_labels = class_labels

    def __call__(self, x: torch.Tensor, t: torch.Tensor, views: Sequence[View], cond: torch.Tensor | None = None,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        labels = None if self.class_labels is None else _tile_cond(self.class_labels, len(views))
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]
