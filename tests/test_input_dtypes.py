"""Input dtypes: integer images, data sets and dtype arguments are refused by name, floats unchanged.

Where an image, a data set, a mean, a variance or a covariance enters pifs_jax.data or
pifs_jax.denoisers, an integer or boolean array is refused (ArgumentError naming the argument,
the expected floating dtypes and the dtype received): a uint8 image would be read on 0..255
instead of [-1, 1], and an integer sample would get its noise prediction truncated. Unitless
inputs (mixture weights, an eigenvector matrix) are promoted. ``dtype`` arguments accept only
float16, bfloat16, float32 and float64. patchify / unpatchify are pure reshapes: any dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax._validation import check_floating
from pifs_jax.data import (
    FLOAT_DTYPES,
    gaussian_mixture_data,
    gaussian_patch_data,
    load_dataset,
    patch_stats,
    photo_crops,
)
from pifs_jax.denoisers import (
    empirical_attention,
    empirical_denoiser,
    gaussian_denoiser,
    gaussian_denoiser_eig,
    gaussian_denoiser_patches,
    gaussian_mixture_denoiser,
)
from pifs_jax.errors import ArgumentError
from pifs_jax.patches import patchify, unpatchify

FLOATING_MESSAGE = r"expected a floating array \(float16, bfloat16, float32 or float64\), got dtype "


def _refused(argument, dtype_name):
    """pytest.raises for check_floating's message about ``argument`` receiving ``dtype_name``."""
    return pytest.raises(ArgumentError, match=rf"^{argument}: {FLOATING_MESSAGE}{dtype_name}")


# ----------------------------------------------------------------------------- the shared check


def test_check_floating_names_the_argument_and_the_dtype():
    for value, dtype_name in [
        (np.zeros(3, np.uint8), "uint8"),
        (jnp.zeros(3, jnp.int32), "int32"),
        (np.zeros(3, bool), "bool"),
        ([1, 2], "int64"),
        (np.zeros(2, np.complex64), "complex64"),
    ]:
        with _refused("x_T", dtype_name) as info:
            check_floating(value, name="x_T")
        assert info.value.argument == "x_T"
    for value in (np.zeros(3), jnp.zeros(3, jnp.bfloat16), jnp.zeros(3, jnp.float16), 1.0, [0.5, 1.5]):
        check_floating(value, name="x")  # no error


def test_check_floating_runs_under_jit():
    @jax.jit
    def f(x):
        check_floating(x, name="x")
        return x

    np.testing.assert_array_equal(f(jnp.ones(2)), [1.0, 1.0])
    with _refused("x", "int32"):
        f(jnp.ones(2, jnp.int32))


# ----------------------------------------------------------------------------- dtype arguments


@pytest.mark.parametrize("dtype", [jnp.int32, "int32", np.uint8, "bool", "complex64", "bogus", 3.5])
def test_load_dataset_refuses_non_floating_dtype(dtype):
    with pytest.raises(
        ArgumentError,
        match=r"^dtype: expected a floating dtype, one of float16, bfloat16, "
        r"float32, float64, got ",
    ) as info:
        load_dataset("digits", jax.random.key(0), 4, dtype=dtype)
    assert info.value.argument == "dtype"


def test_dtype_argument_is_refused_everywhere_before_any_work():
    key = jax.random.key(0)
    with pytest.raises(ArgumentError, match=r"^dtype: .*got int32"):
        photo_crops(key, size=16, n=4, dtype=jnp.int32)
    with pytest.raises(ArgumentError, match=r"^dtype: .*got 'bogus'"):
        load_dataset("photos16", key, 4, dtype="bogus")
    with pytest.raises(ArgumentError, match=r"^dtype: .*got int8"):
        gaussian_patch_data(key, n=2, image_shape=(4, 4, 1), patch_size=2, patch_variances=np.ones(4), dtype="int8")
    with pytest.raises(ArgumentError, match=r"^dtype: .*got uint8"):
        gaussian_mixture_data(
            key, n=2, weights=np.ones(1), means=np.zeros((1, 2)), covs=np.eye(2)[None], dtype=np.uint8
        )


