"""Boundary checks of ``pifs_jax._validation``: every failure is an ``ArgumentError`` naming the argument.

Each case compares ``.argument``, ``.detail`` and the message ``"argument: detail"`` with the
expected text; valid input passes and is returned unchanged (as the documented type).
"""

from __future__ import annotations

import numpy as np
import pytest

from pifs_jax import _validation as v
from pifs_jax.errors import ArgumentError


def _raises(argument: str, detail_start: str, check, *args, **kwargs) -> ArgumentError:
    with pytest.raises(ArgumentError) as info:
        check(*args, **kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.argument == argument
    assert error.detail.startswith(detail_start), error.detail
    assert str(error) == f"{argument}: {error.detail}"
    return error


def test_every_check_raises_argument_error_with_the_argument_name():
    _raises(
        "sched",
        "expected a pifs_jax Schedule, got int",
        v.check_instance,
        3,
        dict,
        name="sched",
        what="pifs_jax Schedule",
    )
    _raises("alpha_bar", "alpha_bar[0] must be exactly 1", v.check_log_alpha_bar, np.log([0.9, 0.5]))
    _raises("ab", "expected a 1-D array of shape (T+1,)", v.check_log_alpha_bar, np.zeros(1), name="ab")
    _raises("alpha_bar", "must be strictly decreasing", v.check_log_alpha_bar, np.log([1.0, 0.5, 0.6]))
    _raises("sched", "gaps must have shape (T,) = (2,)", v.check_gaps, np.log([1.0, 0.5, 0.2]), np.ones(3))
    _raises("grid", "must start at tau_0 = 0", v.check_grid, np.array([1, 2]), 10)
    _raises("grid", "last timestep tau_N = 11 exceeds", v.check_grid, np.array([0, 11]), 10)
    _raises("lambdas", "variances must be >= 0", v.check_variances, [1.0, -1.0], name="lambdas")
    _raises("n", "expected an integer >= 1, got 0", v.check_positive_int, 0, name="n")
    _raises("n", "expected an integer >= 1, got True", v.check_positive_int, True, name="n")
    _raises("sizes", "expected shape (2,) (one per variance)", v.patch_variance_arrays, [1.0, 2.0], [1.0], np.float32)
    _raises("mean", "must be finite", v.check_finite, [0.0, np.nan], "mean")
    _raises(
        "photos", "expected a non-empty subset of ('a', 'b')", v.check_subset, ["a", "c"], ("a", "b"), name="photos"
    )
    _raises("photos", "expected a non-empty subset", v.check_subset, [], ("a", "b"), name="photos")


def test_valid_input_passes():
    assert v.check_positive_int(np.int64(3), name="n") == 3 and type(v.check_positive_int(3, name="n")) is int
    np.testing.assert_array_equal(v.check_finite([1, 2], "x"), np.array([1.0, 2.0]))
    assert v.check_finite([1, 2], "x").dtype == np.float64
    assert v.check_subset("b", ("a", "b"), name="photos") == ("b",)
    assert v.check_subset(iter(["b", "a"]), ("a", "b"), name="photos") == ("b", "a")
    v.check_grid(np.array([0, 3, 10]), 10)
    v.check_log_alpha_bar(np.log([1.0, 0.5, 0.2]))


def test_check_covariances_shape_symmetry_and_definiteness():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    psd = a @ a.T
    v.check_covariances(psd, 4, name="cov")
    v.check_covariances(np.stack([psd, np.eye(4)]), 4, name="covs", batch_shape=(2,))
    v.check_covariances(np.zeros((4, 4)), 4, name="cov")  # positive semi-definite, scale 0
    _raises("cov", "expected a covariance of shape (3, 3), got shape (4, 4)", v.check_covariances, psd, 3, name="cov")
    _raises("cov", "must be finite", v.check_covariances, np.full((2, 2), np.inf), 2, name="cov")
    asym = psd.copy()
    asym[0, 1] += 1e-2 * np.abs(psd).max()
    _raises("cov", "must be symmetric", v.check_covariances, asym, 4, name="cov")
    # eigenvalues 1 and -1: indefinite by far more than the tolerance n sqrt(eps) max|cov|
    _raises(
        "cov",
        "must be positive semi-definite, but its smallest eigenvalue is -1",
        v.check_covariances,
        np.diag([1.0, -1.0]),
        2,
        name="cov",
    )
