"""Convolutional encoder, decoder and patch discriminator of the autoencoder family.

The encoder maps ``[B, S, S, 3]`` images in [-1, 1] to a ``[B, S/f, S/f, out_ch]`` grid with
``f = patch_size * 2 ** (len(ch_mults) - 1)``; the decoder maps such a grid back. Both are the
VQGAN layout (Esser et al. 2021) without attention: a stem conv, residual blocks per level with
strided-conv downsampling (nearest + conv upsampling), GroupNorm, SiLU. On a CPU, ``patch_size=2``
folds 2x2 pixels into channels first (as the DDPM UNet does), which makes the first level four
times cheaper; the decoder's last conv predicts the 2x2 pixels of each position, so edges stay
sharp. The decoder's last layer is ``conv_out``: VQGAN's adaptive weight reads its gradients.
``CellEncoder`` is the local alternative (``model.encoder="cell"``): each token reads only its own
cell of pixels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.layers import Dtype, GroupNorm, conv3x3, dense, upsample_nearest
from jaxgen.models.unet import ResBlock, depth_to_space, space_to_depth


def downsampling_factor(patch_size: int, ch_mults) -> int:
    """Image side / token-grid side."""
    return int(patch_size) * 2 ** (len(tuple(ch_mults)) - 1)


class Encoder(nn.Module):
    """``[B, S, S, 3] -> [B, S/f, S/f, out_ch]``.

    Attributes:
      ch: channels of the first level; level i has ``ch * ch_mults[i]``.
      ch_mults: channel multipliers, one level per entry (a 2x downsampling between levels).
      num_res_blocks: residual blocks per level.
      out_ch: output channels (code dimension, 2x latent channels for a VAE, or K logits).
      patch_size: pixels folded into channels before the stem (1 or 2).
      dtype: compute dtype.
    """

    ch: int
    ch_mults: tuple[int, ...]
    num_res_blocks: int
    out_ch: int
    patch_size: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = conv3x3(self.ch, self.dtype, name="conv_in")(space_to_depth(x, self.patch_size))
        for level, mult in enumerate(self.ch_mults):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, dtype=self.dtype, name=f"down{level}_{i}")(h, None)
            if level < len(self.ch_mults) - 1:
                h = conv3x3(self.ch * mult, self.dtype, strides=2, name=f"downsample{level}")(h)
        h = ResBlock(h.shape[-1], dtype=self.dtype, name="mid")(h, None)
        h = nn.silu(GroupNorm(32, dtype=self.dtype, name="norm_out")(h))
        return dense(self.out_ch, jnp.float32, name="proj_out")(h)


class CellEncoder(nn.Module):
    """``[B, S, S, 3] -> [B, S/f, S/f, out_ch]`` where output ``(i, j)`` reads only its own
    ``f x f`` pixels: a residual MLP on each cell, with LayerNorm (per position) where the
    convolutional ``Encoder`` has GroupNorm (statistics over the whole image).

    Identical cells (the black background of ``shapes``) therefore get identical codes, which
    makes the token grid a much easier language for a transformer; the decoder still reads the
    neighbours.

    Attributes:
      ch: width of the MLP.
      factor: cell side in pixels (the downsampling factor).
      depth: residual MLP blocks.
      out_ch: output channels, as ``Encoder``'s.
      dtype: compute dtype.
    """

    ch: int
    factor: int
    depth: int
    out_ch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = dense(self.ch, self.dtype, name="proj_in")(space_to_depth(x, self.factor))
        for i in range(self.depth):
            r = nn.LayerNorm(dtype=self.dtype, name=f"norm{i}")(h)
            r = dense(2 * self.ch, self.dtype, name=f"fc{i}_0")(r)
            h = h + dense(self.ch, self.dtype, name=f"fc{i}_1")(nn.silu(r))
        h = nn.silu(nn.LayerNorm(dtype=self.dtype, name="norm_out")(h))
        return dense(self.out_ch, jnp.float32, name="proj_out")(h)


class Decoder(nn.Module):
    """``[B, h, w, C] -> [B, h*f, w*f, 3]`` (unbounded; the data lives in [-1, 1]).

    Attributes: as ``Encoder``'s (``ch_mults`` in encoder order).
    """

    ch: int
    ch_mults: tuple[int, ...]
    num_res_blocks: int
    patch_size: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, return_features: bool = False):
        """Decodes ``z``; with ``return_features`` also returns the input of ``conv_out``."""
        levels = len(self.ch_mults)
        h = dense(self.ch * self.ch_mults[-1], self.dtype, name="proj_in")(z)
        h = ResBlock(h.shape[-1], dtype=self.dtype, name="mid")(h, None)
        for level in reversed(range(levels)):
            for i in range(self.num_res_blocks):
                h = ResBlock(
                    self.ch * self.ch_mults[level], dtype=self.dtype, name=f"up{level}_{i}"
                )(h, None)
            if level > 0:
                h = conv3x3(h.shape[-1], self.dtype, name=f"upsample{level}")(upsample_nearest(h))
        features = nn.silu(GroupNorm(32, dtype=self.dtype, name="norm_out")(h))
        out = conv_out(3 * self.patch_size**2, self.dtype)(features)
        out = depth_to_space(out.astype(jnp.float32), self.patch_size)
        return (out, features) if return_features else out


def conv_out(features: int, dtype: Dtype):
    """The decoder's last layer (applied on its own by VQGAN's adaptive weight)."""
    return conv3x3(features, dtype, name="conv_out")


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) as in VQGAN: one real/fake logit per overlapping patch.

    Strided 3x3 convs (``num_layers`` halvings), GroupNorm instead of BatchNorm (no running
    statistics in the state), leaky ReLU(0.2), then a 3x3 conv to one channel.

    Attributes:
      ch: channels of the first layer, doubled per layer up to ``8 * ch``.
      num_layers: number of stride-2 layers.
      dtype: compute dtype.
    """

    ch: int = 64
    num_layers: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, S, S, 3] -> [B, S / 2**num_layers, S / 2**num_layers]`` logits (float32)."""
        h = nn.leaky_relu(conv3x3(self.ch, self.dtype, strides=2, name="conv0")(x), 0.2)
        for i in range(1, self.num_layers + 1):
            strides = 2 if i < self.num_layers else 1
            h = conv3x3(self.ch * min(2**i, 8), self.dtype, strides=strides, name=f"conv{i}")(h)
            h = nn.leaky_relu(GroupNorm(32, dtype=self.dtype, name=f"norm{i}")(h), 0.2)
        return conv3x3(1, jnp.float32, name="logits")(h)[..., 0]
