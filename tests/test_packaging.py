"""Packaging: what a non-editable install ships and whether it runs on its own.

The wheel must hold every package under ``pifs_jax/``, the experiment scripts (the repository's
top-level ``experiments/`` folder, installed as ``pifs_jax.experiments``), the bundled data files,
the shipped trained models (``pifs_jax/pretrained/``: weights and cards) and the ``py.typed`` marker; an installed copy, run from an unrelated folder, must find every
experiment without being told where they are.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import types
import zipfile
from pathlib import Path

import pytest

import pifs_jax

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXPERIMENT_NAMES = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_"))
DATA_FILES = sorted(p.name for p in (ROOT / "pifs_jax" / "data_files").glob("*.json"))
#: The shipped trained models (weights and cards, pifs_jax.models.pretrained).
SHIPPED_FILES = sorted(
    p.name for p in (ROOT / "pifs_jax" / "pretrained").glob("*") if p.suffix in (".safetensors", ".json")
)
#: What setuptools needs to build the wheel (pyproject's readme and license-files included).
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "pifs_jax", "experiments")


def source_packages() -> set[str]:
    """Dotted names of every folder under ``pifs_jax/`` that holds Python files."""
    folders = {p.parent for p in (ROOT / "pifs_jax").rglob("*.py") if "__pycache__" not in p.parts}
    return {".".join(folder.relative_to(ROOT).parts) for folder in folders}


# ----------------------------------------------------------------------------- configuration


def test_every_package_is_listed_and_experiments_are_mapped():
    setuptools_config = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools_config["packages"])
    expected = source_packages() | {"pifs_jax.experiments"}
    assert listed == expected, (
        f"[tool.setuptools] packages in pyproject.toml: add {sorted(expected - listed)}, "
        f"remove {sorted(listed - expected)} (every folder of Python files needs an __init__.py and an entry)"
    )
    assert setuptools_config["package-dir"] == {"pifs_jax.experiments": "experiments"}
    for package in listed - {"pifs_jax.experiments"}:
        assert (ROOT / package.replace(".", "/") / "__init__.py").is_file(), package
    assert (ROOT / "experiments" / "__init__.py").is_file()


def test_version_comes_from_the_package_metadata():
    assert pifs_jax.__version__ == importlib.metadata.version("pifs_jax")
    assert pifs_jax.__version__ == PYPROJECT["project"]["version"]


def test_all_lists_exactly_the_public_re_exports():
    public = {
        name
        for name, value in vars(pifs_jax).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert len(pifs_jax.__all__) == len(set(pifs_jax.__all__)), "duplicates in __all__"
    assert [name for name in pifs_jax.__all__ if not hasattr(pifs_jax, name)] == []
    assert set(pifs_jax.__all__) == public


def test_license_and_citation():
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a stub
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert "cff-version: 1.2.0" in citation
    assert "2603.13069" in citation and "Dooms" in citation
    assert (ROOT / "pifs_jax" / "py.typed").is_file()


# ----------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the build inputs (the clone's own build/ stays untouched)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(origin, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("pifs_jax-*.whl")
    return path


@pytest.mark.slow
def test_wheel_ships_experiments_data_and_marker(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f"pifs_jax/experiments/{name}.py" for name in EXPERIMENT_NAMES]
    missing += ["pifs_jax/experiments/__init__.py", "pifs_jax/py.typed"]
    missing += [f"pifs_jax/data_files/{name}" for name in DATA_FILES]
    missing += [f"pifs_jax/pretrained/{name}" for name in SHIPPED_FILES]
    missing += [f"{package.replace('.', '/')}/__init__.py" for package in source_packages()]
    assert [name for name in missing if name not in names] == []
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith("experiments/") for name in names), "experiments must not be a top-level package"


@pytest.mark.slow
def test_installed_copy_finds_and_runs_the_experiments_from_elsewhere(wheel, tmp_path):
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = (
        "import pifs_jax; from pifs_jax import reproduce; "
        "print(pifs_jax.__file__); print(reproduce.default_experiments_dir()); "
        "print(' '.join(reproduce.discover_experiments()))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert found.returncode == 0, found.stderr
    package_file, experiments_dir, names = found.stdout.strip().splitlines()
    assert Path(package_file).is_relative_to(site)
    assert Path(experiments_dir) == (site / "pifs_jax" / "experiments").resolve()
    assert names.split() == EXPERIMENT_NAMES

    # the main job, through the installed console script, from the unrelated folder
    report = subprocess.run(
        [
            str(site / "bin" / "pifs-jax"),
            "reproduce",
            "--only",
            "schedule_geometry",
            "--quick",
            "--no-progress",
            "--out",
            "results",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    text = (elsewhere / "results" / "REPORT.md").read_text(encoding="utf-8")
    assert "1 succeeded, 0 FAILED" in text and "`experiments/schedule_geometry.py`" in text
