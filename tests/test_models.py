"""Networks: shapes, jit agreement, attention outputs that change nothing, DDIM plumbing, configs, bad input."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pifs_jax.ddim import check_denoiser, ddim_chain
from pifs_jax.grids import uniform_grid
from pifs_jax.models import (
    PatchTransformer,
    UNet,
    as_eps_fn,
    attention_entropy,
    count_params,
    init_params,
    make_model,
    model_from_config,
    sinusoidal_embedding,
)
from pifs_jax.models.dit import sincos_position_embedding
from pifs_jax.schedules import cosine

SHAPE = (8, 8, 3)
TINY = {
    # 8x8 -> 4x4 middle (16 attention tokens); attention at other resolutions: test_unet_attention_layers
    "unet": dict(channels=8, groups=4, channel_mults=(1, 2), num_heads=2),
    # 2x2 patches: M = 16 tokens of n_k = 12
    "dit": dict(hidden=16, depth=2, num_heads=2, mlp_ratio=2),
}


def _perturbed(params, seed):
    """Initial outputs are exactly 0 (zero-initialised last layers); perturb every leaf so tests see
    a real map. NumPy noise: a jax.random draw per leaf shape would compile once per shape."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: p + 0.2 * rng.standard_normal(p.shape).astype(p.dtype), params)


class Tiny(NamedTuple):
    name: str
    module: object
    config: dict
    params: dict
    x: jax.Array
    t: jax.Array
    apply: object
    """``jax.jit`` of ``module.apply`` (plain and with attention), compiled once per model and dtype."""


@pytest.fixture(scope="module", params=["unet", "dit"])
def tiny(request):
    name = request.param
    module, config = make_model(name, image_shape=SHAPE, patch_size=2, **TINY[name])
    params = _perturbed(init_params(module, jax.random.key(0)), 1)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, *SHAPE)), jnp.float32)
    t = jnp.array([1, 400, 999], jnp.int32)
    apply = jax.jit(
        lambda p, x, t, attention=False: module.apply({"params": p}, x, t, return_attention=attention),
        static_argnames="attention",
    )
    return Tiny(name, module, config, params, x, t, apply)


