"""SyncDiffusion's panorama protocol: the seeded random crop, and FID / KID (clean-fid) and CLIP score on the crops.

The official evaluation (KAIST-Visual-AI-Group/SyncDiffusion, eval_code/, commit 2b483777):
`crop_panorama.py` seeds NumPy with 2023 once, then for each panorama draws
`x = np.random.randint(0, W - 512)` and keeps `image[:, x:x+512]`; FID and KID come from
clean-fid between those crops and a reference set (512 x 512 generations of the same model);
Mean-CLIP-S is torchmetrics' `CLIPScore` per crop with the prompt, averaged. Here the crop
size is a parameter (`size`; 512 in the paper, the canvas height for the toy models) and
the feature extractor / CLIP metric are objects the caller passes, since weights cannot
be downloaded here; the offline default feature extractor is the shipped feature network
(`features.py`), whose values do not compare with Inception's. tests/test_protocol.py runs
the official code (and clean-fid's) against these functions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ...errors import ConfigError, check_positive_int
from ..common import Score, to_image_tensor
from .kid import mmd2_unbiased

#: `crop_panorama.py` calls np.random.seed(2023) once at import.
PROTOCOL_SEED = 2023
#: The paper's crop side (and the panorama height it asserts).
PAPER_CROP = 512
#: clean-fid's "clean" mode resizes every image to Inception's 299 x 299 (PIL bicubic on float channels).
CLEAN_FID_SIZE = 299
#: clean-fid's `kernel_distance` defaults.
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000


def as_uint8(image: Any, *, name: str = "image") -> np.ndarray:
    """One image as an H x W x 3 uint8 array (what cv2 / PIL read from the PNG files the official scripts load).

    uint8 arrays and PIL images pass unchanged; float images in [0, 1] are rounded (x * 255).
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    t = to_image_tensor(image, name=name)[0]
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return (t.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def crop_offsets(widths: Sequence[int], size: int = PAPER_CROP, *, seed: int = PROTOCOL_SEED, num_crops: int = 1) -> list[int]:
    """The left edge of each panorama's crop: `np.random.seed(seed)` once, then `num_crops` draws of
    `randint(0, W - size)` per panorama in the given order; the last draw is kept (the official script
    writes every crop of a panorama to the same file name, so only the last survives)."""
    check_positive_int("size", size)
    check_positive_int("num_crops", num_crops, example=1)
    for i, w in enumerate(widths):
        if int(w) <= size:
            raise ConfigError(f"widths[{i}] = {w} must exceed the crop size {size} (randint(0, W - size) needs W > size); "
                              "use a panorama wider than its crop")
    rng = np.random.RandomState(seed)  # the stream np.random.seed(seed) gives the global functions
    out = []
    for w in widths:
        for _ in range(num_crops):
            x = int(rng.randint(0, int(w) - size))
        out.append(x)
    return out


def protocol_crops(images: Sequence[Any], size: int = PAPER_CROP, *, seed: int = PROTOCOL_SEED,
                   num_crops: int = 1) -> tuple[list[np.ndarray], list[int]]:
    """`crop_panorama.py` on `images` in the order given: (size x size uint8 crops, their left edges).

    Every panorama must be `size` high (the official script asserts H == 512). The official order
    is `os.listdir` of the panorama folder, which depends on the file system; pass the images in
    that order to reproduce its crops, or in any fixed order (e.g. sorted run ids) otherwise.
    """
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__") or len(images) == 0:
        raise ConfigError("images must be a non-empty list of panoramas (H x W x 3 uint8 arrays, PIL images or tensors)")
    arrs = [as_uint8(im, name=f"images[{i}]") for i, im in enumerate(images)]
    check_positive_int("size", size)
    for i, a in enumerate(arrs):
        if a.shape[0] != size:
            raise ConfigError(f"images[{i}] is {a.shape[0]} px high; the protocol needs panoramas exactly size={size} high "
                              f"(set size={a.shape[0]} for this canvas height)")
    xs = crop_offsets([a.shape[1] for a in arrs], size, seed=seed, num_crops=num_crops)
    return [np.ascontiguousarray(a[:, x:x + size]) for a, x in zip(arrs, xs)], xs


def clean_resize(image: np.ndarray, size: int | tuple[int, int] = CLEAN_FID_SIZE) -> np.ndarray:
    """clean-fid's "clean" resize: each channel as a float32 PIL 'F' image, bicubic to `size`, clipped to [0, 255]."""
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else (size[1], size[0])
    chans = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize((w, h), resample=Image.BICUBIC))
             .clip(0, 255).reshape(h, w, 1) for c in range(3)]
    return np.concatenate(chans, axis=2).astype(np.float32)


