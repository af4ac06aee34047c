"""Cost and memory of the REAL architectures (mdtools.models.arch presets, random weights).

Per preset, canvas size and phase (denoise, full decode, tiled decode): the UNet/transformer
forward time per view, the measured peak memory (CPU: VmHWM high-water mark, reset per
phase, and the RSS before the phase, i.e. weights; CUDA: allocated and reserved), and the
model-evaluation counts. Cost and memory do not depend on trained weights, so random weights
of the exact architecture measure them honestly. Text encoders are the stand-ins (same
output shapes), so prompt encoding is not what is measured here.

Sizes that do not fit the machine are EXTRAPOLATED, in rows marked `kind=extrapolated` with
their `basis`: denoise time = measured seconds per view forward x the plan's view count;
decode peak above the weights = a linear fit in pixels of the measured decodes (a full decode's
activations grow with the canvas area). Every timing row carries os.getloadavg() (shared CPU).

    python benchmarks/real_arch.py                      # CPU: SD 2.1 and SDXL, sizes that fit (~30 min, loaded CPU)
    python benchmarks/real_arch.py --device cuda --dtype float16 --presets sd21 --sizes "sd21=512,1024,2048" \
        --full-decode "sd21=2048,8192" --tiled-decode "sd21=8192" --park-budget-gb 48 --out results/bench/gpu_x.csv
    python benchmarks/real_arch.py ... --check          # validate, print each tiled decode's schedule; build nothing
    python benchmarks/real_arch.py --depth-probe "sd3=1024;flux=1024" --out results/bench/real_arch_dit.csv
        # SD3 / FLUX too large for this machine: depth-reduced transformers, full models extrapolated (~5 min)

benchmarks/gpu_suite.sh runs it on a lent GPU. Arguments are checked against the presets
before anything is built (a size for a preset not in --presets is an error, not skipped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdtools import MultiDiffusionPipeline  # noqa: E402
from mdtools.errors import ConfigError, check_multiple  # noqa: E402
from mdtools.instrument import Recorder, _read_status_kib  # noqa: E402
from mdtools.plan import plan_views  # noqa: E402
from mdtools.vae import malloc_trim  # noqa: E402

GB = 2**30
# CPU defaults: what fits 2 shared cores and 24 GB in ~20 minutes (1 step, CFG on as in real use)
CPU_SIZES = {"sd21": [512], "sdxl": [1024]}
CPU_FULL_DECODE = {"sd21": [512, 1024], "sdxl": [1024]}
CPU_TILED_DECODE = {"sd21": [1024, 1536], "sdxl": []}
EXTRAPOLATE = {"sd21": [2048, 4096, 8192], "sdxl": [2048, 4096, 8192], "sd3": [2048, 4096, 8192],
               "flux": [2048, 4096, 8192], "flux-schnell": [2048, 4096, 8192]}
GUIDANCE = {"flux": 3.5, "flux-schnell": 0.0}
#: the defaults of each size flag: they name presets a run may not include (those are skipped, not errors)
_DEFAULTS = {"--sizes": CPU_SIZES, "--full-decode": CPU_FULL_DECODE, "--tiled-decode": CPU_TILED_DECODE,
             "--extrapolate": EXTRAPOLATE}


def _rss_gb() -> float:
    kib = _read_status_kib("VmRSS:")
    return float("nan") if kib is None else kib * 1024 / GB


def _before_gb(device: torch.device) -> float:
    """Memory held before a phase (the weights): CUDA allocated on a GPU, else the process RSS."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device) / GB
    return _rss_gb()


def _peaks(p: Any, before: float) -> dict[str, Any]:
    """Peak columns of a recorder phase; peak_above_weights_gb = peak - what the phase started with."""
    row: dict[str, Any] = {"mem_before_gb": before}
    if p.peak_allocated is not None:
        row |= {"cuda_allocated_gb": p.peak_allocated / GB, "cuda_reserved_gb": (p.peak_reserved or 0) / GB,
                "peak_above_weights_gb": p.peak_allocated / GB - before}
    elif p.peak_rss is not None:
        row |= {"peak_rss_gb": p.peak_rss / GB, "peak_above_weights_gb": p.peak_rss / GB - before}
    return row


