"""Peak memory, time and error of VAE decodes: full, diffusers tiling, mdtools tiled (sync / no sync).

Methods: `full` (vae.decode), `diffusers_tiled` (enable_tiling, `--tile` px tiles and
overlap), `mdtools_nosync` (tiled, per-tile GroupNorm), `mdtools_sync_park` (exact
GroupNorm sync, lock-step tiles parked in RAM: one pass, memory grows with the canvas) and
`mdtools_sync_recompute` (exact sync, tiles re-run per GroupNorm: memory of one tile).
Equal tile size means an equal network input: diffusers' 512 px tiles include their
overlap, an mdtools tile adds a 64 px halo each side, so mdtools runs with a 384 px body
(column `mdtools_body_tile`) and never sends more than 512 px through the VAE either.

Every (method, size) runs in a fresh subprocess, so peaks do not leak between runs. On CPU
the peak is VmHWM from /proc/self/status, reset with `echo 5 > /proc/self/clear_refs`
after the model and the latents are loaded; the baseline RSS at that point is reported
too, and `decode_peak_mb = peak - baseline` is what the decode itself added. With a GPU,
torch.cuda max allocated / reserved are recorded as well.

Allocator: glibc raises its mmap threshold after the first large free and then serves
tensors from a heap whose reuse varies run to run, so one process's RSS peak for the same
decode varies by up to ~40 % (diffusers' tiled decode at 1024^2: 314 and 384 MB). By
default every worker therefore runs with MALLOC_MMAP_THRESHOLD_=1048576 (tensors over
1 MB are mmapped and returned on free): the peak is then the working set, the same for
every method, reproducible to ~1 MB. `--malloc default` measures the stock allocator
(median of `--repeats` processes).

Accuracy (max / mean abs error and PSNR against the full decode) is measured at
`--error-size` in one extra subprocess (memory is not measured there).

    .venv/bin/python benchmarks/vae_memory.py                 # 1024, 2048, 4096 (hours on 1 CPU core:
                                                              #   recompute at 4096^2 alone is > 30 min)
    .venv/bin/python benchmarks/vae_memory.py --recompute-max 2048   # what results/bench/ holds
    .venv/bin/python benchmarks/vae_memory.py --with-8192     # + 8192 for diffusers tiling and mdtools no-sync
    .venv/bin/python benchmarks/vae_memory.py --sizes 1024    # quick look
    .venv/bin/python benchmarks/vae_memory.py --vae DIR/vae   # another AutoencoderKL folder

Writes results/bench/vae_memory.csv and results/bench/vae_memory.png.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOY_VAE = ROOT / "mdtools" / "assets" / "toy-sd" / "vae"
OUT_CSV = ROOT / "results" / "bench" / "vae_memory.csv"
OUT_PNG = ROOT / "results" / "bench" / "vae_memory.png"
METHODS = ("full", "diffusers_tiled", "mdtools_nosync", "mdtools_sync_park", "mdtools_sync_recompute")
#: park keeps every tile's parked activations (about 2 canvas-sized activations at the
#: current layer, see mdtools/vae.py): 8192^2 would need ~27 GB with the toy VAE.
PARK_MAX_SIZE = 4096


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def load_vae(path: Path | None = None):
    """The VAE at `path`, else the embedded toy VAE, else a random SD-like VAE with smaller channels."""
    import torch
    from diffusers import AutoencoderKL

    path = path or TOY_VAE
    if (path / "config.json").is_file():
        name = "toy-sd/vae" if path == TOY_VAE else str(path)
        return AutoencoderKL.from_pretrained(path).eval(), name
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=16, layers_per_block=1,
    ).eval()
    return vae, "random(32,64,64,64)"


def make_latents(size: int, vae):
    """Structured latents (regions of different brightness + noise), seeded, unscaled."""
    import torch

    n = size // 8
    c = vae.config.latent_channels
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    base = torch.stack([torch.sin(6 * xx + k) * torch.cos(4 * yy - k) + (xx - 0.5) for k in range(c)])
    z = base[None] + 0.3 * torch.randn(1, c, n, n, generator=g)
    return z / vae.config.scaling_factor * 0.5


def mdtools_tile(tile: int) -> int:
    """mdtools' tile body for an equal network input: diffusers' `tile` px tiles include
    their overlap; an mdtools tile adds a halo on each side, so a body of tile - 2 * halo
    sends at most `tile` px through the VAE (memory is set by that input size)."""
    from mdtools.vae import DEFAULT_DECODE_HALO_PX

    return tile - 2 * DEFAULT_DECODE_HALO_PX


def decode(method: str, vae, z, tile: int, overlap: int):
    import torch

    from mdtools.vae import tiled_decode

    if method == "full":
        with torch.no_grad():
            return vae.decode(z).sample
    if method == "diffusers_tiled":
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // 8
        vae.tile_overlap_factor = overlap / tile
        try:
            with torch.no_grad():
                return vae.decode(z).sample
        finally:
            vae.disable_tiling()
    strategy = {"mdtools_sync_park": "park", "mdtools_sync_recompute": "recompute"}.get(method, "park")
    from mdtools.vae import DEFAULT_DECODE_HALO_PX

    # the setup docs/vae.md's toy-VAE table was measured with: 64 px halos (mdtools' exact
    # runs now default to the smaller exact halo; benchmarks/vae_fast.py measures those)
    return tiled_decode(vae, z, tile=mdtools_tile(tile), overlap=overlap, halo=DEFAULT_DECODE_HALO_PX,
                        sync_groupnorm=method != "mdtools_nosync",
                        sync_strategy=strategy, offload=True,
                        attention="tile" if method == "mdtools_sync_tile_attention" else "canvas")


def worker(method: str, size: int, tile: int, overlap: int, threads: int, vae_path: Path | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae, vae_name = load_vae(vae_path)
    vae.to(device)
    z = make_latents(size, vae).to(device)
    baseline = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure the decode only
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = decode(method, vae, z, tile, overlap)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    row = {
        "method": method, "size": size, "tile": tile, "overlap": overlap,
        "mdtools_body_tile": mdtools_tile(tile) if method.startswith("mdtools") else "",
        "seconds": round(seconds, 2),
        "baseline_rss_mb": round(baseline / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
        "decode_peak_mb": round((peak - baseline) / 1024, 1),
        "output_mb": round(out.numel() * out.element_size() / 2**20, 1),
        "cuda_max_allocated_mb": "", "cuda_max_reserved_mb": "",
        "finite": bool(torch.isfinite(out).all()), "vae": vae_name, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "threads": threads, "torch": torch.__version__,
    }
    if device == "cuda":
        row["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return row


def accuracy_worker(size: int, tile: int, overlap: int, threads: int, vae_path: Path | None = None) -> list[dict]:
    """Error of every tiled method against the full decode at one size."""
    import torch

    torch.set_num_threads(threads)
    vae, _ = load_vae(vae_path)
    z = make_latents(size, vae)
    full = decode("full", vae, z, tile, overlap)
    rows = []
    # tile attention: accuracy only, to size the approximation that canvas attention removes
    for method in (*METHODS[1:], "mdtools_sync_tile_attention"):
        if method == "mdtools_sync_recompute":  # bit-identical to park (tests/test_vae.py): same error
            rows.append({**rows[-1], "method": method})
            continue
        d = (decode(method, vae, z, tile, overlap).float() - full).abs()
        mse = float((d**2).mean())
        rows.append({"method": method, "size": size, "err_max": float(f"{float(d.max()):.3g}"),
                     "err_mean": float(f"{float(d.mean()):.3g}"), "psnr_db": round(10 * math.log10(4 / mse), 2) if mse > 0 else math.inf})
    return rows


MMAP_THRESHOLD = 1 << 20


def _run_sub(args: list[str], timeout: float, malloc: str = "mmap", script: Path | None = None) -> list[dict] | None:
    """Run `script` (default: this file) with `args` in a fresh process; its RESULT line."""
    import os

    cmd = [sys.executable, str((script or Path(__file__)).resolve()), *args]
    env = dict(os.environ)
    if malloc == "mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        print(f"  timed out: {args}", flush=True)
        return None
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"  failed: {args}\n{res.stderr[-2000:]}", flush=True)
    return None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        pts = sorted((r["size"], r["decode_peak_mb"], r["seconds"]) for r in rows
                     if r.get("method") == method and r.get("decode_peak_mb") not in ("", None))
        if not pts:
            continue
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], "o-", label=method)
        axes[1].plot(xs, [p[2] for p in pts], "o-", label=method)
    outs = sorted({(r["size"], r["output_mb"]) for r in rows if r.get("output_mb") not in ("", None)})
    if outs:
        axes[0].plot([o[0] for o in outs], [o[1] for o in outs], "k--", label="output canvas (fp32)")
    for ax, title, unit in ((axes[0], "Peak RSS added by the decode", "MB"), (axes[1], "Decode time", "s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("canvas side (px)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    dev = rows[0].get("device_name", "") if rows else ""
    fig.suptitle(f"VAE decode on {dev} ({rows[0].get('vae', '') if rows else ''}), tile 512 overlap 64")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--with-8192", action="store_true", help="add 8192^2 for diffusers tiling and mdtools no-sync")
    ap.add_argument("--recompute-max", type=int, default=4096, help="largest size for mdtools_sync_recompute")
    ap.add_argument("--vae", type=Path, default=None, help="AutoencoderKL folder (default: the embedded toy VAE)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    # 1 thread: on a 2-core box shared with other jobs, 2 OpenMP threads spin-wait (slower)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--error-size", type=int, default=1024, help="0 to skip the accuracy run")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds per worker process")
    ap.add_argument("--repeats", type=int, default=1,
                    help="fresh processes per (method, size) up to --repeat-max-size; the median peak is kept "
                         "(glibc heap reuse makes single RSS peaks vary by up to ~40%%)")
    ap.add_argument("--repeat-max-size", type=int, default=2048)
    ap.add_argument("--malloc", choices=("mmap", "default"), default="mmap",
                    help="glibc allocator setting of the workers (see the module docstring)")
    ap.add_argument("--out", type=Path, default=OUT_CSV)
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--accuracy-worker", type=int, metavar="SIZE", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        row = worker(args.worker[0], int(args.worker[1]), args.tile, args.overlap, args.threads, args.vae)
        print("RESULT " + json.dumps([row]), flush=True)
        return
    if args.accuracy_worker:
        print("RESULT " + json.dumps(accuracy_worker(args.accuracy_worker, args.tile, args.overlap, args.threads,
                                                     args.vae)))
        return

    common = ["--tile", str(args.tile), "--overlap", str(args.overlap), "--threads", str(args.threads)]
    if args.vae:
        common += ["--vae", str(args.vae)]
    jobs = [(m, s) for s in args.sizes for m in args.methods
            if not (m == "mdtools_sync_park" and s > PARK_MAX_SIZE) and not (m == "mdtools_sync_recompute" and s > args.recompute_max)]
    if args.with_8192:
        jobs += [(m, 8192) for m in ("diffusers_tiled", "mdtools_nosync") if m in args.methods]
    rows: list[dict] = []
    for method, size in jobs:
        n = args.repeats if size <= args.repeat_max_size else 1
        print(f"{method} {size}^2 (x{n}) ...", flush=True)
        runs = []
        for _ in range(n):
            got = _run_sub(["--worker", method, str(size), *common], args.timeout, args.malloc)
            if got:
                runs.append(got[0])
                print(f"  {got[0]['seconds']} s, decode peak {got[0]['decode_peak_mb']} MB "
                      f"(baseline {got[0]['baseline_rss_mb']} MB, output {got[0]['output_mb']} MB)", flush=True)
        if runs:
            runs.sort(key=lambda r: r["decode_peak_mb"])
            row = dict(runs[len(runs) // 2])  # the median peak (upper median for an even count)
            row.update(malloc=args.malloc, repeats=len(runs), decode_peak_min_mb=runs[0]["decode_peak_mb"],
                       decode_peak_max_mb=runs[-1]["decode_peak_mb"],
                       seconds_min=min(r["seconds"] for r in runs))
            rows.append(row)
    acc: dict[str, dict] = {}
    if args.error_size:
        print(f"accuracy at {args.error_size}^2 ...", flush=True)
        for r in _run_sub(["--accuracy-worker", str(args.error_size), *common], args.timeout, args.malloc) or []:
            acc[r["method"]] = r
            print(f"  {r}", flush=True)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    for r in rows:
        a = acc.get(r["method"]) if r["size"] == args.error_size else None
        r.update(err_max=a["err_max"] if a else "", err_mean=a["err_mean"] if a else "",
                 psnr_db=a["psnr_db"] if a else "", date=stamp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out.with_suffix(".png") if args.out != OUT_CSV else OUT_PNG)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
