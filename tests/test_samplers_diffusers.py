"""DPM-Solver++(2M) and DDIM chains equal diffusers' own schedulers, without torch in the test.

The references (tests/fixtures/diffusers_dpm_solver.npz / .json) were written by
tests/fixtures/make_dpm_solver_reference.py: diffusers' ``DPMSolverMultistepScheduler`` with its
defaults (``solver_order = 2``, ``dpmsolver++``, ``midpoint``, ``lower_order_final``,
``final_sigmas_type = "zero"``) walking the custom timesteps ``[tau_N - 1, ..., tau_1 - 1]`` of
the package's grid, with (a) the loader fixtures' ``small_c`` UNet (the same seeded weights,
regenerated here and read back with :func:`pifs_jax.models.load_diffusers_unet`) and (b) the exact
noise predictor of Gaussian data ``N(mu, diag(v))``; and diffusers' ``DDIMScheduler`` on the
uniform Gaussian grid. Every image after every step is compared (``x_T``, then the sample after
each step; the last is the chain's result), relative to the largest reference value:
``|ours - ref| <= tol max|ref|``.

Tolerances. diffusers builds ``alphas_cumprod`` and ``sigmas`` in float32 (a few 1e-6 relative
after the 1000 cumulative products) and ``DPMSolverMultistepScheduler.step`` casts the sample to
float32 before each update, so even its "float64" chains carry float32 round-off (~1e-7
relative); the package's schedule is the exact float64 one (rounded once for a float32 chain).

- Gaussian data, our chain in float64 or float32: 1e-5 (the reference's float32 schedule and
  per-step rounding, plus, in float32, our own round-off over up to 12 steps of an exact
  denoiser; measured up to 6e-7 in float64, 9e-7 in float32). Tight enough to catch a float32
  last step that misses ``x_0 = D`` (``sigma_s / sigma_t = sqrt(1 - q)`` with ``q`` rounded a few
  ulps below 1 gives ``4e-4`` instead of 0: 5.5e-5 on the uniform grid);
- the UNet, float32 network and chain vs diffusers in float32: 1e-4 (two float32 programs with
  different operation orders and convolution algorithms, the network's ~2e-6 per call
  (tests/test_diffusers_equivalence.py) carried through 8 steps whose data predictions ``D = (x -
  sigma eps) / alpha`` divide by ``alpha`` down to ~0.006 at ``T``, relative to a result of that
  same scale; measured 5e-7);
- the UNet, float64 network and chain vs diffusers' float64 network (float32 sample and schedule
  in its step): 1e-4 as above (measured 3e-7; slow tier: a second network compilation).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.interop import from_diffusers_config
from pifs_jax.models import load_diffusers_unet, write_random_diffusers_unet
from pifs_jax.samplers import DDIM, DPMSolverPP2M, sample_batch

FIXTURES = Path(__file__).parent / "fixtures"
NAME = "diffusers_dpm_solver"


def read_fixture() -> tuple[dict, dict]:
    meta = json.loads((FIXTURES / f"{NAME}.json").read_text())
    with np.load(FIXTURES / f"{NAME}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


def relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def assert_trajectory(ours, ref, tol, what):
    """Every step's images within ``tol max|ref|`` (``ours``: ``(batch, N + 1, ...)``; ``ref``: ``(N + 1, batch, ...)``)."""
    ours = np.swapaxes(np.asarray(ours), 0, 1)
    assert ours.shape == ref.shape, what
    for j in range(ref.shape[0]):
        error = relative_error(ours[j], ref[j])
        assert error <= tol, f"{what}: after step {j} of {ref.shape[0] - 1}, relative error {error:.3g} > {tol:g}"


