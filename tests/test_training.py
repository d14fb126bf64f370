"""Training: loss weightings, the collage identity, the PIFS regulariser's estimator, the train loop.

Models here are a tiny linen conv net (:class:`TinyEps`) with the package's binding model
interface, so the tests stay fast; the real UNet/DiT are exercised by a CLI smoke test.
"""

from __future__ import annotations

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_compile_once import counted_compilations

import pifs_jax as pj
from pifs_jax.errors import ArgumentError
from pifs_jax.jacobians import patch_blocks
from pifs_jax.models import training as tr


class TinyEps(nn.Module):
    """A 3-layer conv eps-predictor with a sinusoidal time embedding (test stand-in for the UNet)."""

    features: int = 8
    T: int = 1000

    @nn.compact
    def __call__(self, x, t, return_attention=False):
        freqs = jnp.exp(jnp.linspace(0.0, math.log(1000.0), 4))
        angle = (t.astype(jnp.float32) / self.T)[:, None] * freqs[None, :] * 10
        emb = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
        h = nn.Conv(self.features, (3, 3))(x)
        h = nn.gelu(h + nn.Dense(self.features)(emb)[:, None, None, :])
        h = nn.gelu(nn.Conv(self.features, (3, 3))(h))
        out = nn.Conv(x.shape[-1], (3, 3))(h)
        return (out, {}) if return_attention else out


@functools.lru_cache(maxsize=16)
def tiny_init(module, image_shape):
    """``init(key) -> params`` of ``module``: one function per (module, shape), so that the training
    state builder (cached by ``init_fn`` identity, :func:`pifs_jax.models.training.initial_train_state`)
    compiles once for all the runs of equal modules in a test process."""

    def init(key):
        return module.init(key, jnp.zeros((1, *image_shape)), jnp.ones((1,), jnp.int32))["params"]

    return init


