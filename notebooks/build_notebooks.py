"""Write the notebooks from their cell sources and execute them (outputs are committed); render README's findings.

    python notebooks/build_notebooks.py            # write + execute all, rewrite README's "What we measured"
    python notebooks/build_notebooks.py --no-exec  # write only

The notebooks stay thin: they load tables from results/ and call mdtools.analysis (plots,
tables, article_claims). Each notebook's findings cell is rendered from its template
`notebooks/findings/NN.md` by `mdtools.analysis.findings` (every number and verdict is a
placeholder filled from results/), and README's "What we measured" from `findings/readme.md`;
`tests/test_findings_render.py` fails when the committed text differs from its rendering, and
`make test` executes every notebook (nbmake).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's mdtools, not another install's

from mdtools.analysis.coherence import MAX_REDUNDANCY  # noqa: E402
from mdtools.analysis.findings import Renderer, render_file, with_readme_section  # noqa: E402

FINDINGS_DIR = HERE / "findings"
#: Notebook cells holding rendered findings carry this tag (tests/test_findings_render.py finds them by it).
FINDINGS_TAG = "findings"

SETUP = """\
%matplotlib inline
from pathlib import Path
import pandas as pd
from IPython.display import Image, display
from mdtools.analysis import plots
from mdtools.analysis.tables import load_table, summarize

ROOT = Path.cwd() if (Path.cwd() / "results").exists() else Path.cwd().parent
R = ROOT / "results"
pd.set_option("display.precision", 3)
pd.set_option("display.width", 250)
pd.set_option("display.max_columns", 40)"""


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text)


_RENDERER: list[Renderer] = []  # one per build: tables, claims and benchmark CSVs are read once


def findings(name: str) -> nbformat.NotebookNode:
    """The findings cell of notebook `name` ('06'), rendered from findings/NN.md and tagged FINDINGS_TAG."""
    if not _RENDERER:
        _RENDERER.append(Renderer(ROOT / "results"))
    cell = md(render_file(FINDINGS_DIR / f"{name}.md", renderer=_RENDERER[0]))
    cell.metadata["tags"] = [FINDINGS_TAG]
    return cell


def write_readme() -> Path:
    """Rewrite README.md's block between the findings markers from findings/readme.md."""
    if not _RENDERER:
        _RENDERER.append(Renderer(ROOT / "results"))
    readme = ROOT / "README.md"
    text = render_file(FINDINGS_DIR / "readme.md", renderer=_RENDERER[0])
    readme.write_text(with_readme_section(readme.read_text(encoding="utf-8"), text), encoding="utf-8")
    return readme


def nb_quickstart() -> list:
    return [
        md("# 01 - Quickstart\n\nThe `make demo` experiment (`experiments/quickstart.yaml`): one 512 x 2048 "
           "panorama of the embedded toy model (128 px window) generated three ways: naive tiles (no overlap), "
           "uniform-weight overlap and gaussian-weight overlap."),
        code(SETUP),
        code('df = load_table(R / "quickstart")\n'
             'df[["tiling.kernel", "tiling.overlap", "plan.n_views", "count.model_evaluations", '
             '"metric.seam_score", "metric.seam_score_lab", "time.total"]]'),
        code('fig = plots.seam_crops(df.sort_values(["tiling.overlap", "tiling.kernel"]), R / "quickstart" / "images", '
             'crop=128)'),
        code('import matplotlib.pyplot as plt\nfrom PIL import Image as PILImage\n'
             'rows = df.sort_values(["tiling.overlap", "tiling.kernel"])\n'
             'fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.9 * len(rows)), dpi=60)\n'
             'for ax, (_, row) in zip(axes, rows.iterrows()):\n'
             '    ax.imshow(PILImage.open(R / "quickstart" / "images" / row["preview"]))\n'
             '    ax.set_title(f\'{row["tiling.kernel"]}, overlap {row["tiling.overlap"]} px: '
             'seam_structure {row["metric.seam_structure"]:.2f}\')\n'
             '    ax.axis("off")'),
        findings("01"),
    ]


