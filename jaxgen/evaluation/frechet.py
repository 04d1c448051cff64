"""Frechet distance between two feature sets, each summarised as a Gaussian (FID-style).

    FD = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})

(Dowson & Landau 1982; used as FID by Heusel et al. 2017). The matrix square root is taken as
tr((C_a C_b)^{1/2}) = tr((A C_b A)^{1/2}) with A = C_a^{1/2}: A C_b A is symmetric positive
semi-definite, so both roots come from `eigh` with eigenvalues clipped at 0. That is exact for
singular covariances (fewer samples than dimensions, dead features) and never produces the
complex parts that a general `sqrtm` of the non-symmetric product C_a C_b can.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh; tiny negative eigenvalues become 0."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set.

    Args:
      feats: [N, D] features, N >= 2.

    Returns:
      (mu float64 [D], cov float64 [D, D]), the covariance unbiased (divides by N - 1).
    """
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or Inf")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance_from_statistics(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    Args:
      mu_a, mu_b: means [D].
      cov_a, cov_b: covariances [D, D], symmetric positive semi-definite.

    Returns:
      The distance (>= 0 up to rounding), as a Python float.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(
            f"feature dimensions differ: means {mu_a.shape} vs {mu_b.shape}, "
            f"covariances {cov_a.shape} vs {cov_b.shape}"
        )
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)))
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_cross
    # Rounding can leave -1e-12 for identical sets; a distance is never negative.
    return float(max(fd, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    Args:
      feats_a: [N, D] features of one image set (e.g. real), N >= 2.
      feats_b: [M, D] features of the other (e.g. generated), M >= 2.

    Returns:
      The distance as a Python float; 0 for identical sets, symmetric in its arguments.
    """
    return frechet_distance_from_statistics(
        *feature_statistics(feats_a), *feature_statistics(feats_b)
    )
