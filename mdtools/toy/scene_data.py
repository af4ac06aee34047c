"""Training and evaluation data of the scenes model (`mdtools train-toy --data scenes`).

Scenes come from the procedural generator `mdtools.toy.scenes`: every window is a fresh
random scene, so there is no fixed image set to split. Training draws scenes from one seeded
stream (`SceneSampler(seed)`), evaluation from streams with other seeds (`heldout_scenes`);
scene parameters are continuous, so a held-out scene repeating a training scene has
probability zero.

Class index c is the prompt `SCENE_PROMPTS[c]` (sky x place; the disc follows the sky).
"""

from __future__ import annotations

import numpy as np

from .data import WINDOW
from .scenes import SCENE_PROMPTS, SceneLabels, SceneParams, make_scene, parse_prompt, sample_params, scene_prompt

#: Seed offset of the held-out streams: training uses SceneSampler(seed) with small seeds.
HELDOUT_SEED = 1_000_003


def class_params(c: int, rng: np.random.Generator) -> SceneParams:
    """Random scene parameters of class c (the prompt SCENE_PROMPTS[c])."""
    lab = parse_prompt(SCENE_PROMPTS[c])
    return sample_params(rng, sky=lab["sky"], ground=lab["ground"], terrain=lab["terrain"])


class SceneSampler:
    """Deterministic class-balanced sampler of rendered scene windows (the CropSampler of scenes).

    `sample(n, size)` renders n random 128 px scenes and, when size < 128, takes a random
    size x size crop of each (the VAE's cheap early steps); half are mirrored left-right (a
    mirrored scene is still a scene with the same labels). No rotation: skies are up.
    """

    n_classes: int = len(SCENE_PROMPTS)
    prompts: tuple[str, ...] = SCENE_PROMPTS

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """n windows (n, size, size, 3) float32 in [0, 1] and their class indices (n,)."""
        imgs, labels, _ = self.sample_labelled(n, size)
        return imgs, labels

    def sample_labelled(self, n: int, size: int) -> tuple[np.ndarray, np.ndarray, list[SceneLabels]]:
        """As `sample`, plus each scene's ground truth (of the full 128 px scene, before crop and mirror)."""
        imgs, labels, truth, _ = self.sample_with_discs(n, size)
        return imgs, labels, truth

    def sample_with_discs(self, n: int, size: int) -> tuple[np.ndarray, np.ndarray, list[SceneLabels], np.ndarray]:
        """As `sample_labelled`, plus each window's disc mask (n, size, size) bool, cropped and mirrored
        as its image (the UNet's disc-weighted loss, `ToyTrainConfig.disc_weight`).

        Draws the same random numbers as `sample`, so a training stream does not depend on
        whether masks are asked for.
        """
        k = self.n_classes
        # Balanced as in CropSampler: a shuffled repeat of all classes.
        labels = np.concatenate([self.rng.permutation(k) for _ in range((n + k - 1) // k)])[:n]
        out, truth, masks = [], [], []
        rows, cols = np.mgrid[0:WINDOW, 0:WINDOW] + 0.5  # pixel centres
        for c in labels:
            img, lab = make_scene(class_params(int(c), self.rng), WINDOW, WINDOW)
            if scene_prompt(lab) != SCENE_PROMPTS[c]:  # the generator's contract; cheap to keep honest
                raise RuntimeError(f"class {c} rendered {scene_prompt(lab)!r}, expected {SCENE_PROMPTS[c]!r}")
            (cy, cx), r = lab.disc_center, lab.disc_radius
            mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
            if size < WINDOW:
                y, x = (int(v) for v in self.rng.integers(WINDOW - size + 1, size=2))
                img, mask = img[y : y + size, x : x + size], mask[y : y + size, x : x + size]
            if self.rng.random() < 0.5:
                img, mask = img[:, ::-1], mask[:, ::-1]
            out.append(np.ascontiguousarray(img))
            masks.append(np.ascontiguousarray(mask))
            truth.append(lab)
        return np.stack(out), labels.astype(np.int64), truth, np.stack(masks)


def heldout_scenes(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 128 px scenes from a held-out stream, grouped by class: images (N, 128, 128, 3), labels (N,)."""
    rng = np.random.default_rng(HELDOUT_SEED + seed)
    imgs = [make_scene(class_params(c, rng), WINDOW, WINDOW)[0] for c in range(len(SCENE_PROMPTS)) for _ in range(n_per_class)]
    return np.stack(imgs), np.repeat(np.arange(len(SCENE_PROMPTS)), n_per_class).astype(np.int64)
