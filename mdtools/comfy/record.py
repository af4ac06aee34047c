"""Run records in ComfyUI graphs: time and peak memory per phase, as `mdtools.instrument`.

`RunRecord` holds an `mdtools.instrument.Recorder`. The Run Record (mdtools) node hands
out a MODEL clone and a VAE proxy that report into it:
- MODEL: WrappersMP.OUTER_SAMPLE -> phase "sampling" (model loading included),
  SAMPLER_SAMPLE -> phase "denoise" (the sampler's loop only), APPLY_MODEL -> counts
  `model_calls` and `model_evaluations` (batch items through the model: placed after a
  MultiDiffusion (mdtools) node, these are the view evaluations);
- VAE: decode / encode (and their tiled variants) in phases "vae_decode" / "vae_encode";
  the mdtools exact tiled VAE nodes report into the same phases.
The Save Image + Record (mdtools) node writes the record as JSON next to the PNG.
Only the clone and the proxy carry the wrappers; the MODEL and VAE they came from are untouched.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

from ..errors import ConfigError
from .patch import WRAPPER_KEY

RECORD_KEY = "mdtools.record"
VAE_METHODS = {"decode": "vae_decode", "decode_tiled": "vae_decode", "encode": "vae_encode", "encode_tiled": "vae_encode"}


class RunRecord:
    """One record: a Recorder on ComfyUI's torch device, plus what the graph told it."""

    def __init__(self, label: str = "", device: Any = None):
        from ..instrument import Recorder

        if device is None:
            import comfy.model_management as mm

            device = mm.get_torch_device()
        self.recorder = Recorder(device)
        self.label = label
        self.t0 = time.time()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self.recorder.phase(name):
            yield

    def to_dict(self) -> dict[str, Any]:
        d = self.recorder.record.to_dict()
        d["label"] = self.label
        d["load"] = {"loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
        return d

    # ---- MODEL ----------------------------------------------------------------------------
    def wrap_model(self, model: Any) -> Any:
        """A clone of ComfyUI `model` whose sampling reports into this record."""
        if not hasattr(model, "add_wrapper_with_key"):
            raise ConfigError("Run Record (mdtools) needs ComfyUI's wrapper API (ModelPatcher.add_wrapper_with_key, "
                              "ComfyUI 0.3.10 or later); update ComfyUI")
        from comfy.patcher_extension import WrappersMP

        m = model.clone()
        for kind in (WrappersMP.OUTER_SAMPLE, WrappersMP.SAMPLER_SAMPLE, WrappersMP.APPLY_MODEL):
            if hasattr(m, "remove_wrappers_with_key"):
                m.remove_wrappers_with_key(kind, RECORD_KEY)
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, RECORD_KEY, self._timed("sampling"))
        m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, RECORD_KEY, self._timed("denoise"))
        m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, RECORD_KEY, self._counted)
        md = [getattr(w, "__self__", None) for w in m.get_wrappers(WrappersMP.APPLY_MODEL, WRAPPER_KEY)]
        if md and md[0] is not None:
            self.recorder.record.extra["multidiffusion"] = md[0].describe()
        return m

    def _timed(self, name: str) -> Any:
        def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return executor(*args, **kwargs)
        return wrapper

    def _counted(self, executor: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.recorder.count("model_calls")
        self.recorder.count("model_evaluations", int(x.shape[0]))
        return executor(x, *args, **kwargs)

    # ---- VAE ------------------------------------------------------------------------------
    def wrap_vae(self, vae: Any) -> Any:
        """A shallow copy of ComfyUI `vae` (same weights) whose decode/encode calls are phases."""
        v = copy.copy(vae)
        for meth, phase in VAE_METHODS.items():
            fn = getattr(vae, meth, None)
            if callable(fn):
                setattr(v, meth, self._vae_call(fn, phase))
        v.mdtools_record = self
        return v

    def _vae_call(self, fn: Any, phase: str) -> Any:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.phase(phase):
                return fn(*args, **kwargs)
        return call


def vae_phase(vae: Any, name: str) -> Any:
    """The record phase of a VAE proxy from Run Record (mdtools), or a no-op context."""
    rec = getattr(vae, "mdtools_record", None)
    return rec.phase(name) if isinstance(rec, RunRecord) else nullcontext()
