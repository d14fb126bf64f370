"""Experiment scripts: the reproduction runner's contract and the numbers each experiment reports.

Expectations are derived independently of the package where possible (closed forms, NumPy
float64 recomputations), so these tests check the experiments, not only their plumbing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pifs_jax import reproduce
from reference import cosine_alpha_bar, cosine_one_minus_c, linear_alpha_bar, lstar_numpy, moran_root_numpy

# ----------------------------------------------------------------------------- independent references


def finest_lstar_cosine(T: int = 1000, s: float = 0.008) -> float:
    """``L*`` of the step ``1 -> 0`` of the cosine schedule in closed form, cancellation-free.

    With ``c = sqrt(alpha_bar_1)``: ``a = 1/c``, ``sigma_1 = sqrt(1 - c^2)``, so
    ``L* = a sigma_1 / (1 + a) = sqrt((1 - c)/(1 + c))``.
    """
    c, one_minus_c = cosine_one_minus_c(T, s)
    return math.sqrt(one_minus_c / (1 + c))


# ----------------------------------------------------------------------------- runner contract


def test_experiments_are_discovered_and_loadable():
    found = reproduce.discover_experiments()
    assert "schedule_geometry" in found
    assert all(not path.name.startswith("_") for path in found.values())
    assert list(found) == sorted(found)
    for name, path in found.items():
        module = reproduce.load_experiment(path)
        assert module.NAME == name
        assert isinstance(module.TITLE, str) and module.TITLE
        assert callable(module.run)


def test_markdown_helpers():
    table = reproduce.markdown_table(["a", "b"], [(1, 0.123456789), ("x|y", None)], digits=4)
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| x\\|y | — |"]
    with pytest.raises(ValueError, match="rows"):
        reproduce.markdown_table(["a", "b"], [(1,)])
    assert reproduce.format_value(float("nan")) == "nan"
    assert reproduce.format_value(np.float32(2.5)) == "2.5"


def test_unknown_only_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="only"):
        reproduce.run_reproduction(tmp_path, only=["no_such_experiment"], progress=False)


def test_default_experiments_are_the_repository_folder():
    """From a clone (installed editable or not) the bundled experiments are ``experiments/`` itself."""
    repository_folder = Path(__file__).resolve().parents[1] / "experiments"
    assert reproduce.default_experiments_dir() == repository_folder
    expected = sorted(p.stem for p in repository_folder.glob("*.py") if not p.name.startswith("_"))
    assert list(reproduce.discover_experiments()) == expected
    assert "__init__" not in reproduce.discover_experiments()


USER_EXPERIMENT = """
NAME = "{name}"
TITLE = "A user's own experiment"


def run(out_dir, *, quick):
    from _user_helpers import ANSWER  # a helper next to the script, importable while it runs

    return {{"markdown": f"answer {{ANSWER}}, quick={{quick}}", "summary": "fine"}}
"""


def test_a_folder_of_ones_own_scripts_runs_instead_of_the_bundled_ones(tmp_path):
    folder = tmp_path / "my_experiments"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "_user_helpers.py").write_text("ANSWER = 42\n")
    (folder / "mine.py").write_text(USER_EXPERIMENT.format(name="mine"))
    assert list(reproduce.discover_experiments(folder)) == ["mine"]
    report = reproduce.run_reproduction(tmp_path / "out", quick=True, experiments_dir=folder, progress=False)
    assert report.ok and [o.name for o in report.outcomes] == ["mine"]
    assert report.outcomes[0].markdown == "answer 42, quick=True"
    assert "answer 42, quick=True" in report.report_path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="experiments_dir"):
        reproduce.discover_experiments(tmp_path / "no_such_folder")


LONG_EXPERIMENT = """
NAME = "long"
TITLE = "An experiment with a long form"


def run(out_dir, *, quick, full=False):
    return {"markdown": f"quick={quick}, full={full}"}
