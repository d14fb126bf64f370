"""The verdict table of docs/theory.md section 11 on constructed analyses that sit on each side of its boundaries.

``constructed()`` builds a ChainAnalysis (4 trajectories, 50 steps t = 1000..20 of T = 1000,
M = 16 patches with leading eigenvalues increasing with the patch index) on which every claim
holds; each test changes the fields one claim reads and checks its verdict.
"""

from __future__ import annotations

import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.analysis import ChainAnalysis, evaluate_claims, suppression_corrected_margins
from pifs_jax.analysis.chain_analysis import DDIM_PREDICTIONS
from pifs_jax.analysis.claims import CLAIM_NAMES, PAPER_VALUES, VERDICTS
from pifs_jax.errors import ArgumentError

T, N, M, S = 1000, 50, 16, 4
TIMES = np.arange(1000, 0, -20)  # chain order, 1000 .. 20
LAMBDA = np.linspace(0.1, 3.0, M)
CENTRED = (np.arange(M) - 7.5) / 7.5  # in [-1, 1], increasing with lambda


def constructed(**fields) -> ChainAnalysis:
    """Every claim holds; ``fields`` replace the analysis's fields."""
    i = np.arange(N)
    level = np.where(TIMES > 600, 1.0, 1 + 0.2 * (600 - TIMES) / 600)  # (N,)
    crossing = (TIMES >= 240) & (TIMES <= 300)
    last = i >= N - 5
    patch_term = np.where(crossing[:, None], -0.01 * CENTRED, 0.0) + np.where(last[:, None], 0.01 * CENTRED, 0.0)
    trajectory_term = 0.002 * (np.arange(S) - 1.5)
    kappa = level[None, :, None] + patch_term[None] + trajectory_term[:, None, None]  # (S, N, M)
    delta = np.broadcast_to((0.01 + 0.001 * i)[None, :, None], (S, N, M)).copy()
    violations = np.where(TIMES >= 300, M, np.interp(TIMES, [240, 300], [0, M])).round()
    violations = np.asarray(fields.pop("violations", np.broadcast_to(violations, (S, N))), np.float64).copy()
    # suppression: the diagonal quotient along v_k, f - S, is 1.01 on the first V_t patches and 0.99
    # on the others, so reading (D), which judges the crossover, counts V_t violations at every step
    # (as reading (A) counts `violations`); the trajectory mean of S is then 0.01 rank(lambda) - 0.01
    # at t = 600 (every patch violates there) and the signs of the corrected exponents are those of
    # the measured ones (mean log kappa > 0)
    quotient = np.where(np.arange(M)[None, None, :] < violations[..., None], 1.01, 0.99)
    mean_suppression = np.where((TIMES == 600)[:, None], 0.01 * np.arange(M), 0.001)
    expansion = kappa.mean(axis=0) + mean_suppression
    suppression = expansion[None] - quotient
    logsnr = np.asarray(pj.cosine(T).log_snr, np.float64)[TIMES]
    sqrt_ab = np.sqrt(1 / (1 + np.exp(-logsnr)))
    deviation = 2 * sqrt_ab[None] * np.exp(0.01 * np.random.default_rng(0).standard_normal((S, N)))
    entropy = np.broadcast_to(5 - 0.01 * i, (S, N)).copy()
    margin = 1 - kappa - delta
    values = dict(
        t=TIMES, logsnr=logsnr, kappa_diag=kappa.max(-1), delta_cross=delta.max(-1),
        kappa_diag_mean=kappa.mean(-1), delta_cross_mean=delta.mean(-1), margin_mean=margin.mean(-1),
        kappa_diag_per_patch=kappa, delta_cross_per_patch=delta, margin_per_patch=margin, violations=violations,
        suppression=suppression, deviation_norm=deviation, expansion_along_leading=expansion,
        attention_entropy={"block0": entropy, "block1": entropy + 0.5}, attention_keys={"block0": 16, "block1": 16},
        patch_size=8, image_shape=(32, 32, 3), method="exact",
    )  # fmt: skip
    values.update(fields)
    return ChainAnalysis(**values)


