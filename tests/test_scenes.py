"""Procedural scenes (mdtools.toy.scenes): rendering, labels, prompts, and the label detectors (mdtools.metrics.scene_analysis).

The detectors must recover every label of clean generator images (200 random 128 x 128
scenes plus panoramas); benchmarks/coherence_validation.py reports the same on more scenes
and on blurred copies.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from mdtools import ConfigError
from mdtools.metrics import scene_analysis as A
from mdtools.toy import scenes as S


def _scenes(n: int, size: tuple[int, int], seed: int) -> list[tuple[S.SceneParams, np.ndarray, S.SceneLabels]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = S.sample_params(rng)
        out.append((p, *S.make_scene(p, *size)))
    return out


def _recovered(img: np.ndarray, lab: S.SceneLabels) -> dict[str, bool]:
    a = A.analyse_scene(img)
    err = np.abs(a.horizon - lab.horizon)
    one = len(a.discs) == 1
    cy, cx, r = a.discs[0] if one else (np.nan, np.nan, np.nan)
    return {
        "sky": a.sky == lab.sky,
        "ground": a.ground == lab.ground,
        "terrain": a.terrain == lab.terrain,
        "one disc": one,
        "disc centre": bool(np.hypot(cy - lab.disc_center[0], cx - lab.disc_center[1]) <= 1.0),
        "disc radius": bool(abs(r - lab.disc_radius) <= 1.0),
        # sub-pixel on the whole: median error half a pixel, no column off by more than 2.5 px
        "horizon": bool(not np.isnan(err).any() and np.median(err) <= 0.5 and err.max() <= 2.5),
    }


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [(128, 128), (128, 512), (256, 1024), (32, 48)])
def test_render_shape_range_and_determinism(size):
    p = S.sample_params(np.random.default_rng(3))
    a = S.render_scene(p, *size)
    assert a.shape == (*size, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, S.render_scene(p, *size))
    lab = S.scene_labels(p, *size)
    assert lab.horizon.shape == (size[1],) and (lab.height, lab.width) == size


def test_scene_labels_match_make_scene():
    p = S.sample_params(np.random.default_rng(4), terrain="mountains")
    _, lab = S.make_scene(p, 96, 300)
    lab2 = S.scene_labels(p, 96, 300)
    np.testing.assert_array_equal(lab.horizon, lab2.horizon)
    assert (lab.disc_center, lab.disc_radius, lab.sky, lab.ground, lab.clouds) == (
        lab2.disc_center, lab2.disc_radius, lab2.sky, lab2.ground, lab2.clouds)


def test_params_are_consistent_and_disc_fits_above_the_terrain():
    for p, img, lab in _scenes(300, (64, 160), seed=5):
        assert (p.terrain == "sea") == (p.ground == "water")
        assert p.disc == ("moon" if p.sky == "night" else "sun")
        cy, cx = lab.disc_center
        r = lab.disc_radius
        assert r <= cy - 0.5 and r <= cx <= lab.width - r
        # fully above the horizon, with clean sky between
        assert cy + r < lab.horizon.min()
        assert lab.horizon.min() >= 0.15 * lab.height and lab.horizon.max() <= 0.75 * lab.height + 1e-9
        if p.terrain == "sea":
            assert np.ptp(lab.horizon) == 0


def test_disc_pixels_have_the_disc_colour():
    # Coverage is clip(r + 0.5 - distance, 0, 1): every pixel centre within r - 0.5 of the
    # centre is fully disc, every one beyond r + 0.5 untouched by it (checked with a
    # scene rendered without the disc's colour anywhere else: no clouds).
    for p, img, lab in _scenes(20, (128, 256), seed=6):
        if p.clouds:
            continue
        cy, cx = lab.disc_center
        y, x = np.mgrid[: lab.height, : lab.width] + 0.5
        dist = np.hypot(y - cy, x - cx)
        inner = img[dist <= lab.disc_radius - 0.5]
        np.testing.assert_allclose(inner, np.broadcast_to(inner[0], inner.shape), atol=1e-6)
        assert inner[0].min() > 0.55  # bright
        ring = img[(dist > lab.disc_radius + 0.5) & (dist < lab.disc_radius + 2)]
        assert np.abs(ring - inner[0]).sum(1).min() > 0.1


def test_panorama_has_one_disc_and_one_continuous_horizon():
    rng = np.random.default_rng(8)
    for _ in range(4):
        p = S.sample_params(rng, terrain="mountains")
        img, lab = S.make_scene(p, 128, 1024)
        assert len(A.detect_discs(img)) == 1
        # one ridge: neighbouring columns differ by far less than the ridge height
        assert np.abs(np.diff(lab.horizon)).max() < 0.5 * p.ridge_height * 128


def test_horizon_offset_moves_only_the_terrain():
    p = S.sample_params(np.random.default_rng(9), clouds=False)
    off = 6 * S.strip_profile(256, (64, 128, 192))
    img0, lab0 = S.make_scene(p, 128, 256)
    img1, lab1 = S.make_scene(p, 128, 256, horizon_offset=off)
    np.testing.assert_allclose(lab1.horizon, lab0.horizon + off)
    assert lab1.disc_center == lab0.disc_center
    top = int(lab0.horizon.min()) - 1  # the sky above the highest peak is identical
    np.testing.assert_array_equal(img0[:top], img1[:top])


def test_strip_profile_flips_at_each_line():
    np.testing.assert_array_equal(S.strip_profile(8, (2, 5)), [0, 0, 1, 1, 1, 0, 0, 0])


def test_tint_sky_changes_only_the_sky():
    p = S.sample_params(np.random.default_rng(10), sky="day")
    img, lab = S.make_scene(p, 64, 128)
    out = S.tint_sky(img, lab, np.full((128, 3), 0.05))
    below = np.arange(64)[:, None] >= np.ceil(lab.horizon)[None, :]
    np.testing.assert_array_equal(out[below], img[below])
    above = np.arange(64)[:, None] + 1 <= np.floor(lab.horizon)[None, :]
    assert np.all(out[above] >= img[above])


def test_plant_discs_adds_detectable_discs():
    p, img, lab = _scenes(1, (96, 384), seed=11)[0]
    for extra in (1, 2):
        assert len(A.detect_discs(S.plant_discs(img, lab, extra, np.random.default_rng(0)))) == 1 + extra


def test_scene_batch_yields_consistent_triples():
    batch = list(S.scene_batch(5, 64, seed=1))
    assert len(batch) == 5
    for img, prompt, lab in batch:
        assert img.shape == (64, 64, 3) and prompt == S.scene_prompt(lab) and prompt in S.SCENE_PROMPTS
    again = list(S.scene_batch(5, (64, 64), seed=1))
    for (a, pa, _), (b, pb, _) in zip(batch, again):
        np.testing.assert_array_equal(a, b)
        assert pa == pb


# ------------------------------------------------------------------------------- prompts


def test_prompts_are_one_template_and_parse_back():
    assert len(S.SCENE_PROMPTS) == len(set(S.SCENE_PROMPTS)) == 12
    for prompt in S.SCENE_PROMPTS:
        parsed = S.parse_prompt(prompt)
        assert S.PROMPT_TEMPLATE.format(sky=parsed["sky"], place=S.PLACES[(parsed["terrain"], parsed["ground"])],
                                        disc=parsed["disc"]) == prompt
    assert S.parse_prompt("night sky over snowy mountains with a moon") == {
        "sky": "night", "ground": "snow", "terrain": "mountains", "disc": "moon"}
    assert S.parse_prompt("sunset sky over the sea with a sun")["terrain"] == "sea"
    for _, _, lab in _scenes(30, (32, 32), seed=12):
        parsed = S.parse_prompt(S.scene_prompt(lab))
        assert parsed == {"sky": lab.sky, "ground": lab.ground, "terrain": lab.terrain, "disc": lab.disc}


@pytest.mark.parametrize("bad", ["a photo of a beach", "day sky over the moon with a sun", "", 3])
def test_parse_prompt_rejects_other_prompts(bad):
    with pytest.raises(ConfigError, match="template"):
        S.parse_prompt(bad)


# ---------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_config_error_naming_the_field():
    p = S.sample_params(np.random.default_rng(0))
    with pytest.raises(ConfigError, match="height"):
        S.render_scene(p, 8, 128)
    with pytest.raises(ConfigError, match="width"):
        S.render_scene(p, 128, 0)
    with pytest.raises(ConfigError, match="horizon_offset"):
        S.render_scene(p, 64, 64, horizon_offset=np.zeros(10))
    with pytest.raises(ConfigError, match="horizon_offset"):
        S.render_scene(p, 64, 64, horizon_offset=-np.ones(64))
    with pytest.raises(ConfigError, match="params"):
        S.render_scene({"sky": "day"}, 64, 64)
    with pytest.raises(ConfigError, match="sky"):
        dataclasses.replace(p, sky="dusk")
    with pytest.raises(ConfigError, match="horizon"):
        dataclasses.replace(p, horizon=0.9)
    with pytest.raises(ConfigError, match="ground"):
        S.sample_params(np.random.default_rng(0), terrain="sea", ground="grass")
    with pytest.raises(ConfigError, match="rng"):
        S.sample_params(0)
    with pytest.raises(ConfigError, match="^n must"):
        next(S.scene_batch(0, 64))
    with pytest.raises(ConfigError, match="float values"):
        A.detect_sky(np.full((32, 32, 3), 2.0))
    _, img, lab = _scenes(1, (32, 32), seed=0)[0]
    with pytest.raises(ConfigError, match="room"):
        S.plant_discs(img, lab, 6, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="labels"):
        S.plant_discs(img[:, :20], lab, 1, np.random.default_rng(0))


# ----------------------------------------------------------------------------- detectors


def test_detectors_recover_every_label_on_clean_scenes():
    scenes = _scenes(200, (128, 128), seed=20)
    scenes += _scenes(4, (128, 512), seed=21) + _scenes(2, (256, 1024), seed=22)
    misses = {}
    for p, img, lab in scenes:
        for k, ok in _recovered(img, lab).items():
            if not ok:
                misses.setdefault(k, []).append(p)
    assert not misses, {k: len(v) for k, v in misses.items()}
    # every sky, place and cloud setting was exercised
    assert {p.sky for p, _, _ in scenes} == set(S.SKIES)
    assert {(p.terrain, p.ground) for p, _, _ in scenes} == set(S.PLACES)
    assert {p.clouds for p, _, _ in scenes} == {True, False}


def test_single_detectors_agree_with_analyse_scene():
    for p, img, lab in _scenes(6, (96, 192), seed=23):
        assert A.detect_sky(img) == lab.sky
        assert A.detect_ground(img) == lab.ground
        assert A.detect_terrain(img) == lab.terrain
        np.testing.assert_array_equal(A.detect_horizon(img), A.analyse_scene(img).horizon)
        assert A.detect_discs(img) == A.analyse_scene(img).discs


def test_detectors_accept_every_image_form():
    _, img, lab = _scenes(1, (64, 128), seed=24)[0]
    u8 = (img * 255).round().astype(np.uint8)
    forms = [u8, Image.fromarray(u8), torch.from_numpy(u8.astype(np.float32) / 255).permute(2, 0, 1)]
    ref = A.analyse_scene(u8.astype(np.float64) / 255)
    for f in forms:
        a = A.analyse_scene(f)
        assert (a.sky, a.ground, a.terrain, len(a.discs)) == (ref.sky, ref.ground, ref.terrain, 1)
        np.testing.assert_allclose(a.horizon, ref.horizon, atol=1e-6)


def test_detectors_degrade_gracefully_on_blurred_noisy_scenes():
    # a stand-in for a small diffusion model's blurry output: Gaussian blur + noise
    scenes = _scenes(40, (96, 96), seed=25)
    hits = {}
    for i, (p, img, lab) in enumerate(scenes):
        blurry = np.clip(gaussian_filter(img, (1.5, 1.5, 0)) + np.random.default_rng(i).normal(0, 0.02, img.shape), 0, 1)
        for k, ok in _recovered(blurry, lab).items():
            hits[k] = hits.get(k, 0) + ok
    rate = {k: v / len(scenes) for k, v in hits.items()}
    for k in ("sky", "ground", "terrain", "one disc", "disc centre"):
        assert rate[k] >= 0.95, rate
    assert rate["horizon"] >= 0.8, rate  # blur rounds off the sharpest peaks by a pixel or two


def test_detectors_survive_a_sky_that_changes_colour_across_the_panorama():
    # naive tiling: every 96-px strip its own scene (own sky gradient, own horizon, own disc)
    rng = np.random.default_rng(26)
    base = S.sample_params(rng, sky="sunset", terrain="mountains")
    strips, labels = [], []
    for _ in range(4):
        img, lab = S.make_scene(S.sample_params(rng, sky=base.sky, ground=base.ground, terrain=base.terrain), 96, 96)
        strips.append(img)
        labels.append(lab)
    mosaic = np.concatenate(strips, axis=1)
    a = A.analyse_scene(mosaic)
    assert len(a.discs) == 4
    truth = np.concatenate([lab.horizon for lab in labels])
    assert np.median(np.abs(a.horizon - truth)) <= 0.5
