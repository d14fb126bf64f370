"""The house rules that keep the package easy to live in, checked on the source.

- The import graph of ``pifs_jax`` (module-level imports, including those inside top-level
  ``if``/``try``) has no cycle.
- No module of the package, and no test or benchmark, imports or reaches into another module's
  private (``_``-prefixed) names. The private module ``pifs_jax._validation`` is the one
  exception: it exists to hold the boundary checks every module calls, by their public names.
- Function-level (lazy) imports are deliberate: each is on :data:`LAZY_IMPORTS` with its reason
  (the command line's modules as a whole, see :data:`LAZY_IMPORT_PACKAGES`), and the import graph
  with them added has no cycle either, except the ones :data:`LAZY_CYCLES` names. A lazy import
  that only hides a cycle is a cycle all the same: it makes import order matter at run time.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pifs_jax"
SHARED_PRIVATE_MODULES = {"pifs_jax._validation"}

_HEAVY = "a heavy dependency only this function needs: importing pifs_jax stays fast"
_BAR = "tqdm, only when a progress bar is shown"
_PLOTS = "matplotlib (through pifs_jax.plotting), only when a figure is drawn"
_FILES = "writes files: the model code stays importable without the output helpers"

# (importing module, imported module or top-level distribution) -> why it is imported in a function
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("pifs_jax.analysis.chain_analysis", "pifs_jax.models.common"): "importing pifs_jax must not load the networks",
    ("pifs_jax.analysis.chain_analysis", "tqdm"): _BAR,
    ("pifs_jax.data", "skimage"): _HEAVY + " (the photographs)",
    ("pifs_jax.data", "sklearn"): _HEAVY + " (the digits)",
    ("pifs_jax.heuristics", "pifs_jax.data"): "the photographs' patch spectra only: data loads scikit-image on use",
    ("pifs_jax.loop", "tqdm"): _BAR,
    (
        "pifs_jax.lyapunov",
        "pifs_jax.sharding",
    ): "sharding builds on lyapunov's chains (a module-level import is a cycle)",
    (
        "pifs_jax.models.diffusers_unet.load",
        "pifs_jax.interop",
    ): "the diffusers scheduler config, only when a folder has one",
    ("pifs_jax.models.diffusers_unet.seeded", "safetensors"): "writes the seeded weights file, only when asked",
    (
        "pifs_jax.models.diffusers_unet.weights",
        "safetensors",
    ): "reads .safetensors weights, only when a folder has them",
    (
        "pifs_jax.models.diffusers_unet.weights",
        "torch",
    ): "optional (the diffusers extra): only to read a .bin checkpoint",
    ("pifs_jax.models.quality", "PIL"): "Pillow, only when a sample grid is written as PNG",
    ("pifs_jax.models.quality", "pifs_jax.plotting"): _PLOTS,
    ("pifs_jax.models.quality", "pifs_jax.results"): _FILES,
    ("pifs_jax.models.training.config", "pifs_jax.schedules"): "the schedule names, only to validate a config",
    ("pifs_jax.models.training.evaluation", "tqdm"): _BAR,
    ("pifs_jax.models.training.evaluation", "pifs_jax.denoisers"): "the empirical baseline, only when evaluating",
    ("pifs_jax.models.training.evaluation", "pifs_jax.models"): "the model registry, which imports training",
    ("pifs_jax.models.training.evaluation", "pifs_jax.models.quality"): "the quality metrics, only when evaluating",
    ("pifs_jax.models.training.evaluation", "pifs_jax.plotting"): _PLOTS,
    ("pifs_jax.models.training.evaluation", "pifs_jax.results"): _FILES,
    ("pifs_jax.models.training.trainer", "pifs_jax.data"): "the data sets, only when a run starts",
    ("pifs_jax.models.training.trainer", "pifs_jax.plotting"): _PLOTS,
    ("pifs_jax.models.training.trainer", "pifs_jax.run_folder"): "the output-folder policy, only when a run starts",
    ("pifs_jax.reproduce", "argparse"): "only an experiment's own command line parses arguments",
    ("pifs_jax.reproduce", "tqdm"): _BAR,
    ("pifs_jax.results", "importlib"): "package versions, only when a result's metadata is written",
    ("pifs_jax.results", "jax"): "the backend and devices, only when a result's metadata is written",
    ("pifs_jax.threads", "scipy"): "loads SciPy's OpenBLAS (jaxlib's LAPACK) so that the limit reaches it",
}
# Packages whose modules may import anything lazily: the command line imports a subcommand's
# dependencies only when that subcommand runs, so `pifs-jax --help` starts without loading JAX.
LAZY_IMPORT_PACKAGES = {"pifs_jax.cli": "the command line loads a subcommand's dependencies when it runs"}
# Lazy edges that close a cycle of the import graph, allowed because the cycle is only taken at
# run time, after both modules are fully imported.
LAZY_CYCLES: dict[tuple[str, str], str] = {}


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


def _lazy_imports(path: Path, module: str, is_package: bool) -> dict[str, int]:
    """The imports a module runs inside functions (and class bodies): imported name -> line.

    A package module is named by its dotted name (``from P import sub`` names ``P.sub``); anything
    else by its top-level distribution (``skimage.data`` -> ``skimage``).
    """
    tree = ast.parse(path.read_text())
    at_import_time = {id(node) for node in _top_level(tree.body)}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in at_import_time:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _source(module, is_package, node) or ""
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for name in names:
            name = name if name in MODULES else name.split(".")[0]
            if name != module:
                found.setdefault(name, node.lineno)
    return found


def _unlisted_lazy_imports(lazy: dict[str, dict[str, int]]) -> list[str]:
    found = []
    for module, names in lazy.items():
        if any(module == p or module.startswith(p + ".") for p in LAZY_IMPORT_PACKAGES):
            continue
        for name, line in names.items():
            if (module, name) not in LAZY_IMPORTS:
                found.append(f"{MODULES[module][0].relative_to(REPO)}:{line}: import of {name} inside a function")
    return found


def _all_lazy_imports() -> dict[str, dict[str, int]]:
    return {module: _lazy_imports(path, module, is_package) for module, (path, is_package) in MODULES.items()}


def _graph_with_lazy_imports(lazy: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    graph = _import_graph()
    for module, names in lazy.items():
        graph[module] |= {name for name in names if name in MODULES and (module, name) not in LAZY_CYCLES}
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


def test_every_lazy_import_is_listed_with_its_reason():
    lazy = _all_lazy_imports()
    assert sum(len(names) for names in lazy.values()) > 20  # the walk found the function-level imports
    found = _unlisted_lazy_imports(lazy)
    assert not found, (
        "function-level imports not on LAZY_IMPORTS (tests/test_structure.py): import at module level, "
        "or add the pair with the reason it must wait:\n" + "\n".join(found)
    )


def test_the_lazy_import_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n\n\ndef f():\n    import scipy.linalg\n    from pifs_jax import data\n")
    lazy = {"pifs_jax.heuristics": _lazy_imports(probe, "pifs_jax.heuristics", False)}
    assert lazy["pifs_jax.heuristics"] == {"scipy": 5, "pifs_jax.data": 6}  # numpy: at module level
    assert _unlisted_lazy_imports(lazy) == [
        f"{MODULES['pifs_jax.heuristics'][0].relative_to(REPO)}:5: import of scipy inside a function"
    ]


def test_the_import_graph_with_lazy_imports_has_no_cycle():
    graph = _graph_with_lazy_imports(_all_lazy_imports())
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_lazy_cycle_check_can_fail():
    lazy = _all_lazy_imports()
    lazy["pifs_jax.schedules"] = {**lazy["pifs_jax.schedules"], "pifs_jax.geometry": 1}  # geometry imports schedules
    try:
        graphlib.TopologicalSorter(_graph_with_lazy_imports(lazy)).prepare()
    except graphlib.CycleError:
        return
    raise AssertionError("a cycle through a function-level import went unnoticed")


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
