"""The Fréchet distance against closed forms, its symmetry and zero, sample convergence and input errors."""

import numpy as np
import pytest

from artv_jax.metrics.frechet import frechet_distance, fvd_from_features, gaussian_stats


def _random_spd(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-10)


def test_commuting_covariances_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a, b = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_general_covariances_match_symmetric_form_and_are_symmetric():
    # Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), a route through symmetric matrices only.
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 7), _random_spd(rng, 7)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    r1 = _psd_sqrt(s1)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(_psd_sqrt(r1 @ s2 @ r1))
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)


def test_zero_for_identical_stats():
    rng = np.random.default_rng(3)
    mu, s = rng.standard_normal(8), _random_spd(rng, 8)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    feats = rng.standard_normal((50, 8))
    assert abs(fvd_from_features(feats, feats)) < 1e-8


def test_sample_estimates_converge_to_the_true_distance():
    rng = np.random.default_rng(4)
    dim = 4
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
    true = frechet_distance(mu1, s1, mu2, s2)
    errors = []
    for n in (100, 30000):
        a = rng.multivariate_normal(mu1, s1, size=n)
        b = rng.multivariate_normal(mu2, s2, size=n)
        errors.append(abs(fvd_from_features(a, b) - true))
    assert errors[1] < 0.02 * true + 0.01
    assert errors[1] < errors[0]
    mu, s = gaussian_stats(rng.multivariate_normal(mu1, s1, size=30000))
    np.testing.assert_allclose(mu, mu1, atol=0.05)
    np.testing.assert_allclose(s, s1, atol=0.05)


def test_singular_covariances_stay_finite():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 10)), rng.standard_normal((4, 10)) + 1  # rank < dim
    d = fvd_from_features(a, b)
    assert np.isfinite(d) and d > 0


def test_input_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="feature dims differ: 3 vs 4"):
        fvd_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="mismatched Gaussian shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.full((3, 2), np.nan))
