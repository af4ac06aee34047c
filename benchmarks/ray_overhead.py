"""Ray executor overhead: the same sweep through the local executor and through Ray with one worker.

One sweep of small toy-model runs (each >= 10 s on 2 CPU threads), run alternately by the
local executor (in this process) and by `RayExecutor` with one worker of all the CPUs (the
same torch thread count), so that machine noise hits both alike. Two measures per run:

- the paired ratio: the driver-side turnaround (dispatch to result in the driver, before
  the writes, which are the same code for both) of a run on Ray over the same run id's
  locally, in the same repetition. It includes any slowdown of the compute in a worker
  process, and all the noise of a shared CPU;
- Ray's own share: (turnaround - the run's wall time inside the worker) / that wall time,
  i.e. dispatch, (de)serialization and the object-store transfer of record and images.
  Machine noise that slows the run itself does not enter it.

The first run of each sweep (the model load, and on Ray the worker's start) is reported
apart, as a fixed cost per sweep, not per run.

Writes results/bench/ray_overhead.csv: one row per run and repetition (kind=run), with the
1-, 5- and 15-minute load averages at the end of its sweep, then one row per summary measure
(kind=summary: measure, value; medians over the repetitions). The CPU
of the machine that made the committed file was shared with other jobs: read the load
averages with the times.

    python benchmarks/ray_overhead.py [--repeats 2] [--runs 3] [--steps 12] [--height 256] [--width 1024]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdtools.sweep import RayExecutor, execute, load_experiment, load_records  # noqa: E402


def sweep_file(folder: Path, runs: int, steps: int, height: int, width: int) -> Path:
    """`runs` seeds of one gaussian-overlap toy panorama; cheap metrics, so the run is mostly sampling."""
    spec = {"name": "ray_overhead", "base": {
        "model": "toy", "prompt": "brick wall", "canvas": {"height": height, "width": width},
        "tiling": {"overlap": 16, "kernel": "gaussian", "view_batch_size": 8},
        "sampler": {"steps": steps, "guidance": 5.0}, "metrics": ["seam_score", "tv"],
        "output": {"preview_max_side": 512}}, "seeds": list(range(runs))}
    p = folder / "ray_overhead.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def one_sweep(exp, out: Path, executor) -> tuple[float, dict[str, dict]]:
    t0 = time.perf_counter()
    execute(exp, out, progress=False, log=lambda s: None, executor=executor)
    wall = time.perf_counter() - t0
    return wall, load_records(out)


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="pairs of sweeps (local, ray)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "ray_overhead.csv"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 1024 ** 2)
    tmp = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    exp = load_experiment(sweep_file(tmp, args.runs, args.steps, args.height, args.width))
    order = [r.run_id() for r in exp.runs]
    rows: list[dict] = []
    for rep in range(args.repeats):
        pair: dict[str, dict[str, dict]] = {}
        for name in ("local", "ray"):
            executor = None if name == "local" else RayExecutor(cpus_per_run=args.threads, max_concurrent=1)
            wall, recs = one_sweep(exp, tmp / f"{name}{rep}", executor)
            pair[name] = recs
            load = os.getloadavg()
            for i, rid in enumerate(order):
                p = recs[rid]["provenance"]
                rows.append({"kind": "run", "rep": rep, "executor": name, "run_id": rid, "first_in_sweep": i == 0,
                             "status": recs[rid]["status"], "turnaround_s": round(p["turnaround_seconds"], 4),
                             "in_worker_s": round(p["wall_seconds"], 4), "sweep_wall_s": round(wall, 3),
                             "ratio_ray_over_local": "",
                             "dispatch_overhead": round((p["turnaround_seconds"] - p["wall_seconds"]) / p["wall_seconds"], 5),
                             "threads": args.threads,
                             "loadavg_1m": round(load[0], 2), "loadavg_5m": round(load[1], 2),
                             "loadavg_15m": round(load[2], 2), "torch": torch.__version__, "ray": ray.__version__})
            print(f"rep {rep} {name}: sweep {wall:.1f} s, turnaround per run "
                  + ", ".join(f"{recs[r]['provenance']['turnaround_seconds']:.2f}" for r in order)
                  + f" s; load average {load[0]:.2f} {load[1]:.2f}", flush=True)
        for row in rows[-len(order):]:
            local_t = pair["local"][row["run_id"]]["provenance"]["turnaround_seconds"]
            row["ratio_ray_over_local"] = round(row["turnaround_s"] / local_t, 4)
    ray.shutdown()

    steady = [r["ratio_ray_over_local"] for r in rows if r["executor"] == "ray" and not r["first_in_sweep"]]
    first = [r["ratio_ray_over_local"] for r in rows if r["executor"] == "ray" and r["first_in_sweep"]]
    dispatch = [r["dispatch_overhead"] for r in rows if r["executor"] == "ray" and not r["first_in_sweep"]]
    dispatch_local = [r["dispatch_overhead"] for r in rows if r["executor"] == "local" and not r["first_in_sweep"]]
    in_worker = [r["in_worker_s"] for r in rows if not r["first_in_sweep"]]
    sweeps = {n: [r["sweep_wall_s"] for r in rows if r["executor"] == n and r["run_id"] == order[0]] for n in ("local", "ray")}
    loads = [r["loadavg_1m"] for r in rows]
    summary = {
        "median_ratio_ray_over_local_per_run": statistics.median(steady),
        "median_dispatch_overhead_ray": statistics.median(dispatch),
        "median_dispatch_overhead_local": statistics.median(dispatch_local),
        "median_ratio_first_run_of_sweep": statistics.median(first),
        "median_sweep_wall_ratio": statistics.median(sweeps["ray"]) / statistics.median(sweeps["local"]),
        "median_run_seconds": statistics.median(in_worker),
        "min_run_seconds": min(in_worker),
    }
    for k, v in summary.items():
        rows.append({"kind": "summary", "measure": k, "value": round(v, 5), "threads": args.threads,
                     "loadavg_1m": round(statistics.median(loads), 2)})  # the median of the runs' 1-min load averages
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) + ["measure", "value"]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    print(f"per-run overhead of Ray (steady state, median of {len(steady)}): paired ratio "
          f"{(summary['median_ratio_ray_over_local_per_run'] - 1) * 100:+.1f} %, Ray's own share "
          f"{summary['median_dispatch_overhead_ray'] * 100:+.2f} % (local: {summary['median_dispatch_overhead_local'] * 100:+.2f} %) "
          f"(runs of {summary['median_run_seconds']:.1f} s median, {summary['min_run_seconds']:.1f} s min); "
          f"first run of a sweep x{summary['median_ratio_first_run_of_sweep']:.2f}; "
          f"whole sweep x{summary['median_sweep_wall_ratio']:.2f}; "
          f"1-min load average median {statistics.median(loads):.2f}, max {max(loads):.2f} on {args.threads} threads")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
