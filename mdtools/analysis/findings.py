"""Findings rendered from the committed tables: Markdown templates whose numbers and verdicts are `{{ ... }}` placeholders filled by code.

A template (notebooks/findings/NN.md) is prose with placeholders; every number or comparison
in it is one placeholder, computed from results/ when rendered. `render(text, results)` fills
them; `render_file(path, results)` reads the template first. Placeholder syntax:
`{{ function arg arg key=value ... }}` (shell quoting, so a label with spaces is quoted). Filters are `column=value`, `column!=value`, `column>value`,
`column>=value`, `column<value`, `column<=value` (numbers compared as numbers); `a:` / `b:`
prefixes select the two sides of a ratio. Common options: `fmt=.2f` (a format spec),
`agg=mean|median|min|max|sum|count|first`.

Functions (EXP: a folder of results/ with runs.parquet; FILE: a CSV under results/bench/):
- `ci EXP COL [filters] [per_seed=1]`: mean with its interval, n and method (`stats.bootstrap_ci`);
  `per_seed=1` averages each seed's rows first.
- `stat EXP COL [filters] [agg] [groupby=a,b] [scale=gib|mib|NUMBER]`: a statistic of the ok runs (with
  `groupby`: of the group means), times `scale` (bytes to GiB / MiB).
- `rate EXP COL [filters]`: how many runs have COL == 1 (e.g. `metric.one_disc`), with the Wilson interval.
- `seeds EXP [filters]`: the number of distinct seeds among the ok runs.
- `ratio EXP COL a:filters b:filters [agg]`: agg(a) / agg(b).
- `csv FILE COL [filters] [agg]`: one value of a benchmark table (exactly one row unless `agg`).
- `csvratio FILE COL a:filters b:filters [agg]`.
- `family NAME EXP ref=LABEL metrics=m1,m2 [label=COL] [filters]`: declares a Holm family (every
  setting against LABEL on every canvas and metric; `label=COL` compares the values of COL, each
  seed's rows averaged); renders a sentence that says what was corrected over. Control runs are
  left out unless LABEL is a control's label (their comparisons are the `controls` placeholder's).
- `controls NAME EXP [metrics=m1,m2] [excess=m1,m2]`: the comparisons with the experiment's controls
  (`default_family`, `cost_ratios`, `single_window_excess`), declaring family NAME; where the
  table has no control runs, the sentence that says the controls are not in these results.
- `pricing EXP [filters]`: how the runs' `cost.unet_equivalents` was priced (FLOPs, or older records' seconds)
  and its range.
- `cmp NAME METRIC SETTING CANVAS [part=text|verdict|interval|ni]`: one comparison of a family
  (`verdicts.Comparison`), in the fixed wording.
- `const NAME`: a named threshold of the analysis (VISIBLE_SEAM, SEAM_MARGIN, MIN_PAIRS, ALPHA).
- `claim ID [part=verdict|head|evidence|statement]`: a verdict of `analysis.article_claims` (`head`: its first clause).

A template may start with `<!-- renderer: package.module.Class -->` to be rendered by a `Renderer`
subclass that adds `f_<name>(self, positional, options, filters)` placeholder functions.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .. import stats
from ..errors import ConfigError
from .tables import (
    CONTROL_LABELS,
    CONTROLS,
    COST,
    DIFFUSERS_DEFAULT,
    EVALS,
    SEAM,
    SINGLE_WINDOW,
    control_column,
    has_controls,
    label_extra,
    load_table,
    missing_controls_note,
    paired_vs,
    with_derived,
    with_method_label,
)
from .verdicts import Comparison, canvas_name, short

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_KEY = re.compile(r"^([A-Za-z_][\w.:]*)(!=|>=|<=|=|>|<)")  # a filter or option: column, operator; other words are positional
_OPTIONS = {"fmt", "agg", "part", "per_seed", "groupby", "ref", "metrics", "label", "scale", "excess"}
_SCALES = {"gib": 1 / 2**30, "mib": 1 / 2**20}


def family(df: pd.DataFrame, reference: str, metrics: Sequence[str], *,
           by: tuple[str, str] = ("plan.height", "plan.width")) -> dict[tuple[str, str, str], Comparison]:
    """Every setting against `reference` on every canvas and metric, as one Holm family:
    {(metric, setting, canvas 'WxH'): Comparison}. `df` has `method.label` (tables.with_method_label)."""
    parts = []
    for m in metrics:
        if m not in df:
            raise ConfigError(f"family: no column {m!r} in the table; it has {[c for c in df if c.startswith('metric.')]}")
        p = paired_vs(df, reference, m, by=by)
        if len(p):
            parts.append(p.assign(metric=m))
    if not parts:
        raise ConfigError(f"family: no setting pairs with reference {reference!r}; labels: {sorted(df['method.label'].unique())}")
    t = pd.concat(parts, ignore_index=True)
    t["p_family"] = stats.holm(t["p"].to_numpy())
    out = {}
    for _, r in t.iterrows():
        iv = stats.Interval(float(r["diff"]), float(r["ci_lo"]), float(r["ci_hi"]), int(r["pairs"]),
                            method=f"paired {stats.DEFAULT_METHOD} bootstrap", p=float(r["p"]))
        c = canvas_name(r[by[0]], r[by[1]])
        out[(r["metric"], r["setting"], c)] = Comparison(r["metric"], r["setting"], reference, c, iv, float(r["p_family"]), len(t))
    return out


def family_table(df: pd.DataFrame, reference: str, metrics: Sequence[str]) -> pd.DataFrame:
    """`family` as a table, one row per comparison: metric, canvas, setting, diff, ci_lo, ci_hi, n, p, p_holm
    (over the whole family), verdict (the fixed wording) and the interval's method."""
    rows = [{"metric": c.metric.split(".", 1)[-1], "canvas": c.canvas, "setting": c.setting, "diff": c.diff.estimate,
             "ci_lo": c.diff.lo, "ci_hi": c.diff.hi, "n": c.diff.n, "p": c.diff.p, "p_holm": c.p_holm,
             "verdict": c.text().split(" on ", 1)[0], "ci_method": f"{c.diff.method}, 95%; Holm over {c.family_size}"}
            for c in family(df, reference, metrics).values()]
    return pd.DataFrame(rows)


