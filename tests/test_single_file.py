"""Single-file checkpoints: a tiny SD 1.x pipeline written in the ORIGINAL (CompVis/A1111)
key layout loads back through `from_pretrained("x.safetensors")` with equal weights and
outputs; files that are not checkpoints, and hub ids that cannot be loaded, get one-line
errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from mdtools import MultiDiffusionPipeline
from mdtools.errors import ConfigError
from mdtools.models.single_file import ModelLoadError, detect_architecture

_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
        "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_ldm(sd: dict, lpb: int, attn_levels: set[int]) -> dict:
    """diffusers UNet2DConditionModel keys -> LDM `model.diffusion_model.*` keys (the layout of
    original .ckpt/.safetensors files): inputs hold lpb + 1 entries per level, outputs lpb + 1."""
    out = {}
    for k, v in sd.items():
        name, leaf = k.rsplit(".", 1)
        for a, b in _UNET_TOP.items():
            if name == a:
                name = b
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", name):
            i, j, part = int(m[1]), int(m[2]), m[3]
            name = f"input_blocks.{1 + i * (lpb + 1) + j}.0.{_RES[part]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
            name = f"input_blocks.{1 + int(m[1]) * (lpb + 1) + int(m[2])}.1.{m[3]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name):
            name = f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(\w+)", name):
            name = f"middle_block.{2 * int(m[1])}.{_RES[m[2]]}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
            name = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", name):
            name = f"output_blocks.{int(m[1]) * (lpb + 1) + int(m[2])}.0.{_RES[m[3]]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
            name = f"output_blocks.{int(m[1]) * (lpb + 1) + int(m[2])}.1.{m[3]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", name):
            i = int(m[1])
            name = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if i in attn_levels else 1}.conv"
        out[f"model.diffusion_model.{name}.{leaf}"] = v
    return out


def vae_to_ldm(sd: dict, n_levels: int) -> dict:
    """diffusers AutoencoderKL keys -> LDM `first_stage_model.*` keys (decoder levels reversed,
    mid-block attention as 1x1 convolutions)."""
    out = {}
    for k, v in sd.items():
        name, leaf = k.rsplit(".", 1)
        name = name.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", name):
            lvl = int(m[3]) if m[1] == "encoder" else n_levels - 1 - int(m[3])
            part = "nin_shortcut" if m[5] == "conv_shortcut" else m[5]
            name = f"{m[1]}.{m[2]}.{lvl}.block.{m[4]}.{part}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", name):
            name = f"encoder.down.{m[1]}.downsample.conv"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", name):
            name = f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)", name):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", name):
            name = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}"
            if leaf == "weight" and v.ndim == 2:
                v = v[:, :, None, None]
        out[f"first_stage_model.{name}.{leaf}"] = v
    return out


@pytest.fixture(scope="module")
def tiny_single_file(tmp_path_factory, sd_pipe):
    """The conftest tiny SD pipeline as one original-layout .safetensors file plus its config folder."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("single")
    sd_pipe.save_pretrained(d / "config", safe_serialization=True)
    for f in (d / "config").rglob("*.safetensors"):
        f.unlink()  # the config folder keeps configs and tokenizer only: weights come from the single file
    unet = sd_pipe.unet
    attn = {i for i, t in enumerate(unet.config.down_block_types) if "CrossAttn" in t}
    up_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    assert len(attn) == len(up_attn)
    state = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block, up_attn)
    state |= vae_to_ldm(sd_pipe.vae.state_dict(), len(sd_pipe.vae.config.block_out_channels))
    state |= {f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
              for k, v in sd_pipe.text_encoder.state_dict().items()}
    path = d / "tiny-sd15.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, d / "config"


def test_single_file_round_trip(tiny_single_file, sd_pipe):
    path, cfg = tiny_single_file
    assert detect_architecture(path) == "sd15"
    md = MultiDiffusionPipeline.from_pretrained(str(path), config=cfg)
    for name in ("unet", "vae", "text_encoder"):
        mine, ref = getattr(md.pipe, name).state_dict(), getattr(sd_pipe, name).state_dict()
        assert set(mine) == set(ref), name
        assert all(torch.equal(mine[k], ref[k]) for k in ref), name
    kw = dict(height=64, width=128, window=64, overlap=32, num_inference_steps=2, output_type="latent", progress=False)
    a = md("a photo of a beach", generator=0, **kw).latents
    b = MultiDiffusionPipeline.from_pipe(sd_pipe)("a photo of a beach", generator=0, **kw).latents
    assert torch.equal(a, b)