def nb_overlap() -> list:
    return [
        md("# 02 - Overlap and blend kernels\n\n`experiments/overlap_kernel.yaml` (overlap 0 to half the "
           "window x every kernel x 8 seeds, 128 x 512 px) and `experiments/frontier.yaml` (seam score per model evaluation), "
           "toy model on CPU. Seam score: 1 = no seam (docs/metrics.md)."),
        code(SETUP),
        code('ok = load_table(R / "overlap_kernel")\nsummarize(ok)'),
        code("fig = plots.seam_vs_overlap(ok)"),
        code('fig = plots.seam_vs_overlap(ok, metric="metric.seam_score_lab")'),
        code("fig = plots.cost_vs_overlap(ok)"),
        code("fig = plots.disagreement_per_step(ok)"),
        code('fr = load_table(R / "frontier")\nfig = plots.frontier(fr)'),
        findings("02"),
    ]


def nb_aspect() -> list:
    return [
        md("# 03 - Aspect ratio\n\n`experiments/aspect_ratio.yaml`: a fixed pixel count (0.26 MP) from 1:4 to "
           "4:1, toy model on CPU."),
        code(SETUP),
        code('ar = plots.with_derived(load_table(R / "aspect_ratio"))\n'
             'ar.groupby("aspect")[["plan.height", "plan.width", "plan.n_views", "plan.redundancy", '
             '"count.model_evaluations", "time.denoise", "metric.seam_score"]].mean()'),
        code("fig = plots.cost_vs_aspect(ar)"),
        findings("03"),
    ]


def nb_cost() -> list:
    return [
        md("# 04 - Cost and memory\n\n`experiments/scaling.yaml` (one window to 16x its area), the VAE memory "
           "benchmark (`benchmarks/vae_memory.py`) and the engine overhead benchmarks. CPU figures are peak "
           "resident memory (VmHWM, reset per phase); on CUDA the same columns hold allocator peaks."),
        code(SETUP),
        code('sc = plots.with_derived(load_table(R / "scaling"))\n'
             'sc.groupby("megapixels")[["plan.n_views", "count.model_evaluations", "time.denoise", "time.decode", '
             '"time.total", "peak_gb.denoise", "peak_gb.decode"]].median()'),
        code("fig = plots.memory_time_vs_size(sc)"),
        code('vb = R / "bench" / "vae_memory.csv"\nvae = pd.read_csv(vb) if vb.exists() else None\nvae'),
        code('png = R / "bench" / "vae_memory.png"\nif png.exists():\n    display(Image(filename=str(png), width=800))'),
        code('for name in ("overhead", "recorder_overhead"):\n'
             '    p = R / "bench" / f"{name}.csv"\n'
             '    if p.exists():\n        display(pd.read_csv(p).T.rename(columns={0: name}))'),
        md("## Real architectures, random weights\n\n`benchmarks/real_arch.py` (docs/models.md): SD 2.1 and SDXL "
           "whole; SD3-medium whole and through depth-reduced transformers (`--depth-probe`, which FLUX.1-dev needs "
           "here); `kind` says what was measured and what extrapolated, `basis` how. `benchmarks/vae_fast.py` "
           "(docs/vae.md): the exact tiled decode against diffusers' tiling on SD's VAE."),
        code('cols = ["preset", "size_px", "phase", "kind", "views", "per_view_forward_s", "seconds", '
             '"peak_above_weights_gb", "weights_gb", "status"]\n'
             'ra = pd.concat([pd.read_csv(R / "bench" / f) for f in ("real_arch.csv", "real_arch_sd3_whole.csv", '
             '"real_arch_dit.csv") if (R / "bench" / f).exists()], ignore_index=True)\n'
             'ra[[c for c in cols if c in ra]].round(2)'),
        code('vf = pd.read_csv(R / "bench" / "vae_fast.csv")\n'
             'vf[["size", "method", "tile_px", "seconds", "decode_peak_mb", "output_mb", "psnr_db", "disk_written_mb"]]'),
        findings("04"),
    ]


def nb_claims() -> list:
    return [
        md("# 05 - The seed article's claims, measured\n\nEach claim of `shared/seed-claims.md` gets a verdict "
           "computed by `mdtools.analysis.article_claims` from the experiment tables in `results/`.\n\n**Scope:** the embedded "
           "toy model (128 px window, trained on CPU, mdtools/assets/toy-sd/MODEL_CARD.md) on a 2-core CPU. "
           "Pixel sizes in the article refer to SD's 512 px window; here they are compared as fractions of "
           "the window. **To rerun on a GPU with a real checkpoint:** `mdtools run experiments/gpu/<name>_sd21.yaml` "
           "for overlap_kernel, scaling, aspect_ratio and seed_claims, then point `all_verdicts` at that results "
           "folder."),
        code(SETUP + "\nfrom mdtools.analysis.article_claims import all_verdicts"),
        code('v = all_verdicts(R)\npd.set_option("display.max_colwidth", None)\nv[["claim", "statement", "verdict"]]'),
        code('for _, r in v.iterrows():\n    print(f"{r.claim}: {r.verdict}\\n    evidence: {r.evidence}\\n")'),
        findings("05"),
    ]


