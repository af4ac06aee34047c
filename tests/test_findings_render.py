"""Findings rendered from results/: the committed notebook cells and README section equal their rendering; the renderer's rules."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mdtools import stats
from mdtools.analysis import findings
from mdtools.analysis.verdicts import MARGINS, Comparison, margin
from mdtools.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "notebooks" / "findings"
NOTEBOOK_OF = {p.stem.split("_")[0]: p for p in (ROOT / "notebooks").glob("0*_*.ipynb")}


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    """Every template rendered once from the committed results (one Renderer: tables and claims read once)."""
    r = findings.Renderer(ROOT / "results")
    out = {p.stem: findings.render_file(p, renderer=r) for p in sorted(TEMPLATES.glob("*.md"))}
    out["_families"] = r.families  # type: ignore[assignment]
    return out


def findings_cell(nb_path: Path) -> str:
    cells = [c for c in json.loads(nb_path.read_text())["cells"] if "findings" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb_path.name}: expected one cell tagged 'findings', found {len(cells)}"
    src = cells[0]["source"]
    return "".join(src) if isinstance(src, list) else src


def test_every_notebook_has_a_template_and_its_cell_equals_the_rendering(rendered):
    assert sorted(NOTEBOOK_OF) == sorted(k for k in rendered if k.isdigit()), "one template per notebook 0N"
    for name, nb in NOTEBOOK_OF.items():
        assert findings_cell(nb) == rendered[name], (
            f"{nb.name}: its findings cell differs from notebooks/findings/{name}.md rendered from results/; "
            "run `python notebooks/build_notebooks.py`")


def test_readme_section_equals_the_rendering(rendered):
    assert findings.readme_section((ROOT / "README.md").read_text()) == rendered["readme"], (
        "README's 'What we measured' differs from notebooks/findings/readme.md rendered; run notebooks/build_notebooks.py")


def test_every_number_in_the_templates_prose_is_a_placeholder_or_a_named_constant():
    """Outside placeholders, digits may only name settings (px, steps, seeds, ratios like 1:4, file names), never results."""
    allowed = re.compile(r"(?:\d+ x \d+|\d+(?:-| and )\d+\s?px|\d+-core|suns - 1|notebooks? \d+|\d+:\d+|\d+\^2|0\d[_.]|"
                         r"1 = |1/\d+|2x2|C\d|SD \d|FLUX\.1|2\.1|1\.5|"
                         r"\d+(?:\.\d+)?\s?(?:px|%|x\b|steps|sync|stages|seeds|MiB|GiB|DDIM|tiles|windows|runs|prompt|thread|of)|"
                         r"guidance 7\.5|2-3 runs|excludes 0|strength \d(?:\.\d+)?|overlap \d+)")
    for p in TEMPLATES.glob("*.md"):
        prose = findings.PLACEHOLDER.sub(" ", p.read_text())
        stripped = allowed.sub(" ", prose)
        stray = re.findall(r"(?<![\w.-])\d+(?:\.\d+)?(?!\w)", stripped)
        assert not stray, f"{p.name}: numbers outside placeholders: {stray[:5]} -- render them from a table"


def test_wording_follows_the_rules(rendered):
    """'better' / 'worse' only where the interval excludes 0 and Holm rejects; no 'matches'; non-inferior names its margin."""
    fams = rendered["_families"]
    assert fams, "the templates declare Holm families"
    for fam in fams.values():
        for c in fam.values():
            excl = c.diff.lo > 0 or c.diff.hi < 0
            if c.verdict in ("better", "worse"):
                assert excl and c.p_holm < stats.ALPHA and c.diff.n >= stats.MIN_PAIRS
                good_side = c.diff.estimate > 0 if margin(c.metric).higher_is_better else c.diff.estimate < 0
                assert (c.verdict == "better") == good_side
            else:
                assert c.verdict == "no difference shown"
    text = "\n".join(v for k, v in rendered.items() if isinstance(v, str))
    assert not re.search(r"\bmatch(es)?\b|\bsame seams\b|most consistent", text)
    for m in re.finditer(r"non-inferior within margin (\S+) on (\w+)", text):
        assert float(m.group(1)) == MARGINS[f"metric.{m.group(2)}"].value


# ---- the renderer on a constructed table -------------------------------------------------------

@pytest.fixture
def results(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(8):
        base = rng.normal(1.0, 0.05)
        for name, shift, ev in (("multidiffusion", 0.0, 210), ("mixture", -0.4, 210), ("spotdiffusion", 0.01, 120)):
            rows.append({"status": "ok", "seed": seed, "method.name": name, "tiling.kernel": "gaussian", "plan.height": 128,
                         "plan.width": 512, "metric.seam_structure": base + shift + rng.normal(0, 0.02),
                         "count.model_evaluations": ev, "swept": json.dumps({"method.name": name, "seed": seed})})
    (tmp_path / "exp").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "exp" / "runs.parquet")
    (tmp_path / "bench").mkdir()
    pd.DataFrame({"method": ["a", "b", "b"], "size": [1, 1, 2], "mb": [10.0, 40.0, 60.0]}).to_csv(tmp_path / "bench" / "t.csv", index=False)
    return tmp_path


def test_placeholders_compute_from_the_tables(results):
    df = pd.read_parquet(results / "exp" / "runs.parquet")
    md = df[df["method.name"] == "multidiffusion"]["metric.seam_structure"]
    out = findings.render("{{ ci exp metric.seam_structure method.name=multidiffusion }}", results)
    assert out == format(stats.bootstrap_ci(md.to_numpy()), ".2f") and out.endswith("(n=8, expanded bootstrap)")
    assert findings.render("{{ stat exp count.model_evaluations method.name=spotdiffusion agg=first fmt=.0f }}", results) == "120"
    assert findings.render("{{ ratio exp count.model_evaluations a:method.name=spotdiffusion b:method.name=mixture agg=first }}",
                           results) == f"{120 / 210:.2f}"
    assert findings.render("{{ csv t.csv mb method=b size=2 fmt=.0f }}", results) == "60"
    assert findings.render("{{ csvratio t.csv mb size=1 a:method=b b:method=a fmt=.1f }}", results) == "4.0"
    assert findings.render("{{ csv t.csv mb method=b agg=max fmt=.0f }} {{ seeds exp }}", results) == "60 8"


def test_family_uses_holm_over_every_row_and_fixed_wording(results):
    text = findings.render('{{ family F exp ref=multidiffusion(gaussian) metrics=metric.seam_structure }}\n'
                           '{{ cmp F metric.seam_structure mixture 512x128 }}\n'
                           '{{ cmp F metric.seam_structure spotdiffusion(gaussian) 512x128 part=verdict }}\n'
                           '{{ cmp F metric.seam_structure spotdiffusion(gaussian) 512x128 part=ni }}', results)
    first, mix, spot, ni = text.split("\n")
    assert first.startswith("2 paired comparisons") and "Holm-corrected" in first
    assert mix.startswith("better on seam_structure: -0.4") and "over 2)" in mix
    assert spot == "no difference shown"
    assert ni.startswith("non-inferior within margin 0.1 on seam_structure") or ni.startswith("not shown non-inferior within margin 0.1")
    # the Holm p of a family equals stats.holm of the rows' own p-values
    df = findings.Renderer(results).table("exp")
    fam = findings.family(df, "multidiffusion(gaussian)", ["metric.seam_structure"])
    ps = [c.diff.p for c in fam.values()]
    np.testing.assert_allclose([c.p_holm for c in fam.values()], stats.holm(ps))


def test_a_difference_that_fails_holm_is_not_called():
    iv = stats.Interval(-0.2, -0.3, -0.1, 8, method="paired expanded bootstrap", p=0.01)
    c = Comparison("metric.seam_structure", "x", "ref", "512x128", iv, p_holm=0.2, family_size=20)
    assert c.verdict == "no difference shown"
    assert c.text().startswith("no difference shown after Holm correction on seam_structure: -0.20 [-0.30, -0.10] (n=8, ")
    assert "Holm p 0.200 over 20" in c.text()
    c2 = Comparison("metric.one_disc", "x", "ref", "512x128", stats.Interval(0.3, 0.1, 0.5, 8, p=0.001), 0.004, 3)
    assert c2.verdict == "better" and not math.isnan(c2.p_holm)


@pytest.mark.parametrize("body, match", [
    ("nosuch exp x", "unknown function 'nosuch'"),
    ("ci exp metric.nope", "no column 'metric.nope'"),
    ("ci exp metric.seam_structure method.name=absent", "no rows match"),
    ("cmp G metric.seam_structure mixture 512x128", "family 'G' is not declared"),
    ("csv t.csv mb method=b", "2 rows match"),
    ("stat exp metric.seam_structure agg=mode", "agg='mode'"),
])
def test_bad_placeholders_name_the_problem(results, body, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        findings.render("{{ " + body + " }}", results)


def test_margins_are_named_and_unknown_metrics_refused():
    assert all(m.value > 0 and m.why for m in MARGINS.values())
    with pytest.raises(ConfigError, match="no non-inferiority margin"):
        margin("metric.nope")


def test_readme_markers_round_trip():
    text = f"a\n{findings.README_START}\nold\n{findings.README_END}\nb"
    new = findings.with_readme_section(text, "new\nlines")
    assert findings.readme_section(new) == "new\nlines" and new.startswith("a\n") and new.endswith("\nb")
    with pytest.raises(ConfigError, match="markers"):
        findings.readme_section("no markers")


class _TwiceRenderer(findings.Renderer):
    def f_twice(self, pos, o, flt):
        return str(2 * int(pos[0]))


def test_a_template_may_name_its_own_renderer(results, tmp_path):
    t = tmp_path / "08.md"
    t.write_text("<!-- renderer: tests.test_findings_render._TwiceRenderer -->\n{{ twice 21 }} {{ seeds exp }}\n")
    assert findings.render_file(t, results) == "42 8"
    t.write_text("<!-- renderer: mdtools.stats.Interval -->\nx\n")
    with pytest.raises(ConfigError, match="not a subclass"):
        findings.render_file(t, results)