def verdicts(analysis: ChainAnalysis) -> dict:
    return {r.name: r for r in evaluate_claims(analysis, patch_eigenvalues=LAMBDA, num_timesteps=T)}


def test_every_claim_holds_on_the_constructed_analysis():
    results = evaluate_claims(constructed(), patch_eigenvalues=LAMBDA, num_timesteps=T)
    assert [r.name for r in results] == list(CLAIM_NAMES)
    assert {r.name: r.verdict for r in results} == {name: "holds" for name in CLAIM_NAMES}
    for r in results:
        assert r.verdict in VERDICTS and r.paper and r.ours
    window = verdicts(constructed())["narrow_crossover_window"]
    assert window.interval == (240.0, 300.0) and window.value == 60.0


def high(values: np.ndarray, value: float) -> np.ndarray:
    """``values`` (S, N) with the steps t > 0.6 T's largest deviation from 1 set to ``value``."""
    values = np.array(values)
    values[:, 0] = value
    return values


@pytest.mark.parametrize("value, verdict", [(1.0099, "holds"), (0.9901, "holds"), (1.0101, "partly"), (0.951, "partly"),
                                            (1.0499, "partly"), (1.0501, "does not hold"), (0.9499, "does not hold")])  # fmt: skip
def test_regime_I_pinned_boundaries(value, verdict):
    base = constructed()
    analysis = base._replace(kappa_diag_mean=high(base.kappa_diag_mean, value),
                             delta_cross_mean=high(base.delta_cross_mean, 1.0))  # fmt: skip
    assert verdicts(analysis)["regime_I_diagonal_pinned"].verdict == verdict


@pytest.mark.parametrize("carried, verdict", [(20, "holds"), (19, "partly"), (10, "partly"), (9, "does not hold")])
def test_regime_I_coupling_boundaries(carried, verdict):
    """20 steps have t > 600; at all but ``carried`` of them delta_cross_mean = 0 < kappa - 1 = 0.001."""
    base = constructed()
    high_steps = int(np.sum(TIMES > 600))
    assert high_steps == 20
    kappa, delta = np.array(base.kappa_diag_mean), np.array(base.delta_cross_mean)
    kappa[:, carried:high_steps] = 1.001
    delta[:, carried:high_steps] = 0.0
    result = verdicts(base._replace(kappa_diag_mean=kappa, delta_cross_mean=delta))[
        "regime_I_coupling_carries_expansion"
    ]
    assert result.verdict == verdict and result.value == pytest.approx(carried / 20)


@pytest.mark.parametrize("last, verdict", [([1.1, 1.2, 1.15, 1.3], "holds"), ([0.99, 0.99, 0.99, 1.1], "partly"),
                                           ([0.9, 0.95, 1.0, 1.02], "does not hold")])  # fmt: skip
def test_regime_II_expansion_boundaries(last, verdict):
    base = constructed()
    kappa = np.array(base.kappa_diag_mean)
    kappa[:, -1] = last
    result = verdicts(base._replace(kappa_diag_mean=kappa))["regime_II_diagonal_expands"]
    assert result.verdict == verdict and result.value == pytest.approx(np.mean(last))
    lo, hi = result.interval
    assert lo <= result.value <= hi and (lo > 1) == (verdict == "holds")


def test_entropy_boundaries():
    base = constructed()
    rng = np.random.default_rng(1)
    entropy = -np.array(base.delta_cross_mean)  # rho = -1
    noisy = entropy + 0.02 * rng.standard_normal(entropy.shape[1])  # moderately negative, significant over 50 steps
    results = {
        "holds": verdicts(base._replace(attention_entropy={"a": entropy}))["entropy_falls_as_coupling_rises"],
        "partly": verdicts(base._replace(attention_entropy={"a": noisy}))["entropy_falls_as_coupling_rises"],
        "does not hold": verdicts(base._replace(attention_entropy={"a": -entropy}))["entropy_falls_as_coupling_rises"],
        "not tested": verdicts(base._replace(attention_entropy=None))["entropy_falls_as_coupling_rises"],
    }
    for verdict, result in results.items():
        assert result.verdict == verdict, (verdict, result)
    assert -0.9 < results["partly"].value < 0


