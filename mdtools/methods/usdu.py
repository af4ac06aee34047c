"""Ultimate SD Upscale as its ComfyUI port computes it: sequential per-tile img2img in pixels, with its seam fixes.

Facts sheet ../shared/upscale-facts.md §1 (USDU-C = ssitu/ComfyUI_UltimateSDUpscale @ 34a3c2c, USDU-A =
Coyote-A/ultimate-upscale-for-automatic1111 @ 2322caa, the script the port runs). With
`force_uniform_tiles=True` (the port's default) every job does, on the current canvas:

1. the canvas-size mask of the job (a tile: the rectangle (xi*tw, yi*th, xi*tw+tw, yi*th+th) drawn
   inclusive with PIL; a seam fix: its gradient pasted at its place);
2. crop = bbox(unblurred mask) +- padding, clamped, minus the inclusive pixel (`crop_region`, the
   port's get_crop_region + fix_crop_region);
3. the crop expanded to the aspect of the processing size (`uniform_crop` / `expand_crop`), cut and
   resized with LANCZOS to the processing size: round8(t + pad) for a tile (+pad, not +2 pad);
4. VAE encode (posterior mean, the whole crop re-noised: no latent mask), img2img at the job's
   strength with the SAME seed for every job, decode, quantise to uint8 as the port (truncation);
5. resize back to the crop (LANCZOS) and alpha-paste with the Gaussian-blurred (PIL GaussianBlur,
   radius = mask blur) canvas-size mask, inside the crop only.

Later jobs crop from the canvas that earlier jobs redrew (sequential). Orders: linear (row-major),
chess (even xi+yi first, each pass row-major), none (no redraw, seam fix only). Seam fixes (run after
the redraw, §1.8): band_pass (triangular bands of `seam_fix_width` px over the whole canvas length,
blur forced 0), half_tile (gradient tiles centred on the seams), half_tile_intersections (half tile,
then inverted radial gradients at the intersections, padding forced 0).

Departures (docs/upscalers.md lists each with its reference): the per-tile img2img is mdtools' one-view
img2img (= diffusers' StableDiffusionImg2ImgPipeline: `int(steps*strength)` steps of the pipeline's
scheduler), not ComfyUI's KSampler (a schedule of int(steps/denoise) steps, §7); the tile defaults
to the model's native window (the port's 512 is SD 1.5's); the port never applies
`seam_fix_denoise` (the script sets `p.denoising_strength`, USDU-A:…:274, while the port's sampler
reads `p.denoise`, the redraw denoise), so the default None does the same and a number applies it
as A1111 does; processing sizes round to the model's size multiple (8 for SD/SDXL, 16 for SD3/FLUX).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from ..errors import ConfigError
from ..sampling import scale_latents
from .base import Method, Param, is_int, is_num, register

#: redraw orders (the port's mode_type Linear / Chess / None)
ORDERS: tuple[str, ...] = ("linear", "chess", "none")
#: seam-fix modes (the port's seam_fix_mode None / Band Pass / Half Tile / Half Tile + Intersections)
SEAM_FIX_MODES: tuple[str, ...] = ("none", "band_pass", "half_tile", "half_tile_intersections")
#: the counts `upscale_image` returns for the record
COUNT_KEYS: tuple[str, ...] = ("unet_evaluations", "vae_encodes", "vae_decodes", "tiles", "seam_fix_jobs")

Box = tuple[int, int, int, int]


# ---- geometry (the port's formulas; no model) ------------------------------------------------------
def grid(width: int, height: int, tile_width: int, tile_height: int) -> tuple[int, int]:
    """(rows, cols) = (ceil(H / th), ceil(W / tw)) (USDU-A:scripts/ultimate-upscale.py:39-40)."""
    return math.ceil(height / tile_height), math.ceil(width / tile_width)


def tile_rect(xi: int, yi: int, tile_width: int, tile_height: int) -> Box:
    """The tile's rectangle (x1, y1, x2, y2) as the script draws it (inclusive of x2, y2; USDU-A:…:163-169)."""
    return xi * tile_width, yi * tile_height, xi * tile_width + tile_width, yi * tile_height + tile_height