def nb_methods() -> list:
    return [
        md("# 06 - Methods on one engine\n\n`experiments/methods.yaml`: MultiDiffusion, Mixture of Diffusers, "
           "SyncDiffusion, SpotDiffusion, the global low-res pass and DemoFusion on the same loop (docs/methods.md), "
           "each at its default and at a cost-matched setting, on a 1:4 panorama (128 x 512 px) and a 2x2-window "
           "square (256 x 256 px), 8 seeds, the embedded toy model (128 px window) on CPU. Cost is the run's measured "
           "UNet-forward equivalents (`cost.unet_equivalents`: records with `cost.pricing` = flops price SyncDiffusion's "
           "gradients, backward passes, decodes and loss by their FLOPs, the same for identical work; older records "
           "priced them with the run's own seconds, so their cost follows the machine's load and the findings state "
           "counts instead). "
           "Intervals: 95% expanded bootstrap over seeds, printed with n and method (docs/statistics.md); comparisons "
           "are paired on seeds, and the notebook's family of comparisons (every setting against the reference on "
           "every canvas, for seam_structure, seam_score and intra_color) is Holm-corrected together.\n\n"
           "Controls (`controls:` in the experiment file, column `control`): the diffusers default (MultiDiffusion, "
           "uniform kernel, stride = window / 8) and the single window (one 128 x 128 window per seed). Tables and "
           "plots label their runs \"diffusers default\" and \"single window\", never as the MultiDiffusion they run; "
           "the reference family above leaves them out. Two more Holm families: every setting against the diffusers "
           "default (seam_structure, seam_score; the cost ratio `cost.unet_equivalents` beside each), and every setting's "
           "excess over the single window (intra_color, tv)."),
        code(SETUP + "\nfrom mdtools.analysis.tables import has_controls, label_extra, methods_table, missing_controls_note, plain_runs\n"
             "m = plots.with_method_label(plots.with_derived(load_table(R / 'methods')), label_extra(load_table(R / 'methods')))"),
        code('t = methods_table(m)\n'
             'cols = ["method.label", "plan.width", "plan.height", "n", "metric.seam_structure", "metric.seam_structure.ci", '
             '"count.model_evaluations", "cost.unet_equivalents", "time.denoise", "peak_gb.denoise", "peak_gb.sync", "ci_method"]\n'
             't[[c for c in cols if c in t]]'),
        code("fig = plots.methods_bars(m)"),
        code('for (h, w), sub in m[m["status"] == "ok"].groupby(["plan.height", "plan.width"]):\n'
             '    if plain_runs(sub).empty:  # the single window\'s own canvas: no methods to compare\n        continue\n'
             '    fig = plots.frontier(sub)\n    fig.axes[0].set_title(f"{w} x {h} px: seam score per measured cost")'),
        code('from mdtools.analysis.findings import family_table\n'
             'ref = "multidiffusion(gaussian, steps=15, overlap=64)"\n'
             'pd.set_option("display.max_colwidth", 80)\n'
             '# the notebook\'s family: every setting against the reference, every canvas, three metrics; Holm over all rows\n'
             'fam = family_table(plain_runs(m), ref, ["metric.seam_structure", "metric.seam_score", "metric.intra_color"])\n'
             'fam.round(4)'),
        code('# the controls: every setting against the diffusers default (one Holm family: seam_structure, seam_score),\n'
             '# its cost ratio, and every setting\'s excess over the single window (one Holm family: intra_color, tv)\n'
             'from mdtools.analysis.coherence import comparisons_table\n'
             'from mdtools.analysis.findings import cost_ratios, default_family, single_window_excess\n'
             'from mdtools.analysis.tables import DIFFUSERS_DEFAULT, SINGLE_WINDOW\n'
             'if has_controls(m):\n'
             '    fam_d = default_family(m)\n'
             '    display(comparisons_table(fam_d).round(4) if fam_d else missing_controls_note(m, (DIFFUSERS_DEFAULT,), "results/methods"))\n'
             '    display(cost_ratios(m).drop(columns="text", errors="ignore").round(3))\n'
             '    ex = single_window_excess(m)\n'
             '    display(ex.round(4) if len(ex) else missing_controls_note(m, (SINGLE_WINDOW,), "results/methods"))\n'
             'else:\n'
             '    print(missing_controls_note(m, where="results/methods"))'),
        code('import io\nfrom PIL import Image as PILImage\n'
             'for name in ("method_images_512x128", "method_images_256x256"):\n'
             '    png = R / "methods" / "plots" / f"{name}.png"  # written by mdtools report (previews of seed 0)\n'
             '    if png.exists():\n        im = PILImage.open(png).convert("RGB")\n        im.thumbnail((640, 4000))\n'
             '        buf = io.BytesIO()\n        im.save(buf, format="JPEG", quality=80)\n'
             '        display(Image(data=buf.getvalue(), format="jpeg"))'),
        findings("06"),
    ]