@pytest.mark.parametrize("lower, verdict", [(200, "holds"), (180, "partly"), (None, "does not hold")])
def test_window_boundaries(lower, verdict):
    """Width 100 = 0.1 T holds, 120 is wider; no step with V = 0 below t_upper: no window."""
    v = np.where(TIMES >= 300, M, 5.0)
    if lower is not None:
        v = np.where(TIMES <= lower, 0.0, v)
    result = verdicts(constructed(violations=np.broadcast_to(v, (S, N))))["narrow_crossover_window"]
    assert result.verdict == verdict


def rank_pattern(swaps) -> np.ndarray:
    """0..15 with the given disjoint position pairs swapped: rho = 1 - sum d^2 / 680."""
    values = np.arange(M, dtype=float)
    for a, b in swaps:
        values[[a, b]] = values[[b, a]]
    return values


@pytest.mark.parametrize("swaps, verdict", [
    ([(0, 7), (1, 4), (8, 11)], "holds"),          # sum d^2 = 134: rho = 0.803, p = 2e-4
    ([(0, 8), (1, 3), (4, 5)], "partly"),          # sum d^2 = 138: rho = 0.797 < 0.8, p = 2e-4
    ("reversed", "does not hold"),
])  # fmt: skip
def test_suppression_order_boundaries(swaps, verdict):
    pattern = -np.arange(M, dtype=float) if swaps == "reversed" else rank_pattern(swaps)
    suppression = np.broadcast_to(np.where((TIMES == 600)[:, None], pattern, -np.arange(M)), (S, N, M))
    result = verdicts(constructed(suppression=suppression))["suppression_ordered_by_variance"]
    assert result.verdict == verdict
    if swaps != "reversed":
        assert result.value == pytest.approx(1 - 2 * sum((b - a) ** 2 for a, b in swaps) / 680, abs=1e-12)


def test_a_perfect_order_of_four_patches_is_not_significant():
    """With M = 4 patches a perfect order has the exact p = 2/24, not the t formula's p = 0 (which gave "holds")."""
    base = constructed()
    few = {name: np.asarray(getattr(base, name))[..., :4] for name in
           ("kappa_diag_per_patch", "delta_cross_per_patch", "margin_per_patch", "expansion_along_leading")}  # fmt: skip
    ordered = np.broadcast_to(np.where((TIMES == 600)[:, None], np.arange(4.0), -np.arange(4.0)), (S, N, 4))
    analysis = constructed(**few, suppression=ordered, violations=np.minimum(base.violations, 4))
    results = {r.name: r for r in evaluate_claims(analysis, patch_eigenvalues=LAMBDA[:4], num_timesteps=T)}
    result = results["suppression_ordered_by_variance"]
    assert result.value == 1.0 and "p = 0.083" in result.ours
    assert result.verdict == "does not hold"  # positive, but p = 0.083 >= 0.05 at every step


