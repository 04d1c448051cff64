"""A digit classifier that judges generated digits: is the sample a recognisable "7"?

A small scikit-learn MLP is trained on the real train split of `jaxgen.data.digits` at the
original 8x8 resolution. Images of any size are brought back to that domain by a block mean
(area resampling) to 8x8 and scaled to 0..16, so the judge scores samples of any resolution and
never sees a test image. Training is deterministic (`random_state`) and takes a few seconds; the
fitted model is cached per process.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from PIL import Image

from jaxgen.data import digits

_SIDE = 8


@functools.lru_cache(maxsize=4)
def _fit(hidden: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    images, labels = digits.raw_split("train")
    clf = MLPClassifier(
        hidden_layer_sizes=(hidden,),
        alpha=1e-3,
        batch_size=64,
        learning_rate_init=3e-3,
        max_iter=60,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # 60 epochs reach ~100% train accuracy and ~98% test; more only costs time.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(images.reshape(len(images), -1) / digits.MAX_PIXEL, labels)
    return clf


def to_digit_domain(images) -> np.ndarray:
    """Maps images to the judge's input: grayscale 8x8, values 0..16, flattened.

    Args:
      images: [N, S, S, C] (C = 1 or 3) or [N, S, S]; uint8 in 0..255, or float in [-1, 1]
        (the models' output range). Numpy or JAX arrays.

    Returns:
      float64 [N, 64] in 0..16.
    """
    x = np.asarray(images)
    from_uint8 = x.dtype == np.uint8
    x = x.astype(np.float64)
    if x.ndim == 4:
        x = x.mean(axis=-1)
    if x.ndim != 3:
        raise ValueError(f"expected images [N, S, S, C] or [N, S, S], got shape {x.shape}")
    x = x / 255.0 if from_uint8 else (np.clip(x, -1.0, 1.0) + 1.0) / 2.0
    n, h, w = x.shape
    if h % _SIDE == 0 and w % _SIDE == 0:
        # Block mean (area average) undoes the upsampling up to the bicubic filter's blur.
        x = x.reshape(n, _SIDE, h // _SIDE, _SIDE, w // _SIDE).mean(axis=(2, 4))
    else:
        x = np.stack(
            [
                np.asarray(
                    Image.fromarray(img.astype(np.float32)).resize(
                        (_SIDE, _SIDE), Image.Resampling.BOX
                    )
                )
                for img in x
            ]
        ).astype(np.float64)
    return x.reshape(n, -1) * digits.MAX_PIXEL


class DigitsJudge:
    """Classifies images as digits 0..9; scores class-conditional samples.

    Args:
      hidden: width of the MLP's hidden layer (also the `features` dimension D).
      seed: sklearn `random_state`, for deterministic training.
    """

    def __init__(self, hidden: int = 64, seed: int = 0):
        self._clf = _fit(hidden, seed)
        self.feature_dim = hidden

    def _inputs(self, images) -> np.ndarray:
        return to_digit_domain(images) / digits.MAX_PIXEL

    def probabilities(self, images) -> np.ndarray:
        """Returns class probabilities float [N, 10] for images as in `to_digit_domain`."""
        return self._clf.predict_proba(self._inputs(images))

    def predict(self, images) -> np.ndarray:
        """Returns the predicted digits int32 [N] for images [N, S, S, C] (uint8 or [-1, 1])."""
        return self._clf.predict(self._inputs(images)).astype(np.int32)

    def accuracy(self, images, labels) -> float:
        """Fraction of images classified as their label.

        Args:
          images: [N, S, S, C] uint8 or float in [-1, 1].
          labels: int [N], the digit each image should show.

        Returns:
          accuracy in [0, 1].
        """
        labels = np.asarray(labels).reshape(-1)
        pred = self.predict(images)
        if len(pred) != len(labels):
            raise ValueError(f"{len(pred)} images but {len(labels)} labels")
        return float(np.mean(pred == labels))

    def features(self, images) -> np.ndarray:
        """Hidden-layer activations, the embedding for a Frechet distance on digits.

        Args:
          images: [N, S, S, C] uint8 or float in [-1, 1].

        Returns:
          float64 [N, hidden]: ReLU(x W1 + b1) of the fitted MLP.
        """
        x = self._inputs(images)
        return np.maximum(x @ self._clf.coefs_[0] + self._clf.intercepts_[0], 0.0)