@pytest.mark.slow
def test_output_shape_jit_agreement_and_attention(tiny):
    """Eager and jitted outputs agree; with return_attention=True eps is bitwise the same (eager
    and jitted), and the attention rows are probability vectors."""
    name, module, _, params, x, t, apply = tiny
    eager, attention = module.apply({"params": params}, x, t, return_attention=True)
    plain = module.apply({"params": params}, x, t)  # eager primitives are cached by now: fast
    np.testing.assert_array_equal(eager, plain)
    jitted, jitted_attention = apply(params, x, t, attention=True)
    np.testing.assert_array_equal(jitted, apply(params, x, t))
    assert eager.shape == x.shape and eager.dtype == jnp.float32
    assert float(jnp.std(eager)) > 1e-3  # a non-trivial map
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    # the timestep matters, and a scalar t broadcasts over the batch
    assert not np.allclose(apply(params, x, t[::-1]), jitted)
    np.testing.assert_array_equal(
        module.apply({"params": params}, x, jnp.full(3, t[1])), module.apply({"params": params}, x, t[1])
    )

    expected = {"mid_attn": (3, 2, 16, 16)} if name == "unet" else {"block0": (3, 2, 16, 16), "block1": (3, 2, 16, 16)}
    assert {k: v.shape for k, v in attention.items()} == expected
    for k, w in attention.items():
        assert float(jnp.min(w)) >= 0
        np.testing.assert_allclose(jnp.sum(w, axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(jitted_attention[k], w, rtol=1e-5, atol=1e-6)
    entropy = attention_entropy(attention)
    for k, h in entropy.items():
        assert 0 < float(h) <= np.log(attention[k].shape[-1]) + 1e-5


def test_unet_attention_layers():
    """Attention blocks at every listed resolution, named by level and block (traced, not compiled)."""
    module, _ = make_model(
        "unet",
        image_shape=(16, 16, 3),
        channels=8,
        groups=4,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16, 8),
        num_heads=2,
    )
    shapes = init_params_shapes(module)
    _, attention = jax.eval_shape(
        lambda p: module.apply({"params": p}, jnp.zeros((2, 16, 16, 3)), jnp.ones(2, jnp.int32), return_attention=True),
        shapes,
    )
    tokens = {0: 256, 1: 64}
    expected = {f"down{level}_attn{i}": (2, 2, tokens[level], tokens[level]) for level in (0, 1) for i in range(2)}
    expected["mid_attn"] = (2, 2, 16, 16)  # 4x4 middle
    expected.update({f"up{level}_attn{i}": (2, 2, tokens[level], tokens[level]) for level in (1, 0) for i in range(3)})
    assert {k: v.shape for k, v in attention.items()} == expected


@pytest.mark.slow
def test_plugs_into_ddim_chain(tiny):
    _name, module, _, params, x, _, apply = tiny
    eps_fn = as_eps_fn(module, params)
    check_denoiser(eps_fn, x[0])
    sched = cosine(1000)
    x0, trajectory = ddim_chain(eps_fn, sched, x[0], grid=uniform_grid(1000, 5), return_trajectory=True)
    assert x0.shape == SHAPE and trajectory.shape == (6, *SHAPE)
    assert bool(jnp.all(jnp.isfinite(trajectory)))
    # first step by hand: x_{800} = a x_{1000} + b eps(x_{1000}, 1000), eps from the batched apply
    eps = apply(params, x, jnp.full(3, 1000, jnp.int32))[0]
    ab = np.exp(np.asarray(sched.log_alpha_bar, np.float64))
    a = np.sqrt(ab[800] / ab[1000])
    b = np.sqrt(1 - ab[800]) - a * np.sqrt(1 - ab[1000])
    by_hand = a * np.asarray(x[0]) + b * np.asarray(eps)  # a ~ 1e2 at the cosine end: float32 cancellation
    np.testing.assert_allclose(trajectory[1], by_hand, rtol=0, atol=1e-5 * np.max(np.abs(by_hand)))


@pytest.mark.slow
def test_parameters_by_closure_are_differentiable():
    """jax.grad over the parameters goes through as_eps_fn and a DDIM chain.

    Any parameter set will do: NumPy draws of the initialisation's shapes (traced, not compiled)
    and a NumPy input, so that nothing but the gradient is compiled.
    """
    module, _ = make_model("dit", image_shape=SHAPE, patch_size=4, hidden=8, depth=1, num_heads=1, mlp_ratio=1)
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), init_params_shapes(module)
    )
    x = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE), jnp.float32)
    sched = cosine(1000)

    def loss(p):
        return jnp.sum(ddim_chain(as_eps_fn(module, p), sched, x, grid=uniform_grid(1000, 2)) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(g**2)) for g in leaves) > 0


@pytest.mark.slow
def test_float64_inputs(tiny):
    """float64 images give a float64 eps (float32 parameters are promoted) that matches float32."""
    name, module, _, params, x, t, apply = tiny
    reference = apply(params, x, t)
    with jax.enable_x64(True):
        out = apply(params, x.astype(jnp.float64), t)
        assert out.dtype == jnp.float64
        if name == "dit":  # one more compilation; the cast is the same code for both models
            assert as_eps_fn(module, params)(x[0].astype(jnp.float64), 5).dtype == jnp.float64
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)


def test_attention_entropy_reference_values():
    uniform = jnp.full((2, 3, 5, 7), 1 / 7)
    np.testing.assert_allclose(attention_entropy(uniform), np.log(7), rtol=1e-6)
    one_hot = jax.nn.one_hot(jnp.arange(5) % 7, 7)[None, None]
    assert float(attention_entropy(one_hot)) == 0.0
    w = jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    expected = (np.log(2) - (0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5))) / 2
    np.testing.assert_allclose(attention_entropy(w), expected, rtol=1e-6)
    assert [float(v) for v in attention_entropy([uniform, one_hot])] == pytest.approx([np.log(7), 0.0])


