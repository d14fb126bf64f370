"""``pifs-jax optimize``: outputs (schedule JSON, diffusers config, timesteps, figures), resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("lstar.png", "expansion_before.png", "expansion_after.png", "history.png")


def _results(path):
    doc = json.loads(path.read_text())
    assert set(doc) == {"config", "seed", "environment", "results"}
    return doc


def test_weakest_link_writes_schedule_config_figures_and_resumes(x64, tmp_path, capsys):
    out = tmp_path / "wl"
    base = [
        "optimize",
        "--criterion",
        "weakest-link",
        "--T",
        "100",
        "--knots",
        "8",
        "--lr",
        "0.05",
        "--checkpoint-every",
        "10",
        "--no-progress",
        "--x64",
        "--out",
        str(out),
    ]
    assert cli.main([*base, "--iterations", "20"]) == 0
    printed = capsys.readouterr().out
    assert "weakest-link" in printed and "scheduler_config.json" in printed
    first = _results(out / "schedule.json")["results"]
    assert first["summary"]["after"]["min_lstar"] > first["summary"]["before"]["min_lstar"]
    first_history = np.load(out / "history.npz")["loss"]
    assert len(first_history) == 20 and first["history"]["iterations"] == 20
    assert (out / "checkpoint" / "checkpoint.msgpack").exists()  # the name the help text gives

    # the diffusers config reproduces the optimised schedule
    sched = pj.from_diffusers_config(out / "scheduler_config.json")
    np.testing.assert_allclose(sched.alpha_bar, first["schedule"]["alpha_bar"], rtol=1e-12)
    assert np.all(np.diff(first["schedule"]["log_alpha_bar"]) < 0)
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name

    # continue the interrupted run to 30 iterations
    assert cli.main([*base, "--iterations", "30", "--resume"]) == 0
    assert "resumed from step 20" in capsys.readouterr().out
    resumed = _results(out / "schedule.json")["results"]
    assert resumed["summary"]["resumed_from"] == 20
    resumed_history = np.load(out / "history.npz")["loss"]
    assert len(resumed_history) == 30
    np.testing.assert_array_equal(resumed_history[:20], first_history)
    assert resumed["summary"]["after"]["loss"] <= first["summary"]["after"]["loss"]

    # a checkpoint written with other options is refused
    assert cli.main([*base, "--iterations", "30", "--resume", "--temperature", "0.1"]) == 2
    assert "resume" in capsys.readouterr().err


def test_workload_writes_the_grid_in_both_indexings(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = [
        "optimize",
        "--criterion",
        "workload",
        "--init",
        "scaled_linear",
        "--T",
        "100",
        "--steps",
        "6",
        "--iterations",
        "100",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "diffusers timesteps" in printed
    doc = _results(out / "timesteps.json")
    grid = np.asarray(doc["results"]["grid"])
    assert grid[0] == 0 and grid[-1] == 100 and len(grid) == 7 and np.all(np.diff(grid) > 0)
    np.testing.assert_array_equal(doc["results"]["diffusers_timesteps"], (grid[1:] - 1)[::-1])
    assert doc["results"]["cv"] < doc["results"]["uniform_cv"]
    assert doc["config"]["command"] == "pifs-jax " + " ".join(argv)
    # the schedule is unchanged and exported as well
    sched = pj.from_diffusers_config(out / "scheduler_config.json")
    np.testing.assert_allclose(sched.alpha_bar, pj.scaled_linear(100).alpha_bar, rtol=1e-6)
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--criterion", "workload", "--steps", "200"], "--steps"),
        (["--criterion", "weakest-link", "--steps", "200"], "--steps"),
        (["--criterion", "weakest-link", "--alpha-bar-T", "1.5"], "--alpha-bar-T"),
        (["--criterion", "weakest-link", "--family", "cosine-offset", "--alpha-bar-T", "1e-5"], "--alpha-bar-T"),
        (["--criterion", "balanced-growth", "--variances", "0.5", "2", "--sizes", "3"], "--sizes"),
        (["--criterion", "balanced-growth", "--variances", "-1", "2"], "--variances"),
        (["--criterion", "workload", "--family", "network"], "--family"),
        (["--criterion", "weakest-link", "--temperature", "0"], "--temperature"),
        (["--criterion", "fastest"], "--criterion"),
        (["--criterion", "weakest-link", "--iterations", "0"], "--iterations"),
    ],
)
def test_bad_input_exits_2_naming_the_option(tmp_path, capsys, extra, option):
    assert cli.main(["optimize", "--T", "100", *extra, "--no-progress", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and option in err and "Traceback" not in err


def test_help_lists_optimize(capsys):
    assert cli.main(["--help"]) == 0
    assert "optimize" in capsys.readouterr().out
    assert cli.main(["optimize", "--help"]) == 0
    text = capsys.readouterr().out
    for word in (
        "weakest-link",
        "balanced-growth",
        "workload",
        "--resume",
        "scheduler_config.json",
        "checkpoint/checkpoint.msgpack",
    ):
        assert word in text
