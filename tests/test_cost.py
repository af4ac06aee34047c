"""Cost that does not depend on the machine's load: counts priced by FLOPs, never by seconds.

Model evaluations count 1 each; decodes, loss calls and backward passes are priced by their
floating-point operations (torch.utils.flop_counter, counted once per run) over one model
evaluation's. Two sweeps of the same experiment, one of them while two other processes load
the CPU, give identical cost columns."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from mdtools import MultiDiffusionPipeline
from mdtools.sampling import Cost
from mdtools.sweep import execute, load_experiment


def test_cost_formula_on_counts_and_flops():
    c = Cost(unet_evaluations=10, unet_grad_evaluations=4, vae_decode_calls=2, loss_calls=3, backward_calls=4,
             unet_seconds=99.0, backward_seconds=123.0,
             flops={"unet_evaluation": 100.0, "vae_decode": 50.0, "loss": 10.0, "backward": 300.0})
    assert c.unet_equivalents() == 10 + 4 + 2 * 0.5 + 3 * 0.1 + 4 * 3.0  # no seconds enter
    assert Cost(unet_evaluations=7, unet_seconds=1.23).unet_equivalents() == 7.0
    assert torch.isnan(torch.tensor(Cost(unet_evaluations=7, loss_calls=1).unet_equivalents()))  # unpriced work: NaN
    d = c.to_dict()
    assert d["pricing"] == "flops" and d["flops_backward"] == 300.0


def test_syncdiffusion_flops_are_counted_on_the_run(sd_pipe):
    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    out = md("a photo of a beach", height=64, width=128, window=64, overlap=32, num_inference_steps=3, generator=0,
             method="syncdiffusion", method_params={"loss": "mse", "sync_steps": 2}, output_type="latent", progress=False)
    c = out.record.extra["cost"]
    assert c["flops_unet_evaluation"] > 0 and c["flops_vae_decode"] > 0 and c["flops_backward"] > c["flops_vae_decode"]
    counted = (c["unet_evaluations"] + c["unet_grad_evaluations"] + (c["vae_decode_calls"] * c["flops_vae_decode"]
               + c["loss_calls"] * c["flops_loss"] + c["backward_calls"] * c["flops_backward"]) / c["flops_unet_evaluation"])
    assert c["unet_equivalents"] == pytest.approx(counted, rel=1e-12)


def _spec(tmp_path, model) -> object:
    spec = {"name": "cost", "base": {"model": str(model), "prompt": "a photo of a beach", "canvas": {"height": 64, "width": 128},
                                     "tiling": {"window": 64, "overlap": 32}, "sampler": {"steps": 3, "guidance": 5.0},
                                     "metrics": ["tv"], "output": {"preview_max_side": 64}},
            "sweep": {"method": [{"name": "multidiffusion"},
                                 {"name": "syncdiffusion", "loss": "mse", "sync_steps": 2, "weight": 5.0}]},
            "seeds": [0, 1]}
    p = tmp_path / "cost.yaml"
    p.write_text(yaml.safe_dump(spec))
    return load_experiment(p)


def test_identical_work_identical_cost_under_load(saved_sd_dir, tmp_path):
    exp = _spec(tmp_path, saved_sd_dir)
    quiet = dict(progress=False, log=lambda s: None)
    idle = execute(exp, tmp_path / "idle", **quiet).set_index("run_id")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = execute(exp, tmp_path / "loaded", **quiet).set_index("run_id")
    finally:
        for b in burners:
            b.kill()
    assert len(idle) == 4 and (idle["status"] == "ok").all() and (loaded["status"] == "ok").all()
    cost = "cost.unet_equivalents"
    assert idle[cost].notna().all()
    assert {"prov.load_start", "prov.load_end", "prov.cores", "prov.loaded"} <= set(loaded.columns)  # load on every row
    assert idle[cost].tolist() == loaded.loc[idle.index, cost].tolist()  # identical, not close
    sync = idle[idle["method.name"] == "syncdiffusion"][cost]
    plain = idle[idle["method.name"] == "multidiffusion"][cost]
    assert (sync > plain.max()).all()


def test_region_bootstrapping_prices_its_encodes(sd_pipe):
    """Bootstrapping encodes constant-colour backgrounds before the first fused call: the encodes are
    priced by their FLOPs over a model evaluation's (counted at that first call)."""
    from mdtools import Region

    md = MultiDiffusionPipeline.from_pipe(sd_pipe)
    out = md("a photo of a beach", height=64, width=128, window=64, overlap=32, num_inference_steps=2, generator=0,
             regions=[Region("a red boat", box=(0, 64, 64, 64))], bootstrap_steps=1, output_type="latent", progress=False)
    c = out.record.extra["cost"]
    assert c["vae_encode_calls"] > 0 and c["flops_vae_encode"] > 0 and c["flops_unet_evaluation"] > 0
    assert c["unet_equivalents"] == pytest.approx(
        c["unet_evaluations"] + c["vae_encode_calls"] * c["flops_vae_encode"] / c["flops_unet_evaluation"], rel=1e-12)


def test_plain_runs_count_evaluations_exactly(sd_pipe):
    out = MultiDiffusionPipeline.from_pipe(sd_pipe)("a photo of a beach", height=64, width=128, window=64, overlap=32,
                                                    num_inference_steps=2, generator=0, output_type="latent",
                                                    progress=False)
    c = out.record.extra["cost"]
    assert c["unet_equivalents"] == c["unet_evaluations"] == 3 * 2 * 2  # 3 views, 2 steps, CFG
    assert not any(k.startswith("flops_") for k in c)  # nothing else ran: no FLOP counting, no overhead


def test_time_plots_leave_out_wall_times_taken_under_load():
    import pandas as pd

    from mdtools.analysis.tables import clean_timings

    df = pd.DataFrame({"time.denoise": [1.0, 9.0, 1.1], "prov.loaded": [False, True, None]})
    assert clean_timings(df)["time.denoise"].tolist() == [1.0, 1.1]
    assert len(clean_timings(df.drop(columns="prov.loaded"))) == 3  # tables made before the flag: every row
