"""The shipped offline feature network (`mdtools-feature-net`) and its multi-layer features.

Intra-LPIPS and Intra-Style were defined on ImageNet VGG features, which an offline machine
cannot download. mdtools ships instead a small VGG-style CNN trained on this project's own
data (procedural scenes and scikit-image textures, `mdtools/toy/train_features.py`);
its weights are in `mdtools/assets/feature-net/` (safetensors, no pickle) with a
MODEL_CARD.md. The metrics that use it (`intra_lpips`, `intra_style` when the VGG weights
are not cached, `kid`) live in `functional/`; this module holds the network, its loader
and the LPIPS-style distance.

Convention (as torchvision's VGG): the network takes ImageNet-normalised RGB
(`imagenet_normalize(x)` of x in [0, 1]) and returns one feature map per stage.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError, MetricUnavailable

#: Name written to Score.details["backbone"] when this network was used.
BACKBONE = "mdtools-feature-net"
FEATURE_NET_DIR = Path(__file__).resolve().parent.parent / "assets" / "feature-net"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

DEFAULT_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
DEFAULT_DEPTHS: tuple[int, ...] = (1, 2, 2, 2, 1)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EPS = 1e-10  # lpips.normalize_tensor's epsilon: an all-zero feature vector stays zero


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> ImageNet-normalised input, the network's convention."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class FeatureNet(nn.Module):
    """Small VGG-style CNN: stages of [3x3 conv, BatchNorm, ReLU] x depth, 2x2 max-pool between stages.

    `forward(x)` returns the output of every stage (after its last ReLU), full resolution
    first; `pooled(x)` the global average of the last stage (the KID features);
    `logits(x)` the classification heads used in training ({head: (N, classes)}).
    """

    backbone = BACKBONE  # the name metrics write to Score.details["backbone"]

    def __init__(self, channels: Sequence[int] = DEFAULT_CHANNELS, depths: Sequence[int] = DEFAULT_DEPTHS,
                 heads: dict[str, int] | None = None) -> None:
        super().__init__()
        channels, depths = tuple(int(c) for c in channels), tuple(int(d) for d in depths)
        if len(channels) != len(depths) or not channels or min(channels) < 1 or min(depths) < 1:
            raise ValueError(f"channels={channels} and depths={depths} must be equally long lists of positive integers")
        self.channels, self.depths = channels, depths
        stages = []
        c_in = 3
        for c, d in zip(channels, depths):
            layers: list[nn.Module] = []
            for _ in range(d):
                # no conv bias: BatchNorm's shift replaces it
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleDict({k: nn.Linear(channels[-1], int(n)) for k, n in (heads or {}).items()})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ImageNet-normalised (N, 3, H, W) -> one (N, C_l, H / 2^l, W / 2^l) map per stage."""
        outs = []
        for i, stage in enumerate(self.stages):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = stage(x)
            outs.append(x)
        return outs

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_last): global average of the last stage."""
        return self.forward(x)[-1].mean(dim=(-2, -1))

    def logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{head: (N, n_classes)} from the pooled features."""
        z = self.pooled(x)
        return {k: h(z) for k, h in self.heads.items()}


def feature_net_files(path: str | Path | None = None) -> tuple[Path, Path]:
    """(weights, config) paths of a feature-net folder (default: the shipped one), or raise MetricUnavailable."""
    folder = Path(path) if path is not None else FEATURE_NET_DIR
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    missing = [p.name for p in (weights, config) if not p.is_file()]
    if missing:
        raise MetricUnavailable(
            f"feature network files {missing} not found in {folder}; reinstall mdtools (the package data "
            "mdtools/assets/feature-net/ ships them) or rebuild them with: python -m mdtools.toy.train_features"
        )
    return weights, config


def load_feature_net(path: str | Path | None = None) -> FeatureNet:
    """The feature network from `path` (default: mdtools/assets/feature-net), in eval mode, on CPU, cached.

    Loaded with safetensors (no pickle), strictly: a missing or extra tensor is an error.
    Parameters do not require gradients. Raises MetricUnavailable when the files are absent.
    """
    weights, config = feature_net_files(path)
    return _load(str(weights.resolve()), str(config.resolve()))


