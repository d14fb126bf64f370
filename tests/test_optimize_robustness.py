"""``pifs-jax optimize`` and the schedule optimiser on hostile input: option clashes, existing
run folders, unusable --out, divergence, damaged or foreign checkpoints, degenerate results and
the size of the result files."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax import checkpoint as ck
from pifs_jax import cli, optimize
from pifs_jax.errors import ArgumentError

RESULT_FILES = (
    "schedule.json",
    "history.npz",
    "scheduler_config.json",
    "lstar.png",
    "expansion_before.png",
    "expansion_after.png",
    "history.png",
)


def _optimize(out, *extra, T=50, criterion="weakest-link"):
    return cli.main(["optimize", "--criterion", criterion, "--T", str(T), "--no-progress", *extra, "--out", str(out)])


def _summary(out):
    return json.loads((out / "schedule.json").read_text())["results"]


def _error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


# ----------------------------------------------------------------------------- --init with cosine-offset


def test_cosine_offset_refuses_another_init_and_records_its_true_start(tmp_path, capsys):
    assert _optimize(tmp_path / "a", "--family", "cosine-offset", "--init", "linear") == 2
    err = _error_line(capsys)
    assert "argument --init:" in err and "cosine-offset" in err and "'linear'" in err
    assert "spline, network and logsnr-shift" in err  # the families that honour it
    assert not (tmp_path / "a").exists()

    assert _optimize(tmp_path / "b", "--family", "cosine-offset", "--init", "cosine", "--iterations", "3") == 0
    summary = _summary(tmp_path / "b")["summary"]
    assert summary["start_schedule"] == "cosine" and summary["start_label"] == "cosine (s = 0.008)"


# ----------------------------------------------------------------------------- existing run folders


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert _optimize(out, "--iterations", "6", "--checkpoint-every", "3") == 0
    checkpoint = out / "checkpoint" / "checkpoint.msgpack"
    before = checkpoint.read_bytes()
    capsys.readouterr()

    assert _optimize(out, "--iterations", "2") == 2
    err = _error_line(capsys)
    assert "argument --out:" in err and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert checkpoint.read_bytes() == before  # untouched

    assert _optimize(out, "--iterations", "2", "--resume", "--overwrite") == 2
    assert "argument --overwrite:" in _error_line(capsys)

    assert _optimize(out, "--iterations", "2", "--overwrite") == 0
    assert len(np.load(out / "history.npz")["loss"]) == 2
    assert ck.read_checkpoint_header(checkpoint)["step"] == 2


def test_resume_with_nothing_to_resume_exits_2(tmp_path, capsys):
    out = tmp_path / "empty"
    assert _optimize(out, "--iterations", "2", "--resume") == 2
    err = _error_line(capsys)
    assert "argument --resume: nothing to resume" in err and "checkpoint.msgpack" in err
    assert not out.exists()  # refused before any work

    assert cli.main(["optimize", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for rule in ("resume rule:", "--overwrite starts it again", "--resume without a checkpoint is an error"):
        assert rule in text


# ----------------------------------------------------------------------------- unusable --out


def test_out_that_is_a_file_is_refused_at_parse_time(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a folder")
    assert _optimize(path) == 2
    err = _error_line(capsys)
    assert "argument --out:" in err and "existing file" in err
    assert len(err.splitlines()) == 1
    assert path.read_text() == "not a folder"


def test_out_on_a_read_only_file_system_is_refused_at_parse_time(tmp_path, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    assert _optimize(tmp_path / "new") == 2
    err = _error_line(capsys)
    assert "argument --out:" in err and "read-only" in err
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- divergence


def test_divergence_names_the_optimisation_writes_no_results_and_resumes_with_a_smaller_lr(tmp_path, capsys):
    out = tmp_path / "diverge"
    assert _optimize(out, "--T", "100", "--lr", "1", "--iterations", "60", "--checkpoint-every", "5") == 2
    err = _error_line(capsys)
    match = re.search(
        r"argument --lr: the optimisation diverged at iteration (\d+); last finite objective "
        r"([-+.\deE]+) at iteration (\d+); try a smaller --lr",
        err,
    )
    assert match, err
    diverged_at, last_good = int(match.group(1)), int(match.group(3))
    assert last_good == diverged_at - 1 and "beta" not in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]  # no partial results
    checkpoint = out / "checkpoint" / "checkpoint.msgpack"
    assert ck.read_checkpoint_header(checkpoint)["step"] == last_good  # the last finite iterate

    # --lr is not part of the run's identity: continue the diverged run with a smaller rate
    assert (
        _optimize(out, "--T", "100", "--lr", "0.001", "--iterations", "20", "--checkpoint-every", "5", "--resume") == 0
    )
    results = _summary(out)
    assert results["summary"]["resumed_from"] == last_good
    assert results["summary"]["learning_rate"] == 0.001
    loss = np.load(out / "history.npz")["loss"]
    assert loss.shape == (20,) and np.all(np.isfinite(loss))
    assert loss[last_good] == pytest.approx(float(match.group(2)), rel=1e-5)  # printed with 6 digits
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_library_divergence_keeps_the_last_finite_iterate(x32, tmp_path):
    family, params = optimize.schedule_family("spline", 50, start=pj.cosine(50), n_knots=8)
    objective = optimize.schedule_objective({"weakest_link": 1.0})
    with pytest.raises(optimize.Diverged) as info:
        optimize.optimize_schedule(
            family,
            params,
            objective,
            iterations=10,
            learning_rate=1e6,
            progress=False,
            checkpoint_dir=tmp_path,
            checkpoint_every=5,
        )
    err = info.value
    assert isinstance(err, ArgumentError) and err.argument == "learning_rate"
    assert err.iteration == 1 and err.last_finite[0] == 0
    assert "diverged at iteration 1" in str(err) and "last finite objective" in str(err)
    assert err.checkpoint == tmp_path / optimize.CHECKPOINT_FILE
    assert ck.read_checkpoint_header(err.checkpoint)["step"] == 0
    resumed = optimize.optimize_schedule(
        family,
        params,
        objective,
        iterations=4,
        learning_rate=1e-3,
        progress=False,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert resumed.resumed_from == 0 and np.isfinite(resumed.final["loss"])
    assert resumed.history["loss"][0] == pytest.approx(err.last_finite[1], rel=1e-6)


# ----------------------------------------------------------------- checkpoint_dir, damaged or foreign checkpoints


def test_checkpoint_dir_that_is_a_file_is_refused_before_any_iteration(x32, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    family, params = optimize.schedule_family("cosine_offset", 50)
    steps = []
    with pytest.raises(ArgumentError, match="existing file") as info:
        optimize.optimize_schedule(
            family,
            params,
            optimize.schedule_objective({"weakest_link": 1.0}),
            iterations=5,
            progress=False,
            checkpoint_dir=path,
            callback=lambda step, metrics: steps.append(step),
        )
    assert info.value.argument == "checkpoint_dir" and steps == []
    with pytest.raises(ArgumentError, match="is a file") as info:
        optimize.optimize_grid(pj.cosine(50), 4, iterations=5, checkpoint_dir=path / "below")
    assert info.value.argument == "checkpoint_dir"


def test_resume_from_a_truncated_checkpoint_names_the_file_and_the_problem(tmp_path, capsys):
    out = tmp_path / "run"
    assert _optimize(out, "--iterations", "4") == 0
    checkpoint = out / "checkpoint" / "checkpoint.msgpack"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-9])
    capsys.readouterr()
    assert _optimize(out, "--iterations", "8", "--resume") == 2
    err = _error_line(capsys)
    assert "argument --resume:" in err and str(checkpoint) in err and "is truncated" in err


@pytest.mark.parametrize(
    "criterion, first, changed, named",
    [
        (
            "weakest-link",
            [],
            ["--knots", "8", "--temperature", "0.1"],
            "--knots = 16 in the checkpoint, 8 requested; --temperature = 0.05 in the checkpoint, 0.1 requested",
        ),
        (
            "workload",
            ["--steps", "4"],
            ["--steps", "4", "--work", "score_coefficient"],
            "--work = 'inverse_threshold' in the checkpoint, 'score_coefficient' requested",
        ),
    ],
)
def test_resume_of_another_run_names_the_option(tmp_path, capsys, criterion, first, changed, named):
    out = tmp_path / "run"
    assert _optimize(out, "--iterations", "3", *first, criterion=criterion) == 0
    capsys.readouterr()
    assert _optimize(out, "--iterations", "6", "--resume", *changed, criterion=criterion) == 2
    err = _error_line(capsys)
    assert "argument --resume:" in err and "another run" in err and named in err


# ----------------------------------------------------------------------------- start label, degeneracy


def _log_snr_schedule(values):
    return pj.from_log_snr(np.asarray(values, np.float64))


def test_stalled_fraction_against_hand_counts(x64):
    # logSNR linear from 10 to -10 over t = 1..101: R = 20, stalled within 1 nat of an end:
    # t - 1 < 5 (t = 1..5) and 101 - t < 5 (t = 97..101), 10 of 101 steps
    linear = _log_snr_schedule(np.linspace(10.0, -10.0, 101))
    assert optimize.stalled_fraction(linear) == pytest.approx(10 / 101, abs=1e-12)
    assert optimize.schedule_warnings(linear) == []
    # to -9 in 5 steps, then -9 -> -10 over the other 96: those 96 and t = 1 are stalled
    degenerate = _log_snr_schedule(np.concatenate([np.linspace(10.0, -9.0, 5), np.linspace(-9.01, -10.0, 96)]))
    assert optimize.stalled_fraction(degenerate) == pytest.approx(97 / 101, abs=1e-12)
    (warning,) = optimize.schedule_warnings(degenerate)
    assert warning.startswith("degenerate schedule: 96% of the 101 steps") and "cosine-offset" in warning
    assert optimize.schedule_warnings(pj.cosine(1000)) == []  # stalled fraction 0.004
    assert optimize.stalled_fraction(pj.cosine(1000)) < 0.01


def test_degenerate_result_warns_and_the_start_is_labelled_as_the_fit(tmp_path, capsys):
    out = tmp_path / "wl"
    assert _optimize(out, "--T", "100", "--lr", "0.2", "--iterations", "40") == 0
    captured = capsys.readouterr()
    results = _summary(out)
    assert len(results["warnings"]) == 1 and results["warnings"][0].startswith("degenerate schedule")
    assert "warning: degenerate schedule" in captured.err
    label = results["summary"]["start_label"]
    match = re.fullmatch(r"cosine \(16-knot spline fit, max \|logSNR error\| = ([\d.eE+-]+)\)", label)
    assert match, label
    fitted = np.asarray(results["initial_schedule"]["log_snr"][1:], np.float64)
    expected = np.max(np.abs(fitted - np.asarray(pj.cosine(100).log_snr, np.float64)[1:]))
    assert float(match.group(1)) == pytest.approx(expected, rel=5e-3)  # printed with 3 digits
    assert label in captured.out


@pytest.mark.slow
def test_documented_first_example_is_not_degenerate(tmp_path, capsys):
    from pifs_jax.cli.optimize import EPILOG

    first = EPILOG.splitlines()[2].split()
    assert first[:2] == ["pifs-jax", "optimize"] and "--family" in first
    argv = first[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "example")
    assert cli.main([*argv, "--T", "100", "--iterations", "60", "--no-progress"]) == 0
    results = _summary(tmp_path / "example")
    assert results["warnings"] == []
    assert results["summary"]["after"]["min_lstar"] > results["summary"]["before"]["min_lstar"]
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- size of schedule.json


@pytest.mark.slow
def test_schedule_json_does_not_grow_with_the_iterations(tmp_path):
    sizes = {}
    for iterations in (5, 300):
        out = tmp_path / str(iterations)
        assert _optimize(out, "--T", "20", "--iterations", str(iterations), "--family", "cosine-offset") == 0
        sizes[iterations] = (out / "schedule.json").stat().st_size
        history = np.load(out / "history.npz")
        assert history["loss"].shape == (iterations,)
        assert _summary(out)["history"]["iterations"] == iterations
    assert abs(sizes[300] - sizes[5]) < 100, sizes
