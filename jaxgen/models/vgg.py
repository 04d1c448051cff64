"""VGG16 and VGG19 features (Simonyan & Zisserman 2015): a perceptual loss from the published
``vgg16_weights.npz``, and any layer's activations (style transfer reads VGG19's).

The loader reads the widely used NumPy conversion of the ILSVRC weights, an ``.npz`` with one
array per layer: ``conv{b}_{i}_W`` ``[3, 3, Cin, Cout]`` (HWIO) and ``conv{b}_{i}_b`` ``[Cout]``
for the 13 (VGG16) or 16 (VGG19) convolutions (the ``fc*`` entries are ignored).
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

#: (block, convs per block) of each network.
ARCHITECTURES = {
    "vgg16": ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)),
    "vgg19": ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)),
}
CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)


def _blocks(arch: str):
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown VGG architecture {arch!r}; valid: {tuple(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def layer_names(arch: str = "vgg16") -> list[str]:
    return [f"conv{b}_{i}" for b, n in _blocks(arch) for i in range(1, n + 1)]


def architecture_of(params) -> str:
    """The network ``params`` hold: VGG19 has a fourth convolution in block 3, VGG16 not."""
    return "vgg19" if "conv3_4" in params else "vgg16"


def expected_shapes(arch: str = "vgg16") -> dict[str, tuple[int, ...]]:
    """The shape of every array the loader needs, by key."""
    shapes, cin = {}, 3
    for b, n in _blocks(arch):
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}_W"] = (3, 3, cin, CHANNELS[b])
            shapes[f"conv{b}_{i}_b"] = (CHANNELS[b],)
            cin = CHANNELS[b]
    return shapes


def load_vgg(path: str | Path, arch: str = "vgg16") -> dict[str, dict[str, jax.Array]]:
    """Reads a VGG16 or VGG19 ``.npz`` in the layout above; ``{"conv1_1": {"kernel", "bias"},
    ...}`` (float32).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a missing array or one of the wrong shape (named).
    """
    expected = expected_shapes(arch)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No {arch.upper()} weight file at {path}.")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for key, shape in expected.items():
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r}: not a {arch.upper()} weight file.")
        if tuple(arrays[key].shape) != shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(arrays[key].shape)}, expected {shape}."
            )
    return {
        name: {
            "kernel": jnp.asarray(arrays[f"{name}_W"], jnp.float32),
            "bias": jnp.asarray(arrays[f"{name}_b"], jnp.float32),
        }
        for name in layer_names(arch)
    }


def activations(params, images: jax.Array, names) -> dict[str, jax.Array]:
    """The post-ReLU activations of the convolutions ``names`` (e.g. "conv4_2", "conv1_1": the
    layers Gatys et al. name), computed up to the deepest one asked for.

    Args:
      params: ``load_vgg``'s result (VGG16 or VGG19, told apart by its layers).
      images: ``[B, H, W, 3]`` in [-1, 1].
      names: layer names of that network.

    Returns:
      ``{name: [B, H / 2**(b-1), W / 2**(b-1), C_b]}`` for each ``conv{b}_{i}`` asked for.
    """
    order = layer_names(architecture_of(params))
    unknown = [n for n in names if n not in order]
    if unknown:
        raise ValueError(f"unknown VGG layers {unknown}; valid: {order}")
    last = max(order.index(n) for n in names)
    h = (images.astype(jnp.float32) + 1.0) * 127.5 - MEAN_RGB
    out = {}
    for name in order[: last + 1]:
        b, i = (int(v) for v in name[4:].split("_"))
        if b > 1 and i == 1:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
        p = params[name]
        h = jax.lax.conv_general_dilated(
            h, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + p["bias"])
        if name in names:
            out[name] = h
    return out


def features(params, images: jax.Array) -> list[jax.Array]:
    """The relu{b}_{last} activation of every block.

    Args:
      params: ``load_vgg``'s result.
      images: ``[B, H, W, 3]`` in [-1, 1].

    Returns:
      Five ``[B, H / 2**b, W / 2**b, C_b]`` arrays (b = 0..4).
    """
    last = [f"conv{b}_{n}" for b, n in _blocks(architecture_of(params))]
    acts = activations(params, images, last)
    return [acts[name] for name in last]


def perceptual_distance(params, x: jax.Array, y: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Per-image distance ``[B]`` between images in [-1, 1] (0 for identical images)."""
    total = 0.0
    for fx, fy in zip(features(params, x), features(params, y), strict=True):
        fx = fx * jax.lax.rsqrt(jnp.sum(jnp.square(fx), axis=-1, keepdims=True) + eps)
        fy = fy * jax.lax.rsqrt(jnp.sum(jnp.square(fy), axis=-1, keepdims=True) + eps)
        total = total + jnp.mean(jnp.square(fx - fy), axis=(1, 2, 3))
    return total
