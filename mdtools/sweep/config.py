"""Run configs and experiment files: validated, expanded, hashed.

An experiment file (experiments/*.yaml, read with yaml.safe_load) has:

    name: overlap_kernel
    description: ...
    base: {model: toy, prompt: ..., canvas: {height: 256, width: 1024}, ...}   # a RunConfig
    sweep: {tiling.overlap: [0, 32, 64], tiling.kernel: [uniform, gaussian]}   # cartesian
    zip: [{canvas.height: [256, 512], canvas.width: [1024, 512]}]              # move together
    seeds: [0, 1, 2]

A run with an `upscale:` block (UpscaleConfig) upscales an image instead of generating one:
the ground truth is rendered (a scene of the scenes generator, or an image file) at the
canvas size, downsampled by `upscale.downsample`, and upscaled back with `md.upscale`; the
metrics compare the result with the truth (psnr, ssim, color_drift, ...). Its keys sweep like
any other, e.g. `sweep: {upscale.strength: [0.2, 0.35, 0.5]}`.

Every run is `base` with the swept values set at their dotted key paths. All runs are
validated before any runs: unknown keys and bad values are reported together, each with
its key path and a valid value.

A top-level `controls: [diffusers_default, single_window]` (names of CONTROLS) adds control
runs, each marked by its `control` field ("" on every other run; a column of runs.parquet):
`diffusers_default` is MultiDiffusion with the uniform kernel at stride window / 8 (overlap =
window - window // 8), one per canvas, seed and prompt of the sweep; `single_window` is
MultiDiffusion on a canvas of exactly one window, one per seed and prompt, shared by every
canvas. Everything else is the experiment's `base` (see `control_runs`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..choices import DtypeName, SyncStrategy
from ..errors import ConfigError
from ..plan import Circular
from ..upscale import COLOR_FIXES, DEFAULT_STRENGTH, NOISE_INVERSION_DEFAULTS, UPSCALERS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanvasConfig(_Strict):
    """Canvas size in pixels, or an aspect ratio (width / height) and megapixels."""

    height: Optional[int] = None
    width: Optional[int] = None
    aspect: Optional[float] = Field(default=None, gt=0)
    megapixels: Optional[float] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> "CanvasConfig":
        sized = self.height is not None or self.width is not None
        ratio = self.aspect is not None or self.megapixels is not None
        if sized and ratio:
            raise ValueError("give either height/width or aspect/megapixels, not both")
        if ratio and (self.aspect is None or self.megapixels is None):
            raise ValueError("aspect and megapixels go together, e.g. aspect: 4.0, megapixels: 0.5")
        if not ratio and (self.height is None or self.width is None):
            raise ValueError("give both height and width in pixels, e.g. height: 512, width: 2048")
        return self

    def resolve(self, scale: int) -> tuple[int, int]:
        """(height, width) in pixels; aspect/megapixels rounded to multiples of `scale`."""
        if self.height is not None and self.width is not None:
            return self.height, self.width
        assert self.aspect is not None and self.megapixels is not None
        area = self.megapixels * 1e6
        h = math.sqrt(area / self.aspect)
        w = h * self.aspect
        return max(scale, round(h / scale) * scale), max(scale, round(w / scale) * scale)


class TilingConfig(_Strict):
    window: Optional[int] = None  # pixels; None: the model's native size
    overlap: int = 64
    kernel: str = "gaussian"
    kernel_params: dict[str, Any] = Field(default_factory=dict)
    circular: Circular = False
    view_batch_size: int = 4


class SamplerConfig(_Strict):
    scheduler: Optional[str] = None  # None: the model's own
    steps: int = 25
    guidance: float = 7.5
    guidance_rescale: float = 0.0
    eta: float = 0.0


class VaeConfig(_Strict):
    """How latents become pixels. tiling: 'auto' (tiled above `auto_pixels`), true, false."""

    tiling: Union[bool, Literal["auto"]] = "auto"
    tile: Optional[int] = None  # pixels; None: 512 (diffusers' enable_tiling tile for SD)
    # blend overlap; 64 since the first results (run ids hash it). Exact tiles need none:
    # `overlap: 0` saves their compute (mdtools.vae's own default on exact runs)
    overlap: int = 64
    sync_groupnorm: bool = True
    # park: one pass, parked activations grow with the canvas; recompute: one tile's memory,
    # many times the compute; auto: park what fits in a quarter of free memory, replay the rest
    sync_strategy: SyncStrategy = "auto"
    auto_pixels: int = 2048 * 2048
    # where waiting tiles are kept: None = "cpu" (RAM); "disk" or "disk:<dir>" = out of core
    # (memory of one tile at any canvas size). Left out of run ids while None.
    park: Optional[str] = None

    @field_validator("park")
    @classmethod
    def _park(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from ..vae import check_park

            check_park("vae.park", v)  # a bad device or directory fails when the config is read
        return v


class GlobalPassConfig(_Strict):
    """Deprecated: the legacy `global_pass: {enabled: true}` switch; use `method: {name: global_pass}` (claim C6)."""

    enabled: bool = False
    factor: int = Field(default=4, ge=2)
    strength: float = Field(default=0.6, gt=0, le=1)


class MethodConfig(BaseModel):
    """`method:` block: `name` (a key of mdtools.METHODS) and that method's parameters as
    further keys, e.g. {name: syncdiffusion, weight: 20, sync_steps: 10}. Parameters are
    validated by the method itself (mdtools.methods.get_method)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = "multidiffusion"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RegionConfig(_Strict):
    """A region prompt on a box of the canvas (pixels); the run's prompt is the background."""

    prompt: str
    box: tuple[int, int, int, int]
    negative_prompt: Optional[str] = None


