"""Sharded trajectories and tangent vectors give the single-device numbers.

The multi-device checks run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``:
the flag only takes effect before JAX initialises, and this pytest process already has one CPU
device.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.sharding import batch_mesh, shard_batch, sharded_ddim_sample

REPO = Path(__file__).resolve().parents[1]
GRID = pj.uniform_grid(1000, 20)

# Shared by the in-process tests and the subprocess script: the Gaussian predictor with a
# rotated covariance (eigenvectors not the coordinate axes).
GAUSSIAN = textwrap.dedent(
    """
    def gaussian_eps(sched, variances, seed=0):
        n = len(variances)
        q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
        u = jnp.asarray(q * np.sign(np.diag(r)))
        lam = jnp.asarray(variances)

        def eps_fn(x, t):
            log_ab = sched.log_alpha_bar[t]
            alpha_bar, sigma2 = jnp.exp(log_ab), -jnp.expm1(log_ab)
            return (u @ (jnp.sqrt(sigma2) / (alpha_bar * lam + sigma2) * (u.T @ x.reshape(-1)))).reshape(x.shape)

        return eps_fn
    """
)
_namespace: dict = {"np": np, "jnp": jnp}
exec(GAUSSIAN, _namespace)
gaussian_eps = _namespace["gaussian_eps"]

SCRIPT = (
    """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import pifs_jax as pj
from pifs_jax.lyapunov import chain_lyapunov_spectrum
from pifs_jax.sharding import batch_mesh, shard_batch, sharded_ddim_sample
"""
    + GAUSSIAN
    + """
assert jax.device_count() == 4, jax.devices()
sched = pj.cosine(1000)
grid = pj.uniform_grid(1000, 20)
n = 12
eps_fn = gaussian_eps(sched, np.logspace(-2, 1, n))
x_T = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3, 4)))  # samples of shape (3, 4)
eps_image = lambda x, t: eps_fn(x.reshape(-1), t).reshape(x.shape)

