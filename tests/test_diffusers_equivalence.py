"""The flax ``UNet2DModel`` agrees with diffusers' own, output for output, without torch in the test.

The references (tests/fixtures/diffusers_<name>.npz / .json) were written by
tests/fixtures/make_diffusers_reference.py with diffusers' ``UNet2DModel`` filled with
:func:`pifs_jax.models.seeded_diffusers_weights` (a seeded NumPy function of the state-dict keys
and shapes). Here the same weights are regenerated from the seed, written as a safetensors
pipeline folder in a temporary folder and read back with :func:`pifs_jax.models.load_diffusers_unet`.

Tolerances (relative to the largest reference value, ``|ours - ref| <= tol max|ref|``):

- float32 network vs diffusers in float32: 1e-4 (two float32 programs with different operation
  orders; measured up to ~2e-6 on the small networks, ~1e-5 on the 35.7M-parameter one);
- float64 network vs diffusers in float64: 1e-5 (both embed the timestep in float32, as diffusers
  does; torch's and XLA's float32 ``exp`` may differ by an ulp, which moves an argument
  ``k omega`` near ``k = 999`` by an ulp of 999 (6e-5) and an embedding entry by as much; the
  network damps it to ~1.4e-6 measured at ``k = 999``, ~1e-9 at ``k = 0``);
- our float32 and float64 networks (same embedding): 1e-4, the float32 round-off as above;
- the 10-step DDIM chain vs diffusers' ``DDIMScheduler`` (float32): 1e-3 (the schedule is built
  here in float64 and by diffusers in float32, plus ten float32 network calls).

Each pipeline folder is written once per module and each model loaded once per dtype
(:class:`Models`): the tests of one architecture share the loaded parameters and, through
``jitted_apply`` and the package's pytree denoisers, the compiled programs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_compile_once import counted_compilations

import pifs_jax as pj
from pifs_jax.interop import diffusers_config_grid, from_diffusers_config
from pifs_jax.models import as_eps_fn, attention_entropy, load_diffusers_unet, write_random_diffusers_unet
from pifs_jax.models.diffusers_unet import diffusers_timestep_embedding

FIXTURES = Path(__file__).parent / "fixtures"
# each network compiles in 5-30 s on two loaded cores: small_a in the fast tier, the rest in the full suite
SMALL = ("small_a", pytest.param("small_b", marks=pytest.mark.slow), pytest.param("small_c", marks=pytest.mark.slow))


def read_fixture(name: str) -> tuple[dict, dict]:
    meta = json.loads((FIXTURES / f"diffusers_{name}.json").read_text())
    with np.load(FIXTURES / f"diffusers_{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


class Models:
    """Pipeline folders written once per (fixture, seed), models loaded once per folder and dtype.

    A folder holds the fixture's weights regenerated from its seed (or another seed). Writing the seeded weights and reading them back costs ~1-4 s per model (the 35.7M-parameter
    one most); the float32 and float64 models of an architecture are read from the same folder.
    Keyed by the x64 flag too: a model loaded with x64 on (float64 schedule tables) is not used
    with it off.
    """

    def __init__(self, root: Path):
        self.root = root
        self.folders: dict = {}
        self.loaded: dict = {}

    def folder(self, name: str, seed: int | None = None) -> Path:
        if (name, seed) not in self.folders:
            meta, _ = read_fixture(name)
            folder = self.root / f"{name}-{seed}"
            write_random_diffusers_unet(
                folder,
                meta["config"],
                seed=meta["weight_seed"] if seed is None else seed,
                scheduler_config=meta["scheduler_config"],
            )
            self.folders[name, seed] = folder
        return self.folders[name, seed]

    def load(self, name: str, dtype=np.float32, seed: int | None = None):
        key = (name, np.dtype(dtype).name, seed, bool(jax.config.jax_enable_x64))
        if key not in self.loaded:
            self.loaded[key] = load_diffusers_unet(self.folder(name, seed), dtype=dtype)
        return self.loaded[key]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("diffusers"))


def assert_close(ours, ref, tol, what):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    error = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert error <= tol, f"{what}: relative error {error:.3g} > {tol:g}"


@functools.partial(jax.jit, static_argnums=(0, 4))
def jitted_apply(module, params, x, t, return_attention=False):
    return module.apply({"params": params}, x, t, return_attention=return_attention)


def batched_eps(loaded, x, k):
    """The network on a batch at diffusers timestep ``k`` (our ``t = k + 1``), jitted once per architecture."""
    t = jnp.full((x.shape[0],), k + 1, jnp.int32)
    return jitted_apply(loaded.module, loaded.params, jnp.asarray(x), t)


def check_eps(name, models):
    meta, ref = read_fixture(name)
    loaded = models.load(name)
    # float32 outputs computed once, with x64 off: under x64 the same float32 network would be
    # compiled a second time (the flag is part of the jit cache key)
    eps32 = [np.asarray(batched_eps(loaded, ref["x"], k)) for k in meta["timesteps"]]
    for i, k in enumerate(meta["timesteps"]):
        assert eps32[i].dtype == np.float32
        assert_close(eps32[i], ref["eps32"][i], 1e-4, f"{name} float32, k = {k}")
    with jax.enable_x64(True):
        loaded64 = models.load(name, np.float64)
        for i, k in enumerate(meta["timesteps"]):
            eps64 = batched_eps(loaded64, ref["x"].astype(np.float64), k)
            assert eps64.dtype == jnp.float64
            assert_close(eps64, ref["eps64"][i], 1e-5, f"{name} float64, k = {k}")
            assert_close(eps32[i], eps64, 1e-4, f"{name} float32 vs float64, k = {k}")


def check_chain(name, models):
    meta, ref = read_fixture(name)
    loaded = models.load(name)
    grid = loaded.sampling_grid(meta["chain_steps"])
    # the grid is the one diffusers walked: its timesteps are grid - 1
    np.testing.assert_array_equal(np.sort(ref["chain_timesteps"]) + 1, grid[1:])
    np.testing.assert_array_equal(grid, diffusers_config_grid(meta["scheduler_config"], meta["chain_steps"]))
    x0 = pj.ddim_sample(loaded.eps_fn, loaded.schedule, jnp.asarray(ref["chain_x_T"]), grid=grid)
    assert_close(x0, ref["chain_x0"], 1e-3, f"{name} DDIM chain")


def test_timestep_embedding_is_diffusers_sinusoid(x64):
    """Against the closed form in float64: ``[sin(k w), cos(k w)]`` (flipped: cos first), ``w_i = 10000^(-i/(h - shift))``.

    Computed in float32 as diffusers does: the argument ``k w`` carries a relative round-off of a
    few float32 ulps, at most ~3 * 6e-5 absolute for ``k = 999``; 5e-4 bounds it.
    """
    k = np.array([0, 1, 37, 999])
    for dim, flip, shift in ((32, False, 1), (33, True, 0), (16, True, 0.5)):
        half = dim // 2
        w = np.exp(-np.log(10000.0) * np.arange(half) / (half - shift))
        args = k[:, None] * w
        expected = np.concatenate([np.sin(args), np.cos(args)], axis=1)
        if flip:
            expected = np.concatenate([expected[:, half:], expected[:, :half]], axis=1)
        if dim % 2:
            expected = np.pad(expected, ((0, 0), (0, 1)))
        got = diffusers_timestep_embedding(jnp.asarray(k), dim, flip_sin_to_cos=flip, freq_shift=shift)
        assert got.dtype == jnp.float32 and got.shape == (4, dim)
        np.testing.assert_allclose(got, expected, atol=5e-4, rtol=0)
        np.testing.assert_allclose(got[:3], expected[:3], atol=2e-6, rtol=0)  # small arguments: float32 round-off


@pytest.mark.parametrize("name", SMALL)
def test_eps_matches_diffusers(name, models):
    check_eps(name, models)


@pytest.mark.slow
def test_eps_matches_diffusers_ddpm_cifar10_architecture(models):
    """google/ddpm-cifar10-32's architecture (35.7M parameters), seeded weights."""
    meta, _ = read_fixture("cifar10")
    assert meta["parameters"] == 35_746_307  # counted by diffusers when the fixture was written
    check_eps("cifar10", models)


