"""Write the notebooks from their cell sources and execute them (outputs are committed).

    python notebooks/build_notebooks.py            # write + execute all
    python notebooks/build_notebooks.py --no-exec  # write only

The notebooks stay thin: they load tables from results/ and call mdtools.analysis (plots,
tables, article_claims). Prose with measured numbers lives in FINDINGS below, written after
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
           "window x every kernel x 8 seeds, 128 x 512 px) and `experiments/frontier.yaml` (seam score per model evaluation), "
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
        md(FINDINGS.get("04", "_Findings are written after the runs._")),
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
        md(FINDINGS.get("05", "_Findings are written after the runs._")),
    ]


def nb_methods() -> list:
    return [
        md("# 06 - Methods on one engine\n\n`experiments/methods.yaml`: MultiDiffusion, Mixture of Diffusers, "
           "SyncDiffusion, SpotDiffusion, the global low-res pass and DemoFusion on the same loop (docs/methods.md), "
           "each at its default and at a cost-matched setting, on a 1:4 panorama (128 x 512 px) and a 2x2-window "
           "square (256 x 256 px), 8 seeds, the embedded toy model (128 px window) on CPU. Cost is the run's measured "
           "UNet-forward equivalents (SyncDiffusion's gradients, backward passes, decodes and loss priced with the "
           "run's own seconds per evaluation). Intervals: 95% bootstrap over seeds; comparisons are paired on seeds."),
        code(SETUP + "\nfrom mdtools.analysis.tables import methods_table, paired_vs, label_extra\n"
             "m = plots.with_method_label(plots.with_derived(load_table(R / 'methods')), label_extra(load_table(R / 'methods')))"),
        code('t = methods_table(m)\n'
             'cols = ["method.label", "plan.width", "plan.height", "n", "metric.seam_structure", "metric.seam_structure.ci", '
             '"cost.unet_equivalents", "count.model_evaluations", "time.denoise", "peak_gb.denoise", "peak_gb.sync"]\n'
             't[[c for c in cols if c in t]]'),
        code("fig = plots.methods_bars(m)"),
        code('for (h, w), sub in m[m["status"] == "ok"].groupby(["plan.height", "plan.width"]):\n'
             '    fig = plots.frontier(sub)\n    fig.axes[0].set_title(f"{w} x {h} px: seam score per measured cost")'),
        code('ref = "multidiffusion(gaussian, steps=15, overlap=64)"\n'
             'pd.set_option("display.max_colwidth", 80)\n'
             'paired_vs(m, ref, "metric.seam_structure")'),
        code('paired_vs(m, ref, "metric.intra_color")'),
        code('import io\nfrom PIL import Image as PILImage\n'
             'for name in ("method_images_512x128", "method_images_256x256"):\n'
             '    png = R / "methods" / "plots" / f"{name}.png"  # written by mdtools report (previews of seed 0)\n'
             '    if png.exists():\n        im = PILImage.open(png).convert("RGB")\n        im.thumbnail((640, 4000))\n'
             '        buf = io.BytesIO()\n        im.save(buf, format="JPEG", quality=80)\n'
             '        display(Image(data=buf.getvalue(), format="jpeg"))'),
        md(FINDINGS.get("06", "_Findings are written after the runs._")),
    ]


def nb_coherence() -> list:
    return [
        md("# 07 - Coherence with ground truth\n\n`experiments/coherence.yaml`: the embedded scenes model "
           "(`toy-scenes`; every training scene has exactly one sun or moon and one horizon, docs/scenes.md) on "
           "panoramas of 1:4 and 1:8, every method at its default (SyncDiffusion 5 sync steps, DemoFusion 2 stages), 6 seeds. `disc_count` counts suns / moons (1 is "
           "right; `one_disc` is the share of runs with exactly one), `horizon_continuity` and `sky_consistency` are 1 "
           "when the horizon and the sky are as smooth at window seams as elsewhere (higher = broken, docs/metrics.md). "
           "Intervals: 95% bootstrap over seeds (and prompts); comparisons are paired."),
        code(SETUP + "\nfrom mdtools.analysis.tables import methods_table, paired_vs, label_extra\n"
             "raw = load_table(R / 'coherence')\nc = plots.with_method_label(plots.with_derived(raw), label_extra(raw))"),
        code('import io\nfrom PIL import Image as PILImage\n'
             'for name in ("method_images_512x128", "method_images_1024x128"):\n'
             '    png = R / "coherence" / "plots" / f"{name}.png"  # written by mdtools report (previews of seed 0)\n'
             '    if png.exists():\n        im = PILImage.open(png).convert("RGB")\n        im.thumbnail((760, 4000))\n'
             '        buf = io.BytesIO()\n        im.save(buf, format="JPEG", quality=80)\n'
             '        display(Image(data=buf.getvalue(), format="jpeg"))'),
        code('t = methods_table(c)\n'
             'cols = ["method.label", "plan.width", "n", "metric.disc_count", "metric.one_disc", "metric.one_disc.ci", '
             '"metric.horizon_continuity", "metric.horizon_continuity.ci", "metric.sky_consistency", '
             '"metric.sky_consistency.ci", "metric.intra_lpips", "cost.unet_equivalents", "time.denoise"]\n'
             't[[x for x in cols if x in t]]'),
        code('fig = plots.methods_bars(c, metrics=["metric.disc_error", "metric.horizon_continuity", "metric.sky_consistency", '
             '"cost.unet_equivalents"])'),
        code('ref = next(x for x in c["method.label"].unique() if x.startswith("multidiffusion"))  # the reference: plain MultiDiffusion\n'
             'pd.set_option("display.max_colwidth", 60)\n'
             'pd.concat([paired_vs(c, ref, m).assign(metric=m) for m in '
             '["metric.disc_error", "metric.horizon_continuity", "metric.sky_consistency"]])'),
        md(FINDINGS.get("07", "_Findings are written after the runs._")),
    ]


NOTEBOOKS = {
    "01_quickstart": nb_quickstart,
    "02_overlap_and_kernels": nb_overlap,
    "03_aspect_ratio": nb_aspect,
    "04_cost_and_memory": nb_cost,
    "05_seed_claims": nb_claims,
    "06_methods": nb_methods,
    "07_coherence": nb_coherence,
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
