"""``pifs-jax reproduce`` under hostile input: Ctrl-C mid-run, a bad ``--out``, a missing
``--experiments-dir``, and the rule that the report folder is never inconsistent.

The folder's contract (see :mod:`pifs_jax.reproduce`): ``REPORT.md`` is written last; while a run
rewrites the folder, ``INCOMPLETE.md`` names what is finished and running, and a previous report
is ``REPORT.stale.md``. So ``REPORT.md`` never sits beside experiment folders it does not describe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pifs_jax import cli, reproduce
from pifs_jax.errors import ArgumentError

OLD_REPORT = "# an old report\n"
OLD_JSON = '{"old": true}\n'

WRITES_AND_OBSERVES = """
import json
from pathlib import Path

NAME = "{name}"
TITLE = "writes a file and looks at the report folder"


def run(out_dir, *, quick):
    folder = Path(out_dir) / NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({{"new": True}}))
    seen = {{name: (Path(out_dir) / name).exists()
            for name in ("REPORT.md", "INCOMPLETE.md", "REPORT.stale.md", "reproduction.json")}}
    return {{"markdown": json.dumps(seen, sort_keys=True), "summary": "ok"}}
"""

RAISES_KEYBOARD_INTERRUPT = """
NAME = "{name}"
TITLE = "interrupted"


def run(out_dir, *, quick):
    raise KeyboardInterrupt
"""

# busy in compiled XLA work (async dispatch, several threads) until killed; writes a file first
KEEPS_JAX_BUSY = """
import time
from pathlib import Path

NAME = "{name}"
TITLE = "keeps XLA busy"


def run(out_dir, *, quick):
    import jax
    import jax.numpy as jnp

    step = jax.jit(lambda x: jnp.tanh(x @ x.T) @ x + 1e-3)
    x = jnp.ones((256, 256)) / 256
    x = step(x).block_until_ready()
    (Path(out_dir) / "busy_started").write_text("started")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for _ in range(20):
            x = step(x)  # dispatched asynchronously: computations are in flight when SIGINT comes
        x.block_until_ready()
    return {{"markdown": "not interrupted"}}