def kappa_with(step_mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """The constructed per-patch kappa with ``pattern`` (M,) over the patches at the masked steps."""
    kappa = np.array(constructed().kappa_diag_per_patch)
    kappa[:, step_mask, :] = 1.0 + 0.01 * pattern
    return kappa


@pytest.mark.parametrize("pattern, verdict", [(-np.arange(M), "holds"), (np.r_[1, np.zeros(M - 1)], "partly"),
                                              (np.arange(M), "does not hold")])  # fmt: skip
def test_release_order_boundaries(pattern, verdict):
    """rho(lambda, kappa) at the crossover steps: -1; slightly negative (-0.42, p = 0.1); +1."""
    crossing = (TIMES >= 240) & (TIMES <= 300)
    result = verdicts(constructed(kappa_diag_per_patch=kappa_with(crossing, pattern)))["low_variance_released_first"]
    assert result.verdict == verdict, result


def test_release_order_without_window_uses_partial_violations():
    v = np.where(TIMES >= 300, 5.0, 3.0)  # never M: no window, every step has 0 < V < M
    analysis = constructed(violations=np.broadcast_to(v, (S, N)))
    kappa = kappa_with(np.ones(N, bool), np.arange(M))  # positive everywhere ...
    kappa[:, 30, :] = 1 - 0.01 * np.arange(M)  # ... except one step
    assert verdicts(analysis._replace(kappa_diag_per_patch=kappa))["low_variance_released_first"].verdict == "holds"
    none = constructed(violations=np.full((S, N), float(M)))  # every step V = M: no window, no partial step
    assert verdicts(none)["low_variance_released_first"].verdict == "does not hold"  # no crossover step


@pytest.mark.parametrize("pattern, verdict", [(np.arange(M), "holds"), (np.r_[np.zeros(M - 1), 1], "partly"),
                                              (-np.arange(M), "does not hold")])  # fmt: skip
def test_regime_II_order_boundaries(pattern, verdict):
    """The last 10 % of 50 steps are the last 5: positive significant; positive (0.42, p = 0.1); negative."""
    result = verdicts(constructed(kappa_diag_per_patch=kappa_with(np.arange(N) >= N - 5, pattern)))["regime_II_order"]
    assert result.verdict == verdict, result


def test_deviation_scaling_boundaries():
    base = constructed()
    sqrt_ab = np.sqrt(1 / (1 + np.exp(-base.logsnr)))
    rng = np.random.default_rng(3)
    cases = {
        "holds": base.deviation_norm,
        "partly": np.broadcast_to(sqrt_ab**0.8, (S, N)),  # exact slope 0.8: interval [0.8, 0.8] misses 1
        "does not hold": np.broadcast_to(sqrt_ab**0.5, (S, N)),
    }
    for verdict, deviation in cases.items():
        result = verdicts(base._replace(deviation_norm=deviation))["deviation_scales_as_sqrt_alpha_bar"]
        assert result.verdict == verdict, (verdict, result)
    # slope exactly 1 (its interval contains 1) but R^2 = 0.5 < 0.9: partly. The residual r is
    # orthogonal to (1, x) over the high-noise steps, so the fit's slope is unchanged and
    # R^2 = S_xx / (S_xx + |r|^2).
    x = np.log(sqrt_ab)
    highnoise = base.logsnr < 0
    basis = np.stack([np.ones(highnoise.sum()), x[highnoise]], axis=1)
    r = rng.standard_normal(highnoise.sum())
    r -= basis @ np.linalg.lstsq(basis, r, rcond=None)[0]
    sxx = np.sum((x[highnoise] - x[highnoise].mean()) ** 2)
    residual = np.zeros(N)
    residual[highnoise] = r * np.sqrt(sxx / np.sum(r**2))
    result = verdicts(base._replace(deviation_norm=np.broadcast_to(sqrt_ab * np.exp(residual), (S, N))))
    fit = result["deviation_scales_as_sqrt_alpha_bar"]
    assert (
        fit.verdict == "partly" and fit.value == pytest.approx(1.0, abs=1e-9) and fit.interval[0] < 1 < fit.interval[1]
    )
    assert verdicts(base._replace(deviation_norm=None))["deviation_scales_as_sqrt_alpha_bar"].verdict == "not tested"
    few = base._replace(logsnr=np.where(np.arange(N) < 2, -1.0, 1.0))  # 2 high-noise steps
    assert verdicts(few)["deviation_scales_as_sqrt_alpha_bar"].verdict == "not tested"


@pytest.mark.parametrize("flipped, verdict", [(1, "holds"), (4, "partly"), (5, "does not hold")])
def test_exponent_sign_boundaries(flipped, verdict):
    """Flipping the predicted sign of ``flipped`` of 16 patches: 15/16 = 94 %, 12/16 = 75 %, 11/16 = 69 %."""
    base = constructed()
    kappa = np.asarray(base.kappa_diag_per_patch)
    suppression = np.array(base.suppression)
    # f - S = 1 / kappa there: the predicted exponent is minus the measured one
    suppression[..., :flipped] = base.expansion_along_leading[None, :, :flipped] - 1 / kappa[..., :flipped]
    result = verdicts(base._replace(suppression=suppression))["corrected_exponents_predict_signs"]
    assert result.verdict == verdict and result.value == pytest.approx((M - flipped) / M)


def test_missing_ingredients_are_not_tested():
    bare = constructed(
        suppression=None, deviation_norm=None, expansion_along_leading=None, attention_entropy=None, attention_keys=None
    )
    results = verdicts(bare)
    for name in ("entropy_falls_as_coupling_rises", "suppression_ordered_by_variance",
                 "deviation_scales_as_sqrt_alpha_bar", "corrected_exponents_predict_signs"):  # fmt: skip
        assert results[name].verdict == "not tested" and np.isnan(results[name].value)
    early = constructed()._replace(t=TIMES - 400)  # no step with t > 0.6 T
    assert verdicts(early)["regime_I_diagonal_pinned"].verdict == "not tested"


def test_single_trajectory_analysis():
    """Unbatched fields (one trajectory): the same verdicts, zero-width bootstrap interval."""
    base = constructed()
    one = {f: (v[0] if f not in ("t", "logsnr", "expansion_along_leading") and isinstance(v, np.ndarray) else v)
           for f, v in base._asdict().items()}  # fmt: skip
    one["attention_entropy"] = {k: v[0] for k, v in base.attention_entropy.items()}
    result = verdicts(ChainAnalysis(**one))
    assert result["regime_II_diagonal_expands"].interval[0] == result["regime_II_diagonal_expands"].interval[1]
    assert all(r.verdict == "holds" for r in result.values())


def test_paper_values_and_bad_input():
    assert PAPER_VALUES["block_decomposition"][20] == (1.2111, 0.1858, 1.3969)
    assert PAPER_VALUES["crossover_window"] == (160, 200)
    with pytest.raises(ArgumentError) as info:
        evaluate_claims(constructed(), patch_eigenvalues=LAMBDA[:4], num_timesteps=T)
    assert info.value.argument == "patch_eigenvalues"
    with pytest.raises(ArgumentError) as info:
        evaluate_claims("analysis", patch_eigenvalues=LAMBDA, num_timesteps=T)
    assert info.value.argument == "analysis"
    with pytest.raises(ArgumentError) as info:
        evaluate_claims(constructed(), patch_eigenvalues=LAMBDA, num_timesteps=0)
    assert info.value.argument == "num_timesteps"


def test_two_patches_leave_the_rank_claims_untested():
    base = constructed()
    two = base._replace(**{f: np.asarray(getattr(base, f))[..., :2] for f in (
        "kappa_diag_per_patch", "delta_cross_per_patch", "margin_per_patch", "suppression", "expansion_along_leading")})  # fmt: skip
    results = {r.name: r for r in evaluate_claims(two, patch_eigenvalues=LAMBDA[:2], num_timesteps=T)}
    assert list(results) == list(CLAIM_NAMES)
    for name in ("suppression_ordered_by_variance", "low_variance_released_first", "regime_II_order"):
        assert results[name].verdict == "not tested" and "3" in results[name].ours


def test_crossover_is_judged_under_reading_d_where_it_applies():
    """The window comes from reading (D)'s violations, 1 - (f - S) < 0, not from the block norms'
    `violations` (reading A), whenever the suppression field of deterministic DDIM is there."""
    base = constructed()
    every_patch = base.expansion_along_leading[None] - 1.01  # f - S = 1.01 everywhere: V_t = M under (D)
    result = verdicts(base._replace(suppression=np.broadcast_to(every_patch, (S, N, M))))["narrow_crossover_window"]
    assert result.verdict == "does not hold" and "reading D" in result.ours  # (A) alone would give the window
    assert verdicts(base)["narrow_crossover_window"].verdict == "holds"
    bare = verdicts(base._replace(suppression=None))["narrow_crossover_window"]  # no baseline: (A)
    assert bare.verdict == "holds" and "reading A" in bare.ours
    np.testing.assert_allclose(
        suppression_corrected_margins(base), 1 - (base.expansion_along_leading[None] - base.suppression), rtol=0
    )
    assert suppression_corrected_margins(base._replace(sampler="Heun()", not_applicable=DDIM_PREDICTIONS)) is None
