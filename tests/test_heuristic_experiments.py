"""The four heuristic experiments (quick mode) against independent NumPy float64 computations.

Each experiment runs once per module (fixtures); the expected numbers are recomputed here from
closed forms and textbook formulas (direct ``f_t``, bisection for ``lambda**``, per-patch
covariances by reshaping), not read back from the package's helpers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pifs_jax import reproduce
from reference import (
    cosine_alpha_bar,
    cosine_beta_1,
    cosine_one_minus_c,
    cv,
    expansion_factors,
    information_gain_numpy,
    linear_alpha_bar,
    moran_root_numpy,
)

#: Every test here runs a whole experiment (quick mode) or a subprocess.
pytestmark = pytest.mark.slow

PIXEL_BIN = 1 / 127.5


# ----------------------------------------------------------------------------- independent references


def finest_lstar(T: int, s: float) -> float:
    """``L*_1 = a sigma/(1 + a) = sqrt((1 - c)/(1 + c))`` for the step ``1 -> 0``."""
    c, one_minus_c = cosine_one_minus_c(T, s)
    return math.sqrt(one_minus_c / (1 + c))


def sqrt_beta_1(T: int, s: float) -> float:
    return math.sqrt(cosine_beta_1(T, s))


def log_f(alpha_bar: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``log f_t(lambda)`` from the textbook formula, steps ``t = 1..T`` (rows) by variances (columns)."""
    return np.log(expansion_factors(alpha_bar, np.arange(alpha_bar.size), lam))


def moran_root(alpha_bar: np.ndarray) -> float:
    return moran_root_numpy(alpha_bar, np.arange(alpha_bar.size))


