"""The ComfyUI node pack (mdtools.comfy) against the stand-in of tests/comfy_standin.py (no ComfyUI in CI).

The real-ComfyUI checks are in tests/test_comfy_real.py (opt-in, COMFYUI_DIR).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mdtools import plan_views
from mdtools.comfy import MultiDiffusionPatch, PatchSettings
from mdtools.comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from mdtools.errors import ConfigError

from . import comfy_standin as cs


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    cs.install(monkeypatch, tmp_path)
    return tmp_path


def _conds(ctx_dim: int = 8, concat: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(1)
    pos = {"c_crossattn": torch.randn(1, 3, ctx_dim, generator=g)}
    neg = {"c_crossattn": torch.zeros(1, 3, ctx_dim)}
    if concat is not None:
        pos["c_concat"] = neg["c_concat"] = concat
    return pos, neg


def _sample(patcher, shape=(1, 4, 16, 16), steps=3, seed=0, **kw):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    pos, neg = _conds(**kw)
    return cs.sample(patcher, noise, cs.karras_sigmas(steps), pos, neg, cfg=5.0)


def _patched(patcher, **settings):
    return cs.run_node(NODE_CLASS_MAPPINGS["MultiDiffusionModel_mdtools"], model=patcher, **{
        "method": "multidiffusion", "window": 64, "overlap": 32, "kernel": "auto", "view_batch_size": 2, **settings})[0]


def test_schema_and_no_comfy_import():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    for cls in NODE_CLASS_MAPPINGS.values():
        cs.check_node_class(cls)
    # importing the pack (and its custom-node entry) must not import ComfyUI
    code = ("import sys, mdtools, mdtools.comfy.nodes, mdtools.comfy.custom_node as e; "
            "assert e.NODE_CLASS_MAPPINGS; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("legacy", [False, True])
def test_one_view_equals_plain_sampling(comfy, legacy):
    """A window covering the canvas: with the uniform kernel the patched model samples bit for
    bit like the plain one; with a Gaussian kernel each call is (w * D) * (1 / w), equal to D
    up to float rounding."""
    model = cs.ToyModel()
    base = (cs.LegacyModelPatcher if legacy else cs.ModelPatcher)(model)
    plain = _sample(base)
    assert torch.equal(_sample(_patched(base, window=128, overlap=0, kernel="uniform")), plain)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    pos, neg = _conds()
    sig = cs.karras_sigmas(3)
    one = cs.calc_cond_batch(base, [pos, neg], x, sig[1], sig)
    gauss = cs.calc_cond_batch(_patched(base, window=128, overlap=0), [pos, neg], x, sig[1], sig)
    for a, b in zip(one, gauss):
        assert (a - b).abs().max() <= 1e-6 * a.abs().max()
    # the patch lives on the clone: the model it came from is untouched
    assert "model_function_wrapper" not in base.model_options and not getattr(base, "wrappers", {})
    assert torch.equal(_sample(base), plain)


def _reference_eq5(model, x, t, pos, neg, window_lat, overlap_lat, concat=None):
    """Eq. 5 by hand: slice every view, run the model on it, weight with the Gaussian kernel
    exp(-u^2 / (2 (0.25 L)^2)) (u from (L - 1) / 2), divide by the summed weights."""
    plan = plan_views(x.shape[-2] * 8, x.shape[-1] * 8, window=window_lat * 8, overlap=overlap_lat * 8)
    ctx = torch.cat([pos["c_crossattn"], neg["c_crossattn"]])
    xx = torch.cat([x, x])
    num = torch.zeros_like(xx, dtype=torch.float64)
    den = torch.zeros(x.shape[-2:], dtype=torch.float64)
    for v in plan.views:
        sl = (slice(None), slice(None), slice(v.top, v.top + v.height), slice(v.left, v.left + v.width))
        uy = np.arange(v.height) - (v.height - 1) / 2
        ux = np.arange(v.width) - (v.width - 1) / 2
        w = torch.as_tensor(np.outer(np.exp(-uy**2 / (2 * (0.25 * v.height) ** 2)), np.exp(-ux**2 / (2 * (0.25 * v.width) ** 2))))
        cc = None if concat is None else torch.cat([concat, concat])[sl]
        pred = model._apply_model(xx[sl], t.expand(2), cc, ctx)
        num[sl] += pred.double() * w
        den[sl[2:]] += w
    return (num / den).float().chunk(2)


@pytest.mark.parametrize("legacy", [False, True])
def test_views_fuse_as_eq5(comfy, legacy):
    """Several views: the patched call equals Eq. 5 computed by hand; crops of spatial
    conditioning (c_concat) follow their views; view batches of 2 views x (cond, uncond)."""
    concat = torch.randn(1, 1, 16, 24, generator=torch.Generator().manual_seed(3))
    model = cs.ToyModel(concat_channels=1)
    base = (cs.LegacyModelPatcher if legacy else cs.ModelPatcher)(model)
    patched = _patched(base)  # 64 px window (8 latent), 32 px overlap: 3 x 5 views on 16 x 24
    x = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(2))
    pos, neg = _conds(concat=concat)
    t = torch.tensor([3.0])
    model.calls.clear()
    got = cs.calc_cond_batch(patched, [pos, neg], x, t, cs.karras_sigmas(4))
    assert model.calls[0] == (4, 5, 8, 8)  # 2 views x (cond, uncond), 4 + 1 concat channels, 8 x 8 latent window
    assert sum(c[0] for c in model.calls) == 2 * 15
    want = _reference_eq5(model, x, t, pos, neg, 8, 4, concat)
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g - w).abs().max() < 1e-5


def test_chaining_and_replacing(comfy):
    """Other APPLY_MODEL wrappers still run (per crop); a second MultiDiffusion node replaces
    the first; a legacy model_function_wrapper already present is kept and called per crop."""
    model = cs.ToyModel()
    base = cs.ModelPatcher(model)
    seen: list[tuple[int, ...]] = []

    def other(executor, x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return executor(x, *args, **kwargs)

    base.add_wrapper_with_key(cs.APPLY_MODEL, "other", other)
    once = _patched(base)
    twice = _patched(once, window=128, overlap=0, kernel="uniform")
    assert len(twice.get_wrappers(cs.APPLY_MODEL, "mdtools.multidiffusion")) == 1
    _sample(twice, steps=1)
    assert seen == [(2, 4, 16, 16)]  # one view: the other wrapper sees the (cond, uncond) canvas

    legacy = cs.LegacyModelPatcher(model)
    legacy_seen: list[int] = []

    def previous(apply_model, args):
        legacy_seen.append(args["input"].shape[0])
        assert len(args["cond_or_uncond"]) == args["input"].shape[0]  # chunks line up with the view batch
        return apply_model(args["input"], args["timestep"], **args["c"])

    legacy.set_model_unet_function_wrapper(previous)
    p2 = _patched(_patched(legacy), view_batch_size=3)
    _sample(p2, shape=(1, 4, 8, 16), steps=1)  # 1 x 3 views: one batch of 3 views x 2 chunks
    assert legacy_seen == [6]


def test_spotdiffusion_shifts_per_step(comfy):
    base = cs.ModelPatcher(cs.ToyModel())
    with pytest.raises(ConfigError, match="overlap must be 0"):
        _patched(base, method="spotdiffusion")
    a = _sample(_patched(base, method="spotdiffusion", overlap=0, seed=1), shape=(1, 4, 8, 16))
    b = _sample(_patched(base, method="spotdiffusion", overlap=0, seed=1), shape=(1, 4, 8, 16))
    c = _sample(_patched(base, method="spotdiffusion", overlap=0, seed=2), shape=(1, 4, 8, 16))
    assert torch.equal(a, b) and not torch.equal(a, c)
    p = MultiDiffusionPatch(PatchSettings(method="spotdiffusion", window=64, overlap=0, seed=1))
    sig = cs.karras_sigmas(3)
    assert [p.step_index(s, sig) for s in sig[:-1]] == [0, 1, 2]
    assert p.step_index((sig[0] + sig[1]) / 2, sig) == 0  # a 2nd-order sampler's midpoint belongs to step 0


@pytest.mark.parametrize("settings, match", [
    (dict(window=100), "window=100 is not a multiple"),
    (dict(overlap=64), "must be smaller than window"),
    (dict(method="mixture", kernel="gaussian"), "own Gaussian tile weights"),
])
def test_bad_settings(comfy, settings, match):
    with pytest.raises(ConfigError, match=match):
        _patched(cs.ModelPatcher(cs.ToyModel()), **settings)


def test_bad_graph_values_and_controlnet(comfy):
    base = cs.ModelPatcher(cs.ToyModel())
    with pytest.raises(cs.ValidationError, match="value_not_in_list: method"):
        _patched(base, method="syncdiffusion")  # needs the whole pipeline: the Generate node
    patched = _patched(base)
    with pytest.raises(ConfigError, match="ControlNet"):
        patched.model.apply_model(torch.zeros(1, 4, 8, 8), torch.ones(1), None, torch.zeros(1, 3, 8), control={"x": 1},
                                  transformer_options={"wrappers": patched.wrappers})


# ---------------------------------------------------------------- seam metrics, run record, pipeline nodes
def _texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB texture (B=1, H, W, 3) in [0, 1]: noise blurred by a box filter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, h + 6, w + 6, generator=g), 7, stride=1)
    return (0.25 + 0.5 * x).permute(0, 2, 3, 1).contiguous()


def test_seam_metrics_node(comfy):
    node = NODE_CLASS_MAPPINGS["SeamMetrics_mdtools"]
    clean = _texture(64, 192)
    plan = plan_views(64, 192, window=64, overlap=32)
    s = plan.seam_lines["x"][1]
    seamed = clean.clone()
    seamed[:, :, s:] += 0.08  # a tile offset starting at one of the plan's seam lines
    args = dict(window=64, overlap=32, metrics="seam_score, seam_structure", filename_prefix="mdtools/seams")
    text_c, heat_c = cs.run_node(node, images=clean, **args)
    text_s, heat_s = cs.run_node(node, images=seamed, **args)
    assert "seam_score = " in text_s and "seam_structure = " in text_s and f"{plan.n_views} views" in text_s
    value = {t: float(line.split("= ")[1]) for t, line in (("c", text_c.splitlines()[1]), ("s", text_s.splitlines()[1]))}
    assert value["s"] > 1.5 * value["c"]
    assert heat_s.shape == (1, 64, 192, 3) and 0 <= float(heat_s.min()) and float(heat_s.max()) <= 1
    col = heat_s[0, 8:-8].sum(-1).mean(0)  # away from the border ticks
    assert int(col.argmax()) == s and col[s] > 3 * col.median()
    import json

    files = sorted((comfy / "mdtools").glob("seams_*.json"))
    assert len(files) == 2
    data = json.loads(files[1].read_text())
    assert data["plan"]["n_views"] == plan.n_views and data["images"][0]["seam_score"]["value"] == pytest.approx(value["s"], rel=1e-3)
    with pytest.raises(ConfigError, match="unknown name"):
        cs.run_node(node, images=clean, **{**args, "metrics": "seam_scor"})
    with pytest.raises(ConfigError, match="need a reference"):
        cs.run_node(node, images=clean, **{**args, "metrics": "psnr"})


class _StandinVAE:
    """ComfyUI's VAE as the record sees it: decode(LATENT samples) -> IMAGE."""

    def __init__(self):
        self.first_stage_model = torch.nn.Identity()

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.nn.functional.interpolate(samples[:, :3], scale_factor=8)).permute(0, 2, 3, 1)


