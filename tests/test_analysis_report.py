"""analyze_model / summarize_analysis / write_analysis: the summary against direct NumPy computations."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.analysis import corrected_attractor
from pifs_jax.analysis.report import (
    FIGURES,
    UNKNOWN_QUALITY,
    ModelAnalysis,
    analysis_markdown,
    analyze_model,
    card_sample_quality,
    claims_table_rows,
    run_sample_quality,
    summarize_analysis,
    write_analysis,
)
from pifs_jax.errors import ArgumentError
from pifs_jax.patches import unpatchify
from pifs_jax.results import write_result_json


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


def test_pc_readings_are_their_stated_margins(analysed):
    """Reading A is the analysis' own margin 1 - (kappa_k + delta_k); reading D is 1 minus the diagonal
    block's quotient along v_k, <v_k, [J]_kk v_k>, recomputed here from the step Jacobian itself
    (jacfwd of the DDIM map at the trajectory's states, a second method to the suppression field's
    f_t(lambda_k) - S_{k,t}; 1e-5: float32 network, float64 algebra); reading I is 1 minus the row sums
    of |u_k^T J u_j|, the same Jacobian projected on every pair of leading directions, whose diagonal
    is D's quotient; windows by crossover_window."""
    from pifs_jax.analysis.statistics import crossover_window

    result, sched = analysed
    a, s = result.analysis, result.summary
    readings = s["pc_readings"]
    margin_a = np.asarray(a.margin_per_patch, np.float64)
    np.testing.assert_allclose(readings["A"]["margin_mean"], margin_a.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(readings["A"]["violations_mean"], np.asarray(a.violations).mean(axis=0))
    window = crossover_window(a.t, a.violations, a.num_patches)
    assert readings["A"]["crossover_window"] == s["crossover_window"]
    assert (window is None) == (readings["A"]["crossover_window"] is None)
    quotient = np.asarray(a.expansion_along_leading, np.float64)[None] - np.asarray(a.suppression, np.float64)
    # the second method, on the first trajectory: u_k^T J u_k with u_k = v_k placed in patch k
    data = np.asarray(pj.load_dataset("digits", jax.random.PRNGKey(0), 96))  # the fixture's data and seed
    eps_fn = pj.empirical_denoiser(sched, data)
    stats = pj.patch_stats(data, patch_size=2)
    grid = pj.uniform_grid(sched.T, 6)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (3, *data.shape[1:]))[0]
    _, states = pj.ddim_chain(eps_fn, sched, x_T, grid=grid, return_trajectory=True)
    steps = pj.chain_steps(sched, grid)
    vectors = np.asarray(stats.leading_eigenvector, np.float64)
    embedded = []
    for k in range(a.num_patches):
        one = np.zeros_like(vectors)
        one[k] = vectors[k]
        embedded.append(np.asarray(unpatchify(one, data.shape[1:], 2), np.float64).reshape(-1))
    u = np.stack(embedded)  # (M, n)
    projected = np.asarray(a.projected_coupling, np.float64)
    for i, (x, t, a_t, b_t) in enumerate(zip(states, steps.t, steps.a, steps.b, strict=False)):
        J = np.asarray(pj.step_jacobian(eps_fn, x, t=t, a=a_t, b=b_t), np.float64)
        np.testing.assert_allclose(np.einsum("kn,nm,km->k", u, J, u), quotient[0, i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(u @ J @ u.T, projected[0, i], rtol=1e-5, atol=1e-5)  # P_kj = u_k^T J u_j
    np.testing.assert_allclose(np.diagonal(projected, axis1=-2, axis2=-1), quotient, rtol=1e-5, atol=1e-5)
    margin_i = 1.0 - np.abs(projected).sum(-1)
    np.testing.assert_allclose(readings["I"]["margin_mean"], margin_i.mean(axis=(0, 2)), rtol=1e-12)
    window_i = crossover_window(a.t, (margin_i < 0).sum(-1), a.num_patches)
    got = readings["I"]["crossover_window"]
    assert (got is None) if window_i is None else (got["t_upper"], got["t_lower"]) == window_i
    margin_d = 1.0 - quotient
    np.testing.assert_allclose(readings["D"]["margin_mean"], margin_d.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(readings["D"]["violations_mean"], (margin_d < 0).sum(-1).mean(axis=0))
    window_d = crossover_window(a.t, (margin_d < 0).sum(-1), a.num_patches)
    got = readings["D"]["crossover_window"]
    assert (got is None) if window_d is None else (got["t_upper"], got["t_lower"]) == window_d


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


# ----------------------------------------------------------------------------- sample-quality caveat


def _fake_run(folder, *, steps: int, samples: np.ndarray | None, sample_range=None):
    """A run folder as far as its recorded quality goes: quality.json (scored at ``steps``) and samples.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    if sample_range is None and samples is not None:
        sample_range = [float(samples.min()), float(samples.max())]
    write_result_json(folder / "quality.json", {"sample_range": sample_range}, config={"steps": steps}, seed=0)
    if samples is not None:
        np.savez(folder / "samples.npz", samples=samples.astype(np.float32), samples_empirical=samples)


def _samples(outside: int, total: int = 400) -> np.ndarray:
    values = np.full(total, 0.5, np.float32)
    values[:outside] = 3.0  # a diverged chain's values, far outside [-1.05, 1.05]
    return values.reshape(-1, 2, 2, 1)


def test_recorded_sample_quality_is_read_not_computed(tmp_path):
    """The rule of docs/theory.md section 11, on records only: above 5 % outside [-1.05, 1.05] the
    caveat names the fraction; at 5 % or below none; no record (or one of another step) is unknown."""
    _fake_run(tmp_path / "bad", steps=7, samples=_samples(100))
    bad = run_sample_quality(tmp_path / "bad", step=7)
    assert bad["fraction_outside"] == 0.25 and bad["bound"] == 1.05
    assert bad["caveat"] == "model does not sample its data (25.0 % of values outside the data range)"
    _fake_run(tmp_path / "edge", steps=7, samples=_samples(20))  # exactly 5 %: not above
    assert run_sample_quality(tmp_path / "edge", step=7)["caveat"] is None
    _fake_run(tmp_path / "above", steps=7, samples=_samples(21))
    assert "5.2 % of values" in run_sample_quality(tmp_path / "above", step=7)["caveat"]
    # quality.json of step 7 beside a checkpoint of step 9 (an interrupted extension): not this model's
    other = run_sample_quality(tmp_path / "bad", step=9)
    assert other["caveat"] == UNKNOWN_QUALITY and "step 7" in other["note"] and "step 9" in other["note"]
    assert run_sample_quality(tmp_path / "missing")["caveat"] == UNKNOWN_QUALITY  # none drawn, or set aside
    _fake_run(tmp_path / "range_only", steps=7, samples=None, sample_range=[-1.0, 1.02])
    assert run_sample_quality(tmp_path / "range_only")["fraction_outside"] == 0.0
    _fake_run(tmp_path / "wide_range", steps=7, samples=None, sample_range=[-4.0, 1.0])
    assert run_sample_quality(tmp_path / "wide_range")["caveat"] == UNKNOWN_QUALITY

    from pifs_jax.models.pretrained import read_card

    card = read_card("dit-digits")  # a shipped model: its held-out fraction, well inside 5 %
    shipped = card_sample_quality(card)
    assert shipped["fraction_outside"] == card["quality"]["held_out"]["fraction_outside"] and shipped["caveat"] is None
    assert "quality.held_out" in shipped["source"]
    diverged = {"name": "x", "quality": {"held_out": {"fraction_outside": 0.4}, "targets": {"outside_bound": 1.05}}}
    assert "40.0 % of values" in card_sample_quality(diverged)["caveat"]
    assert card_sample_quality({"name": "x", "check": {"fraction_outside": 0.0}})["caveat"] is None
    assert card_sample_quality({"name": "x", "quality": None})["caveat"] == UNKNOWN_QUALITY
    other_bound = {"name": "x", "quality": {"held_out": {"fraction_outside": 0.0}, "targets": {"outside_bound": 1.5}}}
    assert card_sample_quality(other_bound)["caveat"] == UNKNOWN_QUALITY


def test_verdicts_of_a_model_that_does_not_sample_carry_the_caveat(analysed, tmp_path):
    """Verdicts of a model whose samples leave the data range were printed like a trained model's:
    now analysis.md (a caveat line and every judged verdict), analysis.json ("sample_quality") and
    the comparison rows carry the caveat; the verdicts themselves are unchanged."""
    result, _ = analysed
    assert result.sample_quality is not None and result.sample_quality["caveat"] == UNKNOWN_QUALITY  # none given
    _fake_run(tmp_path / "run", steps=3, samples=_samples(120))
    record = run_sample_quality(tmp_path / "run", step=3)
    caveat = "model does not sample its data (30.0 % of values outside the data range)"
    marked = result._replace(sample_quality=record)
    assert [c.verdict for c in marked.claims] == [c.verdict for c in result.claims]
    text = analysis_markdown(marked, title="diverged")
    assert f"**Caveat: {caveat}.**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("** |")]
    judged = [c for c in result.claims if c.verdict != "not tested"]
    assert judged and len(rows) == len(result.claims)
    assert sum(f"**{c.verdict} [{caveat}]** |" in text for c in judged) == len(judged)
    write_analysis(tmp_path / "out", marked, title="diverged", config={}, seed=0)
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())["results"]
    assert document["sample_quality"]["caveat"] == caveat and document["sample_quality"]["fraction_outside"] == 0.3
    assert [c["verdict"] for c in document["claims"]] == [c.verdict for c in result.claims]
    assert f"[{caveat}]" in (tmp_path / "out" / "analysis.md").read_text()
    clean = result._replace(sample_quality=run_sample_quality(tmp_path / "run_ok", step=None) | {"caveat": None})
    table = claims_table_rows({"diverged": marked, "clean": clean})
    assert all(f"[{caveat}]" in row[1] or row[1].startswith("not tested") for row in table)
    assert all("[" not in row[2].split(":")[0] for row in table)
    assert "Caveat" not in analysis_markdown(clean, title="clean")


def _kaplan_yorke_per_coordinate(exponents, multiplicity):
    """The Kaplan-Yorke rule on every coordinate's exponent (a second method to the package's block form)."""
    lam = np.sort(np.repeat(exponents, multiplicity))[::-1]
    sums = np.cumsum(lam)
    j = int(np.flatnonzero(sums >= 0)[-1]) + 1  # coordinates whose partial sum stays >= 0
    return float(j) if j == lam.size else j + sums[j - 1] / abs(lam[j])


def test_corrected_attractor_closed_form(analysed):
    """lambda*** and d_KY^eff of exponents set by hand: f_t(lambda_k) = e^{c_k} at every step and no
    suppression make Lambda_eff,k = c_k exactly. With c ascending in lambda, -1.13 + 0.1 i over the
    16 patches, the first crossing lies between c = -0.03 and +0.07, 30 % of the way in log lambda;
    d_KY^eff against the rule applied coordinate by coordinate (n_k = 4; 1e-5: float32 sums)."""
    result, _ = analysed
    a = result.analysis
    m, n_steps = a.num_patches, len(a.t)
    lam = np.geomspace(0.01, 1.0, m)[np.random.default_rng(0).permutation(m)]  # patches in any order
    c = -1.13 + 0.1 * np.argsort(np.argsort(lam))  # ascending in lambda
    fake = a._replace(
        expansion_along_leading=np.tile(np.exp(c), (n_steps, 1)),
        suppression=np.zeros_like(np.asarray(a.suppression)),
    )
    got = corrected_attractor(fake, lam)
    order = np.sort(lam)
    expected = np.exp(np.log(order[11]) + 0.3 * (np.log(order[12]) - np.log(order[11])))
    np.testing.assert_allclose(got.moran_threshold, np.full(3, expected), rtol=1e-9)
    np.testing.assert_allclose(got.dimension, np.full(3, _kaplan_yorke_per_coordinate(c, 4)), rtol=1e-5)
    assert 16 < got.dimension[0] < 64  # the crossing falls among the contracting patches, not saturated
    np.testing.assert_array_equal(got.expanding_patches, np.full(3, 4))
    # an annihilated patch (f - S <= 0 once) just below the crossing: the threshold moves to the next patch
    annihilated = np.tile(np.exp(c), (n_steps, 1))
    annihilated[0, np.argsort(lam)[11]] = 0.0
    got = corrected_attractor(fake._replace(expansion_along_leading=annihilated), lam)
    np.testing.assert_allclose(got.moran_threshold, np.full(3, order[12]), rtol=1e-12)
    # no patch expands: no crossing
    none = corrected_attractor(fake._replace(expansion_along_leading=np.full((n_steps, m), 0.5)), lam)
    assert np.all(np.isnan(none.moran_threshold)) and np.all(none.expanding_patches == 0)
    with pytest.raises(ValueError, match="patch_eigenvalues"):
        corrected_attractor(fake, lam[:-1])
    # the summary records the real analysis' values
    record = result.summary["corrected_attractor"]
    real = corrected_attractor(a, np.asarray(result.summary["patch_eigenvalues"]))
    np.testing.assert_allclose(record["dimension"]["mean"], np.mean(real.dimension), rtol=1e-12)
    assert record["trajectories_with_crossing"] == int(np.isfinite(real.moran_threshold).sum())