def test_time_and_position_embeddings():
    e = sinusoidal_embedding(jnp.array([0, 3]), 8)
    omega = 10000.0 ** (-np.arange(4) / 3)
    np.testing.assert_allclose(e[1], np.concatenate([np.sin(3 * omega), np.cos(3 * omega)]), rtol=1e-6)
    np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1])
    pos = sincos_position_embedding(4, 4, 16)
    assert pos.shape == (16, 16) and len({row.tobytes() for row in pos}) == 16


def init_params_shapes(module):
    """The parameter pytree as ShapeDtypeStructs: traced, never compiled."""
    return jax.eval_shape(lambda k: init_params(module, k), jax.random.key(0))


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_configs(name):
    """Quick configs are small, full ones have the paper's geometry; configs survive JSON."""
    module, config = make_model(name, size="quick")
    assert config["image_shape"] == [16, 16, 3] and config["patch_size"] == 4
    assert json.loads(json.dumps(config)) == config
    assert model_from_config(json.loads(json.dumps(config))) == module
    n_params = count_params(init_params_shapes(module))
    assert 1e5 <= n_params <= 3e5
    full, full_config = make_model(name, size="full")
    assert full_config["image_shape"] == [32, 32, 3] and full_config["patch_size"] == 8
    if name == "dit":
        assert isinstance(full, PatchTransformer) and full.patch_size == 8  # 16 patches of 8 * 8 * 3 = 192
        sincos, _ = make_model("dit", image_shape=SHAPE, patch_size=2, pos_embedding="sincos", **TINY["dit"])
        assert "pos_embedding" not in init_params_shapes(sincos) and "pos_embedding" in init_params_shapes(module)
    else:
        assert isinstance(full, UNet) and full.downsampling_factor == 4
    digits, _ = make_model(name, image_shape=(8, 8, 1), patch_size=2, **TINY[name])
    shapes = init_params_shapes(digits)
    out = jax.eval_shape(lambda p: digits.apply({"params": p}, jnp.zeros((2, 8, 8, 1)), jnp.ones(2, jnp.int32)), shapes)
    assert out.shape == (2, 8, 8, 1)


