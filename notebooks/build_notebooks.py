"""Write the notebooks from their cell sources and execute them (outputs are committed).

    python notebooks/build_notebooks.py            # write + execute all
    python notebooks/build_notebooks.py --no-exec  # write only

The notebooks stay thin: they load tables from results/ and call mdtools.plots /
mdtools.claims. Prose with measured numbers lives in FINDINGS below, written after
looking at the results; `tests/test_notebooks.py` executes every notebook in CI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = """\
%matplotlib inline
from pathlib import Path
import pandas as pd
from IPython.display import Image, display
from mdtools import plots
from mdtools.report import load_table, summarize

ROOT = Path.cwd() if (Path.cwd() / "results").exists() else Path.cwd().parent
R = ROOT / "results"
pd.set_option("display.precision", 3)"""


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text)


FINDINGS: dict[str, str] = {}  # filled by findings.py (prose written after the runs)
try:
    from findings import FINDINGS  # type: ignore  # noqa: F811
except ImportError:
    pass


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
        md(FINDINGS.get("01", "_Findings are written after the runs._")),
    ]


def nb_overlap() -> list:
    return [
        md("# 02 - Overlap and blend kernels\n\n`experiments/overlap_kernel.yaml` (overlap 0 to half the "
           "window x every kernel x 3 seeds) and `experiments/frontier.yaml` (seam score per model evaluation), "
           "toy model on CPU. Seam score: 1 = no seam (docs/metrics.md)."),
        code(SETUP),
        code('ok = load_table(R / "overlap_kernel")\nsummarize(ok)'),
        code("fig = plots.seam_vs_overlap(ok)"),
        code('fig = plots.seam_vs_overlap(ok, metric="metric.seam_score_lab")'),
        code("fig = plots.cost_vs_overlap(ok)"),
        code("fig = plots.disagreement_per_step(ok)"),
        code('fr = load_table(R / "frontier")\nfig = plots.frontier(fr)'),
        md(FINDINGS.get("02", "_Findings are written after the runs._")),
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
        md(FINDINGS.get("03", "_Findings are written after the runs._")),
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
        md(FINDINGS.get("04", "_Findings are written after the runs._")),
    ]


def nb_claims() -> list:
    return [
        md("# 05 - The seed article's claims, measured\n\nEach claim of `shared/seed-claims.md` gets a verdict "
           "computed by `mdtools.claims` from the experiment tables in `results/`.\n\n**Scope:** the embedded "
           "toy model (128 px window, trained on CPU, mdtools/assets/toy-sd/MODEL_CARD.md) on a 2-core CPU. "
           "Pixel sizes in the article refer to SD's 512 px window; here they are compared as fractions of "
           "the window. **To rerun on a GPU with a real checkpoint:** `mdtools run experiments/gpu/<name>_sd21.yaml` "
           "for overlap_kernel, scaling, aspect_ratio and seed_claims, then point `all_verdicts` at that results "
           "folder."),
        code(SETUP + "\nfrom mdtools.claims import all_verdicts"),
        code('v = all_verdicts(R)\npd.set_option("display.max_colwidth", None)\nv[["claim", "statement", "verdict"]]'),
        code('for _, r in v.iterrows():\n    print(f"{r.claim}: {r.verdict}\\n    evidence: {r.evidence}\\n")'),
        md(FINDINGS.get("05", "_Findings are written after the runs._")),
    ]


NOTEBOOKS = {
    "01_quickstart": nb_quickstart,
    "02_overlap_and_kernels": nb_overlap,
    "03_aspect_ratio": nb_aspect,
    "04_cost_and_memory": nb_cost,
    "05_seed_claims": nb_claims,
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
    args = ap.parse_args()
    for n in args.names:
        print(build(n, not args.no_exec))


if __name__ == "__main__":
    main()