def test_run_record_and_save(comfy):
    import json

    base = cs.ModelPatcher(cs.ToyModel())
    md = _patched(base)
    vae = _StandinVAE()
    model, rvae, rec = cs.run_node(NODE_CLASS_MAPPINGS["RunRecord_mdtools"], model=md, vae=vae, label="test")
    lat = _sample(model, shape=(1, 4, 8, 16), steps=2)
    img = rvae.decode(lat)
    assert not hasattr(vae, "mdtools_record") and vae.decode is not rvae.decode  # the VAE it came from is untouched
    (text,) = cs.run_node(NODE_CLASS_MAPPINGS["SaveImageRecord_mdtools"], images=img, record=rec,
                          filename_prefix="runs/r")
    d = json.loads(text)
    assert set(d["phases"]) >= {"sampling", "denoise", "vae_decode"}
    assert d["phases"]["denoise"]["seconds"] <= d["phases"]["sampling"]["seconds"]
    # placed after the MultiDiffusion node: every view batch is counted (1 x 3 views, 2 per call, 2 steps)
    assert d["counts"] == {"model_calls": 2 * 2, "model_evaluations": 2 * 3 * 2}
    assert d["extra"]["multidiffusion"]["method"]["name"] == "multidiffusion" and d["label"] == "test"
    png, side = comfy / "runs" / "r_00001_.png", comfy / "runs" / "r_00001_.json"
    assert png.exists() and json.loads(side.read_text())["counts"] == d["counts"]
    with pytest.raises(ConfigError, match="wrapper API"):
        cs.run_node(NODE_CLASS_MAPPINGS["RunRecord_mdtools"], model=cs.LegacyModelPatcher(cs.ToyModel()), vae=vae,
                    label="")