def test_fixture_timesteps_follow_the_package_convention():
    """diffusers walked ``[tau_N - 1, ..., tau_1 - 1]``, and its sigmas are ours at ``tau_N, ..., tau_1``, then 0."""
    meta, ref = read_fixture()
    sched = from_diffusers_config(meta["scheduler_config"], dtype=np.float64)
    assert sched.T == 1000
    np.testing.assert_array_equal(ref["unet_timesteps"], np.asarray(meta["unet"]["grid"])[:0:-1] - 1)
    for name, grid in meta["gaussian"]["grids"].items():
        grid = np.asarray(grid)
        np.testing.assert_array_equal(ref[f"gaussian_{name}_timesteps"], grid[:0:-1] - 1)
        alpha_bar = np.exp(np.asarray(sched.log_alpha_bar, np.float64))[grid[::-1]]
        sigmas = np.sqrt((1 - alpha_bar) / alpha_bar)  # 0 at tau_0 = 0
        # diffusers' float32 alphas_cumprod: a few 1e-6 relative
        np.testing.assert_allclose(ref[f"gaussian_{name}_sigmas"], sigmas, rtol=2e-5, atol=0)
    assert meta["scheduler_config"]["final_sigmas_type"] == "zero" and meta["scheduler_config"]["lower_order_final"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dpm_solver_matches_diffusers_on_gaussian_data(dtype, x64):
    """Our DPM-Solver++(2M) with the exact Gaussian denoiser equals diffusers' on a uniform and a quadratic grid."""
    meta, ref = read_fixture()
    sched = from_diffusers_config(meta["scheduler_config"], dtype=dtype)
    mean = np.asarray(meta["gaussian"]["mean"], dtype)
    variances = np.asarray(meta["gaussian"]["variances"], dtype)
    eps_fn = pj.gaussian_denoiser_eig(sched, mean, variances, np.eye(mean.size, dtype=dtype))
    for name, grid in meta["gaussian"]["grids"].items():
        x_T = jnp.asarray(ref[f"gaussian_{name}_x_T"], dtype)
        x0, trajectory = sample_batch(
            eps_fn, sched, x_T, grid=np.asarray(grid), sampler=DPMSolverPP2M(), return_trajectory=True
        )
        assert x0.dtype == dtype
        np.testing.assert_array_equal(x0, trajectory[:, -1])
        assert_trajectory(trajectory, ref[f"gaussian_{name}_trajectory"], 1e-5, f"{name} grid, {np.dtype(dtype)}")


def test_dpm_solver_with_the_full_covariance_denoiser(x64):
    """The same chain through :func:`pifs_jax.gaussian_denoiser` (covariance ``diag(v)``, eigendecomposed), 1e-5."""
    meta, ref = read_fixture()
    sched = from_diffusers_config(meta["scheduler_config"], dtype=np.float64)
    eps_fn = pj.gaussian_denoiser(sched, np.asarray(meta["gaussian"]["mean"]), np.diag(meta["gaussian"]["variances"]))
    grid = np.asarray(meta["gaussian"]["grids"]["quadratic"])
    x0 = sample_batch(eps_fn, sched, jnp.asarray(ref["gaussian_quadratic_x_T"]), grid=grid, sampler=DPMSolverPP2M())
    assert relative_error(x0, ref["gaussian_quadratic_trajectory"][-1]) <= 1e-5


def test_ddim_matches_diffusers_ddim_scheduler_on_gaussian_data(x64):
    """``DDIM()`` (eta = 0) equals diffusers' ``DDIMScheduler`` ("trailing", 8 steps) step by step, 1e-5 (float64)."""
    meta, ref = read_fixture()
    config = meta["ddim_scheduler_config"]
    sched = from_diffusers_config(config, dtype=np.float64)
    grid = np.asarray(meta["gaussian"]["grids"]["uniform"])
    np.testing.assert_array_equal(pj.interop.diffusers_config_grid(config, grid.size - 1), grid)
    mean = np.asarray(meta["gaussian"]["mean"])
    eps_fn = pj.gaussian_denoiser_eig(sched, mean, np.asarray(meta["gaussian"]["variances"]), np.eye(mean.size))
    _, trajectory = sample_batch(
        eps_fn, sched, jnp.asarray(ref["gaussian_uniform_x_T"]), grid=grid, sampler=DDIM(), return_trajectory=True
    )
    assert_trajectory(trajectory, ref["gaussian_uniform_ddim_trajectory"], 1e-5, "DDIM")
    # the two samplers differ on this grid by far more than the tolerance: the comparison is not vacuous
    dpm = ref["gaussian_uniform_trajectory"][-1]
    assert relative_error(trajectory[:, -1], dpm) > 1e-3


def test_reader_accepts_the_saved_dpm_solver_config():
    """The config diffusers saves for ``DPMSolverMultistepScheduler()`` (with ``time_shift_type`` at its
    default ``"exponential"``, which acts only with ``use_dynamic_shifting``) reads as the linear schedule."""
    meta, _ = read_fixture()
    sched = from_diffusers_config(meta["scheduler_config"], dtype=np.float64)
    np.testing.assert_allclose(sched.log_alpha_bar, pj.linear(1000, dtype=np.float64).log_alpha_bar, rtol=1e-14)


def unet_chain(tmp_path: Path, dtype):
    """Our DPM-Solver++(2M) chain of the fixture's UNet (regenerated seeded weights) from its ``x_T``."""
    meta, ref = read_fixture()
    unet = meta["unet"]
    folder = write_random_diffusers_unet(
        tmp_path / np.dtype(dtype).name,
        unet["config"],
        seed=unet["weight_seed"],
        scheduler_config=meta["scheduler_config"],
    )
    loaded = load_diffusers_unet(folder, dtype=dtype)
    assert loaded.schedule.T == 1000
    x_T = jnp.asarray(ref["unet_x_T"], dtype)
    _, trajectory = sample_batch(
        loaded.eps_fn,
        loaded.schedule,
        x_T,
        grid=np.asarray(unet["grid"]),
        sampler=DPMSolverPP2M(),
        return_trajectory=True,
    )
    assert trajectory.dtype == dtype
    return trajectory, ref


def test_dpm_solver_matches_diffusers_unet_float32(tmp_path):
    """The small UNet's 8-step chain in float32 equals diffusers' float32 chain, step by step, to 1e-4."""
    trajectory, ref = unet_chain(tmp_path, np.float32)
    assert_trajectory(trajectory, ref["unet_trajectory32"], 1e-4, "UNet float32")


@pytest.mark.slow
def test_dpm_solver_matches_diffusers_unet_float64(tmp_path):
    """The same chain with the float64 network against diffusers' float64 network, 1e-4."""
    with jax.enable_x64(True):
        trajectory, ref = unet_chain(tmp_path, np.float64)
    assert_trajectory(trajectory, ref["unet_trajectory64"], 1e-4, "UNet float64")


@pytest.mark.slow
def test_regenerated_fixture_equals_the_committed_one(tmp_path):
    """With torch and diffusers installed, the fixture script reproduces the committed reference."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        import make_dpm_solver_reference as script
    finally:
        sys.path.remove(str(FIXTURES))
    script.make_reference(tmp_path)
    _, old = read_fixture()
    with np.load(tmp_path / f"{NAME}.npz") as new:
        assert sorted(new.files) == sorted(old)
        for key, value in old.items():
            np.testing.assert_allclose(new[key], value, rtol=1e-5, atol=1e-6 * np.max(np.abs(value)), err_msg=key)


def test_a_designed_grid_runs_in_diffusers_and_gives_the_same_samples(x64):
    """``pj.design_grid``'s DPM-Solver++(2M) grid (placed by the solver's own error model, as when the fixture was
    made), exported as diffusers ``timesteps=``, is the fixture's "designed" grid: diffusers walked it (its timesteps are ours minus 1), and the samples equal ours (the Gaussian tests above
    compare every step at 1e-5)."""
    meta, ref = read_fixture()
    sched = from_diffusers_config(meta["scheduler_config"], dtype=np.float64)
    mean = np.asarray(meta["gaussian"]["mean"], np.float64)
    eps_fn = pj.gaussian_denoiser_eig(sched, mean, np.asarray(meta["gaussian"]["variances"]), np.eye(mean.size))
    noises = jax.random.normal(jax.random.PRNGKey(0), (16, mean.size), jnp.float64)
    designed = pj.design_grid(eps_fn, sched, 8, sampler=DPMSolverPP2M(), method="geometric", x_T=noises,
                              options={"error_model": "solver"})  # fmt: skip
    assert designed.grid.tolist() == meta["gaussian"]["grids"]["designed"]
    np.testing.assert_array_equal(ref["gaussian_designed_timesteps"], pj.grid_to_diffusers_timesteps(designed.grid))
    x0 = sample_batch(
        eps_fn, sched, jnp.asarray(ref["gaussian_designed_x_T"]), grid=designed.grid, sampler=DPMSolverPP2M()
    )
    assert relative_error(x0, ref["gaussian_designed_trajectory"][-1]) <= 1e-5
