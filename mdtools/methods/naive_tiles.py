"""Naive tiles: plain per-tile img2img with no overlap, no padding and no blur, pasted hard (the baseline).

The canvas is cut into the grid ceil(W / tw) x ceil(H / th) of non-overlapping rectangles (the
last row and column clipped to the canvas); each tile is redrawn on its own at its own size by the
same one-view img2img as `usdu` (mdtools' img2img = diffusers' StableDiffusionImg2ImgPipeline,
the same seed for every tile) and pasted back unblended, so every tile border is a hard edge. The
tiles do not overlap, so the order does not matter (row-major). This is what USDU's padding, mask
blur and seam fixes, and the latent-space fusion methods, are measured against.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Param, register
from .usdu import TILE_HINT, ImageSpaceMethod, TileSampler, check_upscale_args, grid, progress_bar, to_pil, to_tensor, valid_tile_size


@register
class NaiveTilesMethod(ImageSpaceMethod):
    """Per-tile img2img on a non-overlapping grid, hard paste."""

    name = "naive_tiles"
    PARAMS = {
        "tile_width": Param(None, valid_tile_size, TILE_HINT, "tile width in px"),
        "tile_height": Param(None, valid_tile_size, TILE_HINT, "tile height in px (default: tile_width)"),
    }

    def boxes(self, md: Any, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The tiles (x1, y1, x2, y2), row-major, clipped to the canvas."""
        tw, th = self.check_tiles(md)
        rows, cols = grid(width, height, tw, th)
        return [(xi * tw, yi * th, min(xi * tw + tw, width), min(yi * th + th, height))
                for yi in range(rows) for xi in range(cols)]

    def upscale_image(self, md: Any, image: torch.Tensor, *, prompt: str | None, negative_prompt: str | None,
                      strength: float, steps: int, guidance_scale: float, seed: int, controlnet: Any = None,
                      control_image: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                      progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        check_upscale_args(self.name, md, image, strength=strength, steps=steps, controlnet=controlnet,
                           control_image=control_image)
        H, W = image.shape[-2:]
        boxes = self.boxes(md, W, H)
        if controlnet is not None and control_image is None:
            control_image = image
        sample = TileSampler(md, prompt, negative_prompt, steps, guidance_scale, seed, controlnet, control_image,
                             controlnet_conditioning_scale)
        source = to_pil(image)
        canvas = source.copy()
        for box in progress_bar(boxes, progress, self.name):
            tile = source.crop(box)
            canvas.paste(sample(tile, strength, box, source.size), box[:2])
        tw, th = self.tile_size(md)
        counts = dict(sample.counts, tiles=len(boxes), seam_fix_jobs=0, grid=list(grid(W, H, tw, th)), tile=[tw, th])
        return to_tensor(canvas).to(image.device), counts
