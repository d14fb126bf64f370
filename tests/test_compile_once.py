"""Denoisers as pytrees: parameters are traced arguments, so one compilation per architecture.

A denoiser ``jax.tree_util.Partial(apply_one, params)`` (or :func:`pifs_jax.models.as_eps_fn`)
reaches every compiled program of the package as an argument: a second parameter set of the same
shapes compiles nothing new, the lowered program does not grow with the number of parameters,
gradients with respect to the parameters are exact, and no cache keeps the parameters alive.

Compilations are counted with JAX's monitoring events. The suite's persistent compilation cache
(tests/conftest.py) may skip the backend compilation on a hit, so the counter also counts the
lowering to MLIR ("/jax/core/compile/jaxpr_to_mlir_module_duration"), which precedes the cache
lookup: a program that would be compiled anew is seen whether or not the cache holds it.
"""

import contextlib
import gc
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.ddim import ddim_step
from pifs_jax.jacobians import block_norms, block_norms_matrix_free
from pifs_jax.models import as_eps_fn, make_model
from pifs_jax.sharding import sharded_ddim_sample
from reference import tanh_mlp, tanh_mlp_params

IMAGE_SHAPE = (4, 4, 1)
PATCH = 2
GRID = np.array([0, 300, 700, 1000])

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def counted_compilations():
    """Collect the lowering and backend-compilation events raised inside the block."""
    events = []

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def mlp_params(seed, dtype=np.float64):
    return tanh_mlp_params(seed, int(np.prod(IMAGE_SHAPE)), dtype=dtype)


def step_map(eps_fn, t, a, b, y):
    """One DDIM step as a map of the image only (for the matrix-free block norms)."""
    return ddim_step(eps_fn, y, t, a, b)


def every_denoiser_function(eps_fn, sched, x, key):
    """Run each public function that compiles a program around a denoiser; return their results."""
    x_batch = jnp.stack([x, -x])
    J = pj.ddim_step_jacobian(eps_fn, sched, x, grid=GRID, step=2)
    c = pj.step_coefficients(sched, GRID)
    t, a, b = jnp.asarray(GRID[2]), c.a[1].astype(x.dtype), c.b[1].astype(x.dtype)
    return {
        "ddim_chain": pj.ddim_chain(eps_fn, sched, x, grid=GRID),
        "ddim_chain_stochastic": pj.ddim_chain(eps_fn, sched, x, grid=GRID, eta=0.5, key=key),
        "ddim_sample": pj.ddim_sample(eps_fn, sched, x_batch, grid=GRID),
        "sharded_ddim_sample": sharded_ddim_sample(eps_fn, sched, x_batch, grid=GRID),
        "spectrum_full": pj.chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRID).exponents,
        "spectrum_leading": pj.chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRID, k=2, iters=20).exponents,
        "ddim_step_jacobian": J,
        "chain_jacobian": pj.chain_jacobian(eps_fn, sched, x, grid=GRID),
        "block_norms": block_norms(J, IMAGE_SHAPE, PATCH).norms,
        "block_norms_matrix_free": block_norms_matrix_free(
            jax.tree_util.Partial(step_map, eps_fn, t, a, b), x, IMAGE_SHAPE, PATCH, key=key, iters=4
        ).norms,
    }


@pytest.mark.slow
def test_second_parameter_set_compiles_nothing(x64):
    """Every function, run with a second parameter set of the same shapes: no lowering, no compilation.

    The results equal those of a plain closure over the second set (closures still work, each
    compiled once per closure object) and differ from the first set's.
    """
    sched = pj.cosine(1000)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(IMAGE_SHAPE))
    key = jax.random.PRNGKey(3)
    first = every_denoiser_function(jax.tree_util.Partial(tanh_mlp, mlp_params(1)), sched, x, key)
    second_params = mlp_params(2)
    with counted_compilations() as events:
        second = every_denoiser_function(jax.tree_util.Partial(tanh_mlp, second_params), sched, x, key)
    assert events == [], f"{len(events)} lowering/compilation event(s) for a second parameter set"
    closure = every_denoiser_function(lambda y, t: tanh_mlp(second_params, y, t), sched, x, key)
    for name in first:
        np.testing.assert_allclose(second[name], closure[name], rtol=1e-10, atol=1e-12, err_msg=name)
        assert not np.allclose(first[name], second[name]), name


def _dit(hidden):
    module, _ = make_model("dit", image_shape=(8, 8, 1), patch_size=4, hidden=hidden, depth=1, num_heads=1, mlp_ratio=1)
    return module