"""


def _experiments(tmp_path: Path, **scripts: str) -> Path:
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name, template in scripts.items():
        (folder / f"{name}.py").write_text(template.format(name=name))
    return folder


def _old_results(out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "REPORT.md").write_text(OLD_REPORT)
    (out / "reproduction.json").write_text(OLD_JSON)
    return out


def _error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# ----------------------------------------------------------------------------- report folder consistency


def test_report_is_absent_while_experiments_run_and_written_last(tmp_path):
    folder = _experiments(tmp_path, a_observe=WRITES_AND_OBSERVES)
    out = _old_results(tmp_path / "out")
    report = reproduce.run_reproduction(out, experiments_dir=folder, progress=False)
    # what the experiment saw while it ran: the old report out of the way, the marker present
    seen = report.outcomes[0].markdown
    assert seen == ('{"INCOMPLETE.md": true, "REPORT.md": false, "REPORT.stale.md": true, "reproduction.json": false}')
    # after a finished run: the new report, no marker, no stale files
    assert report.ok
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "a_observe", "reproduction.json"]
    text = (out / "REPORT.md").read_text()
    assert text != OLD_REPORT and "| a_observe | ok |" in text


def test_keyboard_interrupt_leaves_the_marker_and_no_report(tmp_path):
    folder = _experiments(
        tmp_path, a_observe=WRITES_AND_OBSERVES, b_interrupted=RAISES_KEYBOARD_INTERRUPT, c_never=WRITES_AND_OBSERVES
    )
    out = _old_results(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_reproduction(out, experiments_dir=folder, progress=False)
    assert not (out / "REPORT.md").exists()
    assert not (out / "reproduction.json").exists()
    assert (out / "REPORT.stale.md").read_text() == OLD_REPORT
    assert (out / "reproduction.stale.json").read_text() == OLD_JSON
    marker = (out / "INCOMPLETE.md").read_text()
    assert marker.startswith("# INCOMPLETE")
    assert "- finished: a_observe\n" in marker
    assert "- running (its folder may be partly rewritten): b_interrupted\n" in marker
    assert "- not started: c_never\n" in marker
    assert (out / "a_observe" / "result.json").is_file() and not (out / "c_never").exists()

    # the next finished run cleans up: report, no marker, no stale files
    (folder / "b_interrupted.py").unlink()
    report = reproduce.run_reproduction(out, experiments_dir=folder, progress=False)
    assert report.ok
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "a_observe", "c_never", "reproduction.json"]


# ----------------------------------------------------------------------------- --out and --experiments-dir


def test_out_that_is_an_existing_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    path = tmp_path / "results"
    path.write_text("not a folder")
    monkeypatch.setattr(reproduce, "run_reproduction", lambda *a, **k: pytest.fail("work started"))
    assert cli.main(["reproduce", "--out", str(path), "--only", "schedule_geometry", "--no-progress"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("pifs-jax reproduce: error: argument --out:") and "existing file" in lines[0]
    assert path.read_text() == "not a folder"


def test_out_below_an_existing_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["reproduce", "--out", str(tmp_path / "file" / "sub"), "--no-progress"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "argument --out:" in lines[0] and "is a file" in lines[0], lines


def test_out_on_a_read_only_file_system_is_refused_at_parse_time(tmp_path, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    monkeypatch.setattr(reproduce, "run_reproduction", lambda *a, **k: pytest.fail("work started"))
    assert cli.main(["reproduce", "--out", str(tmp_path / "new"), "--no-progress"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "argument --out:" in lines[0] and "read-only" in lines[0], lines
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_out_in_a_read_only_folder_without_simulation(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["reproduce", "--out", str(locked / "new"), "--no-progress"]) == 2
    finally:
        locked.chmod(0o700)
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "argument --out:" in lines[0], lines


def test_missing_experiments_dir_is_an_argument_error(tmp_path):
    with pytest.raises(ArgumentError) as info:
        reproduce.discover_experiments(tmp_path / "no_such_folder")
    assert info.value.argument == "experiments_dir"
    assert info.value.detail == f"no such folder: {str(tmp_path / 'no_such_folder')!r}"  # the name once, in .argument
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ArgumentError, match="experiments_dir: is a file"):
        reproduce.discover_experiments(tmp_path / "a_file")


def test_missing_experiments_dir_names_the_option_once(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert cli.main(["reproduce", "--experiments-dir", str(missing), "--out", str(tmp_path / "out")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("pifs-jax reproduce: error: argument --experiments-dir: no such folder")
    assert str(missing) in line
    rest = line.replace(str(missing), "PATH")  # tmp_path holds this test's name
    assert rest.count("experiments-dir") == 1 and "experiments_dir" not in rest, rest
    assert not (tmp_path / "out").exists()


def test_experiments_dir_help_names_the_bundled_package(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "folder of experiment scripts (default: the bundled experiments, installed as pifs_jax.experiments "
        "from the repository's experiments/)"
    ) in text
    assert "REPORT.stale.md" in text and "INCOMPLETE.md" in text and "130" in text


# ----------------------------------------------------------------------------- Ctrl-C in a subprocess


def _interrupt(args: list[str], out: Path, ready, *, wait_s: float = 120.0) -> subprocess.CompletedProcess:
    """Start ``pifs-jax reproduce ARGS``, wait until ``ready()``, send SIGINT, collect the result."""
    env = {k: v for k, v in os.environ.items() if k != "PIFS_JAX_TRACEBACK"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pifs_jax.cli", "reproduce", "--out", str(out), "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + wait_s
    try:
        while not ready():
            assert proc.poll() is None, f"ended before the interrupt: {proc.communicate()}"
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _assert_clean_interrupt(result: subprocess.CompletedProcess, out: Path, running: str) -> None:
    assert result.returncode == 130, (result.returncode, result.stderr[-3000:])
    assert "Segmentation fault" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["pifs-jax reproduce: interrupted (see INCOMPLETE.md in the report folder)"], lines
    # consistent folder: no report beside the new data, the old one marked stale, the marker names the run
    assert not (out / "REPORT.md").exists()
    assert (out / "REPORT.stale.md").read_text() == OLD_REPORT
    marker = (out / "INCOMPLETE.md").read_text()
    assert f"- running (its folder may be partly rewritten): {running}\n" in marker


def test_sigint_while_xla_is_busy_exits_130_and_leaves_a_consistent_folder(tmp_path):
    folder = _experiments(tmp_path, busy=KEEPS_JAX_BUSY)
    out = _old_results(tmp_path / "out")
    result = _interrupt(["--experiments-dir", str(folder)], out, lambda: (out / "busy_started").exists())
    _assert_clean_interrupt(result, out, "busy")


@pytest.mark.slow
def test_sigint_during_a_bundled_experiment_exits_130_and_leaves_a_consistent_folder(tmp_path):
    out = _old_results(tmp_path / "out")

    def inside_the_experiment() -> bool:
        marker = out / "INCOMPLETE.md"
        if (
            not marker.exists()
            or "running (its folder may be partly rewritten): attractor_dimension" not in marker.read_text()
        ):
            return False
        time.sleep(4.0)  # past the imports, into the compiled chains
        return True

    result = _interrupt(["--quick", "--only", "attractor_dimension"], out, inside_the_experiment)
    _assert_clean_interrupt(result, out, "attractor_dimension")
