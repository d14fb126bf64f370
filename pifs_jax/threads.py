"""Host thread pools: an opt-in limit for the BLAS, LAPACK and OpenMP threads of the process.

:func:`limit_host_threads` caps, with ``threadpoolctl``, every native thread pool loaded in the
process that ``threadpoolctl`` knows: the BLAS libraries (OpenBLAS, MKL, BLIS; NumPy's and SciPy's,
and through SciPy's OpenBLAS the LAPACK kernels that jaxlib's CPU QR, SVD and Cholesky call) and
the OpenMP runtimes (``libgomp``, ``libiomp``, ``libomp``). On a machine with few cores, where
XLA's own thread pool already occupies every core, the BLAS worker threads compete with it; one
thread per pool (``limit_host_threads(1)``) is then often faster (BENCHMARKS.md: a ``768 x 768``
QR took 23 ms with one OpenBLAS thread and about a second with two, under load).

XLA's own threads are not touched: the CPU client sizes its thread pool from the cores the
process may run on (its CPU affinity, e.g. ``taskset``) when JAX starts its backend, and the
``XLA_FLAGS`` environment variable, read at that moment (set it before the first JAX
computation), switches its multi-threaded matrix products and convolutions off:
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``. PyTorch's threads are set by
``torch.set_num_threads``.

``threadpoolctl`` only limits libraries already loaded: SciPy's OpenBLAS, which jaxlib's LAPACK
kernels use, is loaded here (``scipy.linalg``) before the limit is applied, so that it is caught.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from pifs_jax.errors import ArgumentError

__all__ = ["limit_host_threads"]


def limit_host_threads(n: int, *, user_api: str | None = None) -> threadpool_limits:
    """Limit the BLAS/LAPACK and OpenMP thread pools of the process to ``n`` threads each.

    Usable both ways: as a context manager, ``with pj.limit_host_threads(1): ...``, the previous
    limits are restored on exit; as a plain call, ``pj.limit_host_threads(1)``, the limit stays
    until ``.restore_original_limits()`` is called on the returned object. XLA's own thread pool is
    not affected (see the module docstring: ``XLA_FLAGS``).

    Args:
      n: threads per pool, an integer ``>= 1``.
      user_api: ``"blas"`` or ``"openmp"`` to limit only those pools; ``None`` (default): both.

    Returns:
      the ``threadpoolctl.threadpool_limits`` object holding the original limits.

    Raises:
      ArgumentError: naming ``n`` (not an integer ``>= 1``) or ``user_api``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ArgumentError("n", f"expected an integer number of threads >= 1, got {n!r}")
    if user_api not in (None, "blas", "openmp"):
        raise ArgumentError("user_api", f"expected 'blas', 'openmp' or None, got {user_api!r}")
    import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jaxlib's LAPACK kernels call)

    return threadpool_limits(limits=n, user_api=user_api)
