"""The node pack in a real ComfyUI (opt-in): set COMFYUI_DIR to a ComfyUI checkout.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python \\
        .venv/bin/python -m pytest -q -s tests/test_comfy_real.py

ComfyUI runs in a subprocess (`main.py --cpu --listen 127.0.0.1`), never inside pytest:
its top-level modules (comfy, nodes, utils, server) collide with ours. COMFYUI_PYTHON is
the Python of ComfyUI's environment (with ComfyUI's requirements and mdtools importable;
default: this Python). A tiny random checkpoint that ComfyUI detects as SD 1.5 (a
one-level 320-channel UNet with 768-wide context and SD's VAE, random weights) is built in
a temporary folder by a script run with that Python; two test-only helper nodes (zero
conditioning, tensors saved as safetensors) are added from that folder through the
`custom_nodes:` key of an extra-model-paths YAML. Checks:
- the pack's nodes are listed by /object_info;
- a bad graph (a method that is not a per-step model wrapper, an unknown node) gets HTTP 400;
- MultiDiffusion (mdtools) with one view covering the canvas (uniform kernel) gives the
  latents of the plain KSampler bit for bit;
- the exact tiled decode (VAE Decode (mdtools, exact tiled)) equals VAEDecode (one piece)
  to float noise (with a halo over the canvas, and with its default exact halo) while
  ComfyUI's VAEDecodeTiled does not; the errors of all three are printed;
- the toy graph (Load Pipeline -> Generate -> SaveImage) writes a PNG, Seam Metrics a JSON,
  Run Record + Save Image + Record a PNG with its record JSON.
The figures are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

COMFY = os.environ.get("COMFYUI_DIR")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
pytestmark = pytest.mark.skipif(
    not COMFY, reason="COMFYUI_DIR is unset: set it to a ComfyUI checkout (and COMFYUI_PYTHON to the python of its "
                      "environment) to run the real-ComfyUI test")

CKPT = "tiny-sd15.safetensors"

# Run with ComfyUI's python: builds the checkpoint with ComfyUI's own module classes and
# checks that ComfyUI's model detection calls it SD 1.5.
BUILD_CHECKPOINT = r'''
import json, math, sys
import torch
comfy_dir, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]  # CPU only: comfy.cli_args reads the command line when parsing is enabled
import comfy.options
comfy.options.enable_args_parsing()
import comfy.ops
import comfy.model_detection
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.ldm.models.autoencoder import AutoencoderKL
from safetensors.torch import save_file

g = torch.Generator().manual_seed(0)

def init(m):  # ComfyUI's ops skip weight init: draw every weight here (1 / sqrt(fan_in) keeps activations O(1))
    for name, p in m.named_parameters():
        if p.ndim >= 2:
            p.data = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel())
        elif "norm" in name and name.endswith("weight"):
            p.data = torch.ones(p.shape)
        else:
            p.data = torch.zeros(p.shape)
    return m

unet = init(UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                      channel_mult=[1], use_spatial_transformer=True, legacy=False, transformer_depth=[1],
                      transformer_depth_middle=1, transformer_depth_output=[1, 1], context_dim=768,
                      use_linear_in_transformer=False, num_heads=8, num_head_channels=-1, adm_in_channels=None,
                      dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init))
ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
vae = init(AutoencoderKL(ddconfig=ddconfig, embed_dim=4))
sd = {"model.diffusion_model." + k: v.half() for k, v in unet.state_dict().items()}
sd.update({"first_stage_model." + k: v.half() for k, v in vae.state_dict().items()})
detected = type(comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")).__name__
assert detected == "SD15", detected
save_file(sd, out)
print(json.dumps({"detected": detected, "unet_params": sum(p.numel() for p in unet.parameters()),
                  "vae_params": sum(p.numel() for p in vae.parameters()), "bytes": __import__("os").path.getsize(out)}))
'''

# Test-only nodes (loaded from the temporary folder, never shipped): ComfyUI has no node that
# makes a CONDITIONING without a text encoder, and SaveImage rounds to 8 bits.
HELPER_NODES = r'''
import os
import torch
import folder_paths
from safetensors.torch import save_file


class ZeroConditioning:
    CATEGORY = "mdtools-test"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return ([[torch.zeros(1, 77, 768), {}]],)


class SaveTensor:
    CATEGORY = "mdtools-test"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "t"})},
                "optional": {"latent": ("LATENT",), "image": ("IMAGE",)}}

    def save(self, name, latent=None, image=None):
        d = os.path.join(folder_paths.get_output_directory(), "tensors")
        os.makedirs(d, exist_ok=True)
        t = latent["samples"] if latent is not None else image
        save_file({"t": t.detach().float().cpu().contiguous()}, os.path.join(d, name + ".safetensors"))
        return {}


NODE_CLASS_MAPPINGS = {"ZeroConditioning_mdtoolstest": ZeroConditioning, "SaveTensor_mdtoolstest": SaveTensor}
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, base: Path, proc: subprocess.Popen, log: Path):
        self.url, self.base, self.proc, self.log = url, base, proc, log

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, graph: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": graph}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, graph: dict, timeout: float = 900) -> dict:
        """POST the graph, poll /history until it is done; its history entry (status checked)."""
        code, body = self.post(graph)
        assert code == 200, (code, body)
        pid = body["prompt_id"]
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h and h[pid].get("status", {}).get("completed") is not None:
                st = h[pid]["status"]
                assert st.get("status_str") == "success", (st, self.log.read_text()[-4000:])
                return h[pid]
            assert self.proc.poll() is None, self.log.read_text()[-4000:]
            time.sleep(0.5)
        raise TimeoutError(f"graph {pid} did not finish in {timeout} s")

    def tensor(self, name: str) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.base / "output" / "tensors" / f"{name}.safetensors"))["t"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mdtools.comfy.install import ENTRY_DIR

    base = tmp_path_factory.mktemp("comfy-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    t0 = time.time()
    built = subprocess.run([PYTHON, "-c", BUILD_CHECKPOINT, COMFY, str(base / "models" / "checkpoints" / CKPT)],
                           check=True, capture_output=True, text=True, cwd=COMFY)
    print(f"\ncheckpoint: {built.stdout.strip()} in {time.time() - t0:.1f} s")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-mdtools").symlink_to(ENTRY_DIR, target_is_directory=True)
    helpers = base / "helper_nodes" / "mdtools_test_helpers"
    helpers.mkdir(parents=True)
    (helpers / "__init__.py").write_text(HELPER_NODES)
    cfg = base / "extra_model_paths.yaml"
    cfg.write_text(f"mdtools_test:\n    base_path: {base}\n    custom_nodes: helper_nodes\n")
    port = _free_port()
    log = base / "comfyui.log"
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--base-directory", str(base), "--extra-model-paths-config", str(cfg)],
                                cwd=COMFY, stdout=f, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", base, proc, log)
    try:
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.time() - t0 < 300, "ComfyUI did not start in 300 s:\n" + log.read_text()[-4000:]
            try:
                srv.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        print(f"ComfyUI started in {time.time() - t0:.1f} s")
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _sd_graph(md: dict | None, steps: int = 3) -> dict:
    """Checkpoint -> (MultiDiffusion) -> KSampler on a 256 x 256 canvas, latents saved as 'out'."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "cond": {"class_type": "ZeroConditioning_mdtoolstest", "inputs": {}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 7, "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["empty", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveTensor_mdtoolstest", "inputs": {"name": "out", "latent": ["sample", 0]}},
    }
    if md is not None:
        g["md"] = {"class_type": "MultiDiffusionModel_mdtools", "inputs": {
            "model": ["ckpt", 0], "method": "multidiffusion", "view_batch_size": 4, **md}}
        g["sample"]["inputs"]["model"] = ["md", 0]
    return g


