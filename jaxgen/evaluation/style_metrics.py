"""The feature statistics of neural style transfer (Gatys, Ecker, Bethge 2016), as losses and as
measures.

Gatys et al. define, for a layer with ``N`` channels and ``M`` positions, the feature matrix
``F [N, M]`` and its Gram matrix ``G = F F^T``; the style loss of a layer is
``E = 1 / (4 N^2 M^2) * sum (G - A)^2`` against the style image's Gram matrix ``A``, and the
content loss ``1/2 * sum (F - P)^2`` against the content image's features ``P``. A style
transfer optimises these with one feature network; measured with another (a different seed or
architecture), the same functions say how well the result did without it grading itself.

Every function works on a batch: features ``[B, H, W, C]`` (NHWC, as the feature networks
return them) and returns one value per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def gram(features: jax.Array) -> jax.Array:
    """``G = F F^T`` per image, ``[B, H, W, C]`` -> ``[B, C, C]``, unnormalised as the paper."""
    b, h, w, c = features.shape
    f = features.reshape(b, h * w, c).astype(jnp.float32)
    return jnp.einsum("bmi,bmj->bij", f, f)


def layer_style_loss(features: jax.Array, target_gram: jax.Array) -> jax.Array:
    """Gatys et al.'s ``E_l = sum (G - A)^2 / (4 N^2 M^2)`` per image ``[B]``; ``target_gram``
    ``[C, C]`` or ``[B, C, C]``."""
    _, h, w, c = features.shape
    diff = gram(features) - target_gram
    return jnp.sum(jnp.square(diff), axis=(1, 2)) / (4.0 * c**2 * (h * w) ** 2)


def style_loss(
    features: Sequence[jax.Array],
    target_grams: Sequence[jax.Array],
    weights: Sequence[float] | None = None,
) -> jax.Array:
    """``sum_l w_l E_l`` per image ``[B]`` over the style layers (equal weights ``1 / L`` when
    ``weights`` is None, as the paper's)."""
    if len(features) != len(target_grams):
        raise ValueError(f"{len(features)} feature maps but {len(target_grams)} Gram matrices")
    if weights is None:
        weights = [1.0 / len(features)] * len(features)
    if len(weights) != len(features):
        raise ValueError(f"{len(weights)} style weights for {len(features)} layers")
    total = 0.0
    for f, g, w in zip(features, target_grams, weights, strict=True):
        total = total + w * layer_style_loss(f, g)
    return total


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """Gatys et al.'s ``1/2 sum (F - P)^2`` per image ``[B]``."""
    diff = features.astype(jnp.float32) - target.astype(jnp.float32)
    return 0.5 * jnp.sum(jnp.square(diff), axis=(1, 2, 3))


def total_variation(images: jax.Array) -> jax.Array:
    """The squared total variation per image ``[B]``: the sum of squared differences between
    vertically and horizontally neighbouring pixels (``[B, H, W, C]``)."""
    x = images.astype(jnp.float32)
    dy = x[:, 1:, :, :] - x[:, :-1, :, :]
    dx = x[:, :, 1:, :] - x[:, :, :-1, :]
    return jnp.sum(jnp.square(dy), axis=(1, 2, 3)) + jnp.sum(jnp.square(dx), axis=(1, 2, 3))