def _sizes(spec: str | None, default: dict[str, list[int]], flag: str = "--sizes") -> dict[str, list[int]]:
    """'sd21=512,1024;sdxl=1024' -> {'sd21': [512, 1024], 'sdxl': [1024]} ('sd21=': none);
    ConfigError naming `flag` for anything else."""
    if not spec:
        return default
    out: dict[str, list[int]] = {}
    for part in spec.split(";"):
        name, eq, vals = part.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError
            out[name.strip()] = [int(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{flag}={spec!r}: {part!r} is not <preset>=<sides>; use e.g. "
                              f"{flag} 'sd21=512,1024;sdxl=1024' (or 'sd21=' for none)") from None
    return out


def _base(md: Any, preset: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"preset": preset, "device": str(md.device), "dtype": args.dtype, "random_weights": True,
            "text_encoders": "stand-in", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def denoise_row(md: Any, preset: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    window = md.native_window
    before = _before_gb(md.device)
    out = md("a photo of the dolomites", height=size, width=size, window=window, overlap=window // 8,
             num_inference_steps=args.steps, guidance_scale=GUIDANCE.get(preset, 7.5), generator=0,
             output_type="latent", view_batch_size=1, progress=False)
    rec = out.record
    fwd = rec.phases["model_forward"]
    row = _base(md, preset, args) | {
        "size_px": size, "phase": "denoise", "kind": "measured", "basis": "", "steps": args.steps,
        "views": out.plan.n_views, "window_px": window, "model_evaluations": rec.counts["model_evaluations"],
        "forward_calls": fwd.calls, "per_view_forward_s": fwd.seconds / max(1, fwd.calls),
        "seconds": rec.phases["denoise"].seconds, "loadavg_1m": os.getloadavg()[0],
    }
    return row | _peaks(rec.phases["denoise"], before)


def decode_row(md: Any, preset: str, size: int, tiled: bool, args: argparse.Namespace) -> dict[str, Any]:
    scale = md.vae_scale_factor
    lat = torch.randn(1, md.vae.config.latent_channels, size // scale, size // scale,
                      generator=torch.Generator().manual_seed(0)).to(md.device, md.dtype)
    plan = plan_views(size, size, window=min(size, md.native_window), overlap=0, scale=scale)
    opts = md.vae_tiling_options({"tiling": True, "park_budget_bytes": int(args.park_budget_gb * GB)}, plan) \
        if tiled else None
    gc.collect()
    before = _before_gb(md.device)
    rec = Recorder(md.device, dtype=md.dtype)
    report: dict[str, Any] = {}
    with torch.no_grad(), rec.phase("decode"):
        img = md.decode(lat, tiling=opts, report=report)
    del img
    name = "decode_tiled" if tiled else "decode_full"
    return _base(md, preset, args) | {"size_px": size, "phase": name, "kind": "measured",
                                      "basis": f"tile {opts['tile']} px, halo {report.get('halo_px')} px, "
                                               f"strategy {report.get('strategy', opts['sync_strategy'])}, park budget "
                                               f"{args.park_budget_gb:g} GiB" if tiled else "",
                                      "parked_gb": report.get("parked_peak_bytes", 0) / GB if tiled else None,
                                      "seconds": rec.record.phases["decode"].seconds,
                                      "loadavg_1m": os.getloadavg()[0]} | _peaks(rec.record.phases["decode"], before)


def attempt(fn: Any, base: dict[str, Any], phase: str, size: int, *a: Any) -> dict[str, Any]:
    """fn(*a)'s row with status 'ok'; else an 'oom' row (a full decode that does not fit is a
    result, not a crash) or an 'error' row with the message's first line (e.g. a kernel's size
    limit on a huge canvas), so that the next sizes still run."""
    try:
        return fn(*a) | {"status": "ok"}
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as e:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        status = "oom" if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) else "error"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return base | {"size_px": size, "phase": phase, "kind": "measured", "status": status, "basis": first,
                       "loadavg_1m": os.getloadavg()[0]}


def _tiled_estimate(vae: Any, size: int, budget_gb: float, park_dtype: str | None = None) -> dict[str, Any]:
    """schedule_estimate of the exact tiled decode at `size` px with the benchmark's budget
    (`park_dtype`: the parked states' dtype where the VAE's own is not the run's)."""
    from mdtools.pipeline import VAE_TILE_PX
    from mdtools.vae import schedule_estimate

    return schedule_estimate(vae, (size // 8, size // 8), tile=VAE_TILE_PX, sync_strategy="auto",
                             park_budget_bytes=int(budget_gb * GB), park_dtype=park_dtype)


def extrapolate(rows: list[dict[str, Any]], preset: str, sizes: list[int], window: int, steps: int,
                base: dict[str, Any], vae: Any = None, budget_gb: float = 4.0) -> list[dict[str, Any]]:
    """Rows for sizes not run, from the measured ones (named as extrapolated, with their basis).

    Full decodes: peak linear in area. Exact tiled decodes (`vae` given): the measured peak
    at the largest size, less what `schedule_estimate` says that run held (parked states,
    canvas keys / values) and its output, plus what it says the larger canvas holds under the
    same park budget and its output; time scaled by the estimated multiply-adds."""
    out = []
    den = [r for r in rows if r["preset"] == preset and r["phase"] == "denoise" and r["kind"] == "measured"
           and r.get("status") == "ok"]
    for size in sizes:
        if den and not any(r["size_px"] == size for r in den):
            ref = max(den, key=lambda r: r["size_px"])  # the largest canvas measured: the most views averaged
            views = plan_views(size, size, window=window, overlap=window // 8, scale=8).n_views
            out.append(base | {"size_px": size, "phase": "denoise", "kind": "extrapolated", "steps": steps, "views": views,
                               "per_view_forward_s": ref["per_view_forward_s"],
                               "seconds": ref["per_view_forward_s"] * views * steps,
                               "model_evaluations": ref["model_evaluations"] / ref["views"] * views,
                               "basis": f"{views} views x {ref['per_view_forward_s']:.2f} s per view forward measured at "
                                        f"{ref['size_px']} px; fusion and scheduler time left out"})
        for phase in ("decode_full", "decode_tiled"):
            meas = sorted((r for r in rows if r["preset"] == preset and r["phase"] == phase and r["kind"] == "measured"
                           and r.get("status") == "ok" and r.get("peak_above_weights_gb") == r.get("peak_above_weights_gb")),
                          key=lambda r: r["size_px"])
            if not meas or any(r["size_px"] == size for r in meas):
                continue
            px = np.array([r["size_px"] ** 2 for r in meas], dtype=float)
            mem = np.array([r["peak_above_weights_gb"] for r in meas])
            sec = np.array([r["seconds"] for r in meas])
            t = sec[-1] * size**2 / px[-1]
            time_how = f"time linear in area from {meas[-1]['size_px']} px"
            if phase == "decode_tiled":
                if vae is None:
                    continue
                at, to = _tiled_estimate(vae, int(meas[-1]["size_px"]), budget_gb), _tiled_estimate(vae, size, budget_gb)
                working = mem[-1] - (at["held_peak_bytes"] + at["output_bytes"]) / GB
                m = working + (to["held_peak_bytes"] + to["output_bytes"]) / GB
                t = sec[-1] * to["macs"] / at["macs"]
                how = (f"measured peak at {meas[-1]['size_px']} px less its estimated parked states, keys and output "
                       f"({working:.2f} GB of tile working set left), plus those estimated here: {to['strategy']} under "
                       f"a {budget_gb:g} GiB park budget, {to['held_peak_bytes'] / GB:.2f} GB held, output "
                       f"{to['output_bytes'] / GB:.2f} GB (schedule_estimate)")
                time_how = f"time x {to['macs'] / at['macs']:.1f} estimated multiply-adds from {meas[-1]['size_px']} px"
            else:
                m = (np.polyval(np.polyfit(px, mem, 1), size**2) if len(meas) >= 2 else mem[-1] * size**2 / px[-1])
                how = f"linear in area from full decodes at {', '.join(str(r['size_px']) for r in meas)} px"
            out.append(base | {"size_px": size, "phase": phase, "kind": "extrapolated", "peak_above_weights_gb": float(m),
                               "seconds": float(t), "basis": how + f"; {time_how}"})
    return out


def _preset_vae(preset: str) -> Any:
    """The preset's AutoencoderKL with random weights (for schedule_estimate: only its layout counts)."""
    import json

    from diffusers import AutoencoderKL

    from mdtools.models.arch import _component_dir, preset_dir

    cfg = json.loads((_component_dir(preset_dir("arch:" + preset), "vae") / "config.json").read_text())
    return AutoencoderKL.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})


def merge(args: argparse.Namespace) -> int:
    """Measured rows of several runs -> one table with fresh extrapolations (windows: the presets' native sizes)."""
    from mdtools.pipeline import read_native_window, resolve_model_path

    meas = pd.concat([pd.read_csv(f) for f in args.merge], ignore_index=True)
    if (meas.get("phase") == "denoise_depth_probe").any():
        print("real_arch: --merge re-extrapolates whole-model runs only; rerun --depth-probe for SD3 / FLUX "
              "(its table is complete as written)", file=sys.stderr)
        return 2
    meas = meas[meas["kind"] == "measured"]
    rows = meas.to_dict("records")
    extra = _sizes(args.extrapolate, EXTRAPOLATE, "--extrapolate")
    for preset, g in meas.groupby("preset", sort=False):
        first = g.iloc[0]
        base = {k: first[k] for k in ("preset", "device", "dtype", "random_weights", "text_encoders", "date")}
        steps = int(g["steps"].dropna().iloc[0]) if g["steps"].notna().any() else 1
        window = read_native_window(resolve_model_path("arch:" + preset), 8) or 512
        rows.extend(extrapolate(rows, preset, extra.get(preset, []), window, steps, base, vae=_preset_vae(preset),
                                budget_gb=args.park_budget_gb))
    out = Path(args.out)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out} ({len(rows)} rows: {len(meas)} measured)")
    return 0


#: presets whose canvases are multiples of 16 px (8 px VAE x 2x2 transformer patches)
_DIT = ("sd3", "flux", "flux-schnell")

#: --depth-probe: the depth-reduced transformers measured per DiT preset (config overrides).
#: SD3: its last block is context-pre-only at every depth (diffusers' SD3Transformer2DModel),
#: so t = a + b * num_layers exactly; FLUX: double and single blocks, t = a + b *
#: num_layers + c * num_single_layers. Depths spread as far as this machine's memory allows
#: (the extrapolation's lever arm), and configurations beyond the unknowns give the fit a
#: residual and a standard error.
DEPTH_PROBES: dict[str, list[dict[str, int]]] = {
    "sd3": [{"num_layers": n} for n in (1, 4, 8)],
    "flux": [{"num_layers": d, "num_single_layers": s} for d, s in ((1, 1), (4, 1), (1, 8), (4, 8), (2, 4))],
}
DEPTH_PROBES["flux-schnell"] = DEPTH_PROBES["flux"]


def depth_fit(points: list[tuple[dict[str, int], float]], full: dict[str, int]) -> dict[str, Any]:
    """Least squares t = a + sum_k b_k * blocks_k through (block counts, seconds) points.

    Returns the prediction at the `full` block counts (`t`), the largest absolute residual
    (`residual`), the residual degrees of freedom (`dof`) and the prediction's standard
    error from the fit's covariance (`se`: sqrt(x0' (X'X)^-1 x0 * RSS / dof); None without
    spare points). With few points it says how well the line fits, not a calibrated interval."""
    keys = sorted(full)
    X = np.array([[1.0] + [float(c[k]) for k in keys] for c, _ in points])
    y = np.array([t for _, t in points])
    if np.linalg.matrix_rank(X) < len(keys) + 1:
        raise ValueError(f"depth probes {[c for c, _ in points]} do not determine {keys}")
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    x0 = np.array([1.0] + [float(full[k]) for k in keys])
    res = X @ coef - y
    dof = len(points) - len(coef)
    se = float(np.sqrt(x0 @ np.linalg.inv(X.T @ X) @ x0 * (res @ res) / dof)) if dof > 0 else None
    return {"t": float(x0 @ coef), "residual": float(np.max(np.abs(res))), "dof": dof, "se": se}


def depth_probe(preset: str, size: int, sizes: list[int], args: argparse.Namespace,
                flush: Any = lambda rows: None) -> list[dict[str, Any]]:
    """A DiT preset too large for this machine, measured through depth-reduced copies of its
    transformer (DEPTH_PROBES; the rest of the pipeline as the preset) at `size` px, one view.

    Rows: each probe (kind measured, phase denoise_depth_probe; `flush(rows)` after each),
    then the full model at `size` and at `sizes` (kind extrapolated): per-view forward time
    from the linear fit in the block counts (`depth_fit`), with its standard error; memory:
    `weights_gb`, the full transformer's parameters x bytes (exact), and
    `peak_above_weights_gb`, the largest activation peak measured above the weights. At
    inference a block's activations are freed once the next block has run, so that peak does
    not grow with depth; the rows of the probes show it."""
    import json

    from mdtools.models.arch import build_from_folder, count_parameters, preset_dir

    folder = preset_dir("arch:" + preset)
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    full = {k: int(cfg[k]) for k in DEPTH_PROBES[preset][0]}
    dtype = getattr(torch, args.dtype)
    rows: list[dict[str, Any]] = []
    points: list[tuple[dict[str, int], float]] = []
    peaks: list[float] = []
    base: dict[str, Any] = {}
    window, evals = 1024, 0.0
    for over in DEPTH_PROBES[preset]:
        what = "transformer with " + ", ".join(f"{k}={v}" for k, v in over.items())

        def build() -> dict[str, Any]:
            pipe, info = build_from_folder(folder, seed=0, torch_dtype=dtype, device=args.device,
                                           overrides={"transformer": over})
            return {"md": MultiDiffusionPipeline(pipe, info=info)}

        built = attempt(build, {"preset": preset}, "denoise_depth_probe", size)
        if built["status"] != "ok":
            rows.append(built | {"basis": f"{what}: {built['basis']}"})
            flush(rows)
            continue
        md = built["md"]
        base = _base(md, preset, args)
        runs = []
        for _ in range(2):  # the first forward of a fresh model also pays one-off set-up
            gc.collect()
            malloc_trim()  # so that the RSS before the run (the "weights") holds no freed heap
            runs.append(attempt(denoise_row, base, "denoise_depth_probe", size, md, preset, size, args))
        ok = [r for r in runs if r["status"] == "ok"]
        row = dict(min(ok, key=lambda r: r["per_view_forward_s"]) if ok else runs[-1])
        if ok:  # time: the faster run; memory: the larger peak (the conservative one)
            row["peak_above_weights_gb"] = max(r["peak_above_weights_gb"] for r in ok)
        row |= {"phase": "denoise_depth_probe", "basis": what + (f": {row['basis']}" if row.get("basis") else "")}
        rows.append(row)
        flush(rows)
        print({k: row.get(k) for k in ("preset", "size_px", "basis", "per_view_forward_s", "peak_above_weights_gb",
                                       "status")}, flush=True)
        if row["status"] == "ok":
            points.append((over, row["per_view_forward_s"]))
            peaks.append(row["peak_above_weights_gb"])
            window, evals = md.native_window, row.get("model_evaluations") or 0.0
        del md, built
        gc.collect()
    if len(points) < len(full) + 1:
        print(f"{preset}: {len(points)} of {len(DEPTH_PROBES[preset])} depth probes ran; {len(full) + 1} are needed "
              "for the fit, so the full model is not extrapolated", flush=True)
        return rows
    fit = depth_fit(points, full)
    params = count_parameters("arch:" + preset, ("transformer",))["transformer"]
    weights_gb = params * torch.empty((), dtype=dtype).element_size() / GB
    blocks = ", ".join(f"{k}={v}" for k, v in full.items())
    err = (f"standard error {fit['se']:.1f} s with {fit['dof']} spare point(s), largest residual {fit['residual']:.2f} s"
           if fit["se"] is not None else "an exact fit: no spare point, no error estimate")
    for side in [size] + [s for s in sizes if s != size]:
        views = plan_views(side, side, window=window, overlap=window // 8, scale=8).n_views
        rows.append(base | {
            "size_px": side, "phase": "denoise", "kind": "extrapolated", "status": "ok", "steps": args.steps,
            "views": views, "window_px": window, "per_view_forward_s": fit["t"], "per_view_forward_se_s": fit["se"],
            "seconds": fit["t"] * views * args.steps, "model_evaluations": evals * views, "weights_gb": weights_gb,
            "peak_above_weights_gb": max(peaks),
            "basis": f"full transformer ({blocks}, {params / 1e9:.2f} B parameters): per-view forward from a linear fit "
                     f"in the block counts of {len(points)} depth-reduced copies measured at {size} px (the faster of 2 "
                     f"runs each; {err}); weights_gb: the transformer's, exact (text encoders are stand-ins, not "
                     f"counted); peak_above_weights_gb: the largest activation peak measured above the weights "
                     f"(depth-independent at inference); {views} views x {args.steps} steps"})
    flush(rows)
    return rows


def validate(args: argparse.Namespace, sizes: dict[str, list[int]], full: dict[str, list[int]],
             tiled: dict[str, list[int]], extra: dict[str, list[int]]) -> tuple[list[str], dict[str, list[int]]]:
    """The presets to run and the depth probes (--depth-probe), after checking every argument against them before anything is
    built: ConfigError naming the argument and a valid value otherwise. A size given for a
    preset that is not run would be skipped silently, so it is an error too."""
    from mdtools.models.arch import preset_name

    try:
        presets = [preset_name(p.strip()) for p in args.presets.split(",") if p.strip()]
    except ConfigError as e:
        raise ConfigError(f"--presets: {e}") from None
    probes = _sizes(args.depth_probe, {}, "--depth-probe")
    try:
        probes = {preset_name(k): v for k, v in probes.items()}
    except ConfigError as e:
        raise ConfigError(f"--depth-probe: {e}") from None
    if not presets and not probes:
        raise ConfigError("--presets is empty; use e.g. --presets sd21,sdxl")
    both = sorted(set(presets) & set(probes))
    if both:
        raise ConfigError(f"{', '.join(both)} in both --presets and --depth-probe: the whole model or its depth probe, "
                          "not both in one table (drop it from one of them)")
    for name, sides in probes.items():
        if name not in DEPTH_PROBES:
            raise ConfigError(f"--depth-probe names {name!r}; depth probes exist for {', '.join(DEPTH_PROBES)} "
                              "(UNet presets fit this machine whole)")
        if len(sides) != 1:
            raise ConfigError(f"--depth-probe {name}={','.join(map(str, sides))}: give one size, e.g. {name}=1024 "
                              "(larger canvases: --extrapolate)")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise ConfigError(f"--device={args.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if args.steps < 1:
        raise ConfigError(f"--steps={args.steps} must be >= 1")
    if args.park_budget_gb <= 0:
        raise ConfigError(f"--park-budget-gb={args.park_budget_gb:g} must be > 0 (GiB), e.g. 4")
    for flag, spec in (("--sizes", sizes), ("--full-decode", full), ("--tiled-decode", tiled), ("--extrapolate", extra),
                       ("--depth-probe", probes)):
        runs = presets + list(probes) if flag in ("--extrapolate", "--depth-probe") else presets
        given = spec if spec is not _DEFAULTS.get(flag) else {k: v for k, v in spec.items() if k in runs}
        for name, sides in given.items():
            if name not in runs:
                raise ConfigError(f"{flag} names preset {name!r}, which this run does not measure "
                                  f"({','.join(runs) or 'none'}); add it to --presets"
                                  f"{' or --depth-probe' if flag == '--extrapolate' else ''} or drop it")
            m = 16 if name in _DIT else 8
            for side in sides:
                check_multiple(flag, side, m, what=f"{name}'s patch grid" if m == 16 else f"{name}'s VAE scale")
    return presets, probes


def check(args: argparse.Namespace, presets: list[str], sizes: dict[str, list[int]], full: dict[str, list[int]],
          tiled: dict[str, list[int]], extra: dict[str, list[int]]) -> int:
    """--check: what a run would do, without building a model: per preset the denoise, decode
    and extrapolated sizes, and for each exact tiled decode the schedule it resolves to under
    --park-budget-gb (schedule_estimate: strategy, GiB parked, multiply-adds vs one untiled
    decode). A 'recompute' or 'checkpoint' schedule replays work; raise the budget to park."""
    park_dtype = None if args.dtype == "float32" else args.dtype  # the estimate's VAE is float32
    for p in presets:
        print(f"{p}: denoise {sizes.get(p, [])}, full decode {full.get(p, [])}, tiled decode {tiled.get(p, [])}, "
              f"extrapolate {extra.get(p, [])}")
        if tiled.get(p):
            vae = _preset_vae(p)
            for side in tiled[p]:
                e = _tiled_estimate(vae, side, args.park_budget_gb, park_dtype)
                print(f"  tiled {side} px: {e['strategy']}, {e['parked_peak_bytes'] / GB:.1f} GiB parked "
                      f"({args.dtype}), {e['compute_vs_full']:.2f}x the multiply-adds of an untiled decode, "
                      f"{e['n_tiles']} tiles")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=None, help="presets to build whole (default sd21,sdxl; none with --depth-probe)")
    ap.add_argument("--depth-probe", help="DiT presets measured through depth-reduced transformers, one size each, "
                                          "e.g. 'sd3=1024;flux=1024' (rows of the full model are extrapolated)")
    ap.add_argument("--sizes", help="denoise canvas sides per preset, e.g. 'sd21=512,1024;sdxl=1024'")
    ap.add_argument("--full-decode", help="full-decode sides per preset (same format)")
    ap.add_argument("--tiled-decode", help="tiled-decode sides per preset (same format)")
    ap.add_argument("--extrapolate", help="sides to extrapolate per preset (same format)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--park-budget-gb", type=float, default=4.0,
                    help="park_budget_bytes (GiB) of the exact tiled decodes, measured and extrapolated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--out", default="results/bench/real_arch.csv")
    ap.add_argument("--check", action="store_true",
                    help="validate the arguments and print what would run and each tiled decode's schedule; build nothing")
    ap.add_argument("--merge", nargs="+", metavar="CSV",
                    help="no runs: merge the MEASURED rows of these CSVs (e.g. one per preset, run separately) and "
                         "recompute the extrapolated rows into --out")
    args = ap.parse_args(argv)
    if args.presets is None:
        args.presets = "" if args.depth_probe else "sd21,sdxl"
    if args.merge:
        return merge(args)
    dtype = getattr(torch, args.dtype)
    try:
        sizes, full, tiled, extra = (_sizes(getattr(args, flag[2:].replace("-", "_")), default, flag)
                                     for flag, default in _DEFAULTS.items())
        presets, probes = validate(args, sizes, full, tiled, extra)
    except ConfigError as e:
        print(f"real_arch: {e}", file=sys.stderr)
        return 2
    if args.check:
        for name, sides in probes.items():
            print(f"{name}: depth probe at {sides[0]} px ({len(DEPTH_PROBES[name])} depth-reduced transformers), "
                  f"extrapolate {extra.get(name, [])}")
        return check(args, presets, sizes, full, tiled, extra)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        """Rewrite the CSV atomically: a run stopped by its time limit mid-write keeps the last whole table."""
        tmp = out.with_name(out.name + ".tmp")
        pd.DataFrame(rows).to_csv(tmp, index=False)
        os.replace(tmp, out)

    for preset in presets:
        md = MultiDiffusionPipeline.from_pretrained("arch:" + preset, seed=0, torch_dtype=dtype, device=args.device)
        print(f"{preset}: built ({md.info['parameters']}), RSS {_rss_gb():.1f} GB", flush=True)
        for size in sizes.get(preset, []):
            rows.append(attempt(denoise_row, _base(md, preset, args), "denoise", size, md, preset, size, args))
            print({k: rows[-1].get(k) for k in ("preset", "size_px", "phase", "views", "per_view_forward_s", "seconds",
                                                 "status")}, flush=True)
            flush()
        for is_tiled, todo in ((False, full), (True, tiled)):
            for size in todo.get(preset, []):
                rows.append(attempt(decode_row, _base(md, preset, args), "decode_tiled" if is_tiled else "decode_full",
                                    size, md, preset, size, is_tiled, args))
                print({k: rows[-1].get(k) for k in ("preset", "size_px", "phase", "seconds", "peak_above_weights_gb",
                                                     "status")},
                      flush=True)
                flush()
        rows.extend(extrapolate(rows, preset, extra.get(preset, []), md.native_window, args.steps,
                                _base(md, preset, args), vae=md.vae, budget_gb=args.park_budget_gb))
        flush()
        del md
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for name, sides in probes.items():
        done = list(rows)
        rows.extend(depth_probe(name, sides[0], extra.get(name, []), args,
                                flush=lambda new: pd.DataFrame(done + new).to_csv(out, index=False)))
        flush()
    flush()
    print(f"wrote {out} ({len(rows)} rows; loadavg {os.getloadavg()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
