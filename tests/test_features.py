"""The shipped feature network and the metrics on it: Intra-LPIPS / Intra-Style fallback, KID.

Exactness against independent NumPy formulas (LPIPS-style distance, Gram / style loss,
unbiased polynomial-kernel MMD); behaviour on procedural scenes (identical crops score 0,
crops of different scenes score higher than crops of one scene).
"""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch

import mdtools.metrics as M
from mdtools.errors import ConfigError
from mdtools.metrics import features as FN
from mdtools.metrics import functional as F
from mdtools.toy import scenes as S


@pytest.fixture(autouse=True)
def empty_hub(tmp_path):
    """An empty torch hub cache, what an offline machine has: tests do not depend on cached VGG weights."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(old)


@pytest.fixture(scope="module")
def net():
    return FN.load_feature_net()


def scene_panoramas(seed: int, h: int = 64, windows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(one coherent h x windows*h scene, windows independent h x h scenes side by side)."""
    rng = np.random.default_rng(seed)
    coherent = S.render_scene(S.sample_params(rng), h, h * windows)
    mosaic = np.concatenate([S.render_scene(S.sample_params(rng), h, h) for _ in range(windows)], axis=1)
    return coherent, mosaic


# ------------------------------------------------------------------ the network


def test_network_loads_offline_from_safetensors(monkeypatch, tmp_path):
    folder = FN.FEATURE_NET_DIR
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file() and (folder / "MODEL_CARD.md").is_file()
    assert not [p.name for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    assert (folder / "model.safetensors").stat().st_size < 10 * 2**20
    # no pickle anywhere on the load path
    def refuse(*a, **k):
        raise AssertionError("pickle / torch.load used to load the feature network")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    w, c = FN.feature_net_files()
    fresh = FN._load.__wrapped__(str(w), str(c))  # bypass the cache: a real load under the patch
    assert not fresh.training and not any(p.requires_grad for p in fresh.parameters())
    n_params = sum(p.numel() for p in fresh.parameters())
    assert 300_000 <= n_params <= 2_000_000
    cached = FN.load_feature_net()
    assert cached is FN.load_feature_net()  # loaded once per process
    for a, b in zip(cached.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    maps = FN.feature_maps(torch.rand(2, 3, 64, 96), net=cached)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // 2**i, 96 // 2**i) for i, c in enumerate(cached.channels)]
    assert FN.pooled_features(torch.rand(3, 3, 64, 64), net=cached).shape == (3, cached.channels[-1])
    with pytest.raises(M.MetricUnavailable, match="not found in .*train_features"):
        FN.load_feature_net(tmp_path / "nowhere")


def test_network_heads_recognise_scenes(net):
    """The training task, re-checked on fresh scenes: sky and terrain heads well above chance."""
    cfg = FN.feature_net_config()
    rng = np.random.default_rng(99)
    imgs, sky, terrain = [], [], []
    for _ in range(24):
        img, lab = S.make_scene(S.sample_params(rng), 64, 64)
        imgs.append(img)
        sky.append(cfg["head_labels"]["sky"].index(lab.sky))
        terrain.append(cfg["head_labels"]["terrain"].index(lab.terrain))
    with torch.no_grad():
        lg = net.logits(FN.imagenet_normalize(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)))
    assert (lg["sky"].argmax(1).numpy() == np.array(sky)).mean() >= 0.9
    assert (lg["terrain"].argmax(1).numpy() == np.array(terrain)).mean() >= 0.8


# ---------------------------------------------------------------- intra_lpips


def _np_lpips(fa: list[np.ndarray], fb: list[np.ndarray]) -> float:
    """The documented formula, one image pair, plain NumPy: mean over layers of the spatial mean
    of the channel sum of squared differences of per-pixel unit-normalised features."""
    per_layer = []
    for a, b in zip(fa, fb):  # (C, H, W)
        na = a / (np.sqrt((a ** 2).sum(0, keepdims=True)) + 1e-10)
        nb = b / (np.sqrt((b ** 2).sum(0, keepdims=True)) + 1e-10)
        per_layer.append(((na - nb) ** 2).sum(0).mean())
    return float(np.mean(per_layer))


def test_intra_lpips_featnet_matches_numpy_formula(net):
    coherent, _ = scene_panoramas(3)
    img = torch.from_numpy(coherent).permute(2, 0, 1)[None].double()
    s = M.intra_lpips(img, crop=64, backbone="mdtools-feature-net")
    crops = torch.cat([img[..., :, 64 * k:64 * (k + 1)] for k in range(4)]).float()
    feats = [f.double().numpy() for f in FN.feature_maps(crops, net=net)]
    pairs = list(itertools.combinations(range(4), 2))
    ref = np.mean([_np_lpips([f[i] for f in feats], [f[j] for f in feats]) for i, j in pairs])
    assert s.details["backbone"] == "mdtools-feature-net" and s.details["n_pairs"] == 6
    assert float(s) == pytest.approx(ref, rel=1e-5)
    # the pairwise fast path equals the (x, y) module call lpips.LPIPS users know
    x = crops * 2 - 1
    direct = FN.FeatureLPIPS(net)(x[[0, 1]], x[[2, 3]]).double().numpy()
    assert direct == pytest.approx([_np_lpips([f[0] for f in feats], [f[2] for f in feats]),
                                    _np_lpips([f[1] for f in feats], [f[3] for f in feats])], rel=1e-5)
    # chunking does not change the result
    fl = FN.FeatureLPIPS(net).features(x)
    i, j = zip(*pairs)
    assert torch.allclose(FN.pairwise_lpips(fl, i, j, chunk_elements=1), FN.pairwise_lpips(fl, i, j), rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_intra_lpips_featnet_separates_one_scene_from_many(seed):
    coherent, mosaic = scene_panoramas(seed)
    a = M.intra_lpips(coherent, crop=64)  # offline: falls back to the shipped network, never NaN
    b = M.intra_lpips(mosaic, crop=64)
    assert math.isfinite(a) and math.isfinite(b)
    assert a.details["backbone"] == b.details["backbone"] == "mdtools-feature-net"
    assert "not found" in a.details["fallback_reason"]
    assert b > a
    same = np.concatenate([coherent[:, :64]] * 4, axis=1)  # four identical crops
    assert M.intra_lpips(same, crop=64) == pytest.approx(0.0, abs=1e-9)
    assert M.intra_style(same, crop=64) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- intra_style


def _np_gram(f: np.ndarray) -> np.ndarray:
    c, h, w = f.shape
    x = f.reshape(c, h * w)
    return x @ x.T / (c * h * w)


def test_gram_and_style_loss_match_numpy(net):
    f = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    g = F.gram_matrix(f)
    for k in range(2):
        ref = np.array([[sum(f[k, a].numpy().ravel() * f[k, b].numpy().ravel()) / (5 * 4 * 3) for b in range(5)] for a in range(5)])
        assert g[k].numpy() == pytest.approx(ref, rel=1e-12)
    _, mosaic = scene_panoramas(7)
    s = M.intra_style(mosaic, crop=64)
    assert s.details["backbone"] == "mdtools-feature-net"
    crops = torch.from_numpy(mosaic).permute(2, 0, 1)[None].double()
    crops = torch.cat([crops[..., :, 64 * k:64 * (k + 1)] for k in range(4)]).float()
    feats = [f.double().numpy() for f in FN.feature_maps(crops, net=net)]
    ref = sum(np.mean((_np_gram(L[i]) - _np_gram(L[j])) ** 2) for i, j in itertools.combinations(range(4), 2) for L in feats)
    assert float(s) == pytest.approx(ref, rel=1e-4)
    assert M.intra_style(mosaic, crop=64, reduction="mean") == pytest.approx(ref / 6, rel=1e-4)


# ---------------------------------------------------------------- backbone choice


def test_backbone_choice_prefers_cached_pretrained(monkeypatch):
    import mdtools.metrics.backbones as B

    coherent, _ = scene_panoramas(1)
    # named pretrained backbone, weights absent: NaN with the reason, not a silent swap
    lp = M.intra_lpips(coherent, crop=64, backbone="lpips-vgg16")
    st = M.intra_style(coherent, crop=64, backbone="vgg19")
    assert math.isnan(lp) and "not found" in lp.reason and "no download" in lp.reason and lp.details["backbone"] == "lpips-vgg16"
    assert math.isnan(st) and "not found" in st.reason and st.details["backbone"] == "vgg19"
    # weights present (stand-ins): "auto" takes them
    monkeypatch.setattr(B, "load_lpips_vgg", lambda: (lambda x, y: torch.full((x.shape[0],), 0.25)))
    monkeypatch.setattr(B, "load_vgg19_features", lambda: (lambda x: [x]))
    lp = M.intra_lpips(coherent, crop=64)
    st = M.intra_style(coherent, crop=64)
    assert float(lp) == pytest.approx(0.25) and lp.details["backbone"] == "lpips-vgg16" and "fallback_reason" not in lp.details
    assert st.details["backbone"] == "vgg19" and math.isfinite(st)
    assert M.intra_lpips(coherent, crop=64, backbone="mdtools-feature-net").details["backbone"] == "mdtools-feature-net"
    with pytest.raises(ConfigError, match="backbone"):
        M.intra_lpips(coherent, crop=64, backbone="vgg")
    with pytest.raises(ConfigError, match="either net= or backbone="):
        M.intra_lpips(coherent, crop=64, net=FN.FeatureLPIPS(), backbone="lpips-vgg16")


# ------------------------------------------------------------------------- KID


def _np_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with k(a, b) = (gamma a.b + coef)^degree, by explicit loops (Binkowski et al. 2018, eq. 3)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k = lambda a, b: (g * float(np.dot(a, b)) + coef) ** degree  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_numpy_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 6)), rng.normal(0.3, 1.2, size=(12, 6))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert float(F.mmd2_unbiased(tx, ty)) == pytest.approx(_np_mmd2(x, y), rel=1e-12)
    assert float(F.mmd2_unbiased(tx, ty, degree=2, gamma=0.5, coef=0.3)) == pytest.approx(_np_mmd2(x, y, 2, 0.5, 0.3), rel=1e-12)
    # equal sizes: torchmetrics' KID kernel code gives the same number
    from torchmetrics.image.kid import poly_mmd

    assert float(F.mmd2_unbiased(tx, ty[:9])) == pytest.approx(float(poly_mmd(tx, ty[:9])), rel=1e-12)
    # subsets: the same index stream (torch.Generator), the arithmetic in NumPy
    mean, std, s = F.kid_from_features(tx, ty, subset_size=5, n_subsets=7, seed=3)
    g = torch.Generator().manual_seed(3)
    vals = []
    for _ in range(7):
        i, j = torch.randperm(9, generator=g)[:5].numpy(), torch.randperm(12, generator=g)[:5].numpy()
        vals.append(_np_mmd2(x[i], y[j]))
    assert s == 5 and mean == pytest.approx(np.mean(vals), rel=1e-12) and std == pytest.approx(np.std(vals), rel=1e-9)
    # whole sets of equal size: one estimate
    assert F.kid_from_features(tx, ty[:9]) == (pytest.approx(_np_mmd2(x, y[:9]), rel=1e-12), 0.0, 9)
    with pytest.raises(ConfigError, match="subset_size=10"):
        F.kid_from_features(tx, ty, subset_size=10)