"""


def test_full_reaches_only_the_experiments_with_a_long_form(tmp_path):
    folder = tmp_path / "exps"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "_user_helpers.py").write_text("ANSWER = 42\n")
    (folder / "long.py").write_text(LONG_EXPERIMENT)
    (folder / "mine.py").write_text(USER_EXPERIMENT.format(name="mine"))
    report = reproduce.run_reproduction(tmp_path / "out", full=True, experiments_dir=folder, progress=False)
    assert report.ok
    assert {o.name: o.markdown for o in report.outcomes} == {
        "long": "quick=False, full=True",
        "mine": "answer 42, quick=False",
    }
    assert "full (long runs)" in report.report_path.read_text(encoding="utf-8")
    default = reproduce.run_reproduction(tmp_path / "out2", only=["long"], experiments_dir=folder, progress=False)
    assert default.outcomes[0].markdown == "quick=False, full=False"
    with pytest.raises(ValueError, match="full"):
        reproduce.run_reproduction(tmp_path / "out3", quick=True, full=True, experiments_dir=folder, progress=False)


# ----------------------------------------------------------------------------- schedule_geometry


@pytest.fixture(scope="module")
def schedule_geometry(tmp_path_factory):
    """Run the experiment once (quick) and hand its module, section and output folder to the tests."""
    module = reproduce.load_experiment(reproduce.discover_experiments()["schedule_geometry"])
    out = tmp_path_factory.mktemp("results")
    section = module.run(out, quick=True)
    return module, section, out


def test_lambda_star_star_matches_the_paper(schedule_geometry):
    _, section, _ = schedule_geometry
    chains = section["results"]["chains"]
    value = chains["cosine_s0"]["lambda_star_star"]
    assert round(value, 4) in (1.0024, 1.0025)
    assert abs(value - 1.0024) < 1e-4
    assert math.floor(value * 1e4) / 1e4 == 1.0024  # the paper's figure, truncated
    assert abs(chains["cosine_s0.008"]["lambda_star_star"] - 1.0024) < 2e-4


@pytest.mark.parametrize(
    "key, alpha_bar, grid",
    [
        ("linear", linear_alpha_bar(), np.arange(1001)),
        ("cosine_s0", cosine_alpha_bar(s=0.0), np.arange(1001)),
        ("cosine_s0.008", cosine_alpha_bar(s=0.008), np.arange(1001)),
        ("ddim50_cosine_s0", cosine_alpha_bar(s=0.0), np.arange(0, 1001, 20)),
    ],
)
def test_chain_numbers_against_numpy_float64(schedule_geometry, key, alpha_bar, grid):
    _, section, _ = schedule_geometry
    chain = section["results"]["chains"][key]
    lstar = lstar_numpy(alpha_bar, grid)
    assert chain["num_steps"] == len(grid) - 1
    np.testing.assert_array_equal(chain["t"], grid[1:])
    np.testing.assert_allclose(chain["lstar"], lstar, rtol=1e-8)
    np.testing.assert_allclose(chain["lstar_mean"], lstar.mean(), rtol=1e-10)
    np.testing.assert_allclose(chain["lstar_cv"], lstar.std() / lstar.mean(), rtol=1e-9)  # population std
    np.testing.assert_allclose(chain["lstar_min"], lstar.min(), rtol=1e-8)
    assert chain["lstar_argmin_t"] == grid[1]  # the finest step is the weakest link
    np.testing.assert_allclose(chain["lambda_star_star"], moran_root_numpy(alpha_bar, grid), rtol=1e-9)


def test_finest_lstar_closed_forms(schedule_geometry):
    _, section, _ = schedule_geometry
    chains = section["results"]["chains"]
    # linear: alpha_bar_1 = 1 - 1e-4, c = sqrt(alpha_bar_1), L* = sqrt((1 - c)/(1 + c))
    c = math.sqrt(1 - 1e-4)
    expected_linear = math.sqrt((1e-4 / (1 + c)) / (1 + c))
    assert chains["linear"]["lstar_finest"] == pytest.approx(expected_linear, rel=1e-12)
    # cosine s = 0: L*_1 = tan(phi_1 / 2) with phi_1 = (tau_1 / T) pi / 2
    assert chains["cosine_s0"]["lstar_finest"] == pytest.approx(math.tan(math.pi / 4000), rel=1e-12)
    assert chains["cosine_s0"]["lstar_finest"] == pytest.approx(finest_lstar_cosine(s=0.0), rel=1e-12)
    assert chains["cosine_s0.008"]["lstar_finest"] == pytest.approx(finest_lstar_cosine(s=0.008), rel=1e-12)
    assert chains["ddim50_cosine_s0"]["lstar_finest"] == pytest.approx(math.tan(math.pi / 200), rel=1e-12)
    # and L*_1 ~ sigma_1 / 2
    for chain in chains.values():
        assert chain["lstar_finest"] == pytest.approx(chain["sigma_finest"] / 2, rel=1e-3)


def test_cosine_offset_gain_is_about_four_fold(schedule_geometry):
    _, section, _ = schedule_geometry
    gain = section["results"]["cosine_offset_gain"]
    assert 3.5 < gain < 4.5
    independent = finest_lstar_cosine(s=0.008) / finest_lstar_cosine(s=0.0)
    assert gain == pytest.approx(independent, rel=1e-12)


def test_linear_has_the_most_uniform_lstar(schedule_geometry):
    _, section, _ = schedule_geometry
    results = section["results"]
    assert results["most_uniform_lstar_1000_step"] == "linear"
    chains = results["chains"]
    assert chains["linear"]["lstar_cv"] < chains["cosine_s0.008"]["lstar_cv"] < chains["cosine_s0"]["lstar_cv"]


def test_lambda_star_about_one_mid_chain_and_two_at_the_finest_step(schedule_geometry):
    _, section, _ = schedule_geometry
    for chain in section["results"]["chains"].values():
        assert chain["lambda_star_median"] == pytest.approx(1.0, abs=0.06)
        assert chain["lambda_star_finest"] == pytest.approx(2.0, abs=1e-3)


def test_outputs_written(schedule_geometry):
    module, section, out = schedule_geometry
    folder = out / module.NAME
    doc = json.loads((folder / "schedule_geometry.json").read_text())
    assert set(doc) == {"config", "seed", "environment", "results"}
    assert doc["config"]["x64"] is True and doc["config"]["quick"] is True
    written = doc["results"]["chains"]["cosine_s0"]
    assert written["lambda_star_star"] == section["results"]["chains"]["cosine_s0"]["lambda_star_star"]
    for fig in section["figures"]:
        assert (out / fig).read_bytes().startswith(b"\x89PNG")
    markdown = section["markdown"]
    assert "1.0024" in markdown and "four-fold" in markdown
    assert "NO" not in markdown.split("|")  # every agreement cell says yes
    assert "MISMATCH" not in markdown


def test_runs_as_a_script(schedule_geometry, tmp_path, capsys):
    module, _, _ = schedule_geometry
    assert module.main(["--out", str(tmp_path), "--quick"]) == 0
    assert "1.0024" in capsys.readouterr().out
    assert (tmp_path / "schedule_geometry" / "schedule_geometry.json").exists()


def test_experiment_command_line_offers_the_options_its_run_takes(tmp_path, capsys):
    """``--tables``, ``--models``, ``--methods`` and ``--evaluate`` reach ``run`` when it takes them; two modes are refused by name."""
    calls = []

    def run(out_dir, *, quick, full=False, tables=False, models=None, methods=None, evaluate=None):
        calls.append({"quick": quick, "full": full, "tables": tables, "models": models, "methods": methods,
                      "evaluate": evaluate})  # fmt: skip
        return {"markdown": "done"}

    argv = ["--out", str(tmp_path), "--tables", "--models", "dit-digits", "mixture", "--methods", "gits", "oracle"]
    assert reproduce.experiment_main("toy", None, run, quick_help="q", argv=argv) == 0
    assert reproduce.experiment_main("toy", None, run, quick_help="q", argv=["--out", str(tmp_path), "--full",
                                                                             "--evaluate", "512"]) == 0  # fmt: skip
    assert calls == [
        {"quick": False, "full": False, "tables": True, "models": ["dit-digits", "mixture"], "methods": ["gits", "oracle"],
         "evaluate": None},
        {"quick": False, "full": True, "tables": False, "models": None, "methods": None, "evaluate": 512},
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # not an integer: argparse names the option
        reproduce.experiment_main("toy", None, run, quick_help="q", argv=["--out", str(tmp_path), "--evaluate", "1e3"])
    assert "--evaluate: invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.experiment_main(
            "toy", None, run, quick_help="q", argv=["--out", str(tmp_path), "--quick", "--tables"]
        )
    assert "--quick and --tables exclude each other" in capsys.readouterr().err

    def plain(out_dir, *, quick):
        return {"markdown": "plain"}

    with pytest.raises(SystemExit):  # not offered to a run that does not take it
        reproduce.experiment_main("toy2", None, plain, quick_help="q", argv=["--out", str(tmp_path), "--tables"])
    assert "unrecognized arguments: --tables" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.experiment_main("toy3", None, plain, quick_help="q", argv=["--out", str(tmp_path), "--methods", "a"])
    assert "unrecognized arguments: --methods a" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.experiment_main("toy4", None, plain, quick_help="q", argv=["--out", str(tmp_path), "--evaluate", "8"])
    assert "unrecognized arguments: --evaluate 8" in capsys.readouterr().err