# a batch of trajectories over 4 devices
reference = pj.ddim_sample(eps_image, sched, x_T, grid=grid)
sharded = sharded_ddim_sample(eps_image, sched, x_T, grid=grid)
assert len(sharded.sharding.device_set) == 4, sharded.sharding
assert sharded.sharding.spec == jax.sharding.PartitionSpec("batch"), sharded.sharding
assert [s.data.shape for s in sharded.addressable_shards] == [(2, 3, 4)] * 4
np.testing.assert_allclose(sharded, reference, rtol=1e-10, atol=1e-12)
x_0, trajectory = sharded_ddim_sample(eps_image, sched, x_T, grid=grid, return_trajectory=True)
assert trajectory.shape == (8, 21, 3, 4) and len(trajectory.sharding.device_set) == 4
np.testing.assert_allclose(x_0, reference, rtol=1e-10, atol=1e-12)
# another schedule with the same shapes reuses the compiled program: no backend compilation
# (counted through JAX's own monitoring events) during the second sharded call
other = pj.shift_log_snr(sched, 0.5)
expected = pj.ddim_sample(eps_image, other, x_T, grid=grid)
compilations = []
def count(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compilations.append(event)
jax.monitoring.register_event_duration_secs_listener(count)
again = sharded_ddim_sample(eps_image, other, x_T, grid=grid)
jax.monitoring.unregister_event_duration_listener(count)
np.testing.assert_allclose(again, expected, rtol=1e-10, atol=1e-12)
assert compilations == [], f"{len(compilations)} new compilation(s) for a schedule of the same shapes"
# a batch of 6 is padded to 8 and trimmed
np.testing.assert_allclose(sharded_ddim_sample(eps_image, sched, x_T[:6], grid=grid), reference[:6], rtol=1e-10, atol=1e-12)
placed = shard_batch(x_T)
assert len(placed.sharding.device_set) == 4
try:
    shard_batch(x_T[:6])
except ValueError as err:
    assert str(err).startswith("x:"), err
else:
    raise AssertionError("shard_batch accepted a batch of 6 on 4 devices")

# leading-k spectra with the tangent block sharded over the 4 devices
x_one = x_T[0].reshape(-1)
mesh = batch_mesh()
single = chain_lyapunov_spectrum(eps_fn, sched, x_one, grid=grid, k=4)
split = chain_lyapunov_spectrum(eps_fn, sched, x_one, grid=grid, k=4, mesh=mesh)
np.testing.assert_allclose(split.exponents, single.exponents, rtol=1e-10, atol=1e-12)
assert len(split.vectors.sharding.device_set) == 4, split.vectors.sharding
np.testing.assert_allclose(np.abs(np.sum(split.vectors * single.vectors, axis=1)), 1.0, atol=1e-8)
analytic = np.sort(np.asarray(pj.lyapunov_exponents(sched, np.logspace(-2, 1, n), grid)))[::-1]
np.testing.assert_allclose(split.exponents, analytic[:4], rtol=1e-8, atol=1e-8)
# k = 3 is rounded up to a block of 4 (one extra vector) and gives the same leading exponents
three = chain_lyapunov_spectrum(eps_fn, sched, x_one, grid=grid, k=3, mesh=mesh)
np.testing.assert_allclose(three.exponents, analytic[:3], rtol=1e-8, atol=1e-8)

# the full spectrum with its n = 12 tangent columns sharded over the 4 devices (3 JVPs each)
whole = chain_lyapunov_spectrum(eps_fn, sched, x_one, grid=grid)
whole_split = chain_lyapunov_spectrum(eps_fn, sched, x_one, grid=grid, mesh=mesh)
np.testing.assert_allclose(whole_split.exponents, whole.exponents, rtol=0, atol=1e-10)
np.testing.assert_allclose(whole_split.exponents, analytic, rtol=1e-8, atol=1e-8)
def compiled_text(m):
    full = lambda v: chain_lyapunov_spectrum(eps_fn, sched, v, grid=grid, mesh=m).exponents
    return jax.jit(full).lower(x_one).compile().as_text()
def local_jvp_blocks(text):  # ops of the tangent JVPs on a device's 12 x 3 slice of the block
    return [line for line in text.splitlines() if "f64[12,3]" in line and "jvp" in line]
sharded_text, plain_text = compiled_text(mesh), compiled_text(None)
assert "num_partitions=4" in sharded_text and local_jvp_blocks(sharded_text), "full-spectrum tangent block not split"
assert not local_jvp_blocks(plain_text)
try:
    chain_lyapunov_spectrum(eps_fn, sched, x_one[:10], grid=grid, mesh=mesh)
except ValueError as err:
    assert str(err).startswith("mesh:"), err
else:
    raise AssertionError("10 tangent columns accepted on 4 devices")

# a batch of 8 spectra in one call, the trajectories split over the 4 devices (2 each)
flat = x_T.reshape(8, -1)
batch = pj.chain_lyapunov_spectra(eps_fn, sched, flat, grid=grid, mesh=mesh)
assert len(batch.exponents.sharding.device_set) == 4, batch.exponents.sharding
assert [s.data.shape for s in batch.exponents.addressable_shards] == [(2, n)] * 4
one_device = pj.chain_lyapunov_spectra(eps_fn, sched, flat, grid=grid)
np.testing.assert_allclose(batch.exponents, one_device.exponents, rtol=0, atol=1e-10)
np.testing.assert_allclose(batch.exponents, np.broadcast_to(analytic, (8, n)), rtol=1e-8, atol=1e-8)
try:
    pj.chain_lyapunov_spectra(eps_fn, sched, flat[:6], grid=grid, mesh=mesh)
except ValueError as err:
    assert str(err).startswith("x:"), err
else:
    raise AssertionError("6 trajectories accepted on 4 devices")
print("SHARDING-OK")
"""
)


def run_on_four_host_devices(script: str, marker: str) -> None:
    """Run ``script`` in a fresh Python with 4 forced CPU devices; it must succeed and print ``marker``."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker in result.stdout


@pytest.mark.slow
def test_four_host_devices_match_one_device():
    run_on_four_host_devices(SCRIPT, "SHARDING-OK")


def test_one_device_sharding_equals_plain(x64):
    sched = pj.cosine(1000)
    eps_fn = gaussian_eps(sched, np.logspace(-2, 1, 6))
    x_T = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6)))
    out = sharded_ddim_sample(eps_fn, sched, x_T, grid=GRID)
    np.testing.assert_allclose(out, pj.ddim_sample(eps_fn, sched, x_T, grid=GRID), rtol=1e-10, atol=1e-12)
    placed = shard_batch(x_T)
    assert placed.sharding.device_set == set(jax.devices())
    np.testing.assert_array_equal(placed, x_T)


def test_bad_input_names_the_argument(x64):
    sched = pj.cosine(1000)
    eps_fn = gaussian_eps(sched, np.logspace(-2, 1, 6))
    with pytest.raises(ValueError, match=r"^x:"):
        shard_batch(jnp.ones(()))
    with pytest.raises(ValueError, match=r"^axis:"):
        shard_batch(jnp.ones((2, 6)), batch_mesh("data"), axis="batch")
    with pytest.raises(ValueError, match=r"^mesh:"):
        shard_batch(jnp.ones((2, 6)), mesh="cpu")
    with pytest.raises(ValueError, match=r"^x_T_batch:"):
        sharded_ddim_sample(eps_fn, sched, jnp.ones(()), grid=GRID)
    with pytest.raises(ValueError, match=r"^eps_fn:"):
        sharded_ddim_sample(lambda x, t: x[:2], sched, jnp.ones((2, 6)), grid=GRID)
    with pytest.raises(ValueError, match=r"^grid:"):
        sharded_ddim_sample(eps_fn, sched, jnp.ones((2, 6)), grid=np.array([0, 10, 5]))
    with pytest.raises(ValueError, match=r"^sched:"):
        sharded_ddim_sample(eps_fn, "cosine", jnp.ones((2, 6)), grid=GRID)
