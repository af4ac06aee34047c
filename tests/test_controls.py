"""Control runs of experiment files (diffusers_default, single_window) and the global pass's tiled-stage method."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from mdtools import ConfigError, MultiDiffusionPipeline
from mdtools.sweep import RunConfig, execute, load_experiment
from mdtools.sweep.config import CONTROLS, one_pass_evaluations
from mdtools.sweep.estimate import estimate_work

from .conftest import make_sd_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny CPU work: one thread is faster (conftest)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of a beach"


def write(tmp_path: Path, model: Path, **spec) -> Path:
    base = {"model": str(model), "prompt": "grass", "sampler": {"steps": 2, "guidance": 5.0}, "metrics": ["tv"],
            "tiling": {"overlap": 32, "kernel": "gaussian"}, "device": "cpu"}
    base.update(spec.pop("base", {}))
    doc = {"name": "ctl", "base": base, **spec}
    p = tmp_path / "ctl.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


# ---- experiment files ----------------------------------------------------------------------------

def test_controls_expand_per_canvas_seed_and_prompt(tmp_path, saved_sd_dir):
    spec = dict(sweep={"canvas": [{"height": 64, "width": 256}, {"height": 64, "width": 128}],
                       "prompt": ["grass", "sky"]},
                zip=[{"method": [{"name": "multidiffusion"}, {"name": "spotdiffusion"}], "tiling.overlap": [32, 0]}],
                seeds=[0, 1, 2])
    plain = load_experiment(write(tmp_path, saved_sd_dir, **spec))
    exp = load_experiment(write(tmp_path, saved_sd_dir, controls=list(CONTROLS), **spec))
    ordinary = [r for r in exp.runs if not r.control]
    # ordinary runs are the same runs, with the same ids, as without controls
    assert [r.run_id() for r in ordinary] == [r.run_id() for r in plain.runs] and len(ordinary) == 2 * 2 * 2 * 3
    assert Counter(r.control for r in exp.runs) == {"": 24, "diffusers_default": 2 * 2 * 3, "single_window": 2 * 3}
    assert len({r.run_id() for r in exp.runs}) == len(exp.runs) and "control" in exp.swept_keys
    dd = [r for r in exp.runs if r.control == "diffusers_default"]
    # the tiny model's window is 64 px: stride window / 8 = 8 px, overlap 56, uniform kernel
    assert {(r.method.name, r.tiling.kernel, r.tiling.overlap) for r in dd} == {("multidiffusion", "uniform", 56)}
    assert {(r.canvas.height, r.canvas.width, r.prompt, r.seed) for r in dd} == {
        (64, w, p, s) for w in (256, 128) for p in ("grass", "sky") for s in (0, 1, 2)}
    sw = [r for r in exp.runs if r.control == "single_window"]
    assert {(r.canvas.height, r.canvas.width, r.method.name, r.tiling.overlap) for r in sw} == {(64, 64, "multidiffusion", 32)}
    assert {(r.prompt, r.seed) for r in sw} == {(p, s) for p in ("grass", "sky") for s in (0, 1, 2)}
    # everything else is the base's
    assert {(r.sampler.steps, r.sampler.guidance, tuple(r.metrics)) for r in dd + sw} == {(2, 5.0, ("tv",))}


def test_control_field_keeps_old_run_ids():
    """Records committed before `control` existed keep their ids (the field is out of the hash while "")."""
    recs = sorted((ROOT / "results" / "methods" / "runs").glob("*.json")) + sorted(
        (ROOT / "results" / "coherence" / "runs").glob("*.json"))
    assert len(recs) >= 100
    plain = 0
    for p in recs:
        rec = json.loads(p.read_text())
        cfg = RunConfig.model_validate(rec["config"])
        assert cfg.run_id() == rec["run_id"], p.name  # every record, control or not, re-hashes to its id
        if cfg.control == "":
            plain += 1
            old = {k: v for k, v in rec["config"].items() if k != "control"}  # as written before `control` existed
            assert RunConfig.model_validate(old).run_id() == rec["run_id"], p.name
            last = cfg
    assert plain >= 100
    assert last.model_copy(update={"control": "single_window"}).run_id() != last.run_id()


@pytest.mark.parametrize("controls, message", [
    (["diffusers"], "controls: unknown ['diffusers']; valid values: ['diffusers_default', 'single_window']"),
    ("single_window", "controls: must be a list of control names"),
    (["single_window", "single_window"], "controls: each control at most once"),
])
def test_bad_controls_name_the_field_and_the_valid_values(tmp_path, saved_sd_dir, controls, message):
    with pytest.raises(ConfigError) as e:
        load_experiment(write(tmp_path, saved_sd_dir, base={"canvas": {"height": 64, "width": 128}}, controls=controls))
    assert message in str(e.value)


def test_control_is_set_by_the_controls_list_only(tmp_path, saved_sd_dir):
    with pytest.raises(ConfigError, match="control: set by the top-level controls list"):
        load_experiment(write(tmp_path, saved_sd_dir, base={"control": "single_window"}))
    with pytest.raises(ValueError, match="must be one of"):  # pydantic, as every RunConfig field
        RunConfig(prompt="grass", control="diffusers")


def test_dry_run_lists_control_rows_and_the_table_has_the_column(tmp_path, saved_sd_dir):
    p = write(tmp_path, saved_sd_dir, base={"canvas": {"height": 64, "width": 128}}, seeds=[0], controls=list(CONTROLS))
    exp = load_experiment(p)
    lines: list[str] = []
    execute(exp, tmp_path / "out", dry_run=True, progress=False, log=lines.append)
    rows = [s for s in lines if s.startswith("  ") and "seed=0" in s]
    assert len(rows) == 3
    assert sum("control=diffusers_default" in s for s in rows) == 1 and sum("control=single_window" in s for s in rows) == 1
    df = execute(exp, tmp_path / "out", progress=False, log=lambda s: None)
    assert (df["status"] == "ok").all()
    assert sorted(df["control"]) == ["", "diffusers_default", "single_window"]
    sw = df[df["control"] == "single_window"].iloc[0]
    assert sw["plan.n_views"] == 1 and (sw["canvas.height"], sw["canvas.width"]) == (64, 64)
    dd = df[df["control"] == "diffusers_default"].iloc[0]
    assert dd["plan.stride_x"] == 1 and dd["tiling.kernel"] == "uniform"  # stride 8 px = 1 latent px
    # the redundancy of every row follows from its columns (evaluations / one non-overlapping pass)
    red = df.apply(lambda r: r["count.model_evaluations"] / one_pass_evaluations(
        r["canvas.height"], r["canvas.width"], (r["plan.window_h"], r["plan.window_w"]), r["sampler.steps"],
        r["sampler.guidance"]), axis=1)
    assert dict(zip(df["control"], red)) == {"": 3 / 2, "diffusers_default": 9 / 2, "single_window": 1.0}


def _shipped(monkeypatch):
    """Validation of shipped files, configs only. toy-scenes-v2 is the lead's model and may not be in the tree
    yet: its name then maps to toy-scenes' configs (no weights load)."""
    import mdtools.methods.syncdiffusion as sync
    import mdtools.toy as toy

    if "toy-scenes-v2" not in toy.EMBEDDED_MODELS:
        monkeypatch.setitem(toy.EMBEDDED_MODELS, "toy-scenes-v2", toy.EMBEDDED_MODELS["toy-scenes"])
    monkeypatch.setattr(sync, "_lpips_pretrained", sync._mse)  # the GPU siblings' official LPIPS, as test_experiments
    monkeypatch.setattr(sync, "_NAMED", {})


