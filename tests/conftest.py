"""Shared test configuration.

Numerical tests run in float64 by default (``x64`` fixture) and in float32 where the test says
so; ``jax_numpy_dtype_promotion = 'strict'`` is not set globally because user-facing code must
accept Python scalars.

Tiers (see ``[tool.pytest.ini_options]`` in pyproject.toml): ``pytest -q`` runs everything,
``pytest -q -m "not slow"`` skips the tests marked ``@pytest.mark.slow`` (whole experiment runs,
subprocesses, long chains, network compilations). Tests run in pytest-xdist worker processes, one
test file per worker, so a test must not rely on another file's tests having run, must write only
under ``tmp_path`` / ``tmp_path_factory``, and must set process-wide settings such as
``XLA_FLAGS`` only in the environment of a subprocess it starts.

Independent NumPy reference formulas shared by several test files live in ``tests/reference.py``.

Compiled XLA programs are kept between runs in pytest's cache folder
(``.pytest_cache/d/jax_compilation_cache``, JAX's persistent compilation cache): most of the
suite's time is compilation, and a repeated run reuses it. ``pytest --cache-clear`` empties it,
``-p no:cacheprovider`` runs without it (cold, as CI does), and a cache folder chosen by the user
(``JAX_COMPILATION_CACHE_DIR``) is left as it is. Tests that count compilations use the in-memory
``_cache_size()`` of a jitted function, which this does not change.
"""

import os


def _compile_faster() -> None:
    """Compile the suite's XLA programs faster (``XLA_FLAGS``), unless the caller chose the setting.

    The suite is compilation-bound (hundreds of small programs, each run a few times). Two settings:

    * LLVM optimisation level 0 (``--xla_backend_optimization_level=0``): cut the wall time of a
      compile-heavy sample of the suite (training and spectrum tests) by 20-30 % on the 2-core CI
      machine;
    * XLA:CPU's classic fusion emitters instead of the MLIR fusion emitters
      (``--xla_cpu_use_fusion_emitters=false``): on top of level 0, the spectrum and sampler tests
      (``test_lyapunov.py``, ``test_samplers.py``, one process) took 47 s of CPU instead of 99 s
      (``benchmarks/suite_compile_flags.py``, BENCHMARKS.md); the whole suite 8.5 instead of 11 minutes.

    Both change how the same IEEE operations are compiled and scheduled, not what they compute;
    every tolerance in the suite holds with or without them. The benchmarks, and users, run with
    XLA's defaults. Set before JAX creates its backend, so they also reach the processes tests
    start (kernels, subprocesses: those that add flags keep these).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    for name, value in (("--xla_backend_optimization_level", "0"), ("--xla_cpu_use_fusion_emitters", "false")):
        if name not in flags:
            flags = f"{flags} {name}={value}".strip()
    os.environ["XLA_FLAGS"] = flags


_compile_faster()

import jax  # noqa: E402  (after the flags: JAX reads XLA_FLAGS when it creates its backend)
import pytest  # noqa: E402


def pytest_configure(config):
    """Point JAX's persistent compilation cache at pytest's cache folder (every compilation, however short)."""
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    if cache is None or os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    folder = str(cache.mkdir("jax_compilation_cache"))
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # not passed on to the processes tests start (kernels, subprocesses): they compile other
    # programs, and writing theirs cost more than it saved (measured: the data-parallel and sharding
    # tests took 4-10 % longer with the folder in their environment)


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


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, SIGINT unblocked in this thread, for the test; the previous state after.

    The Ctrl-C tests are about what the package does under Python's default handler
    (:func:`pifs_jax.loop.deferred_interrupt` leaves any other handler alone, as in a Jupyter
    kernel). In fresh-clone CI runs both failed on one worker, where SIGINT had no effect: another
    file run earlier in that worker process left a handler or a signal mask behind (not seen in
    development runs). What was found is reported as a warning, so that the leak can be traced.
    """
    import signal
    import warnings

    found = signal.getsignal(signal.SIGINT)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if found is not signal.default_int_handler or signal.SIGINT in blocked:
        warnings.warn(
            f"SIGINT state left by an earlier test: handler {found!r}, blocked {sorted(blocked)}", stacklevel=1
        )
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, found if found is not None else signal.SIG_DFL)
        if signal.SIGINT in blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
