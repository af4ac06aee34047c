"""Real-architecture presets: exact parameter counts (meta device, no memory), stand-in text
encoders with the real output shapes, seeded random weights, records marked random_weights."""

from __future__ import annotations

import json

import pytest
import torch

from mdtools import MultiDiffusionPipeline
from mdtools.errors import ConfigError
from mdtools.models.arch import PRESETS, build_from_folder, count_parameters, preset_dir, published_counts, stand_in_tokenizers

# Published figures, independent of how mdtools builds the models: exact where the weight files'
# byte totals give them (bf16 bytes / 2, Forge's vendored *.safetensors.index.json), else the
# rounded numbers of the papers / model cards (see mdtools/assets/arch/SOURCES.md).
EXACT = {
    ("flux", "transformer"): 23_802_816_640 // 2,
    ("flux-schnell", "transformer"): 23_782_357_120 // 2,
    ("flux", "text_encoder_2"): 9_524_621_312 // 2,      # T5-XXL encoder (SD3's text_encoder_3 is the same config)
}
ROUNDED = {  # (preset, component): (figure, unit)
    ("sd15", "unet"): (860, 1e6), ("sd15", "text_encoder"): (123, 1e6),   # CompVis README: 860M UNet, 123M text
    ("sd21", "unet"): (865, 1e6),                                          # SDXL report Tab. 1
    ("sdxl", "unet"): (2.6, 1e9), ("sdxl", "text_encoder_2"): (695, 1e6),  # SDXL report Tab. 1
    ("sd3", "transformer"): (2, 1e9),                                      # "SD3 Medium, with 2B parameters"
    ("flux", "transformer"): (12, 1e9),                                    # "12 billion parameter" (model card)
}


@pytest.fixture(scope="module")
def counts():
    return {name: count_parameters("arch:" + name, ("unet",) if name.startswith("sd") and name != "sd3" else None)
            for name in ("sd15", "sd21", "sdxl")} | {
        "sd3": count_parameters("arch:sd3", ("transformer",)),
        "flux": count_parameters("arch:flux", ("transformer", "text_encoder_2")),
        "flux-schnell": count_parameters("arch:flux-schnell", ("transformer",)),
    }


def test_parameter_counts_equal_published(counts):
    for (name, comp), n in EXACT.items():
        assert counts[name][comp] == n, (name, comp)
    for (name, comp), (fig, unit) in ROUNDED.items():
        n = counts[name].get(comp)
        if n is None:
            n = count_parameters("arch:" + name, (comp,))[comp]
        digits = 0 if float(fig).is_integer() else 1
        # papers round ("2.6B") or truncate ("865M"): the figure is one of the two
        assert fig in (round(n / unit, digits), int(n / unit * 10**digits) / 10**digits), (name, comp, n)
    pub = published_counts()  # every count measured for SOURCES.md (same configs, independent venv)
    for name, comps in counts.items():
        for comp, n in comps.items():
            folder = PRESETS[name].folder
            if comp in pub[folder]:
                assert pub[folder][comp]["params"] == n, (name, comp)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"arch:sd99.*arch:sd15, arch:sd21, .*arch:sdxl, arch:sd3, arch:flux"):
        MultiDiffusionPipeline.from_pretrained("arch:sd99")
    from mdtools.pipeline import resolve_model_path

    with pytest.raises(ConfigError, match="arch:flux"):
        resolve_model_path("arch:")
    assert resolve_model_path("arch:sdxl") == str(preset_dir("arch:sdxl"))


