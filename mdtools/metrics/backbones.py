"""Pretrained backbones for the cross-view consistency metrics, loaded only from the local cache.

Nothing here downloads: an offline machine (CI, a cluster node) would otherwise hang or
fail deep inside torchvision. When the ImageNet weights are not in torch's hub cache the
loaders raise `MetricUnavailable`; `intra_lpips` / `intra_style` then fall back to the
feature network that ships with mdtools (`features.load_feature_net`), or, when a VGG
backbone is asked for by name, return NaN + reason. lpips ships its own linear-layer
weights; only the VGG16 trunk comes from torchvision.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from ..errors import MetricUnavailable

VGG16_FILE = "vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision VGG19_Weights.IMAGENET1K_V1


def cached_weight(filename: str) -> str:
    """Path of `filename` in torch's hub checkpoint cache, or raise MetricUnavailable."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        raise MetricUnavailable(
            f"pretrained weights {filename} not found in {os.path.dirname(path)} (no download is attempted); "
            "place the torchvision ImageNet checkpoint there, or pass a network explicitly"
        )
    return path


def load_lpips_vgg() -> torch.nn.Module:
    """lpips.LPIPS(net='vgg') with the cached ImageNet VGG16 trunk (eval mode, CPU)."""
    path = cached_weight(VGG16_FILE)
    return _load_lpips_vgg(path)


@lru_cache(maxsize=2)
def _load_lpips_vgg(path: str) -> torch.nn.Module:
    import lpips
    from torchvision.models import vgg16

    # pnet_rand=True stops lpips from asking torchvision to download; we fill the trunk
    # from the cached file instead. lpips names each slice's children by their index in
    # vgg16().features, so the copy is by index.
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    trunk = vgg16(weights=None).features
    trunk.load_state_dict({k[len("features."):]: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
                           if k.startswith("features.")})
    for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, module in slice_.named_children():
            module.load_state_dict(trunk[int(name)].state_dict())
    return model.eval()


def load_vgg19_features() -> torch.nn.Module:
    """torchvision vgg19().features with the cached ImageNet weights (eval mode, CPU)."""
    return _load_vgg19(cached_weight(VGG19_FILE))


@lru_cache(maxsize=2)
def _load_vgg19(path: str) -> torch.nn.Module:
    from torchvision.models import vgg19

    net = vgg19(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.features.eval()
