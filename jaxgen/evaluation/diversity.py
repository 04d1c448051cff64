"""Sample diversity: how far apart a model's samples for one prompt are in some feature space
(the judge's features, or an evaluation CLIP's image embeddings)."""

from __future__ import annotations

import numpy as np


def mean_pairwise_distance(features: np.ndarray) -> np.ndarray:
    """Per prompt, the mean Euclidean distance between its samples' features.

    Args:
      features: ``[N, K, F]``, K >= 2 samples of each of N prompts.

    Returns:
      float64 ``[N]``: the mean over the ``K (K - 1) / 2`` pairs of each prompt.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"features must be [N, K >= 2, F], got shape {list(x.shape)}.")
    k = x.shape[1]
    d = np.linalg.norm(x[:, :, None] - x[:, None, :], axis=-1)
    return d[:, np.triu_indices(k, 1)[0], np.triu_indices(k, 1)[1]].mean(axis=1)