def test_stand_in_text_encoders_keep_the_output_shapes():
    """Stand-ins (2 layers, small vocabulary) give the real encoders' sequence length and widths."""
    from mdtools.models.arch import _stand_in, model_index

    clip_tok, t5_tok = stand_in_tokenizers()
    ids = clip_tok(["a photo of a beach"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    for name, comp, width, proj in (("sdxl", "text_encoder_2", 1280, 1280), ("sd21", "text_encoder", 1024, None),
                                    ("flux", "text_encoder_2", 4096, None)):
        folder = preset_dir("arch:" + name)
        real = json.loads((folder / comp / "config.json").read_text())
        torch.manual_seed(0)
        m = _stand_in(folder, comp, clip_tok, t5_tok).eval()
        assert sum(p.numel() for p in m.parameters()) < 0.05 * count_parameters("arch:" + name, (comp,))[comp]
        x = t5_tok(["a beach"], padding="max_length", max_length=512, return_tensors="pt").input_ids if "T5" in \
            model_index(folder)[comp][1] else ids
        with torch.no_grad():
            out = m(x, output_hidden_states=True)
        assert out.last_hidden_state.shape == (1, x.shape[1], width)
        assert width == real.get("hidden_size", real.get("d_model"))
        if proj:
            assert out.text_embeds.shape == (1, proj) == (1, real["projection_dim"])


def test_build_seeded_random_weights_and_record(tmp_path, sd_pipe):
    """The preset builder on a tiny config folder: same seed, same weights; records say random_weights."""
    sd_pipe.save_pretrained(tmp_path / "cfg", safe_serialization=True)
    a, info = build_from_folder(tmp_path / "cfg", seed=3)
    b, _ = build_from_folder(tmp_path / "cfg", seed=3)
    c, _ = build_from_folder(tmp_path / "cfg", seed=4)
    ka = a.unet.state_dict()
    assert all(torch.equal(v, b.unet.state_dict()[k]) for k, v in ka.items())
    assert not torch.equal(ka["conv_in.weight"], c.unet.state_dict()["conv_in.weight"])
    assert info["random_weights"] is True and "stand-in" in info["text_encoders"]
    md = MultiDiffusionPipeline(a, info=info)
    out = md("a photo of a beach", height=64, width=96, window=64, overlap=32, num_inference_steps=1,
             output_type="latent", progress=False)
    assert out.record.extra["random_weights"] is True
    assert out.record.extra["model_info"]["seed"] == 3


def test_flux_sizes_checked_before_loading():
    """`check_model_sizes` reads the shipped config only: a 12B preset is refused in milliseconds."""
    from mdtools.pipeline import check_model_sizes, read_model_kind, read_native_window, resolve_model_path

    path = resolve_model_path("arch:flux")
    assert read_model_kind(path) == "flux" and read_native_window(path, 8) == 1024
    assert read_native_window(resolve_model_path("arch:sd3"), 8) == 1024
    with pytest.raises(ConfigError, match=r"width=1000 is not a multiple of 16 px.*use 992 or 1008"):
        check_model_sizes(path, 1024, 1000, 1024, 8)
    check_model_sizes(resolve_model_path("arch:sdxl"), 1024, 1000, 1024, 8)  # UNets: multiples of 8 suffice


def test_c3_c4_rejudged_on_real_architecture_rows():
    """claims.claim_c3_real / claim_c4_real on a constructed benchmarks/real_arch.py table."""
    import pandas as pd

    from mdtools.analysis import article_claims as claims

    base = dict(preset="sd21", device="cpu", dtype="float32", steps=1, window_px=512, loadavg_1m=1.0, basis="")
    real = pd.DataFrame([
        base | dict(size_px=512, phase="denoise", kind="measured", views=1, seconds=10.0, per_view_forward_s=10.0),
        base | dict(size_px=2048, phase="denoise", kind="extrapolated", views=25, seconds=250.0, per_view_forward_s=10.0,
                    basis="25 views x 10 s"),
        base | dict(size_px=512, phase="decode_full", kind="measured", peak_above_weights_gb=1.0),
        base | dict(size_px=8192, phase="decode_full", kind="extrapolated", peak_above_weights_gb=256.0, basis="area"),
    ])
    c3 = claims.claim_c3_real(real)
    assert c3.verdict.startswith("does not hold: 25.0x") and "extrapolated" in c3.evidence
    c4 = claims.claim_c4_real(real)
    assert "'without' half holds" in c4.verdict and "tiled side is not measured" in c4.verdict
    tiled = base | dict(size_px=8192, phase="decode_tiled", kind="measured", peak_above_weights_gb=3.0)
    c4 = claims.claim_c4_real(pd.concat([real, pd.DataFrame([tiled])], ignore_index=True))
    assert "tiled 3.0 GB (within 12 GB, measured)" in c4.verdict
    assert claims.claim_c3_real(real.iloc[2:]).verdict.startswith("not measured")

    # the exact out-of-core decode (benchmarks/vae_fast.py rows): measured where run; otherwise
    # its working set (peak - output) from the largest run with the same tiles, plus the output
    disk = dict(method="mdtools_disk", arch="sd15", halo_px=16, tile_px=float("nan"), seconds=100.0)
    vf = pd.DataFrame([disk | dict(size=1024, decode_peak_mb=460.0, output_mb=12.0),
                       disk | dict(size=4096, decode_peak_mb=920.0, output_mb=192.0),
                       disk | dict(size=4096, arch="sdxl", decode_peak_mb=9e9, output_mb=192.0),
                       disk | dict(size=8192, method="diffusers_tiled", decode_peak_mb=9e9, output_mb=768.0)])
    assert claims.out_of_core_peak(vf, 1024)["how"].startswith("measured")
    ext = claims.out_of_core_peak(vf, 8192)
    assert ext["size"] == 4096 and ext["gb"] == pytest.approx((920 - 192 + 8192**2 * 12 / 2**20) / 1024)
    assert "456 px tile bodies" in ext["how"]  # 512 px network input less 2 x 16 px halo, shrunk to fit 9 / 18 tiles
    # 1024 px tiles shrink to 344 px bodies: a different working set, so no basis for 8192 px
    assert claims.out_of_core_peak(vf[vf["size"] == 1024], 8192) is None
    c4 = claims.claim_c4_real(pd.concat([real, pd.DataFrame([tiled])], ignore_index=True), vae_fast=vf)
    assert f"out of core (park='disk') {ext['gb']:.1f} GB (extrapolated" in c4.verdict
    assert c4.numbers["out_of_core_extrapolated"] is True


def test_preset_too_big_for_memory_is_refused_before_allocating(monkeypatch):
    import mdtools.models.arch as arch

    monkeypatch.setattr(arch, "_available_bytes", lambda device: 8 * 2**30)
    with pytest.raises(ConfigError, match=r"arch:flux needs about 44.6 GiB .* float32 but cpu has 8.0 GiB"):
        MultiDiffusionPipeline.from_pretrained("arch:flux")