@pytest.mark.slow
@pytest.mark.parametrize("name", ("small_a", "small_b"))
def test_ddim_chain_matches_diffusers(name, models):
    check_chain(name, models)


@pytest.mark.slow
def test_ddim_chain_matches_diffusers_ddpm_cifar10_architecture(models):
    check_chain("cifar10", models)


def test_schedule_is_diffusers_alphas_cumprod_shifted(models):
    """``loaded.schedule.alpha_bar[t]`` is diffusers' ``alphas_cumprod[t - 1]`` (closed form of the linear betas)."""
    loaded = models.load("small_c")
    betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(loaded.schedule.alpha_bar)[1:], np.cumprod(1 - betas), rtol=1e-5)
    assert float(loaded.schedule.alpha_bar[0]) == 1.0
    assert from_diffusers_config(read_fixture("small_c")[0]["scheduler_config"]).T == 1000


@pytest.mark.slow
@pytest.mark.parametrize("name", ("small_a", "small_b"))
def test_attention_weights_match_diffusers(name, models):
    """``return_attention=True``: every layer's probabilities, heads kept, equal diffusers' own.

    The reference comes from diffusers' classic attention processor, whose softmax runs in float32
    (``upcast_softmax``) even for a float64 network: probabilities in [0, 1] carry ~1e-7 absolute
    round-off there. Our float64 network: 1e-6 absolute. Our float32 network: 2e-5 absolute (its
    logits carry float32 round-off of the whole network before the softmax).
    """
    meta, ref = read_fixture(name)
    k = meta["timesteps"][1]
    expected = {key.split(":", 1)[1]: ref[key] for key in ref if key.startswith("attention:")}
    assert expected  # the fixture holds the attention layers
    loaded = models.load(name)
    t = jnp.full((ref["x"].shape[0],), k + 1, jnp.int32)
    _, attention = jitted_apply(loaded.module, loaded.params, jnp.asarray(ref["x"]), t, True)
    assert sorted(attention) == sorted(expected)
    for layer, probs in expected.items():
        np.testing.assert_allclose(attention[layer], probs, atol=2e-5, rtol=0, err_msg=layer)
    with jax.enable_x64(True):
        loaded64 = models.load(name, np.float64)
        _, attention64 = jitted_apply(loaded64.module, loaded64.params, jnp.asarray(ref["x"], jnp.float64), t, True)
        for layer, probs in expected.items():
            np.testing.assert_allclose(attention64[layer], probs, atol=1e-6, rtol=0, err_msg=layer)


