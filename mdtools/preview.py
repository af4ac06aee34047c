"""Live previews: a cheap RGB picture of the whole canvas every k steps, with the view grid and the progress drawn on it.

The picture is a linear map of the latents to RGB (no VAE decode per preview), upsampled to
the canvas's pixel size (latent size x the VAE's scale factor). The map is fitted once per
VAE by least squares on one small decode of smooth random latents (`latent_rgb_factors`), so
every family gets one without published constants; a pixel-space model's latents are its
image. `preview=` takes a callable `f(image: PIL.Image, info: dict)`, a path (a PNG rewritten
atomically in place) or True (in a notebook: one image updated in place).
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError, check_positive_int

_FACTORS: "weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor]]" = weakref.WeakKeyDictionary()
#: the latent grid the factors are fitted on (latent pixels per side)
FIT_SIZE = 16


@torch.no_grad()
def latent_rgb_factors(vae: Any, channels: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (channels, 3), b (3,)) with rgb ~= latents @ W + b in [-1, 1], for scaled latents.

    Fitted once per VAE: smooth random latents (bilinear upsampling of a 4x4 grid, at the
    scaled latents' unit spread) are decoded once at FIT_SIZE^2 latent pixels, the image is
    averaged down to the latent grid, and W, b solve the least-squares problem."""
    if vae in _FACTORS:
        return _FACTORS[vae]
    from .sampling import unscale_latents

    g = torch.Generator("cpu").manual_seed(0)
    coarse = torch.randn(4, channels, 4, 4, generator=g)
    z = F.interpolate(coarse, size=(FIT_SIZE, FIT_SIZE), mode="bilinear", align_corners=False)
    p = next(vae.parameters())
    img = vae.decode(unscale_latents(z, vae.config).to(p.device, p.dtype), return_dict=False)[0].float().cpu()
    small = F.avg_pool2d(img, scale) if scale > 1 else img
    X = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(z.numel() // channels, 1)], dim=1)
    Y = small.permute(0, 2, 3, 1).reshape(-1, 3)
    sol = torch.linalg.lstsq(X.double(), Y.double()).solution.float()
    _FACTORS[vae] = (sol[:channels], sol[channels])
    return _FACTORS[vae]


def latents_to_rgb(latents: torch.Tensor, vae: Any, scale: int) -> torch.Tensor:
    """(B, C, h, w) latents -> (3, h * scale, w * scale) in [0, 1] for the first sample."""
    lat = latents[0].detach().float().cpu()
    if vae is None:  # a pixel-space model: the latents are the image in [-1, 1]
        rgb = lat[:3]
    else:
        W, b = latent_rgb_factors(vae, lat.shape[0], scale)
        rgb = torch.einsum("chw,cd->dhw", lat, W) + b[:, None, None]
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    if scale > 1:
        rgb = F.interpolate(rgb[None], scale_factor=scale, mode="nearest")[0]
    return rgb


class Previewer:
    """Every `every` steps (and at the last one): the canvas as RGB, the view grid, a progress bar; to `target`."""

    def __init__(self, target: Any, every: int, *, vae: Any, scale: int):
        check_positive_int("preview_every", every, example=1)
        if not (callable(target) or target is True or isinstance(target, (str, os.PathLike))):
            raise ConfigError(f"preview={target!r} is not valid; give a callable f(image, info), a .png path, or True "
                              "(a notebook image updated in place)")
        if isinstance(target, (str, os.PathLike)) and Path(target).suffix.lower() != ".png":
            raise ConfigError(f"preview={str(target)!r} must be a .png path, e.g. 'preview.png'")
        self.target, self.every, self.vae, self.scale = target, every, vae, scale
        self.count, self.seconds = 0, 0.0
        self._handle: Any = None

    def __call__(self, run: Any, i: int, latents: torch.Tensor) -> None:
        last = i == len(run.stage.timesteps) - 1
        if (i + 1) % self.every and not last:
            return
        t0 = time.perf_counter()
        image = self.render(latents, run.stage, i)
        info = {"step": i, "stage": run.stage.index, "steps": len(run.stage.timesteps)}
        self.deliver(image, info)
        self.count += 1
        self.seconds += time.perf_counter() - t0

    def render(self, latents: torch.Tensor, stage: Any, i: int) -> Any:
        from PIL import Image, ImageDraw

        rgb = latents_to_rgb(latents, self.vae, self.scale)
        img = Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        draw = ImageDraw.Draw(img)
        s, (H, W) = self.scale, img.size[::-1]
        for v in stage.plan.views:  # the view grid (circular views wrap: drawn where they start)
            draw.rectangle([v.left * s, v.top * s, min(W, (v.left + v.width) * s) - 1, min(H, (v.top + v.height) * s) - 1],
                           outline=(255, 255, 255))
        done = (i + 1) / max(1, len(stage.timesteps))
        bar = max(2, H // 64)
        draw.rectangle([0, H - bar, int(W * done), H - 1], fill=(255, 200, 0))
        return img

    def deliver(self, image: Any, info: dict[str, Any]) -> None:
        if callable(self.target):
            self.target(image, info)
        elif self.target is True:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(image, display_id=True)
            else:
                self._handle.update(image)
        else:
            path = Path(self.target)
            tmp = path.with_name(path.stem + f".tmp{os.getpid()}.png")
            image.save(tmp)
            os.replace(tmp, path)

    def describe(self) -> dict[str, Any]:
        return {"every": self.every, "previews": self.count, "seconds": self.seconds,
                "target": self.target if isinstance(self.target, (str, bool)) else getattr(self.target, "__name__", "callable")}


PreviewTarget = Callable[[Any, dict], None] | str | os.PathLike | bool | None

__all__ = ["FIT_SIZE", "PreviewTarget", "Previewer", "latent_rgb_factors", "latents_to_rgb"]