@pytest.mark.parametrize("name", ["coherence.yaml", "methods.yaml", "frontier_scenes.yaml", "gpu/coherence_sd21.yaml",
                                  "gpu/methods_sd21.yaml"])
def test_shipped_experiments_hold_both_controls(monkeypatch, name):
    _shipped(monkeypatch)
    exp = load_experiment(ROOT / "experiments" / name)
    assert exp.controls == list(CONTROLS)
    ordinary = [r for r in exp.runs if not r.control]
    canvases = {r.canvas.resolve(8) for r in ordinary}
    pairs = {(r.seed, r.prompt) for r in ordinary}
    got = Counter(r.control for r in exp.runs)
    assert got["diffusers_default"] == len(canvases) * len(pairs) and got["single_window"] == len(pairs)


def test_frontier_scenes_settings_are_at_most_1_25_redundant(monkeypatch):
    _shipped(monkeypatch)
    exp = load_experiment(ROOT / "experiments" / "frontier_scenes.yaml")
    assert len(exp.runs) <= 60 and {r.model for r in exp.runs} == {"toy-scenes-v2"}
    red = {}
    for r in exp.runs:
        ev = estimate_work(r, 8, 128, None)["unet_evaluations"]
        key = (r.control, r.method.name, tuple(sorted(r.method.params().items())), r.tiling.overlap)
        red[key] = ev / one_pass_evaluations(*r.canvas.resolve(8), 128, r.sampler.steps, r.sampler.guidance)
    refs = {k: v for k, v in red.items() if k[0] or (k[1] == "multidiffusion" and k[3] == 64)}
    assert sorted(refs.values()) == [1.0, 1.75, 6.25]  # single window, overlap 64, diffusers default
    moonshot = [v for k, v in red.items() if k not in refs]
    assert len(moonshot) == 7 and max(moonshot) <= 1.25
    assert red[("", "global_pass", (("factor", 4), ("strength", 0.6), ("tiled_method", "spotdiffusion")), 0)] == 102 / 120


# ---- the global pass's tiled stage ---------------------------------------------------------------

@pytest.fixture(scope="module")
def md():
    return MultiDiffusionPipeline.from_pipe(make_sd_pipe())


