"""LoRA: a diffusers pipeline with a LoRA loaded before `from_pipe` keeps it (one window equals the pipeline)."""

from __future__ import annotations

import pytest
import torch

from mdtools import MultiDiffusionPipeline

from .conftest import make_sd_pipe

PROMPT = "a photo of a beach"
KW = dict(height=64, width=64, num_inference_steps=3, guidance_scale=5.0, output_type="latent")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_window(pipe):
    want = pipe(PROMPT, generator=torch.Generator().manual_seed(1), **KW).images
    got = MultiDiffusionPipeline.from_pipe(pipe)(PROMPT, window=64, overlap=0, generator=1, progress=False, **KW).latents
    return want, got


def test_lora_loaded_with_load_lora_weights_is_kept(tmp_path):
    """A tiny LoRA made with peft, saved with diffusers' save_lora_weights and loaded with load_lora_weights."""
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs the peft package")
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    maker = make_sd_pipe()
    torch.manual_seed(0)
    maker.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                      target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # gaussian init leaves B = 0: give it weights so the LoRA changes the output
        for name, p in maker.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(maker.unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=layers, safe_serialization=True)

    pipe = make_sd_pipe()
    base, _ = one_window(pipe)
    pipe.load_lora_weights(tmp_path, adapter_name="tiny")
    want, got = one_window(pipe)
    assert (got - want).abs().max().item() <= 1e-5
    assert (want - base).abs().max().item() > 1e-3  # the LoRA is active: the test can fail
    pipe.set_adapters(["tiny"], adapter_weights=[0.5])
    want_half, got_half = one_window(pipe)
    assert (got_half - want_half).abs().max().item() <= 1e-5 and (want_half - want).abs().max().item() > 1e-4


def test_fused_low_rank_update_is_kept():
    """Without peft: a LoRA fused into the weights (W += scale * B @ A on the attention projections, what
    diffusers' fuse_lora writes) before from_pipe is what mdtools runs, because the modules are shared."""
    pipe = make_sd_pipe()
    base, _ = one_window(pipe)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, mod in pipe.unet.named_modules():
            if name.endswith(("to_q", "to_k", "to_v")):
                out_f, in_f = mod.weight.shape
                a, b = torch.randn(2, in_f, generator=g), torch.randn(out_f, 2, generator=g)
                mod.weight += 0.3 * b @ a
    want, got = one_window(pipe)
    assert (got - want).abs().max().item() <= 1e-5
    assert (want - base).abs().max().item() > 1e-3
