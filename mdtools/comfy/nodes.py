"""The ComfyUI nodes of mdtools (V1 node schema, read by ComfyUI 0.3.x and later).

Every node checks its inputs with mdtools' own validators and raises `ConfigError` naming
the input and a valid value; ComfyUI shows that message on the node. ComfyUI modules
(`comfy`, `folder_paths`) are imported inside the node functions only.

Layouts (ComfyUI): LATENT is {"samples": (B, C, H/8, W/8)}, unscaled VAE latents; IMAGE
is (B, H, W, 3) float in [0, 1].
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .patch import CIRCULAR_CHOICES, KERNEL_CHOICES, PATCH_METHODS, MultiDiffusionPatch, PatchSettings, apply_patch
from .seams import DEFAULT_SEAM_METRICS
from .vae_nodes import VAEDecodeExactTiled, VAEEncodeExactTiled

CATEGORY = "mdtools"
MAX_PX = 16384


def _px(default: int, lo: int = 8, step: int = 8) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": lo, "max": MAX_PX, "step": step})


class MultiDiffusionModel:
    """MODEL -> MODEL: every model call is fused over overlapping windows (mdtools.fusion)."""

    DESCRIPTION = ("MultiDiffusion-family model patch: the sampler's model call on the whole canvas becomes the "
                   "weighted average of the model's predictions for overlapping windows (Eq. 5), every step. "
                   "window/overlap in pixels; 'auto' kernel = the method's default. Sample with any KSampler. "
                   "ControlNets applied to the conditioning (Apply ControlNet, chained too) are cropped per view: "
                   "each view gets the residuals of its own crop of the hint.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "method": (list(PATCH_METHODS), {"default": "multidiffusion"}),
            "window": _px(512, lo=16),
            "overlap": ("INT", {"default": 64, "min": 0, "max": MAX_PX, "step": 8}),
            "kernel": (list(KERNEL_CHOICES), {"default": "auto"}),
            "view_batch_size": ("INT", {"default": 4, "min": 1, "max": 256}),
        }, "optional": {
            "circular": (list(CIRCULAR_CHOICES), {"default": "off"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "control_after_generate": True,
                             "tooltip": "seed of the method's own draws (SpotDiffusion's window shifts)"}),
        }}

    def patch(self, model: Any, method: str, window: int, overlap: int, kernel: str, view_batch_size: int,
              circular: str = "off", seed: int = 0) -> tuple[Any]:
        p = MultiDiffusionPatch(PatchSettings(method=method, window=window, overlap=overlap, kernel=kernel,
                                              view_batch_size=view_batch_size, circular=circular, seed=seed))
        return (apply_patch(model, p),)


class SeamMetrics:
    """IMAGE + the plan's window and overlap -> metric values (text, also a JSON file) and a seam heat map."""

    DESCRIPTION = ("Seam metrics of mdtools (docs/metrics.md) on the plan the image was made with (window and overlap "
                   "in pixels), written as JSON to the output folder, and a heat map of where steps between pixels "
                   "stand out (white ticks: the plan's seam lines).")
    CATEGORY = CATEGORY
    FUNCTION = "measure"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("metrics", "heatmap")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "images": ("IMAGE",),
            "window": _px(512, lo=16),
            "overlap": ("INT", {"default": 64, "min": 0, "max": MAX_PX, "step": 8}),
            "metrics": ("STRING", {"default": ", ".join(DEFAULT_SEAM_METRICS)}),
            "filename_prefix": ("STRING", {"default": "mdtools/seams"}),
        }, "optional": {
            "circular": (list(CIRCULAR_CHOICES), {"default": "off"}),
        }}

    def measure(self, images: Any, window: int, overlap: int, metrics: str, filename_prefix: str,
                circular: str = "off") -> dict[str, Any]:
        import os

        import torch

        from .outputs import save_path, to_nchw, write_json
        from .seams import measure, parse_metrics, seam_heatmap, summary_text

        names = parse_metrics(metrics)
        x = to_nchw(images)
        rows, plan = measure(x, window, overlap, circular=False if circular == "off" else circular, metrics=names)
        text = summary_text(rows, plan)
        folder, stem, counter, subfolder = save_path(filename_prefix, x.shape[-1], x.shape[-2])
        write_json(os.path.join(folder, f"{stem}_{counter:05}_.json"),
                   {"plan": plan.summary(), "seam_lines": plan.seam_lines, "images": rows})
        heat = torch.stack([seam_heatmap(img, plan) for img in x])
        return {"ui": {"text": [text]}, "result": (text, heat)}


class RunRecordNode:
    """MODEL + VAE -> the same, reporting time and peak memory per phase into a MDTOOLS_RECORD."""

    DESCRIPTION = ("Measures the sampling and decoding downstream of it: time and peak memory per phase (sampling, "
                   "denoise, vae_decode, vae_encode) and model call counts. Connect its MODEL to the sampler and its "
                   "VAE to the decode, then the record to Save Image + Record (mdtools). Runs every time (a record of "
                   "cached work would be empty).")
    CATEGORY = CATEGORY
    FUNCTION = "wrap"
    RETURN_TYPES = ("MODEL", "VAE", "MDTOOLS_RECORD")
    RETURN_NAMES = ("model", "vae", "record")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "vae": ("VAE",), "label": ("STRING", {"default": ""})}}

    @classmethod
    def IS_CHANGED(cls, **_: Any) -> float:
        return float("nan")  # never equal to itself: a fresh record, and the measured work re-runs

    def wrap(self, model: Any, vae: Any, label: str) -> tuple[Any, Any, Any]:
        from .record import RunRecord

        rec = RunRecord(label)
        return rec.wrap_model(model), rec.wrap_vae(vae), rec


