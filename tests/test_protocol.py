"""SyncDiffusion's protocol (crop, FID / KID, CLIP score) against NumPy formulas here and, when fetched, the official code.

The official tests run SyncDiffusion's eval_code/ (SYNCDIFFUSION_DIR: a work tree of
KAIST-Visual-AI-Group/SyncDiffusion, commit 2b483777, outside the repo; it is never committed)
and clean-fid (installed, or CLEANFID_DIR: a folder holding the `cleanfid` package, e.g.
`pip install --no-deps --target DIR clean-fid`); they skip, saying why, when either is absent.
The other tests rebuild the official formulas in NumPy below and run everywhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mdtools.analysis.protocol import main as protocol_main
from mdtools.analysis.protocol import protocol_table
from mdtools.errors import ConfigError
from mdtools.metrics.functional.protocol import (
    clip_input,
    crop_offsets,
    frechet_distance,
    kernel_distance,
    protocol_clip_score,
    protocol_crops,
    protocol_features,
    protocol_fid,
    protocol_kid,
)

SYNC_DIR = Path(os.environ.get("SYNCDIFFUSION_DIR", "/nonexistent"))
EVAL = SYNC_DIR / "eval_code"
needs_official = pytest.mark.skipif(not (EVAL / "crop_panorama.py").exists(),
                                    reason="set SYNCDIFFUSION_DIR to a work tree of KAIST-Visual-AI-Group/SyncDiffusion "
                                           "(e.g. git archive of the fetched mirror into /work/syncdiffusion)")


def _cleanfid():
    d = os.environ.get("CLEANFID_DIR")
    if d and d not in sys.path and Path(d, "cleanfid").is_dir():
        sys.path.insert(0, d)
    try:
        from cleanfid import fid
    except ImportError:
        return None
    return fid


# ---- NumPy references (the official formulas, written out) -----------------------------------------

def np_crops(images, size, seed=2023):
    """crop_panorama.py's loop: np.random.seed(seed) once, randint(0, W - size) per panorama."""
    np.random.seed(seed)
    return [im[:, (x := np.random.randint(0, im.shape[1] - size)):x + size] for im in images]


def np_kernel_distance(feats1, feats2, num_subsets=100, max_subset_size=1000):
    """clean-fid's kernel_distance, line by line."""
    n = feats1.shape[1]
    m = min(min(feats1.shape[0], feats2.shape[0]), max_subset_size)
    t = 0
    for _ in range(num_subsets):
        x = feats2[np.random.choice(feats2.shape[0], m, replace=False)]
        y = feats1[np.random.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def np_fid(f1, f2):
    """Frechet distance with tr(sqrt(S1 S2)) as the sum of square roots of the eigenvalues of S1 S2."""
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ev = np.linalg.eigvals(s1 @ s2)
    d = f1.mean(0) - f2.mean(0)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def np_mmd2(x, y):
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * k(x, y).mean())