def test_files_that_are_not_checkpoints(tmp_path):
    from safetensors.torch import save_file

    junk = tmp_path / "notes.safetensors"
    junk.write_text("not a checkpoint at all")
    with pytest.raises(ModelLoadError, match="not a safetensors checkpoint"):
        MultiDiffusionPipeline.from_pretrained(str(junk))
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, str(other))
    with pytest.raises(ModelLoadError, match="architecture not recognised"):
        MultiDiffusionPipeline.from_pretrained(str(other))
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    with pytest.raises(ConfigError, match="not a checkpoint"):
        MultiDiffusionPipeline.from_pretrained(str(txt))
    # config= applies to single files only; a folder carries its own configs
    with pytest.raises(ConfigError, match="single checkpoint files only"):
        MultiDiffusionPipeline.from_pretrained("org/some-model", config="arch:sd15")  # checked before any hub access


def test_detector_failure_is_one_line(tmp_path, monkeypatch):
    """diffusers' detector raises on some odd files (UnboundLocalError, ValueError): still a ModelLoadError."""
    import diffusers.loaders.single_file_utils as sfu
    from safetensors.torch import save_file

    key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    p = tmp_path / "odd.safetensors"
    save_file({key: torch.zeros(1, 1024)}, str(p))

    def broken(_shapes):
        raise UnboundLocalError("model_type")

    monkeypatch.setattr(sfu, "infer_diffusers_model_type", broken)
    with pytest.raises(ModelLoadError, match="architecture not recognised.*UnboundLocalError"):
        detect_architecture(p)


def test_architecture_detected_from_header_only(tmp_path):
    from safetensors.torch import save_file

    key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    p = tmp_path / "sd2.safetensors"
    save_file({key: torch.zeros(1, 1024)}, str(p))  # SD 2.x cross-attention width
    assert detect_architecture(p) == "sd21"
    from mdtools.pipeline import read_native_window, read_scale_factor, resolve_model_path

    assert resolve_model_path(str(p)) == str(p)
    assert read_scale_factor(str(p)) == 8 and read_native_window(str(p), 8) == 512


