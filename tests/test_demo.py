"""`make demo`: its upscale part (one 4x upscale of a scene beside bicubic and Ultimate SD Upscale) and the choice of its scene seed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdtools.demo import UPSCALE_FACTOR, print_upscale, run_upscale


@pytest.fixture(scope="module")
def upscaled(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # 4 steps at strength 0.4: one denoising step, enough to run every path fast
    return out, run_upscale(out, size=(128, 128), settings={"steps": 4})


def test_upscale_demo_writes_every_image_and_the_comparison(upscaled):
    out, items = upscaled
    labels = [label for label, _, _ in items]
    assert labels[:3] == ["truth", "bicubic", "Ultimate SD Upscale"] and labels[3].startswith("mdtools mixture")
    for _, path, m in items:
        assert path.is_file() and Image.open(path).size == (128, 128)
        assert set(m) == {"psnr", "color_drift", "seam_structure"}
    assert (out / "upscale_comparison.png").is_file()


def test_upscale_demo_psnr_is_against_the_truth(upscaled):
    """The printed PSNR equals 10 log10(1 / MSE) of the saved image against the saved truth (NumPy)."""
    _, items = upscaled
    truth = np.asarray(Image.open(items[0][1]), dtype=np.float64) / 255
    assert math.isinf(items[0][2]["psnr"])
    for _, path, m in items[1:]:
        mse = np.mean((np.asarray(Image.open(path), dtype=np.float64) / 255 - truth) ** 2)
        assert m["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)
    low = Image.open(items[0][1]).resize((128 // UPSCALE_FACTOR,) * 2, Image.BICUBIC)
    assert np.array_equal(np.asarray(low.resize((128, 128), Image.BICUBIC)), np.asarray(Image.open(items[1][1])))


def test_upscale_demo_prints_paths_and_figures(upscaled, capsys):
    out, items = upscaled
    print_upscale(items, out, 12.3)
    text = capsys.readouterr().out
    for label, path, m in items:
        assert str(path) in text and f"PSNR {m['psnr']:.2f} dB" in text and f"seam_structure {m['seam_structure']:.2f}" in text
    assert "upscale_comparison.png" in text and "12 s" in text


def _scene_runs(diffs: dict[int, int], control_rows: bool = True):
    import pandas as pd

    from mdtools.demo import SCENES_PAIR

    rows = []
    for seed, d in diffs.items():
        rows.append({"status": "ok", "canvas.height": 128, "canvas.width": 1024, "method.name": SCENES_PAIR[1], "seed": seed,
                     "metric.disc_count": 1.0, "control": ""})
        rows.append({"status": "ok", "canvas.height": 128, "canvas.width": 1024, "method.name": "multidiffusion", "seed": seed,
                     "metric.disc_count": 1.0 + d, "control": ""})
        if control_rows:  # the diffusers-default control is multidiffusion too: it must be ignored
            rows.append({"status": "ok", "canvas.height": 128, "canvas.width": 1024, "method.name": "multidiffusion",
                         "seed": seed, "metric.disc_count": 99.0, "control": "diffusers_default"})
    return pd.DataFrame(rows)


def test_median_seed_takes_the_lower_middle_difference_and_ignores_controls():
    from mdtools.demo import median_seed

    assert median_seed(_scene_runs({0: 9, 1: 14, 2: 3, 3: 11, 4: 5, 5: 12})) == (0, 9.0, 6)  # sorted 3 5 9 11 12 14: the lower middle is 9
    assert median_seed(_scene_runs({0: 4, 1: 2, 2: 8})) == (0, 4.0, 3)
    assert median_seed(_scene_runs({0: 5, 1: 5, 2: 5, 3: 5})) == (1, 5.0, 4)  # ties: smallest seed of the lower middle


def test_median_seed_refuses_an_empty_comparison():
    from mdtools.demo import median_seed
    from mdtools.errors import ConfigError

    with pytest.raises(ConfigError, match="no seed has both"):
        median_seed(_scene_runs({0: 1}).query("`method.name` != 'demofusion'"))


def test_the_demo_scene_seed_is_the_median_seed_of_the_committed_coherence_sweep():
    import pandas as pd

    from mdtools.demo import SCENES_EXPERIMENT, SCENES_SOURCE, median_seed
    from mdtools.sweep import load_experiment

    root = Path(__file__).resolve().parents[1]
    exp = load_experiment(root / SCENES_EXPERIMENT)
    seed, _, n = median_seed(pd.read_parquet(root / SCENES_SOURCE / "runs.parquet"))
    assert {r.seed for r in exp.runs} == {seed} and n >= 6
    coherence = load_experiment(root / "experiments" / "coherence.yaml")
    assert {r.model for r in exp.runs} == {coherence.runs[0].model}  # the same model as the sweep it is chosen from
