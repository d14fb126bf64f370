"""The attractor_dimension experiment and the chain_spectrum benchmark's smoke run.

The experiment's numbers are checked against independent NumPy float64 computations: the
expansion factors ``f_t(lambda)`` straight from the definition, Benettin's QR sum on the product
of the Gaussian step Jacobians ``U diag(f_t) U^T``, and the Kaplan-Yorke rule written out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pifs_jax import reproduce
from reference import cosine_alpha_bar, expansion_factors, kaplan_yorke_numpy, linear_alpha_bar

#: Every test here runs a whole experiment (quick mode) or a subprocess.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

#: Tolerances (float64): measured vs analytic, and experiment vs the NumPy references here.
TOL_EXPONENTS = 1e-10
TOL_LEADING = 1e-8


# ----------------------------------------------------------------------------- independent references


def alpha_bar_numpy(name: str, T: int = 1000) -> np.ndarray:
    """``alpha_bar[0..T]`` of the linear and cosine (``s = 0.008``, betas clipped at 0.999) schedules."""
    return {"linear": linear_alpha_bar, "cosine": cosine_alpha_bar}[name](T)


def benettin_numpy(alpha_bar: np.ndarray, grid: np.ndarray, lam: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Benettin's sums from ``Q_0 = I`` on ``J_t = U diag(f_t(lambda)) U^T``, coarsest step first, sorted."""
    f = expansion_factors(alpha_bar, grid, lam)[::-1]  # execution order tau_N -> ... -> tau_1
    q = np.eye(lam.size)
    sums = np.zeros(lam.size)
    for row in f:
        y = (basis * row) @ (basis.T @ q)
        q, r = np.linalg.qr(y)
        sums += np.log(np.abs(np.diagonal(r)))
    return np.sort(sums / len(f))[::-1]


