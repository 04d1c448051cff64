"""Gatys et al.'s Gram matrices, style, content and total-variation losses against direct numpy
computations and hand-made images."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.evaluation import style_metrics


def _features(seed, shape=(2, 4, 5, 3)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_gram_is_f_f_transpose_per_image():
    x = _features(0)
    got = np.asarray(style_metrics.gram(jnp.asarray(x)))
    for b in range(x.shape[0]):
        f = x[b].reshape(-1, x.shape[-1]).T  # [N channels, M positions], the paper's F
        np.testing.assert_allclose(got[b], f @ f.T, rtol=1e-5, atol=1e-5)


def test_layer_style_loss_against_the_papers_formula():
    x, s = _features(1), _features(2)
    n, m = x.shape[-1], x.shape[1] * x.shape[2]
    a = np.stack([f.reshape(-1, n).T @ f.reshape(-1, n) for f in s])
    got = np.asarray(style_metrics.layer_style_loss(jnp.asarray(x), jnp.asarray(a)))
    for b in range(2):
        f = x[b].reshape(-1, n).T
        want = np.sum((f @ f.T - a[b]) ** 2) / (4 * n**2 * m**2)
        np.testing.assert_allclose(got[b], want, rtol=1e-5)


def test_style_ignores_where_things_are_and_content_does_not():
    x = _features(3, (1, 6, 6, 4))
    perm = np.random.default_rng(0).permutation(36)
    shuffled = x.reshape(1, 36, 4)[:, perm].reshape(1, 6, 6, 4)
    g = style_metrics.gram(jnp.asarray(x))
    np.testing.assert_allclose(
        style_metrics.layer_style_loss(jnp.asarray(shuffled), g), [0.0], atol=1e-6
    )
    assert float(style_metrics.content_loss(jnp.asarray(shuffled), jnp.asarray(x))[0]) > 1.0


def test_style_loss_weights_the_layers_and_checks_its_inputs():
    feats = [jnp.asarray(_features(4)), jnp.asarray(_features(5, (2, 2, 2, 3)))]
    targets = [style_metrics.gram(jnp.asarray(_features(6))), jnp.zeros((3, 3))]
    per_layer = [style_metrics.layer_style_loss(f, t) for f, t in zip(feats, targets, strict=True)]
    np.testing.assert_allclose(
        style_metrics.style_loss(feats, targets), (per_layer[0] + per_layer[1]) / 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        style_metrics.style_loss(feats, targets, [3.0, 0.5]),
        3.0 * per_layer[0] + 0.5 * per_layer[1],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="2 feature maps but 1 Gram"):
        style_metrics.style_loss(feats, targets[:1])
    with pytest.raises(ValueError, match="1 style weights for 2 layers"):
        style_metrics.style_loss(feats, targets, [1.0])


def test_content_loss_is_half_the_squared_difference():
    x, p = _features(7), _features(8)
    got = np.asarray(style_metrics.content_loss(jnp.asarray(x), jnp.asarray(p)))
    np.testing.assert_allclose(got, 0.5 * ((x - p) ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)


def test_total_variation_on_hand_made_images():
    dot = np.zeros((1, 3, 3, 1), np.float32)
    dot[0, 1, 1, 0] = 1.0  # four neighbours, each a difference of 1
    ramp = np.tile(np.arange(3, dtype=np.float32), (2, 1))[None, ..., None]  # steps of 1 along x
    flat = np.full((1, 4, 4, 3), 0.7, np.float32)
    got = style_metrics.total_variation(jnp.asarray(np.concatenate([dot, dot])))
    np.testing.assert_allclose(got, [4.0, 4.0])
    np.testing.assert_allclose(style_metrics.total_variation(jnp.asarray(ramp)), [4.0])
    np.testing.assert_allclose(style_metrics.total_variation(jnp.asarray(flat)), [0.0])