@pytest.mark.slow
def test_bad_inputs(tiny):
    name, module, _config, params, x, t, _ = tiny
    with pytest.raises(ValueError, match=r"^x: expected images of shape .*\(B, 8, 8, 3\)"):
        module.apply({"params": params}, jnp.zeros((2, 6, 6, 3) if name == "dit" else (2, 9, 9, 3)), t[:2])
    with pytest.raises(ValueError, match=r"^x:"):
        module.apply({"params": params}, jnp.zeros((2, 8, 8, 1)), t[:2])
    with pytest.raises(ValueError, match=r"^x:"):
        module.apply({"params": params}, x[0], t[0])  # no batch axis
    with pytest.raises(ValueError, match=r"^x:"):
        module.apply({"params": params}, jnp.zeros((2, *SHAPE), jnp.int32), t[:2])
    with pytest.raises(ValueError, match=r"^t: .*\(3,\)"):
        module.apply({"params": params}, x, t[:2])
    # raised while tracing, before anything runs, also under jit
    with pytest.raises(ValueError, match=r"^x:"):
        jax.jit(lambda p, x: module.apply({"params": p}, x, jnp.ones(2, jnp.int32)))(params, jnp.zeros((2, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"^eps_fn:.*x: expected"):
        ddim_chain(as_eps_fn(module, params), cosine(100), jnp.zeros((5, 5, 3)), grid=uniform_grid(100, 2))


def test_make_model_bad_arguments():
    with pytest.raises(ValueError, match=r"^image_shape: .*multiples of 4.*\(12, 12, 3\)"):
        make_model("unet", image_shape=(14, 14, 3), channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match=r"^patch_size: .*do not tile"):
        make_model("dit", image_shape=(16, 16, 3), patch_size=3)
    with pytest.raises(ValueError, match=r"^image_shape:"):
        make_model("dit", image_shape=(16, 16))
    with pytest.raises(ValueError, match=r"^name:"):
        make_model("vit")
    with pytest.raises(ValueError, match=r"^size:"):
        make_model("unet", size="huge")
    with pytest.raises(ValueError, match=r"^overrides: .*\['hidden'\]"):
        make_model("unet", hidden=3)
    with pytest.raises(ValueError, match=r"^groups:"):
        make_model("unet", channels=12, groups=8)
    with pytest.raises(ValueError, match=r"^num_heads:"):
        make_model("dit", hidden=30, num_heads=4)
    with pytest.raises(ValueError, match=r"^pos_embedding:"):
        make_model("dit", pos_embedding="rope")
    _, config = make_model("dit")
    with pytest.raises(ValueError, match=r"^config: .*missing \['depth'\]"):
        model_from_config({k: v for k, v in config.items() if k != "depth"})
    with pytest.raises(ValueError, match=r"^decoder_features:"):
        make_model("dit", decoder_features=-1)


@pytest.mark.slow
@pytest.mark.parametrize("features", [0, 16])
def test_dit_decoders_start_at_zero(features):
    """Both decoders (linear per patch, F = 0; U-ViT-style features + 3x3 convolution) start at
    eps = 0 (adaLN-zero) and have the parameters they claim; the convolution is what trains from 0."""
    module, config = make_model("dit", image_shape=SHAPE, patch_size=2, decoder_features=features, **TINY["dit"])
    assert config["decoder_features"] == features
    params = init_params(module, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, *SHAPE)), jnp.float32)
    eps = module.apply({"params": params}, x, jnp.array([10, 900], jnp.int32))
    np.testing.assert_array_equal(eps, 0.0)
    if features:
        assert params["final"]["kernel"].shape == (16, 2 * 2 * features)
        assert params["final_conv"]["kernel"].shape == (3, 3, features, 3)
    else:
        assert params["final"]["kernel"].shape == (16, 2 * 2 * 3) and "final_conv" not in params


@pytest.mark.slow
def test_dit_input_skip_adds_gamma_of_t_times_x():
    """input_skip: eps = network + gamma(t) x with gamma = Dense(1)(silu(c)) starting at zero. With
    every other output layer at zero the network is exactly gamma(t) x: a constant bias b gives b x
    (exact in float32, one multiply), and a kernel makes gamma depend on t but not on x (eps is
    linear in x: eps(2x) = 2 eps(x) to float32 rounding, 1e-6)."""
    module, config = make_model("dit", image_shape=SHAPE, patch_size=2, input_skip=True, **TINY["dit"])
    assert config["input_skip"] is True
    params = init_params(module, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, *SHAPE)), jnp.float32)
    t = jnp.array([10, 900], jnp.int32)
    np.testing.assert_array_equal(module.apply({"params": params}, x, t), 0.0)
    skip = params["input_skip"]
    assert skip["kernel"].shape == (TINY["dit"]["hidden"], 1) and skip["bias"].shape == (1,)
    biased = {**params, "input_skip": {"kernel": skip["kernel"], "bias": jnp.array([0.5])}}
    np.testing.assert_array_equal(module.apply({"params": biased}, x, t), 0.5 * x)
    kernel = jnp.asarray(np.random.default_rng(5).standard_normal(skip["kernel"].shape), jnp.float32)
    timed = {**params, "input_skip": {"kernel": kernel, "bias": jnp.zeros(1)}}
    eps = module.apply({"params": timed}, x, t)
    gamma = eps / x
    np.testing.assert_allclose(gamma, gamma[:, :1, :1, :1] * jnp.ones_like(x), rtol=1e-5)
    assert abs(float(gamma[0, 0, 0, 0] - gamma[1, 0, 0, 0])) > 1e-3  # depends on t
    np.testing.assert_allclose(module.apply({"params": timed}, 2 * x, t), 2 * eps, rtol=1e-6, atol=1e-6)