def _named(g: dict, name: str) -> dict:
    g["save"]["inputs"]["name"] = name
    return g


def test_nodes_listed_and_bad_graph(server):
    info = server.get("/object_info")
    from mdtools.comfy.nodes import NODE_CLASS_MAPPINGS

    missing = [n for n in NODE_CLASS_MAPPINGS if n not in info]
    assert not missing, missing
    assert info["MultiDiffusionModel_mdtools"]["input"]["required"]["method"][0] == ["multidiffusion", "mixture", "spotdiffusion"]
    bad = _sd_graph({"window": 128, "overlap": 64, "kernel": "auto"})
    bad["md"]["inputs"]["method"] = "syncdiffusion"
    code, body = server.post(bad)
    assert code == 400 and "md" in body.get("node_errors", {}), (code, body)
    code, body = server.post({"x": {"class_type": "NoSuchNode_mdtools", "inputs": {}}})
    assert code == 400, (code, body)
    print(f"bad graphs: HTTP {code}")


def test_one_view_equals_plain_ksampler(server):
    secs = {}
    for name, md in (("plain", None), ("one_view_uniform", {"window": 256, "overlap": 0, "kernel": "uniform"}),
                     ("one_view_gaussian", {"window": 256, "overlap": 0, "kernel": "gaussian"}),
                     ("views", {"window": 128, "overlap": 64, "kernel": "auto"})):
        t0 = time.time()
        server.run(_named(_sd_graph(md), name))
        secs[name] = round(time.time() - t0, 1)
    plain = server.tensor("plain")
    uni, gau, views = (server.tensor(n) for n in ("one_view_uniform", "one_view_gaussian", "views"))
    assert plain.shape == (1, 4, 32, 32) and torch.isfinite(plain).all()
    d_gauss = float((gau - plain).abs().max())
    d_views = float((views - plain).abs().max())
    print(f"one view, uniform kernel: max |diff| = {float((uni - plain).abs().max())} (bit-exact: {torch.equal(uni, plain)}); "
          f"gaussian kernel: {d_gauss:.3g} (|latents| max {float(plain.abs().max()):.3g}); "
          f"3x3 views of 128 px: {d_views:.3g}; graph seconds {secs} (loadavg {os.getloadavg()})")
    assert torch.equal(uni, plain)
    assert d_gauss <= 1e-4 * float(plain.abs().max())
    # nine views are not one; how far apart depends on the random model (its predictions vary
    # little with context), so the number of views run is checked by the Run Record test below
    assert not torch.equal(views, plain)


