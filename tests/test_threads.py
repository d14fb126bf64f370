"""pifs_jax.limit_host_threads: an opt-in cap on the BLAS/LAPACK and OpenMP thread pools."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info

import pifs_jax as pj
from pifs_jax.errors import ArgumentError


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_the_context_limits_every_blas_pool_and_restores_them():
    with pj.limit_host_threads(1):
        inside = blas_threads()  # SciPy's OpenBLAS (jaxlib's LAPACK) is loaded by the call
    before = blas_threads()
    assert inside and all(count == 1 for count in inside), inside
    with pj.limit_host_threads(2, user_api="blas"):
        assert all(1 <= count <= 2 for count in blas_threads())
    assert blas_threads() == before


def test_a_plain_call_holds_until_restored():
    limits = pj.limit_host_threads(1)
    try:
        assert all(count == 1 for count in blas_threads())
    finally:
        limits.restore_original_limits()


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_named(n):
    with pytest.raises(ArgumentError, match=r"^n: "):
        pj.limit_host_threads(n)


def test_bad_user_api_is_named():
    with pytest.raises(ArgumentError, match="user_api"):
        pj.limit_host_threads(1, user_api="gpu")
