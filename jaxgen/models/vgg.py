"""VGG16 features for a perceptual loss, from the published ``vgg16_weights.npz``.

The loader reads the widely used NumPy conversion of the VGG16 ILSVRC weights (Simonyan &
Zisserman 2015), an ``.npz`` with one array per layer: ``conv{b}_{i}_W`` ``[3, 3, Cin, Cout]``
(HWIO) and ``conv{b}_{i}_b`` ``[Cout]`` for the 13 convolutions (the ``fc*`` entries are ignored).
The network expects RGB in [0, 255] minus the ImageNet channel means. Nothing is downloaded: the
file must already be on disk (``model.vgg_weights``).

The perceptual distance is LPIPS's (Zhang et al. 2018) without its learned per-channel weights:
features at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are unit-normalised over channels,
and the squared differences are averaged over channels and positions and summed over layers.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

#: (block, convs per block) of VGG16.
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)


def layer_names() -> list[str]:
    return [f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1)]


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The shape of every array the loader needs, by key."""
    shapes, cin = {}, 3
    for b, n in BLOCKS:
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}_W"] = (3, 3, cin, CHANNELS[b])
            shapes[f"conv{b}_{i}_b"] = (CHANNELS[b],)
            cin = CHANNELS[b]
    return shapes


def load_vgg16(path: str | Path) -> dict[str, dict[str, jax.Array]]:
    """Reads ``vgg16_weights.npz``; ``{"conv1_1": {"kernel", "bias"}, ...}`` (float32).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a missing array or one of the wrong shape (named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No VGG16 weight file at {path}.")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for key, shape in expected_shapes().items():
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r}: not a VGG16 weight file.")
        if tuple(arrays[key].shape) != shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(arrays[key].shape)}, expected {shape}."
            )
    return {
        name: {
            "kernel": jnp.asarray(arrays[f"{name}_W"], jnp.float32),
            "bias": jnp.asarray(arrays[f"{name}_b"], jnp.float32),
        }
        for name in layer_names()
    }


def features(params, images: jax.Array) -> list[jax.Array]:
    """The relu{b}_{last} activation of every block.

    Args:
      params: ``load_vgg16``'s result.
      images: ``[B, H, W, 3]`` in [-1, 1].

    Returns:
      Five ``[B, H / 2**b, W / 2**b, C_b]`` arrays (b = 0..4).
    """
    h = (images.astype(jnp.float32) + 1.0) * 127.5 - MEAN_RGB
    out = []
    for b, n in BLOCKS:
        if b > 1:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
        for i in range(1, n + 1):
            p = params[f"conv{b}_{i}"]
            h = jax.lax.conv_general_dilated(
                h, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            h = jax.nn.relu(h + p["bias"])
        out.append(h)
    return out


def perceptual_distance(params, x: jax.Array, y: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Per-image distance ``[B]`` between images in [-1, 1] (0 for identical images)."""
    total = 0.0
    for fx, fy in zip(features(params, x), features(params, y), strict=True):
        fx = fx * jax.lax.rsqrt(jnp.sum(jnp.square(fx), axis=-1, keepdims=True) + eps)
        fy = fy * jax.lax.rsqrt(jnp.sum(jnp.square(fy), axis=-1, keepdims=True) + eps)
        total = total + jnp.mean(jnp.square(fx - fy), axis=(1, 2, 3))
    return total
