"""torchmetrics.Metric wrappers: the same statistics as `functional`, summed over updates.

Imported lazily by `mdtools.metrics` (torchmetrics takes ~10 s to import here).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchmetrics import Metric

from ..errors import MetricUnavailable
from ..plan import TilePlan
from .common import to_image_tensor
from .functional.consistency import _crops, _intra_lpips_update, _intra_style_update
from .functional.geometry import LinesLike, resolve_lines
from .functional.seams import DEFAULT_BAND, DEFAULT_GRID, DEFAULT_SEGMENT, _check_seam_options, _seam_compute, _seam_update, _wrap_setup


class _SeamBase(Metric):
    """Sums seam/control anomalies over every image passed to `update`."""

    higher_is_better = False  # 1 is seamless; larger is a more visible seam
    is_differentiable = False
    full_state_update = False

    def __init__(self, plan_or_lines: LinesLike = None, *, mode: str = "rgb", band: int = DEFAULT_BAND,
                 grid: int | None = None, segment: int = DEFAULT_SEGMENT, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_seam_options(mode, band, grid, segment)
        self.plan_or_lines, self.mode, self.band, self.grid, self.segment = plan_or_lines, mode, band, grid, segment
        for name in ("seam_sum", "seam_count", "control_sum", "control_count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _grid(self, plan_or_lines: LinesLike) -> int:
        return self.grid or (plan_or_lines.scale if isinstance(plan_or_lines, TilePlan) else DEFAULT_GRID)

    def _add(self, stats: Any) -> None:
        self.seam_sum += stats.seam_sum
        self.seam_count += stats.seam_count
        self.control_sum += stats.control_sum
        self.control_count += stats.control_count

    def compute(self) -> torch.Tensor:
        return _seam_compute(self.seam_sum, self.seam_count, self.control_sum, self.control_count)


class SeamScore(_SeamBase):
    """Pooled `seam_score` over many images; `update(image, plan_or_lines=None)` (the plan
    given at construction is used when omitted)."""

    def update(self, image: Any, plan_or_lines: LinesLike = None) -> None:
        img = to_image_tensor(image, batch=True)
        plo = plan_or_lines if plan_or_lines is not None else self.plan_or_lines
        lines, _ = resolve_lines(plo, img.shape[-2], img.shape[-1])
        self._add(_seam_update(img, lines, mode=self.mode, band=self.band, grid=self._grid(plo), segment=self.segment))


class SeamScoreLab(SeamScore):
    """`SeamScore` with CIELAB Delta E steps."""

    def __init__(self, plan_or_lines: LinesLike = None, **kwargs: Any) -> None:
        kwargs["mode"] = "lab"
        super().__init__(plan_or_lines, **kwargs)


class WrapSeamScore(_SeamBase):
    """Pooled `wrap_seam_score` over many 360-degree panoramas."""

    def __init__(self, plan_or_lines: LinesLike = None, *, axes: str | None = None, **kwargs: Any) -> None:
        super().__init__(plan_or_lines, **kwargs)
        self.axes = axes

    def update(self, image: Any, plan_or_lines: LinesLike = None) -> None:
        img = to_image_tensor(image, batch=True)
        plo = plan_or_lines if plan_or_lines is not None else self.plan_or_lines
        rolled, wrap, avoid, reason = _wrap_setup(img, plo, self.axes, self._grid(plo))
        if reason:  # a non-circular plan contributes nothing, as an image with no seams
            return
        self._add(_seam_update(rolled, wrap, mode=self.mode, band=self.band, grid=self._grid(plo),
                               segment=self.segment, avoid=avoid))


class _IntraBase(Metric):
    """Mean over panoramas of a per-panorama pairwise crop score."""

    higher_is_better = False  # lower = crops look more alike = more coherent panorama
    is_differentiable = False
    full_state_update = False

    def __init__(self, *, crop: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crop = crop
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _per_image(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, image: Any) -> None:
        crops, reason = _crops(image, self.crop)
        if reason:
            raise ValueError(reason)
        self.total += self._per_image(crops)
        self.count += 1

    def compute(self) -> torch.Tensor:
        if float(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count


class IntraLPIPS(_IntraBase):
    """Intra-LPIPS averaged over panoramas. `net`: LPIPS-like callable; default the cached
    ImageNet LPIPS-VGG (raises MetricUnavailable at construction when it is missing)."""

    def __init__(self, *, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 crop: Any = None, **kwargs: Any) -> None:
        super().__init__(crop=crop, **kwargs)
        if net is None:
            from .backbones import load_lpips_vgg

            net = load_lpips_vgg()
        self.net = net

    def _per_image(self, crops: torch.Tensor) -> torch.Tensor:
        total, n = _intra_lpips_update(crops, self.net)
        return total / n


class IntraStyle(_IntraBase):
    """Intra-Style-L averaged over panoramas (sum over crop pairs per panorama, as
    SyncDiffusion). `features`: VGG-style Sequential; default the cached ImageNet VGG19."""

    def __init__(self, *, features: torch.nn.Module | None = None, crop: Any = None,
                 reduction: str = "sum", **kwargs: Any) -> None:
        super().__init__(crop=crop, **kwargs)
        if features is None:
            from .backbones import load_vgg19_features

            features = load_vgg19_features()
        self.features = features
        self.reduction = reduction

    def _per_image(self, crops: torch.Tensor) -> torch.Tensor:
        total, n = _intra_style_update(crops, self.features)
        return total if self.reduction == "sum" else total / n


__all__ = ["IntraLPIPS", "IntraStyle", "MetricUnavailable", "SeamScore", "SeamScoreLab", "WrapSeamScore"]
