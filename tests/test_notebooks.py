"""The notebooks in notebooks/ execute without errors and are committed with current outputs.

New notebooks are picked up. The committed outputs are refreshed with ``python notebooks/execute.py``;
the checks here fail when they were not:

* fast: every code cell was executed, in order, in one run, from the source it holds now (the tool
  records each code cell's source digest) and shows no error;
* slow (``-m slow``): each notebook is executed once (in a temporary directory, so nothing is written
  into the repository); it must not raise, and every code cell that prints or draws when executed
  now must print or draw in the committed version too, and vice versa.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
IDS = [path.name for path in NOTEBOOKS]
REFRESH = "python notebooks/execute.py"


def load_execute_tool():
    """notebooks/execute.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("notebooks_execute", REPO / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute_tool = load_execute_tool()


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def error_outputs(notebook):
    """(code cell number, "ename: evalue") for every error output."""
    return [
        (number, f"{output.ename}: {output.evalue}")
        for number, cell in enumerate(code_cells(notebook), start=1)
        for output in cell.outputs
        if output.output_type == "error"
    ]


def output_signature(cell) -> tuple[bool, bool]:
    """(prints or returns something, draws an image): what a code cell shows, ignoring stderr.

    stderr is left out because warnings depend on the machine (e.g. which accelerators it has).
    """
    shown = [output for output in cell.outputs if not (output.output_type == "stream" and output.name == "stderr")]
    has_image = any(any(kind.startswith("image/") for kind in output.get("data", {})) for output in shown)
    return bool(shown), has_image


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_are_from_current_sources(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == execute_tool.KERNEL_NAME
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: code cells not executed top to bottom in one run (execution counts {counts}); "
        f"run {REFRESH} {path.stem}"
    )
    edited = [
        number
        for number, cell in enumerate(cells, start=1)
        if cell.metadata.get(execute_tool.SOURCE_DIGEST_KEY) != execute_tool.source_digest(cell)
    ]
    assert not edited, (
        f"{path.name}: code cells {edited} changed since their outputs were made; run {REFRESH} {path.stem}"
    )
    assert not error_outputs(notebook), error_outputs(notebook)


def kernel_xla_flags() -> str:
    """The workers' ``XLA_FLAGS`` with LLVM optimisation level 1 in place of the suite's level 0 (conftest).

    Notebooks run their compiled programs many times (training, sampling, references), where level
    0 loses more in execution than it saves in compilation: measured on the 2-core machine, notebooks
    04, 05 and 06 took 26 %, 14 % and 39 % less time at level 1, the others the same, while the
    compile-bound unit tests are faster at level 0. A level the user chose is kept. The suite's
    other setting (XLA:CPU's classic fusion emitters, conftest) is kept too: with it, notebooks 02,
    04, 05 and 06 took 84 s instead of 92 s together at level 1 (at level 0 with it: 119 s).
    """
    return os.environ.get("XLA_FLAGS", "").replace(
        "--xla_backend_optimization_level=0", "--xla_backend_optimization_level=1"
    )


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=IDS)
def committed_and_fresh(request):
    """(committed notebook, the same notebook executed now); one execution per notebook for all tests."""
    path = request.param
    fresh = execute_tool.execute_notebook(path, allow_errors=True, env={"XLA_FLAGS": kernel_xla_flags()})
    return nbformat.read(path, as_version=4), fresh


@pytest.mark.slow
def test_notebook_executes(committed_and_fresh):
    _, fresh = committed_and_fresh
    errors = error_outputs(fresh)
    assert not errors, f"code cells raised: {errors}"


@pytest.mark.slow
def test_committed_outputs_not_stale(committed_and_fresh):
    committed, fresh = committed_and_fresh
    committed_cells, fresh_cells = code_cells(committed), code_cells(fresh)
    assert len(committed_cells) == len(fresh_cells)
    differing = [
        (number, {"committed": output_signature(old), "fresh": output_signature(new)})
        for number, (old, new) in enumerate(zip(committed_cells, fresh_cells, strict=True), start=1)
        if output_signature(old) != output_signature(new)
    ]
    assert not differing, f"(shows output, shows image) differ in code cells {differing}; run {REFRESH}"


def test_execute_tool_merges_consecutive_prints():
    stream = nbformat.v4.new_output
    outputs = [
        stream("stream", name="stdout", text="a\n"),
        stream("stream", name="stdout", text="b\n"),
        stream("stream", name="stderr", text="warning\n"),
        stream("stream", name="stdout", text="c\n"),
    ]
    merged = execute_tool.merge_consecutive_streams(outputs)
    assert [(output.name, output.text) for output in merged] == [
        ("stdout", "a\nb\n"),
        ("stderr", "warning\n"),
        ("stdout", "c\n"),
    ]
    assert outputs[0].text == "a\n", "the given outputs are not modified"


def test_execute_tool_selects_notebooks_by_prefix():
    assert execute_tool.notebook_paths(None) == NOTEBOOKS
    first = NOTEBOOKS[0]
    assert execute_tool.notebook_paths([first.stem[:3]]) == [first]
    assert execute_tool.notebook_paths([first.name, first.stem]) == [first]
    with pytest.raises(SystemExit):
        execute_tool.notebook_paths(["no-such-notebook"])
