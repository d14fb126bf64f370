"""Kaplan-Yorke dimension: edge cases of the general rule, multiplicities, the patch form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from reference import kaplan_yorke_numpy


@pytest.mark.parametrize(
    "exponents, expected",
    [
        ([1.0, -3.0], 4 / 3),
        ([-3.0, 1.0], 4 / 3),
        ([-0.1, -2.0], 0.0),
        ([0.5, 0.2, 0.1], 3.0),
        ([0.41922, -1.62319], 1 + 0.41922 / 1.62319),
        ([2.0, 1.0, -1.0, -5.0], 3 + 2 / 5),
    ],
)
def test_general_rule(x64, exponents, expected):
    assert float(pj.kaplan_yorke_dimension(jnp.array(exponents))) == pytest.approx(expected, rel=1e-12)
    assert float(jax.jit(pj.kaplan_yorke_dimension)(jnp.array(exponents))) == pytest.approx(expected, rel=1e-12)


def test_random_spectra_match_the_loop(x64):
    """200 random spectra of 1..11 exponents; one compilation per length (eager calls are covered above)."""
    dimension = jax.jit(pj.kaplan_yorke_dimension)
    rng = np.random.default_rng(0)
    for _ in range(200):
        e = rng.normal(size=rng.integers(1, 12)) + rng.normal()
        assert float(dimension(jnp.array(e))) == pytest.approx(kaplan_yorke_numpy(e.tolist()), rel=1e-12, abs=1e-12)


def test_multiplicities_equal_the_expanded_spectrum(x64):
    rng = np.random.default_rng(1)
    for _ in range(100):
        m = rng.integers(1, 6)
        e = rng.normal(size=m) + 0.3
        n = rng.integers(1, 5, size=m)
        expanded = np.repeat(e, n)
        got = float(pj.kaplan_yorke_dimension(jnp.array(e), jnp.array(n)))
        assert got == pytest.approx(kaplan_yorke_numpy(expanded.tolist()), rel=1e-12, abs=1e-12)


def test_patch_form_cross_check(x64):
    e, n = jnp.array([0.02, -0.05, -0.5]), jnp.array([4.0, 8.0, 4.0])
    assert float(pj.kaplan_yorke_patch_form(e, n)) == pytest.approx(4 + 0.08 / 0.05)
    np.testing.assert_allclose(pj.kaplan_yorke_patch_form(e, n), pj.kaplan_yorke_dimension(e, n), rtol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="exponents"):
        pj.kaplan_yorke_dimension(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="multiplicities"):
        pj.kaplan_yorke_dimension(jnp.array([1.0, -1.0]), jnp.array([1.0]))
    with pytest.raises(ValueError, match="exponents"):
        pj.kaplan_yorke_dimension(jnp.array([1.0, jnp.nan]))