@pytest.mark.slow
def test_return_attention_keeps_eps_and_heads(models):
    """Every attention layer's weights, heads kept, rows summing to 1; eps bitwise unchanged."""
    _meta, ref = read_fixture("small_a")
    loaded = models.load("small_a")
    x, t = jnp.asarray(ref["x"]), jnp.array([5, 900], jnp.int32)
    eps = jitted_apply(loaded.module, loaded.params, x, t)
    eps_a, attention = jitted_apply(loaded.module, loaded.params, x, t, True)
    np.testing.assert_array_equal(eps, eps_a)
    # small_a: 64 channels with attention_head_dim 16 -> 4 heads over 8x8 = 64 tokens, in the second
    # down block (1 layer), the middle and the first up block (2 layers)
    assert sorted(attention) == [
        "down_blocks.1.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
    ]
    for name, weights in attention.items():
        assert weights.shape == (2, 4, 64, 64), name
        np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, rtol=1e-5)
        assert float(attention_entropy(weights)) > 0.0
    # small_b: attention_head_dim null -> one head as wide as the layer (shapes only: traced, not compiled)
    loaded_b = models.load("small_b")
    _, attention_b = jax.eval_shape(
        functools.partial(jitted_apply, loaded_b.module, return_attention=True),
        loaded_b.params,
        jnp.zeros((1, 8, 16, 1)),
        jnp.array([3]),
    )
    assert attention_b["down_blocks.0.attentions.1"].shape == (1, 1, 128, 128)
    assert attention_b["mid_block.attentions.0"].shape == (1, 1, 8, 8)


def test_eps_fn_follows_the_package_convention(models):
    """``eps_fn(x (H, W, C), t)`` is the batched network at diffusers' ``t - 1``, in x's dtype."""
    meta, ref = read_fixture("small_a")
    loaded = models.load("small_a")
    k = meta["timesteps"][1]
    eps = loaded.eps_fn(jnp.asarray(ref["x"][1]), k + 1)
    assert eps.shape == ref["x"][1].shape and eps.dtype == jnp.float32
    assert_close(eps, ref["eps32"][1, 1], 1e-4, "eps_fn")


@pytest.mark.slow
def test_second_checkpoint_of_the_architecture_compiles_nothing(models):
    """Loading another checkpoint of the same architecture reuses the compiled chain and Jacobian.

    The first checkpoint is the fixture's own seed (shared with the other small_c tests), the second
    another seed.
    """
    _, ref = read_fixture("small_c")
    sched = pj.linear(1000)
    grid = pj.uniform_grid(1000, 3)
    x = jnp.asarray(ref["x"][0])
    first = models.load("small_c")
    chain_1 = pj.ddim_chain(first.eps_fn, sched, x, grid=grid)
    jac_1 = pj.ddim_step_jacobian(first.eps_fn, sched, x, grid=grid, step=2)
    second = models.load("small_c", seed=2)
    with counted_compilations() as events:
        chain_2 = pj.ddim_chain(second.eps_fn, sched, x, grid=grid)
        jac_2 = pj.ddim_step_jacobian(second.eps_fn, sched, x, grid=grid, step=2)
    assert events == [], f"{len(events)} lowering/compilation event(s) for a second checkpoint"
    assert not np.allclose(chain_1, chain_2) and not np.allclose(jac_1, jac_2)
    # as_eps_fn of the loaded parts is the same pytree as .eps_fn
    assert jax.tree_util.tree_structure(second.eps_fn) == jax.tree_util.tree_structure(
        as_eps_fn(second.module, second.params)
    )