def dimension_growth(alpha_bar: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``Delta d_t = sum_{expanding} log f_t / (N |Lambda_{k*}|)``, all steps."""
    lf = log_f(alpha_bar, lam)
    exps = lf.mean(axis=0)
    expanding = exps > 0
    least = exps[~expanding].max()
    return lf[:, expanding].sum(axis=1) / (lf.shape[0] * abs(least))


def information_gain(alpha_bar: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``IG_t = 1/2 sum log((1 + SNR_s lambda)/(1 + SNR_t lambda))`` for steps ``t = 2..T``."""
    return information_gain_numpy(alpha_bar, np.arange(alpha_bar.size), lam)[1:]


def average_ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(x.size)
    ranks[np.argsort(x)] = np.arange(1, x.size + 1)
    return ranks  # the series compared here have no ties


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


@pytest.fixture(scope="module")
def photos32_variances():
    """The quick experiments' spectrum (1024 photos32 crops, key 0), by reshaping and np.cov."""
    import jax

    from pifs_jax import data

    with jax.enable_x64(True):
        crops = np.asarray(data.load_dataset("photos32", jax.random.key(0), 1024), dtype=np.float64)
    n = crops.shape[0]
    patches = crops.reshape(n, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 16, 192)
    return np.concatenate([np.linalg.eigvalsh(np.cov(patches[:, k, :], rowvar=False)) for k in range(16)])


def run_quick(name: str, tmp_path_factory):
    module = reproduce.load_experiment(reproduce.discover_experiments()[name])
    out = tmp_path_factory.mktemp(name)
    return module, module.run(out, quick=True), out


def check_outputs(module, section, out) -> dict:
    doc = json.loads((out / module.NAME / f"{module.NAME}.json").read_text())
    assert set(doc) == {"config", "seed", "environment", "results"}
    assert doc["config"]["quick"] is True and doc["config"]["x64"] is True
    assert section["figures"]
    for fig in section["figures"]:
        assert (out / fig).read_bytes().startswith(b"\x89PNG")
    assert isinstance(section["markdown"], str) and "paper" in section["markdown"]
    return doc


# ----------------------------------------------------------------------------- cosine_offset


@pytest.fixture(scope="module")
def cosine_offset(tmp_path_factory):
    return run_quick("cosine_offset", tmp_path_factory)


def test_cosine_offset_gain_and_constraint(cosine_offset):
    module, section, out = cosine_offset
    check_outputs(module, section, out)
    per_T = section["results"]["per_T"]
    for T in (1000, 4000):
        c = per_T[str(T)]
        assert c["gain_default_over_s0"] == pytest.approx(finest_lstar(T, 0.008) / finest_lstar(T, 0.0), rel=1e-12)
        # s_max by plain bisection on the closed form of sqrt(beta_1)
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if sqrt_beta_1(T, mid) < PIXEL_BIN else (lo, mid)
        assert c["s_max"] == pytest.approx(0.5 * (lo + hi), rel=1e-10)
        assert c["s_max_point"]["sqrt_beta_1"] == pytest.approx(PIXEL_BIN, rel=1e-10)
        assert c["sqrt_beta_1_default_in_bins"] == pytest.approx(sqrt_beta_1(T, 0.008) / PIXEL_BIN, rel=1e-10)
        assert c["default_fraction_of_constrained_optimum"] == pytest.approx(
            finest_lstar(T, 0.008) / finest_lstar(T, c["s_max"]), rel=1e-10
        )
    assert 3.5 < per_T["1000"]["gain_default_over_s0"] < 4.5  # the paper's "about four-fold"
    assert 0.0 < 0.008 < per_T["1000"]["s_max"] < 0.0125


def test_cosine_offset_weakest_link_sits_at_the_finest_step(cosine_offset):
    _, section, _ = cosine_offset
    sweep = section["results"]["sweep"]
    assert sweep["min_always_at_finest_step"] and sweep["min_increasing_in_s"]
    s = np.asarray(sweep["s"])
    np.testing.assert_allclose(sweep["lstar_min"], [finest_lstar(1000, x) for x in s], rtol=1e-10)
    assert "NO" not in section["markdown"].split("|")


def test_cosine_offset_runs_as_a_script(cosine_offset, tmp_path, capsys):
    module, _, _ = cosine_offset
    assert module.main(["--out", str(tmp_path), "--quick"]) == 0
    assert "four-fold" in capsys.readouterr().out
    assert (tmp_path / "cosine_offset" / "cosine_offset.json").exists()


# ----------------------------------------------------------------------------- resolution_shift


@pytest.fixture(scope="module")
def resolution_shift(tmp_path_factory):
    return run_quick("resolution_shift", tmp_path_factory)


def test_resolution_shift_invariance(resolution_shift):
    module, section, out = resolution_shift
    check_outputs(module, section, out)
    inv = section["results"]["invariance"]
    ab = cosine_alpha_bar()
    for key, chain in inv.items():
        n = 50 if key.endswith("ddim50") else 1000
        ab_T = cosine_alpha_bar()[-1] if key.startswith("cosine") else linear_alpha_bar()[-1]
        for row in chain["rows"]:
            assert row["max_abs_diff_log_g"] < 1e-12
            assert row["max_rel_diff_information_gain"] < 1e-12
            assert row["max_abs_diff_exponents_minus_offset"] < 1e-14
            assert row["exponent_offset"] == pytest.approx(math.log(ab_T + row["c"] * (1 - ab_T)) / (2 * n), rel=1e-9)
            assert row["rel_diff_prediction"] < 1e-10
            assert abs(row["lambda_star_star_shifted"] - 1) < 0.1  # stays near 1 ...
            assert (
                abs(math.log(row["lambda_star_star_shifted_over_c"] / chain["lambda_star_star"])) > 0.6
            )  # ... not c lambda**
    # independent lambda** of a shifted chain: logSNR' = logSNR - log 4, alpha_bar' = sigmoid(logSNR')
    row = next(r for r in inv["cosine"]["rows"] if r["c"] == 4.0)
    log_snr = np.log(ab[1:]) - np.log1p(-ab[1:]) - math.log(4.0)
    shifted = np.concatenate([[1.0], 1 / (1 + np.exp(-log_snr))])
    assert row["lambda_star_star_shifted"] == pytest.approx(moran_root(shifted), rel=1e-8)
    assert inv["cosine"]["lambda_star_star"] == pytest.approx(moran_root(ab), rel=1e-8)


def test_resolution_shift_photographs(resolution_shift):
    from pifs_jax import data

    _, section, _ = resolution_shift
    photos = section["results"]["photographs"]
    d = np.asarray(photos["resolution"])
    assert list(d) == [256, 128, 64, 32]
    frac = photos["fixed_fraction"]
    # recompute one point: d = 64 (downsample 8), 2x2x3 windows at every position
    windows = []
    for name in data.PHOTO_NAMES:
        image = np.asarray(data.load_photo(name, 8))
        h, w, _ = image.shape
        windows += [image[i : i + 2, j : j + 2].reshape(-1) for i in range(h - 1) for j in range(w - 1)]
    lead = np.linalg.eigvalsh(np.cov(np.array(windows), rowvar=False))[-1]
    assert frac["leading"][list(d).index(64)] == pytest.approx(lead, rel=1e-10)
    assert photos["fixed_patch"]["2"]["leading"][list(d).index(64)] == pytest.approx(lead, rel=1e-10)
    # slopes are least-squares fits of the reported values
    assert frac["slope_leading"] == pytest.approx(np.polyfit(np.log(d), np.log(frac["leading"]), 1)[0], rel=1e-12)
    assert 1.8 < frac["slope_leading"] < 2.2  # a fixed image fraction follows the 2 log(64/d) rule
    assert all(s["slope_leading"] < 1.0 for s in photos["fixed_patch"].values())  # fixed patches do not
    np.testing.assert_allclose(photos["rule_shift"], 2 * np.log(64 / d), rtol=1e-14)
    np.testing.assert_allclose(frac["implied_shift"], photos["rule_shift"], atol=0.1)


# ----------------------------------------------------------------------------- min_snr


@pytest.fixture(scope="module")
def min_snr(tmp_path_factory):
    return run_quick("min_snr", tmp_path_factory)


def test_min_snr_balance_against_numpy(min_snr, photos32_variances):
    module, section, out = min_snr
    check_outputs(module, section, out)
    results = section["results"]
    lam = photos32_variances
    for name, ab in (("linear", linear_alpha_bar()), ("cosine", cosine_alpha_bar())):
        snr = ab[2:] / (1 - ab[2:])
        w5 = np.minimum(snr, 5.0) / snr
        entry = results["main"][name]
        ig = information_gain(ab, lam)
        assert entry["information"]["unweighted"] == pytest.approx(cv(ig), rel=1e-7)
        assert entry["information"]["at_default"] == pytest.approx(cv(w5 * ig), rel=1e-7)
        growth = np.abs(dimension_growth(ab, lam))[1:]
        assert entry["growth"]["at_default"] == pytest.approx(cv(w5 * growth), rel=1e-7)
        loss = np.sum(snr[:, None] * lam / (1 + snr[:, None] * lam), axis=1)
        gammas = np.asarray(results["gammas"])
        for i in (0, 17, 40):
            w = np.minimum(snr, gammas[i]) / snr
            assert entry["eps_loss"]["curve"][i] == pytest.approx(cv(w * loss), rel=1e-7)
        # Min-SNR balances the information gain, not the dimension growth
        assert entry["information"]["at_default"] < 0.3 * entry["information"]["unweighted"]
        assert not entry["growth"]["weighting_helps"]
        assert entry["information"]["default_share_of_reduction"] > 0.7


# ----------------------------------------------------------------------------- information_gain


@pytest.fixture(scope="module")
def information_gain_experiment(tmp_path_factory):
    return run_quick("information_gain", tmp_path_factory)


def test_information_gain_table_against_numpy(information_gain_experiment, photos32_variances):
    module, section, out = information_gain_experiment
    check_outputs(module, section, out)
    results = section["results"]
    assert results["excluded_steps"] == [1]
    lam = photos32_variances
    main = results["spectra"]["photos32"]
    assert main["num_variances"] == 3072
    for name, ab in (
        ("linear", linear_alpha_bar()),
        ("cosine", cosine_alpha_bar()),
        ("cosine_s0", cosine_alpha_bar(s=0.0)),
    ):
        chain = main["chains"][name]
        growth = dimension_growth(ab, lam)[1:]
        ig = information_gain(ab, lam)
        assert len(chain["information"]) == len(chain["growth"]) == 999  # t = 1 excluded
        assert chain["cv_abs_growth"] == pytest.approx(cv(np.abs(growth)), rel=1e-7)
        assert chain["cv_information"] == pytest.approx(cv(ig), rel=1e-7)
        assert chain["spearman"] == pytest.approx(spearman(ig, growth), abs=1e-9)
        # the marginal entropy gain over the expanding directions, from the variances of x_t
        lam_ss = moran_root(ab)
        assert chain["lambda_star_star"] == pytest.approx(lam_ss, rel=1e-8)
        v = ab[:, None] * lam[lam > lam_ss] + (1 - ab)[:, None]
        entropy = 0.5 * np.sum(np.log(v[:-1] / v[1:]), axis=1)[1:]
        assert chain["cv_entropy_gain"] == pytest.approx(cv(entropy), rel=1e-6)
        assert chain["spearman_entropy_gain"] > 0.9999  # the paper's "about 0.9999"
    # the paper's CV(|Δd|) pair is matched within 0.1, with cosine the more uniform
    assert abs(main["chains"]["linear"]["cv_abs_growth"] - 0.836) < 0.1
    assert abs(main["chains"]["cosine"]["cv_abs_growth"] - 0.570) < 0.05
    assert all(results["cosine_more_uniform_everywhere"].values())