@lru_cache(maxsize=4)
def _load(weights: str, config: str) -> FeatureNet:
    from safetensors.torch import load_file

    cfg = json.loads(Path(config).read_text())
    net = FeatureNet(cfg["channels"], cfg["depths"], cfg.get("heads", {}))
    net.load_state_dict(load_file(weights, device="cpu"), strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def feature_net_config(path: str | Path | None = None) -> dict[str, Any]:
    """The folder's config.json (architecture, head labels, training summary)."""
    return json.loads(feature_net_files(path)[1].read_text())


def _as_batch(images: Any) -> torch.Tensor:
    """Images in any accepted form (one, a list of equal size, or an (N, 3, H, W) tensor) -> float32 batch in [0, 1]."""
    from .common import to_image_tensor, to_rgb

    if isinstance(images, (list, tuple)):
        parts = [to_rgb(to_image_tensor(im, name=f"images[{i}]", batch=True)) for i, im in enumerate(images)]
        shapes = {tuple(p.shape[-2:]) for p in parts}
        if len(shapes) > 1:
            raise ConfigError(f"images must share one size to be batched; got sizes {sorted(shapes)} (pass them one by one, or crop)")
        return torch.cat(parts).float()
    return to_rgb(to_image_tensor(images, name="images", batch=True)).float()


def feature_maps(images: Any, *, net: FeatureNet | None = None) -> list[torch.Tensor]:
    """Per-stage feature maps of images in [0, 1] (any form `to_image_tensor` takes, or a list of one size)."""
    net = net if net is not None else load_feature_net()
    with torch.no_grad():
        return net(imagenet_normalize(_as_batch(images)))


def pooled_features(images: Any, *, net: FeatureNet | None = None, batch_size: int = 64) -> torch.Tensor:
    """(N, C_last) pooled features of images in [0, 1]; a list may mix sizes (each size batched apart)."""
    net = net if net is not None else load_feature_net()
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    out = []
    with torch.no_grad():
        for im in items:
            x = _as_batch(im)
            for s in range(0, x.shape[0], batch_size):
                out.append(net.pooled(imagenet_normalize(x[s:s + batch_size])))
    return torch.cat(out).double()


def unit_normalize(f: torch.Tensor) -> torch.Tensor:
    """Each pixel's feature vector divided by its norm across channels (lpips.normalize_tensor)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)


def lpips_distance(feats_x: Sequence[torch.Tensor], feats_y: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS-style distance per image pair from two lists of (N, C_l, H_l, W_l) feature maps.

    d = mean over layers l of mean over pixels of sum over channels of (f^_x - f^_y)^2, with
    f^ unit-normalised per pixel across channels. LPIPS weights each channel with linear
    heads fitted to human judgements; no such calibration exists for this network, so every
    channel weighs 1 and every layer the same (1 / L).
    """
    per_layer = [(unit_normalize(a) - unit_normalize(b)).pow(2).sum(dim=1).mean(dim=(-2, -1)) for a, b in zip(feats_x, feats_y)]
    return torch.stack(per_layer).mean(dim=0)


class FeatureLPIPS(nn.Module):
    """LPIPS-style distance on the feature network: `(x, y)` in [-1, 1] (as lpips.LPIPS) -> (N,) distances.

    A drop-in `net=` for `intra_lpips` and `IntraLPIPS`; see `lpips_distance` for the formula.
    """

    backbone = BACKBONE

    def __init__(self, net: FeatureNet | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else load_feature_net()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs of images in [-1, 1]."""
        return self.net(imagenet_normalize((x.float() + 1) / 2))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lpips_distance(self.features(x), self.features(y))


def pairwise_lpips(feats: Sequence[torch.Tensor], i: Sequence[int], j: Sequence[int], *, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """`lpips_distance` between images i[k] and j[k] of one feature list, each image normalised once.

    Pairs are processed in chunks of at most ~`chunk_elements` feature values per layer, so
    many pairs of large crops do not need all pair copies in memory at once.
    """
    normed = [unit_normalize(f) for f in feats]
    i_t, j_t = torch.as_tensor(list(i), dtype=torch.long), torch.as_tensor(list(j), dtype=torch.long)
    per_pair = max(f[0].numel() for f in normed)
    step = max(1, chunk_elements // per_pair)
    out = []
    for s in range(0, len(i_t), step):
        a, b = i_t[s:s + step], j_t[s:s + step]
        out.append(torch.stack([(f[a] - f[b]).pow(2).sum(dim=1).mean(dim=(-2, -1)) for f in normed]).mean(dim=0))
    return torch.cat(out) if out else torch.zeros(0)


class StyleFeatures(nn.Module):
    """The network as `intra_style`'s `features=`: ImageNet-normalised input -> list of stage outputs."""

    backbone = BACKBONE

    def __init__(self, net: FeatureNet | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else load_feature_net()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x.float())


__all__ = [
    "BACKBONE", "FEATURE_NET_DIR", "FeatureLPIPS", "FeatureNet", "StyleFeatures", "feature_maps", "feature_net_config",
    "feature_net_files", "imagenet_normalize", "load_feature_net", "lpips_distance", "pairwise_lpips", "pooled_features",
    "unit_normalize",
]