def test_digits_in_every_floating_dtype(x64):
    # The float64 digits are x / 8 - 1 of the integers 0..16 (exact); every other floating dtype
    # holds the same values rounded once (k/8 - 1 is exact in float16 and bfloat16 as well).
    key = jax.random.key(3)
    reference = np.asarray(load_dataset("digits", key, 50, dtype=jnp.float64))
    np.testing.assert_array_equal(np.round((reference + 1) * 8), (reference + 1) * 8)
    assert reference.min() >= -1 and reference.max() <= 1
    assert len(np.unique(reference)) > 3  # not truncated to {-1, 0, 1}
    for name in FLOAT_DTYPES:
        out = load_dataset("digits", key, 50, dtype=name)
        assert out.dtype == jnp.dtype(name)
        np.testing.assert_array_equal(np.asarray(out, np.float64), reference)


def test_default_dtype_is_unchanged():
    out = load_dataset("digits", jax.random.key(0), 5)
    assert out.dtype == jnp.result_type(float)


# ----------------------------------------------------------------------------- data sets entering data.py


def test_patch_stats_refuses_integer_images_and_keeps_float_results(x64):
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    with _refused("data", "uint8") as info:
        patch_stats(pixels, patch_size=2)
    assert "x / 127.5 - 1" in str(info.value)
    with _refused("data", "int64"):
        patch_stats(pixels.astype(np.int64), patch_size=2)
    with _refused("data", "bool"):
        patch_stats(pixels > 128, patch_size=2)
    # The converted images give np.cov of the patch coordinates (float64 round-off, 1e-12).
    images = pixels / 127.5 - 1.0
    stats = patch_stats(images, patch_size=2)
    patches = np.stack([np.asarray(patchify(x, 2)) for x in images])  # (N, M, n_k)
    for k in range(patches.shape[1]):
        np.testing.assert_allclose(stats.covariance[k], np.cov(patches[:, k].T), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(stats.mean[k], patches[:, k].mean(axis=0), rtol=1e-12, atol=1e-14)
    # float32 data are computed in float32, as before
    assert patch_stats(images.astype(np.float32), patch_size=2).covariance.dtype == jnp.float32


def test_synthetic_data_refuse_integer_moments():
    key = jax.random.key(0)
    with _refused("mean", "int64"):
        gaussian_patch_data(
            key,
            n=2,
            image_shape=(4, 4, 1),
            patch_size=2,
            patch_variances=np.ones(4),
            mean=np.zeros((4, 4, 1), np.int64),
        )
    with _refused("patch_variances", "int64"):
        gaussian_patch_data(key, n=2, image_shape=(4, 4, 1), patch_size=2, patch_variances=[1, 2, 3, 4])
    with _refused("means", "int32"):
        gaussian_mixture_data(
            key, n=2, weights=np.ones(2), means=np.zeros((2, 3), np.int32), covs=np.stack([np.eye(3)] * 2)
        )
    with _refused("covs", "int64"):
        gaussian_mixture_data(
            key, n=2, weights=np.ones(2), means=np.zeros((2, 3)), covs=np.stack([np.eye(3, dtype=np.int64)] * 2)
        )


def test_mixture_data_promotes_integer_weights(x64):
    # Weights are normalised: integer [1, 3] and float [0.25, 0.75] give the same draw, bit for bit.
    args = dict(n=64, means=np.array([[0.0, 0.0], [5.0, 5.0]]), covs=np.stack([np.eye(2)] * 2))
    a = gaussian_mixture_data(jax.random.key(1), weights=np.array([1, 3]), **args)
    b = gaussian_mixture_data(jax.random.key(1), weights=np.array([0.25, 0.75]), **args)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.labels, b.labels)


# ----------------------------------------------------------------------------- patches: pure reshapes


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_, np.float16, np.float32])
def test_patchify_keeps_any_dtype(dtype):
    image = (np.arange(4 * 6 * 2) % 7).astype(dtype).reshape(4, 6, 2)
    patches = patchify(image, 2)
    assert patches.dtype == jnp.dtype(dtype)
    back = unpatchify(patches, image.shape, 2)
    assert back.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(back, image)
    # patch 1 (patch-row 0, patch-column 1) is image[0:2, 2:4] flattened row-major
    np.testing.assert_array_equal(patches[1], image[0:2, 2:4].reshape(-1))


# ----------------------------------------------------------------------------- denoisers


