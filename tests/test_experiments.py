"""Experiment files, the resumable runner, failure rows and reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mdtools import ConfigError
from mdtools.sweep import RunConfig, build_table, execute, expand, load_experiment, load_records

ROOT = Path(__file__).resolve().parents[1]


def write_exp(tmp_path: Path, model: Path, **over) -> Path:
    spec = {
        "name": "t",
        "base": {
            "model": str(model), "prompt": "a photo of a beach", "canvas": {"height": 64, "width": 128},
            "tiling": {"overlap": 32}, "sampler": {"steps": 2}, "metrics": ["seam_score", "tv"],
            "output": {"preview_max_side": 64},
        },
        "sweep": {"tiling.kernel": ["uniform", "gaussian"]},
        "seeds": [0, 1],
    }
    for k, v in over.items():
        spec[k] = v
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


BAD = [
    ({"base": {"prompt": "x", "tiling": {"overlapp": 8}}}, "tiling.overlapp: unknown key; valid keys here: ['circular'"),
    ({"base": {"prompt": "x", "colour": 1}}, "colour: unknown key"),
    ({"base": {}}, "prompt: Field required"),
    ({"base": {"prompt": "x", "tiling": {"kernel": "box"}}}, "kernel='box' is not a known kernel"),
    ({"base": {"prompt": "x", "tiling": {"overlap": 64}}}, "overlap=64 must be smaller than window=64"),
    ({"base": {"prompt": "x", "canvas": {"height": 100, "width": 128}}}, "height=100 is not a multiple of the VAE scale factor (8); use 96 or 104"),
    ({"base": {"prompt": "x", "canvas": {"height": 64}}}, "give both height and width"),
    ({"base": {"prompt": "x", "canvas": {"height": 64, "width": 64, "aspect": 2}}}, "either height/width or aspect/megapixels"),
    ({"base": {"prompt": "x", "sampler": {"steps": 0}}}, "num_inference_steps must be > 0"),
    ({"base": {"prompt": "x", "sampler": {"scheduler": "fast"}}}, "scheduler='fast' is unknown"),
    ({"base": {"prompt": "x", "sampler": {"guidance": -1}}}, "guidance_scale must be a number >= 0"),
    ({"base": {"prompt": "x", "tiling": {"circular": "z"}}}, "tiling.circular"),
    ({"base": {"prompt": "x", "tiling": {"view_batch_size": 0}}}, "view_batch_size must be > 0"),
    ({"base": {"prompt": "x", "dtype": "float8"}}, "dtype"),
    ({"base": {"prompt": "x", "device": "tpu"}}, "device must be 'auto', 'cpu' or 'cuda[:N]'"),
    ({"base": {"prompt": "x", "metrics": ["sharpness"]}}, "metrics: unknown ['sharpness']"),
    ({"base": {"prompt": "x", "model": "./nowhere"}}, "model path './nowhere' does not exist"),
    ({"base": {"prompt": "x", "tiling": {"kernel_params": {"sigma": -1}, "kernel": "gaussian"}}}, "sigma=-1 is invalid"),
    ({"sweep": {"tiling.overlap": 8}}, "sweep: must map dotted keys to non-empty lists"),
    ({"zip": [{"canvas.height": [64, 128], "canvas.width": [64]}]}, "zip[0]: lists must have equal length"),
    ({"seeds": "0"}, "seeds: must be a non-empty list of integers"),
    ({"sweeps": {}}, "unknown top-level key(s) ['sweeps']"),
    ({"name": ""}, "name: required"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_experiment_files_are_reported_before_any_run(tmp_path, saved_sd_dir, override, message):
    spec = {"name": "bad", "base": {"prompt": "x"}}
    spec.update(override)
    if isinstance(spec.get("base"), dict) and spec["base"]:
        spec["base"].setdefault("model", str(saved_sd_dir))
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    assert message in str(e.value)


def test_all_problems_of_a_file_are_reported_together(tmp_path, saved_sd_dir):
    p = write_exp(tmp_path, saved_sd_dir, sweep={"tiling.overlap": [32, 64, 96]})
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    msg = str(e.value)
    assert msg.startswith("4 problem(s) found before any run started")  # 2 bad overlaps x 2 seeds
    assert "run 2:" in msg and "overlap=64" in msg and "overlap=96" in msg


def test_grid_and_zip_expansion_counts():
    spec = {"base": {"prompt": "x"}, "sweep": {"tiling.overlap": [0, 8, 16], "tiling.kernel": ["uniform", "cosine"]},
            "zip": [{"canvas.height": [64, 128], "canvas.width": [256, 128]}], "seeds": [0, 1, 2]}
    runs, swept = expand(spec)
    assert len(runs) == 3 * 2 * 2 * 3
    assert swept == ["tiling.overlap", "tiling.kernel", "canvas.height", "canvas.width", "seed"]
    assert {(r["canvas"]["height"], r["canvas"]["width"]) for r in runs} == {(64, 256), (128, 128)}
    assert sum(1 for r in runs if r["seed"] == 2 and r["tiling"]["overlap"] == 8) == 4


def test_run_ids_are_stable_and_distinct():
    a = RunConfig.model_validate({"prompt": "x", "tiling": {"overlap": 8, "kernel": "cosine"}})
    b = RunConfig.model_validate({"tiling": {"kernel": "cosine", "overlap": 8}, "prompt": "x"})
    c = RunConfig.model_validate({"prompt": "x", "tiling": {"overlap": 16, "kernel": "cosine"}})
    assert a.run_id() == b.run_id() != c.run_id()
    assert a.run_id() == RunConfig.model_validate(json.loads(json.dumps(a.model_dump(mode="json")))).run_id()
    assert len(a.run_id()) == 12


def test_aspect_and_megapixels_resolve_to_valid_sizes():
    c = RunConfig.model_validate({"prompt": "x", "canvas": {"aspect": 4.0, "megapixels": 0.25}})
    h, w = c.canvas.resolve(8)
    assert h % 8 == 0 and w % 8 == 0 and abs(w / h - 4) < 0.1 and abs(h * w / 0.25e6 - 1) < 0.05


def test_runner_writes_records_table_and_resumes(tmp_path, saved_sd_dir):
    exp = load_experiment(write_exp(tmp_path, saved_sd_dir))
    out = tmp_path / "res"
    df = execute(exp, out, max_runs=2, progress=False, log=lambda s: None)
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    df = execute(exp, out, progress=False, log=lambda s: None)
    assert len(df) == 4 and df["run_id"].is_unique
    recs = load_records(out)
    assert len(recs) == 4
    r = next(iter(recs.values()))
    assert r["provenance"]["versions"]["torch"] == torch.__version__
    assert r["provenance"]["git"] and r["provenance"]["device_name"]
    assert r["config"]["model"] == str(saved_sd_dir) and r["metrics"]["seam_score"] > 0
    assert (out / "images" / r["images"]["preview"]).exists()
    # parquet schema: config, plan, metrics, counts, timings, memory, status, provenance
    t = pd.read_parquet(out / "runs.parquet")
    for col in ["run_id", "status", "error", "tiling.kernel", "tiling.overlap", "seed", "plan.n_views",
                "plan.redundancy", "metric.seam_score", "metric.tv", "count.model_evaluations", "time.denoise",
                "time.total", "mem.peak_rss.total", "prov.git", "prov.torch", "prov.device_name", "prov.date"]:
        assert col in t.columns, col
    assert t["metric.seam_score"].dtype.kind == "f" and t["count.model_evaluations"].dtype.kind == "i"
    n_files = len(list((out / "runs").glob("*.json")))
    execute(exp, out, progress=False, log=lambda s: None)  # nothing left to do
    assert len(list((out / "runs").glob("*.json"))) == n_files == 4
    # the weights' fingerprint is recorded, and resume says when finished runs used other weights
    from mdtools.sweep import weights_fingerprint

    fp = weights_fingerprint(saved_sd_dir)
    assert fp and len(fp) == 16 and all(rec["provenance"]["weights_fingerprint"] == fp for rec in recs.values())
    path = out / "runs" / f"{r['run_id']}.json"
    changed = json.loads(path.read_text())
    changed["provenance"]["weights_fingerprint"] = "0" * 16
    path.write_text(json.dumps(changed))
    lines: list[str] = []
    execute(exp, out, progress=False, log=lines.append)
    assert any("1 finished run(s)" in x and "other weights" in x for x in lines), lines
    assert json.loads(path.read_text())["provenance"]["weights_fingerprint"] == "0" * 16  # kept, not re-run


def test_weights_fingerprint_follows_the_weight_files(tmp_path):
    from mdtools.sweep import weights_fingerprint

    (tmp_path / "unet").mkdir()
    w = tmp_path / "unet" / "model.safetensors"
    w.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: first and last MiB are read
    (tmp_path / "model_index.json").write_text("{}")
    a = weights_fingerprint(tmp_path)
    assert a == weights_fingerprint(tmp_path) and weights_fingerprint(w) is not None
    data = bytearray(w.read_bytes())
    data[-10] ^= 1  # a change in the last MiB
    w.write_bytes(bytes(data))
    b = weights_fingerprint(tmp_path)
    assert b != a
    (tmp_path / "model_index.json").write_text('{"x": 1}')  # configs are not weights
    assert weights_fingerprint(tmp_path) == b
    assert weights_fingerprint(tmp_path / "missing") is None and weights_fingerprint("org/hub-id") is None


def test_failures_become_rows_and_the_sweep_goes_on(tmp_path, saved_sd_dir, monkeypatch):
    from mdtools.sweep import run

    exp = load_experiment(write_exp(tmp_path, saved_sd_dir))
    real = run.run_one
    calls = {"n": 0}

    def flaky(md, cfg, images_dir, state_dir=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if calls["n"] == 2:
            orig = md.pipe.unet.forward

            def nan_forward(*a, **k):
                out = orig(*a, **k)
                return (out[0] * float("nan"),)

            md.pipe.unet.forward = nan_forward
            try:
                return real(md, cfg, images_dir, state_dir)
            finally:
                md.pipe.unet.forward = orig
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(md, cfg, images_dir, state_dir)

    monkeypatch.setattr(run, "run_one", flaky)
    df = execute(exp, tmp_path / "res", progress=False, log=lambda s: None)
    assert sorted(df["status"]) == ["failed", "nan", "ok", "oom"]
    assert df.loc[df["status"] == "oom", "error"].item().startswith("OutOfMemoryError: CUDA out of memory")
    assert df.loc[df["status"] == "failed", "error"].item() == "RuntimeError: boom"
    # failed runs are finished runs: a plain re-run skips them, --retry-failed runs them again
    monkeypatch.setattr(run, "run_one", real)
    assert len(execute(exp, tmp_path / "res", progress=False, log=lambda s: None)) == 4
    df = execute(exp, tmp_path / "res", retry_failed=True, progress=False, log=lambda s: None)
    assert set(df["status"]) == {"ok"}


@pytest.mark.parametrize("crash_at", ["image", "record"])
def test_crash_while_writing_loses_nothing(tmp_path, saved_sd_dir, monkeypatch, crash_at):
    """An exception inside the atomic write of the 2nd run (image or record) is fatal for
    that process; a re-run completes everything with no duplicate and no corrupt file."""
    from mdtools.sweep import records

    exp = load_experiment(write_exp(tmp_path, saved_sd_dir))
    out = tmp_path / "res"
    real_replace = os.replace
    seen = {"n": 0}

    def crashing_replace(src, dst):
        if str(dst).endswith(".png" if crash_at == "image" else ".json") and "runs.parquet" not in str(dst):
            seen["n"] += 1
            if seen["n"] == 2:
                raise KeyboardInterrupt("simulated kill")
        return real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        execute(exp, out, progress=False, log=lambda s: None)
    monkeypatch.setattr(records.os, "replace", real_replace)
    assert len(load_records(out)) == 1
    df = execute(exp, out, progress=False, log=lambda s: None)
    assert len(df) == 4 and df["run_id"].is_unique and set(df["status"]) == {"ok"}


def test_sigkill_mid_sweep_then_rerun(tmp_path, saved_sd_dir):
    exp_path = write_exp(tmp_path, saved_sd_dir, seeds=[0, 1, 2])
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mdtools", "run", str(exp_path), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(load_records(out))
    assert 2 <= n_before < 6, "the kill should land mid-sweep"
    for p in (out / "runs").glob("*.json"):
        json.loads(p.read_text())  # every visible record is complete
    df = execute(load_experiment(exp_path), out, progress=False, log=lambda s: None)
    assert len(df) == 6 and df["run_id"].is_unique and set(df["status"]) == {"ok"}
    assert len(list((out / "runs").glob("*.json"))) == 6


def test_report_writes_summary_and_plots(tmp_path, saved_sd_dir):
    from mdtools.analysis.report import report

    exp = load_experiment(write_exp(tmp_path, saved_sd_dir, sweep={"tiling.kernel": ["uniform", "gaussian"],
                                                                    "tiling.overlap": [0, 32]}, seeds=[0]))
    out = tmp_path / "res"
    execute(exp, out, progress=False, log=lambda s: None)
    summary, plots = report(out)
    assert len(summary) == 4 and "metric.seam_score.mean" in summary.columns
    names = {p.stem for p in plots}
    assert {"seam_vs_overlap", "cost_vs_overlap", "frontier", "disagreement_per_step", "seam_crops"} <= names
    assert all(p.stat().st_size > 1000 for p in plots)
    assert (out / "summary.csv").exists()
    build_table(out)  # idempotent


def synthetic_runs(seeds=range(5)) -> pd.DataFrame:
    """A small runs table as the runner writes it (two swept keys, seeds), with one failed run and one NaN metric."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [{"status": "ok", "swept": json.dumps(["tiling.kernel", "tiling.overlap", "seed"]), "tiling.kernel": k,
             "tiling.overlap": o, "seed": s, "metric.seam_structure": 1 + o / 100 + rng.normal(0, 0.1),
             "count.model_evaluations": 600 + 10 * o, "time.denoise": 2 + rng.normal(0, 0.1), "time.total": 3 + rng.normal(0, 0.1)}
            for k in ("uniform", "gaussian") for o in (16, 32) for s in seeds]
    rows[0]["metric.seam_structure"] = float("nan")
    rows[1]["status"] = "failed"
    return pd.DataFrame(rows)