def tile_order(rows: int, cols: int, order: str) -> list[tuple[int, int]]:
    """(xi, yi) in redraw order: linear = row-major; chess = (xi + yi) even first, then odd (USDU-A:…:171-240)."""
    cells = [(xi, yi) for yi in range(rows) for xi in range(cols)]
    if order == "linear":
        return cells
    if order == "chess":
        return [c for c in cells if (c[0] + c[1]) % 2 == 0] + [c for c in cells if (c[0] + c[1]) % 2 == 1]
    return []


def round_to(length: float, multiple: int = 8) -> int:
    """The port's round_length: nearest multiple (Python's round, half to even) (USDU-C:usdu_patch.py:44-46)."""
    return round(length / multiple) * multiple


def crop_region(mask: Image.Image, padding: int) -> Box:
    """bbox of the mask's non-zero pixels +- padding, clamped, minus the inclusive pixel where not at
    the canvas edge (USDU-C:usdu_utils.py:50-74, get_crop_region + fix_crop_region)."""
    box = mask.getbbox()
    x1, y1, x2, y2 = box if box is not None else (mask.width, mask.height, 0, 0)
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    return x1, y1, x2 - (x2 < mask.width), y2 - (y2 < mask.height)


def expand_crop(region: Box, width: int, height: int, target_width: int, target_height: int) -> Box:
    """Grow a crop to a target size: right/bottom by half the deficit, left/top by the rest, then
    right/bottom again, clamped to the canvas (USDU-C:usdu_utils.py:77-113)."""
    x1, y1, x2, y2 = region
    x2 = min(x2 + (target_width - (x2 - x1)) // 2, width)
    x1 = max(x1 - (target_width - (x2 - x1)), 0)
    x2 = min(x2 + (target_width - (x2 - x1)), width)
    y2 = min(y2 + (target_height - (y2 - y1)) // 2, height)
    y1 = max(y1 - (target_height - (y2 - y1)), 0)
    y2 = min(y2 + (target_height - (y2 - y1)), height)
    return x1, y1, x2, y2


def uniform_crop(region: Box, width: int, height: int, size: tuple[int, int]) -> Box:
    """force_uniform_tiles: the crop grown to the aspect of the processing size `size` = (w, h),
    keeping its larger side (USDU-C:modules/processing.py:192-206)."""
    x1, y1, x2, y2 = region
    cw, ch = x2 - x1, y2 - y1
    ratio = size[0] / size[1]
    if cw / ch > ratio:
        target = cw, round(cw / ratio)
    else:
        target = round(ch * ratio), ch
    return expand_crop(region, width, height, *target)


# ---- the jobs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One img2img pass: its mask is `patch` pasted at `at` on a black canvas-size L image."""

    kind: str  # tile | band_x | band_y | half_row | half_col | intersection
    cell: tuple[int, int]  # (xi, yi)
    patch: Image.Image
    at: tuple[int, int]
    padding: int
    blur: int
    size: tuple[int, int]  # processing size (w, h)
    seam_fix: bool

    def mask(self, width: int, height: int) -> Image.Image:
        m = Image.new("L", (width, height), 0)
        if self.kind == "tile":  # the script's inclusive rectangle (ImageDraw fills x2 and y2 too)
            x, y = self.at
            ImageDraw.Draw(m).rectangle((x, y, x + self.patch.width - 1, y + self.patch.height - 1), fill=255)
        else:
            m.paste(self.patch, self.at)
        return m


def redraw_jobs(width: int, height: int, tile: tuple[int, int], padding: int, blur: int, order: str,
                multiple: int = 8) -> list[Job]:
    """The redraw tiles in order; processing size round(t + padding) to `multiple` (USDU-C:usdu_patch.py:99-103)."""
    tw, th = tile
    rows, cols = grid(width, height, tw, th)
    size = (round_to(tw + padding, multiple), round_to(th + padding, multiple))
    rect = Image.new("L", (tw + 1, th + 1), 255)  # inclusive rectangle: x1..x2, y1..y2
    return [Job("tile", (xi, yi), rect, tile_rect(xi, yi, tw, th)[:2], padding, blur, size, False)
            for xi, yi in tile_order(rows, cols, order)]


def _mirror_gradient() -> Image.Image:
    g = Image.linear_gradient("L")
    m = Image.new("L", (256, 256), 0)
    m.paste(g.resize((256, 128), resample=Image.BICUBIC), (0, 0))
    m.paste(g.rotate(180).resize((256, 128), resample=Image.BICUBIC), (0, 128))
    return m


def seam_fix_jobs(width: int, height: int, tile: tuple[int, int], mode: str, *, seam_width: int, padding: int,
                  blur: int) -> list[Job]:
    """The seam-fix passes in order (facts §1.8; USDU-A:scripts/ultimate-upscale.py:249-406)."""
    tw, th = tile
    rows, cols = grid(width, height, tw, th)
    jobs: list[Job] = []
    if mode == "band_pass":  # blur forced 0; whole-canvas strips of width + 2 padding
        mirror = _mirror_gradient()
        row_g = mirror.resize((width, seam_width), resample=Image.BICUBIC)
        col_g = mirror.rotate(90).resize((seam_width, height), resample=Image.BICUBIC)
        jobs += [Job("band_x", (xi, 0), col_g, (xi * tw - seam_width // 2, 0), padding, 0,
                     (seam_width + 2 * padding, height), True) for xi in range(1, cols)]
        jobs += [Job("band_y", (0, yi), row_g, (0, yi * th - seam_width // 2), padding, 0,
                     (width, seam_width + 2 * padding), True) for yi in range(1, rows)]
    elif mode in ("half_tile", "half_tile_intersections"):
        g = Image.linear_gradient("L")
        row_g = Image.new("L", (tw, th), 0)
        row_g.paste(g.resize((tw, th // 2), resample=Image.BICUBIC), (0, 0))
        row_g.paste(g.rotate(180).resize((tw, th // 2), resample=Image.BICUBIC), (0, th // 2))
        col_g = Image.new("L", (tw, th), 0)
        col_g.paste(g.rotate(90).resize((tw // 2, th), resample=Image.BICUBIC), (0, 0))
        col_g.paste(g.rotate(270).resize((tw // 2, th), resample=Image.BICUBIC), (tw // 2, 0))
        jobs += [Job("half_row", (xi, yi), row_g, (xi * tw, yi * th + th // 2), padding, blur, (tw, th), True)
                 for yi in range(rows - 1) for xi in range(cols)]
        jobs += [Job("half_col", (xi, yi), col_g, (xi * tw + tw // 2, yi * th), padding, blur, (tw, th), True)
                 for yi in range(rows) for xi in range(cols - 1)]
        if mode == "half_tile_intersections":  # padding forced 0
            radial = ImageOps.invert(Image.radial_gradient("L").resize((tw, th), resample=Image.BICUBIC))
            jobs += [Job("intersection", (xi, yi), radial, (xi * tw + tw // 2, yi * th + th // 2), 0, blur, (tw, th),
                         True) for yi in range(rows - 1) for xi in range(cols - 1)]
    return jobs


def job_crop(job: Job, mask: Image.Image) -> Box:
    """The crop of a job: from the unblurred mask, grown to the processing aspect (uniform tiles)."""
    return uniform_crop(crop_region(mask, job.padding), mask.width, mask.height, job.size)


# ---- pixels <-> tensors, one tile's img2img ----------------------------------------------------------
def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> RGB uint8 as the port's tensor_to_pil (255 x, truncated; NaN -> 0)."""
    x = torch.nan_to_num(image[0].detach().float().clamp(0, 1)).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((255 * x).astype(np.uint8))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float32 in [0, 1] (the port's pil_to_tensor)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def encode(md: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the model's scaled latents: the posterior mean, as ComfyUI's VAE encode
    (DiagonalGaussianRegularizer(sample=False)) and mdtools' Run.encode_images."""
    vae = md.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    x = (pixels * 2 - 1).to(md.device, torch.float32 if upcast else dtype)
    if upcast:
        vae.to(torch.float32)
    try:
        enc = vae.encode(x)
    finally:
        if upcast:
            vae.to(dtype)
    dist = getattr(enc, "latent_dist", None)
    lat = dist.mode() if dist is not None else enc.latents
    return scale_latents(lat, vae.config).to(md.dtype)


def crop_control(control: torch.Tensor, region: Box, canvas: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The control image cropped with the job's region, mapped from the canvas (W, H) to the control
    image's own size (floor x1/y1, ceil x2/y2), resized to `size` (w, h) with nearest-exact
    (USDU-C:usdu_utils.py:116-125, 298-334)."""
    h, w = control.shape[-2:]
    x1, y1, x2, y2 = region
    x1, x2 = math.floor(x1 * w / canvas[0]), math.ceil(x2 * w / canvas[0])
    y1, y2 = math.floor(y1 * h / canvas[1]), math.ceil(y2 * h / canvas[1])
    return F.interpolate(control[:, :, y1:y2, x1:x2].float(), size=(size[1], size[0]), mode="nearest-exact")


@dataclass
class TileSampler:
    """The per-tile img2img: `md(...)` on a one-view plan (the tile is the window), then decode."""

    md: Any
    prompt: Any
    negative_prompt: Any
    steps: int
    guidance_scale: float
    seed: int
    controlnet: Any = None
    control_image: torch.Tensor | None = None
    controlnet_conditioning_scale: float = 1.0

    def __post_init__(self) -> None:
        self.counts = {k: 0 for k in COUNT_KEYS}

    def __call__(self, tile: Image.Image, strength: float, region: Box, canvas: tuple[int, int]) -> Image.Image:
        """One tile (PIL, at its processing size) -> the redrawn tile (PIL, same size)."""
        md = self.md
        w, h = tile.size
        lat = encode(md, to_tensor(tile))
        self.counts["vae_encodes"] += 1
        gen = torch.Generator("cpu").manual_seed(self.seed)  # the same seed for every tile (facts §1.1)
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(tuple(lat.shape), generator=gen, device=md.device, dtype=md.dtype)
        extra: dict[str, Any] = {}
        if self.controlnet is not None or self.control_image is not None:
            control = self.control_image
            extra = {"control_image": None if control is None else crop_control(control, region, canvas, (w, h)),
                     "controlnet_conditioning_scale": self.controlnet_conditioning_scale}
            if self.controlnet is not None:
                extra["controlnet"] = self.controlnet
        out = md(self.prompt, negative_prompt=self.negative_prompt, height=h, width=w, window=(h, w), overlap=0,
                 init_latents=lat, strength=strength, latents=noise, generator=gen, num_inference_steps=self.steps,
                 guidance_scale=self.guidance_scale, output_type="latent", progress=False, vae_tiling=False, **extra)
        self.counts["unet_evaluations"] += int(out.record.counts.get("model_evaluations", 0)) if out.record else 0
        img = md.decode(out.latents)
        self.counts["vae_decodes"] += 1
        return to_pil((img.float() + 1.0) / 2.0)


def paste(canvas: Image.Image, tile: Image.Image, region: Box, mask: Image.Image) -> Image.Image:
    """Alpha-composite `tile` (crop size) at the crop with the mask's values inside the crop only
    (USDU-C:modules/processing.py:259-283; PIL alpha_composite, so rounding equals the port's)."""
    under = canvas.crop(region).convert("RGBA")
    over = tile.convert("RGBA")
    over.putalpha(mask.crop(region))
    under.alpha_composite(over)
    out = canvas.copy()
    out.paste(under.convert("RGB"), region[:2])
    return out


def run_job(canvas: Image.Image, job: Job, sample: TileSampler, strength: float) -> Image.Image:
    """One job on the current canvas (steps 2-5 of the module docstring); returns the new canvas."""
    mask = job.mask(*canvas.size)
    region = job_crop(job, mask)
    if job.blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(job.blur))
    tile = canvas.crop(region)
    crop_size = tile.size
    if tile.size != job.size:
        tile = tile.resize(job.size, Image.Resampling.LANCZOS)
    redrawn = sample(tile, strength, region, canvas.size)
    if redrawn.size != crop_size:
        redrawn = redrawn.resize(crop_size, Image.Resampling.LANCZOS)
    return paste(canvas, redrawn, region, mask)


# ---- checks shared by the image-space methods --------------------------------------------------------
def size_multiple(md: Any) -> int:
    """Pixels a tile size must be a multiple of: the VAE factor x the denoiser's patch (SD3/FLUX: 2)."""
    return int(md.vae_scale_factor) * int(getattr(getattr(md, "family", None), "patch", 1) or 1)


def check_upscale_args(name: str, md: Any, image: Any, *, strength: Any, steps: Any, controlnet: Any,
                       control_image: Any, strengths: Sequence[tuple[str, Any]] = ()) -> None:
    """The arguments of `upscale_image`, before any model call (ConfigError naming the field)."""
    if getattr(md, "vae", None) is None:
        raise ConfigError(f"method {name!r} encodes tiles with a VAE; this pipeline has none (pixel-space model): "
                          "use method='multidiffusion'")
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[:2] != (1, 3):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(f"image must be a (1, 3, H, W) tensor in [0, 1], got {got}")
    m = size_multiple(md)
    H, W = image.shape[-2:]
    if H % m or W % m:
        raise ConfigError(f"image is {W}x{H} px; both sides must be multiples of {m} px, e.g. "
                          f"{max(m, W // m * m)}x{max(m, H // m * m)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1 (e.g. 20), got {steps!r}")
    for field, s in (("strength", strength), *strengths):
        if not is_num(s) or not 0 < s <= 1:
            raise ConfigError(f"{field} must be in (0, 1] (e.g. 0.35), got {s!r}")
        if int(steps * s) < 1:
            raise ConfigError(f"{field}={s} with steps={steps} runs no denoising step (int(steps x strength) = 0); "
                              f"use {field} >= {1 / steps:.3g} or more steps")
    if control_image is not None:
        if not isinstance(control_image, torch.Tensor) or control_image.ndim != 4 or control_image.shape[0] != 1:
            raise ConfigError("control_image must be a (1, C, H, W) tensor in [0, 1] at the canvas size")
    if (controlnet is not None or control_image is not None) and "control_image" not in inspect.signature(md.__call__).parameters:
        raise ConfigError(f"method {name!r} with a ControlNet needs a pipeline whose call takes control_image= "
                          "(ControlNet per view); this one does not: pass controlnet=None")


def progress_bar(jobs: Sequence[Any], enabled: bool, desc: str) -> Iterator[Any]:
    """`jobs` with a tqdm bar (one tick per tile) when enabled."""
    if not enabled:
        return iter(jobs)
    from tqdm.auto import tqdm

    return iter(tqdm(jobs, desc=desc, unit="tile", leave=False))


def valid_tile_size(v: Any) -> bool:
    return v is None or (is_int(v) and v >= 8 and v % 8 == 0)


def _px_step(v: Any) -> bool:
    return is_int(v) and v >= 0 and v % 8 == 0


TILE_HINT = "a positive multiple of 8 px, e.g. 512, or None (the model's native window)"


class ImageSpaceMethod(Method):
    """What the pixel-space upscalers share: refused by a generation, run by `md.upscale`."""

    image_space = True
    supports_circular = False

    def tile_size(self, md: Any) -> tuple[int, int]:
        """(tw, th): tile_width (default the model's native window), tile_height (default tile_width)."""
        tw = self.params["tile_width"] or int(md.native_window)
        return tw, self.params["tile_height"] or tw

    def check_tiles(self, md: Any) -> tuple[int, int]:
        tw, th = self.tile_size(md)
        m = size_multiple(md)
        for key, v in (("tile_width", tw), ("tile_height", th)):
            if v % m:
                raise ConfigError(f"method.{key}={v} is not a multiple of {m} px for this model; use {max(m, v // m * m)}")
        return tw, th



@register
class UltimateSDUpscaleMethod(ImageSpaceMethod):
    """Ultimate SD Upscale (ComfyUI port, force_uniform_tiles): sequential padded tiles, blurred paste, seam fixes."""

    name = "usdu"
    PARAMS = {
        "tile_width": Param(None, valid_tile_size, TILE_HINT, "tile width in px (port: 512)"),
        "tile_height": Param(None, valid_tile_size, TILE_HINT, "tile height in px (default: tile_width; port: 512)"),
        "padding": Param(32, _px_step, "an integer >= 0, a multiple of 8, e.g. 32", "context around a tile in px"),
        "mask_blur": Param(8, lambda v: is_int(v) and 0 <= v <= 64, "an integer in [0, 64], e.g. 8",
                           "Gaussian blur radius of the paste mask in px"),
        "order": Param("linear", lambda v: v in ORDERS, f"one of {list(ORDERS)}", "redraw order"),
        "seam_fix": Param("none", lambda v: v in SEAM_FIX_MODES, f"one of {list(SEAM_FIX_MODES)}", "seam-fix mode"),
        "seam_fix_denoise": Param(None, lambda v: v is None or (is_num(v) and 0 < v <= 1),
                                  "a number in (0, 1], e.g. 0.35, or None (the redraw strength, as the port runs it)",
                                  "strength of the seam-fix passes"),
        "seam_fix_width": Param(64, lambda v: _px_step(v) and v > 0, "a positive multiple of 8, e.g. 64",
                                "band width of band_pass in px"),
        "seam_fix_mask_blur": Param(8, lambda v: is_int(v) and 0 <= v <= 64, "an integer in [0, 64], e.g. 8",
                                    "mask blur of the half-tile passes (A1111: 4)"),
        "seam_fix_padding": Param(16, _px_step, "an integer >= 0, a multiple of 8, e.g. 16",
                                  "padding of the seam-fix passes in px"),
    }

    def jobs(self, md: Any, width: int, height: int) -> tuple[list[Job], list[Job]]:
        """(redraw jobs, seam-fix jobs) of a width x height canvas, in the order they run."""
        tile = self.check_tiles(md)
        redraw = redraw_jobs(width, height, tile, self.padding, self.mask_blur, self.order, size_multiple(md))
        fix = seam_fix_jobs(width, height, tile, self.seam_fix, seam_width=self.seam_fix_width,
                            padding=self.seam_fix_padding, blur=self.seam_fix_mask_blur)
        return redraw, fix

    def check_jobs(self, md: Any, width: int, height: int) -> tuple[list[Job], list[Job]]:
        redraw, fix = self.jobs(md, width, height)
        m = size_multiple(md)
        if self.seam_fix == "band_pass" and (self.seam_fix_width + 2 * self.seam_fix_padding) % m:
            raise ConfigError(f"method.seam_fix_width + 2 x method.seam_fix_padding = "
                              f"{self.seam_fix_width + 2 * self.seam_fix_padding} px must be a multiple of {m} px for "
                              f"this model; use seam_fix_width={max(m, self.seam_fix_width // m * m)} and "
                              f"seam_fix_padding={self.seam_fix_padding // m * m}")
        return redraw, fix

    def upscale_image(self, md: Any, image: torch.Tensor, *, prompt: str | None, negative_prompt: str | None,
                      strength: float, steps: int, guidance_scale: float, seed: int, controlnet: Any = None,
                      control_image: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                      progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        fix_strength = strength if self.seam_fix_denoise is None else self.seam_fix_denoise
        check_upscale_args(self.name, md, image, strength=strength, steps=steps, controlnet=controlnet,
                           control_image=control_image, strengths=[("method.seam_fix_denoise", fix_strength)])
        H, W = image.shape[-2:]
        redraw, fix = self.check_jobs(md, W, H)
        if controlnet is not None and control_image is None:
            control_image = image  # tile ControlNet convention: the (fixed) upscaled source
        sample = TileSampler(md, prompt, negative_prompt, steps, guidance_scale, seed, controlnet, control_image,
                             controlnet_conditioning_scale)
        canvas = to_pil(image)
        for job in progress_bar(redraw + fix, progress, self.name):
            canvas = run_job(canvas, job, sample, fix_strength if job.seam_fix else strength)
        counts = dict(sample.counts, tiles=len(redraw), seam_fix_jobs=len(fix))
        tw, th = self.tile_size(md)
        rows, cols = grid(W, H, tw, th)
        counts.update(grid=[rows, cols], tile=[tw, th], processing_size=list(redraw[0].size) if redraw else None,
                      seam_fix_strength=fix_strength if fix else None)
        return to_tensor(canvas).to(image.device), counts
