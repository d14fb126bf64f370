"""Execute the notebooks in place, so that they are committed with their outputs (figures included).

Usage, from the repository root with the package's environment active::

    python notebooks/execute.py                        # every notebooks/*.ipynb
    python notebooks/execute.py 02 04_train_denoiser   # some: a file name, its stem or a prefix of it

Each notebook runs top to bottom with nbclient in a fresh ``python3`` kernel (jupyter_client starts
that kernel with the interpreter running this script) inside a temporary working directory, which is
also the kernel's ``TMPDIR``: nothing is written into the repository except the executed notebook.
A cell that raises stops the run and leaves that notebook unchanged on disk.

Volatile metadata (per-cell execution timestamps, the interpreter version in ``language_info``) is
removed so that a re-run changes only what the code prints and draws. Each code cell records the
SHA-256 of the source that produced its outputs (``metadata.executed_source_sha256``);
``tests/test_notebooks.py`` uses it to catch a cell edited without re-running the notebook.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600
SOURCE_DIGEST_KEY = "executed_source_sha256"
#: Resolution of the PNG figures stored in the notebooks, whatever the figure's own dpi (keeps each
#: notebook at a few hundred KB).
FIGURE_DPI = 80
#: Warning filters (``PYTHONWARNINGS`` syntax) for the kernel: warnings about the executing
#: environment rather than the notebook (tqdm.auto without ipywidgets) stay out of the outputs.
QUIET_WARNINGS = "ignore:IProgress not found"


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The notebooks named by ``names`` (file names, stems or stem prefixes), or all of them.

    Args:
      names: notebook names; ``None`` or empty selects every ``notebooks/*.ipynb``.

    Returns:
      The matching paths, sorted.

    Raises:
      SystemExit: a name matches no notebook, or more than one.
    """
    every = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        matches = [path for path in every if path.stem == stem]
        matches = matches or [path for path in every if path.stem.startswith(stem)]
        if len(matches) != 1:
            found = ", ".join(path.name for path in matches) or "none"
            raise SystemExit(f"{name!r} must name exactly one notebook in {NOTEBOOK_DIR} (matches: {found})")
        chosen.append(matches[0])
    return sorted(set(chosen))


def source_digest(cell: nbformat.NotebookNode) -> str:
    """SHA-256 (hex) of a cell's source text."""
    return hashlib.sha256(cell.source.encode("utf-8")).hexdigest()


def merge_consecutive_streams(outputs: list) -> list:
    """Merge each run of consecutive ``stream`` outputs to the same stream into one output.

    A cell that prints several times gets one stdout block (as Jupyter saves it), not one per flush.

    Args:
      outputs: a code cell's outputs.

    Returns:
      A new list: merged runs are new stream outputs, the other outputs are the given objects.
    """
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.output_type == "stream"
            and previous.output_type == "stream"
            and output.name == previous.name
        ):
            merged[-1] = nbformat.v4.new_output("stream", name=output.name, text=previous.text + output.text)
        else:
            merged.append(output)
    return merged


def strip_volatile_metadata(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove what changes on every run although the notebook did not (modifies ``notebook``).

    Drops each cell's ``execution`` timestamps, merges consecutive prints of a cell into one stream
    output (the split depends on output buffering) and reduces ``language_info`` to the language
    name (nbclient fills in the interpreter version).

    Args:
      notebook: an executed notebook.

    Returns:
      The same notebook.
    """
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = merge_consecutive_streams(cell.outputs)
    notebook.metadata["language_info"] = {"name": notebook.metadata.get("language_info", {}).get("name", "python")}
    return notebook


def execute_notebook(
    path: Path,
    *,
    allow_errors: bool = False,
    timeout: int = CELL_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` and return the executed copy; the file is not touched.

    The kernel runs in a temporary directory (its working directory and ``TMPDIR``), removed afterwards.

    Args:
      path: the ``.ipynb`` file.
      allow_errors: if True, a failing cell leaves its error output and execution continues;
        otherwise the first failing cell raises.
      timeout: seconds allowed per cell.
      env: environment variables for the kernel, on top of this process's (default: none).

    Returns:
      The executed notebook, with volatile metadata stripped and each code cell's source digest
      recorded under ``metadata.executed_source_sha256``.

    Raises:
      nbclient.exceptions.CellExecutionError: a cell raised and ``allow_errors`` is False.
    """
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": KERNEL_NAME,
    }
    with tempfile.TemporaryDirectory(prefix=f"{path.stem}-") as workdir:
        client = nbclient.NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name=KERNEL_NAME,
            allow_errors=allow_errors,
            extra_arguments=[f"--InlineBackend.print_figure_kwargs={{'bbox_inches': 'tight', 'dpi': {FIGURE_DPI}}}"],
            resources={"metadata": {"path": workdir}},
        )
        warning_filters = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), QUIET_WARNINGS)))
        client.execute(env={**os.environ, **(env or {}), "TMPDIR": workdir, "PYTHONWARNINGS": warning_filters})
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.metadata[SOURCE_DIGEST_KEY] = source_digest(cell)
    return strip_volatile_metadata(notebook)


def main(argv: list[str] | None = None) -> int:
    """Execute the chosen notebooks and write each back in place with its outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all); a file name, stem or stem prefix")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    for path in notebook_paths(args.names):
        print(f"executing {path.name} ...", flush=True)
        notebook = execute_notebook(path, timeout=args.timeout)
        path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")
        print(f"  wrote {path.name} ({path.stat().st_size / 1024:.0f} KB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
