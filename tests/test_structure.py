"""The house rules that keep the package easy to live in, checked on the source.

- The import graph of ``pifs_jax`` (module-level imports, including those inside top-level
  ``if``/``try``) has no cycle.
- No module of the package, and no test or benchmark, imports or reaches into another module's
  private (``_``-prefixed) names. The private module ``pifs_jax._validation`` is the one
  exception: it exists to hold the boundary checks every module calls, by their public names.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pifs_jax"
SHARED_PRIVATE_MODULES = {"pifs_jax._validation"}


def _package_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = _package_modules()


def _source(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level(body):
    """Statements executed at import time (skips function and class bodies, TYPE_CHECKING blocks)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                yield from _top_level(block)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it needs at import time."""
    graph = {}
    for module, (path, is_package) in MODULES.items():
        needs = set()
        for node in _top_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                needs |= {a.name for a in node.names if a.name in MODULES}
            elif isinstance(node, ast.ImportFrom):
                source = _source(module, is_package, node)
                for alias in node.names:
                    # `from P import sub` needs the submodule; `from P import name` needs P itself
                    needs.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
        graph[module] = {m for m in needs if m in MODULES and m != module}
    return graph


def test_the_package_import_graph_has_no_cycle():
    graph = _import_graph()
    assert len(graph) > 30  # the walk found the package
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_cycle_check_can_fail():
    graph = _import_graph()
    graph["pifs_jax.schedules"] = graph["pifs_jax.schedules"] | {"pifs_jax.geometry"}  # geometry imports schedules
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        return
    raise AssertionError("an injected cycle went unnoticed")


def _private_uses(path: Path, module: str | None = None, is_package: bool = False) -> list[str]:
    """``from pifs_jax.x import _name``, ``import pifs_jax._x`` and ``pifs_module._name`` in one file."""
    tree = ast.parse(path.read_text())
    found, module_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _source(module or "", is_package, node) if node.level else node.module
            if not source or not source.startswith("pifs_jax"):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in MODULES:
                    module_names.add(alias.asname or alias.name)
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and target not in SHARED_PRIVATE_MODULES:
                    found.append(f"{path.name}:{node.lineno}: from {source} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("pifs_jax"):
                    continue
                module_names.add(alias.asname or alias.name.split(".")[0])
                hidden = [p for p in alias.name.split(".")[1:] if p.startswith("_") and p != "__main__"]
                if hidden and alias.name not in SHARED_PRIVATE_MODULES:
                    found.append(f"{path.name}:{node.lineno}: import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if ast.unparse(node.value).split(".")[0] in module_names and node.attr != "_validation":
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_names_cross_module_boundaries():
    found = []
    for module, (path, is_package) in MODULES.items():
        found += _private_uses(path, module, is_package)
    for folder in ("tests", "benchmarks", "experiments"):
        for path in (REPO / folder).glob("*.py"):
            found += _private_uses(path)
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_name_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from pifs_jax.denoisers import _check_sample\nimport pifs_jax.data as d\nd._check_split('x')\n")
    assert len(_private_uses(probe)) == 2