def test_denoiser_constructors_refuse_integer_moments():
    sched = pj.linear(100)
    good_cov = np.eye(4)
    with _refused("mean", "int64"):
        gaussian_denoiser(sched, np.zeros(4, np.int64), good_cov)
    with _refused("cov", "int64"):
        gaussian_denoiser(sched, np.zeros(4), np.eye(4, dtype=np.int64))
    with _refused("mean", "uint8"):
        gaussian_denoiser_eig(sched, np.zeros(4, np.uint8), np.ones(4), good_cov)
    with _refused("eigvals", "int64"):
        gaussian_denoiser_eig(sched, np.zeros(4), np.array([1, 2, 3, 4]), good_cov)
    with _refused("mean", "int32"):
        gaussian_denoiser_patches(sched, np.zeros((4, 4, 1), np.int32), np.eye(4), 2)
    with _refused("patch_covs", "int64"):
        gaussian_denoiser_patches(sched, np.zeros((4, 4, 1)), np.eye(4, dtype=np.int64), 2)
    with _refused("means", "int64"):
        gaussian_mixture_denoiser(sched, np.ones(2), np.zeros((2, 4), np.int64), np.stack([good_cov] * 2))
    with _refused("covs", "int64"):
        gaussian_mixture_denoiser(sched, np.ones(2), np.zeros((2, 4)), np.stack([np.eye(4, dtype=np.int64)] * 2))
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 2, 2, 1), dtype=np.uint8)
    with _refused("data", "uint8"):
        empirical_denoiser(sched, pixels)
    with _refused("data", "uint8"):
        empirical_attention(sched, pixels)


def test_eps_fns_refuse_integer_samples():
    sched = pj.linear(100)
    data = np.random.default_rng(0).standard_normal((5, 2, 2, 1))
    eps_fns = {
        "gaussian": gaussian_denoiser(sched, np.zeros(4), np.eye(4)),
        "patches": gaussian_denoiser_patches(sched, np.zeros((2, 2, 1)), np.eye(4), 2),
        "mixture": gaussian_mixture_denoiser(sched, np.ones(2), np.zeros((2, 4)), np.stack([np.eye(4)] * 2)),
        "empirical": empirical_denoiser(sched, data),
        "attention": empirical_attention(sched, data),
    }
    x_int = jnp.ones((2, 2, 1), jnp.int32)
    for _name, eps_fn in eps_fns.items():
        with _refused("x", "int32"):
            eps_fn(x_int, 50)
        with _refused("x", "int32"):  # dtypes are static: refused under jit as well
            jax.jit(eps_fn)(x_int, 50)


def test_float_inputs_are_unchanged_and_unitless_inputs_are_promoted(x64):
    # eps^G_t(x) = sigma_t (ab_t Sigma + sigma_t^2 I)^{-1} (x - sqrt(ab_t) mu), by direct solve in
    # float64 NumPy; the factories agree with it to 1e-12 relative for float inputs.
    sched = pj.cosine(100)
    t = 40
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    cov = a @ a.T / 4 + 0.1 * np.eye(4)
    mean = rng.standard_normal(4)
    x = rng.standard_normal(4)
    ab = float(sched.alpha_bar[t])
    sigma2 = 1.0 - ab
    expected = np.sqrt(sigma2) * np.linalg.solve(ab * cov + sigma2 * np.eye(4), x - np.sqrt(ab) * mean)
    out = gaussian_denoiser(sched, mean, cov)(x, t)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    # an integer eigenvector matrix (the identity) is promoted: same result as the float identity
    lam = np.array([0.5, 1.0, 2.0, 4.0])
    with_int = gaussian_denoiser_eig(sched, mean, lam, np.eye(4, dtype=np.int64))(x, t)
    with_float = gaussian_denoiser_eig(sched, mean, lam, np.eye(4))(x, t)
    np.testing.assert_array_equal(with_int, with_float)
    np.testing.assert_allclose(with_float, np.sqrt(sigma2) * (x - np.sqrt(ab) * mean) / (ab * lam + sigma2), rtol=1e-12)
    # integer mixture weights are promoted (normalised): [1, 3] == [0.25, 0.75]
    means = np.stack([mean, -mean])
    covs = np.stack([cov, 2 * cov])
    w_int = gaussian_mixture_denoiser(sched, np.array([1, 3]), means, covs)(x, t)
    w_float = gaussian_mixture_denoiser(sched, np.array([0.25, 0.75]), means, covs)(x, t)
    np.testing.assert_allclose(w_int, w_float, rtol=1e-14, atol=1e-15)
    # float32 samples keep float32 outputs
    assert gaussian_denoiser(sched, mean, cov)(x.astype(np.float32), t).dtype == jnp.float32
