"""The reproduction report: run every experiment script and collect the results in REPORT.md.

An *experiment* is a Python module in the repository's top-level ``experiments/`` folder, which
is installed as the package ``pifs_jax.experiments`` (see :func:`default_experiments_dir`; pass
``experiments_dir`` to use a folder of your own), whose file name does not start with ``_``
(``__init__.py``, ``_common.py`` and friends are not experiments). It defines

- ``NAME``: a short identifier, equal to the file stem (``schedule_geometry``);
- ``TITLE``: a one-line heading for the report;
- ``run(out_dir: Path, *, quick: bool) -> dict``: computes, writes its JSON (through
  :func:`pifs_jax.results.write_result_json`) and figures under ``out_dir / NAME``, and returns a
  dict with

  - ``"markdown"`` (required): the report section body, typically tables with the paper's value
    beside ours (:func:`markdown_table` helps);
  - ``"figures"`` (optional): image paths relative to ``out_dir`` (``"schedule_geometry/lstar.png"``),
    embedded by the runner below the section;
  - ``"summary"`` (optional): one line for the report's overview table;
  - ``"weights"`` (optional): the shipped trained models the experiment analysed, a list of
    ``{"name", "sha256"}`` (:mod:`pifs_jax.models.pretrained`), listed in the report's header.

  ``quick=True`` asks for a reduced run (smaller grids, fewer seeds) that still exercises every
  code path; it is what the test suite uses. An experiment with a long form (longer training,
  more trajectories) also takes ``full=False``; ``pifs-jax reproduce --full`` passes ``full=True``.
  An experiment that analyses the shipped trained models when they exist also takes
  ``retrain=False``; ``pifs-jax reproduce --retrain`` passes ``retrain=True`` (train from scratch).

:func:`run_reproduction` imports and runs each experiment in turn (sorted by file name; an
experiment that raises, or fails to import, is recorded as FAILED with its traceback and the
others still run), then writes ``out_dir/reproduction.json`` and, last, ``out_dir/REPORT.md``,
each atomically. The report holds the title, date, environment and package versions, one section
per experiment, and the timing.

The folder is never left with a report that disagrees with its data. Before the first experiment
writes anything, a previous ``REPORT.md`` (and ``reproduction.json``) is renamed to
``REPORT.stale.md`` (``reproduction.stale.json``) and the marker :data:`INCOMPLETE_MARKER`
(``INCOMPLETE.md``) is written, naming the experiments finished so far and the one running; it is
rewritten before each experiment. Only after ``REPORT.md`` is written are the marker, then the
stale files removed. So ``REPORT.md`` without ``INCOMPLETE.md`` means a finished run; an interrupted
or killed run leaves ``INCOMPLETE.md`` (and the old report as ``REPORT.stale.md``), never a
``REPORT.md`` beside data it does not describe. The folder is held with
:class:`pifs_jax.run_folder.RunFolder` (policy ``"overwrite"``) for the whole run: a second
reproduction into the same folder is refused at once.

Example:
  >>> from pifs_jax.reproduce import run_reproduction
  >>> report = run_reproduction("results", only=["schedule_geometry"], quick=True)
  >>> report.ok, report.report_path
  (True, PosixPath('results/REPORT.md'))
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import inspect
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from pifs_jax.errors import ArgumentError
from pifs_jax.results import atomic_write_text, environment_metadata, write_result_json
from pifs_jax.run_folder import RunFolder

__all__ = [
    "EXPERIMENTS_PACKAGE",
    "INCOMPLETE_MARKER",
    "PAPER_REFERENCE",
    "REPORT_NAME",
    "STALE_REPORT_NAME",
    "ExperimentOutcome",
    "ReproductionReport",
    "default_experiments_dir",
    "discover_experiments",
    "experiment_main",
    "format_value",
    "load_experiment",
    "markdown_table",
    "run_experiment",
    "run_reproduction",
]

#: The paper the report compares with.
PAPER_REFERENCE = (
    "Dooms, *Fractals made Practical: Denoising Diffusion as Partitioned Iterated Function "
    "Systems*, arXiv 2603.13069 (2026)"
)


#: The package the repository's ``experiments/`` folder is installed as (``pyproject.toml`` maps it).
EXPERIMENTS_PACKAGE = "pifs_jax.experiments"

#: The report, written last. Present without :data:`INCOMPLETE_MARKER`, it means a finished run.
REPORT_NAME = "REPORT.md"

#: Present while a run rewrites the folder, and left behind by a run that was interrupted.
INCOMPLETE_MARKER = "INCOMPLETE.md"

#: What a previous report is renamed to before a new run touches the experiment folders.
STALE_REPORT_NAME = "REPORT.stale.md"

_JSON_NAME = "reproduction.json"
_STALE_JSON_NAME = "reproduction.stale.json"  # what a previous run's reproduction.json is renamed to


def default_experiments_dir() -> Path:
    """The bundled experiment scripts: the folder of the package :data:`EXPERIMENTS_PACKAGE`.

    ``pyproject.toml`` maps ``pifs_jax.experiments`` onto the repository's top-level
    ``experiments/`` folder, so a wheel ships the scripts inside the package and an editable
    install points at the clone's folder. A source tree on ``PYTHONPATH`` without being installed
    has no such package; then the ``experiments/`` folder next to the package source is used.

    Returns:
      The absolute path of the folder (it is not checked to exist).
    """
    try:
        spec = importlib.util.find_spec(EXPERIMENTS_PACKAGE)
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(__file__).resolve().parents[1] / "experiments"  # this module is pifs_jax/reproduce.py


# ----------------------------------------------------------------------------- markdown helpers


def format_value(value: Any, *, digits: int = 5) -> str:
    """Render a number for a markdown table: ``digits`` significant digits, integers as is.

    Strings pass through; ``None`` becomes an em dash; non-finite floats print as ``inf``/``nan``.

    Args:
      value: a number (Python, NumPy or an array), a string, a boolean or ``None``.
      digits: significant digits for floats (default 5).

    Returns:
      the text: booleans as ``yes``/``no``, a 0-d array as its element, a larger array as its
      entries (flattened) joined by ``", "``.
    """
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return format_value(arr.item(), digits=digits)
        return ", ".join(format_value(v, digits=digits) for v in arr.ravel())
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, digits: int = 5) -> str:
    """A GitHub-flavoured markdown table; numbers are formatted with :func:`format_value`.

    Args:
      headers: column titles.
      rows: one sequence per row, each as long as ``headers``.
      digits: significant digits for floats.

    Returns:
      The table as a string (no trailing newline).
    """
    headers = [str(h) for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"rows: row {i} has {len(row)} cells, expected {len(headers)} (one per header)")
        cells = [format_value(v, digits=digits).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- discovery


def discover_experiments(experiments_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Experiment scripts by name (file stem), sorted; files starting with ``_`` are skipped.

    Args:
      experiments_dir: folder to search (default :func:`default_experiments_dir`).

    Returns:
      ``{name: path}`` in sorted order.

    Raises:
      ArgumentError: (``"experiments_dir"``) the folder does not exist or is not a folder.
    """
    folder = Path(experiments_dir) if experiments_dir is not None else default_experiments_dir()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise ArgumentError("experiments_dir", f"{what}: {str(folder)!r}")
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