def test_summary_gives_n_and_bootstrap_intervals_of_the_main_figures():
    from mdtools.analysis.tables import summarize
    from mdtools.stats import bootstrap_ci

    df = synthetic_runs()
    s = summarize(df, n_boot=2000).set_index(["tiling.kernel", "tiling.overlap"])
    assert {"ok", "failed", "metric.seam_structure.mean", "metric.seam_structure.std", "time.total.std"} <= set(s.columns)
    assert "count.model_evaluations.ci_lo" not in s.columns  # fixed by the plan: mean and std only
    ok = df[df["status"] == "ok"]
    for (k, o), r in s.iterrows():
        for col in ("metric.seam_structure", "time.total"):
            ref = bootstrap_ci(ok[(ok["tiling.kernel"] == k) & (ok["tiling.overlap"] == o)][col], n_boot=2000)
            assert r[f"{col}.n"] == ref.n
            assert (r[f"{col}.mean"], r[f"{col}.ci_lo"], r[f"{col}.ci_hi"]) == pytest.approx((ref.estimate, ref.lo, ref.hi), rel=1e-12)
    assert s.loc[("uniform", 16), "metric.seam_structure.n"] == 3  # one failed run, one NaN
    assert s.loc[("uniform", 16), "time.total.n"] == 4 and s.loc[("gaussian", 32), "time.total.n"] == 5
    failed = synthetic_runs().assign(status="failed")
    assert summarize(failed)[["tiling.kernel", "tiling.overlap", "failed"]].values.tolist() == [
        ["gaussian", 16, 5], ["gaussian", 32, 5], ["uniform", 16, 5], ["uniform", 32, 5]]