def _ddim(md, steps):
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(md.scheduler.config)
    s.set_timesteps(steps)
    return s


def _cfg_eps(md, x, t, g):
    pos, neg = md.pipe.encode_prompt(PROMPT, "cpu", 1, True, None)
    n = x.shape[0]
    e = torch.cat([neg.repeat(n, 1, 1), pos.repeat(n, 1, 1)])
    u, c = md.unet(torch.cat([x, x]), t, encoder_hidden_states=e).sample.chunk(2)
    return u + g * (c - u)


def ref_tiled_stage(md, low, seed, steps, strength, g, shifts, window=8):
    """The tiled stage written from the algorithm: the low-res latent upscaled (bicubic), noised
    to `strength` with the run's second noise draw, then per step the canvas rolled by the grid's
    shift, split into non-overlapping windows, each denoised with CFG, rolled back, one DDIM step."""
    H, W = low.shape[-2] * 2, low.shape[-1] * 2
    up = F.interpolate(low.float(), size=(H, W), mode="bicubic", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    torch.randn(tuple(low.shape), generator=gen)  # the low-res pass's noise comes first
    noise = torch.randn((1, 4, H, W), generator=gen)
    sched = _ddim(md, steps)
    n = int(steps * strength)
    ts = sched.timesteps[steps - n:]
    lat = sched.add_noise(up, noise, ts[:1])
    assert len(shifts) == n
    for (dy, dx), t in zip(shifts, ts):
        rolled = torch.roll(lat, (-dy, -dx), dims=(-2, -1))
        eps = torch.cat([_cfg_eps(md, rolled[..., x0:x0 + window], t, g) for x0 in range(0, W, window)], -1)
        lat = sched.step(torch.roll(eps, (dy, dx), dims=(-2, -1)), t, lat).prev_sample
    return lat


def _global(md, params, seed=3, overlap=0):
    md.pipe.scheduler = _ddim(md, 5)
    lows: list[torch.Tensor] = []
    out = md(PROMPT, height=64, width=256, overlap=overlap, num_inference_steps=5, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(seed), method="global_pass", method_params=params,
             output_type="latent", progress=False, callback=lambda i: lows.append(i["latents"].clone()) if i["stage"] == 0 else None)
    return out, lows[-1]


def test_global_pass_default_tiled_stage_is_unchanged(md):
    a, low = _global(md, {"factor": 2, "strength": 0.6})
    b, _ = _global(md, {"factor": 2, "strength": 0.6, "tiled_method": "multidiffusion"})
    assert torch.equal(a.latents, b.latents)
    # at overlap 0 MultiDiffusion's tiled stage is the windows' loop with the grid never shifted
    with torch.no_grad():
        want = ref_tiled_stage(md, low, 3, 5, 0.6, 7.5, [(0, 0)] * 3)
    assert float((a.latents - want).abs().max() / want.abs().max()) <= 1e-4


def test_global_pass_with_spotdiffusion_tiled_stage(md):
    out, low = _global(md, {"factor": 2, "strength": 0.6, "tiled_method": "spotdiffusion"})
    shifts = [tuple(s) for s in out.record.extra["method_draws"]["shifts"]]
    assert any(dx for _, dx in shifts)  # the grid really moved
    with torch.no_grad():
        want = ref_tiled_stage(md, low, 3, 5, 0.6, 7.5, shifts)
    assert float((out.latents - want).abs().max() / want.abs().max()) <= 1e-4
    # every evaluation counted, the low-res pass included: 2 low-res views x 5 steps + 4 windows x 3 steps, CFG 2
    assert out.record.counts["model_evaluations"] == (2 * 5 + 4 * 3) * 2
    assert out.record.extra["global_pass"]["low_res_evaluations"] == 2 * 5 * 2
    cfg = RunConfig(prompt=PROMPT, canvas={"height": 64, "width": 256}, tiling={"overlap": 0, "window": 64},
                    sampler={"steps": 5, "guidance": 7.5},
                    method={"name": "global_pass", "factor": 2, "strength": 0.6, "tiled_method": "spotdiffusion"})
    assert estimate_work(cfg, 8, 64, None)["unet_evaluations"] == out.record.counts["model_evaluations"]


def test_global_pass_tiled_method_is_checked_before_any_compute(md):
    with pytest.raises(ConfigError, match=r"method.tiled_method='spot' is invalid .*'multidiffusion', 'spotdiffusion'"):
        md(PROMPT, height=64, width=256, overlap=0, num_inference_steps=2, method="global_pass",
           method_params={"tiled_method": "spot"}, output_type="latent", progress=False)
    with pytest.raises(ConfigError, match="tiled_method=spotdiffusion: .*overlap must be 0"):
        md(PROMPT, height=64, width=256, overlap=32, num_inference_steps=2, method="global_pass",
           method_params={"tiled_method": "spotdiffusion"}, output_type="latent", progress=False)