def tiny_data(n, shape=(8, 8, 1), seed=0):
    """Smooth random images in [-1, 1]: low-frequency structure a small net can learn."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, c))
    freq = rng.integers(1, 3, (n, 1, 1, c))
    images = np.sin(2 * np.pi * freq * (xx[None, :, :, None] + 0.5 * yy[None, :, :, None]) + phase)
    return (0.9 * images).astype(np.float32)


def tiny_config(**overrides):
    values = dict(
        model="unet",
        data="digits",
        num_train=64,
        num_test=32,
        patch_size=2,
        steps=40,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        T=100,
        sample_steps=10,
        checkpoint_every=20,
        log_every=5,
        num_samples=16,
    )
    values.update(overrides)
    return tr.TrainConfig(**values)


# ----------------------------------------------------------------------------- weightings


def test_min_snr_weights_equal_formula(x64):
    sched = pj.cosine(1000)
    ab = np.exp(np.asarray(sched.log_alpha_bar, np.float64))
    snr = ab[1:] / (1 - ab[1:])
    for gamma in (1.0, 5.0, 20.0):
        w = np.asarray(tr.weight_table(sched, weighting="min_snr", gamma=gamma))
        np.testing.assert_allclose(w[1:], np.minimum(snr, gamma) / snr, rtol=1e-9)
        assert w[0] == 0
    t = jnp.array([1, 10, 500, 1000])
    np.testing.assert_allclose(
        tr.loss_weights(sched, t, weighting="min_snr", gamma=5.0), np.minimum(snr[t - 1], 5.0) / snr[t - 1], rtol=1e-9
    )
    np.testing.assert_allclose(tr.weight_table(sched, weighting="snr")[1:], snr, rtol=1e-9)
    np.testing.assert_array_equal(tr.weight_table(sched, weighting="uniform")[1:], 1.0)


def test_min_snr_weights_float32_finite(x32):
    w = tr.weight_table(pj.linear(1000), weighting="min_snr", gamma=5.0)
    assert w.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(w)))
    assert float(w[-1]) == 1.0 and 0 < float(w[1]) < 1e-3


def test_collage_weighting_is_the_collage_error(x64):
    """b_t^2 ||epshat - eps||^2 == ||Phi_t(x_t) - x_s||^2 for the deterministic DDIM target."""
    sched = pj.cosine(1000)
    grid = pj.uniform_grid(1000, 20)
    coeffs = pj.step_coefficients(sched, grid)
    weights = tr.loss_weights(sched, jnp.asarray(grid[1:]), weighting="collage", grid=grid)
    rng = np.random.default_rng(0)
    ab = np.exp(np.asarray(sched.log_alpha_bar))
    for i in (0, 7, 19):
        t, s = grid[i + 1], grid[i]
        x0, eps, eps_hat = rng.standard_normal((3, 48))
        x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
        x_s = np.sqrt(ab[s]) * x0 + np.sqrt(1 - ab[s]) * eps
        phi = pj.ddim_step(
            lambda x, _, eps_hat=eps_hat: jnp.asarray(eps_hat), jnp.asarray(x_t), t, coeffs.a[i], coeffs.b[i]
        )
        collage = np.sum((np.asarray(phi) - x_s) ** 2)
        np.testing.assert_allclose(float(weights[i]) * np.sum((eps_hat - eps) ** 2), collage, rtol=1e-9)
    # off the grid the collage weight is undefined
    with pytest.raises(ValueError, match="collage weighting is defined on the sampling grid"):
        tr.loss_weights(sched, jnp.array([51]), weighting="collage", grid=grid)
    tables = tr.loss_tables(sched, weighting="collage", grid=grid)
    np.testing.assert_array_equal(tables.support, grid[1:])


def test_bad_weighting_and_config():
    with pytest.raises(ValueError, match="weighting"):
        tr.weight_table(pj.cosine(10), weighting="edm")
    with pytest.raises(ValueError, match="gamma"):
        tr.weight_table(pj.cosine(10), weighting="min_snr", gamma=0.0)
    with pytest.raises(ValueError, match="weighting"):
        tr.TrainConfig(weighting="sqrt")
    with pytest.raises(ValueError, match="steps"):
        tr.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="overrides: unknown"):
        tr.train_config("quick", stepz=3)
    assert tr.train_config("quick").patch_size == 4
    full = tr.train_config("full", model="dit")
    assert (full.data, full.patch_size, full.image_shape) == ("photos32", 8, (32, 32, 3))
    assert "checkpoint_every" not in full.identity() and "seed" in full.identity()


# ----------------------------------------------------------------------------- regulariser


def _small_model_fn(x64_dtype=jnp.float64):
    module = TinyEps(features=4, T=10)
    params = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 4, 4, 2), x64_dtype), jnp.ones((1,), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(x64_dtype) * 2.0, params)  # stronger coupling
    return module, params


@pytest.mark.slow
def test_regulariser_estimator_unbiased(x64):
    """Mean of N estimates vs the exact cross-block Frobenius sum from jax.jacfwd, for P = M and P = 1.

    Tolerance: 5 standard errors, the estimator's standard deviation computed exactly from the
    Jacobian (Rademacher variance ``2 sum_{a != c} A_ac^2`` per patch, plus the variance of the
    random patch choice when P < M); a correct estimator fails with probability ~6e-7 per check.
    """
    module, params = _small_model_fn()
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 2))
    t = jnp.array([3, 7], jnp.int32)
    p, m, n_draws = 2, 4, 4000

    def batched(z):
        return module.apply({"params": params}, z, t)

    @jax.jit
    def exact_and_blocks(xb, tb):
        def single(z):
            return module.apply({"params": params}, z[None], tb[None])[0]

        J = jax.jacfwd(lambda f: single(f.reshape(4, 4, 2)).reshape(-1))(xb.reshape(-1))
        return tr.cross_block_frobenius(single, xb, patch_size=p), patch_blocks(J, (4, 4, 2), p)

    exact, means, rad_vars = [], [], []
    for b in range(2):
        value, blocks = exact_and_blocks(x[b], t[b])
        blocks = np.asarray(blocks)
        A = [sum(blocks[k, j].T @ blocks[k, j] for k in range(m) if k != j) for j in range(m)]
        means.append(np.array([np.trace(a) for a in A]))
        rad_vars.append(np.array([2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) for a in A]))
        exact.append(float(value))
        assert np.isclose(means[-1].sum(), exact[-1], rtol=1e-10)
    exact, means, rad_vars = np.array(exact), np.array(means), np.array(rad_vars)
    assert np.all(exact > 1e-3)
    keys = jax.random.split(jax.random.PRNGKey(3), n_draws)
    for probes in (m, 1):
        if probes == m:
            variance = rad_vars.sum(axis=1)
        else:  # j uniform, estimate M q_j: Var = M^2 E_j[Var_j + mean_j^2] - exact^2
            variance = m**2 * np.mean(rad_vars + means**2, axis=1) - exact**2
        draws = jax.jit(
            jax.vmap(lambda k, probes=probes: tr.cross_block_penalty(batched, x, k, patch_size=p, probes=probes))
        )(keys)
        mean = np.asarray(jnp.mean(draws, axis=0))
        tolerance = 5 * np.sqrt(variance / n_draws)
        assert np.all(np.abs(mean - exact) < tolerance), (probes, mean, exact, tolerance)
        assert np.all(tolerance < 0.1 * exact)  # the test has power: a 10% bias would be caught


def test_regulariser_bad_input():
    def fn(z):
        return z

    with pytest.raises(ValueError, match="patch_size"):
        tr.cross_block_penalty(fn, jnp.zeros((1, 6, 6, 1)), jax.random.PRNGKey(0), patch_size=4)
    with pytest.raises(ValueError, match="probes"):
        tr.cross_block_penalty(fn, jnp.zeros((1, 4, 4, 1)), jax.random.PRNGKey(0), patch_size=2, probes=5)
    # an identity map has no cross-block coupling
    est = tr.cross_block_penalty(fn, jnp.ones((2, 4, 4, 1)), jax.random.PRNGKey(0), patch_size=2, probes=4)
    np.testing.assert_array_equal(est, 0.0)


# ----------------------------------------------------------------------------- training


def _fixed_eval_loss(apply_fn, data, tables, n_keys=32):
    """A jitted ``params -> mean eps-MSE`` over fixed keys and a fixed batch."""
    keys = jax.random.split(jax.random.PRNGKey(99), n_keys)
    x0 = jnp.asarray(data[:32])

    @jax.jit
    def evaluate(params):
        return jnp.mean(jax.vmap(lambda k: tr.denoising_loss(params, apply_fn, x0, k, tables)[1]["mse"])(keys))

    return lambda params: float(evaluate(params))


def _tiny_step(weighting="uniform", mu=0.0, steps=300, probes=1):
    module = TinyEps(features=8, T=100)
    tables = tr.loss_tables(pj.linear(100), weighting=weighting)
    optimizer = tr.make_optimizer(lr=3e-3, steps=steps, warmup_steps=10)
    state = tr.init_train_state(tiny_init(module, (8, 8, 1))(jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1))
    apply_fn = tr.module_apply_fn(module)
    step = tr.make_train_step(
        apply_fn, optimizer, tables, batch_size=16, ema_decay=0.99, mu=mu, patch_size=4, probes=probes
    )
    return apply_fn, tables, state, step


@pytest.mark.slow
def test_training_reduces_loss_and_compiles_once(x32):
    """300 steps (batches of 16) on 128 tiny images halve the eps-MSE (fixed evaluation keys); one compilation."""
    data = tiny_data(128)
    apply_fn, tables, state, step = _tiny_step(steps=300)
    evaluate = _fixed_eval_loss(apply_fn, data, tables)
    before = evaluate(state.params)
    jdata = jnp.asarray(data)
    for _ in range(300):
        state, _metrics = step(state, jdata)
    after = evaluate(state.params)
    after_ema = evaluate(state.ema_params)
    assert int(state.step) == 300
    assert after < 0.5 * before, (before, after)
    assert after_ema < 0.6 * before
    assert step._cache_size() == 1


def test_regularised_step_runs_and_lowers_the_cross_blocks(x32):
    """With a large mu the cross-block Frobenius sum (exact, jacfwd) falls during training."""
    data = jnp.asarray(tiny_data(64))
    apply_fn, _tables, state, step = _tiny_step(weighting="min_snr", mu=10.0, steps=40, probes=2)
    x, t = data[:1] * 0.5, jnp.array([50], jnp.int32)

    @jax.jit
    def exact_cross(params):
        return tr.cross_block_frobenius(lambda z: apply_fn(params, z[None], t)[0], x[0], patch_size=4)

    def cross(params):
        return float(exact_cross(params))

    before = cross(state.params)
    for _ in range(40):
        state, metrics = step(state, data)
    assert float(metrics["reg"]) > 0 and np.isfinite(float(metrics["objective"]))
    assert cross(state.params) < 0.5 * before


def test_batches_depend_only_on_seed_and_step():
    key = jax.random.PRNGKey(5)
    a = tr.batch_indices(key, 17, batch_size=8, num_data=100)
    b = tr.batch_indices(key, jnp.int32(17), batch_size=8, num_data=100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, tr.batch_indices(key, 18, batch_size=8, num_data=100))


def test_train_run_writes_everything(tmp_path, x32):
    cfg = tiny_config(steps=30, checkpoint_every=10, num_samples=16)
    data = tiny_data(96)
    module = TinyEps(features=8, T=cfg.T)
    seen = []
    result = tr.train(
        cfg,
        tmp_path / "run",
        progress=False,
        model=(module, tiny_init(module, (8, 8, 1))),
        dataset=(data[:64], data[64:]),
        callback=lambda k, m: seen.append(k),
    )
    out = tmp_path / "run"
    assert seen == list(range(1, 31))
    records = tr.read_metrics_log(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "mse", "reg", "grad_norm", "images_per_s"} <= set(records[0])
    assert (out / "checkpoint.msgpack").exists() and (out / "samples.png").exists()
    quality = json.loads((out / "quality.json").read_text())["results"]
    assert set(quality["model"]) >= {"nn_distance_mean", "fd_patches"}
    assert quality["empirical"]["nn_distance_mean"] < 0.05  # the empirical denoiser copies its data
    assert result.quality["num_samples"] == 16
    assert json.loads((out / "config.json").read_text())["steps"] == 30
    # an existing checkpoint is not overwritten without resume, nor resumed with another configuration
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    model = (module, tiny_init(module, (8, 8, 1)))
    with pytest.raises(ValueError, match="already holds a run"):
        tr.train(cfg, out, progress=False, model=model, dataset=(data[:64], data[64:]))
    with pytest.raises(ValueError, match=r"another configuration: lr = 0\.003 in the checkpoint, 0\.01 requested"):
        tr.train(
            tiny_config(steps=30, lr=0.01),
            out,
            resume=True,
            progress=False,
            model=model,
            dataset=(data[:64], data[64:]),
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # the run is left alone


@pytest.mark.slow
def test_a_second_train_of_the_same_model_compiles_nothing(tmp_path, x32):
    """Same module (an equal one), optimiser settings and loss tables: the second ``train()`` reuses the
    cached training step and step-0 state builder (``train_step_for``, ``initial_train_state``), and
    the evaluation's programs: no lowering, no backend compilation. (The configuration of
    :func:`test_train_run_writes_everything`: run after it, the first ``train()`` compiles nothing either.)"""
    cfg = tiny_config(steps=30, checkpoint_every=10, num_samples=16)
    data = tiny_data(96)
    module = TinyEps(features=8, T=cfg.T)
    init = tiny_init(module, (8, 8, 1))
    tr.train(cfg, tmp_path / "a", progress=False, model=(module, init), dataset=(data[:64], data[64:]))
    step = tr.train_step_for(module, cfg, patch_size=cfg.patch_size)
    assert tr.train_step_for(TinyEps(features=8, T=cfg.T), cfg, patch_size=cfg.patch_size) is step
    assert tr.train_step_for(module, tiny_config(steps=30, lr=0.01), patch_size=cfg.patch_size) is not step
    with counted_compilations() as compiled:
        again = TinyEps(features=8, T=cfg.T)
        tr.train(cfg, tmp_path / "b", progress=False, model=(again, init), dataset=(data[:64], data[64:]))
    assert compiled == [], compiled
    assert step._cache_size() == 1


def test_images_that_do_not_fit_the_patch_size(tmp_path):
    cfg = tiny_config(patch_size=3)
    data = tiny_data(40)
    module = TinyEps()
    with pytest.raises(ValueError, match="patch_size: 3 x 3 patches do not tile"):
        tr.train(cfg, tmp_path, progress=False, model=(module, tiny_init(module, (8, 8, 1))), dataset=(data, data))
    with pytest.raises(ValueError, match=r"dataset: expected training images of shape \(N, H, W, C\)"):
        tr.train(tiny_config(), tmp_path, progress=False, model=(module, None), dataset=(data[..., 0], data))


def test_read_metrics_log_skips_a_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in tr.read_metrics_log(path)] == [1, 2]


# ----------------------------------------------------------------------------- sample quality


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    from pifs_jax.models import quality

    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) + 0.3
    b = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(scipy_linalg.sqrtm(s_a @ s_b))
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s_a + s_b - 2 * root)
    np.testing.assert_allclose(quality.frechet_distance(a, b), expected, rtol=1e-8)
    assert quality.frechet_distance(a, a) < 1e-9
    with pytest.raises(ValueError, match="features"):
        quality.frechet_distance(a, b[:, :5])


def test_nearest_neighbours_and_report():
    from pifs_jax.models import quality

    rng = np.random.default_rng(1)
    train = rng.uniform(-1, 1, (50, 8, 8, 3))
    test = rng.uniform(-1, 1, (40, 8, 8, 3))
    d, idx = quality.nearest_neighbour_distances(train[[3, 7]], train)
    np.testing.assert_allclose(d, 0.0, atol=1e-7)
    np.testing.assert_array_equal(idx, [3, 7])
    shifted = train[:2] + 0.1
    d, _ = quality.nearest_neighbour_distances(shifted, train)
    np.testing.assert_allclose(d, 0.1, rtol=1e-6)  # RMS distance per coordinate
    report = quality.quality_report(test[:20], train=train, test=test, patch_size=4, reference_samples=train[:20])
    assert report["empirical"]["nn_distance_mean"] < 1e-6 and report["memorisation_ratio_empirical"] < 1e-5
    assert 0.5 < report["memorisation_ratio"] < 1.5  # held-out real images are novel
    assert report["useful"]["passes"] and report["noise"]["fd_patches"] > report["model"]["fd_patches"]
    with pytest.raises(ValueError, match="patch_size"):
        quality.quality_report(test, train=train, test=test, patch_size=3)
    grid = quality.image_grid(train[:5], columns=3)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3)


def test_straddling_patches_see_seams():
    """Patches of real photos shuffled between images, position by position: the aligned patch
    distribution is unchanged (the same patch vectors), the straddling patches see the seams."""
    from pifs_jax.data import load_dataset
    from pifs_jax.models import quality

    images = np.asarray(load_dataset("photos16", jax.random.PRNGKey(0), 600, split="train"), np.float64)
    features = quality.straddling_patch_features(images[:3], patch_size=4)
    # independent reference: the 4x4 patches of the 12x12 centre (offset 2), row-major per image
    manual = [
        images[i, 2 + 4 * r : 6 + 4 * r, 2 + 4 * c : 6 + 4 * c].reshape(-1)
        for i in range(3)
        for r in range(3)
        for c in range(3)
    ]
    np.testing.assert_array_equal(features, np.stack(manual))
    rng = np.random.default_rng(0)
    seamed = images[:300].copy()
    for r in range(4):
        for c in range(4):
            seamed[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = images[:300][
                rng.permutation(300), 4 * r : 4 * r + 4, 4 * c : 4 * c + 4
            ]
    real, test = images[:300], images[300:]
    aligned = [quality.frechet_patch_distance(x, test, patch_size=4) for x in (real, seamed)]
    straddling = [quality.frechet_patch_distance(x, test, patch_size=4, straddling=True) for x in (real, seamed)]
    # the same multiset of aligned patches: equal up to summation order (FD is a difference of traces ~10)
    assert aligned[1] == pytest.approx(aligned[0], abs=1e-8)
    assert straddling[1] > 3 * straddling[0]
    with pytest.raises(ValueError, match="patch_size: straddling patches need at least 2 x 2"):
        quality.straddling_patch_features(images[:2], patch_size=16)


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_train_real_model_smoke(tmp_path, capsys):
    """`pifs-jax train` with the real DiT on digits (3 steps), load_run, and the refusal to overwrite."""
    from pifs_jax import cli

    out = tmp_path / "dit"
    argv = [
        "train",
        "--model",
        "dit",
        "--data",
        "digits",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--num-train",
        "64",
        "--num-samples",
        "0",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(argv) == 0  # sampling and scoring: test_train_run_writes_everything
    printed = capsys.readouterr().out
    assert "trained dit (quick) on digits for 3 steps" in printed
    assert {p.name for p in out.iterdir()} == {"checkpoint.msgpack", "metrics.jsonl", "config.json", "loss.png"}
    run = tr.load_run(out)
    assert int(run.state.step) == 3 and run.config.patch_size == 2 and run.config.data == "digits"
    # the same command again without --resume is refused (another configuration: test_train_run_writes_everything)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "argument --out:" in err and "already holds a run" in err


def test_cli_train_bad_input(tmp_path, capsys):
    from pifs_jax import cli

    assert cli.main(["train", "--out", str(tmp_path), "--lr", "-1"]) == 2
    assert "argument --lr: expected a finite number > 0" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path), "--model", "vit"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path), "--data", "digits", "--patch-size", "3"]) == 2
    assert "argument --patch-size: 3 x 3 patches do not tile" in capsys.readouterr().err  # the option typed
    with pytest.raises(ValueError, match=r"holds no config\.json"):
        tr.load_run(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # was a TypeError traceback
        ("[1, 2]", r"config\.json' must hold a JSON object \(a training config\), got a JSON list"),
        # was a RecursionError traceback
        ("[" * 200_000 + "]" * 200_000, r"config\.json' is nested too deeply to be a training config"),
        ("{not json", r"config\.json' is not valid JSON"),
        (json.dumps({**tr.TrainConfig().to_dict(), "no_such_field": 1}), r"invalid training config: .*no_such_field"),
    ],
)
def test_load_run_refuses_a_config_json_that_is_not_a_training_config(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ArgumentError, match=r"^out_dir: '.*" + message) as info:
        tr.load_run(tmp_path)
    assert info.value.argument == "out_dir"
    with pytest.raises(ArgumentError, match=r"^out_dir: expected a run folder path"):
        tr.load_run(None)  # pyright: ignore[reportArgumentType]
