"""DCGAN generator, text-matching discriminator and inverse network of GAN-INT-CLS (Reed 2016).

Layout as in the paper, at any power-of-two size >= 8: the text embedding is projected to
``text_dim`` (128) by a dense layer with leaky ReLU; the generator concatenates it with the noise
``z`` and upsamples from 4x4; the discriminator downsamples the image to 4x4, replicates the
projected embedding over the 4x4 grid, concatenates it depth-wise and scores with a 1x1 conv and a
4x4 conv. The generator's 3x3 convs are ``layers.Conv3x3``. No running batch statistics (they
would add mutable state to every network): the generator uses GroupNorm, the discriminator a
LayerNorm over each position's channels.

For the family's default (``experiments/gan.py``): the discriminator can also read features of a
frozen image tower (a CLIP's) with a projection term, and ``AttnGenerator`` reads the caption
word by word (``WordAttention``) with the sentence embedding modulating every normalisation.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.layers import (
    Dtype,
    GroupNorm,
    attention,
    conv3x3,
    num_groups_for,
    upsample_nearest,
)


def _levels(image_size: int) -> int:
    """Number of 2x resampling steps between 4x4 and ``image_size``."""
    levels = int(round(math.log2(image_size / 4)))
    if image_size < 8 or 4 * 2**levels != image_size:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return levels


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, name: str) -> nn.Conv:
    # DCGAN initialisation: N(0, 0.02).
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME",
        dtype=dtype,
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


class TextProjection(nn.Module):
    """``phi(t)`` -> dense(``features``) -> leaky ReLU(0.2), as in the paper."""

    features: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text_emb: jax.Array) -> jax.Array:
        h = nn.Dense(self.features, dtype=self.dtype, name="dense")(text_emb)
        return nn.leaky_relu(h, 0.2)


def _start(gen: nn.Module, z: jax.Array, text_emb: jax.Array):
    """A generator's start, inside its compact ``__call__`` (the layers are ``gen``'s own,
    named ``text_proj`` and ``fc``): the channel widths from 4x4 to ``gen.image_size``
    (``gen.ch`` at the output, doubled per level down, capped at ``8 * gen.ch``), the
    conditioning ``[z, projected text]`` and the 4x4 map a dense layer makes of it."""
    levels = _levels(gen.image_size)
    widths = [min(gen.ch * 2 ** (levels - i), 8 * gen.ch) for i in range(levels + 1)]
    t = TextProjection(gen.text_dim, gen.dtype, name="text_proj")(text_emb)
    cond = jnp.concatenate([z.astype(gen.dtype), t.astype(gen.dtype)], axis=-1)
    h = nn.Dense(16 * widths[0], dtype=gen.dtype, name="fc")(cond)
    return widths, cond, h.reshape(h.shape[0], 4, 4, widths[0])


class Generator(nn.Module):
    """``G(z, phi(t))`` -> images in [-1, 1].

    Attributes:
      image_size: output side (power of two >= 8).
      ch: channels at the output resolution; doubled per level down to 4x4 (capped at 8 * ch).
      text_dim: width of the projected text embedding.
      dtype: compute dtype.

    Every ReLU follows a GroupNorm of up to 32 groups (one channel per group, i.e. instance
    normalisation, at widths <= 32).
    """

    image_size: int = 32
    ch: int = 64
    text_dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, text_emb: jax.Array) -> jax.Array:
        """Args: z ``[B, Z]``, text_emb ``[B, E]``. Returns ``[B, S, S, 3]`` float32."""
        widths, cond, h = _start(self, z, text_emb)
        levels = len(widths) - 1

        def norm(h, name):
            groups = num_groups_for(h.shape[-1], 32)
            return nn.relu(nn.GroupNorm(groups, dtype=self.dtype, name=name)(h))

        for i in range(levels):
            h = norm(h, f"norm{i}")
            b, s, _, c = h.shape
            h = jax.image.resize(h, (b, 2 * s, 2 * s, c), "nearest")
            h = conv3x3(widths[i + 1], self.dtype, name=f"conv{i}")(h)
        h = norm(h, "norm_out")
        return jnp.tanh(conv3x3(3, self.dtype, name="to_rgb")(h).astype(jnp.float32))


class _Downsampler(nn.Module):
    """Strided 4x4 convs from the image down to 4x4, leaky ReLU, a LayerNorm over each
    position's channels after every conv but the first."""

    image_size: int = 32
    ch: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        levels = _levels(self.image_size)
        h = images.astype(self.dtype)
        for i in range(levels):
            h = _conv(min(self.ch * 2**i, 8 * self.ch), 4, 2, self.dtype, f"conv{i}")(h)
            if i > 0:
                h = nn.LayerNorm(dtype=self.dtype, name=f"norm{i}")(h)
            h = nn.leaky_relu(h, 0.2)
        return h  # [B, 4, 4, C]