#: how an upscale run's ground truth is reduced to its source (PIL filters, antialiased)
DOWNSAMPLE_FILTERS = ("bicubic", "lanczos", "box")


class UpscaleConfig(_Strict):
    """`upscale:` block: the truth (a rendered scene, or `image`: a file) at the canvas size is
    downsampled by `downsample` and upscaled back by `scale` (None: the same factor) with
    `md.upscale` (docs/upscale.md); the run's metrics take the truth as their reference."""

    image: Optional[str] = None  # an image file as the truth; None: a scene of the scenes generator
    scene_seed: int = 0  # which scene (mdtools.toy.scenes.sample_params with this seed)
    scene_prompt: bool = True  # prompt with the scene's own prompt instead of the run's `prompt`
    downsample: int = Field(default=4, ge=1)
    downsample_filter: str = "bicubic"
    scale: Optional[float] = Field(default=None, gt=0)  # None: = downsample (back to the truth's size)
    strength: float = Field(default=DEFAULT_STRENGTH, gt=0, le=1)
    upscaler: str = "lanczos"
    color_fix: Optional[str] = None
    color_fix_tiles: bool = False
    noise_inversion: Union[bool, dict[str, Union[int, float]]] = False
    controlnet: Optional[str] = None  # an embedded ControlNet name ('toy-scenes-tile') or a folder
    controlnet_conditioning_scale: float = Field(default=1.0, ge=0)
    control_mode: Optional[int] = Field(default=None, ge=0)  # a Union ControlNet's control type (tile: 6 for promax); with controlnet only
    model_options: Optional[dict[str, Any]] = None  # md.upscale's model_options (the model kind's options, e.g. {true_cfg_scale: 4.0})

    @field_validator("downsample_filter")
    @classmethod
    def _filter(cls, v: str) -> str:
        if v not in DOWNSAMPLE_FILTERS:
            raise ValueError(f"must be one of {list(DOWNSAMPLE_FILTERS)}, got {v!r}")
        return v

    @field_validator("upscaler")
    @classmethod
    def _upscaler(cls, v: str) -> str:
        if v not in UPSCALERS:
            raise ValueError(f"must be one of {list(UPSCALERS)}, got {v!r}")
        return v

    @field_validator("color_fix")
    @classmethod
    def _color_fix(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in COLOR_FIXES:
            raise ValueError(f"must be one of {list(COLOR_FIXES)} or null, got {v!r}")
        return v

    @field_validator("model_options")
    @classmethod
    def _model_options(cls, v: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        from ..models import MODEL_OPTIONS

        bad = sorted(set(v or {}) - set(MODEL_OPTIONS))
        if bad:
            raise ValueError(f"unknown key(s) {bad}; valid keys: {sorted(MODEL_OPTIONS)}")
        return v

    @field_validator("noise_inversion")
    @classmethod
    def _inversion(cls, v: Any) -> Any:
        if isinstance(v, dict):
            bad = sorted(set(v) - set(NOISE_INVERSION_DEFAULTS))
            if bad:
                raise ValueError(f"unknown key(s) {bad}; valid keys: {sorted(NOISE_INVERSION_DEFAULTS)}")
        return v


class OutputConfig(_Strict):
    preview_max_side: int = Field(default=1024, gt=0)
    save_full: bool = False


#: the control runs an experiment file's top-level `controls:` can ask for (see `control_runs`)
CONTROLS = ("diffusers_default", "single_window")

#: what a sweep run records when its config names no metrics (mdtools.metrics.evaluate has its own default)
DEFAULT_RUN_METRICS = ("seam_structure", "seam_score", "seam_score_lab", "intra_color", "tv")


class RunConfig(_Strict):
    """One generation, fully specified."""

    model: str = "toy"
    #: single checkpoint files only: 'arch:<preset>' or a diffusers config folder, instead
    #: of the architecture detected from the file (e.g. arch:sd21-768 for the 768-v model)
    checkpoint_config: Optional[str] = None
    prompt: str
    negative_prompt: Optional[str] = None
    canvas: CanvasConfig = CanvasConfig(height=512, width=2048)
    tiling: TilingConfig = TilingConfig()
    sampler: SamplerConfig = SamplerConfig()
    vae: VaeConfig = VaeConfig()
    global_pass: GlobalPassConfig = GlobalPassConfig()  # legacy switch; prefer method: {name: global_pass}
    method: MethodConfig = MethodConfig()
    regions: list[RegionConfig] = Field(default_factory=list)
    bootstrap_steps: int = Field(default=0, ge=0)
    seed: int = 0
    device: str = "auto"
    dtype: DtypeName = "float32"
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_RUN_METRICS))
    diagnostics: bool = True
    output: OutputConfig = OutputConfig()
    upscale: Optional[UpscaleConfig] = None  # an upscale run (see the module docstring)
    #: which control run this is (a name of CONTROLS), "" for an ordinary run; set by `controls:`
    control: str = ""

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("device must be 'auto', 'cpu' or 'cuda[:N]'")
        return v

    @field_validator("control")
    @classmethod
    def _control(cls, v: str) -> str:
        if v and v not in CONTROLS:
            raise ValueError(f"must be one of {list(CONTROLS)} or \"\" (an ordinary run), got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_global_pass(self) -> "RunConfig":
        if self.global_pass.enabled and self.method.name != "multidiffusion":
            raise ValueError("global_pass.enabled is the legacy switch for method global_pass; "
                             "use method: {name: global_pass, factor: 4, strength: 0.6} alone")
        if self.global_pass.enabled:
            import warnings

            warnings.warn("global_pass: {enabled: true} (GlobalPassConfig) is deprecated; use method: "
                          "{name: global_pass, factor: ..., strength: ...}", DeprecationWarning, stacklevel=2)
        return self

    def method_call(self) -> tuple[str, dict[str, Any]]:
        """(method name, params) this run generates with; the legacy global_pass switch maps to its method."""
        if self.global_pass.enabled:
            return "global_pass", {"factor": self.global_pass.factor, "strength": self.global_pass.strength}
        return self.method.name, self.method.params()

    def kernel_arg(self) -> Optional[str]:
        """The kernel as the pipeline takes it: None when the config leaves it at its default,
        so a method with its own weights (mixture) uses them."""
        return self.tiling.kernel if "kernel" in self.tiling.model_fields_set else None

    def run_id(self) -> str:
        """Stable id: a hash of the resolved config (key order and formatting do not matter).

        Keys added after results were recorded (method, regions, bootstrap_steps,
        checkpoint_config, vae.park, upscale, control) are left out of the hash while at their
        defaults, so earlier run ids stay valid."""
        d = self.model_dump(mode="json")
        if d.get("method") == {"name": "multidiffusion"}:
            d.pop("method")
        if not d.get("regions"):
            d.pop("regions", None)
        if not d.get("bootstrap_steps"):
            d.pop("bootstrap_steps", None)
        if d.get("checkpoint_config") is None:
            d.pop("checkpoint_config", None)
        if isinstance(d.get("vae"), dict) and d["vae"].get("park") is None:
            d["vae"].pop("park", None)
        if d.get("upscale") is None:
            d.pop("upscale", None)
        elif d["upscale"].get("model_options") is None:
            d["upscale"].pop("model_options", None)
        if not d.get("control"):
            d.pop("control", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Dotted-key dict of the config, for table columns."""
        return flatten(self.model_dump(mode="json"))

    def call_kwargs(self, scale: int) -> dict[str, Any]:
        """This run's generation keywords, the one translation of a RunConfig into a call: the
        model-free check (`prepare_run`) and the generation itself (mdtools.sweep.run.run_one)
        both start from it. The canvas is resolved at the VAE `scale`; `window` is the config's
        (None: the model's own), which the check replaces by the native window it read."""
        h, w = self.canvas.resolve(scale)
        name, params = self.method_call()
        return dict(
            prompt=self.prompt, negative_prompt=self.negative_prompt, height=h, width=w, window=self.tiling.window,
            overlap=self.tiling.overlap, kernel=self.kernel_arg(), kernel_params=self.tiling.kernel_params,
            method=name, method_params=params, regions=[r.model_dump() for r in self.regions],
            bootstrap_steps=self.bootstrap_steps, num_inference_steps=self.sampler.steps,
            guidance_scale=self.sampler.guidance, guidance_rescale=self.sampler.guidance_rescale,
            circular=self.tiling.circular, view_batch_size=self.tiling.view_batch_size,
        )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "kernel_params":
            out.update(flatten(v, key + "."))
        elif isinstance(v, (dict, list)):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _fmt_pydantic(e: ValidationError, where: str) -> list[str]:
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(err["loc"][:-1])
            if parent is not None:
                msg += f"; valid keys here: {sorted(parent.model_fields)}"
        elif err["type"] == "literal_error":
            msg = f"{msg}, got {err.get('input')!r}"
        out.append(f"{where}{loc or '(top level)'}: {msg}")
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if not isinstance(ann, type):  # Optional[Block]: the block inside
            import typing

            ann = next((a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


class Experiment(BaseModel):
    """A parsed experiment file: `runs` is the expanded, validated list of RunConfigs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str = ""
    path: Optional[str] = None
    runs: list[RunConfig]
    swept_keys: list[str]
    controls: list[str] = Field(default_factory=list)


_TOP_KEYS = {"name", "description", "base", "sweep", "zip", "seeds", "controls"}


def expand(spec: dict[str, Any], *, where: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """Expand base x sweep x zip x seeds into raw run dicts; returns (runs, swept keys)."""
    base = spec.get("base") or {}
    sweep = spec.get("sweep") or {}
    zips = spec.get("zip") or []
    seeds = spec.get("seeds")
    errors = []
    if not isinstance(base, dict):
        errors.append(f"{where}base: must be a mapping of run settings, e.g. base: {{prompt: grass}}")
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        errors.append(f"{where}sweep: must map dotted keys to non-empty lists, e.g. tiling.overlap: [0, 64]")
        sweep = {}
    if not isinstance(zips, list):
        errors.append(f"{where}zip: must be a list of groups, e.g. [{{canvas.height: [256, 512], canvas.width: [1024, 512]}}]")
        zips = []
    groups: list[list[dict[str, Any]]] = []
    for gi, g in enumerate(zips):
        if not isinstance(g, dict) or not g or not all(isinstance(v, list) for v in g.values()):
            errors.append(f"{where}zip[{gi}]: must map dotted keys to lists of equal length")
            continue
        lens = {k: len(v) for k, v in g.items()}
        if len(set(lens.values())) != 1:
            errors.append(f"{where}zip[{gi}]: lists must have equal length, got {lens}")
            continue
        n = next(iter(lens.values()))
        groups.append([{k: g[k][i] for k in g} for i in range(n)])
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds):
        errors.append(f"{where}seeds: must be a non-empty list of integers, e.g. [0, 1, 2]")
        seeds = None
    if errors:
        raise ConfigError("\n".join(errors))
    keys = list(sweep)
    swept = []
    for k, values in [(k, sweep[k]) for k in keys] + [(k, [row[k] for row in g]) for g in groups for k in g[0]]:
        # a swept block (e.g. whole `method` mappings) is swept at each of its leaves
        subs = sorted({f"{k}.{leaf}" for v in values if isinstance(v, dict) for leaf in flatten(v)})
        swept += subs or [k]
    swept += ["seed"] if seeds else []
    runs = []
    for combo in itertools.product(*(sweep[k] for k in keys), *groups, (seeds or [None])):
        d = copy.deepcopy(base)
        for k, v in zip(keys, combo[: len(keys)]):
            set_dotted(d, k, v)
        for g in combo[len(keys): len(keys) + len(groups)]:
            for k, v in g.items():
                set_dotted(d, k, v)
        if combo[-1] is not None:
            d["seed"] = combo[-1]
        runs.append(d)
    return runs, swept


def check_controls(value: Any, *, where: str = "") -> list[str]:
    """The experiment's `controls:` list, checked: names of CONTROLS, each at most once (None: [])."""
    if value is None:
        return []
    example = f"e.g. controls: [{', '.join(CONTROLS)}]"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}controls: must be a list of control names, {example}; valid values: {list(CONTROLS)}")
    bad = [v for v in value if v not in CONTROLS]
    if bad:
        raise ConfigError(f"{where}controls: unknown {bad}; valid values: {list(CONTROLS)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}controls: each control at most once, got {value}; {example}")
    return list(value)


#: the keys a control run takes from each run of the sweep; everything else is the experiment's base
CONTROL_KEYS = {"diffusers_default": ("canvas", "seed", "prompt", "negative_prompt"),
                "single_window": ("seed", "prompt", "negative_prompt")}


def control_runs(base: dict[str, Any], raw: list[dict[str, Any]], controls: list[str], window: int) -> list[dict[str, Any]]:
    """The raw control runs of an experiment, in order, each once: for every name of `controls`
    and every distinct (CONTROL_KEYS values) of the expanded runs `raw`, `base` with those values,
    method multidiffusion and `control` set to the name. `window` (pixels) sizes them:
    diffusers_default uses the uniform kernel at overlap window - window // 8 (stride window / 8,
    diffusers' default plan); single_window a canvas of window x window pixels (one view)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in controls:
        for d in raw:
            c = copy.deepcopy(base)
            for k in CONTROL_KEYS[name]:
                if k in d:
                    c[k] = copy.deepcopy(d[k])
            c.pop("global_pass", None)  # the legacy switch is a method
            c["method"] = {"name": "multidiffusion"}
            tiling = dict(c.get("tiling") or {})
            if name == "diffusers_default":
                tiling.pop("kernel_params", None)
                tiling.update(kernel="uniform", overlap=window - window // 8)
            else:
                c["canvas"] = {"height": window, "width": window}
            c["tiling"] = tiling
            c["control"] = name
            key = json.dumps(c, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(c)
    return out


def one_pass_evaluations(height: int, width: int, window: int | tuple[int, int], steps: int, guidance: float) -> int:
    """Model evaluations of one pass over non-overlapping windows covering a `height` x `width`
    canvas (pixels) for `steps` steps (2 per window and step with CFG, guidance > 1): the unit of
    redundancy = a run's evaluations (count.model_evaluations, every stage) / this."""
    wh, ww = (window, window) if isinstance(window, int) else window
    return math.ceil(height / wh) * math.ceil(width / ww) * steps * (2 if guidance > 1 else 1)


def _control_window(base: dict[str, Any], where: str) -> int:
    """The window (pixels) the control runs are sized by: base tiling.window, else the model's own."""
    window = (base.get("tiling") or {}).get("window") if isinstance(base.get("tiling"), dict) else None
    if window is None:
        try:
            window = read_model_configs(base.get("model", "toy"), base.get("checkpoint_config")).native
        except ConfigError as e:
            raise ConfigError(f"{where}base.model: {e}") from None
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"{where}controls: need the window in pixels; the model's cannot be read from its "
                          f"configs, so set base.tiling.window, e.g. window: 512")
    return window


def prepare_run(cfg: RunConfig, scale: int, native: int | None, *, cfg_passes: int | None = None) -> tuple[Any, Any]:
    """The run's validated call spec and method (mdtools.pipeline.prepare_call), no model
    needed. `cfg_passes`: model evaluations per sample and step when the model fixes it
    (FLUX: 1); None counts 2 with guidance > 1."""
    from ..call import prepare_call

    kw = cfg.call_kwargs(scale)
    kw["window"] = kw["window"] or native or 512
    return prepare_call(**kw, output_type="pil", scale=scale, cfg_passes=cfg_passes)


class ModelConfigs(NamedTuple):
    """What a model's configs on disk say before it is loaded."""

    path: str  # where they are read (mdtools.pipeline.config_source)
    scale: int  # VAE scale factor
    native: int | None  # training window in pixels; None when unreadable (a hub id)
    kind: str | None  # "sd3" / "flux"; None for a UNet model or a hub id


def read_model_configs(model: str, checkpoint_config: str | None = None) -> ModelConfigs:
    """The preflight read of a model's configs, no weights loaded: shared by run validation,
    the sweep's work estimate and `mdtools generate`. ConfigError for a model that does not exist."""
    from ..models import config_source, read_model_kind, read_native_window, read_scale_factor

    path = config_source(model, checkpoint_config)
    scale = read_scale_factor(path)
    return ModelConfigs(path, scale, read_native_window(path, scale), read_model_kind(path))


def validate_runs(raw: list[dict[str, Any]], *, where: str = "") -> list[RunConfig]:
    """Pydantic + engine checks for every run; all problems are reported together."""
    from ..metrics import METRICS
    from ..models import check_model_sizes
    from ..schedulers import check_scheduler_fits

    errors: list[str] = []
    runs: list[RunConfig] = []
    # keyed by (model, checkpoint_config); configs are read once per model, not per run
    models: dict[tuple, ModelConfigs] = {}
    for i, d in enumerate(raw):
        tag = f"{where}run {i}: "
        try:
            cfg = RunConfig.model_validate(d)
        except ValidationError as e:
            errors.extend(_fmt_pydantic(e, tag))
            continue
        try:
            m = (cfg.model, cfg.checkpoint_config)
            if m not in models:
                models[m] = read_model_configs(*m)
            mc = models[m]
            if mc.kind is not None:  # SD3 / FLUX: 16 px multiples, checked from the configs (no model load)
                check_model_sizes(mc.path, *cfg.canvas.resolve(mc.scale), cfg.tiling.window or mc.native, mc.scale)
            if cfg.sampler.scheduler:  # a hub id's family is checked once loaded (set_scheduler)
                check_scheduler_fits(cfg.sampler.scheduler, mc.kind, field="sampler.scheduler",
                                     family_known=Path(mc.path).exists())
            bad = [m for m in cfg.metrics if m not in METRICS]
            if bad:
                raise ConfigError(f"metrics: unknown {bad}; choose from {sorted(METRICS)}")
            if cfg.upscale is not None:
                from .upscale_runs import check_upscale_run

                check_upscale_run(cfg, mc.scale, mc.native, 2 if mc.kind is not None else 1)
            else:
                prepare_run(cfg, mc.scale, mc.native)
        except ConfigError as e:
            errors.append(f"{tag}{e}")
            continue
        runs.append(cfg)
    if errors:
        shown = errors[:40]
        more = f"\n... and {len(errors) - 40} more" if len(errors) > 40 else ""
        raise ConfigError(f"{len(errors)} problem(s) found before any run started:\n" + "\n".join(shown) + more)
    return runs


def load_experiment(path: str | Path) -> Experiment:
    """Read, expand and validate an experiment YAML file (safe loader; nothing executed)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"experiment file {str(p)!r} does not exist; see experiments/ for examples")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{p}: must be a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown top-level key(s) {sorted(unknown)}; valid keys: {sorted(_TOP_KEYS)}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ConfigError(f"{p}: name: required, a short identifier such as 'overlap_kernel'")
    where = f"{p.name}: "
    controls = check_controls(spec.get("controls"), where=where)
    raw, swept = expand(spec, where=where)
    if any("control" in d for d in raw):
        raise ConfigError(f"{where}control: set by the top-level controls list, not in base, sweep or zip; "
                          f"e.g. controls: [{', '.join(CONTROLS)}]")
    if controls:
        raw += control_runs(spec.get("base") or {}, raw, controls, _control_window(spec.get("base") or {}, where))
        swept += ["control"]
    runs = validate_runs(raw, where=where)
    return Experiment(name=spec["name"], description=spec.get("description", ""), path=str(p), runs=runs,
                      swept_keys=swept, controls=controls)
