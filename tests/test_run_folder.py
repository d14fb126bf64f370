"""The output-folder policy (:class:`pifs_jax.run_folder.RunFolder`): lock, marker, staging, policies.

Fast: no model, no JAX work (the analysis case writes a stand-in result through the real writer).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pifs_jax.errors import ArgumentError
from pifs_jax.run_folder import LOCK_NAME, MARKER_NAME, RunFolder

# another process holding the folder as RunFolder does (flock on the lock file, its pid inside,
# a marker), without importing JAX (fast); it holds until its stdin closes
HOLDER = f"""
import fcntl, os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
fd = os.open(os.path.join(out, {LOCK_NAME!r}), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, str(os.getpid()).encode())
with open(os.path.join(out, {MARKER_NAME!r}), "w") as marker:
    marker.write('{{"pid": %d, "state": "running"}}' % os.getpid())
print("locked", flush=True)
sys.stdin.read()
os.remove(os.path.join(out, {MARKER_NAME!r}))
"""


def _results(out: Path, text: str) -> None:
    with RunFolder(out, "overwrite", results=("a.txt", "b.txt")) as folder, folder.staged() as stage:
        (stage / "a.txt").write_text(text)
        (stage / "b.txt").write_text(text)


def _killed_run(out: Path, state: str = "running", **extra) -> None:
    """What a killed process leaves: its marker (its lock is gone with it)."""
    out.mkdir(parents=True, exist_ok=True)
    marker = {"pid": 999999, "command": "pifs-jax train", "started": "2026-12-06T10:00:00+00:00", "state": state}
    (out / MARKER_NAME).write_text(json.dumps({**marker, **extra}))


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(ArgumentError, match="in use by another process") as info:
            RunFolder(out, "overwrite").open()
        assert time.monotonic() - start < 1.0  # at once, no waiting
        assert info.value.argument == "out" and str(out) in info.value.detail
        assert f"pid {holder.pid}" in info.value.detail
    finally:
        holder.communicate(input="")
    assert holder.returncode == 0
    with RunFolder(out, "overwrite") as folder:  # released by the first process
        assert folder.stale is None
    assert not (out / LOCK_NAME).exists() and not (out / MARKER_NAME).exists()


def test_a_killed_process_releases_the_lock_and_leaves_a_stale_marker(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert (out / MARKER_NAME).exists()  # the killed run's marker
    notes = []
    with RunFolder(out, "overwrite", report=notes.append) as folder:  # not locked forever
        assert folder.stale is not None and folder.stale.pid == holder.pid
    assert len(notes) == 1 and "interrupted run" in notes[0] and "starting afresh" in notes[0]
    assert not (out / MARKER_NAME).exists()


def test_an_exception_in_the_staged_block_keeps_the_old_results(tmp_path):
    out = tmp_path / "run"
    _results(out, "old")
    with pytest.raises(OSError, match="disk full"), RunFolder(out, "overwrite", results=("a.txt", "b.txt")) as folder:
        with folder.staged() as stage:
            (stage / "a.txt").write_text("new")
            raise OSError("disk full")  # a kill or a full disk half-way through the results
    assert (out / "a.txt").read_text() == (out / "b.txt").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]  # no staging, marker or lock left


def test_a_run_killed_while_moving_its_results_in_is_completed_by_the_next(tmp_path):
    out = tmp_path / "run"
    _results(out, "old")
    stage = out / ".pifs-jax-staging-killed"
    stage.mkdir()
    (stage / "b.txt").write_text("new")  # a.txt was moved in already, then the process died
    (out / "a.txt").write_text("new")
    _killed_run(out, "committing", staging=stage.name, files=["a.txt", "b.txt"], remove=[])
    notes = []
    with RunFolder(out, "overwrite", results=("a.txt", "b.txt"), report=notes.append) as folder:
        assert folder.stale is not None and folder.stale.state == "committing"
    assert (out / "a.txt").read_text() == (out / "b.txt").read_text() == "new"
    assert "the move is now complete" in notes[0] and not stage.exists()


def test_refuse_resume_overwrite(tmp_path):
    out = tmp_path / "run"
    files = {"results": ("result.json",), "progress": ("ckpt",), "checkpoint": "ckpt"}
    with pytest.raises(ArgumentError, match="nothing to resume") as info:
        RunFolder(out, "resume", **files).open()
    assert info.value.argument == "resume" and not out.exists()  # refused: the folder it made is gone
    with RunFolder(out, "refuse", **files) as folder:  # a new folder
        (out / "ckpt").write_text("1")
        with folder.staged() as stage:
            (stage / "result.json").write_text("1")
    with pytest.raises(ArgumentError, match=r"already holds a run \(ckpt, result.json\).*--resume.*--overwrite"):
        RunFolder(out, "refuse", **files).open()
    with RunFolder(out, "resume", **files):  # continues: nothing deleted
        assert (out / "ckpt").read_text() == "1" and (out / "result.json").exists()
    with RunFolder(out, "overwrite", **files):  # progress files: the old run is deleted at once
        assert not (out / "ckpt").exists() and not (out / "result.json").exists()
    with pytest.raises(ArgumentError, match="policy"):
        RunFolder(out, "append")


def test_overwrite_without_progress_files_replaces_the_results_at_the_commit(tmp_path):
    out = tmp_path / "run"
    _results(out, "old")
    with RunFolder(out, "overwrite", results=("a.txt", "b.txt")) as folder:
        assert (out / "a.txt").read_text() == "old"  # still there while the new run works
        with folder.staged() as stage:
            (stage / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and not (out / "b.txt").exists()  # b described the old run
    assert folder.written == [out / "a.txt"]


def test_results_of_an_earlier_state_are_set_aside_not_left_beside_the_resumed_run(tmp_path):
    """A resumed run's old results used to stay where the continuing run's go: set_aside moves them
    (atomically, file by file, replacing namesakes) into a subfolder; a bad subfolder is refused."""
    files = {"results": ("a.txt", "b.txt"), "progress": ("ckpt",), "checkpoint": "ckpt"}
    out = tmp_path / "run"
    _results(out, "old")
    (out / "ckpt").write_text("1")
    with RunFolder(out, "resume", **files) as folder:
        (out / "stale" / "step-1").mkdir(parents=True)
        (out / "stale" / "step-1" / "a.txt").write_text("older")
        moved = folder.set_aside(("a.txt", "b.txt", "missing.txt"), "stale/step-1")
        assert moved == [out / "stale" / "step-1" / "a.txt", out / "stale" / "step-1" / "b.txt"]
        assert not (out / "a.txt").exists() and not (out / "b.txt").exists()
        assert [p.read_text() for p in moved] == ["old", "old"]
        for into in ("..", "/tmp/elsewhere", ".", "../x"):
            with pytest.raises(ArgumentError, match="expected a subfolder") as info:
                folder.set_aside(("ckpt",), into)
            assert info.value.argument == "into"
        assert (out / "ckpt").read_text() == "1"
    with pytest.raises(ArgumentError, match="is not open"):
        folder.set_aside(("ckpt",), "stale")


def test_a_stale_marker_under_each_policy(tmp_path):
    files = {"results": ("result.json",), "progress": ("ckpt",), "checkpoint": "ckpt"}
    out = tmp_path / "run"
    _killed_run(out)
    (out / "ckpt").write_text("1")
    with pytest.raises(ArgumentError, match=r"already holds a run \(ckpt\) that was interrupted \(process 999999"):
        RunFolder(out, "refuse", **files).open()
    _killed_run(out)
    notes = []
    with RunFolder(out, "resume", report=notes.append, **files) as folder:
        assert folder.stale is not None and folder.stale.pid == 999999
        assert (out / "ckpt").exists()
    assert "resuming from its checkpoint" in notes[0]


def test_analysis_files_are_all_new_or_all_old(tmp_path, monkeypatch):
    """A failure while the new analysis is written (a full disk, a kill) leaves the old one whole."""
    from pifs_jax.analysis import report

    out = tmp_path / "analysis"
    out.mkdir()
    for name in report.ANALYSIS_FILES:
        (out / name).write_text("old")

    def fails(path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    # stand-ins for the computed parts; the writer and its folder are the real ones
    monkeypatch.setattr(report, "FIGURES", {name: lambda summary, title: None for name in report.FIGURES})
    monkeypatch.setattr(report, "analysis_markdown", lambda result, title: "new")
    monkeypatch.setattr(report, "write_result_json", lambda path, *a, **k: Path(path).write_text("new"))
    monkeypatch.setattr(report, "save_figure", fails)  # analysis.json is staged by then
    result = report.ModelAnalysis(None, {}, [])  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left"):
        report.write_analysis(out, result, title="t", config={}, seed=0)
    assert {p.name: p.read_text() for p in out.iterdir()} == dict.fromkeys(report.ANALYSIS_FILES, "old")

    monkeypatch.setattr(report, "save_figure", lambda fig, path: Path(path).write_text("new"))
    report.write_analysis(out, result, title="t", config={}, seed=0)
    assert {p.name: p.read_text() for p in out.iterdir()} == dict.fromkeys(report.ANALYSIS_FILES, "new")


def test_the_command_line_names_the_folder_in_use(tmp_path, capsys):
    from pifs_jax import cli

    out = tmp_path / "g"
    with RunFolder(out, "overwrite"):  # held through another open file description: refused like a process
        assert cli.main(["geometry", "--schedule", "linear", "--steps", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --out:" in err[0] and "in use by another process" in err[0], err
    assert not out.exists()  # nothing written: the folder the first holder created is gone again


def test_experiment_script_holds_its_folder(tmp_path):
    """``python experiments/NAME.py`` holds OUT/NAME like a command: a second run on it is refused."""
    from pifs_jax.reproduce import experiment_main

    calls = []

    def run(out, quick=False):
        calls.append(out)
        return {"markdown": "done"}

    argv = ["--out", str(tmp_path)]
    with RunFolder(tmp_path / "demo", "overwrite"), pytest.raises(ArgumentError, match="in use"):
        experiment_main("demo", None, run, quick_help="", argv=argv)
    assert calls == []
    assert experiment_main("demo", None, run, quick_help="", argv=argv) == 0
    assert calls == [tmp_path]
