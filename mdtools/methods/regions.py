"""Region-based generation with bootstrapping (MultiDiffusion, Bar-Tal et al. 2023, Sec. 4.2).

Each foreground region has its own prompt and a binary mask; the call's prompt is the
background, with mask max(0, 1 - sum of the foreground masks). Every view is denoised
once per prompt whose mask touches it, and the predictions are fused with weights
mask x kernel (Eq. 5 with W_i = m_i * kernel). Masks are binarised at 0.5 and resized
to the latent grid with nearest-neighbour sampling, as the official region_based.py does.

Bootstrapping (Sec. 4.2, "bootstrapping"): for the first k steps, a foreground prompt's
view sees its own latent inside its mask and, outside it, a constant-colour background
image encoded by the VAE and noised to the current timestep with the run's initial
noise: x_v * m + noise(bg_c, x_T[v], t) * (1 - m), a colour drawn per step, view and
region from k colours. The background prompt is never bootstrapped.

Departure from the official code, kept deliberately: the official encoder call samples
the VAE posterior (`latent_dist.sample()`); mdtools takes the posterior mean, so a run
is reproducible from its colours alone (a constant image's posterior spread is small).
The official crashes with bootstrapping=0 and with several prompts and a single negative
prompt; mdtools accepts both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fusion import InputFn, MultiDiffusion, ViewSet


@dataclass(frozen=True)
class Region:
    """A foreground prompt on part of the canvas.

    Give exactly one of `mask` (an H x W array in pixels, binarised at 0.5) or `box`
    (top, left, height, width) in pixels. `negative_prompt=None` uses the call's.
    """

    prompt: str
    mask: Any = None
    box: tuple[int, int, int, int] | None = None
    negative_prompt: str | None = None


def as_region(r: Any, i: int) -> Region:
    if isinstance(r, Region):
        return r
    if isinstance(r, dict):
        unknown = set(r) - {"prompt", "mask", "box", "negative_prompt"}
        if unknown:
            raise ConfigError(f"regions[{i}] has unknown key(s) {sorted(unknown)}; valid keys: prompt, mask, box, negative_prompt")
        if "prompt" not in r:
            raise ConfigError(f"regions[{i}].prompt is required, e.g. {{prompt: a red boat, box: [64, 128, 64, 64]}}")
        box = r.get("box")
        return Region(r["prompt"], r.get("mask"), tuple(box) if isinstance(box, list) else box, r.get("negative_prompt"))
    raise ConfigError(f"regions[{i}] must be a mdtools.Region or a mapping with prompt and mask or box, got {type(r).__name__}")


def check_regions(regions: Sequence[Any] | None, height: int, width: int) -> tuple[Region, ...]:
    """Validate regions against a `height` x `width` pixel canvas; ConfigError names the field."""
    if not regions:
        return ()
    if not isinstance(regions, (list, tuple)):
        raise ConfigError("regions must be a list of mdtools.Region, e.g. [Region('a red boat', box=(64, 128, 64, 64))]")
    out = []
    for i, r in enumerate(regions):
        r = as_region(r, i)
        if not isinstance(r.prompt, str) or not r.prompt:
            raise ConfigError(f"regions[{i}].prompt must be a non-empty string, e.g. 'a red boat'")
        if r.negative_prompt is not None and not isinstance(r.negative_prompt, str):
            raise ConfigError(f"regions[{i}].negative_prompt must be a string or None")
        if (r.mask is None) == (r.box is None):
            raise ConfigError(f"regions[{i}]: give exactly one of mask (H x W pixels) or box (top, left, height, width)")
        if r.mask is not None:
            shape = tuple(np.asarray(r.mask.detach().cpu() if isinstance(r.mask, torch.Tensor) else r.mask).shape)
            if shape != (height, width):
                raise ConfigError(f"regions[{i}].mask has shape {shape}; it must be (height, width) = ({height}, {width}) pixels")
        else:
            box = r.box
            if (not isinstance(box, (tuple, list)) or len(box) != 4
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
                raise ConfigError(f"regions[{i}].box={box!r} must be 4 integers (top, left, height, width) in pixels")
            top, left, h, w = box
            if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
                raise ConfigError(
                    f"regions[{i}].box={tuple(box)} lies outside the {height}x{width} canvas; "
                    f"top + height must be <= {height} and left + width <= {width}, all >= 0"
                )
        out.append(r)
    return tuple(out)


def pixel_mask(r: Region, height: int, width: int) -> torch.Tensor:
    """(H, W) float {0, 1} mask of a region in pixels."""
    if r.box is not None:
        m = torch.zeros(height, width)
        top, left, h, w = r.box
        m[top:top + h, left:left + w] = 1.0
        return m
    m = torch.as_tensor(np.asarray(r.mask.detach().cpu() if isinstance(r.mask, torch.Tensor) else r.mask), dtype=torch.float32)
    return (m >= 0.5).float()


def latent_masks(regions: Sequence[Region], height: int, width: int, scale: int) -> torch.Tensor:
    """(1 + R, H/scale, W/scale): the background mask max(0, 1 - sum fg) first, then each region's."""
    fg = torch.stack([pixel_mask(r, height, width) for r in regions])[:, None]
    fg = F.interpolate(fg, size=(height // scale, width // scale), mode="nearest")[:, 0]
    bg = (1.0 - fg.sum(0, keepdim=True)).clamp_min(0.0)
    return torch.cat([bg, fg])


class RegionState:
    """The region view set of one loop and its bootstrapping.

    Entry j is (plan view `view[j]`, prompt `cond[j]`, region `region[j]` (-1: background)),
    with fusion weight kernel x mask. `first_region_id` is the prompt id of region 0.
    """

    def __init__(self, base: ViewSet, masks: torch.Tensor, *, first_region_id: int, base_cond: torch.Tensor | None,
                 base_guidance: torch.Tensor | None, guidance_scale: float):
        P = masks.shape[0]
        flat = masks.reshape(P, -1).to(base.index.device)
        flat = torch.cat([flat, flat.new_zeros(P, 1)], dim=1)  # padding index reads 0
        mv = flat[:, base.index]  # (P, n, h*w)
        views, idx, wts, cond, guid, view_of, region_of, masks_of = [], [], [], [], [], [], [], []
        for v in range(base.n):
            for p in range(P):
                m = mv[p, v]
                if not bool((m > 0).any()):
                    continue  # this prompt's mask does not touch the view: nothing to denoise
                views.append(base.views[v])
                idx.append(base.index[v])
                wts.append(base.weight[v] * m)
                if p == 0:
                    cond.append(0 if base_cond is None else int(base_cond[v]))
                    guid.append(guidance_scale if base_guidance is None else float(base_guidance[v]))
                else:
                    cond.append(first_region_id + p - 1)
                    guid.append(guidance_scale)
                view_of.append(v)
                region_of.append(p - 1)
                masks_of.append(m)
        self.viewset = ViewSet(tuple(views), base.canvas, torch.stack(idx), torch.stack(wts),
                               torch.tensor(cond, dtype=torch.long, device=base.index.device),
                               torch.tensor(guid, dtype=torch.float32, device=base.index.device))
        self.viewset.check_coverage()
        self.view_of = torch.tensor(view_of)
        self.region_of = torch.tensor(region_of)
        self.masks_of = torch.stack(masks_of)  # (n, h*w)
        self.n_plan_views = base.n
        self.n_regions = P - 1
        self.backgrounds: torch.Tensor | None = None  # (k colours, C, h, w) scaled latents
        self.choices: torch.Tensor | None = None      # (k steps, views, regions) colour indices

    def bootstrap_fn(self, ctx: Any, i: int, t: torch.Tensor) -> InputFn | None:
        """Replace foreground entries' crops outside their mask by a noised constant background."""
        if self.backgrounds is None or self.choices is None or i >= self.choices.shape[0]:
            return None
        vs = self.viewset
        B = ctx.call.batch
        h, w = vs.size
        sch = ctx.scheduler
        noise = ctx.noise

        def fn(crops: torch.Tensor, start: int, end: int) -> torch.Tensor:
            out = crops.clone()
            noise_crops = MultiDiffusion.gather(noise, vs, start, end)  # the ctx's initial noise, once per batch
            for j in range(start, end):
                r = int(self.region_of[j])
                if r < 0:
                    continue
                c = int(self.choices[i, int(self.view_of[j]), r])
                bg = self.backgrounds[c:c + 1].expand(B, -1, -1, -1)
                nz = noise_crops[(j - start) * B:(j - start + 1) * B]
                noised = sch.add_noise(bg, nz, t.reshape(1).repeat(B))
                noised = sch.scale_model_input(noised, t)
                m = self.masks_of[j].reshape(1, 1, h, w).to(crops.dtype)
                sl = slice((j - start) * B, (j - start + 1) * B)
                out[sl] = crops[sl] * m + noised.to(crops.dtype) * (1 - m)
            return out

        return fn


def bootstrap_draws(k: int, n_views: int, n_regions: int, *, colors: Any, choices: Any,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(colours (m, 3) in [0, 1], choices (k, n_views, n_regions)); drawn where not given, as the
    official code draws them: rand(k, 3) colours and one randint(0, k) per step, view and region."""
    col = torch.rand(k, 3, generator=generator) if colors is None else torch.as_tensor(colors, dtype=torch.float32)
    ch = (torch.randint(0, col.shape[0], (k, n_views, n_regions), generator=generator) if choices is None
          else torch.as_tensor(choices, dtype=torch.long))
    return col, ch


def check_bootstrap(colors: Any, choices: Any, k: int, n_views: int, n_regions: int) -> None:
    """bootstrap_colors: k RGB triples in [0, 1]; bootstrap_choices: (k, views, regions) indices into them."""
    if colors is not None:
        c = np.asarray(colors, dtype=float)
        if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] != k or not ((c >= 0) & (c <= 1)).all():
            raise ConfigError(f"method.bootstrap_colors must be {k} RGB triples in [0, 1] (one per bootstrap step), "
                              f"got shape {c.shape}")
    if choices is not None:
        c = np.asarray(choices)
        m = k if colors is None else len(colors)
        if c.shape != (k, n_views, n_regions) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any() or (c >= m).any():
            raise ConfigError(f"method.bootstrap_choices must be integers in [0, {m}) of shape "
                              f"(bootstrap_steps, views, regions) = ({k}, {n_views}, {n_regions}), got shape {c.shape}")
