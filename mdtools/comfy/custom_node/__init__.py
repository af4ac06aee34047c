"""ComfyUI custom-node entry of mdtools: ComfyUI imports this folder from custom_nodes/.

`mdtools comfy-install --comfyui DIR` links it there; mdtools itself must be installed in
the Python that runs ComfyUI (pip install mdtools / pip install -e <checkout>).
"""

from mdtools.comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