#: The comparisons with the diffusers-default control (notebook 06): seams; the cost is a ratio beside them.
DEFAULT_METRICS = (SEAM, "metric.seam_score")
#: The single-window control is the reference level of these (each setting's excess over it, paired).
EXCESS_METRICS = ("metric.intra_color", "metric.tv")
#: How the excess prints each metric (default ".2f"): total variation is a few hundredths per pixel.
EXCESS_FORMATS = {"metric.tv": ".3f"}
DEFAULT_LABEL, SINGLE_LABEL = CONTROL_LABELS[DIFFUSERS_DEFAULT], CONTROL_LABELS[SINGLE_WINDOW]


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    return df if "method.label" in df else with_method_label(with_derived(df), label_extra(df))


def default_family(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[tuple[str, str, str], Comparison]:
    """Every ordinary setting and the single window left out against the diffusers-default control on every
    canvas, for `metrics`, paired on (seed, prompt): one Holm family (`family`); {} when the table has no
    diffusers-default run."""
    df = _labelled(df)
    c = control_column(df)
    if not (c == DIFFUSERS_DEFAULT).any():
        return {}
    return family(df[c != SINGLE_WINDOW], DEFAULT_LABEL, metrics)


def _pairs(df: pd.DataFrame, ref: pd.DataFrame, col: str) -> pd.DataFrame:
    keys = [k for k in ("prompt", "seed") if k in df and k in ref]
    return df[[*keys, col]].merge(ref[[*keys, col]], on=keys, suffixes=("", ".ref"))


def cost_column(df: pd.DataFrame) -> str:
    """The cost a ratio is taken of: `cost.unet_equivalents` where every run priced it by FLOPs (`cost.pricing`
    "flops", independent of the machine's load), else the model evaluations (older records priced other work
    with the run's own seconds)."""
    flops = "cost.pricing" in df and COST in df and bool((df["cost.pricing"] == "flops").all())
    return COST if flops else EVALS


def cost_ratios(df: pd.DataFrame, col: str | None = None) -> pd.DataFrame:
    """Per ordinary setting and canvas: the mean over (seed, prompt) pairs of its cost `col` (default
    `cost_column`) divided by the diffusers default's on the same canvas, with its expanded bootstrap
    interval, n pairs, the method and the column (`cost`). Empty when the table has no diffusers-default run."""
    df = _labelled(df)
    c = control_column(df)
    if not (c == DIFFUSERS_DEFAULT).any():
        return pd.DataFrame()
    col = col or cost_column(df[df["status"] == "ok"] if "status" in df else df)
    if col not in df:
        raise ConfigError(f"cost_ratios: no column {col!r}; the records of `mdtools run` carry {COST!r}")
    rows = []
    ok = df[df["status"] == "ok"] if "status" in df else df
    for (h, w), sub in ok[c.loc[ok.index] != SINGLE_WINDOW].groupby(["plan.height", "plan.width"]):
        ref = sub[control_column(sub) == DIFFUSERS_DEFAULT]
        for label, other in sub[control_column(sub) == ""].groupby("method.label", sort=False):
            m = _pairs(other, ref, col)
            iv = stats.bootstrap_ci((m[col] / m[f"{col}.ref"]).to_numpy(dtype=float))
            rows.append({"setting": label, "canvas": canvas_name(h, w), "ratio": iv.estimate, "lo": iv.lo, "hi": iv.hi,
                         "n": iv.n, "ci_method": f"{stats.method_label()}, over (seed, prompt) pairs", "cost": col,
                         "text": format(iv, ".2f")})
    return pd.DataFrame(rows)


#: The excess over the single window in words: neither metric is better or worse when lower, so it reads higher / lower.
def _reading(metric: str, iv: stats.Interval, p_holm: float) -> str:
    word = {"worse": "higher", "better": "lower"}.get(stats.verdict(iv, higher_is_better=False, p_adjusted=p_holm))
    if word:
        return f"{word} {short(metric)} than the {SINGLE_LABEL}"
    after = " after Holm correction" if stats.verdict(iv, higher_is_better=False) != "no difference shown" else ""
    return f"no difference shown from the {SINGLE_LABEL}{after}"


def _canvas_order(setting: str, canvas: str) -> tuple[int, int, str]:
    """Narrow canvases first, the diffusers default first on each, then settings by name."""
    return int(canvas.split("x")[0]), 0 if setting == DEFAULT_LABEL else 1, setting


def single_window_excess(df: pd.DataFrame, metrics: Sequence[str] = EXCESS_METRICS) -> pd.DataFrame:
    """Every setting (the diffusers default included) minus the single-window control, per canvas and metric,
    paired on (seed, prompt): the mean difference with its expanded interval, n pairs, p, Holm's p over the
    table's rows (one family) and the `reading` (higher / lower than the single window, or no difference shown;
    `stats.verdict` with Holm's p decides). Empty when the table has no single-window run."""
    df = _labelled(df)
    c = control_column(df)
    if not (c == SINGLE_WINDOW).any():
        return pd.DataFrame()
    for m in metrics:
        if m not in df:
            raise ConfigError(f"single_window_excess: no column {m!r}; use metrics from {[x for x in df if x.startswith('metric.')]}")
    ok = df[df["status"] == "ok"] if "status" in df else df
    single = ok[c.loc[ok.index] == SINGLE_WINDOW]
    on = stats.pairing_keys(ok)
    rows, ivs = [], []
    for (label, h, w), sub in ok[c.loc[ok.index] != SINGLE_WINDOW].groupby(["method.label", "plan.height", "plan.width"], sort=False):
        for m in metrics:
            iv = stats.paired_difference(single, sub, on=on, value=m)
            ivs.append(iv)
            rows.append({"setting": label, "canvas": canvas_name(h, w), "metric": m, "excess": iv.estimate, "lo": iv.lo,
                         "hi": iv.hi, "n": iv.n, "p": iv.p})
    out = pd.DataFrame(rows)
    out["p_holm"] = stats.holm(out["p"].to_numpy())
    out["reading"] = [_reading(m, iv, ph) for m, iv, ph in zip(out["metric"], ivs, out["p_holm"])]
    out["ci_method"] = f"paired {stats.method_label()}; Holm over {len(out)}"
    order = sorted(range(len(out)), key=lambda i: (*_canvas_order(out["setting"][i], out["canvas"][i]), metrics.index(out["metric"][i])))
    return out.iloc[order].reset_index(drop=True)


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(v, v)


def _parse(body: str) -> tuple[str, list[str], dict[str, str], list[tuple[str, str, str]]]:
    """'fn a b key=v col>3' -> (fn, positional, options, filters); filters keep an 'a:' / 'b:' prefix in the column."""
    words = shlex.split(body)
    if not words:
        raise ConfigError("empty placeholder {{ }}")
    fn, pos, opts, filters = words[0], [], {}, []
    for w in words[1:]:
        m = _KEY.match(w)
        op = m.group(2) if m else None
        if op is None:
            pos.append(w)
            continue
        k, v = m.group(1), w[m.end():]
        if op == "=" and k in _OPTIONS:
            opts[k] = v
        else:
            filters.append((k, op, v))
    return fn, pos, opts, filters


def _select(df: pd.DataFrame, filters: Sequence[tuple[str, str, str]], what: str, need: Sequence[str] = ()) -> pd.DataFrame:
    """The rows passing every filter; ConfigError naming a missing column (a filter's or one of `need`) or no match."""
    for col in need:
        if col not in df:
            raise ConfigError(f"{what}: no column {col!r}; it has {list(df.columns)[:30]}")
    for col, op, v in filters:
        if col not in df:
            raise ConfigError(f"{what}: no column {col!r}; it has {list(df.columns)[:30]}")
        val = _value(v)
        s = df[col]
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            s = pd.to_numeric(s, errors="coerce")
        elif s.dtype != object:
            s = s.astype(str)
        mask = {"=": s == val, "!=": s != val, ">": s > val, ">=": s >= val, "<": s < val, "<=": s <= val}[op]
        df = df[mask.fillna(False).astype(bool)]
    if df.empty:
        raise ConfigError(f"{what}: no rows match {filters}")
    return df


def _agg(values: pd.Series, how: str) -> float:
    v = values.dropna()
    if how == "first":
        if v.nunique() != 1:
            raise ConfigError(f"agg=first needs one distinct value, got {sorted(v.unique())[:6]}; use agg=mean / median / min / max")
        return float(v.iloc[0])
    fns: dict[str, Callable[[pd.Series], Any]] = {"mean": pd.Series.mean, "median": pd.Series.median, "min": pd.Series.min,
                                                  "max": pd.Series.max, "sum": pd.Series.sum, "count": pd.Series.count}
    if how not in fns:
        raise ConfigError(f"agg={how!r}: use one of {[*fns, 'first']}")
    return float(fns[how](v))


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _num(x: float, fmt: str) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


class Renderer:
    """Fills placeholders from one results folder; tables, benchmark CSVs and families are read once."""

    def __init__(self, results: str | Path):
        self.results = Path(results)
        self._tables: dict[str, pd.DataFrame] = {}
        self._csvs: dict[str, pd.DataFrame] = {}
        self.families: dict[str, dict[tuple[str, str, str], Comparison]] = {}
        self._claims: pd.DataFrame | None = None
        self._before_controls: set[str] = set()  # experiments whose table has no `control` column

    def table(self, exp: str) -> pd.DataFrame:
        if exp not in self._tables:
            raw = load_table(self.results / exp)
            df = with_method_label(with_derived(raw), label_extra(raw)) if "method.name" in raw else with_derived(raw)
            if "control" not in df:
                self._before_controls.add(exp)
            df["control"] = control_column(df)  # "" in a table made before controls, so filters on it work there too
            self._tables[exp] = df[df["status"] == "ok"]
        return self._tables[exp]

    def csv(self, name: str) -> pd.DataFrame:
        if name not in self._csvs:
            p = self.results / "bench" / name
            if not p.is_file():
                raise ConfigError(f"csv: no benchmark table {p}")
            self._csvs[name] = pd.read_csv(p)
        return self._csvs[name]

    # ---- placeholder functions -------------------------------------------------------------
    def f_ci(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        exp, col = pos
        d = _select(self.table(exp), flt, f"ci {exp} {col}", [col])
        v = d.groupby("seed")[col].mean() if o.get("per_seed") == "1" else d[col]
        return format(stats.bootstrap_ci(v.to_numpy(dtype=float)), o.get("fmt", ".2f"))

    def f_stat(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        exp, col = pos
        d = _select(self.table(exp), flt, f"stat {exp} {col}", [col])
        if "groupby" in o:
            d = d.groupby(o["groupby"].split(","))[col].mean().reset_index()
        scale = _SCALES.get(o.get("scale", ""), None) or float(o.get("scale", 1))
        return _num(_agg(d[col], o.get("agg", "mean")) * scale, o.get("fmt", ".2f"))

    def f_rate(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        exp, col = pos
        v = _select(self.table(exp), flt, f"rate {exp} {col}", [col])[col].dropna()
        k, n = int((v == 1).sum()), len(v)
        lo, hi = stats.wilson_interval(k, n)
        return f"{k} of {n} runs ({k / n:.0%}; Wilson 95% [{lo:.0%}, {hi:.0%}])"

    def f_seeds(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        (exp,) = pos
        return str(_select(self.table(exp), flt, f"seeds {exp}", ["seed"])["seed"].nunique())

    def _sides(self, df: pd.DataFrame, col: str, o: dict[str, str], flt: list, what: str) -> float:
        common = [f for f in flt if not f[0].startswith(("a:", "b:"))]
        side = {s: [(c[2:], op, v) for c, op, v in flt if c.startswith(f"{s}:")] for s in "ab"}
        a, b = (_agg(_select(df, common + side[s], what, [col])[col], o.get("agg", "mean")) for s in "ab")
        return a / b

    def f_ratio(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        exp, col = pos
        return _num(self._sides(self.table(exp), col, o, flt, f"ratio {exp} {col}"), o.get("fmt", ".2f"))

    def f_csv(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        name, col = pos
        d = _select(self.csv(name), flt, f"csv {name} {col}", [col])
        if "agg" not in o and len(d) != 1:
            raise ConfigError(f"csv {name} {col} {flt}: {len(d)} rows match; add filters or agg=")
        return _num(_agg(d[col], o.get("agg", "first")), o.get("fmt", ".2f"))

    def f_csvratio(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        name, col = pos
        return _num(self._sides(self.csv(name), col, o, flt, f"csvratio {name} {col}"), o.get("fmt", ".2f"))

    def f_family(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        name, exp = pos
        metrics = o["metrics"].split(",")
        df = _select(self.table(exp), flt, f"family {name}") if flt else self.table(exp)
        if o["ref"] not in CONTROL_LABELS.values():  # the experiment's own settings; the controls have `controls`
            df = df[df["control"] == ""]
        if "label" in o:
            keys = [k for k in ("plan.height", "plan.width", "prompt", "seed") if k in df]
            df = df.assign(**{"method.label": df[o["label"]].astype(str)})
            df = df.groupby(["method.label", *keys], dropna=False)[metrics].mean().reset_index().assign(status="ok")
        self.families[name] = family(df, o["ref"], metrics)
        n = len(self.families[name])
        return (f"{n} paired comparisons (every setting against {o['ref']}, on every canvas, for "
                f"{', '.join(m.split('.', 1)[-1] for m in metrics)}), Holm-corrected together")

    def f_controls(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        """The controls' comparisons as Markdown: every setting against the diffusers default (family NAME) with its
        cost ratio, and each setting's excess over the single window; or what is not in these results."""
        name, exp = pos
        d = self.table(exp)
        where = f"results/{exp}"
        if not has_controls(d):
            return missing_controls_note(d.drop(columns="control") if exp in self._before_controls else d, CONTROLS, where)
        parts = []
        metrics = o.get("metrics", ",".join(DEFAULT_METRICS)).split(",")
        fam = default_family(d, metrics)
        if fam:
            self.families[name] = fam
            ratios = cost_ratios(d)
            ratio = {(r["setting"], r["canvas"]): r for r in ratios.to_dict("records")}
            what = short(str(ratios["cost"].iloc[0])) if len(ratios) else short(COST)
            head = (f"Against the {DEFAULT_LABEL}: {len(fam)} paired comparisons (every setting, on every canvas, for "
                    f"{', '.join(short(m) for m in metrics)}; setting minus the {DEFAULT_LABEL}), Holm-corrected together; "
                    f"beside each, the ratio of its cost ({what}) to the {DEFAULT_LABEL}'s on the same seeds:")
            lines = []
            for (setting, canvas) in sorted(dict.fromkeys((k[1], k[2]) for k in fam), key=lambda k: _canvas_order(*k)):
                texts = "; ".join(fam[(m, setting, canvas)].text() for m in metrics if (m, setting, canvas) in fam)
                r = ratio.get((setting, canvas))
                cost = f"; cost ratio {r['text']}" if r else ""
                lines.append(f"- {setting}, {canvas}: {texts}{cost}")
            parts.append(head + "\n\n" + "\n".join(lines))
        else:
            parts.append(missing_controls_note(d, (DIFFUSERS_DEFAULT,), where))
        t = single_window_excess(d, o.get("excess", ",".join(EXCESS_METRICS)).split(","))
        if len(t):
            head = (f"Over the {SINGLE_LABEL} (the level one window of the model reaches alone): {len(t)} paired differences "
                    f"(setting minus the {SINGLE_LABEL}, on (seed, prompt)), Holm-corrected together:")
            lines = []
            for r in t.to_dict("records"):
                f = EXCESS_FORMATS.get(r["metric"], ".2f")
                lines.append(f"- {r['setting']}, {r['canvas']}, {short(r['metric'])}: {r['reading']}: {r['excess']:+{f}} "
                             f"[{r['lo']:{f}}, {r['hi']:{f}}] (n={r['n']}, paired {stats.method_label()}; "
                             f"Holm p {_p(r['p_holm'])} over {len(t)})")
            parts.append(head + "\n\n" + "\n".join(lines))
        else:
            parts.append(missing_controls_note(d, (SINGLE_WINDOW,), where))
        return "\n\n".join(parts)

    def f_pricing(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        """How the selected runs' `cost.unet_equivalents` was priced, with its range: by FLOPs (`cost.pricing` "flops":
        identical work, identical cost), or, in older records, with each run's own seconds (then no ratio is stated)."""
        (exp,) = pos
        d = _select(self.table(exp), flt, f"pricing {exp}", [COST])
        v = d[COST].dropna()
        lo, hi, n = float(v.min()), float(v.max()), len(v)
        span = f"{lo:.0f} on each of {n} runs" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f} over {n} runs"
        if cost_column(d) == COST:
            return f"Its `unet_equivalents` price these by their FLOPs, whatever the machine's load: {span}"
        return (f"Its `unet_equivalents` price these with each run's own seconds, so they follow the machine's load: "
                f"{span} of identical work; no cost ratio is stated from them")

    def f_cmp(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        name, metric, setting, canvas = pos
        if name not in self.families:
            raise ConfigError(f"cmp: family {name!r} is not declared above (declared: {sorted(self.families)})")
        fam = self.families[name]
        key = (metric, setting, canvas)
        if key not in fam:
            raise ConfigError(f"cmp: no comparison {key} in family {name!r}; it has e.g. {sorted(fam)[:4]}")
        c, fmt = fam[key], o.get("fmt", ".2f")
        part = o.get("part", "text")
        return {"text": c.text, "interval": c.interval, "ni": c.ni_text}[part](fmt) if part != "verdict" else c.verdict

    def f_const(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        from . import article_claims

        names = {"VISIBLE_SEAM": article_claims.VISIBLE_SEAM, "SEAM_MARGIN": article_claims.SEAM_MARGIN,
                 "MIN_PAIRS": stats.MIN_PAIRS, "ALPHA": stats.ALPHA}
        (name,) = pos
        if name not in names:
            raise ConfigError(f"const {name!r}: use one of {sorted(names)}")
        return _num(float(names[name]), o.get("fmt", "g"))

    def f_claim(self, pos: list[str], o: dict[str, str], flt: list) -> str:
        from .article_claims import all_verdicts

        if self._claims is None:
            self._claims = all_verdicts(self.results).set_index("claim")
        (cid,) = pos
        if cid not in self._claims.index:
            raise ConfigError(f"claim {cid!r}: use one of {list(self._claims.index)}")
        part = o.get("part", "verdict")
        if part == "head":  # the verdict's first clause: 'holds', 'does not hold', 'not shown', ...
            return re.split(r"[:;]", str(self._claims.loc[cid, "verdict"]), maxsplit=1)[0]
        return str(self._claims.loc[cid, part])

    def fill(self, body: str) -> str:
        fn, pos, opts, flt = _parse(body)
        f = getattr(self, f"f_{fn}", None)
        if f is None:
            raise ConfigError(f"placeholder {{{{ {body.strip()} }}}}: unknown function {fn!r}; use one of "
                              f"{sorted(n[2:] for n in dir(self) if n.startswith('f_'))}")
        try:
            return f(pos, opts, flt)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"placeholder {{{{ {body.strip()} }}}}: {e}") from e

    def render(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda m: self.fill(m.group(1)), text)


def render(text: str, results: str | Path = "results") -> str:
    """`text` with every placeholder filled from `results` (ConfigError naming a bad placeholder)."""
    return Renderer(results).render(text)


#: A template's optional first line naming a Renderer subclass with more placeholder functions, e.g.
#: `<!-- renderer: mdtools.analysis.upscale_findings.UpscaleRenderer -->`; the line is not rendered.
RENDERER_LINE = re.compile(r"\A<!--\s*renderer:\s*([\w.]+)\.(\w+)\s*-->\n")


def render_file(path: str | Path, results: str | Path = "results", *, renderer: Renderer | None = None) -> str:
    """The rendered Markdown of a template file, without a trailing newline. Pass one `renderer` to render
    several files from the same results (tables, claims and benchmark tables are then read once). A template
    whose first line names another renderer (RENDERER_LINE) is rendered by that class instead."""
    import importlib

    text = Path(path).read_text(encoding="utf-8")
    r = renderer or Renderer(results)
    m = RENDERER_LINE.match(text)
    if m:
        cls = getattr(importlib.import_module(m.group(1)), m.group(2), None)
        if not (isinstance(cls, type) and issubclass(cls, Renderer)):
            raise ConfigError(f"{path}: renderer {m.group(1)}.{m.group(2)} is not a subclass of mdtools.analysis.findings.Renderer")
        r = r if type(r) is cls else cls(r.results)
        text = text[m.end():]
    return r.render(text).rstrip("\n")


#: README.md holds the rendered "What we measured" between these two lines.
README_START = "<!-- findings: rendered from notebooks/findings/readme.md by notebooks/build_notebooks.py; do not edit -->"
README_END = "<!-- findings: end -->"


def readme_section(readme: str) -> str:
    """The rendered block between README_START and README_END (ConfigError when the markers are missing)."""
    if README_START not in readme or README_END not in readme:
        raise ConfigError("README.md has no findings markers; add README_START and README_END lines around the section")
    return readme.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n")


def with_readme_section(readme: str, rendered: str) -> str:
    """README text with the block between the markers replaced by `rendered`."""
    head, rest = readme.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    return f"{head}{README_START}\n{rendered}\n{README_END}{tail}"

