"""mdtools inside ComfyUI: a node pack (docs/comfyui.md).

Nodes (`mdtools.comfy.nodes.NODE_CLASS_MAPPINGS`): MultiDiffusion (mdtools) model patch,
exact tiled VAE Decode / Encode (mdtools), Seam Metrics (mdtools), Run Record (mdtools),
Load Pipeline / Generate (mdtools). `mdtools comfy-install --comfyui DIR` links the
custom-node folder `mdtools/comfy/custom_node` into ComfyUI's custom_nodes/.

Importing mdtools (or this package) never imports ComfyUI: `comfy` and `folder_paths` are
imported inside the functions that run in a ComfyUI process. Nothing patches ComfyUI
globally: every effect comes from a node in the graph (a patched MODEL clone, a VAE
proxy, files written by an output node).
"""

from .patch import PATCH_METHODS, MultiDiffusionPatch, PatchSettings, apply_patch

__all__ = ["PATCH_METHODS", "MultiDiffusionPatch", "PatchSettings", "apply_patch"]