def test_exact_tiled_decode_vs_vaedecodetiled(server):
    """256 x 256 px, 2 x 2 tiles of at most 160 px with 32 px overlap, on ComfyUI's own VAE
    (SD layout, random weights): mdtools' decode with a halo over the whole canvas (exact
    claim) and with its default halo (the exact halo of its schedule, refreshed from the
    neighbours at every parked barrier), ComfyUI's VAEDecodeTiled, against VAEDecode."""
    g = _sd_graph(None)
    g["save"]["inputs"]["name"] = "latent"
    tiles = {"samples": ["sample", 0], "vae": ["ckpt", 2], "tile_size": 160, "overlap": 32}
    g.update({
        "full": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "comfy_tiled": {"class_type": "VAEDecodeTiled", "inputs": {**tiles, "temporal_size": 64, "temporal_overlap": 8}},
        "md_whole": {"class_type": "VAEDecodeTiled_mdtools", "inputs": {**tiles, "sync_strategy": "auto", "halo": 256}},
        "md_default": {"class_type": "VAEDecodeTiled_mdtools", "inputs": {**tiles, "sync_strategy": "auto"}},
    })
    for name in ("full", "comfy_tiled", "md_whole", "md_default"):
        g["s_" + name] = {"class_type": "SaveTensor_mdtoolstest", "inputs": {"name": "dec_" + name, "image": [name, 0]}}
    t0 = time.time()
    server.run(g)
    full, comfy_t, md_w, md_d = (server.tensor("dec_" + n) for n in ("full", "comfy_tiled", "md_whole", "md_default"))
    assert full.shape == comfy_t.shape == md_w.shape == md_d.shape == (1, 256, 256, 3)

    def err(a: torch.Tensor) -> str:
        mse = float(((a.double() - full.double()) ** 2).mean())
        db = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()
        return f"max |err| {float((a - full).abs().max()):.3g}, mean {float((a - full).abs().mean()):.3g}, PSNR {db:.1f} dB"

    print(f"decode vs VAEDecode (one piece), {time.time() - t0:.0f} s for the graph: mdtools exact tiled, whole-canvas "
          f"halo: {err(md_w)}; mdtools exact tiled, default (exact) halo: {err(md_d)}; ComfyUI VAEDecodeTiled: "
          f"{err(comfy_t)}; image std {float(full.std()):.3g}")
    assert float((md_w - full).abs().max()) < 1e-4 and float((md_d - full).abs().max()) < 1e-4
    assert float((comfy_t - full).abs().mean()) > 10 * float((md_d - full).abs().mean())


def test_toy_graph_seams_and_record(server):
    out = server.base / "output"
    # the documented toy workflow (docs/comfyui/toy.api.json), made small: 256 x 128 px, 3 steps
    g = json.loads((Path(__file__).parents[1] / "docs" / "comfyui" / "toy.api.json").read_text())
    g["generate"]["inputs"].update(width=256, steps=3)
    g["save"]["inputs"]["filename_prefix"] = "toy/panorama"
    g["seams"]["inputs"].update(metrics="seam_score, seam_structure", filename_prefix="toy/seams")
    g["heatmap"]["inputs"]["filename_prefix"] = "toy/heat"
    h = server.run(g)
    pngs = sorted((out / "toy").glob("panorama_*.png"))
    assert pngs, list(out.rglob("*"))
    from PIL import Image

    assert Image.open(pngs[0]).size == (256, 128)
    seams = json.loads(sorted((out / "toy").glob("seams_*.json"))[0].read_text())
    assert seams["plan"]["n_views"] == 3 and seams["images"][0]["seam_score"]["value"] is not None
    assert sorted((out / "toy").glob("heat_*.png"))
    print(f"toy graph: {pngs[0].name}; seam metrics: {h['outputs']['seams']['text'][0]!r}")

    rec = _sd_graph({"window": 128, "overlap": 64, "kernel": "auto"}, steps=2)
    rec["rec"] = {"class_type": "RunRecord_mdtools", "inputs": {"model": ["md", 0], "vae": ["ckpt", 2], "label": "real"}}
    rec["sample"]["inputs"]["model"] = ["rec", 0]
    rec["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["rec", 1]}}
    rec["saverec"] = {"class_type": "SaveImageRecord_mdtools", "inputs": {
        "images": ["dec", 0], "record": ["rec", 2], "filename_prefix": "rec/run"}}
    server.run(rec)
    side = sorted((out / "rec").glob("run_*_.json"))
    assert side and side[0].with_suffix(".png").exists()
    r = json.loads(side[0].read_text())
    assert {"sampling", "denoise", "vae_decode"} <= set(r["phases"]), r["phases"]
    assert r["counts"]["model_evaluations"] == 2 * 9 * 2  # 2 steps x 9 views x (cond, uncond)
    print("run record: " + ", ".join(f"{k} {v['seconds']:.2f} s / peak RSS {(v['peak_rss'] or 0) / 2**20:.0f} MiB"
                                      for k, v in r["phases"].items()) + f"; counts {r['counts']}")
