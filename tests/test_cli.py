"""The ``pifs-jax`` command: geometry output equals the library, bad input exits 2, help, reproduce."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax import cli

PNGS = ("lstar.png", "expansion_heatmap.png", "lambda_star.png", "log_snr.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(out: Path) -> dict:
    return json.loads((out / "geometry.json").read_text())


def _check_pngs(out: Path) -> None:
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5000, name


# ----------------------------------------------------------------------------- geometry


def test_geometry_writes_json_and_figures_equal_to_library(tmp_path, x64, capsys):
    out = tmp_path / "cos"
    argv = ["geometry", "--schedule", "cosine", "--offset", "0", "--steps", "50", "--x64", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "lambda**" in printed and "geometry.json" in printed

    doc = _load(out)
    assert set(doc) == {"config", "seed", "environment", "results"}
    assert doc["config"]["command"] == "pifs-jax " + " ".join(argv)
    assert doc["config"]["dtype"] == "float64" and doc["config"]["x64"] is True

    sched = pj.cosine(1000, s=0.0)
    grid = pj.uniform_grid(1000, 50)
    res = doc["results"]
    steps = res["per_step"]
    np.testing.assert_array_equal(steps["t"], grid[1:])
    np.testing.assert_array_equal(steps["s"], grid[:-1])
    coeffs = pj.step_coefficients(sched, grid)
    np.testing.assert_allclose(steps["a"], coeffs.a, rtol=1e-14)
    np.testing.assert_allclose(steps["b"], coeffs.b, rtol=1e-14)
    np.testing.assert_allclose(steps["lstar"], pj.contraction_threshold(sched, grid), rtol=1e-14)
    np.testing.assert_allclose(steps["lambda_star"], pj.expansion_threshold(sched, grid), rtol=1e-14)
    np.testing.assert_allclose(steps["log_snr"], np.asarray(sched.log_snr)[grid[1:]], rtol=1e-14)
    lam = np.asarray(res["lambda_grid"])
    assert lam.shape == (101,) and np.isclose(lam[0], 1e-2) and np.isclose(lam[-1], 1e2)
    f = np.asarray(steps["f"])
    assert f.shape == (50, 101)
    np.testing.assert_allclose(f, pj.expansion_factor(sched, lam, grid), rtol=1e-14)

    summary = res["summary"]
    lib = pj.contraction_summary(sched, grid)
    assert summary["num_steps"] == 50 and summary["T"] == 1000
    np.testing.assert_allclose(summary["lstar_mean"], lib.mean, rtol=1e-14)
    np.testing.assert_allclose(summary["lstar_cv"], lib.cv, rtol=1e-14)
    np.testing.assert_allclose(summary["lstar_min"], lib.min, rtol=1e-14)
    np.testing.assert_allclose(summary["lstar_finest"], lib.finest, rtol=1e-14)
    assert summary["lstar_argmin_t"] == 20
    np.testing.assert_allclose(summary["lambda_star_star"], pj.moran_threshold(sched, grid), rtol=1e-14)
    np.testing.assert_allclose(summary["log_snr_max"], sched.log_snr[20], rtol=1e-14)
    _check_pngs(out)


def test_geometry_default_float32_full_chain(tmp_path, x32):
    out = tmp_path / "lin"
    assert cli.main(["geometry", "--schedule", "linear", "--T", "200", "--out", str(out)]) == 0
    doc = _load(out)
    assert doc["config"]["dtype"] == "float32"
    sched = pj.linear(200)
    steps = doc["results"]["per_step"]
    np.testing.assert_array_equal(steps["t"], np.arange(1, 201))
    np.testing.assert_allclose(steps["lstar"], pj.contraction_threshold(sched), rtol=1e-6)
    np.testing.assert_allclose(doc["results"]["summary"]["lambda_star_star"], pj.moran_threshold(sched), rtol=1e-6)
    _check_pngs(out)


def test_geometry_shift_resolution_and_spacing(tmp_path, x64):
    out = tmp_path / "shifted"
    argv = [
        "geometry",
        "--schedule",
        "logsnr_cosine",
        "--T",
        "200",
        "--shift",
        "0.5",
        "--resolution",
        "128",
        "--steps",
        "10",
        "--spacing",
        "trailing",
        "--lambda-range",
        "0.1",
        "10",
        "--num-lambdas",
        "7",
        "--x64",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    doc = _load(out)
    shift = 0.5 + pj.resolution_shift(128)
    np.testing.assert_allclose(doc["config"]["total_log_snr_shift"], shift, rtol=1e-15)
    sched = pj.shift_log_snr(pj.logsnr_cosine(200), shift)
    grid = pj.diffusers_grid(200, 10, spacing="trailing")
    steps = doc["results"]["per_step"]
    np.testing.assert_array_equal(steps["t"], grid[1:])
    np.testing.assert_allclose(steps["log_snr"], np.asarray(sched.log_snr)[grid[1:]], rtol=1e-13)
    np.testing.assert_allclose(steps["lstar"], pj.contraction_threshold(sched, grid), rtol=1e-13)
    np.testing.assert_allclose(doc["results"]["lambda_grid"], np.geomspace(0.1, 10, 7), rtol=1e-15)
    assert np.asarray(steps["f"]).shape == (10, 7)


def test_geometry_from_diffusers_config(tmp_path, x64):
    interop = pytest.importorskip("pifs_jax.interop")
    path = interop.example_config_path("stable_diffusion_v1_5")
    out = tmp_path / "sd"
    assert cli.main(["geometry", "--config", str(path), "--steps", "10", "--x64", "--out", str(out)]) == 0
    doc = _load(out)
    config = interop.load_config(path)
    sched = interop.from_diffusers_config(config)
    grid = interop.diffusers_config_grid({**config, "set_alpha_to_one": True}, 10)
    steps = doc["results"]["per_step"]
    assert doc["results"]["summary"]["T"] == sched.T
    np.testing.assert_array_equal(steps["t"], grid[1:])
    np.testing.assert_allclose(steps["lstar"], pj.contraction_threshold(sched, grid), rtol=1e-14)
    assert doc["config"]["spacing"] == "leading"
    # a bundled example may also be named instead of given as a path
    assert cli.main(["geometry", "--config", "stable_diffusion_v1_5", "--out", str(tmp_path / "sd_all")]) == 0
    assert _load(tmp_path / "sd_all")["results"]["summary"]["num_steps"] == sched.T


BAD_INPUT = [
    (["--schedule", "nonsense"], "--schedule"),
    (["--schedule", "linear", "--offset", "0.01"], "--offset"),
    (["--schedule", "cosine", "--offset", "-1"], "--offset"),
    (["--schedule", "cosine", "--steps", "2000"], "--steps"),
    (["--schedule", "cosine", "--T", "100", "--steps", "101"], "--steps"),
    (["--schedule", "cosine", "--steps", "0"], "--steps"),
    (["--schedule", "cosine", "--steps", "ten"], "--steps"),
    (["--config", "/no/such/scheduler_config.json"], "--config"),
    (["--schedule", "cosine", "--config", "x.json"], "--config"),
    ([], "--schedule"),
    (["--schedule", "cosine", "--lambda-range", "2", "1"], "--lambda-range"),
    (["--schedule", "cosine", "--num-lambdas", "1"], "--num-lambdas"),
    (["--schedule", "cosine", "--resolution", "0"], "--resolution"),
    (["--schedule", "cosine", "--spacing", "leading"], "--spacing"),
    (["--schedule", "cosine", "--steps", "10", "--spacing", "sideways"], "--spacing"),
]


@pytest.mark.parametrize("args, option", BAD_INPUT, ids=[" ".join(a) or "nothing" for a, _ in BAD_INPUT])
def test_geometry_bad_input_exits_2_naming_the_option(args, option, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["geometry", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0] and option in lines[0], err
    assert "Traceback" not in err
    assert not (out / "geometry.json").exists()


def test_missing_subcommand_and_unknown_subcommand_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["transmogrify"]) == 2
    assert "error:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- help and registry


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_top_level_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in text
    assert "examples:" in text


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_subcommand_help_documents_every_option_with_examples(name, capsys):
    assert cli.main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"pifs-jax {name}" in text
    parser = _subparsers(cli.build_parser())[name]
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, option
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{name}: {action.option_strings} has no help text"


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert pj.__version__ in capsys.readouterr().out


def test_registry_shape():
    assert {"geometry", "reproduce"} <= set(cli.SUBCOMMANDS)
    for sub in cli.SUBCOMMANDS.values():
        assert callable(sub.add_arguments) and callable(sub.run)
    with pytest.raises(ValueError, match="subcommand"):
        cli.register_subcommand(cli.SUBCOMMANDS["geometry"])


def test_public_names_and_old_import_paths():
    from pifs_jax import geometry
    from pifs_jax.cli import common
    from pifs_jax.errors import ArgumentError

    assert cli.geometry_arrays is geometry.geometry_arrays  # moved to the library, old path kept
    assert cli.UsageError is common.UsageError and cli.SUBCOMMANDS is common.SUBCOMMANDS
    assert list(cli.SUBCOMMANDS) == ["geometry", "reproduce", "optimize", "train", "sample", "analyze", "design-grid"]
    error = cli.UsageError("--steps", "expected a positive integer, got 0")
    assert isinstance(error, ArgumentError) and isinstance(error, ValueError)
    assert (error.option, error.argument, error.detail) == ("--steps", "--steps", "expected a positive integer, got 0")
    assert str(error) == "--steps: expected a positive integer, got 0"


def test_library_errors_map_to_options_by_argument_not_by_message():
    from pifs_jax.cli.common import usage_error_for
    from pifs_jax.errors import ArgumentError

    options = {"alpha_bar_T": "--alpha-bar-T"}
    mapped = usage_error_for(ArgumentError("alpha_bar_T", "must lie in (0, 1), got 1.5"), options)
    assert (mapped.option, mapped.detail) == ("--alpha-bar-T", "must lie in (0, 1), got 1.5")
    # a plain ValueError is never parsed: no option, or the default one with the whole message
    plain = ValueError("alpha_bar_T: must lie in (0, 1), got 1.5")
    assert usage_error_for(plain, options) is None
    fallback = usage_error_for(plain, options, default="--schedule")
    assert (fallback.option, fallback.detail) == ("--schedule", str(plain))
    assert usage_error_for(ArgumentError("seed", "bad"), options) is None


def test_importing_the_command_imports_no_model_code():
    code = (
        "import sys, pifs_jax.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('pifs_jax.models', 'matplotlib'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- reproduce


def test_reproduce_schedule_geometry_writes_report(tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["reproduce", "--out", str(out), "--only", "schedule_geometry", "--quick", "--no-progress"]) == 0
    assert str(out / "REPORT.md") in capsys.readouterr().out
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# pifs_jax reproduction report")
    assert "## Environment" in report and "## Timing" in report and "jax" in report
    assert "| chain | N | mean L\\* | CV(L\\*) |" in report
    assert "| cosine s = 0, 1000 steps | 1000 |" in report
    assert "1.0024" in report and "four-fold" in report
    assert "FAILED" not in report.replace("0 FAILED", "")
    for fig in ("schedule_geometry/lstar.png", "schedule_geometry/expansion_heatmap_cosine.png"):
        assert f"]({fig})" in report
        assert (out / fig).read_bytes().startswith(PNG_MAGIC)
    assert (out / "schedule_geometry" / "schedule_geometry.json").exists()
    summary = json.loads((out / "reproduction.json").read_text())
    assert summary["results"]["ok"] is True
    assert summary["config"]["only"] == ["schedule_geometry"]


GOOD_EXPERIMENT = """
NAME = "alpha"
TITLE = "A working experiment"

