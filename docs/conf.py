"""Sphinx configuration of the API reference and the documentation site.

Build (from the repository root, with the ``docs`` extra installed)::

    sphinx-build -W --keep-going -b html docs build/docs

Sources: the Markdown pages of docs/ (MyST), the notebooks of notebooks/ (through the
``docs/notebooks`` link, shown with their committed outputs: nothing is executed) and the
docstrings of the package (autodoc, Google style through napoleon). Warnings are errors and every
Python cross-reference must resolve (``nitpicky``), so a broken role fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[1]
# the package is imported from this checkout even where it is not installed
sys.path.insert(0, str(ROOT))
# autodoc imports the package: CPU only, no accelerator probing
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "pifs_jax"
author = "The pifs_jax authors"
copyright = "The pifs_jax authors"
try:
    from importlib.metadata import version as _version

    release = _version("pifs_jax")
except Exception:  # a checkout that was never installed
    release = "0+unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MyST Markdown (myst_nb loads myst_parser) and the notebooks with their committed outputs
    "myst_nb",
]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "notebooks/.ipynb_checkpoints", "**/__pycache__"]
templates_path: list[str] = []

# --- Markdown and notebooks ---------------------------------------------------------------------
# $...$ and $$...$$ are the notebooks' math; the Markdown pages write formulas as code.
myst_enable_extensions = ["dollarmath", "amsmath"]
# Links to section anchors (theory.md#12-sampling-grids-...) use GitHub's slugs
myst_heading_anchors = 3
# The notebooks are shown as committed (`python notebooks/execute.py` refreshes their outputs)
nb_execution_mode = "off"

# --- API reference ------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

# Every Python cross-reference must resolve. What is not part of this site is listed here with the
# reason; references to the package's own objects resolve through their documented module (see
# `_resolve_alias` below).
nitpicky = True
nitpick_ignore_regex = [
    # third-party objects: the build is offline (no intersphinx), their documentation is elsewhere
    (
        r"py:.*",
        r"(jax|jaxlib|jnp|np|numpy|optax|flax|nn|optimistix|equinox|matplotlib|plt|torch|diffusers|safetensors"
        r"|sklearn|skimage|tqdm|threadpoolctl|PIL|argparse|collections|typing|typing_extensions|pathlib|os|json|dataclasses|enum|abc"
        r"|io|types|concurrent|threading|functools)(\..*)?",
    ),
    # ... and standard-library names that annotations spell unqualified
    (r"py:class", r"Path|Callable|Sequence|Mapping|Iterator|Iterable|Any|TypeAlias"),
    # private helpers and base classes (a leading underscore) are named for maintainers, not documented
    (r"py:.*", r"(.*\.)?_[A-Za-z].*"),
]

# --- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pifs_jax {release}"
html_static_path: list[str] = []


# --- Cross-references to re-exported names --------------------------------------------------------
# The package re-exports its public names flat (`pifs_jax.cosine`) and subpackages re-export their
# modules' names (`pifs_jax.samplers.sample_chain`); autodoc documents each object once, under the
# module that defines it. A reference by any other importable name resolves to that entry.

_MISSING = object()


def _import_target(target: str) -> tuple[Any, str] | None:
    """The object that the dotted name ``target`` imports to, and its documented name."""
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except Exception:
            continue
        name = obj.__name__
        for attribute in parts[split:]:
            child = inspect.getattr_static(obj, attribute, _MISSING) if inspect.isclass(obj) else _MISSING
            if child is _MISSING:
                child = getattr(obj, attribute, _MISSING)
            if child is _MISSING:
                # a dataclass field without a default is an annotation only
                if inspect.isclass(obj) and attribute in getattr(obj, "__annotations__", {}):
                    return None, f"{name}.{attribute}"
                return None
            if isinstance(child, (staticmethod, classmethod)):
                child = child.__func__
            if isinstance(child, property) and child.fget is not None:
                name = f"{name}.{attribute}"
            elif (inspect.isclass(child) or inspect.isfunction(child)) and "<locals>" not in child.__qualname__:
                name = f"{child.__module__}.{child.__qualname__}"
            elif inspect.ismodule(child):
                name = child.__name__
            else:
                name = f"{name}.{attribute}"
            obj = child
        return obj, name
    return None


def _resolve_alias(app, env, node, contnode):
    """``missing-reference`` handler: resolve a package name through the object it imports to."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if not target.startswith("pifs_jax") and "." in target and not node.get("py:module"):
        return None
    domain = env.get_domain("py")
    documented = domain.objects
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        if cls:
            candidates.insert(0, f"{module}.{cls}.{target}")
        candidates.insert(len(candidates) - 1, f"{module}.{target}")
    for candidate in candidates:
        if not candidate.startswith("pifs_jax"):
            continue
        found = _import_target(candidate)
        if found is None:
            continue
        obj, name = found
        if name not in documented and obj is not None:
            # module-level data carries no defining module: find the documented entry that is it
            last = name.rsplit(".", 1)[-1]
            for other in documented:
                if other.rsplit(".", 1)[-1] == last:
                    same = _import_target(other)
                    if same is not None and same[0] is obj:
                        name = other
                        break
        if name in documented:
            new = node.deepcopy()
            new["reftarget"] = name
            return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", name, new, contnode)
    # a short name used outside its module (`optimize_schedule` in the grid optimiser's docstring):
    # the one documented object of that name, if there is exactly one
    if target.startswith("pifs_jax.") or not target.replace(".", "").replace("_", "").isalnum():
        return None
    matches = [name for name in documented if name.endswith(f".{target}") and name.startswith("pifs_jax.")]
    if len(matches) == 1:
        new = node.deepcopy()
        new["reftarget"] = matches[0]
        return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", matches[0], new, contnode)
    return None


def _defining_module(name: str, obj: Any) -> str:
    """The module that defines the package-level name ``name`` (bound to ``obj``)."""
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and "<locals>" not in obj.__qualname__:
        return obj.__module__
    assignment = re.compile(rf"^{re.escape(name)}\s*(:[^=\n]*)?=", re.MULTILINE)
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("pifs_jax.") and getattr(module, name, _MISSING) is obj:
            try:
                if assignment.search(inspect.getsource(module)):
                    return module_name
            except (OSError, TypeError):
                continue
    return "pifs_jax"


class PublicNames(SphinxDirective):
    """``.. pifs-public-names::``: the names of ``pifs_jax.__all__``, grouped by defining module."""

    def run(self):
        import pifs_jax

        groups: dict[str, list[str]] = {}
        for name in sorted(pifs_jax.__all__, key=str.lower):
            module = _defining_module(name, getattr(pifs_jax, name))
            groups.setdefault(module, []).append(f":py:obj:`~pifs_jax.{name}`")
        lines = []
        for module in sorted(groups):
            lines += [f"- :py:mod:`{module}`: " + ", ".join(groups[module])]
        return self.parse_text_to_nodes("\n".join(lines))


def setup(app):
    app.add_directive("pifs-public-names", PublicNames)
    app.connect("missing-reference", _resolve_alias)
    return {"parallel_read_safe": True}