@pytest.fixture(scope="module")
def small_c64(models):
    """small_c in float64 at ``x_800`` of a two-step grid, with the step Jacobian there (used by two tests)."""
    with jax.enable_x64(True):
        _, ref = read_fixture("small_c")
        loaded = models.load("small_c", np.float64)
        sched = pj.linear(1000, dtype=jnp.float64)
        grid = np.array([0, 400, 800])
        x = jnp.asarray(ref["x"][0], jnp.float64)
        step_jacobian = np.asarray(pj.ddim_step_jacobian(loaded.eps_fn, sched, x, grid=grid, step=2))
    return SimpleNamespace(loaded=loaded, sched=sched, grid=grid, x=x, step_jacobian=step_jacobian)


@pytest.mark.slow
def test_step_jacobian_of_a_loaded_model(x64, small_c64):
    """The package's step Jacobian of a loaded model against central finite differences.

    Float64 network: central differences with h = 1e-5 have truncation error O(h^2 |J'''|) and
    round-off O(1e-16 / h); 1e-6 relative is ample.
    """
    loaded, sched, grid, x = small_c64.loaded, small_c64.sched, small_c64.grid, small_c64.x
    J = small_c64.step_jacobian
    n = x.size
    assert J.shape == (n, n) and J.dtype == np.float64
    c = pj.step_coefficients(sched, grid)
    v = jnp.asarray(np.random.default_rng(0).standard_normal(x.shape))
    h = 1e-5

    def step(y):
        return c.a[1] * y + c.b[1] * loaded.eps_fn(y, 800)

    fd = (step(x + h * v) - step(x - h * v)) / (2 * h)
    assert_close(J @ np.asarray(v).reshape(-1), fd.reshape(-1), 1e-6, "step Jacobian")


@pytest.mark.slow
def test_chain_jacobian_and_spectrum_of_a_loaded_model(x64, small_c64):
    """The chain Jacobian of a loaded model is the product of its step Jacobians; the leading exponent its norm.

    Two steps ``x_800 -> x_400 -> x_0``: ``J_chain = J_1(x_400) J_2(x_800)`` with the step
    Jacobians of :func:`pifs_jax.ddim_step_jacobian` at the chain's own states (1e-10, float64).
    The leading exponent (``k = 1``) is ``(1/2) log ||J_chain||_2`` (1e-6). The top singular
    values lie within 2.6% of each other (sigma_2 / sigma_1 = 0.974), so a single vector converges
    slowly: subspace iteration with 4 extra vectors (rate (sigma_6 / sigma_1)^2 = 0.62 per
    iteration), stopped when the exponent moves by less than 1e-9 per iteration (20 iterations;
    measured error 8e-11 relative, four orders below the tolerance). 8 extra vectors and a 1e-12
    stop cost twice the network evaluations for an error (8e-14) the test does not resolve.
    """
    loaded, sched, grid, x = small_c64.loaded, small_c64.sched, small_c64.grid, small_c64.x
    J = np.asarray(pj.chain_jacobian(loaded.eps_fn, sched, x, grid=grid))
    _, states = pj.ddim_chain(loaded.eps_fn, sched, x, grid=grid, return_trajectory=True)
    first = small_c64.step_jacobian
    second = np.asarray(pj.ddim_step_jacobian(loaded.eps_fn, sched, states[1], grid=grid, step=1))
    np.testing.assert_allclose(J, second @ first, rtol=1e-10, atol=1e-10 * np.abs(J).max())
    leading = pj.chain_lyapunov_spectrum(loaded.eps_fn, sched, x, grid=grid, k=1, oversample=4, iters=100, tol=1e-9)
    np.testing.assert_allclose(leading.exponents[0], np.log(np.linalg.norm(J, 2)) / 2, rtol=1e-6)


@pytest.mark.slow
def test_regenerated_fixtures_equal_the_committed_ones(tmp_path):
    """With torch and diffusers installed, the fixture script reproduces the committed references.

    Torch runs on one thread here: after this module's JAX programs have run, torch's OpenMP
    threads contend with XLA's on the 2-core CI machine (measured: 12 s with torch's default
    threads, 4.5 s with one, after the cifar10 tests). The comparisons are unchanged; a different
    summation order moves float32 results by round-off far inside them.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        import make_diffusers_reference as script
    finally:
        sys.path.remove(str(FIXTURES))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("small_a", "small_c"):
            script.make_reference(name, tmp_path)
    finally:
        torch.set_num_threads(threads)
    for name in ("small_a", "small_c"):
        with np.load(tmp_path / f"diffusers_{name}.npz") as new:
            _, old = read_fixture(name)
            for key in old:
                np.testing.assert_allclose(
                    new[key], old[key], rtol=1e-5, atol=1e-6 * np.max(np.abs(old[key])), err_msg=f"{name}: {key}"
                )
