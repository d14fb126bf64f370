"""The documentation runs: every ```python block of README.md and docs/**/*.md is executed.

Each Markdown file's blocks run in order in one namespace (a block may use the names of the
blocks before it), in a fresh Python process on the CPU whose working folder is a temporary
directory, so examples may write to relative paths such as ``out/``. A ```bash block runs too when its first
line is ``# test: run`` (used for cheap commands such as ``pifs-jax --help``); other shell blocks
are documentation only. A failure names the file and the block number (1-based, counting the
executed blocks of that file) and shows the traceback.

Besides running the examples, the file checks what the README promises about the docs: its size
limit, that every relative link in README.md and docs/ points to an existing file, and that the
documentation refers to nothing a user of the repository does not have.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: A fenced block: the language tag after the opening fence, then the body up to the closing fence.
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUN_MARK = "# test: run"
README_LIMIT = 8192
#: Per-file limit of the subprocess (the examples are meant to take seconds).
TIMEOUT_S = 240

#: Executes the blocks handed over as JSON on stdin, in one namespace, and reports the first failure.
RUNNER = r"""
import json, subprocess, sys, traceback
name, blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for number, (language, source) in enumerate(blocks, start=1):
    try:
        if language == "python":
            exec(compile(source, f"{name} block {number}", "exec"), namespace)
        else:
            subprocess.run(["bash", "-e", "-o", "pipefail", "-c", source], check=True)
    except BaseException:
        print(f"DOCS FAILURE: {name} block {number} ({language})", file=sys.stderr)
        print(source, file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def executable_blocks(path: Path) -> list[tuple[str, str]]:
    """``(language, source)`` of the blocks of ``path`` that the test executes, in file order.

    Args:
      path: a Markdown file.

    Returns:
      Every ```python block, and every ```bash block whose first line is ``# test: run``.
    """
    blocks = []
    for match in FENCE.finditer(path.read_text(encoding="utf-8")):
        language, source = match.group(1).lower(), match.group(2)
        if language == "python":
            blocks.append(("python", source))
        elif language in ("bash", "sh", "shell") and source.lstrip().startswith(RUN_MARK):
            blocks.append(("bash", source))
    return blocks


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOC_FILES if executable_blocks(p)], ids=_relative)
def test_examples_run(path: Path, tmp_path: Path):
    """Every executed block of one file runs without error, in order, in one namespace."""
    blocks = executable_blocks(path)
    # CPU: the examples' float32 tolerances assume full-precision matmuls (GPUs default to TF32)
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        # the bash examples call `pifs-jax`: the one installed beside this interpreter, activated or not
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    }
    process = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([_relative(path), blocks]),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=TIMEOUT_S,
    )
    assert process.returncode == 0, (
        f"{_relative(path)}: an example failed\n--- stdout ---\n{process.stdout[-4000:]}"
        f"\n--- stderr ---\n{process.stderr[-8000:]}"
    )


def test_block_extraction():
    """The extractor finds python blocks, marked bash blocks only, in order."""
    text = (
        "intro\n```python\na = 1\n```\n\n```bash\npifs-jax train --out x\n```\n"
        f"```bash\n{RUN_MARK}\necho hi\n```\n```python\nb = a + 1\n```\n"
    )
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    assert [language for language, _ in blocks] == ["python", "bash", "bash", "python"]
    assert blocks[0][1] == "a = 1\n" and blocks[3][1] == "b = a + 1\n"


def test_readme_size():
    """The README stays short: the details live in docs/."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, the limit is {README_LIMIT}"


def test_every_module_has_an_api_reference_page():
    """Each module of the package is on a page of docs/api (Sphinx builds only what is listed there)."""
    import pkgutil

    import pifs_jax

    listed = "".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.rst"))
    documented = set(re.findall(r"^\.\. automodule:: (\S+)$", listed, re.MULTILINE))
    private_or_data = ("pifs_jax._validation", "pifs_jax.cli.__main__", "pifs_jax.data_files", "pifs_jax.pretrained")
    modules = {m.name for m in pkgutil.walk_packages(pifs_jax.__path__, "pifs_jax.")} - set(private_or_data)
    assert len(modules) > 90  # the walk found the package
    assert sorted(modules - documented) == [], "modules missing from docs/api/*.rst"


def test_every_guide_has_an_executed_example():
    """Each guide under docs/guides/ has at least one executed example."""
    guides = sorted((ROOT / "docs" / "guides").glob("*.md"))
    assert guides, "docs/guides/ is empty"
    for guide in guides:
        assert executable_blocks(guide), f"{_relative(guide)} has no executed example"


LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("path", DOC_FILES, ids=_relative)
def test_relative_links_resolve(path: Path):
    """Every relative Markdown link points to a file or folder of the repository."""
    missing = [
        target
        for target, _ in LINK.findall(path.read_text(encoding="utf-8"))
        if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()
    ]
    assert not missing, f"{_relative(path)}: links to missing files {missing}"


@pytest.mark.parametrize("path", DOC_FILES, ids=_relative)
def test_no_private_references(path: Path):
    """The documentation refers to nothing a user of the repository lacks (issue numbers, shared folders)."""
    text = path.read_text(encoding="utf-8")
    hits = re.findall(r"shared/|[Ii]ssue [0-9]+", text)
    assert not hits, f"{_relative(path)}: refers to {hits}"


def test_command_line_guide_lists_every_subcommand():
    """docs/guides/command-line.md once said "four subcommands" and omitted sample and analyze: it lists
    each of ``pifs-jax --help``'s subcommands, and its sample and analyze examples are those of their --help."""
    from pifs_jax import cli

    text = (ROOT / "docs" / "guides" / "command-line.md").read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    assert [name for name in cli.SUBCOMMANDS if f"- `{name}`: " not in intro] == []
    words = {5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
    assert f"has {words[len(cli.SUBCOMMANDS)]} subcommands" in intro
    for name in ("sample", "analyze"):
        section = text.split(f"\n## `pifs-jax {name}`\n", 1)[1].split("\n## ", 1)[0]
        examples = [line.split("  #")[0].strip() for line in section.splitlines() if line.startswith("pifs-jax ")]
        assert examples, name
        for example in examples:
            assert example in cli.SUBCOMMANDS[name].epilog, f"{name}: {example!r} is not an example of its --help"