def test_missing_hub_model_is_one_line_not_a_traceback(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": ""}
    if "PYTHONPATH" in os.environ:  # where packages live on PYTHONPATH (benchmarks/gpu_suite.sh on a lent GPU)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    r = subprocess.run([sys.executable, "-m", "mdtools", "generate", "--model", "org/missing", "--prompt", "x",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "org/missing" in err[0] and "could not be loaded" in err[0]


class _Rekey:
    """Builds an original-layout state dict from a diffusers one: every diffusers key is used
    exactly once (checked by `result`), and the result gets the single files' prefix."""

    def __init__(self, sd: dict) -> None:
        self.sd, self.out = dict(sd), {}

    def move(self, src: str, dst: str) -> None:
        """A module's weight and bias (those it has) under a new name."""
        for leaf in ("weight", "bias"):
            if f"{src}.{leaf}" in self.sd:
                self.out[f"{dst}.{leaf}"] = self.sd.pop(f"{src}.{leaf}")

    def fuse(self, srcs: list[str], dst: str) -> None:
        """Linears concatenated along the output (fused qkv, FLUX's linear1)."""
        for leaf in ("weight", "bias"):
            self.out[f"{dst}.{leaf}"] = torch.cat([self.sd.pop(f"{s}.{leaf}") for s in srcs])

    def put(self, src: str, dst: str, fn=lambda t: t) -> None:
        """One tensor, optionally transformed."""
        self.out[dst] = fn(self.sd.pop(src))

    def result(self) -> dict:
        assert not self.sd, f"unmapped keys: {sorted(self.sd)}"
        return {f"model.diffusion_model.{k}": v for k, v in self.out.items()}


def _swap_halves(t):
    """adaLN's (scale, shift) <-> (shift, scale) along the output; its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def sd3_to_original(sd: dict, num_layers: int) -> dict:
    """diffusers SD3Transformer2DModel keys -> the original MMDiT layout of SD3 single files
    (`model.diffusion_model.joint_blocks.{i}.x_block...`): the inverse of diffusers'
    convert_sd3_transformer_checkpoint_to_diffusers (fused qkv, adaLN (shift, scale) order
    in the final layer and the last block's context norm)."""
    r = _Rekey(sd)
    r.put("pos_embed.pos_embed", "pos_embed")
    r.move("pos_embed.proj", "x_embedder.proj")
    r.move("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    r.move("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    r.move("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    r.move("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    r.move("context_embedder", "context_embedder")
    for i in range(num_layers):
        b, j = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        r.fuse([f"{b}.attn.to_{n}" for n in "qkv"], f"{j}.x_block.attn.qkv")
        r.fuse([f"{b}.attn.add_{n}_proj" for n in "qkv"], f"{j}.context_block.attn.qkv")
        r.move(f"{b}.attn.to_out.0", f"{j}.x_block.attn.proj")
        r.move(f"{b}.attn.to_add_out", f"{j}.context_block.attn.proj")
        r.move(f"{b}.norm1.linear", f"{j}.x_block.adaLN_modulation.1")
        r.move(f"{b}.ff.net.0.proj", f"{j}.x_block.mlp.fc1")
        r.move(f"{b}.ff.net.2", f"{j}.x_block.mlp.fc2")
        r.move(f"{b}.ff_context.net.0.proj", f"{j}.context_block.mlp.fc1")
        r.move(f"{b}.ff_context.net.2", f"{j}.context_block.mlp.fc2")
        last = i == num_layers - 1
        for leaf in ("weight", "bias"):
            r.put(f"{b}.norm1_context.linear.{leaf}", f"{j}.context_block.adaLN_modulation.1.{leaf}",
                  _swap_halves if last else (lambda t: t))
    r.move("proj_out", "final_layer.linear")
    for leaf in ("weight", "bias"):
        r.put(f"norm_out.linear.{leaf}", f"final_layer.adaLN_modulation.1.{leaf}", _swap_halves)
    return r.result()


def test_sd3_single_file_round_trip(tmp_path):
    """An SD3 transformer saved in the original MMDiT key layout loads back through
    `from_pretrained("x.safetensors", config=<folder>)` (diffusers' own converter does the
    reading) with equal weights and an equal one-window generation; the file holds the
    transformer only, so the other parts are passed in, as for most SD3 / FLUX files."""
    import diffusers
    from safetensors.torch import save_file

    from tests.test_dit import make_sd3_pipe

    pipe = make_sd3_pipe()
    torch.manual_seed(1)
    pipe.transformer = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=24).eval()
    folder = tmp_path / "config"
    pipe.save_pretrained(folder)
    for f in (folder / "transformer").glob("*.safetensors"):
        f.unlink()  # the transformer's weights must come from the single file
    path = tmp_path / "sd3-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd3_to_original(pipe.transformer.state_dict(), 2).items()}, str(path))
    parts = {n: getattr(pipe, n) for n in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                                            "tokenizer_2", "tokenizer_3", "scheduler")}
    md = MultiDiffusionPipeline.from_pretrained(str(path), config=str(folder), **parts)
    assert md.kind == "sd3"
    ref = pipe.transformer.state_dict()
    got = md.pipe.transformer.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    kw = dict(height=32, width=32, window=32, overlap=0, num_inference_steps=2, guidance_scale=5.0, max_sequence_length=16,
              generator=0, output_type="latent", progress=False)
    a = md("a photo of a beach", **kw).latents
    b = MultiDiffusionPipeline.from_pipe(pipe)("a photo of a beach", **kw).latents
    assert torch.equal(a, b)


def flux_to_original(sd: dict, num_layers: int, num_single_layers: int) -> dict:
    """diffusers FluxTransformer2DModel keys -> the original FLUX layout of Black Forest Labs'
    `flux` package (`model.diffusion_model.double_blocks.{i}.img_attn.qkv...`): fused qkv per
    stream, single blocks' fused qkv + MLP input (`linear1`), adaLN (shift, scale) order in the
    final layer, written from BFL's module names (`flux/model.py`, `flux/modules/layers.py`)."""
    r = _Rekey(sd)
    r.move("x_embedder", "img_in")
    r.move("context_embedder", "txt_in")
    for dst, src in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                     ("guidance_in", "guidance_embedder")):
        r.move(f"time_text_embed.{src}.linear_1", f"{dst}.in_layer")
        r.move(f"time_text_embed.{src}.linear_2", f"{dst}.out_layer")
    for i in range(num_layers):
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        r.fuse([f"{b}.attn.to_{n}" for n in "qkv"], f"{d}.img_attn.qkv")
        r.fuse([f"{b}.attn.add_{n}_proj" for n in "qkv"], f"{d}.txt_attn.qkv")
        r.put(f"{b}.attn.norm_q.weight", f"{d}.img_attn.norm.query_norm.scale")
        r.put(f"{b}.attn.norm_k.weight", f"{d}.img_attn.norm.key_norm.scale")
        r.put(f"{b}.attn.norm_added_q.weight", f"{d}.txt_attn.norm.query_norm.scale")
        r.put(f"{b}.attn.norm_added_k.weight", f"{d}.txt_attn.norm.key_norm.scale")
        r.move(f"{b}.attn.to_out.0", f"{d}.img_attn.proj")
        r.move(f"{b}.attn.to_add_out", f"{d}.txt_attn.proj")
        r.move(f"{b}.norm1.linear", f"{d}.img_mod.lin")
        r.move(f"{b}.norm1_context.linear", f"{d}.txt_mod.lin")
        r.move(f"{b}.ff.net.0.proj", f"{d}.img_mlp.0")
        r.move(f"{b}.ff.net.2", f"{d}.img_mlp.2")
        r.move(f"{b}.ff_context.net.0.proj", f"{d}.txt_mlp.0")
        r.move(f"{b}.ff_context.net.2", f"{d}.txt_mlp.2")
    for i in range(num_single_layers):
        b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        r.fuse([f"{b}.attn.to_{n}" for n in "qkv"] + [f"{b}.proj_mlp"], f"{s}.linear1")
        r.put(f"{b}.attn.norm_q.weight", f"{s}.norm.query_norm.scale")
        r.put(f"{b}.attn.norm_k.weight", f"{s}.norm.key_norm.scale")
        r.move(f"{b}.proj_out", f"{s}.linear2")
        r.move(f"{b}.norm.linear", f"{s}.modulation.lin")
    r.move("proj_out", "final_layer.linear")
    for leaf in ("weight", "bias"):
        r.put(f"norm_out.linear.{leaf}", f"final_layer.adaLN_modulation.1.{leaf}", _swap_halves)
    return r.result()


def _any_width_flux_converter(checkpoint: dict, **kwargs):
    """diffusers' FLUX converter, made to accept a width other than FLUX.1's 3072.

    Its only width-dependent step splits each single block's fused `linear1` at a hard-coded
    3072 (every real FLUX.1 file). Here that split is done at the file's own width and
    diffusers is handed a one-column stand-in of FLUX.1's shape; every key mapping of the
    result is still diffusers' own."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    pre = "model.diffusion_model."
    width = checkpoint[pre + "img_in.weight"].shape[0]
    mine = {}
    for k in [k for k in checkpoint if ".linear1." in k]:
        i, leaf = int(k.split(".")[3]), k.rsplit(".", 1)[1]
        q, kk, v, mlp = torch.split(checkpoint[k], (width, width, width, 4 * width), dim=0)
        b = f"single_transformer_blocks.{i}."
        # copies, as diffusers makes: a view at an offset into the fused tensor can take another
        # (differently rounding) matmul path than a freshly allocated weight
        mine.update({b + f"attn.to_q.{leaf}": q.clone(), b + f"attn.to_k.{leaf}": kk.clone(),
                     b + f"attn.to_v.{leaf}": v.clone(), b + f"proj_mlp.{leaf}": mlp.clone()})
        checkpoint[k] = torch.zeros(3 * 3072 + 4 * 3072, 1)
    out = convert_flux_transformer_checkpoint_to_diffusers(checkpoint, **kwargs)
    assert set(mine) <= set(out)  # diffusers names the split parts exactly as above
    return {**out, **mine}


def _realign(module: torch.nn.Module) -> int:
    """Copy the parameters and buffers not at a 64-byte aligned address (the CPU allocator's
    alignment) into fresh memory; returns how many were copied. mdtools does not do this on
    load: it would hold the whole model in RAM on top of the mapped file (24 GB for FLUX)."""
    n = 0
    for m in module.modules():
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            if t.data_ptr() % 64:
                t.data = t.data.clone()
                n += 1
    return n


def test_flux_single_file_round_trip(tmp_path, monkeypatch):
    """A FLUX transformer saved in BFL's original key layout is recognised as FLUX and loads back
    through `from_pretrained("x.safetensors", config=<folder>)` with equal weights and an equal
    one-window generation. diffusers' converter reads the file; it hard-codes FLUX.1's 3072 width
    in one split, which the test widens to the tiny model's (see `_any_width_flux_converter`)."""
    import diffusers
    from diffusers.loaders import single_file_model
    from safetensors.torch import save_file

    from tests.test_dit import make_flux_pipe

    monkeypatch.setitem(single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"],
                        "checkpoint_mapping_fn", _any_width_flux_converter)
    pipe = make_flux_pipe()
    torch.manual_seed(1)
    pipe.transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True).eval()
    folder = tmp_path / "config"
    pipe.save_pretrained(folder)
    for f in (folder / "transformer").glob("*.safetensors"):
        f.unlink()  # the transformer's weights must come from the single file
    path = tmp_path / "flux-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in flux_to_original(pipe.transformer.state_dict(), 2, 2).items()},
              str(path))
    assert detect_architecture(path) == "flux"
    parts = {n: getattr(pipe, n) for n in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                            "scheduler")}
    md = MultiDiffusionPipeline.from_pretrained(str(path), config=str(folder), **parts)
    assert md.kind == "flux"
    ref = pipe.transformer.state_dict()
    got = md.pipe.transformer.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    # weights read from the file are memory-mapped at its 8-byte offsets, and a matmul on a
    # misaligned weight rounds differently (~4e-7 here); for a bitwise comparison with the model
    # built in memory, give them fresh (64-byte aligned) memory as that model's have
    assert _realign(md.pipe.transformer) > 0
    assert all(t.data_ptr() % 64 == 0 for t in md.pipe.transformer.state_dict().values())
    kw = dict(height=32, width=48, window=(32, 48), overlap=8, num_inference_steps=2, guidance_scale=3.5,
              max_sequence_length=16, generator=0, output_type="latent", progress=False)
    a = md("a photo of a beach", **kw).latents
    b = MultiDiffusionPipeline.from_pipe(pipe)("a photo of a beach", **kw).latents
    assert torch.equal(a, b)
    # without the tiny config, the shipped FLUX.1 config (3072 wide) does not fit: one line, no traceback
    with pytest.raises(ModelLoadError, match=r"could not be loaded as flux with config FLUX.1-dev"):
        MultiDiffusionPipeline.from_pretrained(str(path), **parts)


