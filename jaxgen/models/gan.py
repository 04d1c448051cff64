"""DCGAN generator, text-matching discriminator and inverse network of GAN-INT-CLS (Reed 2016).

Layout as in the paper, at any power-of-two size >= 8: the text embedding is projected to
``text_dim`` (128) by a dense layer with leaky ReLU; the generator concatenates it with the noise
``z`` and upsamples from 4x4; the discriminator downsamples the image to 4x4, replicates the
projected embedding over the 4x4 grid, concatenates it depth-wise and scores with a 1x1 conv and a
4x4 conv. The generator's 3x3 convs are ``layers.Conv3x3`` (im2col on a CPU, where XLA's native
convolution gradients are slow). No running batch statistics (they would add mutable state to
every network): the generator uses GroupNorm (or ``G_NORMS``' others, among them a batch norm
from each batch's own statistics), the discriminator a LayerNorm (``D_NORMS``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.layers import Dtype, conv3x3, num_groups_for
from jaxgen.models.unet import coordinate_channels


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


class BatchStatNorm(nn.Module):
    """Batch normalisation from the current batch's statistics alone (DCGAN's generator norm).

    Each channel is normalised by its mean and variance over the batch and all positions, then
    scaled and shifted by learned parameters. No running averages are kept, so the networks
    stay free of mutable state; samples are therefore normalised by their own batch's
    statistics, and a batch of one reduces to a per-sample (instance) normalisation.
    """

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = h.shape[-1]
        x = h.astype(jnp.float32)
        mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2), keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return (x * scale + bias).astype(self.dtype)


G_NORMS = ("group", "batch", "pixel", "layer", "none")


def _g_norm(kind: str, channels: int, dtype: Dtype, name: str):
    """The generator's normalisation: ``"group"`` (GroupNorm, up to 32 groups: one channel per
    group, i.e. instance normalisation, at widths <= 32), ``"batch"`` (``BatchStatNorm``, as
    DCGAN), ``"pixel"`` (each position's feature vector divided by its RMS, no parameters:
    ProGAN's pixelwise normalisation), ``"layer"`` (GroupNorm with one group: each sample's
    whole map) or ``"none"``."""
    if kind == "group":
        return nn.GroupNorm(num_groups_for(channels, 32), dtype=dtype, name=name)
    if kind == "batch":
        return BatchStatNorm(dtype=dtype, name=name)
    if kind == "pixel":
        return lambda h: h * jax.lax.rsqrt(jnp.mean(jnp.square(h), -1, keepdims=True) + 1e-8)
    if kind == "layer":
        return nn.GroupNorm(1, dtype=dtype, name=name)
    if kind == "none":
        return lambda h: h
    raise ValueError(f"Unknown generator norm {kind!r}; valid: {', '.join(G_NORMS)}.")


class Generator(nn.Module):
    """``G(z, phi(t))`` -> images in [-1, 1].

    Attributes:
      image_size: output side (power of two >= 8).
      ch: channels at the output resolution; doubled per level down to 4x4 (capped at 8 * ch).
      text_dim: width of the projected text embedding.
      norm: normalisation before every ReLU (``G_NORMS``).
      dtype: compute dtype.
      conditional: after every normalisation, scale and shift each channel by ``1 + gamma``
        and ``beta``, linear in ``[z, phi(t)]`` (zero at initialisation): the conditional
        normalisation of BigGAN, which lets the text act on every level rather than only
        through the first layer's input.
      coords: every 3x3 conv also reads two channels holding each pixel's row and column in
        [-1, 1] (CoordConv, Liu et al. 2018), so that a position carried by ``z`` can become
        an edge at that position without being learned per location.
    """

    image_size: int = 32
    ch: int = 64
    text_dim: int = 128
    dtype: Dtype = jnp.float32
    norm: str = "group"
    conditional: bool = False
    coords: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, text_emb: jax.Array) -> jax.Array:
        """Args: z ``[B, Z]``, text_emb ``[B, E]``. Returns ``[B, S, S, 3]`` float32."""
        levels = _levels(self.image_size)
        widths = [min(self.ch * 2 ** (levels - i), 8 * self.ch) for i in range(levels + 1)]
        t = TextProjection(self.text_dim, self.dtype, name="text_proj")(text_emb)
        cond = jnp.concatenate([z.astype(self.dtype), t.astype(self.dtype)], axis=-1)
        h = nn.Dense(16 * widths[0], dtype=self.dtype, name="fc")(cond)
        h = h.reshape(h.shape[0], 4, 4, widths[0])

        def norm(h, name):
            h = _g_norm(self.norm, h.shape[-1], self.dtype, name)(h)
            if self.conditional:
                gb = nn.Dense(
                    2 * h.shape[-1],
                    dtype=self.dtype,
                    kernel_init=nn.initializers.zeros,
                    name=f"{name}_cond",
                )(cond)
                gamma, beta = jnp.split(gb[:, None, None, :], 2, axis=-1)
                h = h * (1.0 + gamma) + beta
            return nn.relu(h)

        def conv(h, features, name):
            if self.coords:
                h = jnp.concatenate([h, coordinate_channels(h.shape[:3], h.dtype)], axis=-1)
            return conv3x3(features, self.dtype, name=name)(h)

        for i in range(levels):
            h = norm(h, f"norm{i}")
            b, s, _, c = h.shape
            h = jax.image.resize(h, (b, 2 * s, 2 * s, c), "nearest")
            h = conv(h, widths[i + 1], f"conv{i}")
        h = norm(h, "norm_out")
        return jnp.tanh(conv(h, 3, "to_rgb").astype(jnp.float32))


D_NORMS = ("channel", "layer", "none")


def _d_norm(kind: str, dtype: Dtype, name: str):
    """The discriminator's normalisation: ``"channel"`` (LayerNorm over the channels of each
    position), ``"layer"`` (over each sample's whole feature map, as in WGAN-GP's critic) or
    ``"none"``."""
    if kind == "channel":
        return nn.LayerNorm(dtype=dtype, name=name)
    if kind == "layer":
        return nn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1, dtype=dtype, name=name)
    if kind == "none":
        return lambda h: h
    raise ValueError(f"Unknown discriminator norm {kind!r}; valid: {', '.join(D_NORMS)}.")


def silhouette(images: jax.Array) -> jax.Array:
    """Each pixel's brightest channel, ``[B, H, W, 1]``: a colour-blind silhouette of the
    ``shapes`` objects on their black background."""
    return jnp.max(images, axis=-1, keepdims=True)


class _Downsampler(nn.Module):
    """Strided 4x4 convs from the image down to 4x4, leaky ReLU, ``norm`` after the first."""

    image_size: int = 32
    ch: int = 64
    norm: str = "channel"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        levels = _levels(self.image_size)
        h = images.astype(self.dtype)
        for i in range(levels):
            h = _conv(min(self.ch * 2**i, 8 * self.ch), 4, 2, self.dtype, f"conv{i}")(h)
            if i > 0:
                h = _d_norm(self.norm, self.dtype, f"norm{i}")(h)
            h = nn.leaky_relu(h, 0.2)
        return h  # [B, 4, 4, C]


class Discriminator(nn.Module):
    """``D(x, phi(t))`` -> one logit per image (real and matching the text vs not).

    Attributes:
      image_size: input side (power of two >= 8).
      ch: channels after the first downsampling, doubled per level (capped at 8 * ch).
      text_dim: width of the projected text embedding replicated over the 4x4 grid.
      norm: normalisation after every conv but the first (``D_NORMS``): ``"channel"``
        normalises each position's feature vector on its own, so a faint response counts as
        much as a strong one; ``"layer"`` normalises the whole map and keeps their ratio.
      dtype: compute dtype.
      aux_classes: when set, one linear classifier per entry (with that many classes) reads
        the image's own 4x4 map, before any text is joined (the auxiliary classifier of
        AC-GAN and TAC-GAN), and ``__call__`` also returns their logits.
      projection: also add the projection discriminator's term (Miyato & Koyama 2018),
        ``<W phi(t), mean_xy h(x)>``: the inner product of a linear map of the projected text
        with the image's 4x4 map averaged over positions, a direct bilinear match of text and
        image beside the concatenation path, which must learn the match through its 1x1 conv.
      silhouette: a second downsampler reads each pixel's brightest channel alone (a
        colour-blind silhouette), and its 4x4 map joins the image's: shape detectors learned
        on it serve every colour at once, where filters on RGB must learn each shape per colour.
    """

    image_size: int = 32
    ch: int = 64
    text_dim: int = 128
    norm: str = "channel"
    dtype: Dtype = jnp.float32
    aux_classes: tuple[int, ...] = ()
    projection: bool = False
    silhouette: bool = False

    @nn.compact
    def __call__(
        self, images: jax.Array, text_emb: jax.Array, features: jax.Array | None = None
    ) -> jax.Array:
        """Args: images ``[B, S, S, 3]`` in [-1, 1], text_emb ``[B, E]``, and optionally
        ``features`` ``[B, h, w, F]``, a frozen network's feature map of the same images, which
        (average-pooled to 4x4 when larger) a 1x1 conv brings in beside the image's own 4x4
        map. Returns ``[B]``, and with ``aux_classes`` also a tuple of ``[B, k]`` float32
        class logits."""
        h = _Downsampler(self.image_size, self.ch, self.norm, self.dtype, name="down")(images)
        if self.silhouette:
            down = _Downsampler(self.image_size, self.ch, self.norm, self.dtype, name="down_sil")
            h = jnp.concatenate([h, down(silhouette(images))], axis=-1)
        flat = h.reshape(h.shape[0], -1)
        aux = tuple(
            nn.Dense(k, dtype=self.dtype, name=f"aux_{i}")(flat).astype(jnp.float32)
            for i, k in enumerate(self.aux_classes)
        )
        if features is not None:
            fh, fw = features.shape[1:3]
            if fh % h.shape[1] or fw % h.shape[2]:
                raise ValueError(
                    f"discriminator features must be maps whose side is a multiple of "
                    f"{h.shape[1]}, got {fh}x{fw}"
                )
            window = (fh // h.shape[1], fw // h.shape[2])
            features = nn.avg_pool(features, window, strides=window)
            f = _conv(h.shape[-1], 1, 1, self.dtype, "features")(features.astype(self.dtype))
            f = nn.leaky_relu(_d_norm(self.norm, self.dtype, "norm_features")(f), 0.2)
            h = jnp.concatenate([h, f], axis=-1)
        t = TextProjection(self.text_dim, self.dtype, name="text_proj")(text_emb)
        match = 0.0
        if self.projection:
            w = nn.Dense(
                h.shape[-1],
                dtype=self.dtype,
                kernel_init=nn.initializers.normal(0.02),
                name="projection",
            )(t)
            match = jnp.sum(jnp.mean(h, axis=(1, 2)) * w, axis=-1).astype(jnp.float32)
        t = jnp.broadcast_to(t[:, None, None, :], (*h.shape[:3], t.shape[-1]))
        h = jnp.concatenate([h, t.astype(h.dtype)], axis=-1)
        h = _conv(h.shape[-1] // 2, 1, 1, self.dtype, "joint")(h)
        h = nn.leaky_relu(_d_norm(self.norm, self.dtype, "norm_joint")(h), 0.2)
        h = nn.Conv(1, (4, 4), padding="VALID", dtype=self.dtype, name="score")(h)
        logits = h.reshape(h.shape[0]).astype(jnp.float32) + match
        return (logits, aux) if self.aux_classes else logits


class InverseNetwork(nn.Module):
    """``S(x)`` -> z: regresses the noise that generated an image (the paper's style encoder).

    Attributes:
      image_size: input side; ch: first-level channels; z_dim: output width.
      log_variance: also return a log-variance ``[B, z_dim]`` beside the mean (a second dense
        head), so that S can serve as the Gaussian encoder ``q(z | x)`` of a conditional VAE.
    """

    image_size: int = 32
    ch: int = 64
    z_dim: int = 100
    dtype: Dtype = jnp.float32
    log_variance: bool = False

    @nn.compact
    def __call__(self, images: jax.Array):
        """Args: images ``[B, S, S, 3]`` in [-1, 1]. Returns the mean ``[B, z_dim]`` float32, and
        with ``log_variance`` the pair (mean, log-variance)."""
        h = _Downsampler(self.image_size, self.ch, dtype=self.dtype, name="down")(images)
        h = h.reshape(h.shape[0], -1)
        mean = nn.Dense(self.z_dim, dtype=self.dtype, name="fc")(h).astype(jnp.float32)
        if not self.log_variance:
            return mean
        log_var = nn.Dense(
            self.z_dim, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="fc_log_var"
        )(h)
        return mean, log_var.astype(jnp.float32)
