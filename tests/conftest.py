"""Shared test configuration.

Numerical tests run in float64 by default (``x64`` fixture) and in float32 where the test says
so; ``jax_numpy_dtype_promotion = 'strict'`` is not set globally because user-facing code must
accept Python scalars.
"""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def x32():
    """Run the test body with 64-bit floats disabled (the JAX default)."""
    with jax.enable_x64(False):
        yield