def test_checkpoint_config_from_the_cli_and_experiment_configs(tiny_single_file, tmp_path, capsys):
    """`--checkpoint-config` / `checkpoint_config:` give a single file its config (as `config=` in
    Python), are read before loading, change the run id only when set, and are refused on
    models that carry their own configs."""
    from mdtools import cli
    from mdtools.sweep import ModelCache, RunConfig, validate_runs

    path, cfg = tiny_single_file
    out = tmp_path / "pano.png"
    args = ["--prompt", "a beach", "--height", "64", "--width", "128", "--window", "64", "--overlap", "32",
            "--steps", "1", "--out", str(out)]
    assert cli.main(["generate", "--model", str(path), "--checkpoint-config", str(cfg), *args]) == 0
    assert out.is_file()
    run = {"model": str(path), "checkpoint_config": str(cfg), "prompt": "x", "canvas": {"height": 64, "width": 128},
           "tiling": {"window": 64, "overlap": 32}, "sampler": {"steps": 1}}
    (rc,) = validate_runs([run])
    plain = RunConfig.model_validate({k: v for k, v in run.items() if k != "checkpoint_config"})
    # ids of runs recorded before the field existed stay valid: None is left out of the hash
    assert rc.run_id() != plain.run_id() == RunConfig.model_validate({**run, "checkpoint_config": None}).run_id()
    md = ModelCache().get(rc)
    assert md.pipe.unet is not None
    with pytest.raises(ConfigError, match="applies to single checkpoint files only"):
        validate_runs([{**run, "model": "toy"}])
    assert cli.main(["generate", "--model", "toy", "--checkpoint-config", "arch:sd15", *args]) == 2
    assert "applies to single checkpoint files only" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a diffusers config folder"):
        validate_runs([{**run, "checkpoint_config": str(tmp_path)}])


def test_config_folder_names_the_preset_when_the_file_is_not_recognised():
    """A config folder's pipeline class (and for SD 1 / 2, the text encoder's width and the
    prediction type) says which tokenizers a file diffusers cannot classify needs."""
    from pathlib import Path

    from mdtools.models.arch import preset_dir
    from mdtools.models.single_file import _folder_preset

    for preset in ("sd15", "sd21", "sd21-768", "sdxl", "sd3", "flux"):
        assert _folder_preset(Path(preset_dir("arch:" + preset)), "x.safetensors") == preset