class SaveImageRecord:
    """Save images as PNG (like SaveImage) with the run record as JSON of the same name next to each."""

    DESCRIPTION = "Saves the images to the output folder and the Run Record (mdtools) as <name>.json next to each PNG."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("record_json",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "record": ("MDTOOLS_RECORD",),
                             "filename_prefix": ("STRING", {"default": "mdtools/run"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images: Any, record: Any, filename_prefix: str, prompt: Any = None,
             extra_pnginfo: Any = None) -> dict[str, Any]:
        import json

        from .outputs import jsonable, save_images
        from .record import RunRecord

        if not isinstance(record, RunRecord):
            raise ConfigError(f"record must come from a Run Record (mdtools) node, got {type(record).__name__}")
        data = record.to_dict()
        saved = save_images(images, filename_prefix, sidecar=data, prompt=prompt, extra_pnginfo=extra_pnginfo)
        text = json.dumps(jsonable(data), indent=1)
        return {"ui": {"images": saved}, "result": (text,)}


class LoadPipeline:
    """'toy', a diffusers folder, a hub id or a single checkpoint file -> MDTOOLS_PIPE."""

    DESCRIPTION = ("Loads an mdtools MultiDiffusionPipeline: 'toy' is the embedded model (no download, CPU); or a "
                   "diffusers folder / hub id; or a single .safetensors checkpoint (architecture detected from the "
                   "file; config: a diffusers config folder or 'arch:<preset>' to override); or 'arch:<preset>' "
                   "(exact architecture, random weights).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MDTOOLS_PIPE",)
    RETURN_NAMES = ("pipe",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from .pipe import DEVICES, DTYPES

        return {"required": {"model": ("STRING", {"default": "toy"}),
                             "device": (list(DEVICES), {"default": "auto"}),
                             "dtype": (list(DTYPES), {"default": "float32"})},
                "optional": {"config": ("STRING", {"default": ""})}}

    def load(self, model: str, device: str, dtype: str, config: str = "") -> tuple[Any]:
        from .pipe import load_pipeline

        return (load_pipeline(model, device=device, dtype=dtype, config=config),)


class Generate:
    """MDTOOLS_PIPE -> IMAGE with any mdtools method (the whole pipeline: syncdiffusion, demofusion, ...)."""

    DESCRIPTION = ("Generates with mdtools' own sampling loop, so every generation method of mdtools runs, including "
                   "those that need the whole pipeline (syncdiffusion, demofusion, global_pass) and region prompts "
                   "(regions: JSON list of {prompt, box: [top, left, height, width]}). window 0 = the model's size.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "record_json")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from ..methods import generation_methods
        from .pipe import VAE_TILING

        return {"required": {
            "pipe": ("MDTOOLS_PIPE",),
            "prompt": ("STRING", {"default": "a photo of a mountain range", "multiline": True}),
            "negative_prompt": ("STRING", {"default": "", "multiline": True}),
            "width": _px(2048),
            "height": _px(512),
            "window": ("INT", {"default": 0, "min": 0, "max": MAX_PX, "step": 8}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": MAX_PX, "step": 8}),
            "method": (sorted(generation_methods()), {"default": "multidiffusion"}),
            "kernel": (list(KERNEL_CHOICES), {"default": "auto"}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 1000}),
            "guidance": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "control_after_generate": True}),
        }, "optional": {
            "view_batch_size": ("INT", {"default": 4, "min": 1, "max": 256}),
            "circular": (list(CIRCULAR_CHOICES), {"default": "off"}),
            "scheduler": ("STRING", {"default": ""}),
            "method_params": ("STRING", {"default": "{}", "multiline": True}),
            "regions": ("STRING", {"default": "[]", "multiline": True}),
            "vae_tiling": (list(VAE_TILING), {"default": "auto"}),
        }}

    def generate(self, pipe: Any, **kwargs: Any) -> tuple[Any, str]:
        import json

        from .outputs import jsonable
        from .pipe import generate

        images, rec = generate(pipe, **kwargs)
        return images, json.dumps(jsonable(rec), indent=1)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "MultiDiffusionModel_mdtools": MultiDiffusionModel,
    "VAEDecodeTiled_mdtools": VAEDecodeExactTiled,
    "VAEEncodeTiled_mdtools": VAEEncodeExactTiled,
    "SeamMetrics_mdtools": SeamMetrics,
    "RunRecord_mdtools": RunRecordNode,
    "SaveImageRecord_mdtools": SaveImageRecord,
    "LoadPipeline_mdtools": LoadPipeline,
    "Generate_mdtools": Generate,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "MultiDiffusionModel_mdtools": "MultiDiffusion (mdtools)",
    "VAEDecodeTiled_mdtools": "VAE Decode (mdtools, exact tiled)",
    "VAEEncodeTiled_mdtools": "VAE Encode (mdtools, exact tiled)",
    "SeamMetrics_mdtools": "Seam Metrics (mdtools)",
    "RunRecord_mdtools": "Run Record (mdtools)",
    "SaveImageRecord_mdtools": "Save Image + Record (mdtools)",
    "LoadPipeline_mdtools": "Load Pipeline (mdtools)",
    "Generate_mdtools": "Generate (mdtools)",
}