def run(out_dir, *, quick):
    (out_dir / NAME).mkdir(parents=True, exist_ok=True)
    return {"markdown": "| a | b |\\n|---|---|\\n| 1 | 2 |", "summary": "fine"}
"""

BAD_EXPERIMENT = """
NAME = "beta"
TITLE = "A broken experiment"

def run(out_dir, *, quick):
    raise RuntimeError("deliberate failure for the test")
"""


def test_reproduce_reports_failures_and_keeps_going(tmp_path, capsys):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "beta.py").write_text(BAD_EXPERIMENT)
    (experiments / "gamma.py").write_text(GOOD_EXPERIMENT.replace('"alpha"', '"gamma"'))
    (experiments / "_helper.py").write_text("raise RuntimeError('helpers are not experiments')\n")
    out = tmp_path / "results"
    rc = cli.main(["reproduce", "--out", str(out), "--experiments-dir", str(experiments), "--no-progress"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "beta" in captured.err
    report = (out / "REPORT.md").read_text()
    assert "**FAILED**" in report and "deliberate failure for the test" in report
    assert "| 1 | 2 |" in report  # the working experiment still ran, after the failing one
    assert "_helper" not in report
    assert report.index("beta") < report.index("gamma")


def test_reproduce_unknown_only_exits_2(tmp_path, capsys):
    assert cli.main(["reproduce", "--out", str(tmp_path), "--only", "no_such_experiment"]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "schedule_geometry" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the installed executable


def _executable() -> str:
    exe = Path(sys.executable).parent / "pifs-jax"
    if not exe.exists():
        pytest.skip("the pifs-jax console script is not installed next to this Python")
    return str(exe)


def test_installed_executable_runs_geometry(tmp_path):
    out = tmp_path / "exe"
    proc = subprocess.run(
        [_executable(), "geometry", "--schedule", "cosine", "--T", "100", "--steps", "20", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lambda**" in proc.stdout
    assert _load(out)["results"]["summary"]["num_steps"] == 20
    _check_pngs(out)


def test_installed_executable_bad_input(tmp_path):
    proc = subprocess.run(
        [_executable(), "geometry", "--schedule", "sigmoid", "--offset", "0.1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--offset" in errors[0]
