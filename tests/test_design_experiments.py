"""The schedule-design experiments: Align Your Steps (criterion 3) and the target dimension reached through the measured spectrum."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from pifs_jax import optimize, reproduce

#: Every test here runs a whole experiment (quick mode) or a subprocess.
pytestmark = pytest.mark.slow


def _load(name):
    return reproduce.load_experiment(reproduce.discover_experiments()[name])


def scaled_linear_lstar(T: int = 1000) -> np.ndarray:
    """``L*_u`` of the full scaled_linear chain, NumPy float64 from the definition."""
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), T) ** 2
    ab = np.concatenate([[1.0], np.cumprod(1 - betas)])
    a = np.sqrt(ab[:-1] / ab[1:])
    sigma = np.sqrt(1 - ab)
    return (sigma[:-1] + a * sigma[1:]) / (1 + a)


@pytest.fixture(scope="module")
def ays(tmp_path_factory):
    module = _load("align_your_steps")
    out = tmp_path_factory.mktemp("results")
    return module, module.run(out, quick=True), out


def test_align_your_steps_grids_and_distances(ays):
    module, section, out = ays
    rows = section["results"]["grids"]
    ours = rows["criterion 3 (work 1/L*)"]
    grid = np.asarray(ours["grid"])
    assert grid[0] == 0 and grid[-1] == 1000 and len(grid) == 11 and np.all(np.diff(grid) > 0)
    # independent: equal sums of 1/L*_u, by inverting the cumulative sum in NumPy
    cumulative = np.concatenate([[0.0], np.cumsum(1 / scaled_linear_lstar())])
    exact = np.interp(np.arange(11) / 10 * cumulative[-1], cumulative, np.arange(1001))
    assert np.max(np.abs(grid - exact)) <= 1.0
    # the published lists come back in diffusers indexing, and the stated distances are what they say
    np.testing.assert_array_equal(rows["AYS SD 1.5"]["diffusers_timesteps"], module.PAPER["AYS_SD15"])
    np.testing.assert_array_equal(rows["AYS SDXL"]["diffusers_timesteps"], module.PAPER["AYS_SDXL"])
    for label, reference in (("AYS SD 1.5", module.PAPER["AYS_SD15"]), ("AYS SDXL", module.PAPER["AYS_SDXL"])):
        ours_diffusers = np.asarray(ours["diffusers_timesteps"])
        assert ours[f"mean_abs_dt_vs_{label}"] == pytest.approx(np.mean(np.abs(ours_diffusers - np.asarray(reference))))
        assert rows[label][f"mean_abs_dt_vs_{label}"] == 0.0
    assert ours["cv_work"] < 0.05 < rows["AYS SDXL"]["cv_work"] < rows["uniform (= trailing)"]["cv_work"]
    opt = section["results"]["optimizer"]
    assert opt["max_abs_difference_to_closed_form"] < 1e-2  # gradient descent reaches the closed form
    for fit in section["results"]["density_exponent_fit"].values():
        assert 0.0 <= fit["p"] <= 1.5
    doc = json.loads((out / module.NAME / "align_your_steps.json").read_text())
    assert doc["results"]["grids"]["criterion 3 (work 1/L*)"]["grid"] == grid.tolist()
    for fig in section["figures"]:
        assert (out / fig).read_bytes().startswith(b"\x89PNG")
    assert "Comparison with the paper" in section["markdown"]


def test_target_dimension_measured_route_approaches_the_target_and_equals_analytic():
    """Part 3 in miniature: 25 iterations toward d_KY = 4.75 through the measured spectrum; the
    analytic dimension of the schedules it passes through is the measured one (Gaussian data)."""
    module = _load("target_dimension")
    with jax.enable_x64(True):
        setup = module.problem()
        objectives = module.dimension_objectives(setup, 4.75)
        result = optimize.optimize_schedule(
            setup["family"],
            setup["params"],
            objectives["gaussian_measured"],
            iterations=25,
            learning_rate=module.LEARNING_RATE,
            progress=False,
        )
        for sched, measured in ((result.initial_schedule, result.initial), (result.schedule, result.final)):
            _analytic_loss, analytic = objectives["gaussian_analytic"](sched)
            assert float(analytic["dimension"]) == pytest.approx(measured["dimension"], abs=1e-10)
    start_error = abs(result.initial["dimension"] - 4.75)
    assert start_error > 0.3
    assert abs(result.final["dimension"] - 4.75) < 0.2 * start_error