# ----------------------------------------------------------------------------- the experiment


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Run the experiment once (quick); hand its module, section and output folder to the tests."""
    module = reproduce.load_experiment(reproduce.discover_experiments()["attractor_dimension"])
    out = tmp_path_factory.mktemp("results")
    section = module.run(out, quick=True)
    return module, section, out


def _chains(section, spectrum="straddling"):
    return [c for c in section["results"]["gaussian"]["chains"] if c["spectrum"] == spectrum]


def test_outputs_written(experiment):
    module, section, out = experiment
    doc = json.loads((out / module.NAME / f"{module.NAME}.json").read_text())
    assert set(doc) == {"config", "seed", "environment", "results"}
    assert doc["config"]["quick"] is True and doc["config"]["x64"] is True
    assert set(doc["results"]) == {"gaussian", "digits", "paper"}
    assert len(section["figures"]) == 5
    for fig in section["figures"]:
        assert (out / fig).read_bytes().startswith(b"\x89PNG")
    markdown = section["markdown"]
    assert "NO" not in markdown.split("|")  # every agreement cell says yes
    assert "λ\\*\\*" in markdown and "paper" in markdown


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_gaussian_spectra_against_numpy(experiment, schedule):
    module, section, _ = experiment
    basis = module.gaussian_basis()
    for chain in _chains(section) + _chains(section, "saturated"):
        if chain["schedule"] != schedule:
            continue
        lam = np.asarray(module.VARIANCES[chain["spectrum"]])
        grid = np.linspace(0, 1000, chain["num_steps"] + 1).astype(int)
        alpha_bar = alpha_bar_numpy(schedule)
        analytic = np.mean(np.log(expansion_factors(alpha_bar, grid, lam)), axis=0)
        np.testing.assert_allclose(chain["analytic_exponents"], analytic, rtol=0, atol=1e-12)
        np.testing.assert_allclose(chain["measured_exponents"], analytic, rtol=0, atol=TOL_EXPONENTS)
        assert chain["measured_dimension"] == pytest.approx(kaplan_yorke_numpy(analytic), abs=1e-8)
        benettin = benettin_numpy(alpha_bar, grid, lam, basis)
        np.testing.assert_allclose(chain["benettin_exponents"], benettin, rtol=0, atol=1e-10)
        if "leading_exponents" in chain:
            leading = analytic[: module.LEADING_K]
            np.testing.assert_allclose(chain["leading_exponents"], leading, rtol=0, atol=TOL_LEADING)


def test_gaussian_claims(experiment):
    module, section, _ = experiment
    g = section["results"]["gaussian"]
    n = g["n"]
    for chain in g["chains"]:
        # sign of each exponent = sign of lambda - lambda** (variances and exponents both descending)
        lam = np.asarray(module.VARIANCES[chain["spectrum"]])
        assert np.array_equal(np.sign(chain["measured_exponents"]), np.sign(lam - chain["lambda_star_star"]))
        assert chain["measured_dimension"] == pytest.approx(chain["analytic_dimension"], abs=1e-8)
        # Benettin from the identity is off by O(1/N), the exact method is not
        assert chain["benettin_max_error"] > 1e-3 > 1e6 * chain["max_error_full"]
    for chain in _chains(section, "saturated"):
        assert chain["measured_dimension"] == n == chain["analytic_dimension"]
        assert chain["n_positive_measured"] == n
    for chain in _chains(section):
        assert 0 < chain["n_expanding"] < n  # the spectrum straddles lambda**
        assert 0 < chain["measured_dimension"] < n


def test_digits_attractor(experiment):
    _module, section, _ = experiment
    import jax.numpy as jnp

    from pifs_jax import kaplan_yorke_dimension

    d = section["results"]["digits"]
    whole = np.asarray(d["whole_chain_exponents"])
    assert whole.shape == (d["trajectories"], 64)
    assert np.all(whole < 0)  # every exponent negative: the chain collapses
    np.testing.assert_array_equal(d["whole_chain_dimension"], 0.0)
    # every reported dimension is the Kaplan-Yorke dimension of its own exponents
    partial = np.asarray(d["partial_exponents"])
    for r in range(d["trajectories"]):
        for j in range(len(d["stops"])):
            own = float(kaplan_yorke_dimension(jnp.asarray(partial[r, j])))
            assert d["partial_dimension"][r][j] == pytest.approx(own, rel=1e-6, abs=1e-9)
            assert own == pytest.approx(kaplan_yorke_numpy(partial[r, j]), rel=1e-6, abs=1e-9)
    assert np.max(d["partial_dimension"]) > 1  # the partial chains do expand
    # x_0 is (a copy of) a training image; held-out digits are far from the training set
    assert np.max(d["x0_minus_nearest_max_abs"]) < 1e-12
    assert np.max(d["nearest_train_distance_rms"]) < 1e-6 < 0.1 < d["test_to_train_distance_rms_median"]
    # attention: diffuse (~ log M) at the start, one-hot at the end
    entropy = np.asarray(d["entropy"])
    assert np.all(entropy[:, 0] > 0.9 * np.log(d["n_train"]))
    assert np.all(entropy[:, -1] < 1e-3)
    assert d["gaussian_fit_dimension"] == pytest.approx(kaplan_yorke_numpy(d["gaussian_fit_exponents"]), rel=1e-9)
    assert d["gaussian_fit_dimension"] > 1


# ----------------------------------------------------------------------------- the benchmark


def test_benchmark_quick_smoke(tmp_path):
    out = tmp_path / "chain_spectrum.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chain_spectrum.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["config"]["quick"] is True
    results = doc["results"]
    assert results["complete"] is True
    for key in ("matmul", "full_small", "full_large", "leading_large", "leading_vs_full", "leading_huge",
                "compile_once", "flops_formula", "machine", "targets"):  # fmt: skip
        assert key in results, key
    small = results["full_small"]
    assert small["jacobian_s_per_step"] > 0 and small["total_s"] > 0
    assert small["memory"]["peak_bytes"] > 0
    assert 0 < small["flop_fraction"]
    assert results["compile_once"]["backend_compiles_during_second_call"] == 0
    assert results["compile_once"]["jit_cache_size_after"] == results["compile_once"]["jit_cache_size_before"] == 1
    assert results["leading_vs_full"]["max_abs_difference_leading_exponents"] < 1e-3
    assert results["leading_huge"]["no_n_by_n_array"] is True
    assert results["matmul"]["flops_per_s"] > 0
    # float32, 10 steps of spread < 1 nat: one QR per 4 steps changes the exponents by rounding only
    assert results["fewer_qrs"]["qr_every"] == 4
    assert results["fewer_qrs"]["max_abs_difference_exponents"] < 1e-5
