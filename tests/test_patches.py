"""Patch partition: ordering, inverse, permutation, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pifs_jax.patches import patch_layout, patch_permutation, patchify, unpatchify


@pytest.mark.parametrize("shape, p", [((8, 8, 3), 4), ((6, 4), 2), ((4, 6, 2), 2), ((5, 5, 1), 5), ((3, 3, 2), 1)])
def test_patchify_order_and_inverse(shape, p):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    patches = np.asarray(patchify(x, p))
    layout = patch_layout(shape, p)
    assert patches.shape == (layout.num_patches, layout.patch_dim)
    x3 = x.reshape(shape[0], shape[1], -1)
    for k in range(layout.num_patches):
        r, c = divmod(k, layout.cols)  # row-major over the patch grid
        expected = x3[r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(-1)  # row-major (row, col, channel)
        np.testing.assert_array_equal(patches[k], expected)
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, shape, p)), x)


def test_patch_permutation_matches_patchify():
    shape, p = (8, 4, 3), 2
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    perm = patch_permutation(shape, p)
    assert sorted(perm.tolist()) == list(range(x.size))
    np.testing.assert_array_equal(x.reshape(-1)[perm], np.asarray(patchify(x, p)).reshape(-1))
    np.testing.assert_array_equal(np.asarray(patchify(x, p)).reshape(-1)[np.argsort(perm)], x.reshape(-1))


def test_patchify_jit_and_vmap():
    x = jax.random.normal(jax.random.key(0), (5, 8, 8, 3))
    plain = jnp.stack([patchify(xi, 4) for xi in x])
    batched = jax.vmap(lambda xi: patchify(xi, 4))(x)
    jitted = jax.jit(patchify, static_argnums=1)(x[0], 4)
    np.testing.assert_array_equal(batched, plain)
    np.testing.assert_array_equal(jitted, plain[0])
    round_trip = jax.jit(lambda xi: unpatchify(patchify(xi, 4), xi.shape, 4))(x[1])
    np.testing.assert_array_equal(round_trip, x[1])


def test_bad_patch_size():
    with pytest.raises(ValueError, match=r"patch_size.*\(8, 6, 3\)"):
        patchify(jnp.zeros((8, 6, 3)), 4)
    with pytest.raises(ValueError, match="patch_size"):
        patch_permutation((8, 8, 3), 3)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="patch_size"):
            patch_layout((8, 8, 3), bad)


def test_bad_image_shape_and_patches():
    with pytest.raises(ValueError, match="image_shape"):
        patch_layout((8,), 2)
    with pytest.raises(ValueError, match="image_shape"):
        patch_layout((2, 2, 2, 2), 2)
    with pytest.raises(ValueError, match="patches"):
        unpatchify(jnp.zeros((4, 15)), (8, 8, 1), 4)
