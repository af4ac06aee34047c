"""Coherence metrics (disc_count, no_disc, one_disc, horizon_continuity, horizon_breaks, sky_consistency) on scenes with planted failures.

Small panoramas (64 x 256, plan window 64 / overlap 16: five views) keep this to seconds;
benchmarks/coherence_validation.py gives the full tables at 128 x 512 (docs/metrics.md).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2lab

import mdtools.metrics as M
from mdtools import ConfigError, plan_views
from mdtools.metrics import scene_analysis as A
from mdtools.metrics.scene_coherence import line_steps, seam_zones, view_columns
from mdtools.metrics.synthetic import erase_disc, plant_blob
from mdtools.toy import scenes as S

H, W = 64, 256
PLAN = plan_views(H, W, window=64, overlap=16)  # views at 0, 48, 96, 144, 192 px
TINT = np.array([1.0, 0.5, -0.5])
STEPS = (0, 2, 4, 8, 12)  # px (at most 20 % of the height)
TINTS = (0.0, 0.01, 0.02, 0.04, 0.08)  # RGB tint of the last view; view g gets g / 4 of it


@pytest.fixture(scope="module")
def scenes() -> list[tuple[S.SceneParams, np.ndarray, S.SceneLabels]]:
    rng = np.random.default_rng(2)
    out = []
    for sky, terrain in itertools.product(S.SKIES, ("mountains", "sea", "mountains")):
        p = S.sample_params(rng, sky=sky, terrain=terrain)
        out.append((p, *S.make_scene(p, H, W)))
    return out


def horizon_step(p: S.SceneParams, k: float) -> np.ndarray:
    """The scene with its terrain k px lower between alternate seam lines (a k-px step at each)."""
    return S.render_scene(p, H, W, horizon_offset=k * S.strip_profile(W, PLAN.seam_lines["x"]))


def sky_drift(img: np.ndarray, lab: S.SceneLabels, a: float) -> np.ndarray:
    group, _ = view_columns(PLAN, H, W)
    return S.tint_sky(img, lab, (a * group / group.max())[:, None] * TINT[None, :])


def blurry(img: np.ndarray, seed: int) -> np.ndarray:
    return np.clip(gaussian_filter(img, (1.5, 1.5, 0)) + np.random.default_rng(seed).normal(0, 0.02, img.shape), 0, 1)


# --------------------------------------------------------------------------- disc_count


def test_disc_count_is_the_number_of_discs(scenes):
    for i, (p, img, lab) in enumerate(scenes):
        counts = [M.disc_count(S.plant_discs(img, lab, extra, np.random.default_rng(i)), PLAN) for extra in (0, 1, 2)]
        assert counts == [1, 2, 3], (p, counts)
    d = M.disc_count(scenes[0][1])
    (cy, cx, r), = d.details["discs"]
    assert abs(cy - scenes[0][2].disc_center[0]) < 1 and abs(cx - scenes[0][2].disc_center[1]) < 1


DISC_COLOUR = {"day": (1.0, 0.98, 0.84), "sunset": (1.0, 0.92, 0.58), "night": (0.88, 0.88, 0.82)}


def test_disc_count_ignores_a_bright_blob_below_the_horizon(scenes):
    # the look-alike DemoFusion made: a white disc in the ground or the sea is not a sun
    for i, (p, img, lab) in enumerate(scenes):
        cx, r = lab.disc_center[1], lab.disc_radius
        for x in (cx, (cx + W / 2) % W):  # under its own sun, and half a panorama away
            x = float(np.clip(x, r + 2, W - r - 2))
            top = lab.horizon[int(max(0, x - r - 2)):int(min(W, x + r + 3))].max()
            blob = plant_blob(img, min(H - r - 2, top + r + 5), x, r, DISC_COLOUR[p.sky])
            for im in (blob, blurry(blob, i)):
                d = M.disc_count(im)
                assert d == 1, (p, x, d.details)
                assert abs(d.details["discs"][0][1] - cx) < 1.5  # the one counted is the sun in the sky
        assert M.one_disc(blob) == 1 and M.no_disc(blob) == 0


def test_a_sky_with_no_sun_counts_zero_and_is_its_own_failure(scenes):
    for i, (p, img, lab) in enumerate(scenes):
        none = erase_disc(img, *lab.disc_center, lab.disc_radius)
        for im in (none, blurry(none, i)):
            assert M.disc_count(im) == 0, p
            assert M.no_disc(im) == 1 and M.one_disc(im) == 0
        assert M.no_disc(img) == 0 and M.one_disc(img) == 1
        two = S.plant_discs(img, lab, 1, np.random.default_rng(i))
        assert M.no_disc(two) == 0 and M.one_disc(two) == 0  # |2 - 1| = |0 - 1|, but only 0 is "no sun"
        # a faint sun still counts; one at cloud strength (40 % of the way) does not
        faint = plant_blob(none, *lab.disc_center, lab.disc_radius, DISC_COLOUR[p.sky], 0.8)
        cloudy = plant_blob(none, *lab.disc_center, lab.disc_radius, DISC_COLOUR[p.sky], 0.4)
        assert M.disc_count(faint) == 1 and M.disc_count(cloudy) == 0, p


def test_fill_horizon_interpolates_missing_columns():
    h = np.array([np.nan, 10.0, np.nan, np.nan, 16.0, np.nan])
    np.testing.assert_allclose(A.fill_horizon(h, 64), [10, 10, 12, 14, 16, 16])
    np.testing.assert_allclose(A.fill_horizon(np.full(3, np.nan), 64), 64)


# ------------------------------------------------------------------- horizon_continuity


def test_horizon_continuity_is_one_when_clean_and_grows_with_the_step(scenes):
    vals = np.array([[float(M.horizon_continuity(horizon_step(p, k), PLAN)) for k in STEPS] for p, _, _ in scenes])
    clean = vals[:, 0]
    assert np.all((clean > 0.75) & (clean < 1.35)), clean
    assert abs(clean.mean() - 1) < 0.12, clean
    assert np.all(np.diff(vals, axis=1) > 0), vals  # monotone in the step, scene by scene
    assert np.all(vals[:, -1] > 3), vals


def test_horizon_continuity_measures_the_step_in_pixels_on_a_flat_sea(scenes):
    # independent reference: the planted step itself (a sea line is flat, so nothing else moves)
    for p, _, _ in scenes:
        if p.terrain != "sea":
            continue
        for k in (2, 8):
            s = M.horizon_continuity(horizon_step(p, k), PLAN)
            steps = [z["step"] for z in s.details["per_zone"]]
            np.testing.assert_allclose(steps, k, atol=0.35)
            assert s.details["interior_step"] < 0.1
            assert math.isclose(float(s), (s.details["seam_step"] + 0.5) / (s.details["interior_step"] + 0.5))


def test_line_steps_match_a_polyfit_reference():
    rng = np.random.default_rng(0)
    h = np.cumsum(rng.normal(0, 1.5, 40)) + 30
    h[17] = np.nan
    for window, periodic in ((4, False), (3, True), (6, False)):
        got = line_steps(h, np.arange(40), window, periodic=periodic)
        for p in range(40):
            left = [(p - 1 - j) for j in range(window)]
            right = [(p + j) for j in range(window)]
            if periodic:
                left, right = [q % 40 for q in left], [q % 40 for q in right]
            elif min(left) < 0 or max(right) >= 40:
                assert np.isnan(got[p])
                continue
            # columns sit at their centres: column q at q + 0.5, unwrapped around the line p
            xl = [p - 1 - j + 0.5 for j in range(window)]
            xr = [p + j + 0.5 for j in range(window)]
            if np.isnan(h[left]).any() or np.isnan(h[right]).any():
                assert np.isnan(got[p])
                continue
            fl, fr = np.polyfit(xl, h[left], 1), np.polyfit(xr, h[right], 1)
            ref = abs(np.polyval(fr, p) - np.polyval(fl, p))
            assert got[p] == pytest.approx(ref, abs=1e-9)


def test_seam_zones_and_view_columns_follow_the_plan():
    assert seam_zones(PLAN, H, W, tolerance=0) == [(48, 64), (96, 112), (144, 160), (192, 208)]
    assert seam_zones(PLAN, H, W) == [(46, 66), (94, 114), (142, 162), (190, 210)]
    assert seam_zones(plan_views(64, 256, window=64, overlap=0), 64, 256, tolerance=0) == [(64, 64), (128, 128), (192, 192)]
    assert seam_zones({"x": [100]}, H, W, tolerance=1) == [(99, 101)]
    circ = plan_views(64, 256, window=64, overlap=16, circular="x")  # views at 0, 40, 88, 128, 168, 216 px
    assert seam_zones(circ, 64, 256, tolerance=0)[-1] == (0, 24)  # the last view wraps onto the first
    assert seam_zones(circ, 64, 256)[-1] == (254, 26)  # a > b: the zone runs across the wrap line
    group, off = view_columns(PLAN, H, W)
    np.testing.assert_array_equal(np.bincount(group), [56, 48, 48, 48, 56])  # boundaries mid-overlap
    assert off[0] == -31.5 and group[55] == 0 and group[56] == 1
    group, _ = view_columns(None, 64, 256)
    np.testing.assert_array_equal(np.bincount(group), [64] * 4)


def test_horizon_continuity_on_a_circular_plan_includes_the_wrap(scenes):
    p = next(p for p, _, _ in scenes if p.terrain == "sea")
    circ = plan_views(H, 384, window=64, overlap=8, circular="x")  # narrow overlaps leave room for interior runs
    s = M.horizon_continuity(S.render_scene(p, H, 384), circ)
    assert any(a <= 0 <= b or a > b for a, b in (z["lines"] for z in s.details["per_zone"]))
    assert 0.8 < s < 1.25  # a sea line is periodic: no step at the wrap either


def broken_everywhere(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prof, x, v = np.zeros(W), 0, 0
    while x < W:
        n = int(rng.integers(6, 14))
        prof[x:x + n], x, v = v, x + n, 1 - v
    return prof


def test_horizon_breaks_reads_a_horizon_broken_everywhere_as_broken(scenes):
    # the seam ratio is blind to it (interior as broken as the seams); the absolute count is not
    for i, (p, _, _) in enumerate(scenes):
        clean = S.render_scene(p, H, W)
        broken = S.render_scene(p, H, W, horizon_offset=6 * broken_everywhere(i))
        seams = horizon_step(p, 6)
        b_clean, b_broken, b_seams = (float(M.horizon_breaks(im, PLAN)) for im in (clean, broken, seams))
        assert b_clean <= 0.25 and b_broken > 2 and b_seams >= 0.75, (p, b_clean, b_broken, b_seams)
        assert float(M.horizon_breaks(blurry(broken, i))) > float(M.horizon_breaks(blurry(clean, i))) + 1, p
        assert M.horizon_continuity(broken, PLAN) < 2  # what the issue found: the ratio calls it continuous
    s = M.horizon_breaks(S.render_scene(scenes[1][0], H, W, horizon_offset=6 * broken_everywhere(1)))
    assert s.details["breaks"] == len(s.details["at"]) and 0 < s.details["break_lines"] < 1
    assert math.isnan(M.horizon_breaks(np.full((H, W, 3), 0.5))), "no horizon: NaN"


# ---------------------------------------------------------------------- sky_consistency


def test_sky_consistency_is_one_when_clean_and_grows_with_the_drift(scenes):
    vals = np.array([[float(M.sky_consistency(sky_drift(img, lab, a), PLAN)) for a in TINTS] for _, img, lab in scenes])
    np.testing.assert_allclose(vals[:, 0], 1.0, atol=0.05)
    assert np.all(np.diff(vals, axis=1) > 0), vals
    assert np.all(vals[:, -1] > 3), vals


def _sky_consistency_loops(img: np.ndarray, plan, floor: float = 1.0) -> float:
    """The documented formula with plain loops (median per row and part, offsets, pairs)."""
    mask = A.analyse_scene(img).sky_mask
    lab = rgb2lab(img.astype(np.float64))
    group, off = view_columns(plan, H, W)
    G = group.max() + 1

    def row_median(cols, y):
        px = [lab[y, x] for x in cols if mask[y, x]]
        return np.median(px, axis=0) if len(px) >= max(3, len(cols) // 4) else None

    groups = [[x for x in range(W) if group[x] == g] for g in range(G)]
    halves = [([x for x in c if off[x] < 0], [x for x in c if off[x] >= 0]) for c in groups]
    ref = {}
    for y in range(H):
        ms = [m for m in (row_median(c, y) for c in groups) if m is not None]
        if len(ms) >= 2:
            ref[y] = np.median(ms, axis=0)

    def offset(cols):
        diffs = [row_median(cols, y) - ref[y] for y in ref if row_median(cols, y) is not None]
        return np.median(diffs, axis=0)

    parts = [(g, offset(c)) for g in range(G) for c in halves[g]]
    between = np.mean([np.linalg.norm(p - q) for (g, p), (k, q) in itertools.combinations(parts, 2) if g != k])
    within = np.mean([np.linalg.norm(offset(a) - offset(b)) for a, b in halves])
    return (between + floor) / (within + floor)


def test_sky_consistency_matches_a_loop_reference(scenes):
    for p, img, lab in scenes[:3]:
        drifted = blurry(sky_drift(img, lab, 0.04), 0)
        assert float(M.sky_consistency(drifted, PLAN)) == pytest.approx(_sky_consistency_loops(drifted, PLAN), rel=1e-9)


# ------------------------------------------------------------- blur, naive tiling, NaNs


def test_metrics_stay_calibrated_and_sensitive_on_blurred_noisy_scenes(scenes):
    for i, (p, img, lab) in enumerate(scenes):
        assert M.disc_count(blurry(S.plant_discs(img, lab, 2, np.random.default_rng(i)), i)) == 3
        assert M.disc_count(blurry(img, i)) == 1
        clean_h = M.horizon_continuity(blurry(horizon_step(p, 0), i), PLAN)
        broken_h = M.horizon_continuity(blurry(horizon_step(p, 12), i), PLAN)
        assert 0.6 < clean_h < 1.6 and broken_h > 2.5, (p, clean_h, broken_h)
        clean_s = M.sky_consistency(blurry(img, i), PLAN)
        drift_s = M.sky_consistency(blurry(sky_drift(img, lab, 0.08), i), PLAN)
        assert 0.8 < clean_s < 1.3 and drift_s > 2.5, (p, clean_s, drift_s)


def test_naive_tiling_fails_all_three(scenes):
    # every view region its own scene of the same prompt: a sun per view, a horizon and a sky per view
    rng = np.random.default_rng(7)
    group, _ = view_columns(PLAN, H, W)
    for p, _, _ in scenes[:4]:
        mos = np.concatenate([
            S.render_scene(S.sample_params(rng, sky=p.sky, ground=p.ground, terrain=p.terrain), H, int((group == g).sum()))
            for g in range(group.max() + 1)], axis=1)
        assert M.disc_count(mos, PLAN) == 5
        assert M.horizon_continuity(mos, PLAN) > 1.5
        assert M.sky_consistency(mos, PLAN) > 1.5


def test_nan_with_reason_when_there_is_nothing_to_compare(scenes):
    img = scenes[0][1]
    s = M.horizon_continuity(img, None)
    assert math.isnan(s) and "no vertical seam" in s.reason
    one = plan_views(H, 64, window=64, overlap=16)
    s = M.horizon_continuity(img[:, :64], one)
    assert math.isnan(s) and "seam" in s.reason
    s = M.sky_consistency(img[:, :64], one)
    assert math.isnan(s) and "one view" in s.reason
    sky_only = np.broadcast_to(np.linspace([0.2, 0.4, 0.8], [0.5, 0.7, 0.9], H)[:, None, :], (H, W, 3)).copy()
    s = M.horizon_continuity(sky_only, PLAN)
    assert math.isnan(s) and "no horizon" in s.reason
    s = M.sky_consistency(sky_only, PLAN)
    assert math.isnan(s) and "sky found in 0" in s.reason
    assert M.disc_count(sky_only) == 0


def test_evaluate_and_registry(scenes):
    names = ["disc_count", "horizon_continuity", "sky_consistency"]
    _, img, lab = scenes[1]
    out = M.evaluate(img, PLAN, metrics=names)
    assert float(out["disc_count"]) == float(M.disc_count(img, PLAN))
    assert float(out["horizon_continuity"]) == float(M.horizon_continuity(img, PLAN))
    assert float(out["sky_consistency"]) == float(M.sky_consistency(img, PLAN))
    assert M.METRICS["disc_count"].higher_is_better is None  # closest to 1
    assert M.METRICS["horizon_continuity"].higher_is_better is False
    assert M.METRICS["sky_consistency"].higher_is_better is False
    assert M.METRICS["no_disc"].higher_is_better is False and M.METRICS["one_disc"].higher_is_better is True
    assert M.METRICS["horizon_breaks"].higher_is_better is False
    new = M.evaluate(img, PLAN, metrics=["no_disc", "one_disc", "horizon_breaks"])
    assert new["no_disc"] == 0 and new["one_disc"] == 1 and new["horizon_breaks"] == float(M.horizon_breaks(img))
    no_plan = M.evaluate(img, None, metrics=names)
    assert no_plan["disc_count"] == 1 and math.isnan(no_plan["horizon_continuity"])
    assert no_plan["sky_consistency"] == pytest.approx(1.0, abs=0.05)  # height-wide strips


def test_bad_inputs_raise_config_error_naming_the_field(scenes):
    img = scenes[0][1]
    with pytest.raises(ConfigError, match="window"):
        M.horizon_continuity(img, PLAN, window=0)
    with pytest.raises(ConfigError, match="floor"):
        M.horizon_continuity(img, PLAN, floor=0)
    with pytest.raises(ConfigError, match="tolerance"):
        M.horizon_continuity(img, PLAN, tolerance=-1)
    with pytest.raises(ConfigError, match="floor"):
        M.sky_consistency(img, PLAN, floor=-1.0)
    with pytest.raises(ConfigError, match="plan"):
        M.sky_consistency(img, plan_views(64, 128, window=64, overlap=16))
    with pytest.raises(ConfigError, match="plan"):
        M.horizon_continuity(img, plan_views(64, 128, window=64, overlap=16))
    with pytest.raises(ConfigError, match="plan must be a TilePlan"):
        M.disc_count(img, {"x": [64]})
    with pytest.raises(ConfigError, match="image"):
        M.disc_count("not an image")


def test_horizon_continuity_on_a_dense_plan_judges_the_view_edges():
    """Half-window overlaps cover the canvas (no interior reference): the view edges become the zones,
    clean panoramas stay near 1 and a horizon stepped at every edge scores high."""
    from mdtools.toy import scenes as S

    plan = plan_views(128, 512, window=128, overlap=64)
    clean, broken = [], []
    for seed in range(4):
        p = S.sample_params(np.random.default_rng(seed), terrain="sea")
        img, _ = S.make_scene(p, 128, 512)
        clean.append(float(M.evaluate(img, plan, metrics=["horizon_continuity"])["horizon_continuity"]))
        stepped, _ = S.make_scene(p, 128, 512, horizon_offset=S.strip_profile(512, list(plan.seam_lines["x"])) * 8)
        s = M.evaluate(stepped, plan, metrics=["horizon_continuity"])["horizon_continuity"]
        assert s.details["zones"] == "view edges (the overlaps cover the canvas)"
        broken.append(float(s))
    assert max(clean) < 1.5 and min(broken) > 3 * max(clean), (clean, broken)
