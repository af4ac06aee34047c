"""Analysis of sweep results: tables with intervals, plots, the report (analysis.report.report) and the seed article's claims."""

from .article_claims import Verdict, all_verdicts
from .tables import (
    COST,
    EVALS,
    SEAM,
    cost_column,
    label_extra,
    load_table,
    method_label,
    methods_table,
    ok_runs,
    paired_vs,
    summarize,
    swept_keys,
    with_derived,
    with_method_label,
)

__all__ = [
    "COST", "EVALS", "SEAM", "Verdict", "all_verdicts", "cost_column", "label_extra", "load_table", "method_label",
    "methods_table", "ok_runs", "paired_vs", "summarize", "swept_keys", "with_derived", "with_method_label",
]
