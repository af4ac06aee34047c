"""Verdict objects and their fixed wording: non-inferiority margins per metric, paired comparisons corrected with Holm.

The one place where a comparison becomes words (docs/statistics.md). The rules:
- "better" / "worse" only when the 95% expanded interval of the paired difference excludes 0
  and the Holm-adjusted p over the comparison's family is below `stats.ALPHA`;
- otherwise "no difference shown" (never "matches", "same" or "equal");
- "non-inferior" always names its margin, from `MARGINS` (one definition per metric).
Anything that renders findings (`analysis.findings`, a notebook's renderer) builds `Comparison`
objects through `analysis.findings.family` and prints `Comparison.text()` or its parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import stats
from ..errors import ConfigError


@dataclass(frozen=True)
class Margin:
    """How much worse a setting may be, in the metric's own unit, and still be called non-inferior."""

    value: float
    higher_is_better: bool
    why: str


#: The named non-inferiority margin of every metric a verdict is given on (docs/statistics.md).
MARGINS: dict[str, Margin] = {
    "metric.seam_structure": Margin(0.10, False, "about what a 1 px planted splice adds (median 0.99 -> 1.08; docs/metrics.md)"),
    "metric.seam_score": Margin(0.10, False, "taken equal to seam_structure's (same scale, 1 = no seam); not separately validated"),
    "metric.seam_score_lab": Margin(0.10, False, "taken equal to seam_structure's (same scale); not separately validated"),
    "metric.intra_color": Margin(0.10, False, "a tenth of the smallest method mean in results/methods (about 0.5-1.0); a convention"),
    "metric.disc_error": Margin(0.5, False, "half a sun in the mean |suns - 1|: the count is an integer per run"),
    "metric.disc_count": Margin(0.5, False, "half a sun: the count is an integer per run"),
    "metric.one_disc": Margin(0.10, True, "10 points of the rate of runs with exactly one disc"),
    "metric.no_disc": Margin(0.10, False, "10 points of the rate of runs with no disc, as one_disc's"),
    "metric.horizon_breaks": Margin(0.25, False, "one more break on a 1:4 panorama (the score is breaks per height-wide stretch)"),
    "metric.horizon_continuity": Margin(0.10, False, "a tenth of the seamless value 1 (1 = as smooth at seams as elsewhere)"),
    "metric.sky_consistency": Margin(0.10, False, "a tenth of the seamless value 1"),
    "metric.intra_lpips_featnet": Margin(0.01, False, "about a tenth of a coherent panorama's 0.09 (results/bench/features_validation.csv)"),
    "metric.intra_style_featnet": Margin(5e-6, False, "about a fifth of a coherent panorama's 2.4e-5 (results/bench/features_validation.csv)"),
}


def margin(metric: str) -> Margin:
    """The metric's entry of `MARGINS`; ConfigError naming the known ones otherwise."""
    if metric not in MARGINS:
        raise ConfigError(f"metric={metric!r} has no non-inferiority margin; use one of {sorted(MARGINS)} or add it to MARGINS")
    return MARGINS[metric]


def short(metric: str) -> str:
    """'metric.seam_structure' -> 'seam_structure'."""
    return metric.split(".", 1)[-1]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison (setting - reference) of a metric on one canvas, with its family's Holm p."""

    metric: str
    setting: str
    reference: str
    canvas: str
    diff: stats.Interval
    p_holm: float
    family_size: int

    @property
    def higher_is_better(self) -> bool:
        return margin(self.metric).higher_is_better

    @property
    def verdict(self) -> str:
        """'better', 'worse' or 'no difference shown' (setting against reference), Holm-corrected."""
        return stats.verdict(self.diff, higher_is_better=self.higher_is_better, p_adjusted=self.p_holm)

    @property
    def non_inferior(self) -> bool:
        return stats.non_inferior(self.diff, margin(self.metric).value, self.higher_is_better).startswith("as good")

    def interval(self, fmt: str = ".2f") -> str:
        """'-0.19 [-0.28, -0.11] (n=8, paired expanded bootstrap; Holm p 0.003 over 60)'."""
        d = self.diff
        if math.isnan(d.lo):
            return f"{d.estimate:+{fmt}} (n={d.n}, no interval)"
        return (f"{d.estimate:+{fmt}} [{d.lo:{fmt}}, {d.hi:{fmt}}] (n={d.n}, {d.method}; "
                f"Holm p {_p(self.p_holm)} over {self.family_size})")

    def text(self, fmt: str = ".2f") -> str:
        """The fixed wording: '<verdict> on <metric>: <interval>'; a 95% interval that excludes 0 without
        surviving Holm's correction reads 'no difference shown after Holm correction'."""
        v = self.verdict
        if v == "no difference shown" and stats.verdict(self.diff, higher_is_better=self.higher_is_better) != v:
            v = "no difference shown after Holm correction"
        return f"{v} on {short(self.metric)}: {self.interval(fmt)}"

    def ni_text(self, fmt: str = ".2f") -> str:
        """'non-inferior within margin 0.1 on seam_structure: ...' or 'not shown non-inferior within margin 0.1 ...'."""
        m = margin(self.metric).value
        word = "non-inferior" if self.non_inferior else "not shown non-inferior"
        return f"{word} within margin {m:g} on {short(self.metric)}: {self.interval(fmt)}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def canvas_name(height: float, width: float) -> str:
    """'512x128' (width x height, px) as findings name canvases."""
    return f"{int(width)}x{int(height)}"
