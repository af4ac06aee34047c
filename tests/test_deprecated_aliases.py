"""The old module paths (mdtools.config, runner, executors, report, plots, claims, arch, loading, adapters, refine) warn and forward."""

from __future__ import annotations

import importlib

import pytest

ALIASES = [
    ("mdtools.config", "RunConfig", "mdtools.sweep.config"),
    ("mdtools.config", "load_experiment", "mdtools.sweep.config"),
    ("mdtools.executors", "RayExecutor", "mdtools.sweep.executors"),
    ("mdtools.executors", "make_executor", "mdtools.sweep.executors"),
    ("mdtools.runner", "execute", "mdtools.sweep.runner"),
    ("mdtools.runner", "perform_run", "mdtools.sweep.run"),
    ("mdtools.runner", "ModelCache", "mdtools.sweep.run"),
    ("mdtools.runner", "build_table", "mdtools.sweep.records"),
    ("mdtools.runner", "STATUS_OK", "mdtools.sweep.records"),
    ("mdtools.runner", "estimate_work", "mdtools.sweep.estimate"),
    ("mdtools.report", "report", "mdtools.analysis.report"),
    ("mdtools.report", "summarize", "mdtools.analysis.tables"),
    ("mdtools.report", "paired_vs", "mdtools.analysis.tables"),
    ("mdtools.plots", "frontier", "mdtools.analysis.plots"),
    ("mdtools.plots", "with_derived", "mdtools.analysis.tables"),
    ("mdtools.plots", "method_label", "mdtools.analysis.tables"),
    ("mdtools.claims", "all_verdicts", "mdtools.analysis.article_claims"),
    ("mdtools.claims", "SEAM", "mdtools.analysis.article_claims"),
    ("mdtools.arch", "preset_dir", "mdtools.models.arch"),
    ("mdtools.loading", "ModelLoadError", "mdtools.models.single_file"),
    ("mdtools.adapters", "SDAdapter", "mdtools.models.denoisers"),
]


@pytest.mark.parametrize("old, name, new", ALIASES, ids=lambda v: str(v))
def test_old_path_warns_and_forwards(old, name, new):
    mod = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"^{old} is deprecated; use {new}$"):
        value = getattr(mod, name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_of_an_old_path_warns():
    with pytest.warns(DeprecationWarning, match="mdtools.report is deprecated; use mdtools.analysis.tables"):
        from mdtools.report import load_table
    from mdtools.analysis.tables import load_table as new

    assert load_table is new


def test_unknown_names_are_attribute_errors():
    mod = importlib.import_module("mdtools.runner")
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        mod.nothing_here  # noqa: B018
    with pytest.raises(AttributeError):
        mod.estimate_evaluations  # removed: nothing called it


def test_refine_warns_and_names_the_method():
    from mdtools.refine import generate_with_global_pass

    calls = []
    with pytest.warns(DeprecationWarning, match="method='global_pass'"):
        generate_with_global_pass(lambda *a, **k: calls.append(k), "p", height=64, width=128, factor=2)
    assert calls == [{"height": 64, "width": 128, "method": "global_pass", "method_params": {"factor": 2, "strength": 0.6}}]
