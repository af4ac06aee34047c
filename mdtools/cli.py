"""Command line: `mdtools generate | upscale | run | report | demo | comfy-install | train-toy | train-toy-controlnet`.

Every argument is validated before a model is loaded, so a typo costs a second, not a
model load.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .choices import DTYPE_NAMES
from .errors import ConfigError, check_positive_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _kernel_params(items: list[str], flag: str = "--kernel-param", example: str = "sigma=0.1") -> dict[str, Any]:
    """NAME=VALUE items; VALUE is read as JSON when it parses (numbers, lists, true/false), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r} must look like NAME=VALUE, e.g. {example}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _circular(v: str) -> Any:
    return False if v in ("false", "False", "none", "0") else v


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .call import prepare_call
    from .models import DTYPES, check_model_sizes
    from .pipeline import MultiDiffusionPipeline
    from .schedulers import check_scheduler_fits
    from .state import ResumeState
    from .sweep.config import read_model_configs

    # --- all checks first -------------------------------------------------------------
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"--out {args.out!r} must end in one of {list(IMAGE_SUFFIXES)}, e.g. panorama.png")
    path, scale, native, kind = read_model_configs(args.model, args.checkpoint_config)
    # A hub id has no local config: validate with 512 px, but let the loaded pipeline pick its own
    # native window at run time (FLUX: 1024) instead of forcing 512.
    run_window = args.window or native
    window = run_window or 512
    check_model_sizes(path, args.height, args.width, window, scale)  # SD3 / FLUX: 16 px multiples, before loading
    if args.scheduler:  # the family from the config on disk; a hub id is checked once loaded (set_scheduler)
        check_scheduler_fits(args.scheduler, kind, field="--scheduler",
                             family_known=Path(path).exists())
    kparams = _kernel_params(args.kernel_param)
    mparams = _kernel_params(args.method_param, "--method-param", "sync_steps=10")
    # the generation keywords, for the check here and for the call below
    call = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                overlap=args.overlap, kernel=args.kernel, kernel_params=kparams, method=args.method, method_params=mparams,
                num_inference_steps=args.steps, guidance_scale=args.guidance, circular=args.circular,
                view_batch_size=args.view_batch_size, output_type="pil")
    prepare_call(**call, window=window, scale=scale)
    state = out.with_name(out.name + ".state")  # the canvas state: a killed run resumes from it
    if args.state_every < 0:
        raise ConfigError(f"--state-every must be >= 0 (0: no state file), got {args.state_every}")
    if args.preview_every < 0:
        raise ConfigError(f"--preview-every must be >= 0 (0: no previews), got {args.preview_every}")
    if args.fresh:
        state.unlink(missing_ok=True)
    resume = state if args.state_every and state.is_file() else None
    if resume is not None:
        ResumeState(resume)  # a corrupt file fails here, before loading (delete it or pass --fresh)
        print(f"resuming from {resume} (pass --fresh to start over)")
    shard = None
    if args.distributed:  # torchrun: every rank loads the model and runs its share of the views
        from .distributed import init, rank_device

        shard = init()
        args.device = args.device or str(rank_device(shard))
    lead = shard is None or shard.rank == 0  # rank 0 writes the image, the record, the state and the previews
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    # --- load and run -----------------------------------------------------------------------
    extra = {"config": args.checkpoint_config} if args.checkpoint_config else {}
    md = MultiDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, device=device, **extra)
    if args.scheduler:
        md.set_scheduler(args.scheduler)
    if shard is not None:
        md.enable_distributed(shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = md(**call, window=run_window, generator=torch.Generator("cpu").manual_seed(args.seed),
             state_path=state if args.state_every and lead else None, state_every=max(1, args.state_every),
             resume=resume, preview=out.with_name(out.stem + ".preview.png") if args.preview_every and lead else None,
             preview_every=max(1, args.preview_every), progress=lead)
    if not lead:
        return 0
    res.images[0].save(out)
    rec_path = out.with_suffix(".json")
    rec = res.record.to_dict()
    rec["args"] = vars(args) | {"window": list(res.plan.window), "func": None}  # the window used (px)
    rec_path.write_text(json.dumps(rec, indent=1, default=str))
    state.unlink(missing_ok=True)  # finished: nothing to resume
    p = res.plan
    cost = res.record.extra["cost"]
    print(f"wrote {out} ({p.width}x{p.height}, method {args.method}, {p.n_views} views, redundancy {p.redundancy:.2f}, "
          f"{res.record.counts['model_evaluations']} model evaluations = {cost['unet_equivalents']:.0f} UNet-forward "
          f"equivalents, {res.record.phases['total'].seconds:.1f} s) and its record {rec_path}")
    return 0


def _scale_arg(v: str) -> Any:
    """--scale 4, 2.5 or HxW pixels (e.g. 512x1024)."""
    if "x" in v:
        h, _, w = v.partition("x")
        try:
            return (int(h), int(w))
        except ValueError:
            raise ConfigError(f"--scale {v!r} must be a factor (2, 4, 2.5) or HEIGHTxWIDTH pixels, e.g. 512x1024") from None
    try:
        f = float(v)
    except ValueError:
        raise ConfigError(f"--scale {v!r} must be a factor (2, 4, 2.5) or HEIGHTxWIDTH pixels, e.g. 512x1024") from None
    return int(f) if f.is_integer() else f


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _option_value(v: str, flag: str, item: str) -> Any:
    """One VALUE of KEY=VALUE, read without eval: true/false -> bool, none/null -> None, integers,
    finite decimals (1.5, 1e-3), a JSON list; anything else stays a string ('global')."""
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.fullmatch(v.strip()):
        return int(v)
    if _FLOAT.fullmatch(v.strip()):
        return float(v)
    if v.strip().startswith("["):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            raise ConfigError(f"{flag} {item!r}: {v!r} is not a JSON list, e.g. [1, 2]") from None
    return v


def parse_model_options(items: list[str], flag: str = "--model-option") -> dict[str, Any]:
    """The repeatable `--model-option KEY=VALUE` items as md.upscale's `model_options` (None when
    none are given); the key must be one of mdtools.models.MODEL_OPTIONS, each at most once."""
    from .models import MODEL_OPTIONS

    out: dict[str, Any] = {}
    for item in items:
        key, eq, v = item.partition("=")
        key = key.strip()
        if not eq or not key or not v.strip():
            raise ConfigError(f"{flag} {item!r} must look like KEY=VALUE, e.g. true_cfg_scale=4.0")
        if key not in MODEL_OPTIONS:
            raise ConfigError(f"{flag} {item!r}: {key!r} is not a model option; valid: {sorted(MODEL_OPTIONS)}")
        if key in out:
            raise ConfigError(f"{flag} {key} is given twice; give each key once")
        out[key] = _option_value(v, flag, item)
    return out


def cmd_upscale(args: argparse.Namespace) -> int:
    import torch

    from .models import DTYPES, FAMILIES, FLOW_KINDS, model_options
    from .models.families import check_flow_call
    from .pipeline import MultiDiffusionPipeline
    from .sweep.config import read_model_configs
    from .upscale import DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_STRENGTH, NOISE_INVERSION_DEFAULTS, check_upscale

    # --- all checks first -------------------------------------------------------------
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"--out {args.out!r} must end in one of {list(IMAGE_SUFFIXES)}, e.g. upscaled.png")
    inv: Any = None
    flags = {k: ("inversion_steps" if k == "steps" else k) for k in NOISE_INVERSION_DEFAULTS}
    given = {k: getattr(args, a) for k, a in flags.items() if getattr(args, a) is not None}
    if args.noise_inversion or given:
        inv = given or True
    if args.control_image is not None and args.controlnet is None:
        raise ConfigError("--control-image needs --controlnet (e.g. --controlnet toy-scenes-tile)")
    model_opts = parse_model_options(args.model_option)
    path, vsf, native, kind = read_model_configs(args.model)
    settings = dict(scale=_scale_arg(args.scale), method=args.method,
                    strength=DEFAULT_STRENGTH if args.strength is None else args.strength,
                    method_params=_kernel_params(args.method_param, "--method-param", "seam_fix_mode='band_pass'"),
                    prompt=args.prompt, negative_prompt=args.negative_prompt, upscaler=args.upscaler,
                    color_fix=args.color_fix, color_fix_tiles=args.color_fix_tiles, noise_inversion=inv,
                    steps=DEFAULT_STEPS if args.steps is None else args.steps,
                    guidance_scale=DEFAULT_GUIDANCE if args.guidance is None else args.guidance, window=args.window,
                    overlap=args.overlap)
    chk = check_upscale(args.image, **settings, vae_scale_factor=vsf,
                        size_multiple=vsf * (2 if kind in FLOW_KINDS else 1), native_window=native or 512)
    if model_opts:
        if chk.image_space:
            raise ConfigError(f"--model-option goes to the latent img2img; method {args.method!r} runs its own per-tile "
                              "img2img without it: drop --model-option or use a latent method such as mixture")
        try:  # the values' model-free checks: the flow families' (FLUX, SD3), else max_sequence_length's
            opts = model_options(model_opts)
            if kind in FLOW_KINDS:
                check_flow_call(FAMILIES[kind].patch, *chk.canvas, None, vsf, opts)
            elif opts["max_sequence_length"] is not None:
                check_positive_int("max_sequence_length", opts["max_sequence_length"], example=120)
        except ConfigError as e:
            raise ConfigError(f"--model-option {e}") from None
    control: dict[str, Any] = {}
    if args.controlnet is not None:
        from .toy import EMBEDDED_CONTROLNETS
        from .upscale import load_image

        if args.controlnet not in EMBEDDED_CONTROLNETS and not (Path(args.controlnet) / "config.json").is_file():
            raise ConfigError(f"--controlnet {args.controlnet!r} is neither an embedded name "
                              f"({sorted(EMBEDDED_CONTROLNETS)}) nor a diffusers ControlNet folder with config.json")
        if args.control_image is not None:
            hw = tuple(load_image(args.control_image, name="control_image")[0].shape[-2:])
            if hw not in (tuple(chk.canvas), tuple(chk.source.shape[-2:])):
                raise ConfigError(f"--control-image is {hw[1]}x{hw[0]} px (width x height); it must match the source "
                                  f"({chk.source.shape[-1]}x{chk.source.shape[-2]}) or the canvas "
                                  f"({chk.canvas[1]}x{chk.canvas[0]})")
        control = dict(controlnet=args.controlnet, control_image=args.control_image,
                       controlnet_conditioning_scale=args.controlnet_scale)
    for note in chk.notes:
        print(f"note: {note}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # --- load and run -----------------------------------------------------------------------
    md = MultiDiffusionPipeline.from_pretrained(args.model, torch_dtype=DTYPES[args.dtype], device=device)
    res = md.upscale(args.image, **settings, **control, seed=args.seed, progress=True, model_options=model_opts or None)
    out.parent.mkdir(parents=True, exist_ok=True)
    res.image.save(out)
    rec_path = out.with_suffix(".json")
    rec = dict(res.record, args={k: v for k, v in vars(args).items() if k != "func"})
    rec_path.write_text(json.dumps(rec, indent=1, default=str))
    ph = res.record["phases"]
    times = ", ".join(f"{k} {ph[k]['seconds']:.1f} s" for k in ("encode", "invert", "denoise", "decode", "color_fix")
                      if k in ph)
    h, w = chk.canvas
    print(f"wrote {out} ({chk.source.shape[-1]}x{chk.source.shape[-2]} -> {w}x{h}, method {args.method}, strength "
          f"{chk.strength}, {res.record['counts'].get('model_evaluations', 0)} model evaluations; {times}; total "
          f"{ph['total']['seconds']:.1f} s) and its record {rec_path}")
    return 0


def cmd_train_toy(args: argparse.Namespace, rest: list[str]) -> int:
    from .toy.train import main as train_main

    return train_main(rest)


def cmd_train_toy_controlnet(args: argparse.Namespace, rest: list[str]) -> int:
    from .toy.train_controlnet import main as train_main

    return train_main(rest)


def cmd_run(args: argparse.Namespace) -> int:
    from .sweep import execute, load_experiment, make_executor

    exp = load_experiment(args.experiment)  # every run validated before anything loads
    out = Path(args.out) if args.out else Path("results") / exp.name
    executor = make_executor(args.executor, address=args.address, gpus_per_run=args.gpus_per_run,
                             cpus_per_run=args.cpus_per_run, max_concurrent=args.max_concurrent, retries=args.retries)
    df = execute(exp, out, max_runs=args.max_runs, dry_run=args.dry_run, retry_failed=args.retry_failed,
                 executor=executor)
    if not args.dry_run:
        n_ok = int((df["status"] == "ok").sum()) if len(df) else 0
        print(f"{n_ok}/{len(df)} runs ok; table: {out / 'runs.parquet'}; records: {out / 'runs'}/; "
              f"next: mdtools report {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from .analysis.report import report

    summary, plots = report(args.results, make_plots=not args.no_plots)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(summary.to_string(index=False))
    print(f"summary: {Path(args.results) / 'summary.csv'}")
    for p in plots:
        print(f"plot: {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(experiment=args.experiment, out=args.out)


def cmd_comfy_install(args: argparse.Namespace) -> int:
    from .comfy.install import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mdtools", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate one canvas with MultiDiffusion")
    g.add_argument("--model", default="toy",
                   help="'toy' (embedded), 'arch:<preset>', a diffusers folder, a hub id or a checkpoint file")
    g.add_argument("--checkpoint-config", default=None,
                   help="for a single checkpoint file: 'arch:<preset>' (e.g. arch:sd21-768) or a diffusers config "
                        "folder, instead of the architecture detected from the file")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--height", type=int, default=512, help="pixels")
    g.add_argument("--width", type=int, default=2048, help="pixels")
    g.add_argument("--window", type=int, default=None, help="pixels; default: the model's native size")
    g.add_argument("--overlap", type=int, default=64, help="minimum overlap between windows, pixels")
    g.add_argument("--kernel", default=None, help="uniform, gaussian (default), cosine, linear, seed_gaussian, mixture")
    g.add_argument("--kernel-param", action="append", default=[], metavar="NAME=VALUE", help="e.g. sigma=0.1")
    g.add_argument("--method", default="multidiffusion",
                   help="multidiffusion (default), mixture, syncdiffusion, spotdiffusion, global_pass, demofusion")
    g.add_argument("--method-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the method, e.g. sync_steps=10 or shifts='[[0, 0], [0, 8]]' (JSON values)")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scheduler", default=None, help="e.g. ddim, euler, dpmpp_2m, unipc or a diffusers class name")
    g.add_argument("--circular", type=_circular, default=False, help="false, x, y or both")
    g.add_argument("--view-batch-size", type=int, default=4)
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES))
    g.add_argument("--out", required=True, help="image path (.png/.jpg/.webp); the record goes next to it as .json")
    g.add_argument("--state-every", type=int, default=1, metavar="K",
                   help="save the canvas state to <out>.state every K steps and on Ctrl-C; a run started again with "
                        "the same arguments resumes from it (0: off; default 1)")
    g.add_argument("--fresh", action="store_true", help="ignore (and delete) a state file left by an interrupted run")
    g.add_argument("--distributed", action="store_true",
                   help="one canvas on the ranks of a torchrun group: torchrun --nproc-per-node N -m mdtools generate "
                        "... --distributed (gloo on CPU, NCCL on GPUs; docs/multi-device.md)")
    g.add_argument("--preview-every", type=int, default=0, metavar="K",
                   help="write a cheap RGB preview of the canvas to <out stem>.preview.png every K steps (0: off)")
    g.set_defaults(func=cmd_generate)

    u = sub.add_parser("upscale", help="upscale an image in tiles (img2img with MultiDiffusion-style fusion; docs/upscale.md)")
    u.add_argument("image", help="the image to upscale (.png/.jpg/.webp; RGBA, grey, 16-bit and palette are converted)")
    u.add_argument("--scale", default="2", help="factor (2, 4, 2.5) or HEIGHTxWIDTH pixels (default 2)")
    u.add_argument("--out", required=True, help="image path (.png/.jpg/.webp); the record goes next to it as .json")
    u.add_argument("--model", default="toy-scenes",
                   help="'toy-scenes' (embedded, default), 'toy', 'arch:<preset>', a diffusers folder or a hub id")
    u.add_argument("--prompt", default="", help="the text prompt (default empty)")
    u.add_argument("--negative-prompt", default=None)
    u.add_argument("--strength", type=float, default=None, help="denoising strength in (0, 1] (default 0.35)")
    u.add_argument("--method", default="multidiffusion",
                   help="any method with img2img (multidiffusion, mixture, ...) or an image-space one (usdu, naive_tiles)")
    u.add_argument("--method-param", action="append", default=[], metavar="NAME=VALUE", help="a parameter of the method")
    u.add_argument("--upscaler", default="lanczos", help="lanczos (default) or bicubic")
    u.add_argument("--controlnet", default=None, help="a ControlNet: 'toy-scenes-tile' (embedded) or a folder")
    u.add_argument("--control-image", default=None,
                   help="the control image (source or canvas size); default with --controlnet: the resized source")
    u.add_argument("--controlnet-scale", type=float, default=1.0, help="controlnet_conditioning_scale (default 1)")
    u.add_argument("--color-fix", default=None, help="wavelet or adain (StableSR's); default none")
    u.add_argument("--color-fix-tiles", action="store_true", help="apply the colour fix per view instead of the whole image")
    u.add_argument("--noise-inversion", action="store_true",
                   help="A1111 Tiled Diffusion's noise inversion (defaults: 10 steps, retouch 1, renoise 1, kernel 64)")
    u.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; strength x steps run)")
    u.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 7)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--window", type=int, default=None, help="pixels; default: the model's native size")
    u.add_argument("--overlap", type=int, default=None, help="pixels; default 8 latent px (64 for SD), at most half the window")
    u.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model kind's option for the latent img2img (md.upscale's model_options; repeatable), e.g. "
                        "true_cfg_scale=4.0, positions=global, sdxl_view_crops=true (values: numbers, true/false, "
                        "none, a JSON list, else text)")
    u.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    u.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES))
    for key, kind, hint in (("steps", int, "inversion steps (default 10)"), ("retouch", float, "default 1"),
                            ("renoise_strength", float, "default 1"), ("renoise_kernel", int, "pixels (default 64)")):
        flag = "--inversion-steps" if key == "steps" else "--" + key.replace("_", "-")
        u.add_argument(flag, dest=key if key != "steps" else "inversion_steps", type=kind, default=None,
                       help=f"noise inversion: {hint}; implies --noise-inversion")
    u.set_defaults(func=cmd_upscale)

    r = sub.add_parser("run", help="run an experiment file (resumable; finished runs are skipped)")
    r.add_argument("experiment", help="experiments/NAME.yaml")
    r.add_argument("--out", default=None, help="output folder (default results/NAME)")
    r.add_argument("--max-runs", type=int, default=None, help="run at most N unfinished runs")
    r.add_argument("--dry-run", action="store_true", help="print the plan and time estimate, run nothing")
    r.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    r.add_argument("--executor", default="local", help="local (default: this process) or ray (docs/scale-out.md)")
    r.add_argument("--address", default=None,
                   help="ray: the cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    r.add_argument("--gpus-per-run", type=float, default=None,
                   help="ray: GPUs per worker, e.g. 1 or 0.5 (default: 1 if the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-run", type=float, default=None, help="ray: CPUs per worker (default 1)")
    r.add_argument("--max-concurrent", type=int, default=None, help="ray: at most N workers (default: as many as fit)")
    r.add_argument("--retries", type=int, default=None,
                   help="ray: retries of a run whose worker died, then a failure row (default 2)")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="summary table and plots of an experiment's results")
    p.add_argument("results", help="results/NAME")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the quickstart: naive tiles vs uniform vs gaussian overlap on the toy model")
    d.add_argument("--experiment", default="experiments/quickstart.yaml")
    d.add_argument("--out", default="results/demo/quickstart")
    d.set_defaults(func=cmd_demo)

    from .comfy.install import add_arguments as comfy_install_arguments

    ci = sub.add_parser("comfy-install", help="link the ComfyUI node pack into ComfyUI's custom_nodes/ (docs/comfyui.md)")
    comfy_install_arguments(ci)
    ci.set_defaults(func=cmd_comfy_install)

    t = sub.add_parser("train-toy", help="train the embedded toy model (see mdtools/assets/toy-sd/MODEL_CARD.md)",
                       add_help=False)
    t.set_defaults(func=cmd_train_toy, passthrough=True)

    tc = sub.add_parser("train-toy-controlnet", add_help=False,
                        help="train the embedded tile ControlNet (mdtools/assets/toy-scenes-tile/MODEL_CARD.md)")
    tc.set_defaults(func=cmd_train_toy_controlnet, passthrough=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    try:
        if getattr(args, "passthrough", False):
            return args.func(args, rest)
        if rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except ConfigError as e:
        print(f"mdtools {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
