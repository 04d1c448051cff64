"""The feature networks style transfer reads: VGG (published weights from a file) or, with no
weight file, a fixed network of random multi-scale filters.

Ustyuzhaninov, Brendel, Gatys and Bethge (2017, "What does it take to generate natural
textures?") showed that a single layer of random convolutional filters of many sizes (3 to 55
pixels, ReLU, no pooling) already captures textures well enough for Gram-matrix synthesis. Their
large filters cost too much on a CPU (a 55x55 filter bank on a 256x256 image is ~76 GFLOPs), so
``random_multiscale`` builds them the cheap way: at scale ``s`` the image is box-blurred over
``s x s`` pixels and read by random ``kernel x kernel`` filters dilated by ``s``, which is one
filter of ``kernel * s`` pixels, smooth over ``s x s`` blocks, at every pixel (no pooling or
subsampling, as theirs: subsampled scales leave a grid of period ``s`` in optimised images).
Each scale is a named layer (``scale1``, ``scale2``, ...) with its own Gram matrix. It is NOT a
trained network: results made with it are labelled ``random multi-scale`` wherever they are
reported.

A network is a params dict of arrays (so it can be passed to compiled functions): VGG's
(``jaxgen.models.vgg``, layers ``conv1_1`` ...) or the random one's (layers ``scale1`` ...).
``activations`` reads either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models import vgg
from jaxgen.models.layers import conv_same

#: The layers Gatys et al. read in VGG-19 (and our defaults for the random network).
VGG_CONTENT_LAYERS = ("conv4_2",)
VGG_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


def random_multiscale(
    seed: int = 0, scales=(1, 2, 4, 8, 16), kernel: int = 5, channels: int = 64
) -> dict:
    """A fixed random multi-scale network: per scale, ``channels`` zero-mean Gaussian
    ``kernel x kernel`` filters on RGB (each filter scaled to unit norm), no bias, ReLU."""
    if kernel < 1 or channels < 1 or not scales or min(scales) < 1:
        raise ValueError(
            f"bad random network: scales {scales}, kernel {kernel}, channels {channels}"
        )
    rng = np.random.default_rng(seed)
    params = {}
    for s in scales:
        w = rng.normal(size=(kernel, kernel, 3, channels))
        w -= w.mean(axis=(0, 1, 2), keepdims=True)
        w /= np.sqrt(np.sum(w**2, axis=(0, 1, 2), keepdims=True))
        params[f"scale{int(s)}"] = {"kernel": jnp.asarray(w, jnp.float32)}
    return params


def is_random(params) -> bool:
    return any(k.startswith("scale") for k in params)


def layer_names(params) -> list[str]:
    if is_random(params):
        return sorted((k for k in params if k.startswith("scale")), key=lambda k: int(k[5:]))
    return vgg.layer_names(vgg.architecture_of(params))


def default_layers(params) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(content layers, style layers): Gatys et al.'s for VGG; for the random network the
    quarter-resolution layer for content (the picture's layout, not its fine texture) and every
    scale for style."""
    if is_random(params):
        names = layer_names(params)
        content = "scale4" if "scale4" in names else names[len(names) // 2]
        return (content,), tuple(names)
    return VGG_CONTENT_LAYERS, VGG_STYLE_LAYERS


def describe(params, seed: int | None = None) -> str:
    """How the network was made, for logs and results ("random multi-scale (seed 0, 128 5x5
    filters at scales [1, 2, 4, 8, 16]; untrained)" or "VGG19")."""
    if is_random(params):
        k, _, _, c = params[layer_names(params)[0]]["kernel"].shape
        scales = [int(n[5:]) for n in layer_names(params)]
        seeded = "" if seed is None else f"seed {seed}, "
        return f"random multi-scale ({seeded}{c} {k}x{k} filters at scales {scales}; untrained)"
    return vgg.architecture_of(params).upper()


def load(spec: str, seed: int = 0) -> dict:
    """``"random"``: ``random_multiscale(seed)``; ``"random3"`` etc.: with 3x3 filters; anything
    else: a VGG weight file (``vgg.load_vgg``, any of its formats)."""
    spec = str(spec)
    if not spec:
        raise ValueError(
            "No feature network: set features to a VGG weight file (--config.features=PATH; "
            '.npz, .safetensors, .pth or .h5) or to "random".'
        )
    if spec.startswith("random"):
        kernel = int(spec[len("random") :] or 5)
        return random_multiscale(seed=seed, kernel=kernel)
    return vgg.load_vgg(spec)


def _blur(x: jax.Array, s: int) -> jax.Array:
    """The mean over each ``s x s`` window (stride 1; the border's windows are cut short)."""
    if s == 1:
        return x
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, 1, 1, 1), "SAME")
    # Pixels in each window, from the shape alone (XLA would spend seconds folding a
    # reduce_window of ones): SAME pads (s - 1) // 2 before and the rest after.
    lo = (s - 1) // 2

    def count(n):
        i = np.arange(n)
        return np.minimum(i + s - 1 - lo, n - 1) - np.maximum(i - lo, 0) + 1

    counts = np.outer(count(x.shape[1]), count(x.shape[2])).astype(np.float32)
    return total / counts[None, :, :, None]


def activations(params, images: jax.Array, names) -> dict[str, jax.Array]:
    """``{name: [B, h, w, C]}`` post-ReLU activations of the layers ``names`` for images
    ``[B, H, W, 3]`` in [-1, 1] (any size; the random network's layers are ``[B, H, W, C]``)."""
    if not is_random(params):
        return vgg.activations(params, images, names)
    valid = layer_names(params)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown layers {unknown} of the random network; valid: {valid}")
    x = images.astype(jnp.float32)
    out = {}
    for name in names:
        scale = int(name[5:])
        h = conv_same(_blur(x, scale), params[name]["kernel"], scale)
        out[name] = jax.nn.relu(h)
    return out