def nb_coherence() -> list:
    return [
        md("# 07 - Coherence with ground truth\n\n`experiments/coherence.yaml`: the embedded scenes model (every training "
           "scene has exactly one sun or moon and one horizon, docs/scenes.md) on panoramas of 1:4 and 1:8, every method at "
           "its default, with two controls: the diffusers default plan (uniform kernel, stride = window / 8: what users run "
           "today) and a single window at the same settings (what the model paints alone). The headline is the rate of runs "
           "with exactly one disc in the sky (`one_disc`; `no_disc` is its own failure), beside the mean |suns - 1| and each "
           "setting's excess over the single window. `experiments/frontier_scenes.yaml` adds the cost frontier and the "
           f"moonshot: a setting at redundancy <= {MAX_REDUNDANCY:g} whose seams and one-disc rate are non-inferior to the diffusers default. "
           "Settings are labelled by `mdtools.analysis.coherence.setting_labels`. Intervals: 95% expanded bootstrap over runs "
           "(seed x prompt), printed with n and method (docs/statistics.md); comparisons are paired on (seed, prompt), and "
           "each family (every setting against the diffusers default, every canvas and metric; the excess table; the "
           "moonshot's comparisons) is Holm-corrected together. Tables made before the controls existed have no `control` "
           "column: the cells below then say what is not in these results."),
        code(SETUP + "\nfrom mdtools.analysis import coherence as C\nfrom mdtools.analysis.plots_coherence import frontier_figure\n"
             "c = C.prepare(load_table(R / 'coherence'))\n"
             "for which in (C.SINGLE_WINDOW, C.DIFFUSERS_DEFAULT):\n"
             "    if not C.has_control(c, which):\n        print(C.missing_note(c, which, 'results/coherence'))\n"
             "c.groupby(['canvas', 'setting', 'control'], sort=False).size().rename('runs').reset_index()"),
        code('import io\nfrom PIL import Image as PILImage\n'
             'for name in ("method_images_512x128", "method_images_1024x128"):\n'
             '    png = R / "coherence" / "plots" / f"{name}.png"  # written by mdtools report (previews of seed 0)\n'
             '    if png.exists():\n        im = PILImage.open(png).convert("RGB")\n        im.thumbnail((760, 4000))\n'
             '        buf = io.BytesIO()\n        im.save(buf, format="JPEG", quality=80)\n'
             '        display(Image(data=buf.getvalue(), format="jpeg"))'),
        md("## Exactly one disc\n\nPer setting and canvas: n runs, the exactly-one-disc rate with its interval, the no-disc "
           "rate, the mean |disc_count - 1| (`disc_error`) and the mean disc_count."),
        code("C.disc_table(c).round(3)"),
        md("## Excess over the single-window control\n\nSetting minus the single window on the same (seed, prompt), for "
           "disc_count and one_disc; Holm over the table's rows."),
        code("x = C.excess_table(c)\n"
             "if x.empty:\n    print(C.missing_note(c, C.SINGLE_WINDOW, 'results/coherence'))\nx.round(4)"),
        md("## Against the diffusers default\n\nEvery setting minus the diffusers default, per canvas, on the coherence, seam "
           "and intra-panorama metrics the sweep measured; one Holm family; `non_inferior` against the metric's margin "
           "(`mdtools.analysis.verdicts.MARGINS`)."),
        code("fam = C.default_family(c)\n"
             "if not fam:\n    print(C.missing_note(c, C.DIFFUSERS_DEFAULT, 'results/coherence'))\n"
             "pd.set_option('display.max_colwidth', 60)\nC.comparisons_table(fam).round(4)"),
        md("## KID, Intra-LPIPS and Intra-Style\n\nKID of the protocol crops (`results/coherence/protocol.csv`, written by "
           "`mdtools.analysis.protocol`); Intra-LPIPS / Intra-Style on the shipped feature network, mean with interval."),
        code("kid = C.read_protocol(R / 'coherence')\n"
             "if kid is None:\n    print('KID: not measured (no results/coherence/protocol.csv)')\nelse:\n    display(kid)\n"
             "C.mean_table(c, ['metric.intra_lpips_featnet', 'metric.intra_style_featnet'])"),
        md("## Cost against coherence and seams\n\nCost is FLOP-priced UNet-forward equivalents (`cost.unet_equivalents`); "
           "redundancy = model evaluations / those of one pass of non-overlapping windows (`coherence.redundancy`)."),
        code("C.frontier_table(c).round(3)"),
        code("for canvas in C.frontier_table(c)['canvas'].unique():\n    fig = frontier_figure(c, canvas)"),
        md("## The moonshot (`results/frontier_scenes`)"),
        code("fs = R / 'frontier_scenes'\n"
             "if not (fs / 'runs.parquet').exists():\n"
             "    print('results/frontier_scenes is not in these results: the moonshot is not answered yet')\n"
             "else:\n    f = C.prepare(load_table(fs))\n    display(C.frontier_table(f).round(3))\n"
             "    for canvas in C.frontier_table(f)['canvas'].unique():\n        fig = frontier_figure(f, canvas)\n"
             "    if C.has_control(f, C.DIFFUSERS_DEFAULT):\n        for m in C.moonshot(f):\n            print(m.text())\n"
             "    else:\n        print(C.missing_note(f, C.DIFFUSERS_DEFAULT, 'results/frontier_scenes'))"),
        findings("07"),
    ]


