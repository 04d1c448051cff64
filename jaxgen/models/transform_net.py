"""Johnson, Alahi and Fei-Fei's (2016) image transformation network for fast style transfer, as
pytorch/examples' fast_neural_style builds it: a 9x9 convolution, two stride-2 convolutions,
residual blocks, two nearest-neighbour 2x upsamplings each followed by a convolution, and a 9x9
convolution back to RGB; instance normalisation after every convolution but the last, and
reflection padding instead of zeros. Any image size: the output has the input's size (odd sides
are padded by reflection to a multiple of 4 and cropped back).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class InstanceNorm(nn.Module):
    """Normalises each image's channels over its positions, with a learned scale and shift
    (Ulyanov et al. 2016)."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.var(x, axis=(1, 2), keepdims=True)
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class ReflectConv(nn.Module):
    """Reflection padding by ``kernel // 2``, then a convolution (VALID) with ``stride``."""

    features: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.kernel // 2
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        return nn.Conv(
            self.features, (self.kernel,) * 2, strides=(self.stride,) * 2, padding="VALID"
        )(x)


class ResidualBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(InstanceNorm()(ReflectConv(self.features, 3)(x)))
        return x + InstanceNorm()(ReflectConv(self.features, 3)(h))


class TransformNet(nn.Module):
    """Images ``[B, H, W, 3]`` in [-1, 1] -> stylised images of the same shape in [-1, 1].

    Attributes:
      width: channels of the first layer (32 in the paper; 64 and 128 after each downsampling).
      num_residual: residual blocks at the lowest resolution (5 in the paper).
    """

    width: int = 32
    num_residual: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got shape {x.shape}")
        _, h0, w0, _ = x.shape
        ph, pw = -h0 % 4, -w0 % 4
        if ph or pw:
            x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
        w = self.width
        h = nn.relu(InstanceNorm()(ReflectConv(w, 9)(x)))
        h = nn.relu(InstanceNorm()(ReflectConv(2 * w, 3, 2)(h)))
        h = nn.relu(InstanceNorm()(ReflectConv(4 * w, 3, 2)(h)))
        for _ in range(self.num_residual):
            h = ResidualBlock(4 * w)(h)
        for features in (2 * w, w):
            b, hh, ww, c = h.shape
            h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
            h = nn.relu(InstanceNorm()(ReflectConv(features, 3)(h)))
        out = jnp.tanh(ReflectConv(3, 9)(h))
        return out[:, :h0, :w0, :]