@contextlib.contextmanager
def _on_sys_path(folder: Path):
    """Let experiments import their ``_helpers`` siblings while they load and run."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def load_experiment(path: str | os.PathLike) -> ModuleType:
    """Import an experiment script as module ``pifs_jax_experiments.<stem>`` and check its interface.

    The module is registered in ``sys.modules`` under that name (and removed again if its import
    raises); the script's folder is on ``sys.path`` while it loads.

    Args:
      path: the experiment script.

    Returns:
      the imported module.

    Raises:
      ValueError: if the file cannot be imported as a Python module, if ``NAME``, ``TITLE`` or a
        callable ``run`` is missing, or ``NAME`` is not the file stem. An exception the script
        raises while it is imported passes through.
    """
    path = Path(path)
    module_name = f"pifs_jax_experiments.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"path: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        with _on_sys_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    missing = [attr for attr in ("NAME", "TITLE", "run") if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"path: experiment {str(path)!r} does not define {', '.join(missing)}")
    if not callable(module.run):
        raise ValueError(f"path: experiment {str(path)!r}: run must be a function run(out_dir, *, quick)")
    if module.NAME != path.stem:
        raise ValueError(
            f"path: experiment {str(path)!r} has NAME = {module.NAME!r}; it must equal the file stem {path.stem!r}"
        )
    return module


# ----------------------------------------------------------------------------- running


class ExperimentOutcome(NamedTuple):
    """What one experiment produced."""

    name: str
    title: str
    ok: bool
    seconds: float
    markdown: str
    figures: tuple[str, ...]
    summary: str
    error: str | None
    """The formatted traceback when the experiment failed."""
    weights: tuple[dict[str, str], ...] = ()
    """The shipped models it analysed (``{"name", "sha256"}``), from its ``"weights"``."""


class ReproductionReport(NamedTuple):
    """The result of :func:`run_reproduction`."""

    report_path: Path
    json_path: Path
    outcomes: tuple[ExperimentOutcome, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every experiment succeeded."""
        return all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the experiments that failed."""
        return tuple(o.name for o in self.outcomes if not o.ok)


def run_experiment(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    full: bool = False,
    retrain: bool = False,
) -> ExperimentOutcome:
    """Import and run one experiment; never raises for an experiment's own failure.

    Args:
      path: the experiment script.
      out_dir: the report folder; the experiment writes under ``out_dir / NAME``.
      quick: reduced run.
      full: the long run, passed as ``run(out_dir, quick=..., full=True)`` to the experiments whose
        ``run`` takes a ``full`` argument (those with a longer form, e.g. training); the others run
        as usual.
      retrain: passed as ``retrain=True`` to the experiments whose ``run`` takes it (those that
        analyse the shipped trained models by default): train from scratch instead.

    Returns:
      :class:`ExperimentOutcome` (``ok=False`` and the traceback in ``error`` if it raised).
    """
    path = Path(path)
    out_dir = Path(out_dir)
    name, title = path.stem, path.stem
    start = time.perf_counter()
    try:
        module = load_experiment(path)
        title = str(module.TITLE)
        with _on_sys_path(path.parent):
            options = {"full": full, "retrain": retrain}
            extra = {name: True for name, on in options.items() if on and accepts_option(module.run, name)}
            result = module.run(out_dir, quick=quick, **extra)
        if not isinstance(result, dict) or not isinstance(result.get("markdown"), str):
            raise TypeError(
                f"run() of {name!r} must return a dict with a 'markdown' string, got {type(result).__name__}"
                + (f" with keys {sorted(result)}" if isinstance(result, dict) else "")
            )
        figures = tuple(str(f) for f in result.get("figures", ()))
        weights = tuple({"name": str(w["name"]), "sha256": str(w["sha256"])} for w in result.get("weights", ()))
        return ExperimentOutcome(
            name,
            title,
            True,
            time.perf_counter() - start,
            result["markdown"],
            figures,
            str(result.get("summary", "")),
            None,
            weights,
        )
    except Exception:
        return ExperimentOutcome(name, title, False, time.perf_counter() - start, "", (), "", traceback.format_exc())


def accepts_full(run: Callable[..., Any]) -> bool:
    """Whether an experiment's ``run`` has a long form (a ``full`` keyword argument)."""
    return accepts_option(run, "full")


