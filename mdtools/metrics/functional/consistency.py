"""Cross-view consistency over window-sized crops: Intra-LPIPS, Intra-Style (SyncDiffusion) and Intra-Color.

Intra-LPIPS / Intra-Style run offline on the shipped feature network (`features.py`) when
the ImageNet VGG weights are not cached (backbone "auto").
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Literal

import torch

from ...errors import ConfigError, MetricUnavailable, check_choice, check_positive_int
from ...plan import TilePlan
from ..color import rgb_to_lab
from ..common import Score, to_image_tensor, to_rgb
from .geometry import Box, crop_box


def crop_grid(height: int, width: int, crop: int | tuple[int, int]) -> list[Box]:
    """Non-overlapping crops of `crop` px from the top-left, as SyncDiffusion's eval code
    (`(L - crop) // crop + 1` per axis; the remainder at the right/bottom is dropped)."""
    ch, cw = crop if isinstance(crop, tuple) else (crop, crop)
    if ch > height or cw > width:
        return []
    return [(i * ch, j * cw, ch, cw) for i in range((height - ch) // ch + 1) for j in range((width - cw) // cw + 1)]


def _crops(image: Any, crop: int | tuple[int, int] | TilePlan | None) -> tuple[torch.Tensor, str | None]:
    img = to_rgb(to_image_tensor(image)).float()
    H, W = img.shape[-2:]
    if isinstance(crop, TilePlan):
        crop = crop.window
    elif crop is None:
        crop = min(512, H)  # SyncDiffusion: 512 px crops of 512-px-high panoramas
    size = crop if isinstance(crop, tuple) else (crop, crop)
    for v in size:
        check_positive_int("crop", v)
    boxes = crop_grid(H, W, size)
    if len(boxes) < 2:
        return img[:0], (
            f"needs at least 2 non-overlapping {size[0]}x{size[1]} crops; the image {H}x{W} gives {len(boxes)}"
        )
    return torch.cat([crop_box(img, b) for b in boxes], 0), None


def _pairs(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


def _intra_lpips_update(
    crops: torch.Tensor, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """Sum of LPIPS over all crop pairs and the number of pairs (crops in [0, 1])."""
    from ..features import FeatureLPIPS, pairwise_lpips

    pairs = _pairs(crops.shape[0])
    x = crops * 2 - 1  # LPIPS expects [-1, 1]
    i, j = zip(*pairs)
    with torch.no_grad():
        if isinstance(net, FeatureLPIPS):  # same formula, each crop's features computed once instead of once per pair
            d = pairwise_lpips(net.features(x), list(i), list(j))
        else:
            d = net(x[list(i)], x[list(j)])
    return d.sum().double(), len(pairs)


LPIPS_BACKBONES = ("auto", "lpips-vgg16", "mdtools-feature-net")
STYLE_BACKBONES = ("auto", "vgg19", "mdtools-feature-net")


def _pick_backbone(backbone: str, pretrained: str, load_pretrained: Callable[[], Any], load_own: Callable[[], Any],
                   choices: tuple[str, ...], *, given: Any = None, given_arg: str = "net",
                   metric: str = "") -> tuple[Any, dict[str, Any], str | None]:
    """(network, details, reason-if-none): a `given` network as it is, else the pretrained one when
    asked for or cached, else the shipped one.

    "auto" takes the pretrained ImageNet network when its weights are in the local torch hub
    cache (numbers comparable with the literature) and the shipped feature network otherwise,
    so the metric is never NaN offline; details record which ran and why.
    """
    if given is not None:
        if backbone != "auto":
            raise ConfigError(f"pass either {given_arg}= or backbone= to {metric}, not both (got backbone={backbone!r})")
        return given, {"backbone": getattr(given, "backbone", "custom")}, None
    check_choice("backbone", backbone, choices)
    details: dict[str, Any] = {}
    if backbone in ("auto", pretrained):
        try:
            return load_pretrained(), {"backbone": pretrained}, None
        except MetricUnavailable as e:
            if backbone == pretrained:
                return None, {"backbone": pretrained}, str(e)
            details["fallback_reason"] = str(e)
    from ..features import BACKBONE

    try:
        return load_own(), {"backbone": BACKBONE, **details}, None
    except MetricUnavailable as e:
        return None, {"backbone": BACKBONE, **details}, str(e)


def intra_lpips(
    image: Any,
    *,
    crop: int | tuple[int, int] | TilePlan | None = None,
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    backbone: str = "auto",
) -> Score:
    """Intra-LPIPS (SyncDiffusion): mean LPIPS over all pairs of non-overlapping crops.

    Lower = the crops look more alike (a more coherent panorama). `crop`: crop size in px,
    or a plan (its window); default 512 (or the image height if smaller). `net`: any
    callable (x, y) in [-1, 1] -> per-pair distances, e.g. an `lpips.LPIPS` instance.
    Without `net`, `backbone` chooses: "lpips-vgg16" (LPIPS with the ImageNet VGG16 trunk from
    the local torch hub cache; NaN with a reason when it is not there), "mdtools-feature-net"
    (the shipped offline network, `features.FeatureLPIPS`: uniform layer and channel weights,
    no human calibration, so its values are not comparable with LPIPS-VGG's), or "auto"
    (default: the first when cached, else the second). `.details["backbone"]` says which ran.
    """
    crops, reason = _crops(image, crop)
    if reason:
        return Score.nan(reason)
    from ..backbones import load_lpips_vgg
    from ..features import FeatureLPIPS

    net, details, why = _pick_backbone(backbone, "lpips-vgg16", load_lpips_vgg, FeatureLPIPS, LPIPS_BACKBONES,
                                       given=net, given_arg="net", metric="intra_lpips")
    if net is None:
        return Score.nan(why, **details)
    total, n = _intra_lpips_update(crops, net)
    return Score(float(total) / n, details={"n_crops": crops.shape[0], "n_pairs": n, **details})


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices divided by C*H*W (the SyncDiffusion/PyTorch
    style-transfer normalisation)."""
    n, c, h, w = feat.shape
    f = feat.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def conv_features(features: torch.nn.Module, x: torch.Tensor, n_conv: int = 5) -> list[torch.Tensor]:
    """Outputs of the first `n_conv` Conv2d layers of a VGG-style Sequential (before their ReLU).

    ReLUs run out of place so the stored conv outputs are not overwritten. A module that is
    not a Sequential is called directly and must return a list of feature maps.
    """
    if not isinstance(features, torch.nn.Sequential):
        return list(features(x))
    outs: list[torch.Tensor] = []
    for layer in features:
        x = torch.relu(x) if isinstance(layer, torch.nn.ReLU) else layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            outs.append(x)
            if len(outs) == n_conv:
                break
    return outs


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _intra_style_update(crops: torch.Tensor, features: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """Sum over crop pairs of sum over layers of MSE(Gram_i, Gram_j), and the pair count."""
    mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = conv_features(features, (crops - mean) / std)
        grams = [gram_matrix(f) for f in feats]
    pairs = _pairs(crops.shape[0])
    i, j = (list(v) for v in zip(*pairs))
    total = sum(((g[i] - g[j]) ** 2).mean(dim=(1, 2)).sum() for g in grams)
    return torch.as_tensor(total).double(), len(pairs)


def intra_style(
    image: Any,
    *,
    crop: int | tuple[int, int] | TilePlan | None = None,
    features: torch.nn.Module | None = None,
    reduction: Literal["sum", "mean"] = "sum",
    backbone: str = "auto",
) -> Score:
    """Intra-Style-L (SyncDiffusion): Gram-matrix MSE between crops over a network's layers.

    For each pair of non-overlapping crops, sum over layers of the MSE between Gram matrices
    (`gram_matrix`); `reduction="sum"` (SyncDiffusion's) sums over pairs, so the value grows
    with the number of crops; "mean" divides by the pair count. Lower = more coherent.
    `features`: a VGG-style Sequential (e.g. `torchvision.models.vgg19().features`: its
    first five conv outputs) or a module returning a list of feature maps of
    ImageNet-normalised input. Without it, `backbone` chooses: "vgg19" (ImageNet VGG19 from
    the local torch hub cache, NaN with a reason when absent), "mdtools-feature-net" (the
    five stage outputs of the shipped network), or "auto" (default: the first when cached,
    else the second). `.details["backbone"]` says which ran.
    """
    check_choice("reduction", reduction, ("sum", "mean"))
    crops, reason = _crops(image, crop)
    if reason:
        return Score.nan(reason)
    from ..backbones import load_vgg19_features
    from ..features import StyleFeatures

    features, details, why = _pick_backbone(backbone, "vgg19", load_vgg19_features, StyleFeatures, STYLE_BACKBONES,
                                            given=features, given_arg="features", metric="intra_style")
    if features is None:
        return Score.nan(why, **details)
    total, n = _intra_style_update(crops, features)
    value = float(total) if reduction == "sum" else float(total) / n
    return Score(value, details={"n_crops": crops.shape[0], "n_pairs": n, "reduction": reduction, **details})


def intra_color(image: Any, *, crop: int | tuple[int, int] | TilePlan | None = None) -> Score:
    """Global colour consistency: mean CIELAB Delta E between the mean colours of all pairs
    of non-overlapping window-sized crops (same crops as intra_lpips).

    Lower = the windows agree on colour and brightness (a sky gradient that does not break
    from window to window). Needs no pretrained network, so it runs everywhere; it is blind
    to structure (two crops of the same colour with different content score 0).
    """
    crops, reason = _crops(image, crop)
    if reason is not None:
        return Score.nan(reason)
    means = rgb_to_lab(crops.clamp(0, 1).double()).mean(dim=(-2, -1))  # (n, 3)
    n = means.shape[0]
    d = torch.cdist(means, means)
    pairs = n * (n - 1) / 2
    return Score(float(d.triu(1).sum() / pairs), details={"n_crops": n, "n_pairs": int(pairs)})


__all__ = [
    "LPIPS_BACKBONES", "STYLE_BACKBONES", "conv_features", "crop_grid", "gram_matrix", "intra_color", "intra_lpips", "intra_style",
]