def featnet_extractor(net: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shipped feature network as a clean-fid style extractor: (N, 3, H, W) floats in [0, 255] -> pooled features."""
    from ..features import load_feature_net, pooled_features

    net = net if net is not None else load_feature_net()

    def extract(batch: torch.Tensor) -> torch.Tensor:
        return pooled_features(batch.double() / 255.0, net=net)

    extract.backbone = getattr(net, "backbone", "custom")  # type: ignore[attr-defined]
    return extract


def protocol_features(crops: Sequence[Any], extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                      resize: int | tuple[int, int] | None = CLEAN_FID_SIZE, batch_size: int = 32) -> np.ndarray:
    """(N, D) float64 features of `crops` as clean-fid's folder features: uint8 image -> `clean_resize`
    (skipped with resize=None) -> float32 (N, 3, H, W) in [0, 255] -> `extractor` (default: the shipped
    feature network, `featnet_extractor`). Any callable on such batches works (an Inception, a random net)."""
    if len(crops) == 0:
        raise ConfigError("crops must hold at least one image")
    check_positive_int("batch_size", batch_size, example=32)
    if resize is not None:
        for v in (resize if isinstance(resize, tuple) else (resize,)):
            check_positive_int("resize", v, example=CLEAN_FID_SIZE)
    extractor = extractor if extractor is not None else featnet_extractor()
    arrs = [as_uint8(c, name=f"crops[{i}]") for i, c in enumerate(crops)]
    ims = [clean_resize(a, resize) if resize is not None else a.astype(np.float32) for a in arrs]
    if len({im.shape for im in ims}) > 1:
        raise ConfigError(f"crops have different sizes {sorted({im.shape[:2] for im in ims})}; give resize= or equal crops")
    out = []
    with torch.no_grad():
        for s in range(0, len(ims), batch_size):
            batch = torch.from_numpy(np.stack(ims[s:s + batch_size])).permute(0, 3, 1, 2).contiguous()
            out.append(torch.as_tensor(extractor(batch)).detach().cpu().double().numpy())
    return np.concatenate(out)


def frechet_distance(feats: np.ndarray, ref_feats: np.ndarray) -> float:
    """FID as clean-fid's `fid_from_feats`: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)),
    with np.cov (ddof 1) and scipy's sqrtm; 1e-6 is added to the diagonals when the product is singular."""
    from scipy import linalg

    f1, f2 = np.asarray(feats, dtype=np.float64), np.asarray(ref_feats, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ConfigError(f"feats and ref_feats must be (N, D) arrays with the same D and N >= 2; got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ConfigError(f"sqrtm(S1 S2) has an imaginary part up to {np.max(np.abs(covmean.imag)):.3g}: the covariances "
                              "are too singular (use more crops than feature dimensions)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_distance(feats: np.ndarray, ref_feats: np.ndarray, *, num_subsets: int = KID_SUBSETS,
                    max_subset_size: int = KID_MAX_SUBSET, seed: int | None = 0) -> float:
    """KID as clean-fid's `kernel_distance(feats, ref_feats)`: the mean over `num_subsets` draws of
    m = min(N1, N2, max_subset_size) rows per side (reference rows drawn first, `np.random.choice`
    without replacement) of the unbiased cubic-kernel MMD^2 (`mmd2_unbiased`). clean-fid draws from the
    global NumPy state; here `RandomState(seed)` (the same stream as np.random.seed(seed)), or the
    global state with seed=None."""
    f1, f2 = np.asarray(feats, dtype=np.float64), np.asarray(ref_feats, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ConfigError(f"feats and ref_feats must be (N, D) arrays with the same D; got {f1.shape} and {f2.shape}")
    check_positive_int("num_subsets", num_subsets, example=KID_SUBSETS)
    check_positive_int("max_subset_size", max_subset_size, example=KID_MAX_SUBSET)
    m = min(len(f1), len(f2), max_subset_size)
    if m < 2:
        raise ConfigError(f"KID needs at least 2 rows per side; got {len(f1)} and {len(f2)}")
    choice = np.random.RandomState(seed).choice if seed is not None else np.random.choice
    t1, t2 = torch.from_numpy(f1), torch.from_numpy(f2)
    vals = []
    for _ in range(num_subsets):
        y = t2[torch.from_numpy(choice(len(f2), m, replace=False))]
        x = t1[torch.from_numpy(choice(len(f1), m, replace=False))]
        vals.append(float(mmd2_unbiased(x, y)))
    return float(np.mean(vals))


def _sets(crops: Sequence[Any], reference: Sequence[Any], extractor: Any, resize: Any) -> tuple[np.ndarray, np.ndarray, str]:
    fx = extractor if extractor is not None else featnet_extractor()
    return (protocol_features(crops, fx, resize=resize), protocol_features(reference, fx, resize=resize),
            getattr(fx, "backbone", "custom"))


def protocol_fid(crops: Sequence[Any], reference: Sequence[Any], *, extractor: Any = None,
                 resize: int | tuple[int, int] | None = CLEAN_FID_SIZE) -> Score:
    """FID between protocol crops and a reference set (clean-fid's `compute_fid` between two folders,
    with `extractor` in place of Inception; default the shipped feature network). Lower is better."""
    f1, f2, bb = _sets(crops, reference, extractor, resize)
    return Score(frechet_distance(f1, f2), details={"n_images": len(f1), "n_reference": len(f2), "feature_dim": f1.shape[1],
                                                    "backbone": bb, "resize": resize})


def protocol_kid(crops: Sequence[Any], reference: Sequence[Any], *, extractor: Any = None,
                 resize: int | tuple[int, int] | None = CLEAN_FID_SIZE, num_subsets: int = KID_SUBSETS,
                 max_subset_size: int = KID_MAX_SUBSET, seed: int | None = 0) -> Score:
    """KID between protocol crops and a reference set (clean-fid's `compute_kid` between two folders,
    `kernel_distance`; default extractor the shipped feature network). Lower is better; 0 = same distribution."""
    f1, f2, bb = _sets(crops, reference, extractor, resize)
    v = kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size, seed=seed)
    return Score(v, details={"n_images": len(f1), "n_reference": len(f2), "subset_size": min(len(f1), len(f2), max_subset_size),
                             "n_subsets": num_subsets, "feature_dim": f1.shape[1], "backbone": bb, "resize": resize})


def clip_input(crop: Any) -> torch.Tensor:
    """What eval_clip_score.py feeds CLIPScore: `T.ToTensor()(PIL image) * 255` cast to int64 (a cast that
    truncates, so a value whose float round trip lands below the integer loses 1)."""
    a = as_uint8(crop)
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return (t * 255.0).type(torch.int64)


def protocol_clip_score(crops: Sequence[Any], prompt: str, metric: Callable[[torch.Tensor, str], Any]) -> Score:
    """Mean-CLIP-S: `metric(image, prompt)` per crop (a torchmetrics `CLIPScore`, e.g. on
    openai/clip-vit-base-patch16, or any callable of an int64 (3, H, W) image and the prompt), averaged;
    `.details["std"]` is np.std over crops (ddof 0), as the official script prints. Higher is better."""
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f"prompt must be the generation prompt (a non-empty string); got {prompt!r}")
    if not callable(metric):
        raise ConfigError("metric must be a callable such as torchmetrics.multimodal.CLIPScore(model_name_or_path=...)")
    if len(crops) == 0:
        raise ConfigError("crops must hold at least one image")
    scores = []
    for c in crops:
        s = metric(clip_input(c), prompt)
        scores.append(float(s.item() if hasattr(s, "item") else s))
    return Score(float(np.mean(scores)), details={"std": float(np.std(scores)), "n_images": len(scores), "prompt": prompt})


__all__ = [
    "CLEAN_FID_SIZE", "KID_MAX_SUBSET", "KID_SUBSETS", "PAPER_CROP", "PROTOCOL_SEED", "as_uint8", "clean_resize", "clip_input",
    "crop_offsets", "featnet_extractor", "frechet_distance", "kernel_distance", "protocol_clip_score", "protocol_crops",
    "protocol_features", "protocol_fid", "protocol_kid",
]