def test_pipeline_nodes(comfy, saved_sd_dir):
    """Load Pipeline (a diffusers folder; "toy" runs in tests/test_comfy_real.py) -> Generate -> IMAGE."""
    import json

    load, gen = NODE_CLASS_MAPPINGS["LoadPipeline_mdtools"], NODE_CLASS_MAPPINGS["Generate_mdtools"]
    with pytest.raises(ConfigError, match="does not exist"):
        cs.run_node(load, model="/no/such/folder", device="cpu", dtype="float32")
    (pipe,) = cs.run_node(load, model=str(saved_sd_dir), device="cpu", dtype="float32")
    args = dict(pipe=pipe, prompt="a beach", negative_prompt="", width=128, height=64, window=0, overlap=32,
                method="multidiffusion", kernel="auto", steps=2, guidance=3.0, seed=0)
    with pytest.raises(ConfigError, match="method_params is not valid JSON"):
        cs.run_node(gen, **args, method_params="{sync_steps: 1}")
    images, rec = cs.run_node(gen, **args, scheduler="euler")
    assert images.shape == (1, 64, 128, 3) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and float(images.std()) > 0.001
    r = json.loads(rec)
    assert r["plan"]["n_views"] == 3 and "denoise" in r["phases"] and r["extra"]["scheduler"] == "EulerDiscreteScheduler"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the scheduler choice was for that call only
    # ComfyUI's own progress bar moved every step, with the canvas preview in ComfyUI's format
    ups = cs.ProgressBar.updates[-2:]
    assert [(v, t) for v, t, _ in ups] == [(1, 2), (2, 2)]
    fmt, img, side = ups[-1][2]
    assert fmt == "JPEG" and img.size == (128, 64) and side == 1024


