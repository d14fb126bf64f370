"""chain_lyapunov_spectra: many trajectories' spectra in one compiled call (vmap; sharded in test_sharding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_compile_once import counted_compilations

import pifs_jax as pj
from pifs_jax.errors import ArgumentError, NonFiniteError
from reference import tanh_mlp, tanh_mlp_params

SHAPE = (2, 2, 3)
GRID = pj.uniform_grid(1000, 6)


def mlp_eps(seed):
    return jax.tree_util.Partial(tanh_mlp, tanh_mlp_params(seed, int(np.prod(SHAPE)), out_scale=2.0))


def starts(count, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((count, *SHAPE)))


@pytest.mark.parametrize("k", [None, 3])
def test_each_row_is_the_single_trajectory_spectrum(x64, k):
    sched, eps_fn, x_T = pj.linear(1000), mlp_eps(0), starts(3)
    batch = pj.chain_lyapunov_spectra(eps_fn, sched, x_T, grid=GRID, k=k)
    assert batch.exponents.shape == (3, 12 if k is None else k) and batch.dimension.shape == (3,)
    for i in range(3):
        single = pj.chain_lyapunov_spectrum(eps_fn, sched, x_T[i], grid=GRID, k=k)
        np.testing.assert_allclose(batch.exponents[i], single.exponents, rtol=0, atol=1e-12)
        np.testing.assert_allclose(batch.dimension[i], single.dimension, rtol=1e-12, equal_nan=True)


def test_a_second_parameter_set_compiles_nothing(x64):
    sched, x_T = pj.linear(1000), starts(2)
    pj.chain_lyapunov_spectra(mlp_eps(0), sched, x_T, grid=GRID)
    with counted_compilations() as compiled:
        pj.chain_lyapunov_spectra(mlp_eps(1), sched, starts(2, seed=2), grid=GRID)
    assert compiled == [], compiled


def test_bad_input_is_named(x64):
    sched = pj.linear(1000)
    with pytest.raises(ArgumentError, match="x_T"):
        pj.chain_lyapunov_spectra(mlp_eps(0), sched, starts(1)[0, 0, 0], grid=GRID)
    with pytest.raises(ArgumentError, match="k"):
        pj.chain_lyapunov_spectra(mlp_eps(0), sched, starts(2), grid=GRID, k=99)
    with pytest.raises(ArgumentError, match="eps_fn"):
        pj.chain_lyapunov_spectra(lambda x, t: x[:1], sched, starts(2), grid=GRID)
    nan_for_second = lambda x, t: jnp.where(x[0, 0, 0] > 0, jnp.nan, 0.1) * x  # noqa: E731
    x_T = starts(2).at[0, 0, 0, 0].set(-1.0).at[1, 0, 0, 0].set(1.0)
    with pytest.raises(NonFiniteError, match="index 1"):
        pj.chain_lyapunov_spectra(nan_for_second, sched, x_T, grid=GRID)
