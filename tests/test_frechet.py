"""Frechet distance against closed forms and an independent scipy.linalg.sqrtm reference."""

import numpy as np
import pytest
import scipy.linalg

from jaxgen.evaluation.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
)


def _diag_closed_form(mu1, s1, mu2, s2):
    return np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))


def test_statistics_match_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    got = frechet_distance_from_statistics(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(_diag_closed_form(mu1, s1, mu2, s2), rel=1e-10)


def test_samples_approach_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 2.0, 1.0, -1.0]), np.array([1.0, 0.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 0.5, 2.0, 1.0]), np.array([2.0, 0.5, 1.0, 3.0])
    a = mu1 + rng.standard_normal((200_000, 4)) * np.sqrt(s1)
    b = mu2 + rng.standard_normal((200_000, 4)) * np.sqrt(s2)
    expected = _diag_closed_form(mu1, s1, mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_full_covariance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + 0.3
    mu1, c1 = feature_statistics(a)
    mu2, c2 = feature_statistics(b)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_identical_zero_and_symmetric_and_singular():
    rng = np.random.default_rng(2)
    # 5 samples in 16 dimensions: both covariances are singular.
    a, b = rng.standard_normal((5, 16)), rng.standard_normal((7, 16)) + 1.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert np.isfinite(ab) and ab > 0
    assert ab == pytest.approx(ba, rel=1e-8)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))