def accepts_option(run: Callable[..., Any], name: str) -> bool:
    """Whether an experiment's ``run`` takes the keyword argument ``name`` (``"full"``, ``"retrain"``)."""
    return name in inspect.signature(run).parameters


def experiment_main(name: str, doc: str | None, run: Any, *, quick_help: str, argv: list[str] | None = None) -> int:
    """Command line of one experiment script: ``python experiments/<name>.py [--out DIR] [--quick] [--full] [--retrain]``.

    Parses ``argv``, calls ``run(Path(out), quick=quick)`` (with ``full=True`` for ``--full``,
    ``retrain=True`` for ``--retrain``, ``tables=True`` for ``--tables`` (the configuration of the
    experiment's guide tables), ``models=[...]`` for ``--models NAME ...`` and ``methods=[...]`` for
    ``--methods NAME ...`` and ``evaluate=K`` for ``--evaluate K``, each offered when
    ``run`` takes it: ``accepts_option``) while holding ``OUT/<name>`` as a
    :class:`~pifs_jax.run_folder.RunFolder` (its lock and in-progress marker; a second run on the same
    folder is refused by name), and prints the section's markdown.
    Every experiment's ``main`` is this call, so the scripts share one interface with
    ``pifs-jax reproduce --only <name>``.

    Args:
      name: the experiment's ``NAME`` (its folder under ``OUT`` and its script's stem).
      doc: the description shown by ``--help`` (typically the script's docstring), or ``None``.
      run: the experiment's ``run(out_dir, *, quick, ...)``; it returns a dict with ``"markdown"``.
      quick_help: the help text of ``--quick``.
      argv: the arguments to parse; ``None`` = ``sys.argv[1:]``.

    Returns:
      0 (the exit status).

    Raises:
      SystemExit: from ``argparse`` for ``--help`` or invalid arguments (two of ``--quick``, ``--full``,
        ``--tables``).
      ArgumentError: naming ``out`` when ``OUT/<name>`` is a file or is in use by another process.
    """
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results", help=f"report folder; files go to OUT/{name} (default: results)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if accepts_full(run):
        parser.add_argument("--full", action="store_true", help="the long run (longer training, more trajectories)")
    if accepts_option(run, "retrain"):
        parser.add_argument(
            "--retrain", action="store_true", help="train the models from scratch instead of using the shipped ones"
        )
    if accepts_option(run, "tables"):
        parser.add_argument("--tables", action="store_true", help="the configuration of the tables in the guide")
    if accepts_option(run, "models"):
        parser.add_argument("--models", nargs="+", metavar="NAME", help="these models instead of the mode's")
    if accepts_option(run, "methods"):
        parser.add_argument("--methods", nargs="+", metavar="NAME", help="only these methods (and what they need)")
    if accepts_option(run, "evaluate"):
        parser.add_argument("--evaluate", type=int, metavar="K", help="K evaluation seeds instead of the mode's")
    args = parser.parse_args(argv)
    modes = [flag for flag in ("quick", "full", "tables") if getattr(args, flag, False)]
    if len(modes) > 1:
        parser.error(" and ".join(f"--{flag}" for flag in modes) + " exclude each other")
    extra: dict[str, Any] = {flag: True for flag in ("full", "retrain", "tables") if getattr(args, flag, False)}
    for option in ("models", "methods"):
        if getattr(args, option, None):
            extra[option] = list(getattr(args, option))
    if getattr(args, "evaluate", None) is not None:
        extra["evaluate"] = args.evaluate
    # the experiment's folder is held as reproduce holds the report's: a second run on it is refused
    with RunFolder(
        Path(args.out) / name,
        "overwrite",
        command=" ".join(["python", f"experiments/{name}.py", *(argv or sys.argv[1:])]),
    ):
        section = run(Path(args.out), quick=args.quick, **extra)
    print(section["markdown"])
    print(f"\nwrote {Path(args.out) / name}")
    return 0