def test_kid_on_images_same_vs_different_distribution():
    def scenes(seed: int, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [S.render_scene(S.sample_params(rng), 64, 64) for _ in range(n)]

    from mdtools.toy.data import holdout_crops

    # 48 vs 48 (whole sets): over 5 seed pairs scenes vs scenes gave -0.08..0.15, scenes vs textures 1.7..2.1
    a, b = scenes(10, 48), scenes(11, 48)
    tex = list(holdout_crops(7, size=64)[0][:48])
    same, diff = M.kid(a, b), M.kid(a, tex)
    assert same.details["backbone"] == "mdtools-feature-net" and same.details["n_images"] == 48 and same.details["subset_size"] == 48
    assert same.details["feature_dim"] == FN.load_feature_net().channels[-1]
    assert abs(same) < 0.25 * diff and diff > 0
    sub = M.kid(a, b, subset_size=24, n_subsets=20)
    assert sub.details["n_subsets"] == 20 and sub.details["std"] > 0
    # crops: a 64 x 256 panorama gives 4 non-overlapping 64 px samples, 7 at stride 32
    pano = [S.render_scene(S.sample_params(np.random.default_rng(k)), 64, 256) for k in range(3)]
    s = M.kid(pano, b, crop=64, stride=32, subset_size=10)
    assert s.details["n_images"] == 21 and math.isfinite(s)
    assert math.isnan(M.kid(a[:1], b)) and "at least 2" in M.kid(a[:1], b).reason


# ------------------------------------------------------------------ the registry


def test_registry_keeps_backbones_apart():
    from mdtools import plan_views

    coherent, mosaic = scene_panoramas(2)
    plan = plan_views(64, 256, window=64, overlap=0)
    out = M.evaluate(coherent, plan, metrics=["intra_lpips", "intra_style", "intra_lpips_featnet", "intra_style_featnet"])
    # the VGG names stay VGG (NaN offline, pointing at the offline names), so a run table never mixes backbones
    assert math.isnan(out["intra_lpips"]) and "intra_lpips_featnet" in out["intra_lpips"].reason
    assert math.isnan(out["intra_style"]) and "intra_style_featnet" in out["intra_style"].reason
    assert out["intra_lpips_featnet"] == pytest.approx(float(M.intra_lpips(coherent, crop=64)), rel=1e-9)
    assert out["intra_style_featnet"].details["backbone"] == "mdtools-feature-net"
    with pytest.raises(ConfigError, match="needs reference_images="):
        M.evaluate(coherent, plan, metrics=["kid_featnet"])
    rng = np.random.default_rng(5)
    refs = [S.render_scene(S.sample_params(rng), 64, 64) for _ in range(8)]
    k = M.evaluate(mosaic, plan, metrics=["kid_featnet"], reference_images=refs)["kid_featnet"]
    assert k.details["n_images"] == 7 and k.details["n_reference"] == 8 and math.isfinite(k)  # windows every half window
    assert not M.METRICS["kid_featnet"].higher_is_better and M.METRICS["kid_featnet"].needs_option == "reference_images"
