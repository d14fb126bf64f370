"""In-domain quality: FD and KID in the shipped encoders' feature space (pifs_jax.models.quality).

Checked against independent closed forms on synthetic Gaussian features, for unbiasedness, for
growth under noise with the shipped digits encoder, and for the refusals (a changed weights file,
a wrong image shape, too few or non-finite samples).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from pifs_jax.data import digits_split
from pifs_jax.errors import ArgumentError
from pifs_jax.models import quality
from pifs_jax.models.encoders import ENCODER_SHA256, ENCODER_SPECS, encode, load_encoder
from pifs_jax.models.encoders.load import WEIGHTS_DIR


def test_fd_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    assert quality.frechet_distance(a, a) < 1e-8
    train, _ = digits_split("train")
    features = encode(train[:300], data="digits")
    assert features.shape == (300, 128)
    scale = np.trace(np.cov(features, rowvar=False))
    assert quality.frechet_distance(features, features) < 1e-8 * scale


def test_fd_matches_the_closed_form_for_gaussians():
    """FD of N(m1, diag s1^2) and N(m2, diag s2^2) = |m1 - m2|^2 + sum (s1 - s2)^2 (commuting covariances)."""
    rng = np.random.default_rng(1)
    d, n = 4, 50_000
    m1, m2 = np.array([0.0, 1.0, -0.5, 0.2]), np.array([0.3, 0.8, -0.5, 0.0])
    s1, s2 = np.array([1.0, 0.5, 2.0, 1.0]), np.array([1.5, 0.5, 1.0, 0.7])
    a = m1 + s1 * rng.standard_normal((n, d))
    b = m2 + s2 * rng.standard_normal((n, d))
    exact = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    # sampling error of the moments: O(s^2 sqrt(2 / n)) per coordinate, a few times that in all
    assert quality.frechet_distance(a, b) == pytest.approx(exact, abs=10 * 4.0 * np.sqrt(2 / n))
    # rotating both sets by one orthogonal matrix changes nothing (non-diagonal covariances)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert quality.frechet_distance(a @ q, b @ q) == pytest.approx(quality.frechet_distance(a, b), rel=1e-9)


def _moment_mmd2(m_a: tuple[float, float, float], m_b: tuple[float, float, float]) -> float:
    """MMD^2 of the 1-d kernel (x y + 1)^3 = sum_k C(3, k) (x y)^k: sum_k C(3, k) (E x^k - E y^k)^2."""
    return sum(c * (a - b) ** 2 for c, a, b in zip((3, 3, 1), m_a, m_b, strict=True))


def _gaussian_moments(m: float, s: float) -> tuple[float, float, float]:
    return m, m * m + s * s, m**3 + 3 * m * s * s


def test_kid_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(2)
    exact = _moment_mmd2(_gaussian_moments(0.5, 0.5), _gaussian_moments(0.0, 0.6))
    values = []
    for i in range(20):  # independent replicates: their spread gives the tolerance
        a = 0.5 + 0.5 * rng.standard_normal((500, 1))
        b = 0.6 * rng.standard_normal((500, 1))
        values.append(quality.kernel_distance(a, b, subsets=1, subset_size=500, seed=i))
    error = 4 * np.std(values, ddof=1) / np.sqrt(len(values))  # 4 standard errors of the mean
    assert np.mean(values) == pytest.approx(exact, abs=error)
    assert exact > 4 * error  # the test can tell the distributions apart


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((8, 8))
    unbiased, biased = [], []
    for _ in range(40):
        a, b = rng.standard_normal((60, 8)) @ mix, rng.standard_normal((60, 8)) @ mix
        unbiased.append(quality.kernel_distance(a, b, subsets=1, subset_size=60, seed=0))
        kxx, kyy, kxy = (quality.polynomial_kernel(u, v) for u, v in ((a, a), (b, b), (a, b)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())  # the V-statistic keeps i == j
    tolerance = 4 * np.std(unbiased, ddof=1) / np.sqrt(len(unbiased))  # 4 standard errors at n = 60
    assert abs(np.mean(unbiased)) < tolerance
    assert np.mean(biased) > tolerance  # the biased estimator fails the same check
    values = quality.kernel_distance_subsets(a, b, subsets=7, subset_size=30)
    assert values.shape == (7,) and np.any(values < 0)  # unbiased estimates may be negative


def test_bootstrap_intervals_cover_the_estimates():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((300, 6)), 0.2 + rng.standard_normal((300, 6))
    scores = quality.feature_scores(a, b, subsets=20, subset_size=200, resamples=100)
    assert scores["fd_lo"] <= scores["fd"] <= scores["fd_hi"]
    assert scores["kid_lo"] <= scores["kid"] <= scores["kid_hi"]
    exact_fd = 6 * 0.2**2
    assert scores["fd_lo"] < exact_fd + 0.1 and scores["kid_lo"] > 0


def test_scores_grow_with_noise_for_the_digits_encoder():
    train, _ = digits_split("train")
    test, _ = digits_split("test")
    rng = np.random.default_rng(5)
    fd, kid = [], []
    for sigma in (0.0, 0.3, 0.6, 1.0):
        noisy = test + sigma * rng.standard_normal(test.shape)
        scores = quality.in_domain_scores(noisy, data="digits", reference=train[:600], subsets=10, resamples=0)
        fd.append(scores["fd"])
        kid.append(scores["kid"])
    assert np.all(np.diff(fd) > 0) and np.all(np.diff(kid) > 0), (fd, kid)


def test_shipped_weights_match_their_recorded_sha256():
    record = json.loads((WEIGHTS_DIR / "training.json").read_text())
    for data, spec in ENCODER_SPECS.items():
        blob = (WEIGHTS_DIR / f"{data}.safetensors").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == ENCODER_SHA256[data] == record["results"][data]["sha256"]
        assert len(blob) < 400_000
        encoder = load_encoder(data)
        assert {k: v.shape for k, v in encoder.params.items()} == spec.shapes()
    assert record["seed"] == 0 and "environment" in record


def test_a_changed_weights_file_is_refused_by_name(tmp_path):
    copy = tmp_path / "digits.safetensors"
    shutil.copyfile(WEIGHTS_DIR / "digits.safetensors", copy)
    assert load_encoder("digits", path=copy).sha256 == ENCODER_SHA256["digits"]  # an intact copy loads
    blob = bytearray(copy.read_bytes())
    blob[-5] ^= 1  # one bit of one weight
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(bytes(blob))
    with pytest.raises(ArgumentError, match=r"changed\.safetensors") as error:
        load_encoder("digits", path=changed)
    assert error.value.argument == "path" and "sha256" in str(error.value)
    with pytest.raises(ArgumentError, match="data"):
        load_encoder("cifar10")


def test_bad_input_is_refused_by_name():
    train, _ = digits_split("train")
    photos = np.zeros((40, 16, 16, 3))
    with pytest.raises(ArgumentError, match=r"samples.*\(N, 8, 8, 1\)"):
        quality.in_domain_scores(photos, data="digits", reference=train)
    with pytest.raises(ArgumentError, match="reference"):
        quality.in_domain_scores(np.zeros((40, 16, 16, 3)), data="photos16", reference=train)
    with pytest.raises(ArgumentError, match=r"samples.*at least"):
        quality.in_domain_scores(train[:5], data="digits", reference=train)
    with pytest.raises(ArgumentError, match="subset_size"):
        quality.in_domain_scores(train[:40], data="digits", reference=train, subset_size=50)
    bad = train[:40].copy()
    bad[3, 0, 0, 0] = np.nan
    bad[17, 2, 2, 0] = np.inf
    with pytest.raises(ArgumentError, match=r"2 of 40 images hold non-finite values \(indices \[3, 17\]\)"):
        quality.in_domain_scores(bad, data="digits", reference=train)


def test_given_reference_features_give_the_same_scores_and_are_checked():
    """Features passed as ``reference_features`` replace encoding the reference: bit-identical scores."""
    train, _ = digits_split("train")
    test, _ = digits_split("test")
    reference = train[:300]
    encoded = quality.in_domain_scores(test[:60], data="digits", reference=reference, subsets=5, resamples=20)
    features = encode(reference, data="digits")
    given = quality.in_domain_scores(
        test[:60], data="digits", reference=reference, subsets=5, resamples=20, reference_features=features
    )
    assert given == encoded
    with pytest.raises(ArgumentError, match=r"reference_features.*\(300, 128\).*\(299, 128\)"):
        quality.in_domain_scores(test[:60], data="digits", reference=reference, reference_features=features[1:])


@pytest.mark.slow
def test_quality_report_includes_the_in_domain_scores():
    train, _ = digits_split("train")
    test, _ = digits_split("test")
    report = quality.quality_report(test[:40], train=train, test=test, patch_size=2, reference_samples=train[:40])
    section = report["in_domain"]
    assert section["encoder"] == "digits" and section["encoder_sha256"] == ENCODER_SHA256["digits"]
    assert section["noise"]["fd"] > 2 * section["model"]["fd"]
    assert section["empirical"]["kid"] < section["noise"]["kid"]
    assert section["model"]["fd_lo"] <= section["model"]["fd"] <= section["model"]["fd_hi"]
    assert section["noise"]["fd_lo"] is None  # references carry no bootstrap


def test_quality_report_skips_the_in_domain_scores_when_it_cannot_take_them():
    train, _ = digits_split("train")
    test, _ = digits_split("test")
    small = quality.quality_report(test[:4], train=train, test=test, patch_size=2)
    assert small["in_domain"]["encoder"] == "digits" and "skipped" in small["in_domain"]
    assert quality.quality_report(test[:40], train=train, test=test, patch_size=2, data=None)["in_domain"] is None
    other_shape = np.random.default_rng(6).uniform(-1, 1, (40, 4, 4, 1))
    assert quality.quality_report(other_shape, train=other_shape, test=other_shape, patch_size=2)["in_domain"] is None


def test_kid_subsets_match_a_direct_computation():
    """The subsets' MMD^2_u, recomputed from the same draws with the kernel written out."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((300, 5)), 0.1 + rng.standard_normal((400, 5))
    values = quality.kernel_distance_subsets(a, b, subsets=5, subset_size=100, seed=3)
    draws = np.random.default_rng(3)
    for value in values:
        x, y = a[draws.choice(300, 100, replace=False)], b[draws.choice(400, 100, replace=False)]
        kx, ky, kxy = ((u @ v.T / 5 + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
        off = 100 * 99
        direct = (kx.sum() - np.trace(kx)) / off + (ky.sum() - np.trace(ky)) / off - 2 * kxy.mean()
        assert value == pytest.approx(direct, rel=1e-10, abs=1e-12)