def nb_upscale() -> list:
    """08: the upscalers against ground truth, read from results/upscale/ (benchmarks/upscale_truth.py)."""
    return [
        md("# 08 - Upscaling against ground truth\n\n"
           "`benchmarks/upscale_truth.py`: scenes rendered at the target size by the scenes generator (their horizon and sun "
           "are known) and crops of held-out texture stripes, downsampled 4x (and 2x, PIL bicubic), then upscaled back by "
           "every method on the embedded scenes model `toy-scenes` (CPU) at the same strength, steps, guidance and seed, "
           "and measured against the original: PSNR, SSIM, feature-LPIPS (the shipped feature network), `color_drift` "
           "(overall and worst tile), `seam_structure` on each method's own tile lines, and on scenes the suns counted "
           "in the sky and the horizon's error in px. One image per seed, 8 seeds: pairs are (image, seed).\n\n"
           "Intervals: 95% expanded percentile bootstrap over (image, seed) (`mdtools.stats`, as notebook 05); "
           "comparisons are paired, and their p-values Holm-corrected within each dataset x factor x metric family "
           "(docs/statistics.md). \"Better\" only when the interval excludes zero and the Holm p is below 0.05; otherwise "
           "\"no difference shown\". "
           "This notebook computes nothing heavy: it reads the committed tables in `results/upscale/`."),
        code("from pathlib import Path\nimport pandas as pd\nfrom IPython.display import Image, Markdown, display\n"
             "from mdtools.analysis import upscale_findings as U\n\n"
             "ROOT = Path.cwd() if (Path.cwd() / 'results').exists() else Path.cwd().parent\n"
             "R = ROOT / 'results' / 'upscale'\n"
             "runs = U.load_runs(R)\nsummary = pd.read_csv(R / 'summary.csv')\ncomps = pd.read_csv(R / 'comparisons.csv')\n"
             "pd.set_option('display.width', 250); pd.set_option('display.max_columns', 40); pd.set_option('display.max_colwidth', 60)\n"
             "settings = runs[['strength', 'steps', 'guidance', 'overlap']].drop_duplicates()\n"
             "print(f\"{len(runs)} runs, {int((runs['status'] != 'ok').sum())} failed; commit(s) {sorted(runs['prov.commit'].unique())}, "
             "dirty: {bool(runs['prov.dirty'].any())}\")\nsettings"),
        md("## One image, side by side\n\nScenes, 4x, image 0 (the whole 128 x 256 canvas), from the 32 x 64 source."),
        code("import io\nfrom PIL import Image as PILImage\n"
             "im = PILImage.open(R / 'grid.png').convert('RGB')\nbuf = io.BytesIO()\nim.save(buf, format='JPEG', quality=80)\n"
             "display(Image(data=buf.getvalue(), format='jpeg'))"),
        md("## Quality per method\n\nMean [95% interval] over (image, seed); `n` and the interval's method are in the table."),
        code("def table(ds, factor):\n"
             "    s = summary[(summary.dataset == ds) & (summary.factor == factor) & summary.column.str.startswith('metric.')].copy()\n"
             "    info = {m.column: m for m in U.METRICS}\n"
             "    s['cell'] = [f\"{r.mean:{info[r.column].fmt}} [{r.ci_lo:{info[r.column].fmt}}, {r.ci_hi:{info[r.column].fmt}}]\" for r in s.itertuples()]\n"
             "    t = s.pivot(index='method', columns='column', values='cell').reindex([m for m in U.METHOD_LABELS if m in set(s.method)])\n"
             "    t = t[[m.column for m in U.METRICS if m.column in t.columns]]\n"
             "    t.columns = [info[c].label for c in t.columns]\n"
             "    t.insert(0, 'n', s[s.column == 'metric.psnr'].set_index('method').n)\n"
             "    t.insert(1, 'failed', s.groupby('method').failed.max())\n"
             "    t['interval'] = s.ci_method.iloc[0]\n"
             "    return t\n\n"
             "for ds, factor in summary[['dataset', 'factor']].drop_duplicates().sort_values(['factor', 'dataset'], ascending=[False, True]).itertuples(index=False):\n"
             "    print(f'\\n{ds}, {factor}x'); display(table(ds, factor))"),
        md("## Cost\n\nMean per image on this 2-core CPU (a shared machine: `prov.load_before` is in the runs table): wall "
           "time of the whole upscale, the process's peak resident memory during it (the loaded models included), and the "
           "UNet evaluations (ControlNet evaluations ride along with them)."),
        code("c = summary[(summary.factor == 4) & summary.column.isin(U.COST_COLUMNS)]\n"
             "c.pivot_table(index='method', columns=['dataset', 'column'], values='mean').reindex([m for m in U.METHOD_LABELS if m in set(c.method)]).round(2)"),
        md("## Comparisons (paired, Holm-corrected)\n\nThe named pairs at 4x (ControlNet or not, seam fix, colour fix, noise "
           "inversion, USDU vs naive tiles, MultiDiffusion vs USDU, Mixture vs MultiDiffusion); every method against Lanczos "
           "and the 2x families are in `results/upscale/comparisons.csv`. `p_holm` is the Holm-adjusted p over the family (`family_size` comparisons); a verdict needs the 95% interval to exclude zero and p_holm < 0.05."),
        code("named = comps[(comps.kind == 'named') & (comps.factor == 4)]\n"
             "print(named[['dataset', 'column', 'b', 'a', 'estimate', 'ci_lo', 'ci_hi', 'n', 'p_holm', 'family_size', 'verdict']]"
             ".to_string(index=False, float_format=lambda v: f'{v:.3g}'))"),
        code("# findings.md (every sentence, 2x and every comparison included) is current with the tables:\n"
             "assert (R / 'findings.md').read_text() == U.render_findings(summary, comps), 'findings.md is stale: run benchmarks/upscale_truth.py'"),
        findings("08"),
    ]


NOTEBOOKS = {
    "01_quickstart": nb_quickstart,
    "02_overlap_and_kernels": nb_overlap,
    "03_aspect_ratio": nb_aspect,
    "04_cost_and_memory": nb_cost,
    "05_seed_claims": nb_claims,
    "06_methods": nb_methods,
    "07_coherence": nb_coherence,
    "08_upscale": nb_upscale,
}


def build(name: str, execute: bool) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = HERE / f"{name}.ipynb"
    if execute:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-exec", action="store_true")
    ap.add_argument("names", nargs="*", default=list(NOTEBOOKS))
    ap.add_argument("--no-readme", action="store_true", help="leave README.md's findings section as it is")
    args = ap.parse_args()
    for n in args.names:
        print(build(n, not args.no_exec))
    if not args.no_readme:
        print(write_readme())


if __name__ == "__main__":
    main()