def test_plots_show_the_bootstrap_interval_and_n():
    import matplotlib

    matplotlib.use("Agg")
    from mdtools.analysis import plots
    from mdtools.stats import bootstrap_ci

    df = synthetic_runs()
    ax = plots.seam_vs_overlap(df).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["gaussian (n=5)", "uniform (n=3-5)"] and "95% bootstrap interval" in ax.get_title()
    ok = plots.ok_runs(df)
    ref = bootstrap_ci(ok[(ok["tiling.kernel"] == "uniform") & (ok["tiling.overlap"] == 16)]["metric.seam_structure"])
    uniform_bars = ax.containers[1].lines[2][0].get_segments()  # errorbar container: (line, caps, bars)
    assert uniform_bars[0][:, 1] == pytest.approx([ref.lo, ref.hi], rel=1e-12)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "experiments" / "gpu").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_experiment_files_validate(path, monkeypatch):
    """Every shipped experiment validates as it is. GPU siblings use SyncDiffusion's official LPIPS(VGG16),
    whose ImageNet weights a GPU user places in torch's hub cache; here a stand-in loss takes its place."""
    import mdtools.methods.syncdiffusion as sync

    monkeypatch.setattr(sync, "_lpips_pretrained", sync._mse)
    monkeypatch.setattr(sync, "_NAMED", {})
    exp = load_experiment(path)
    assert exp.runs and len({r.run_id() for r in exp.runs}) == len(exp.runs)