def test_comfy_install(tmp_path, capsys):
    from mdtools.comfy.install import ENTRY_DIR, main

    root = tmp_path / "ComfyUI"
    assert main(["--comfyui", str(root)]) == 2 and "is not a ComfyUI folder" in capsys.readouterr().err
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("")
    assert main(["--comfyui", str(root)]) == 0
    link = root / "custom_nodes" / "comfyui-mdtools"
    assert link.is_symlink() and link.resolve() == ENTRY_DIR and (link / "__init__.py").is_file()
    assert main(["--comfyui", str(root)]) == 0  # already linked: unchanged
    assert main(["--comfyui", str(root), "--copy"]) == 2 and "--force" in capsys.readouterr().err
    assert main(["--comfyui", str(root), "--copy", "--force", "--python", sys.executable]) == 0
    assert link.is_dir() and not link.is_symlink() and "imports mdtools" in capsys.readouterr().out
    (root / "custom_nodes" / "other").mkdir()
    assert main(["--comfyui", str(root), "--name", "other"]) == 2 and "not the mdtools pack" in capsys.readouterr().err


# ---------------------------------------------------------------- exact tiled VAE on the LDM layout
@pytest.fixture(scope="module")
def ldm_vae():
    from .ldm_vae import tiny_ldm_vae

    return tiny_ldm_vae(seed=0)