def tiny_net(dim=8, seed=0):
    """A random-weight clean-fid style extractor: (N, 3, H, W) in [0, 255] -> (N, dim)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, dim, 5, stride=4), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    return lambda x: net(x / 255.0)


def panoramas(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


# ---- the crop -----------------------------------------------------------------------------------------

def test_crops_follow_the_scripts_seeded_stream():
    ims = [p for w in (40, 57, 33, 90) for p in panoramas(1, 16, w, seed=w)]
    crops, xs = protocol_crops(ims, 16)
    ref = np_crops(ims, 16)
    assert len(set(xs)) > 1
    for c, r in zip(crops, ref):
        np.testing.assert_array_equal(c, r)
    np.random.seed(2023)  # num_crops=2: two draws per panorama, the second survives
    last = [(np.random.randint(0, w - 16), np.random.randint(0, w - 16))[1] for w in (40, 57, 33, 90)]
    assert crop_offsets([40, 57, 33, 90], 16, num_crops=2) == last


@pytest.mark.parametrize("kwargs, field", [({"size": 16, "images": panoramas(1, 20, 64)}, "high"),
                                           ({"size": 16, "images": panoramas(1, 16, 16)}, "must exceed"),
                                           ({"size": 16, "images": []}, "non-empty")])
def test_crop_refuses_bad_input(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        protocol_crops(kwargs["images"], kwargs["size"])


# ---- FID / KID formulas ---------------------------------------------------------------------------------

def test_fid_and_kid_match_the_numpy_formulas():
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(30, 6)), rng.normal(0.3, 1.2, size=(25, 6))
    assert frechet_distance(f1, f2) == pytest.approx(np_fid(f1, f2), rel=1e-6)
    assert frechet_distance(f1, f1) == pytest.approx(0.0, abs=1e-6)
    np.random.seed(11)
    want = np_kernel_distance(f1, f2, num_subsets=20, max_subset_size=10)
    assert kernel_distance(f1, f2, num_subsets=20, max_subset_size=10, seed=11) == pytest.approx(want, rel=1e-9)
    assert want != pytest.approx(np_kernel_distance(f1, f2, num_subsets=20, max_subset_size=10), rel=1e-6)  # the draws matter
    with pytest.raises(ConfigError, match="same D"):
        kernel_distance(f1, f2[:, :3])


def test_protocol_kid_and_fid_on_an_extractor():
    crops, refs = panoramas(12, 24, 24, seed=2), panoramas(14, 24, 24, seed=3)
    net = tiny_net()
    f1 = net(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()).detach().double().numpy()
    f2 = net(torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2).float()).detach().double().numpy()
    np.testing.assert_allclose(protocol_features(crops, net, resize=None), f1, rtol=1e-6)
    assert float(protocol_fid(crops, refs, extractor=net, resize=None)) == pytest.approx(np_fid(f1, f2), rel=1e-5)
    np.random.seed(0)
    s = protocol_kid(crops, refs, extractor=net, resize=None, num_subsets=10)
    assert float(s) == pytest.approx(np_kernel_distance(f1, f2, num_subsets=10), rel=1e-5, abs=1e-9)
    assert s.details["n_images"] == 12 and s.details["subset_size"] == 12


# ---- CLIP score -----------------------------------------------------------------------------------------

def test_clip_input_and_mean_follow_the_script():
    crops = panoramas(5, 8, 8, seed=4)
    for c in crops:  # ToTensor()(img) * 255 -> int64 (truncating), in float32
        want = (np.float32(c) / np.float32(255) * np.float32(255)).astype(np.int64).transpose(2, 0, 1)
        np.testing.assert_array_equal(clip_input(c).numpy(), want)
    w = torch.linspace(-1, 1, 3 * 8 * 8, dtype=torch.float64)
    metric = lambda im, p: (im.double().flatten() * w).sum() / 100 + len(p)  # noqa: E731
    vals = [float((clip_input(c).double().flatten() * w).sum() / 100 + 3) for c in crops]
    s = protocol_clip_score(crops, "abc", metric)
    assert float(s) == pytest.approx(np.mean(vals), rel=1e-12) and s.details["std"] == pytest.approx(np.std(vals), rel=1e-12)
    with pytest.raises(ConfigError, match="prompt"):
        protocol_clip_score(crops, "", metric)


# ---- the set-level table ----------------------------------------------------------------------------------

def _experiment(tmp_path, w=80, h=16, seeds=4):
    imgs = tmp_path / "images"
    imgs.mkdir()
    rows = []
    for method, shift in (("multidiffusion", 0), ("syncdiffusion", 60)):
        for s in range(seeds):
            rid = f"{method}-{s}"
            a = np.clip(panoramas(1, h, w, seed=s + shift)[0].astype(int) // (2 if shift else 1), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(imgs / f"{rid}.png")
            rows.append({"run_id": rid, "status": "ok", "preview": f"{rid}.png", "plan.height": h, "plan.width": w,
                         "method.name": method, "control": "", "seed": s})
    for s in range(seeds + 1):
        rid = f"ref-{s}"
        Image.fromarray(panoramas(1, h, h, seed=100 + s)[0]).save(imgs / f"{rid}.png")
        rows.append({"run_id": rid, "status": "ok", "preview": f"{rid}.png", "plan.height": h, "plan.width": h,
                     "method.name": "multidiffusion", "control": "single_window", "seed": s})
    return pd.DataFrame(rows), imgs


def test_protocol_table_against_numpy(tmp_path):
    runs, imgs = _experiment(tmp_path)
    net = tiny_net()
    out = tmp_path / "protocol.csv"
    t = protocol_table(runs, imgs, extractor=net, n_boot=200, out=out)
    assert list(t["method.label"]) == ["multidiffusion", "syncdiffusion"] and (t["n"] == 4).all() and (t["n_reference"] == 5).all()
    ref = [np.asarray(Image.open(imgs / f"ref-{s}.png")) for s in range(5)]
    fr = net(torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2).float()).detach().double().numpy()
    for _, row in t.iterrows():
        pano = [np.asarray(Image.open(imgs / f"{row['method.label']}-{s}.png")) for s in range(4)]
        crops = np_crops(pano, 16)
        f = net(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()).detach().double().numpy()
        assert row["kid"] == pytest.approx(np_mmd2(f, fr), rel=1e-6)
        assert row["kid.ci_lo"] <= row["kid"] <= row["kid.ci_hi"] and row["kid.ci_lo"] < row["kid.ci_hi"]
        np.random.seed(0)
        assert row["kid_cleanfid"] == pytest.approx(np_kernel_distance(f, fr), rel=1e-6)
    assert "expanded bootstrap" in t["ci_method"][0]
    pd.testing.assert_frame_equal(pd.read_csv(out)[["method.label", "n"]], t[["method.label", "n"]])
    with pytest.raises(ConfigError, match="single_window"):
        protocol_table(runs.assign(control=""), imgs, extractor=net)
    with pytest.raises(ConfigError, match="missing"):
        protocol_table(runs.assign(preview="nope.png"), imgs, extractor=net)


def test_protocol_cli_writes_the_csv(tmp_path):
    runs, imgs = _experiment(tmp_path, w=48, seeds=3)
    runs.to_parquet(tmp_path / "runs.parquet")
    with contextlib.redirect_stdout(io.StringIO()):
        assert protocol_main([str(tmp_path)]) == 0
    t = pd.read_csv(tmp_path / "protocol.csv")
    assert set(t["backbone"]) == {"mdtools-feature-net"} and t["kid"].notna().all() and (t["n"] == 3).all()


# ---- the official code -------------------------------------------------------------------------------------

def _official(name):
    """Execute eval_code/<name>.py as a fresh module (its import-time np.random.seed(2023) included)."""
    spec = importlib.util.spec_from_file_location(f"official_{name}", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    state = torch.random.get_rng_state()
    spec.loader.exec_module(mod)
    torch.random.set_rng_state(state)
    return mod


@pytest.fixture
def fake_cv2(monkeypatch):
    """cv2 is not installed here: imread / imwrite through PIL (BGR as cv2), the only cv2 calls crop_panorama.py makes."""
    m = types.ModuleType("cv2")
    m.imread = lambda p: np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1]
    m.imwrite = lambda p, a: Image.fromarray(np.ascontiguousarray(a[:, :, ::-1])).save(p)
    monkeypatch.setitem(sys.modules, "cv2", m)


@needs_official
@pytest.mark.parametrize("num_crops", [1, 2])
def test_crops_equal_the_official_script(tmp_path, fake_cv2, num_crops):
    src, dst = tmp_path / "pano", tmp_path / "crops"
    src.mkdir()
    for i, w in enumerate((530, 600, 777)):
        Image.fromarray(panoramas(1, 512, w, seed=i)[0]).save(src / f"p{i}.png")
    mod = _official("crop_panorama")
    with contextlib.redirect_stdout(io.StringIO()):
        mod.main(types.SimpleNamespace(data_dir=str(src), save_dir=str(dst), num_crops=num_crops))
    names = [f for f in os.listdir(src) if ".png" in f or ".jpg" in f]  # the script's order
    crops, _ = protocol_crops([np.asarray(Image.open(src / f)) for f in names], 512, num_crops=num_crops)
    for f, c in zip(names, crops):
        np.testing.assert_array_equal(np.asarray(Image.open(dst / f)), c)


@needs_official
def test_clip_score_equals_the_official_script(tmp_path, monkeypatch):
    d = tmp_path / "crops"
    d.mkdir()
    crops = panoramas(4, 12, 12, seed=9)
    for i, c in enumerate(crops):
        Image.fromarray(c).save(d / f"c{i}.png")
    w = torch.randn(3 * 12 * 12, generator=torch.Generator().manual_seed(0))

    class FakeCLIPScore:  # stands in for the CLIP model that cannot be downloaded; any image -> number works
        def __init__(self, model_name_or_path):
            self.name = model_name_or_path

        def to(self, device):
            return self

        def __call__(self, image, prompt):
            assert image.dtype == torch.int64
            return (image.float().flatten() * w).sum() / 1000 + len(prompt)

    mod = _official("eval_clip_score")
    monkeypatch.setattr(mod, "CLIPScore", FakeCLIPScore)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mod.main(str(d), "a photo", str(tmp_path / "clip.txt"))
    official = float(next(ln for ln in buf.getvalue().splitlines() if "(avg)" in ln).split(":")[-1])
    ours = protocol_clip_score(crops, "a photo", FakeCLIPScore("x"))
    assert float(ours) == pytest.approx(official, abs=1e-5)


@pytest.mark.skipif(_cleanfid() is None, reason="clean-fid is not importable (pip install clean-fid, or CLEANFID_DIR)")
def test_fid_kid_equal_clean_fid(tmp_path):
    fid = _cleanfid()
    d1, d2 = tmp_path / "gen", tmp_path / "ref"
    sets = {d1: panoramas(12, 20, 20, seed=5), d2: panoramas(15, 20, 20, seed=6)}
    for d, ims in sets.items():
        d.mkdir()
        for i, im in enumerate(ims):
            Image.fromarray(im).save(d / f"{i:02d}.png")  # sorted names = list order, as clean-fid's sorted glob
    net = tiny_net()
    cpu = torch.device("cpu")
    off1 = fid.get_folder_features(str(d1), net, num_workers=0, device=cpu, mode="clean", verbose=False)
    off2 = fid.get_folder_features(str(d2), net, num_workers=0, device=cpu, mode="clean", verbose=False)
    ours1 = protocol_features(sets[d1], net)
    np.testing.assert_allclose(ours1, off1, rtol=1e-5, atol=1e-6)
    np.random.seed(3)
    kid_off = fid.kernel_distance(off1, off2)
    assert protocol_kid(sets[d1], sets[d2], extractor=net, seed=3) == pytest.approx(kid_off, rel=1e-4, abs=1e-5)
    np.random.seed(3)  # same features in float64 on both sides: the sampling and the formula agree to rounding
    assert kernel_distance(ours1, off2, seed=3) == pytest.approx(fid.kernel_distance(ours1, off2.astype(np.float64)), rel=1e-9)
    with contextlib.redirect_stdout(io.StringIO()):
        fid_off = fid.compute_fid(str(d1), str(d2), custom_feat_extractor=net, device=cpu, num_workers=0, verbose=False)
    assert float(protocol_fid(sets[d1], sets[d2], extractor=net)) == pytest.approx(fid_off, rel=1e-5)
