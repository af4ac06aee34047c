"""Set-level protocol table: KID of each (method, canvas)'s SyncDiffusion crops against the single-window reference runs.

`protocol_table(runs, image_dir)` takes a runs table (runs.parquet: one row per run, with
`preview` = the image's file name under results/<experiment>/images/), cuts the protocol's
seeded random crop from each panorama (`metrics.functional.protocol.protocol_crops`: seed
2023 once per (method, canvas) group, panoramas in run-id order, crop side = the canvas
height unless `size` is given) and scores each group against the reference set: the images
of the rows with `control == "single_window"` (one window, whole), as the paper scores
crops against 512 x 512 generations of the same model. Features come from the shipped
feature network unless another extractor is passed (values do not compare with Inception's).

Columns: `kid` is the unbiased MMD^2 between all crops of the group and all reference
images, `kid.ci_lo` / `kid.ci_hi` its expanded bootstrap interval over the group's panoramas
(the reference set held fixed; pairs of copies of one panorama are left out of the
within-set term), `n` the panoramas, `ci_method` the interval's method; `kid_cleanfid` is
clean-fid's subset estimate (`kernel_distance`, seed 0), the figure the paper's code prints.
`python -m mdtools.analysis.protocol results/<experiment>` writes results/<experiment>/protocol.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import stats
from ..errors import ConfigError, check_positive_int
from ..metrics.functional.protocol import PROTOCOL_SEED, kernel_distance, protocol_crops, protocol_features
from .coherence import setting_labels
from .tables import control_column, load_table
from .verdicts import canvas_name

#: The control whose images are the reference set (the contract of issue #24).
REFERENCE_CONTROL = "single_window"
CANVAS = ("plan.height", "plan.width")
PROTOCOL_CSV = "protocol.csv"


def _image_path(image_dir: Path, name: Any, run_id: Any) -> Path:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"run {run_id} has no preview image (column `preview` is empty); rerun it with images kept")
    p = image_dir / name
    full = p.with_name(f"{p.stem}_full{p.suffix}")  # the full-size image when the run kept one (previews may be downscaled)
    if full.exists():
        return full
    if not p.exists():
        raise ConfigError(f"image {p} of run {run_id} is missing; pass image_dir=results/<experiment>/images")
    return p


def _load(paths: list[Path]) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cubic polynomial kernel of KID / clean-fid: (a.b / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_resampled(feats: np.ndarray, ref_feats: np.ndarray) -> Callable[..., np.ndarray]:
    """stat(idx, axis=-1) for `stats.bootstrap_ci` over panorama indices: the unbiased MMD^2 of feats[idx]
    against all of ref_feats, with pairs of copies of one panorama left out of the within-set mean (a resample
    of a single panorama, probability n^(1-n), takes the sample's within-set mean)."""
    kxx = _kernel(feats, feats)
    kyy = _kernel(ref_feats, ref_feats)
    r = len(ref_feats)
    yy = (kyy.sum() - np.trace(kyy)) / (r * (r - 1))
    xy = _kernel(feats, ref_feats).mean(axis=1)
    n0 = len(feats)
    xx = (kxx.sum() - np.trace(kxx)) / (n0 * (n0 - 1))  # for a resample of copies of one panorama (no distinct pair)

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        ix = np.asarray(idx).astype(int)
        lead, n = ix.shape[:-1], ix.shape[-1]
        flat = ix.reshape(-1, n)
        out = np.empty(len(flat))
        for s in range(0, len(flat), 2048):
            b = flat[s:s + 2048]
            distinct = b[:, :, None] != b[:, None, :]
            k = kxx[b[:, :, None], b[:, None, :]]
            cnt = distinct.sum(axis=(1, 2))
            within = np.where(cnt > 0, (k * distinct).sum(axis=(1, 2)) / np.maximum(cnt, 1), xx)
            out[s:s + 2048] = within + yy - 2 * xy[b].mean(axis=1)
        return out.reshape(lead)

    return stat


def protocol_table(runs: pd.DataFrame, image_dir: str | Path, *, size: int | None = None, extractor: Any = None,
                   resize: int | tuple[int, int] | None = None, seed: int = PROTOCOL_SEED, level: float = 0.95,
                   n_boot: int = 10_000, out: str | Path | None = None) -> pd.DataFrame:
    """One row per (method label, canvas): KID of the group's protocol crops against the single-window reference.

    `runs`: a runs table with `run_id`, `status`, `preview`, `plan.height`, `plan.width` and
    `control` (missing = "" everywhere; the reference rows have "single_window"). `image_dir`:
    results/<experiment>/images. `size`: crop side (default: each canvas's height). `extractor`:
    a clean-fid style callable on (N, 3, H, W) floats in [0, 255] (default: the shipped feature
    network). `resize`: clean-fid's resize before the extractor (None: native size; clean-fid uses
    299 for Inception). A control row other than the reference keeps its control name as label.
    `out`: a CSV path to write (`write_protocol_csv` passes results/<experiment>/protocol.csv).
    """
    missing = [c for c in ("run_id", "status", "preview", *CANVAS) if c not in runs]
    if missing:
        raise ConfigError(f"runs lacks column(s) {missing}; pass a runs.parquet table (mdtools.analysis.load_table)")
    if size is not None:
        check_positive_int("size", size)
    check_positive_int("n_boot", n_boot, example=10_000)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ConfigError(f"image_dir={image_dir} is not a folder; pass results/<experiment>/images")
    df = runs[runs["status"] == "ok"].copy()
    df["control"] = control_column(df)
    ref = df[df["control"] == REFERENCE_CONTROL].sort_values("run_id")
    if len(ref) < 2:
        raise ConfigError(f"the reference set needs at least 2 ok runs with control == {REFERENCE_CONTROL!r}; got {len(ref)} "
                          "(add the single_window control to the experiment)")
    gen = df[df["control"] != REFERENCE_CONTROL]
    if gen.empty:
        raise ConfigError("runs has no ok run outside the single_window reference to score")
    # the labels of notebook 07's tables (one labelling: analysis.coherence.setting_labels, over all ok runs)
    gen = gen.assign(label=setting_labels(df).loc[gen.index])
    if extractor is None:
        from ..metrics.functional.protocol import featnet_extractor

        extractor = featnet_extractor()
    ref_imgs = _load([_image_path(image_dir, p, r) for p, r in zip(ref["preview"], ref["run_id"])])
    ref_feats = protocol_features(ref_imgs, extractor, resize=resize)
    rows = []
    for (label, h, w), grp in gen.groupby(["label", *CANVAS], sort=True):
        grp = grp.sort_values("run_id")
        imgs = _load([_image_path(image_dir, p, r) for p, r in zip(grp["preview"], grp["run_id"])])
        side = size or imgs[0].shape[0]
        row: dict[str, Any] = {"method.label": label, "canvas": canvas_name(h, w), "plan.height": h, "plan.width": w, "n": len(imgs),
                               "n_reference": len(ref_imgs), "crop": side, "seed": seed, "resize": resize,
                               "backbone": getattr(extractor, "backbone", "custom"),
                               "ci_method": f"{stats.method_label(level=level)} over panoramas, reference fixed"}
        if max(im.shape[1] for im in imgs) <= side or len(imgs) < 2:
            rows.append({**row, "kid": np.nan, "kid.ci_lo": np.nan, "kid.ci_hi": np.nan, "kid_cleanfid": np.nan,
                         "note": f"no protocol crop: needs >= 2 panoramas wider than the {side} px crop"})
            continue
        crops, _ = protocol_crops(imgs, side, seed=seed)
        feats = protocol_features(crops, extractor, resize=resize)
        iv = stats.bootstrap_ci(np.arange(len(feats)), stat=kid_resampled(feats, ref_feats), level=level, n_boot=n_boot)
        rows.append({**row, "kid": iv.estimate, "kid.ci_lo": iv.lo, "kid.ci_hi": iv.hi,
                     "kid_cleanfid": kernel_distance(feats, ref_feats, seed=0), "note": iv.note})
    table = pd.DataFrame(rows)
    if out is not None:
        table.to_csv(out, index=False)
    return table


def write_protocol_csv(out_dir: str | Path, **kwargs: Any) -> pd.DataFrame:
    """results/<experiment>/protocol.csv from the experiment's runs table and images (kwargs: `protocol_table`'s)."""
    out_dir = Path(out_dir)
    return protocol_table(load_table(out_dir), out_dir / "images", out=out_dir / PROTOCOL_CSV, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """`python -m mdtools.analysis.protocol results/<experiment>`: write and print the protocol table."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise ConfigError("usage: python -m mdtools.analysis.protocol results/<experiment>")
    table = write_protocol_csv(args[0])
    print(table.to_string(index=False))
    print(f"wrote {Path(args[0]) / PROTOCOL_CSV}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
