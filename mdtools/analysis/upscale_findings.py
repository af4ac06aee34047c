"""The upscale benchmark's findings (results/upscale/): summary and comparison tables, verdicts, and their fixed wording.

`benchmarks/upscale_truth.py` writes one row per run to results/upscale/runs.jsonl. From it,
`build_tables` computes
- the summary: per dataset, factor, method and metric, the mean over (image, seed) with its
  95% expanded percentile bootstrap interval (mdtools.stats, `CI_METHOD`), n and the method
  named in a column;
- the comparisons: every method against Lanczos, named pairs of methods and, per metric, the
  best mean against the runner-up, paired on (image, seed), Holm-corrected within each family
  (one dataset, factor and metric), under the project's policy (docs/statistics.md): "better" /
  "worse" only when the 95% interval excludes zero and the Holm-adjusted p (`stats.holm` of
  `stats.p_value`) is below `stats.ALPHA`; anything else is "no difference shown" (never
  "matches"), "... after Holm correction" where the interval alone would have decided.
`render_findings` turns the two tables into results/upscale/findings.md with the wording of
`WORDING`; notebook 08 and the README's Upscaling section print those sentences, and
tests/test_upscale_findings.py fails when the committed text differs from a re-rendering.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..stats import ALPHA, MIN_PAIRS, Interval, bootstrap_ci, holm, paired_difference, verdict
from .findings import Renderer

#: Every interval: 95%, the percentile bootstrap widened for small n (Hesterberg 2015), resampling (image, seed) pairs.
LEVEL = 0.95
CI_METHOD = "expanded"
N_BOOT = 10_000
PAIR_KEYS = ("image", "seed")
CI_NAME = "expanded bootstrap over (image, seed), 95%"  # the tables' ci_method column
INTERVAL_NAME = "expanded bootstrap over (image, seed)"

#: The methods of the benchmark, in table order (labels; benchmarks/upscale_truth.py maps each to its upscale call).
BICUBIC, LANCZOS = "bicubic", "lanczos"
#: the plain resizes (no model); "best among the diffusion methods" leaves them out
PIXEL_METHODS: tuple[str, ...] = (BICUBIC, LANCZOS)
METHOD_LABELS: tuple[str, ...] = (
    BICUBIC, LANCZOS, "naive_tiles", "usdu", "usdu+seamfix", "usdu+cn", "multidiffusion", "multidiffusion+cn",
    "mixture", "mixture+cn", "mixture+wavelet", "mixture+inversion",
)


@dataclass(frozen=True)
class MetricInfo:
    """A column of the runs table: how it reads and which way is better."""

    column: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str = ".3g"
    datasets: tuple[str, ...] = ("scenes", "textures")
    headline: bool = True  # compared (Holm families); others are summarised only


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("metric.psnr", "PSNR", "dB", True, ".2f"),
    MetricInfo("metric.ssim", "SSIM", "", True, ".3f", headline=False),
    MetricInfo("metric.lpips_feat", "feature-LPIPS", "", False, ".3f"),
    MetricInfo("metric.color_drift", "color_drift", "Delta E", False, ".2f"),
    MetricInfo("metric.color_drift_worst", "color_drift (worst tile)", "Delta E", False, ".2f", headline=False),
    MetricInfo("metric.seam_structure", "seam_structure", "(1 = seamless)", False, ".2f"),
    MetricInfo("metric.disc_count", "suns counted", "", False, ".2f", ("scenes",), headline=False),
    MetricInfo("metric.one_disc", "share with exactly one sun", "", True, ".2f", ("scenes",)),
    MetricInfo("metric.horizon_err", "horizon error", "px", False, ".2f", ("scenes",)),
)
METRIC_BY_COLUMN = {m.column: m for m in METRICS}
COST_COLUMNS: tuple[str, ...] = ("time.total", "peak_mb.total", "count.unet_evaluations")

#: Named comparisons (b, a): "is b better than a?". Every method is also compared with Lanczos, the resize it starts from.
NAMED_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("usdu", "naive_tiles"), ("usdu+seamfix", "usdu"), ("usdu+cn", "usdu"), ("multidiffusion", "usdu"),
    ("mixture", "multidiffusion"), ("multidiffusion+cn", "multidiffusion"), ("mixture+cn", "mixture"),
    ("mixture+wavelet", "mixture"), ("mixture+inversion", "mixture"),
)

#: The fixed wording of every sentence (verdict objects -> text).
WORDING = {
    "better": "{b} is better than {a} on {metric}",
    "worse": "{b} is worse than {a} on {metric}",
    "no difference shown": "{b} vs {a} on {metric}: no difference shown",
    "after_holm": "{b} vs {a} on {metric}: no difference shown after Holm correction",
    "best": "best mean {metric}: {b}, {value}",
    "best_diffusion": "best mean {metric} among the diffusion methods: {b}, {value}",
    "tie": "best mean {metric}: {k} methods tied at {value} ({methods})",
    "tie_diffusion": "best mean {metric} among the diffusion methods: {k} methods tied at {value} ({methods})",
    "few": " (fewer than {min_n} pairs decide nothing)",
    "best_vs": "against the runner-up {a}",
    "vs_lanczos": "{metric}: shown better than Lanczos (Holm): {better}; shown worse: {worse}",
    "cost": "{b}: {time} s, {evals} UNet evaluations per image (peak resident memory of the whole process, models "
            "included: {mem} MB)",
}


@dataclass(frozen=True)
class Comparison:
    """A verdict object: b against a on one metric, with the interval it rests on."""

    dataset: str
    factor: int
    metric: str  # a METRICS column
    b: str
    a: str
    interval: Interval  # of b - a, 95%
    p_holm: float  # Holm-adjusted over the family
    family_size: int
    verdict: str  # stats.verdict with p_adjusted
    kind: str = "named"  # named | vs_lanczos | best_vs_runner_up | best_diffusion_vs_runner_up

    def sentence(self) -> str:
        info = METRIC_BY_COLUMN[self.metric]
        key = self.verdict
        if key == "no difference shown" and verdict(self.interval, higher_is_better=info.higher_is_better) != key:
            key = "after_holm"
        head = WORDING[key].format(b=self.b, a=self.a, metric=info.label)
        few = WORDING["few"].format(min_n=MIN_PAIRS) if self.interval.n < MIN_PAIRS else ""
        body = format_interval(self.interval, info, paired=True, p_holm=self.p_holm, family_size=self.family_size)
        return f"{head}{few}: {self.b} - {self.a} = {body}"


def format_interval(iv: Interval, info: MetricInfo, *, paired: bool = False, p_holm: float | None = None,
                    family_size: int = 1) -> str:
    """'-0.42 dB [-0.61, -0.20] (n=8, paired expanded bootstrap over (image, seed), 95%; Holm p 0.003 over 21)'."""
    unit = f" {info.unit}" if info.unit and not info.unit.startswith("(") else ""
    f = info.fmt
    if math.isnan(iv.lo) or math.isnan(iv.hi):
        return f"{iv.estimate:{f}}{unit} (n={iv.n}, no interval)"
    where = f"{'paired ' if paired else ''}{INTERVAL_NAME}, {100 * LEVEL:.0f}%"
    if p_holm is not None:
        where += f"; Holm p {_p(p_holm)} over {family_size}"
    return f"{iv.estimate:{'+' if paired else ''}{f}}{unit} [{iv.lo:{f}}, {iv.hi:{f}}] (n={iv.n}, {where})"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


# ---------------------------------------------------------------------------------------------- tables


def load_runs(path: str | Path) -> pd.DataFrame:
    """The runs table (runs.jsonl: one JSON object per line, appended as the benchmark goes)."""
    path = Path(path)
    if path.is_dir():
        path = path / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def ok_rows(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "ok"] if "status" in runs else runs


def summary_table(runs: pd.DataFrame, *, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per dataset, factor, method and column (metrics and cost): n, mean, ci_lo, ci_hi, ci_method, failed."""
    ok = ok_rows(runs)
    rows = []
    for (ds, factor, method), sub in ok.groupby(["dataset", "factor", "method"], sort=False):
        failed = int(((runs["dataset"] == ds) & (runs["factor"] == factor) & (runs["method"] == method)
                      & (runs["status"] != "ok")).sum())
        for col in [m.column for m in METRICS if ds in m.datasets] + list(COST_COLUMNS):
            if col not in sub:
                continue
            iv = bootstrap_ci(sub[col].to_numpy(dtype=float), level=LEVEL, n_boot=n_boot, method=CI_METHOD)
            rows.append({"dataset": ds, "factor": int(factor), "method": method, "column": col, "n": iv.n,
                         "mean": iv.estimate, "ci_lo": iv.lo, "ci_hi": iv.hi, "ci_method": CI_NAME, "failed": failed})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    out["_o"] = out["method"].map(lambda m: order.get(m, len(order)))
    return out.sort_values(["dataset", "factor", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _per_pair(sub: pd.DataFrame, method: str, col: str) -> pd.Series:
    s = sub[sub["method"] == method]
    return s.set_index(list(PAIR_KEYS))[col] if len(s) else pd.Series(dtype=float)


def holm_family(pairs: Sequence[tuple[pd.Series, pd.Series]], higher_is_better: bool, *, n_boot: int = N_BOOT,
                min_n: int = MIN_PAIRS) -> list[tuple[Interval, float, str]]:
    """One Holm family of paired comparisons (a, b) -> [(95% interval of b - a, Holm-adjusted p, verdict)].

    Each interval is `stats.paired_difference` (expanded bootstrap, its p-value `stats.p_value`);
    the p-values are adjusted together with `stats.holm`, and the verdict is `stats.verdict`
    with that adjusted p: "better" / "worse" need the interval to exclude zero and p_holm < ALPHA.
    """
    ivs = [paired_difference(a, b, n_boot=n_boot, method=CI_METHOD) for a, b in pairs]
    p_holm = holm([iv.p for iv in ivs])
    return [(iv, float(p), verdict(iv, higher_is_better=higher_is_better, min_n=min_n, p_adjusted=float(p)))
            for iv, p in zip(ivs, p_holm)]


def family(sub: pd.DataFrame, info: MetricInfo) -> list[tuple[str, str, str]]:
    """(b, a, kind) compared in one family: every method vs Lanczos, the named pairs, the best mean vs the runner-up."""
    methods = [m for m in METHOD_LABELS if m in set(sub["method"])] + sorted(set(sub["method"]) - set(METHOD_LABELS))
    pairs = [(m, LANCZOS, "vs_lanczos") for m in methods if m != LANCZOS and LANCZOS in methods]
    pairs += [(b, a, "named") for b, a in NAMED_COMPARISONS if a in methods and b in methods]
    means = sub.groupby("method")[info.column].mean().dropna()
    for kind, pool in (("best_vs_runner_up", means), ("best_diffusion_vs_runner_up", means.drop(list(PIXEL_METHODS), errors="ignore"))):
        if len(pool) >= 2:
            ranked = pool.sort_values(ascending=not info.higher_is_better, kind="stable")
            best, second = ranked.index[0], ranked.index[1]
            if not any({b, a} == {best, second} for b, a, _ in pairs):
                pairs.append((best, second, kind))
    return pairs


def comparisons_table(runs: pd.DataFrame, *, factors: Iterable[int] = (4, 2), n_boot: int = N_BOOT) -> pd.DataFrame:
    """Every family's comparisons: 95% intervals, p, Holm-adjusted p and verdicts (headline metrics, `factors`)."""
    ok = ok_rows(runs)
    rows = []
    for (ds, factor), sub in ok.groupby(["dataset", "factor"], sort=True):
        if int(factor) not in set(factors):
            continue
        for info in METRICS:
            if not info.headline or ds not in info.datasets or info.column not in sub or sub[info.column].isna().all():
                continue
            fam = family(sub, info)
            pairs = [(_per_pair(sub, a, info.column), _per_pair(sub, b, info.column)) for b, a, _ in fam]
            for (b, a, kind), (iv, p_holm, v) in zip(fam, holm_family(pairs, info.higher_is_better, n_boot=n_boot)):
                rows.append({"dataset": ds, "factor": int(factor), "column": info.column, "b": b, "a": a, "kind": kind,
                             "estimate": iv.estimate, "ci_lo": iv.lo, "ci_hi": iv.hi, "n": iv.n, "p": iv.p, "p_holm": p_holm,
                             "family_size": len(fam), "ci_method": f"paired {CI_NAME}", "verdict": v})
    return pd.DataFrame(rows)


def build_tables(results: str | Path, *, n_boot: int = N_BOOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, comparisons) from results/upscale/runs.jsonl."""
    runs = load_runs(results)
    return summary_table(runs, n_boot=n_boot), comparisons_table(runs, n_boot=n_boot)


def write_tables(results: str | Path, *, n_boot: int = N_BOOT) -> tuple[Path, Path, Path]:
    """Write summary.csv, comparisons.csv and findings.md next to runs.jsonl; returns their paths."""
    results = Path(results)
    summary, comps = build_tables(results, n_boot=n_boot)
    paths = results / "summary.csv", results / "comparisons.csv", results / "findings.md"
    summary.to_csv(paths[0], index=False, float_format="%.6g")
    comps.to_csv(paths[1], index=False, float_format="%.6g")
    summary, comps = pd.read_csv(paths[0]), pd.read_csv(paths[1])  # render from what was written, as the test does
    paths[2].write_text(render_findings(summary, comps))
    return paths


# ---------------------------------------------------------------------------------------------- text


def comparisons_from_table(comps: pd.DataFrame) -> list[Comparison]:
    """The verdict objects of a comparisons table."""
    out = []
    for r in comps.itertuples(index=False):
        iv = Interval(float(r.estimate), float(r.ci_lo), float(r.ci_hi), int(r.n), LEVEL, str(r.ci_method), p=float(r.p))
        out.append(Comparison(r.dataset, int(r.factor), r.column, r.b, r.a, iv, float(r.p_holm), int(r.family_size),
                              r.verdict, r.kind))
    return out


def _summary_interval(row: pd.Series) -> Interval:
    return Interval(float(row["mean"]), float(row["ci_lo"]), float(row["ci_hi"]), int(row["n"]), LEVEL, str(row["ci_method"]))


def best_lines(summary: pd.DataFrame, comps: list[Comparison], dataset: str, factor: int) -> list[str]:
    """Per headline metric: the best mean with its interval and its verdict against the runner-up, overall and
    among the diffusion methods (the plain resizes left out)."""
    lines = []
    s = summary[(summary["dataset"] == dataset) & (summary["factor"] == factor)]
    for info in METRICS:
        if not info.headline or dataset not in info.datasets:
            continue
        sub = s[s["column"] == info.column].dropna(subset=["mean"])
        ranked = sub.sort_values("mean", ascending=not info.higher_is_better, kind="stable")
        for key, pool in (("best", sub), ("best_diffusion", sub[~sub["method"].isin(PIXEL_METHODS)])):
            if pool.empty or (key == "best_diffusion" and ranked.iloc[0]["method"] not in PIXEL_METHODS):
                continue  # the diffusion line only where a plain resize has the best mean
            line = _best_line(pool, comps, dataset, factor, info, key)
            lines.append(f"- {line}.")
    return lines


def _best_line(pool: pd.DataFrame, comps: list[Comparison], dataset: str, factor: int, info: MetricInfo, key: str) -> str:
    ranked = pool.sort_values("mean", ascending=not info.higher_is_better, kind="stable")
    top = ranked.iloc[0]
    tied = ranked[np.isclose(ranked["mean"], top["mean"], rtol=0, atol=1e-9)]["method"].tolist()
    if len(tied) > 1:
        tie = "tie" if key == "best" else "tie_diffusion"
        return WORDING[tie].format(metric=info.label, k=len(tied), methods=", ".join(tied), value=f"{top['mean']:{info.fmt}}")
    line = WORDING[key].format(metric=info.label, b=top["method"], value=format_interval(_summary_interval(top), info))
    if len(ranked) > 1:
        second = ranked.iloc[1]["method"]
        c = next((c for c in comps if c.dataset == dataset and c.factor == factor and c.metric == info.column
                  and {c.a, c.b} == {top["method"], second}), None)
        if c is not None:
            line += f"; {WORDING['best_vs'].format(a=second)}: {c.sentence()}"
    return line


def lanczos_lines(comps: list[Comparison], dataset: str, factor: int) -> list[str]:
    """Per headline metric: which methods are shown better / worse than Lanczos (the resize they all start from)."""
    lines = []
    for info in METRICS:
        mine = [c for c in comps if c.dataset == dataset and c.factor == factor and c.metric == info.column
                and c.kind == "vs_lanczos" and c.a == LANCZOS]
        if mine:
            better = ", ".join(c.b for c in mine if c.verdict == "better") or "none"
            worse = ", ".join(c.b for c in mine if c.verdict == "worse") or "none"
            lines.append("- " + WORDING["vs_lanczos"].format(metric=info.label, better=better, worse=worse) + ".")
    return lines


def cost_lines(summary: pd.DataFrame, dataset: str, factor: int) -> list[str]:
    s = summary[(summary["dataset"] == dataset) & (summary["factor"] == factor)]
    lines = []
    for method in [m for m in METHOD_LABELS if m in set(s["method"])]:
        v = s[s["method"] == method].set_index("column")["mean"]
        evals = v.get("count.unet_evaluations", float("nan"))
        lines.append("- " + WORDING["cost"].format(b=method, time=f"{v.get('time.total', float('nan')):.3g}",
                                                   mem=f"{v.get('peak_mb.total', float('nan')):.0f}",
                                                   evals="0" if method in (BICUBIC, LANCZOS) else f"{evals:.0f}") + ".")
    return lines


def render_findings(summary: pd.DataFrame, comps: pd.DataFrame) -> str:
    """results/upscale/findings.md: every sentence notebook 08 and the README print, from the two tables."""
    verdicts = comparisons_from_table(comps) if len(comps) else []
    out = ["# Upscale benchmark: findings", "",
           "Rendered by mdtools.analysis.upscale_findings from summary.csv and comparisons.csv (do not edit by hand).",
           f"Intervals: 95% {INTERVAL_NAME} (mdtools.stats, method '{CI_METHOD}'); comparisons are paired on "
           "(image, seed), and their p-values Holm-corrected within each family (one dataset, factor and metric): "
           f"'better' / 'worse' need the interval to exclude zero and the Holm p below {ALPHA:g} (docs/statistics.md); "
           "anything else is 'no difference shown'.", ""]
    for (ds, factor), _ in summary.groupby(["dataset", "factor"], sort=True):
        factor = int(factor)
        out += [f"## {ds}, {factor}x", "", "### Which method wins", ""]
        out += best_lines(summary, verdicts, ds, factor) or ["- no runs."]
        mine = [c for c in verdicts if c.dataset == ds and c.factor == factor]
        if mine:
            out += ["", "### Against Lanczos", ""] + lanczos_lines(verdicts, ds, factor)
            out += ["", "### Comparisons", ""]
            for c in mine:
                if not c.kind.endswith("_vs_runner_up"):
                    out.append(f"- {c.sentence()}.")
        out += ["", "### Cost (mean per image)", ""] + cost_lines(summary, ds, factor) + [""]
    return "\n".join(out).rstrip() + "\n"


class UpscaleRenderer(Renderer):
    """The renderer of notebooks/findings/08.md: `{{ upscale DATASET FACTOR part=wins|lanczos|cost }}` is the
    bullet list of that section of findings.md ("Which method wins", "Against Lanczos", "Cost"), rendered by
    the same functions from results/upscale/summary.csv and comparisons.csv."""

    PARTS = ("wins", "lanczos", "cost")

    def _upscale(self) -> tuple[pd.DataFrame, list[Comparison]]:
        if not hasattr(self, "_up"):
            d = self.results / "upscale"
            self._up = pd.read_csv(d / "summary.csv"), comparisons_from_table(pd.read_csv(d / "comparisons.csv"))
        return self._up

    def f_upscale(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        if len(pos) != 2 or not pos[1].isdigit():
            raise ConfigError("upscale takes DATASET FACTOR, e.g. {{ upscale scenes 4 part=wins }}")
        ds, factor, part = pos[0], int(pos[1]), o.get("part", "wins")
        if part not in self.PARTS:
            raise ConfigError(f"upscale part={part!r}: use one of {list(self.PARTS)}")
        summary, comps = self._upscale()
        if not ((summary["dataset"] == ds) & (summary["factor"] == factor)).any():
            raise ConfigError(f"upscale: no runs for dataset={ds!r} factor={factor} in {self.results / 'upscale'}")
        lines = {"wins": lambda: best_lines(summary, comps, ds, factor), "lanczos": lambda: lanczos_lines(comps, ds, factor),
                 "cost": lambda: cost_lines(summary, ds, factor)}[part]()
        return "\n".join(lines)


def readme_lines(findings: str, dataset: str = "scenes", factor: int = 4) -> list[str]:
    """The README's Upscaling numbers: the 'Which method wins' lines of one dataset and factor, verbatim from findings.md."""
    lines = findings.splitlines()
    try:
        start = lines.index(f"## {dataset}, {factor}x")
    except ValueError:
        return []
    out = []
    for line in lines[start + 1:]:
        if line.startswith("## ") or line.startswith("### Comparisons"):
            break
        if line.startswith("- "):
            out.append(line)
    return out


__all__ = [
    "BICUBIC", "CI_METHOD", "CI_NAME", "COST_COLUMNS", "Comparison", "INTERVAL_NAME", "LANCZOS", "LEVEL", "METHOD_LABELS", "METRICS",
    "MetricInfo", "NAMED_COMPARISONS", "PAIR_KEYS", "PIXEL_METHODS", "UpscaleRenderer", "WORDING", "build_tables",
    "comparisons_from_table", "comparisons_table",
    "format_interval", "holm_family", "load_runs", "readme_lines", "render_findings", "summary_table", "write_tables",
]
