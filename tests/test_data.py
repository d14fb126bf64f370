"""Data: photograph crops (determinism, disjoint splits, range), digits, synthetic Gaussians, patch stats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pifs_jax.data import (
    DIGITS_TRAIN,
    PHOTO_NAMES,
    gaussian_mixture_data,
    gaussian_patch_data,
    load_dataset,
    load_photo,
    patch_stats,
    photo_crop_count,
    photo_crops,
)
from pifs_jax.patches import patchify

# ----------------------------------------------------------------------------- photographs


def test_photo_crops_shape_range_and_determinism():
    a = photo_crops(jax.random.key(0), size=16, n=64)
    b = photo_crops(jax.random.key(0), size=16, n=64)
    c = photo_crops(jax.random.key(1), size=16, n=64)
    assert a.shape == (64, 16, 16, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert float(a.max()) - float(a.min()) > 1.0  # real content, not a constant
    d = photo_crops(jax.random.key(0), size=32, n=8, split="test")
    assert d.shape == (8, 32, 32, 3)


def test_photo_crops_come_from_the_downsampled_photo():
    crops, pos = photo_crops(jax.random.key(3), size=16, n=20, return_positions=True)
    factor = 64 // 16
    for i in range(20):
        name = PHOTO_NAMES[pos.photo[i]]
        image = load_photo(name, factor)
        window = image[pos.top[i] : pos.top[i] + 16, pos.left[i] : pos.left[i] + 16]
        np.testing.assert_allclose(np.asarray(crops[i]), window, rtol=0, atol=1e-6)
    # box average then x / 127.5 - 1, checked on one pixel of the raw photograph
    import skimage.data  # the photograph as scikit-image ships it: an independent source

    raw = skimage.data.astronaut()[..., :3].astype(np.float64)
    np.testing.assert_allclose(load_photo("astronaut", factor)[5, 7], raw[20:24, 28:32].mean(axis=(0, 1)) / 127.5 - 1)


def test_train_and_test_regions_are_disjoint_exhaustively():
    """Every train crop against every test crop: no shared pixel, no identical crop."""
    size = 16
    n_train, n_test = photo_crop_count(size=size), photo_crop_count(size=size, split="test")
    assert (n_train, n_test) == (9537, 8959)  # the counts the module docstring states
    train, tp = photo_crops(jax.random.key(0), size=size, n=n_train, return_positions=True)
    test, sp = photo_crops(jax.random.key(1), size=size, n=n_test, split="test", return_positions=True)
    # without replacement: every position exactly once
    assert len(set(zip(tp.photo, tp.top, tp.left, strict=True))) == n_train
    for k, name in enumerate(PHOTO_NAMES):
        covered = np.zeros(load_photo(name, 4).shape[:2], bool)
        for top, left in zip(tp.top[tp.photo == k], tp.left[tp.photo == k], strict=True):
            covered[top : top + size, left : left + size] = True
        for top, left in zip(sp.top[sp.photo == k], sp.left[sp.photo == k], strict=True):
            assert not covered[top : top + size, left : left + size].any()
    # each crop inside one checkerboard cell of side 2*size, of the split's parity
    for pos, parity in ((tp, 0), (sp, 1)):
        cell_r, cell_c = pos.top // (2 * size), pos.left // (2 * size)
        assert np.all((pos.top + size - 1) // (2 * size) == cell_r)
        assert np.all((pos.left + size - 1) // (2 * size) == cell_c)
        assert np.all((cell_r + cell_c) % 2 == parity)
    train_bytes = {row.tobytes() for row in np.asarray(train).reshape(n_train, -1)}
    assert not any(row.tobytes() in train_bytes for row in np.asarray(test).reshape(n_test, -1))


def test_load_photo_bad_inputs():
    with pytest.raises(ValueError, match=r"^name: expected one of astronaut"):
        load_photo("lena")
    with pytest.raises(ValueError, match=r"^factor:"):
        load_photo("coffee", 0)
    assert not load_photo("coffee", 8).flags.writeable  # the cached array cannot be changed by a caller


def test_photo_crops_bad_inputs():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"^n: .*9537"):
        photo_crops(key, size=16, n=9538)
    with pytest.raises(ValueError, match=r"^n:"):
        photo_crops(key, size=16, n=0)
    with pytest.raises(ValueError, match=r"^split:"):
        photo_crops(key, size=16, n=4, split="val")
    with pytest.raises(ValueError, match=r"^size:"):
        photo_crops(key, size=0, n=4)
    with pytest.raises(ValueError, match=r"^size:"):
        photo_crops(key, size=300, n=4)
    with pytest.raises(ValueError, match=r"^downsample:"):
        photo_crops(key, size=16, n=4, downsample=0)
    with pytest.raises(ValueError, match=r"^photos:"):
        photo_crops(key, size=16, n=4, photos=("lena",))
    with pytest.raises(ValueError, match=r"^key:"):
        photo_crops(np.float32(0.5), size=16, n=4)


def test_legacy_and_typed_keys():
    """Raw uint32 keys (jax.random.PRNGKey) and typed keys both work; equal bits give equal data."""
    legacy = photo_crops(jax.random.PRNGKey(7), size=16, n=8)
    typed = photo_crops(jax.random.wrap_key_data(jax.random.PRNGKey(7)), size=16, n=8)
    np.testing.assert_array_equal(legacy, typed)
    a = load_dataset("digits", jax.random.fold_in(jax.random.key(0), 1), 10)
    b = load_dataset("digits", jax.random.fold_in(jax.random.key(0), 2), 10)
    assert not np.array_equal(a, b)


# ----------------------------------------------------------------------------- named sets


def test_load_dataset_shapes_and_digits_split():
    key = jax.random.key(0)
    assert load_dataset("photos16", key, 5).shape == (5, 16, 16, 3)
    assert load_dataset("photos32", key, 5, split="test").shape == (5, 32, 32, 3)
    train = np.asarray(load_dataset("digits", key, 200))
    test = np.asarray(load_dataset("digits", key, 360, split="test"))
    assert train.shape == (200, 8, 8, 1) and test.shape == (360, 8, 8, 1)
    assert train.min() >= -1 and train.max() <= 1 and train.min() == -1 and train.max() == 1
    np.testing.assert_array_equal(train, load_dataset("digits", key, 200))
    from sklearn.datasets import load_digits  # the digits as scikit-learn ships them (0..16)

    everything = (load_digits().images[..., None] / 8.0 - 1.0).astype(np.float32)
    train_rows = {r.tobytes() for r in everything[:DIGITS_TRAIN].reshape(DIGITS_TRAIN, -1)}
    test_rows = {r.tobytes() for r in everything[DIGITS_TRAIN:].reshape(len(everything) - DIGITS_TRAIN, -1)}
    assert all(r.tobytes() in train_rows for r in train.reshape(200, -1))
    assert {r.tobytes() for r in test.reshape(360, -1)} == test_rows  # n = all: the whole test split
    with pytest.raises(ValueError, match=r"^n: .*360"):
        load_dataset("digits", key, 361, split="test")
    with pytest.raises(ValueError, match=r"^name:"):
        load_dataset("cifar10", key, 5)


# ----------------------------------------------------------------------------- synthetic


def test_gaussian_patch_data_has_the_prescribed_patch_variances(x64):
    """Isotropic patches N(0, v_k I): the mean sample variance of patch k estimates v_k with
    relative standard error sqrt(2 / ((N - 1) n_k)) = 0.32 % (N = 4000, n_k = 48); tolerance 6 of them.
    Cross-patch covariances are 0 up to 6 standard errors sqrt(v_j v_k / N)."""
    v = np.array([0.25, 1.0, 2.0, 4.0])
    n = 4000
    data = gaussian_patch_data(jax.random.key(0), n=n, image_shape=(8, 8, 3), patch_size=4, patch_variances=v)
    assert data.samples.shape == (n, 8, 8, 3) and data.samples.dtype == jnp.float64
    stats = patch_stats(data.samples, patch_size=4)
    rel_se = np.sqrt(2 / ((n - 1) * 48))
    np.testing.assert_allclose(stats.variance, v, rtol=6 * rel_se)
    np.testing.assert_array_equal(stats.ranking, [0, 1, 2, 3])
    np.testing.assert_allclose(data.patch_covs, v[:, None, None] * np.eye(48))
    flat = np.asarray(jax.vmap(lambda x: patchify(x, 4))(data.samples))  # (N, M, n_k)
    cross = np.einsum("bi,bj->ij", flat[:, 0], flat[:, 3]) / n
    assert np.max(np.abs(cross)) < 6 * np.sqrt(v[0] * v[3] / n)


def test_gaussian_patch_data_with_spectra_in_a_random_basis(x64):
    """Per-patch spectra: the returned covariances have exactly that spectrum, and the sample
    covariance matches them entrywise within 6 standard errors sqrt((S_ii S_jj + S_ij^2) / N)."""
    rng = np.random.default_rng(0)
    spectra = rng.uniform(0.1, 3.0, size=(4, 12))
    n = 20000
    mean = rng.standard_normal((4, 4, 3))
    data = gaussian_patch_data(
        jax.random.key(1), n=n, image_shape=(4, 4, 3), patch_size=2, patch_variances=spectra, mean=mean
    )
    covs = np.asarray(data.patch_covs)
    np.testing.assert_allclose(np.linalg.eigvalsh(covs), np.sort(spectra, axis=1), atol=1e-12)
    assert not np.allclose(covs[0], np.diag(np.diag(covs[0])))  # a rotated basis, not the coordinates
    stats = patch_stats(data.samples, patch_size=2)
    se = np.sqrt((np.einsum("mii,mjj->mij", covs, covs) + covs**2) / n)
    assert np.max(np.abs(np.asarray(stats.covariance) - covs) / se) < 6
    np.testing.assert_allclose(stats.variance, spectra.mean(axis=1), rtol=0.03)
    np.testing.assert_allclose(stats.mean, patchify(mean, 2), atol=6 * np.sqrt(3.0 / n))


def test_gaussian_mixture_data(x64):
    """Label frequencies within 5 binomial standard errors of the weights; component means within 6."""
    weights = np.array([1.0, 3.0])
    means = np.stack([np.full((2, 2, 1), -2.0), np.full((2, 2, 1), 1.0)])
    covs = np.stack([0.1 * np.eye(4), np.diag([1.0, 0.5, 0.0, 0.2])])  # singular covariance is fine
    n = 8000
    out = gaussian_mixture_data(jax.random.key(0), n=n, weights=weights, means=means, covs=covs)
    assert out.samples.shape == (n, 2, 2, 1) and out.labels.shape == (n,)
    labels = np.asarray(out.labels)
    p = weights / weights.sum()
    assert abs(np.mean(labels == 1) - p[1]) < 5 * np.sqrt(p[0] * p[1] / n)
    samples = np.asarray(out.samples).reshape(n, 4)
    for k in range(2):
        sel = samples[labels == k]
        se = np.sqrt(np.diag(covs[k]) / len(sel))
        assert np.all(np.abs(sel.mean(axis=0) - means[k].reshape(-1)) <= 6 * se + 1e-12)
    np.testing.assert_allclose(samples[labels == 1][:, 2], 1.0)  # zero variance coordinate
    with pytest.raises(ValueError, match=r"^covs:"):
        gaussian_mixture_data(jax.random.key(0), n=4, weights=weights, means=means, covs=covs[:, :3, :3])
    with pytest.raises(ValueError, match=r"^weights:"):
        gaussian_mixture_data(jax.random.key(0), n=4, weights=[-1.0, 1.0], means=means, covs=covs)


# ----------------------------------------------------------------------------- patch statistics


@pytest.mark.parametrize("ddof", [1, 0])
def test_patch_stats_against_numpy(x64, ddof):
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.2, 2.0, size=(1, 8, 8, 1))
    data = rng.standard_normal((60, 8, 8, 3)) * scales + 0.3
    stats = patch_stats(data, patch_size=4, ddof=ddof)
    patches = np.stack([np.asarray(patchify(x, 4)) for x in data])  # (N, M, n_k)
    assert stats.covariance.shape == (4, 48, 48)
    for k in range(4):
        cov = np.cov(patches[:, k], rowvar=False, ddof=ddof)
        np.testing.assert_allclose(stats.covariance[k], cov, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats.mean[k], patches[:, k].mean(axis=0), rtol=1e-12)
        eigvals, eigvecs = np.linalg.eigh(cov)
        np.testing.assert_allclose(stats.eigenvalues[k], eigvals[::-1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats.leading_eigenvalue[k], eigvals[-1], rtol=1e-10)
        v = np.asarray(stats.leading_eigenvector[k])
        assert abs(abs(v @ eigvecs[:, -1]) - 1) < 1e-9
        assert v[np.argmax(np.abs(v))] > 0
        np.testing.assert_allclose(stats.variance[k], np.trace(cov) / 48, rtol=1e-12)
    np.testing.assert_array_equal(stats.ranking, np.argsort(np.asarray(stats.variance)))
    np.testing.assert_array_equal(np.asarray(stats.ranking)[np.asarray(stats.rank)], np.arange(4))


def test_patch_stats_of_photos_and_digits():
    stats = patch_stats(photo_crops(jax.random.key(0), size=16, n=256), patch_size=4)
    assert stats.covariance.shape == (16, 48, 48) and stats.eigenvalues.shape == (16, 48)
    assert np.all(np.asarray(stats.leading_eigenvalue) > 0)
    gray = patch_stats(load_dataset("digits", jax.random.key(0), 100)[..., 0], patch_size=2)  # (N, H, W)
    assert gray.covariance.shape == (16, 4, 4)


def test_data_bad_inputs():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"^patch_size:"):
        patch_stats(np.zeros((5, 8, 8, 3)), patch_size=3)
    with pytest.raises(ValueError, match=r"^data:"):
        patch_stats(np.zeros((8, 8, 3)).reshape(1, 8, 8, 3, 1), patch_size=4)
    with pytest.raises(ValueError, match=r"^data:"):
        patch_stats(np.zeros((1, 8, 8, 3)), patch_size=4)
    with pytest.raises(ValueError, match=r"^data:"):
        patch_stats(np.full((3, 8, 8, 3), np.nan), patch_size=4)
    with pytest.raises(ValueError, match=r"^patch_size:"):
        gaussian_patch_data(key, n=4, image_shape=(8, 8, 3), patch_size=3, patch_variances=np.ones(4))
    with pytest.raises(ValueError, match=r"^patch_variances: expected shape \(M,\) = \(4,\)"):
        gaussian_patch_data(key, n=4, image_shape=(8, 8, 3), patch_size=4, patch_variances=np.ones(5))
    with pytest.raises(ValueError, match=r"^patch_variances:"):
        gaussian_patch_data(key, n=4, image_shape=(8, 8, 3), patch_size=4, patch_variances=-np.ones(4))
    with pytest.raises(ValueError, match=r"^mean:"):
        gaussian_patch_data(
            key, n=4, image_shape=(8, 8, 3), patch_size=4, patch_variances=np.ones(4), mean=np.zeros((8, 8))
        )
    with pytest.raises(ValueError, match=r"^n:"):
        gaussian_patch_data(key, n=0, image_shape=(8, 8, 3), patch_size=4, patch_variances=np.ones(4))