def _escape(text: str) -> str:
    """Escape markdown emphasis characters in plain text (titles such as ``lambda**``)."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")


def _environment_markdown(env: dict[str, Any]) -> str:
    versions = markdown_table(
        ["package", "version"], [(k, v if v is not None else "not installed") for k, v in env["versions"].items()]
    )
    facts = markdown_table(
        ["item", "value"],
        [
            ("Python", env["python"]),
            ("platform", env["platform"]),
            ("JAX backend", env["jax_backend"]),
            ("devices", ", ".join(env["devices"])),
            ("jax_enable_x64 (global)", env["x64"]),
        ],
    )
    return facts + "\n\n" + versions


def _render_report(
    outcomes: Sequence[ExperimentOutcome],
    *,
    env: dict[str, Any],
    started: _dt.datetime,
    seconds: float,
    quick: bool,
    full: bool = False,
    retrain: bool = False,
    only: Sequence[str] | None,
    command: str | None,
) -> str:
    failed = [o for o in outcomes if not o.ok]
    weights = {w["name"]: w["sha256"] for o in outcomes for w in o.weights}
    lines = [
        "# pifs_jax reproduction report",
        "",
        f"Reproducing {PAPER_REFERENCE}.",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M:%S')} UTC",
        f"- Mode: {'quick (reduced grids, for testing)' if quick else ('full (long runs)' if full else 'default')}",
        f"- Experiments: {len(outcomes)} run"
        + (f" (selected with --only: {', '.join(only)})" if only else "")
        + f", {len(outcomes) - len(failed)} succeeded, {len(failed)} FAILED",
    ]
    lines.append(
        "- Trained models: "
        + (
            "shipped weights " + ", ".join(f"`{name}` (sha256 `{digest}`)" for name, digest in weights.items())
            if weights
            else ("trained from scratch (--retrain)" if retrain else "no shipped weights used")
        )
    )
    if command:
        lines.append(f"- Command: `{command}`")
    lines += ["", "## Environment", "", _environment_markdown(env), ""]
    lines += [
        "## Overview",
        "",
        markdown_table(
            ["#", "experiment", "status", "time (s)", "summary"],
            [
                (i, f"[{_escape(o.title)}](#{o.name})", "ok" if o.ok else "**FAILED**", f"{o.seconds:.1f}", o.summary)
                for i, o in enumerate(outcomes, 1)
            ],
        ),
        "",
    ]
    for i, o in enumerate(outcomes, 1):
        status = f"ok, {o.seconds:.1f} s" if o.ok else f"**FAILED** after {o.seconds:.1f} s"
        lines += [
            f'<a id="{o.name}"></a>',
            "",
            f"## {i}. {_escape(o.title)}",
            "",
            f"`experiments/{o.name}.py` — {status}",
            "",
        ]
        if o.ok:
            lines += [o.markdown.strip(), ""]
            for fig in o.figures:
                lines += [f"![{Path(fig).stem}]({Path(fig).as_posix()})", ""]
        else:
            lines += ["The experiment raised an exception:", "", "```text", (o.error or "").rstrip(), "```", ""]
    lines += [
        "## Timing",
        "",
        markdown_table(
            ["experiment", "status", "time (s)"],
            [(o.name, "ok" if o.ok else "FAILED", f"{o.seconds:.2f}") for o in outcomes]
            + [("**total**", "ok" if not failed else f"{len(failed)} FAILED", f"{seconds:.2f}")],
        ),
        "",
    ]
    return "\n".join(lines)


def _incomplete_marker_text(
    started: _dt.datetime, command: str | None, finished: Sequence[str], running: str | None, pending: Sequence[str]
) -> str:
    """The body of :data:`INCOMPLETE_MARKER`: which experiments this run finished, runs, has left."""
    lines = [
        "# INCOMPLETE: a reproduction run is rewriting this folder, or was interrupted",
        "",
        f"Started {started.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        + (f" by `{command}`" if command else "")
        + f". `{REPORT_NAME}` is written only after every selected experiment has run, and this file is "
        "removed right after it. If no run is in progress, this one was interrupted or killed: the folder of "
        "the experiment that was running may mix old and new files. The previous report, if there was one, is "
        f"now `{STALE_REPORT_NAME}`; it no longer matches the data. Run `pifs-jax reproduce` again.",
        "",
        f"- finished: {', '.join(finished) or '(none)'}",
        f"- running (its folder may be partly rewritten): {running or '(none)'}",
        f"- not started: {', '.join(pending) or '(none)'}",
        "",
    ]
    return "\n".join(lines)


def _retire_previous_report(out_dir: Path) -> None:
    """Rename a previous ``REPORT.md`` / ``reproduction.json`` to their ``.stale`` names (atomic renames)."""
    for current, stale in ((REPORT_NAME, STALE_REPORT_NAME), (_JSON_NAME, _STALE_JSON_NAME)):
        if (out_dir / current).is_file():
            os.replace(out_dir / current, out_dir / stale)


def _remove_run_markers(out_dir: Path) -> None:
    """After ``REPORT.md`` is written: drop the marker at once, then the stale files."""
    for name in (INCOMPLETE_MARKER, STALE_REPORT_NAME, _STALE_JSON_NAME):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


def run_reproduction(
    out_dir: str | os.PathLike = "results",
    only: Sequence[str] | None = None,
    quick: bool = False,
    *,
    full: bool = False,
    retrain: bool = False,
    experiments_dir: str | os.PathLike | None = None,
    progress: bool = True,
    command: str | None = None,
) -> ReproductionReport:
    """Run the experiments and write ``out_dir/REPORT.md`` (and ``out_dir/reproduction.json``).

    Args:
      out_dir: the report folder; experiment ``NAME`` writes under ``out_dir/NAME``.
      only: names (file stems) of the experiments to run; ``None`` runs all.
      quick: reduced runs (what the tests use).
      full: the long runs of the experiments that have one (:func:`run_experiment`); not with
        ``quick``.
      retrain: train from scratch in the experiments that analyse the shipped trained models by
        default (:func:`run_experiment`); the report names the shipped weights used otherwise.
      experiments_dir: where the experiment scripts live (default: :func:`default_experiments_dir`,
        the bundled ``pifs_jax.experiments``, i.e. the repository's ``experiments/``).
      progress: show a tqdm progress bar on stderr.
      command: the command line, recorded in the report.

    Returns:
      :class:`ReproductionReport`; ``report.ok`` is False if any experiment failed (the others
      still ran and the report was still written).

    Raises:
      ValueError: ``only`` names an experiment that does not exist, or ``experiments_dir`` is not
        a folder (:class:`~pifs_jax.errors.ArgumentError` naming ``only`` / ``experiments_dir``).
      KeyboardInterrupt: passed on; the folder then holds :data:`INCOMPLETE_MARKER` (naming the
        experiment that was running) and no ``REPORT.md`` (a previous one is ``REPORT.stale.md``).
    """
    from tqdm import tqdm  # text bar: works in terminals and notebooks without ipywidgets

    if quick and full:
        raise ArgumentError("full", "cannot be combined with quick (reduced runs)")
    available = discover_experiments(experiments_dir)
    if only:
        unknown = [n for n in only if n not in available]
        if unknown:
            raise ArgumentError(
                "only",
                f"unknown experiment(s) {', '.join(map(repr, unknown))}; available: {', '.join(available) or '(none)'}",
            )
        selected = {n: available[n] for n in available if n in set(only)}
    else:
        selected = available
    out_dir = Path(out_dir)
    # the lock and in-progress marker of every output folder; the report's own protocol below
    with RunFolder(out_dir, "overwrite", results=(_JSON_NAME, REPORT_NAME), command=command):
        started = _dt.datetime.now(_dt.UTC)
        start = time.perf_counter()
        names = list(selected)
        marker = out_dir / INCOMPLETE_MARKER
        # the marker first, then the old report out of the way: at no instant does a REPORT.md sit
        # beside experiment folders it does not describe
        atomic_write_text(marker, _incomplete_marker_text(started, command, [], None, names))
        _retire_previous_report(out_dir)
        outcomes = []
        bar = tqdm(selected.items(), total=len(selected), desc="experiments", unit="exp", disable=not progress)
        try:
            for i, (name, path) in enumerate(bar):
                bar.set_postfix_str(name)
                atomic_write_text(marker, _incomplete_marker_text(started, command, names[:i], name, names[i + 1 :]))
                outcome = run_experiment(path, out_dir, quick=quick, full=full, retrain=retrain)
                if not outcome.ok:
                    bar.write(f"FAILED: {name}\n{outcome.error}")
                outcomes.append(outcome)
        finally:  # KeyboardInterrupt passes through; the marker names the experiment that was running
            bar.close()
        seconds = time.perf_counter() - start
        env = environment_metadata()
        text = _render_report(
            outcomes,
            env=env,
            started=started,
            seconds=seconds,
            quick=quick,
            full=full,
            retrain=retrain,
            only=only,
            command=command,
        )
        json_path = write_result_json(
            out_dir / _JSON_NAME,
            {
                "experiments": [
                    {
                        "name": o.name,
                        "title": o.title,
                        "ok": o.ok,
                        "seconds": o.seconds,
                        "figures": list(o.figures),
                        "summary": o.summary,
                        "error": o.error,
                        "weights": list(o.weights),
                    }
                    for o in outcomes
                ],
                "seconds": seconds,
                "ok": all(o.ok for o in outcomes),
            },
            config={
                "out_dir": str(out_dir),
                "only": list(only) if only else None,
                "quick": quick,
                "full": full,
                "retrain": retrain,
                "experiments_dir": str(experiments_dir) if experiments_dir else str(default_experiments_dir()),
                "command": command,
            },
        )
        report_path = atomic_write_text(out_dir / REPORT_NAME, text)  # last: its presence means "finished"
        _remove_run_markers(out_dir)
        return ReproductionReport(report_path, json_path, tuple(outcomes), seconds)