class Discriminator(nn.Module):
    """``D(x, phi(t))`` -> one logit per image (real and matching the text vs not).

    Attributes:
      image_size: input side (power of two >= 8).
      ch: channels after the first downsampling, doubled per level (capped at 8 * ch).
      text_dim: width of the projected text embedding replicated over the 4x4 grid.
      dtype: compute dtype.

    After every conv but the first, a LayerNorm normalises each position's feature vector on its
    own (so a faint response counts as much as a strong one).
    """

    image_size: int = 32
    ch: int = 64
    text_dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, text_emb: jax.Array, clip_features: jax.Array | None = None
    ) -> jax.Array:
        """Scores (image, text) pairs.

        Args:
          images: ``[B, S, S, 3]`` in [-1, 1].
          text_emb: ``[B, E]``.
          clip_features: optional ``[B, F]`` features of the same images from a frozen image
            tower (LAFITE / GALIP's CLIP-feature discriminator). They are projected, leaky-ReLU'd
            and replicated over the 4x4 grid beside the text, and a projection term
            ``<W f, text_emb>`` (Miyato & Koyama 2018) is added to the logit, so a match in the
            tower's joint space counts directly. Without them the network is the paper's.

        Returns:
          ``[B]`` float32 logits.
        """
        h = _Downsampler(self.image_size, self.ch, self.dtype, name="down")(images)
        t = TextProjection(self.text_dim, self.dtype, name="text_proj")(text_emb)
        parts = [h, jnp.broadcast_to(t[:, None, None, :], (*h.shape[:3], t.shape[-1]))]
        if clip_features is not None:
            c = TextProjection(self.text_dim, self.dtype, name="clip_proj")(clip_features)
            parts.append(jnp.broadcast_to(c[:, None, None, :], (*h.shape[:3], c.shape[-1])))
        h = jnp.concatenate([p.astype(h.dtype) for p in parts], axis=-1)
        h = _conv(h.shape[-1] // 2, 1, 1, self.dtype, "joint")(h)
        h = nn.leaky_relu(nn.LayerNorm(dtype=self.dtype, name="norm_joint")(h), 0.2)
        h = nn.Conv(1, (4, 4), padding="VALID", dtype=self.dtype, name="score")(h)
        logit = h.reshape(h.shape[0]).astype(jnp.float32)
        if clip_features is not None:
            proj = nn.Dense(
                text_emb.shape[-1],
                use_bias=False,
                kernel_init=nn.initializers.zeros,  # no match term until D learns one
                name="clip_match",
            )(clip_features.astype(jnp.float32))
            logit = logit + jnp.sum(proj * text_emb.astype(jnp.float32), axis=-1)
        return logit


class InverseNetwork(nn.Module):
    """``S(x)`` -> z: regresses the noise that generated an image (the paper's style encoder).

    Attributes:
      image_size: input side; ch: first-level channels; z_dim: output width.
    """

    image_size: int = 32
    ch: int = 64
    z_dim: int = 100
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Args: images ``[B, S, S, 3]`` in [-1, 1]. Returns ``[B, z_dim]`` float32."""
        h = _Downsampler(self.image_size, self.ch, self.dtype, name="down")(images)
        h = h.reshape(h.shape[0], -1)
        return nn.Dense(self.z_dim, dtype=self.dtype, name="fc")(h).astype(jnp.float32)


class WordAttention(nn.Module):
    """Cross-attention from every position of a feature map to the caption's token states
    (AttnGAN's word context, GigaGAN's cross-attention), added residually:
    ``x + out(softmax(q(LN(x) + pos) k(w)^T / sqrt(d)) v(w))``.

    A learned position embedding joins each query, so a position can ask for the words that
    belong there ("... left of ..."). PAD tokens get zero weight. The weights ``[B, heads,
    H * W, L]`` are sown as ``intermediates/attention``. The output projection starts at zero,
    so the block starts as the identity.

    Attributes:
      num_heads: attention heads (must divide the channels).
      dtype: compute dtype.
    """

    num_heads: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, words: jax.Array, mask: jax.Array) -> jax.Array:
        """Args: x ``[B, H, W, C]``; words ``[B, L, Wt]``; mask ``[B, L]`` (True or > 0 on
        tokens that may be attended to). Returns ``[B, H, W, C]``."""
        b, h, w, c = x.shape
        n = self.num_heads
        if c % n:
            raise ValueError(f"WordAttention: {c} channels do not split into {n} heads.")
        pos = self.param("pos", nn.initializers.normal(0.02), (h * w, c), jnp.float32)
        q = nn.LayerNorm(dtype=self.dtype, name="ln")(x).reshape(b, h * w, c) + pos
        q = nn.Dense(c, dtype=self.dtype, name="q")(q).reshape(b, h * w, n, c // n)
        kv = nn.Dense(2 * c, dtype=self.dtype, name="kv")(words.astype(self.dtype))
        kv = kv.reshape(b, words.shape[1], 2, n, c // n)
        out, weights = attention(q, kv[:, :, 0], kv[:, :, 1], mask > 0, return_weights=True)
        self.sow("intermediates", "attention", weights)
        out = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="out")(
            out.reshape(b, h, w, c)
        )
        return x + out


class AttnGenerator(nn.Module):
    """A generator that reads the caption word by word: ``G(z, text) -> images`` in [-1, 1].

    From a 4x4 map (a dense layer of the noise and the projected sentence embedding), one
    residual block per resolution up to ``image_size``; in each block two GroupNorms take a
    per-sample affine (scale and shift) computed from ``[z, sentence]`` (DF-GAN's deep fusion,
    as FiLM), and at the resolutions in ``attention_sizes`` a ``WordAttention`` reads the
    caption's token states. Nearest 2x upsampling and a 3x3 conv between resolutions.

    Attributes:
      image_size: output side (power of two >= 8).
      ch: channels at the output resolution; doubled per level down to 4x4 (capped at 8 * ch).
      text_dim: width of the projected sentence embedding.
      attention_sizes: resolutions with word attention (empty: sentence conditioning only).
      num_heads: heads of the word attention.
      dtype: compute dtype.
    """

    image_size: int = 32
    ch: int = 32
    text_dim: int = 128
    attention_sizes: tuple[int, ...] = (4, 8, 16)
    num_heads: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        z: jax.Array,
        text_emb: jax.Array,
        words: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Args: z ``[B, Z]``; text_emb ``[B, E]``; words ``[B, L, Wt]`` and mask ``[B, L]``
        (needed when ``attention_sizes`` is not empty). Returns ``[B, S, S, 3]`` float32."""
        if self.attention_sizes and (words is None or mask is None):
            raise ValueError("AttnGenerator with attention_sizes needs the words and their mask.")
        widths, cond, h = _start(self, z, text_emb)
        levels = len(widths) - 1

        def fused_norm(h, name):
            c = h.shape[-1]
            film = nn.Dense(
                2 * c, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name=f"{name}_film"
            )(cond)
            groups = num_groups_for(c, 32)
            h = GroupNorm(groups, dtype=self.dtype, name=name)(h, (film[:, :c], film[:, c:]))
            return nn.relu(h)

        for i in range(levels + 1):
            size = 4 * 2**i
            r = conv3x3(widths[i], self.dtype, name=f"block{i}_conv_a")(
                fused_norm(h, f"block{i}_norm_a")
            )
            r = conv3x3(widths[i], self.dtype, name=f"block{i}_conv_b")(
                fused_norm(r, f"block{i}_norm_b")
            )
            h = h + r
            if size in self.attention_sizes:
                h = WordAttention(self.num_heads, self.dtype, name=f"attn{i}")(h, words, mask)
            if i < levels:
                h = conv3x3(widths[i + 1], self.dtype, name=f"up{i}")(upsample_nearest(h))
        h = nn.relu(
            GroupNorm(num_groups_for(h.shape[-1], 32), dtype=self.dtype, name="norm_out")(h)
        )
        return jnp.tanh(conv3x3(3, self.dtype, name="to_rgb")(h).astype(jnp.float32))
