"""The package's structure, read with ast: no import cycle, no upward import, no foreign underscore name, no big file.

The layers are docs/architecture.md's, top to bottom. Every import counts, also inside a
function; imports under `if TYPE_CHECKING:` are exempt. A module that no layer names fails
the test, so a new package has to be placed before it lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mdtools"
MAX_LINES = 700

#: top to bottom; a module may import its own layer's modules and any lower layer's
LAYERS: list[set[str]] = [
    {"__init__", "__main__"},
    {"cli"},
    {"demo"},
    # deprecated aliases of modules that moved into analysis/, sweep/, models/
    {"report", "plots", "claims", "runner", "executors", "config", "arch", "loading", "adapters"},
    {"analysis"},
    {"comfy", "sweep", "refine"},
    {"pipeline"},
    {"call", "upscale"},
    {"methods", "models"},
    {"sampling", "toy", "state", "preview"},
    {"fusion", "vae", "metrics", "distributed"},
    {"kernels", "plan", "schedulers"},
    {"stats", "errors", "instrument", "deprecation", "choices", "safetensors_header"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def package_of(module: str) -> str:
    """'mdtools.models.info' -> 'models'; 'mdtools' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str, path: Path, mods: dict[str, Path]):
    """(target module, imported name or None, line) for every mdtools import of `module`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            skip.update(id(x) for x in ast.walk(n))
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                full = f"{target}.{a.name}"
                yield (full, None, node.lineno) if full in mods else (target, a.name, node.lineno)
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> imported mdtools modules, findings about underscore names)."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, p in mods.items():
        for target, name, line in imports(m, p, mods):
            if not target.startswith("mdtools"):
                continue
            t = target
            while t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t not in mods or t == m:
                continue
            edges[m].add(t)
            foreign = package_of(t) != package_of(m)
            hidden = (name is not None and name.startswith("_") and not name.startswith("__")) or any(
                s.startswith("_") and not s.startswith("__") for s in t.split(".")[1:])
            if foreign and hidden and package_of(t) != "__init__":
                private.append(f"{p.relative_to(root.parent)}:{line} takes {name or t} from {t}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set[str]]) -> list[str]:
    return [f"{m} (layer {RANK[package_of(m)]}) imports {t} (layer {RANK[package_of(t)]})"
            for m, ts in sorted(edges.items()) for t in sorted(ts)
            if package_of(m) in RANK and package_of(t) in RANK and RANK[package_of(t)] < RANK[package_of(m)]]


def test_every_module_has_a_layer():
    unplaced = sorted({package_of(m) for m in modules()} - set(RANK))
    assert not unplaced, f"place these in LAYERS and docs/architecture.md: {unplaced}"


def test_no_import_cycle():
    assert cycles(graph()[0]) == []


def test_no_upward_import():
    assert upward(graph()[0]) == []


def test_no_underscore_name_from_another_package():
    assert graph()[1] == []


def test_no_file_over_700_lines():
    big = [f"{p.relative_to(ROOT.parent)}: {n}" for p in ROOT.rglob("*.py")
           if (n := p.read_text(encoding="utf-8").count("\n") + 1) > MAX_LINES]
    assert big == []


def test_every_file_says_what_it_is():
    silent = [str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("*.py")
              if ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) is None]
    assert silent == []


# ---- the checker itself catches what it is for -----------------------------------------------------

def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("src, found", [
    ("from .pipeline import MultiDiffusionPipeline", True),  # a function-level upward import still counts
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import MultiDiffusionPipeline", False),
])
def test_upward_import_is_found(tmp_path, src, found):
    pkg = tmp_path / "mdtools"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "pipeline.py").write_text('"""x"""\n')
    (pkg / "plan.py").write_text('"""x"""\n\ndef f():\n    ' + src.replace("\n", "\n    ") + "\n")
    assert bool(upward(graph(pkg)[0])) is found


def test_foreign_underscore_name_is_found(tmp_path):
    pkg = tmp_path / "mdtools"
    (pkg / "toy").mkdir(parents=True)
    (pkg / "metrics").mkdir()
    for f in ("__init__.py", "toy/__init__.py", "metrics/__init__.py", "metrics/common.py"):
        (pkg / f).write_text('"""x"""\n')
    (pkg / "toy" / "scenes.py").write_text('"""x"""\nfrom ..metrics.common import _helper\n')
    assert graph(pkg)[1] == ["mdtools/toy/scenes.py:2 takes _helper from mdtools.metrics.common"]
