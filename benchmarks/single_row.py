"""The one-row results file of a benchmark: machine load before and after, written as CSV and printed."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


def load_now() -> str:
    """The 1-, 5- and 15-minute load averages, as the results files record them."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def write_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Write `row` (with `load_after` added now) as a one-row CSV at `path`, and print it."""
    row = {**row, "load_after": load_now()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    width = max(map(len, row)) + 2
    for k, v in row.items():
        print(f"{k:{width}s} {v}")
