"""Exact tiled decode vs diffusers' tiling on the real SD VAE architecture: time, peak, error.

The VAE is diffusers' AutoencoderKL built from the SD 1.5 (or 2.1) config in
../shared/arch-configs with seeded random weights: cost and memory depend on the
architecture, not on trained values (errors are relative to the same random model's
one-piece decode). Methods:

- `full`: `vae.decode` in one piece (the reference);
- `diffusers_tiled`: `enable_tiling()` with diffusers' defaults for this config (512 px
  tiles including a 128 px overlap), tiles normalised on their own;
- `mdtools_park`: exact decode (GroupNorm sync + canvas attention), every tile parked at
  every barrier: one pass, parked memory grows with the canvas;
- `mdtools_auto:<MB>`: exact decode with `park_budget_bytes=<MB> MiB`: parks at the
  barriers that fit, replays from the latest parked state elsewhere (same bits as park);
- `mdtools_recompute`: exact, nothing parked, every tile replayed from its input;
- `mdtools_park_bf16`: park with `park_dtype="bfloat16"` (opt-in, not float-exact);
- `mdtools_disk`: park out of core (`park="disk"`: parked states and canvas keys / values
  in files under the system's temp dir), so the process holds one tile plus the output;
  `disk_written_mb` / `disk_read_mb` say how much went through the files (here they
  stayed in the kernel's page cache; on a machine where they reach the disk, add that
  I/O at its bandwidth);
- `mdtools_nosync`: plain tiling with mdtools' halo and blending.
Equal tile size = equal network input: mdtools runs a body of 512 px (`--tile`) less two
exact halos (the halo its schedule needs, `schedule_estimate`: 16 px when parking at every
barrier) and no overlap (exact tiles need no blending), so neither sends more than 512 px
through the VAE. `mdtools_nosync` keeps a 384 px body, 64 px halos and 64 px overlap.
`--tile` changes mdtools' network input only (diffusers keeps its 512 px; the `tile_px`
column says which ran): e.g. to compare canvases at the tile size a smaller one used.

Every (method, size, repetition) runs in a fresh process (`vae_memory._run_sub`): the peak
is VmHWM after `clear_refs` once the model and latents are loaded (the decode's own
peak; `decode_peak_mb`), with MALLOC_MMAP_THRESHOLD_=1 MiB so it is the working set.
Repetitions are interleaved (rep 1 of every method, then rep 2 ...), and the 1-, 5- and
15-minute load averages are recorded before and after every run: this CPU is shared, so
times are only comparable within a row group of similar load. Each worker saves its
output; errors (max abs, PSNR over the [-1, 1] range) are taken against `full` of the same
size, where `full` ran.

    .venv/bin/python benchmarks/vae_fast.py --sizes 1024 --repeats 2
    .venv/bin/python benchmarks/vae_fast.py --sizes 2048 --methods diffusers_tiled mdtools_auto:1024
    .venv/bin/python benchmarks/vae_fast.py --estimate --sizes 1024 2048 4096 8192

`--estimate` decodes nothing: it writes results/bench/vae_schedule.csv, the strategy,
exact halo, parked peak and multiply-adds relative to one untiled decode that
`schedule_estimate` predicts for each method and size (counts equal real runs, tested),
next to diffusers' tiling (its tiles' area over the canvas: the multiply-adds of tiling
without attention across tiles). Use it for sizes too large to decode here.

Appends to results/bench/vae_fast.csv as each run finishes (one row per run, `--fresh` to
start over).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.vae_memory import MMAP_THRESHOLD, _run_sub, _status_kb  # noqa: E402

ARCH_DIRS = {"sd15": "stable-diffusion-v1-5", "sd21": "stable-diffusion-2-1"}
SHARED = ROOT.parent / "shared" / "arch-configs"
OUT_CSV = ROOT / "results" / "bench" / "vae_fast.csv"
METHODS = ("full", "diffusers_tiled", "mdtools_park", "mdtools_auto:1024", "mdtools_recompute", "mdtools_park_bf16",
           "mdtools_disk", "mdtools_nosync")
TILE, OVERLAP, HALO = 512, 64, 64
DIFFUSERS_TILE = 512  # enable_tiling's tile for these configs (sample_size), whatever --tile says


def build_vae(arch: str):
    """diffusers AutoencoderKL of the real `arch` configuration, seeded random weights."""
    import torch
    from diffusers import AutoencoderKL

    path = SHARED / ARCH_DIRS[arch] / "vae" / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    torch.manual_seed(0)
    return AutoencoderKL(**config).eval()


def make_latents(size: int):
    """Structured latents (smooth regions + noise, about unit scale), seeded."""
    import torch

    n = size // 8
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    base = torch.stack([torch.sin(6 * xx + k) * torch.cos(4 * yy - k) + (xx - 0.5) for k in range(4)])
    return base[None] + 0.3 * torch.randn(1, 4, n, n, generator=g)


def decode(method: str, vae, z, report: dict):
    import torch

    from mdtools.vae import tiled_decode

    if method == "full":
        with torch.no_grad():
            return vae.decode(z).sample
    if method == "diffusers_tiled":
        vae.enable_tiling()  # diffusers' defaults: tile = config.sample_size, overlap factor 0.25
        try:
            with torch.no_grad():
                return vae.decode(z).sample
        finally:
            vae.disable_tiling()
    if method == "mdtools_nosync":
        return tiled_decode(vae, z, sync_groupnorm=False, tile=TILE - 2 * HALO, overlap=OVERLAP, halo=HALO,
                            offload=True, report=report)
    strategy, budget = _strategy(method)
    halo = exact_halo(vae, z.shape[-1], strategy, budget)
    # equal network input: body + 2 halos = diffusers' tile; exact tiles need no overlap
    kw: dict = dict(tile=TILE - 2 * halo, halo=halo, overlap=0, offload=True, report=report)
    if method == "mdtools_park":
        return tiled_decode(vae, z, sync_strategy="park", **kw)
    if method == "mdtools_park_bf16":
        return tiled_decode(vae, z, sync_strategy="park", park_dtype="bfloat16", **kw)
    if method == "mdtools_disk":
        return tiled_decode(vae, z, sync_strategy="park", park="disk", **kw)
    if method == "mdtools_recompute":
        return tiled_decode(vae, z, sync_strategy="recompute", **kw)
    if method.startswith("mdtools_auto:"):
        budget = int(float(method.split(":", 1)[1]) * 2**20)
        return tiled_decode(vae, z, sync_strategy="auto", park_budget_bytes=budget, **kw)
    raise SystemExit(f"unknown method {method!r}; choose from {METHODS} (mdtools_auto:<MiB>)")


def _strategy(method: str) -> tuple[str, int | None]:
    if method.startswith("mdtools_auto:"):
        return "auto", int(float(method.split(":", 1)[1]) * 2**20)
    return {"mdtools_park": "park", "mdtools_park_bf16": "park", "mdtools_disk": "park",
            "mdtools_recompute": "recompute"}.get(
        method, "auto"), None


def exact_halo(vae, latent: int, strategy: str, budget: int | None) -> int:
    """The exact halo (px) of `strategy` for a tile body that leaves room for it in TILE."""
    from mdtools.vae import schedule_estimate

    halo = 16
    for _ in range(4):  # the halo sets the body, the body the checkpoints, they the halo
        need = schedule_estimate(vae, (latent, latent), sync_strategy=strategy, park_budget_bytes=budget,
                                 tile=TILE - 2 * halo, overlap=0)["halo_px"]
        if need == halo:
            return halo
        halo = need
    raise SystemExit(f"no exact halo found for {strategy} (budget {budget}) at {latent * 8} px")


ESTIMATE_CSV = ROOT / "results" / "bench" / "vae_schedule.csv"
ESTIMATE_METHODS = ("mdtools_park", "mdtools_auto:600", "mdtools_auto:1024", "mdtools_auto:2048", "mdtools_auto:4096",
                    "mdtools_auto:8192", "mdtools_auto:16384", "mdtools_recompute")


def diffusers_area(size: int, tile: int = DIFFUSERS_TILE, overlap_factor: float = 0.25) -> float:
    """Pixels diffusers' tiled decode runs through the VAE over the canvas's: tiles of
    `tile` px every tile * (1 - overlap_factor) px, clipped at the canvas edge."""
    stride = int(tile * (1 - overlap_factor))
    per_axis = sum(min(tile, size - s) for s in range(0, size, stride))
    return (per_axis / size) ** 2


def estimate(arch: str, sizes: list[int], methods: list[str], out: Path) -> None:
    import mdtools.vae as V

    vae = build_vae(arch)
    prof = V.program_profile(V.vae_layout(vae, "decode"), canvas_attention=True, macs=True)
    conv = sum(prof.step_macs) + sum(prof.message_macs)  # per latent pixel
    rows = []
    for size in sizes:
        canvas, tile = (size // 8) ** 2, (DIFFUSERS_TILE // 8) ** 2
        # multiply-adds per latent pixel: the untiled decode attends over the canvas,
        # diffusers' tiles over themselves (edge tiles counted whole: an upper bound)
        full = conv + canvas * prof.kv_values
        theirs = diffusers_area(size) * (conv + tile * prof.kv_values) / full
        rows.append({"method": "diffusers_tiled", "size": size, "arch": arch, "compute_vs_full": round(theirs, 3),
                     "compute_vs_diffusers": 1.0})
        for method in methods:
            strategy, budget = _strategy(method)
            halo = exact_halo(vae, size // 8, strategy, budget)
            e = V.schedule_estimate(vae, (size // 8, size // 8), sync_strategy=strategy, park_budget_bytes=budget,
                                    tile=TILE - 2 * halo, halo=halo, overlap=0)
            rows.append({"method": method, "size": size, "arch": arch, "strategy": e["strategy"],
                         "halo_px": e["halo_px"], "exact": e["exact"], "n_tiles": e["n_tiles"],
                         "checkpoints": e["checkpoints"], "parked_peak_mib": round(e["parked_peak_bytes"] / 2**20),
                         "compute_vs_full": round(float(e["compute_vs_full"]), 3),
                         "compute_vs_diffusers": round(float(e["compute_vs_full"]) / theirs, 3)})
            print(rows[-1], flush=True)
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).convert_dtypes().to_csv(out, index=False)  # integer columns stay integers
    print(f"wrote {out}")


def worker(method: str, size: int, arch: str, threads: int, save: Path | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    vae = build_vae(arch)
    z = make_latents(size)
    baseline = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure the decode only
    load0 = os.getloadavg()
    report: dict = {}
    t0 = time.perf_counter()
    out = decode(method, vae, z, report)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    load1 = os.getloadavg()
    if save is not None:
        torch.save(out.float().cpu(), save)
    return {
        "method": method, "size": size, "arch": arch, "seconds": round(seconds, 1),
        "baseline_rss_mb": round(baseline / 1024, 1), "decode_peak_mb": round((peak - baseline) / 1024, 1),
        "output_mb": round(out.numel() * 4 / 2**20, 1),
        "parked_peak_mb": round(report.get("parked_peak_bytes", 0) / 2**20, 1) if report else "",
        "strategy": report.get("strategy", ""), "n_tiles": report.get("n_tiles", ""),
        "tile_runs": report.get("tile_runs", ""), "resumes": report.get("resumes", ""),
        "checkpoints": report.get("checkpoints", ""), "halo_px": report.get("halo_px", ""),
        "exact": report.get("exact", ""),
        "disk_written_mb": round(report.get("disk_written_bytes", 0) / 2**20, 1) if report else "",
        "disk_read_mb": round(report.get("disk_read_bytes", 0) / 2**20, 1) if report else "",
        "load_before": " ".join(f"{v:.2f}" for v in load0), "load_after": " ".join(f"{v:.2f}" for v in load1),
        "finite": bool(torch.isfinite(out).all()), "threads": threads, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }


def errors(out_path: Path, ref_path: Path) -> dict:
    import torch

    a, b = torch.load(out_path, weights_only=True), torch.load(ref_path, weights_only=True)
    d = (a - b).abs()
    mse = float((d**2).mean())
    return {"err_max": float(f"{float(d.max()):.3g}"),
            "psnr_db": round(10 * math.log10(4 / mse), 1) if mse > 0 else math.inf}


def main() -> None:
    global TILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--arch", choices=tuple(ARCH_DIRS), default="sd15")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repetitions (fresh process each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile", type=int, default=TILE,
                    help="network input per mdtools tile, px (body = tile - 2 halos); diffusers' tiling keeps "
                         "its own 512 px")
    ap.add_argument("--timeout", type=float, default=5400, help="seconds per worker process")
    ap.add_argument("--out", type=Path, default=OUT_CSV)
    ap.add_argument("--fresh", action="store_true", help="overwrite the CSV instead of appending")
    ap.add_argument("--estimate", action="store_true",
                    help=f"decode nothing: predict schedules with schedule_estimate into {ESTIMATE_CSV.name}")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tile % 8 or args.tile < 64:
        raise SystemExit(f"--tile must be a multiple of 8 px and at least 64 (e.g. 512), got {args.tile}")
    TILE = args.tile

    if args.estimate:
        methods = [m for m in args.methods if m.startswith("mdtools_") and m != "mdtools_nosync"]
        estimate(args.arch, args.sizes, methods if args.methods != list(METHODS) else list(ESTIMATE_METHODS),
                 ESTIMATE_CSV)
        return
    if args.worker:
        row = worker(args.worker[0], int(args.worker[1]), args.arch, args.threads, args.save)
        print("RESULT " + json.dumps([row]), flush=True)
        return

    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    tmp = Path(tempfile.mkdtemp(prefix="vae_fast_"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and args.out.is_file():
        args.out.unlink()
    rows: list[dict] = []
    for rep in range(args.repeats):
        for size in args.sizes:
            for method in args.methods:
                save = tmp / f"{method.replace(':', '_')}_{size}.pt" if rep == 0 else None
                print(f"[rep {rep + 1}] {method} {size}^2 ...", flush=True)
                extra = ["--save", str(save)] if save else []
                got = _run_sub(["--worker", method, str(size), "--arch", args.arch, "--threads", str(args.threads),
                                "--tile", str(args.tile), *extra], args.timeout, script=Path(__file__))
                if not got:
                    continue
                r = dict(got[0], repeat=rep + 1, date=stamp, malloc_mmap_threshold=MMAP_THRESHOLD,
                         tile_px=TILE if method.startswith("mdtools") else DIFFUSERS_TILE if method == "diffusers_tiled"
                         else "")
                # errors against `full` of this size when it ran first in this invocation
                ref, own = tmp / f"full_{size}.pt", tmp / f"{method.replace(':', '_')}_{size}.pt"
                r.update(errors(own, ref) if ref.is_file() and own.is_file() else {"err_max": "", "psnr_db": ""})
                rows.append(r)
                _append(args.out, r)  # row by row: an interrupted run keeps what finished
                print(f"  {r['seconds']} s, decode peak {r['decode_peak_mb']} MB, parked {r['parked_peak_mb']} "
                      f"MB, {r['strategy']}, load {r['load_before']} -> {r['load_after']}", flush=True)
    if not rows:
        raise SystemExit("no run finished")
    for r in rows:
        print({k: r[k] for k in ("method", "size", "seconds", "decode_peak_mb", "parked_peak_mb", "err_max",
                                 "psnr_db")})
    print(f"wrote {args.out}")


def _append(path: Path, row: dict) -> None:
    """Append `row` to the CSV at `path`; a column the file lacks is added (the file is
    rewritten with it, earlier rows left empty there, through a temporary file and an
    atomic rename, so an interruption never loses the rows already there)."""
    if path.is_file() and path.stat().st_size:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            missing = [k for k in row if k not in fields]
            rows = list(reader) if missing else []
        if missing:
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields + missing, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, path)
            fields += missing
    else:
        fields = list(row)
        with path.open("w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writeheader()
    with path.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore").writerow(row)


if __name__ == "__main__":
    main()
