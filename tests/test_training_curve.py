"""Quality against training steps (pifs_jax.models.training.curve).

A tiny digits DiT trained to 3 then 6 steps in two pieces (``stop_at``) equals, parameter for
parameter, one 6-step run, its cosine learning-rate schedule included; the curve is written after
every piece and a second call resumes it without retraining.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from pifs_jax.errors import ArgumentError
from pifs_jax.models import training as tr
from pifs_jax.models.training.curve import CURVE_NAME, TARGETS, curve_figure, held_out_noise, training_curve


def tiny(**overrides):
    values = dict(
        model="dit",
        size="quick",
        data="digits",
        num_train=64,
        num_test=64,
        patch_size=2,
        steps=6,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        T=100,
        sample_steps=5,
        checkpoint_every=3,
        log_every=3,
        num_samples=0,
    )
    values.update(overrides)
    return tr.TrainConfig(**values)


@pytest.mark.slow
def test_pieces_equal_one_run_and_the_curve_resumes(tmp_path):
    points = training_curve(tiny(), tmp_path / "pieces", milestones=[3, 6], num_samples=16)
    assert [p["step"] for p in points] == [3, 6]
    for p in points:
        assert 0.0 <= p["fraction_outside"] <= 1.0 and p["memorisation_ratio"] > 0
        assert p["fd_ratio"] == pytest.approx(p["fd_patches"] / p["fd_train_crops"])
        assert p["targets_met"]["fraction_outside"] == (p["fraction_outside"] <= TARGETS["max_fraction_outside"])
    whole = tr.train(tiny(), tmp_path / "whole", progress=False, evaluate=False)
    pieces = tr.load_run(tmp_path / "pieces")
    for a, b in zip(
        jax.tree_util.tree_leaves(pieces.state.ema_params),
        jax.tree_util.tree_leaves(whole.state.ema_params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    document = json.loads((tmp_path / "pieces" / CURVE_NAME).read_text())
    assert document["config"]["milestones"] == [3, 6] and "environment" in document
    again = training_curve(tiny(), tmp_path / "pieces", milestones=[3, 6], num_samples=16)  # nothing retrained
    assert again == document["results"]["points"]


def test_milestones_must_increase(tmp_path):
    for bad in ([], [0, 3], [4, 2], [3, 3], [3, 5]):
        with pytest.raises(ArgumentError, match="milestones"):
            training_curve(tiny(), tmp_path, milestones=bad)


def test_held_out_noise_differs_from_the_training_evaluation():
    """The training evaluation draws its x_T from fold_in(PRNGKey(seed), 2**31 - 1); the curve's differ."""
    ours = held_out_noise(0, 4, (8, 8, 1))
    training_eval = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), 2**31 - 1), (4, 8, 8, 1))
    assert ours.shape == (4, 8, 8, 1) and not np.allclose(ours, training_eval)


def test_stop_at_is_checked(tmp_path):
    for bad in (0, 7, 2.5, True):
        with pytest.raises(ArgumentError, match="stop_at"):
            tr.train(tiny(), tmp_path / "run", progress=False, evaluate=False, stop_at=bad)


def test_curve_figure_draws_every_measured_series():
    points = [
        {"step": s, "fraction_outside": f, "fd_ratio": 3.0 / s, "fd_ratio_straddling": 4.0 / s,
         "fd_ratio_in_domain": None, "memorisation_ratio": 1.2}
        for s, f in ((1, 0.1), (2, 0.0))
    ]  # fmt: skip
    fig = curve_figure(points, title="t")
    left, right = fig.axes
    assert len(left.lines) == 2 and len(right.lines) == 5  # fraction + target; 2 FD ratios, memorisation, 2 targets