def test_exact_tiled_vae_nodes(comfy, ldm_vae):
    """VAE Decode / Encode (mdtools, exact tiled) on an LDM-layout VAE (2 x 2 tiles) equal the
    ComfyUI VAE's one-piece decode / encode to float noise when every tile's halo reaches
    over the canvas: the node's layouts (LATENT in, process_output, (B, H, W, C) out; crop,
    process_input, posterior mode) match ComfyUI's. How the error grows with a shorter halo,
    and what synchronisation removes, is tests/test_vae_ldm.py's subject."""
    from mdtools.comfy.vae_nodes import decode

    vae = cs.VAE(ldm_vae)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    node = NODE_CLASS_MAPPINGS["VAEDecodeTiled_mdtools"]
    tiled, report = decode(vae, {"samples": z}, tile=40, overlap=8, halo=64)
    assert tiled.shape == full.shape == (1, 64, 64, 3) and (tiled - full).abs().max() < 1e-5
    assert report["n_tiles"] == 4 and report["layout"] == "ldm"
    on_disk, rep = decode(vae, {"samples": z}, tile=40, overlap=8, halo=64, park="disk")
    assert rep["park"] == "disk" and (on_disk - tiled).abs().max() < 1e-5
    with pytest.raises(ConfigError, match=r"park='ram' is not valid; choose one of \['cpu', 'disk'\]"):
        decode(vae, {"samples": z}, tile=40, park="ram")
    img = torch.nn.functional.pad(full.movedim(-1, 1), (2, 2, 2, 2)).movedim(1, -1)  # 68 px: cropped to 64, centred
    (lat,) = cs.run_node(NODE_CLASS_MAPPINGS["VAEEncodeTiled_mdtools"], pixels=img, vae=vae, tile_size=40,
                         overlap=8, sync_strategy="park", halo=64)
    ref = vae.encode(img)
    assert lat["samples"].shape == ref.shape == (1, 4, 8, 8) and (lat["samples"] - ref).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="first_stage_model"):
        cs.run_node(node, samples={"samples": z}, vae=object(), tile_size=64, overlap=16, sync_strategy="auto")
    with pytest.raises(ConfigError, match="video latents"):
        cs.run_node(node, samples={"samples": z[:, :, None]}, vae=vae, tile_size=64, overlap=16, sync_strategy="auto")


def test_example_workflows():
    """docs/comfyui/*.json: every mdtools node's inputs pass ComfyUI's validation; in the UI
    files, links join existing slots and widget values line up with the node's widgets."""
    import json
    from pathlib import Path

    root = Path(__file__).parents[1] / "docs" / "comfyui"
    names = sorted(p.name[: -len(".api.json")] for p in root.glob("*.api.json"))
    assert names == ["panorama_4k", "seam_metrics", "toy", "upscale"]
    for name in names:
        api = json.loads((root / f"{name}.api.json").read_text())
        for key, node in api.items():
            for v in node["inputs"].values():
                if isinstance(v, list):
                    assert v[0] in api, (name, key, v)
            if node["class_type"] in NODE_CLASS_MAPPINGS:
                cs.validate_inputs(NODE_CLASS_MAPPINGS[node["class_type"]], node["inputs"])
        ui = json.loads((root / f"{name}.ui.json").read_text())
        nodes = {n["id"]: n for n in ui["nodes"]}
        assert sorted(n["type"] for n in nodes.values()) == sorted(n["class_type"] for n in api.values())
        for lid, src, slot, dst, dslot, kind in ui["links"]:
            assert nodes[src]["outputs"][slot]["type"] == kind == nodes[dst]["inputs"][dslot]["type"]
            assert lid in nodes[src]["outputs"][slot]["links"] and nodes[dst]["inputs"][dslot]["link"] == lid
        for n in nodes.values():
            cls = NODE_CLASS_MAPPINGS.get(n["type"])
            if cls is None:
                continue
            it = cls.INPUT_TYPES()
            specs = [s for cat in ("required", "optional") for s in it.get(cat, {}).values()]
            widgets = [s for s in specs if isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")]
            extra = sum(bool(len(s) > 1 and s[1].get("control_after_generate")) for s in widgets)
            assert len(n["widgets_values"]) == len(widgets) + extra, (name, n["type"])
