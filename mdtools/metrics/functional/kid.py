"""Kernel Inception Distance (`kid`) on the shipped feature network, and its unbiased polynomial-kernel MMD."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError, MetricUnavailable, check_positive_int
from ..common import Score, to_image_tensor, to_rgb


def poly_kernel(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> torch.Tensor:
    """Polynomial kernel (gamma x.y + coef)^degree between rows; gamma defaults to 1 / feature dimension (KID's)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * g + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> torch.Tensor:
    """Unbiased estimate of the squared MMD between samples x (m, d) and y (n, d) with `poly_kernel`.

    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n); for m = n it is torchmetrics' `poly_mmd`. It can be
    slightly negative when the two distributions are equal.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ConfigError(f"the unbiased MMD needs at least 2 samples on each side; got {m} and {n}")
    kxx = poly_kernel(x, x, degree=degree, gamma=gamma, coef=coef)
    kyy = poly_kernel(y, y, degree=degree, gamma=gamma, coef=coef)
    kxy = poly_kernel(x, y, degree=degree, gamma=gamma, coef=coef)
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def kid_from_features(
    x: torch.Tensor, y: torch.Tensor, *, subset_size: int | None = None, n_subsets: int = 100, degree: int = 3,
    gamma: float | None = None, coef: float = 1.0, seed: int = 0,
) -> tuple[float, float, int]:
    """KID (Binkowski et al. 2018, as torchmetrics): mean and std over `n_subsets` random subsets of
    `subset_size` rows from each side of `mmd2_unbiased`; returns (mean, std, subset size used).

    `subset_size` defaults to min(m, n, 1000). When it covers both sets entirely every subset is
    the same, so the estimate is computed once (std 0). Deterministic given `seed`.
    """
    x, y = x.double(), y.double()
    m, n = x.shape[0], y.shape[0]
    s = min(m, n, 1000) if subset_size is None else int(subset_size)
    if s < 2 or s > min(m, n):
        raise ConfigError(f"subset_size={s} must lie in [2, {min(m, n)}] (the smaller set has {min(m, n)} samples)")
    check_positive_int("n_subsets", n_subsets)
    kw = {"degree": degree, "gamma": gamma, "coef": coef}
    if s == m and s == n:
        return float(mmd2_unbiased(x, y, **kw)), 0.0, s
    g = torch.Generator().manual_seed(seed)
    vals = torch.stack([mmd2_unbiased(x[torch.randperm(m, generator=g)[:s]], y[torch.randperm(n, generator=g)[:s]], **kw)
                        for _ in range(n_subsets)])
    return float(vals.mean()), float(vals.std(unbiased=False)), s


def sliding_crops(image: Any, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None, *,
                  name: str = "image") -> torch.Tensor:
    """(n, 3, h, w) crops of every image in `image` (one image or a batch) on a grid from the top left.

    `stride` defaults to the crop size (non-overlapping, as `crop_grid`); the remainder at the
    right / bottom is dropped. An image smaller than the crop gives none.
    """
    img = to_rgb(to_image_tensor(image, name=name, batch=True)).float()
    ch, cw = size if isinstance(size, tuple) else (size, size)
    sh, sw = (stride if isinstance(stride, tuple) else (stride, stride)) if stride is not None else (ch, cw)
    for nm, v in (("crop", ch), ("crop", cw), ("stride", sh), ("stride", sw)):
        check_positive_int(nm, v)
    H, W = img.shape[-2:]
    if ch > H or cw > W:
        return img.new_zeros((0, 3, ch, cw))
    boxes = [(i, j) for i in range(0, H - ch + 1, sh) for j in range(0, W - cw + 1, sw)]
    return torch.cat([img[:, :, i:i + ch, j:j + cw] for i, j in boxes])


def _image_set(images: Any, crop: int | tuple[int, int] | None, stride: int | tuple[int, int] | None, name: str) -> list[Any]:
    """A set of images (a list, or one image / an (N, 3, H, W) batch) as a list of tensors or crops."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ConfigError(f"{name} must hold at least 2 images; got none")
    if crop is None:
        return [to_rgb(to_image_tensor(im, name=f"{name}[{i}]", batch=True)).float() for i, im in enumerate(items)]
    return [sliding_crops(im, crop, stride, name=f"{name}[{i}]") for i, im in enumerate(items)]


def kid(
    images: Any,
    reference_images: Any,
    *,
    crop: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    net: Any = None,
    subset_size: int | None = None,
    n_subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> Score:
    """Kernel Inception Distance between a set of images and a reference set, on the shipped feature network.

    Each image (a list of images of any sizes, or an (N, 3, H, W) batch in [0, 1]) gives one
    feature vector: the global average of the network's last stage (256-d), as KID uses
    Inception's pool features. With `crop`, every image is first cut into crop x crop tiles
    every `stride` px (default: non-overlapping) and each tile is a sample. The value is the
    unbiased polynomial-kernel MMD^2 (`kid_from_features`; degree 3, gamma 1 / 256, coef 1),
    the mean over `n_subsets` subsets of `subset_size` samples per side; `.details["std"]` is
    its spread over subsets. 0 = same distribution (slightly negative values happen); lower
    is better. Values are not comparable with Inception-based KID. `net`: a FeatureNet
    (default: the shipped one).
    """
    from ..features import BACKBONE, load_feature_net, pooled_features

    try:
        net = net if net is not None else load_feature_net()
    except MetricUnavailable as e:
        return Score.nan(str(e), backbone=BACKBONE)
    a = _image_set(images, crop, stride, "images")
    b = _image_set(reference_images, crop, stride, "reference_images")
    fa, fb = pooled_features(a, net=net), pooled_features(b, net=net)
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        return Score.nan(f"KID needs at least 2 samples per side; got {fa.shape[0]} images and {fb.shape[0]} reference "
                         "samples (use more images, or a smaller crop / stride)", backbone=BACKBONE)
    mean, std, s = kid_from_features(fa, fb, subset_size=subset_size, n_subsets=n_subsets, degree=degree,
                                     gamma=gamma, coef=coef, seed=seed)
    return Score(mean, details={"std": std, "n_images": fa.shape[0], "n_reference": fb.shape[0], "subset_size": s,
                                "n_subsets": 1 if s == fa.shape[0] == fb.shape[0] else n_subsets,
                                "feature_dim": fa.shape[1], "backbone": getattr(net, "backbone", "custom")})


__all__ = ["kid", "kid_from_features", "mmd2_unbiased", "poly_kernel", "sliding_crops"]
