"""analyze_model / summarize_analysis / write_analysis: the summary against direct NumPy computations."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.analysis.report import (
    FIGURES,
    ModelAnalysis,
    analysis_markdown,
    analyze_model,
    summarize_analysis,
    write_analysis,
)
from pifs_jax.errors import ArgumentError


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)  # no ties in these continuous values


@pytest.fixture(scope="module")
def analysed():
    sched = pj.linear(1000)
    data = np.asarray(pj.load_dataset("digits", jax.random.PRNGKey(0), 96))
    return analyze_model(
        pj.empirical_denoiser(sched, data),
        sched,
        data,
        patch_size=2,
        steps=6,
        samples=3,
        seed=1,
        attention_fn=pj.empirical_attention(sched, data),
    ), sched


def test_summary_means_and_intervals_are_those_of_the_trajectories(analysed):
    result, sched = analysed
    a, s = result.analysis, result.summary
    assert s["trajectories"] == 3 and s["num_patches"] == 16
    np.testing.assert_allclose(s["alpha_bar"], np.asarray(sched.alpha_bar)[np.asarray(a.t)], rtol=1e-12)
    for name in ("kappa_diag_mean", "delta_cross_mean", "violations", "deviation_norm"):
        values = np.asarray(getattr(a, name), np.float64)
        stats = s["steps"][name]
        np.testing.assert_allclose(stats["mean"], values.mean(axis=0), rtol=1e-12)
        assert np.all(values.min(axis=0) - 1e-12 <= np.asarray(stats["lo"]))  # a mean of resamples stays in range
        assert np.all(np.asarray(stats["hi"]) <= values.max(axis=0) + 1e-12)
    np.testing.assert_allclose(
        s["steps"]["pc_sum_mean"]["mean"],
        np.mean(np.asarray(a.kappa_diag_mean, np.float64) + np.asarray(a.delta_cross_mean, np.float64), axis=0),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        s["per_patch"]["kappa_diag"], np.asarray(a.kappa_diag_per_patch, np.float64).mean(axis=0), rtol=1e-12
    )


def test_release_order_is_the_rank_correlation_over_patches(analysed):
    result, _ = analysed
    s = result.summary
    lam = np.asarray(s["patch_eigenvalues"])
    for i, row in enumerate(np.asarray(s["per_patch"]["suppression"])):
        expected = np.corrcoef(_ranks(lam), _ranks(row))[0, 1]
        assert s["release_order"]["lambda_suppression"]["rho"][i] == pytest.approx(expected, abs=1e-12)


def test_deviation_fit_is_least_squares_on_the_high_noise_steps(analysed):
    result, _ = analysed
    s = result.summary
    high = np.asarray(s["logsnr"]) < 0
    x = np.log(np.sqrt(np.asarray(s["alpha_bar"])[high]))
    y = np.log(np.asarray(s["steps"]["deviation_norm"]["mean"])[high])
    slope, intercept = np.polyfit(x, y, 1)
    assert s["deviation_fit"]["slope"] == pytest.approx(slope, rel=1e-10)
    assert s["deviation_fit"]["intercept"] == pytest.approx(intercept, rel=1e-10, abs=1e-12)
    assert s["deviation_fit"]["steps"] == int(high.sum())


def test_files_are_written_with_config_and_the_claims(analysed, tmp_path):
    result, _ = analysed
    paths = write_analysis(tmp_path, result, title="empirical digits", config={"model": "empirical"}, seed=1)
    assert paths[-1].name == "analysis.md"  # last: its presence means complete
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert document["config"] == {"model": "empirical"} and document["seed"] == 1
    assert [c["name"] for c in document["results"]["claims"]] == [c.name for c in result.claims]
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 0
    assert "| claim | paper | ours | verdict |" in (tmp_path / "analysis.md").read_text()


def test_bad_input():
    sched = pj.linear(1000)
    data = np.asarray(pj.load_dataset("digits", jax.random.PRNGKey(0), 32))
    eps = pj.empirical_denoiser(sched, data)
    with pytest.raises(ArgumentError, match="samples"):
        analyze_model(eps, sched, data, patch_size=2, steps=2, samples=1)
    with pytest.raises(ArgumentError, match="train_images"):
        analyze_model(eps, sched, None, patch_size=2, steps=2, samples=2)
    with pytest.raises(ArgumentError, match="patch_size"):
        analyze_model(eps, sched, data, patch_size=3, steps=2, samples=2)


def test_one_trajectory_gives_undefined_intervals_not_zero_width_ones(tmp_path):
    """With S = 1 the bootstrap 'interval' was [mean, mean]; now NaN, written n/a (1 trajectory)."""
    sched = pj.linear(1000)
    data = np.asarray(pj.load_dataset("digits", jax.random.PRNGKey(0), 32))
    stats = pj.patch_stats(data, patch_size=2)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (1, *data.shape[1:]))
    analysis = pj.analyze_chain(
        pj.empirical_denoiser(sched, data),
        sched,
        x_T,
        grid=pj.uniform_grid(1000, 3),
        patch_size=2,
        baseline=stats,
        attention_fn=pj.empirical_attention(sched, data),
    )
    lam = np.asarray(stats.leading_eigenvalue, np.float64)
    summary = summarize_analysis(analysis, patch_eigenvalues=lam, sched=sched)
    assert summary["trajectories"] == 1
    intervals = [*summary["steps"].values(), *summary["attention_entropy_per_layer"].values()]
    for stats_ in intervals:
        assert np.all(np.isfinite(stats_["mean"]))
        assert np.all(np.isnan(stats_["lo"])) and np.all(np.isnan(stats_["hi"]))
    result = ModelAnalysis(analysis, summary, pj.evaluate_claims(analysis, patch_eigenvalues=lam, num_timesteps=1000))
    text = analysis_markdown(result, title="one trajectory")
    assert "1 trajectory, 3 DDIM steps" in text and "intervals: n/a (1 trajectory)" in text
    assert "[n/a (1 trajectory)]" in text and "nan" not in text.lower()
    write_analysis(tmp_path, result, title="one trajectory", config={}, seed=0)  # figures draw no band
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert document["results"]["steps"]["kappa_diag_mean"]["lo"] == ["nan"] * 3