def _random_params(module, seed):
    """Parameters of ``module`` drawn with NumPy from the shapes of its initialisation (nothing compiled)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,), jnp.int32))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes["params"])


@pytest.mark.slow
def test_network_denoiser_compiles_once_per_architecture(x32):
    """``as_eps_fn(module, params)`` of a second parameter set reuses the chain's and the batch's programs."""
    module = _dit(8)
    sched = pj.cosine(1000)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 1)), jnp.float32)
    grid = pj.uniform_grid(1000, 3)
    first = pj.ddim_chain(as_eps_fn(module, _random_params(module, 1)), sched, x, grid=grid)
    pj.ddim_sample(as_eps_fn(module, _random_params(module, 1)), sched, x[None], grid=grid)
    params = _random_params(module, 2)
    with counted_compilations() as events:
        second = pj.ddim_chain(as_eps_fn(_dit(8), params), sched, x, grid=grid)  # an equal module
        batch = pj.ddim_sample(as_eps_fn(module, params), sched, x[None], grid=grid)
    assert events == [], f"{len(events)} lowering/compilation event(s) for a second parameter set"
    np.testing.assert_allclose(batch[0], second, rtol=1e-5, atol=1e-5)
    assert not np.allclose(first, second)
    # the network's own apply, batched by hand and run op by op, agrees with the (jitted) denoiser
    # to float32 round-off of a few operations on values of order 5
    eps = as_eps_fn(module, params)(x, 7)
    direct = module.apply({"params": params}, x[None], jnp.array([7], jnp.int32))[0]
    assert eps.dtype == x.dtype and eps.shape == x.shape
    np.testing.assert_allclose(eps, direct, rtol=1e-5, atol=1e-5)


def test_lowered_program_does_not_grow_with_the_model(x32):
    """The lowered chain for a DiT and a 4x wider one differ by shape annotations only.

    Widths 8 and 32 (6,089 and 28,481 parameters); the texts may differ only where a
    shape is printed (a few characters per mention): measured 58,726 and 59,175 characters, asserted
    to differ by less than 2,000; baked-in parameters would add at least one printed number for
    each of the 22,392 extra parameters.
    """
    sched = pj.cosine(1000)
    grid = pj.uniform_grid(1000, 3)
    x = jnp.zeros((8, 8, 1), jnp.float32)
    lower = eqx.filter_jit(lambda eps_fn, x_T: pj.ddim_chain(eps_fn, sched, x_T, grid=grid)).lower
    sizes, counts = [], []
    for hidden in (8, 32):
        module = _dit(hidden)
        params = _random_params(module, 0)
        counts.append(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
        sizes.append(len(lower(as_eps_fn(module, params), x).as_text()))
    assert counts[1] > 4 * counts[0], counts
    assert abs(sizes[1] - sizes[0]) < 2000, (sizes, counts)


def test_gradient_through_the_partial_matches_finite_differences(x64):
    """``jax.grad`` of ``sum(x_0^2)`` with respect to the parameters inside the Partial (float64).

    Checked along two random directions ``d``: ``<grad, d>`` against the central difference
    ``(L(p + h d) - L(p - h d)) / 2h`` with ``h = 1e-5`` (truncation ``O(h^2)``, round-off
    ``O(eps / h)``), relative tolerance ``1e-7``.
    """
    sched = pj.cosine(1000)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(IMAGE_SHAPE))
    params = mlp_params(1)

    def loss(p):
        return jnp.sum(pj.ddim_chain(jax.tree_util.Partial(tanh_mlp, p), sched, x, grid=GRID) ** 2)

    grad = jax.grad(loss)(params)
    rng = np.random.default_rng(5)
    h = 1e-5
    for _ in range(2):
        direction = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)
        plus = jax.tree_util.tree_map(lambda p, d: p + h * d, params, direction)
        minus = jax.tree_util.tree_map(lambda p, d: p - h * d, params, direction)
        central = (float(loss(plus)) - float(loss(minus))) / (2 * h)
        analytic = sum(
            float(jnp.vdot(g, d))
            for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction), strict=True)
        )
        np.testing.assert_allclose(analytic, central, rtol=1e-7)


def test_no_cache_keeps_the_parameters_alive(x64):
    """After every function ran with a pytree denoiser, dropping it frees its parameters."""
    sched = pj.cosine(1000)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(IMAGE_SHAPE))
    params = mlp_params(7)
    eps_fn = jax.tree_util.Partial(tanh_mlp, params)
    results = every_denoiser_function(eps_fn, sched, x, jax.random.PRNGKey(0))
    assert all(bool(jnp.all(jnp.isfinite(r))) for r in results.values())
    watched = weakref.ref(params["w1"])
    del eps_fn, params, results
    gc.collect()
    assert watched() is None, "a cache still holds the parameters"


def test_network_parameters_are_freed(x32):
    """The same for ``as_eps_fn`` of a network: the per-module apply holds the module, not the parameters."""
    module = _dit(8)
    params = _random_params(module, 3)
    eps_fn = as_eps_fn(module, params)
    out = pj.ddim_chain(eps_fn, pj.cosine(1000), jnp.zeros((8, 8, 1), jnp.float32), grid=pj.uniform_grid(1000, 3))
    out = eps_fn(jnp.zeros((8, 8, 1), jnp.float32), 5) + out  # the eager call too
    watched = weakref.ref(jax.tree_util.tree_leaves(params)[0])
    del eps_fn, params, out
    gc.collect()
    assert watched() is None, "a cache still holds the network's parameters"
