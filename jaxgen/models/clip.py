"""CLIP-style dual encoder (Radford et al. 2021): texts and images in one normalised space.

The text tower is the byte-level ``TextEncoder`` the diffusion models use (so a trained CLIP text
tower can initialise theirs); its pooled state is projected. The image tower is a small conv net
whose final feature map is flattened, not averaged, before the projection: spatial relations
("a circle left of a square") must survive into the embedding, and global average pooling would
throw away where things are.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.layers import Dtype, conv3x3, dense
from jaxgen.models.text_encoder import TextEncoder


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis, computed in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


COLOUR_MODES = ("joint", "factorised")


class ImageEncoder(nn.Module):
    """Conv tower: per stage two 3x3 convs (the first strided 2 after stage 0), GELU, LayerNorm.

    Attributes:
      patch_size: fold ``p x p`` pixel patches into channels first (space-to-depth, lossless):
        the tower then runs at ``H / p``, ``p ** 2`` times cheaper at the first stage.
      widths: channels per stage; the resolution halves after every stage but the first.
      out_dim: width of the returned feature vector.
      colour: how the tower treats the colour channels. ``"joint"``: the first conv sees all
        three, like any RGB network. ``"factorised"``: the conv stages run on each colour plane
        alone, as a one-channel image, with one set of weights, and the three results are
        reduced by a maximum over planes, which is blind to colour (a red and a yellow
        triangle give the same map: each lights one or two planes and leaves an empty one);
        each cell of the final map gets the colour from the per-channel maximum of its pixels.
        Shape and colour then reach the flattening as separate features, so a colour-shape
        pair never seen in training still gets its shape read. The blindness holds for flat,
        saturated colours on a dark background (``shapes``); on natural images the maximum
        mixes colour into the shape features, and ``"joint"`` is the usual choice.
      dtype: compute dtype (parameters stay float32).
    """

    widths: Sequence[int] = (32, 64, 128)
    out_dim: int = 256
    patch_size: int = 1
    colour: str = "joint"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Encodes images.

        Args:
          images: float ``[B, H, W, 3]`` in [-1, 1].

        Returns:
          ``[B, out_dim]`` float32 features (before the joint-space projection).
        """
        if self.colour not in COLOUR_MODES:
            raise ValueError(
                f"Unknown image colour mode {self.colour!r}; valid: {', '.join(COLOUR_MODES)}."
            )
        pixels = x = images.astype(self.dtype)
        batch, colours = x.shape[0], x.shape[-1]
        per_plane = self.colour == "factorised"
        if per_plane:  # [B, H, W, 3] -> [B * 3, H, W, 1]
            x = jnp.moveaxis(x, -1, 1).reshape(batch * colours, *x.shape[1:3], 1)
        p = self.patch_size
        if p > 1:
            b, h, w, c = x.shape
            if h % p or w % p:
                raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {p}")
            x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, h // p, w // p, p * p * c)
        for i, width in enumerate(self.widths):
            x = conv3x3(width, self.dtype, strides=1 if i == 0 else 2, name=f"conv{i}_a")(x)
            x = nn.gelu(x)
            x = conv3x3(width, self.dtype, name=f"conv{i}_b")(x)
            x = nn.gelu(nn.LayerNorm(dtype=self.dtype, name=f"ln{i}")(x))
        if per_plane:  # [B * 3, h, w, C] -> [B, h, w, C + 3]: shape maps, cell colours
            x = x.reshape(batch, colours, *x.shape[1:])
            h, w = x.shape[2:4]
            if images.shape[1] % h or images.shape[2] % w:
                raise ValueError(
                    f"colour 'factorised' needs the image size {images.shape[1:3]} to be a "
                    f"multiple of the final feature map's {(h, w)}"
                )
            cells = pixels.reshape(batch, h, images.shape[1] // h, w, images.shape[2] // w, colours)
            x = jnp.concatenate([jnp.max(x, axis=1), jnp.max(cells, axis=(2, 4))], axis=-1)
        x = x.reshape(x.shape[0], -1)  # flattened, not averaged: relations live in position
        x = nn.gelu(dense(self.out_dim, self.dtype, name="fc")(x))
        return nn.LayerNorm(dtype=jnp.float32, name="ln_out")(x)


class TextTower(nn.Module):
    """Byte-level ``TextEncoder``, its pooled state projected to ``embed_dim`` and normalised.

    Parameters: ``encoder`` (a ``TextEncoder``, shaped like the diffusion models' text encoders)
    and ``proj``. Other pipelines load a trained CLIP's ``params["text"]`` into this module.
    """

    embed_dim: int = 128
    text: dict | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        train: bool = False,
        return_pooled: bool = False,
        return_sequence: bool = False,
    ):
        """int32 tokens ``[B, L]`` -> unit vectors ``[B, embed_dim]`` (float32); with
        ``return_pooled`` also the encoder's pooled state ``[B, W]`` (float32); with
        ``return_sequence`` (instead) the encoder's token states ``[B, L, W]`` (float32) and
        their mask (bool ``[B, L]``, True on non-PAD tokens): ``(emb, seq, mask)``."""
        encoder = TextEncoder(**{"dtype": self.dtype, **(self.text or {})}, name="encoder")
        seq, pooled, mask = encoder(tokens, train=train)
        pooled = pooled.astype(jnp.float32)
        emb = l2_normalize(nn.Dense(self.embed_dim, use_bias=False, name="proj")(pooled))
        if return_sequence:
            return emb, seq.astype(jnp.float32), mask
        return (emb, pooled) if return_pooled else emb


class CLIP(nn.Module):
    """Text and image towers projected to ``embed_dim`` unit vectors, and a learned temperature.

    Parameters: ``text`` (a ``TextTower``), ``image`` (an ``ImageEncoder``), ``image_proj`` and
    ``logit_scale`` (``log(1 / temperature)``).

    Attributes:
      embed_dim: joint embedding width.
      text: keyword arguments of ``TextEncoder`` (width, depth, num_heads, max_len ...).
      image_widths: channels per stage of the ``ImageEncoder``.
      image_dim: width of the image tower's feature vector.
      image_patch_size: space-to-depth factor at the image tower's input.
      image_colour: ``ImageEncoder.colour``.
      init_temperature: initial softmax temperature (CLIP: 0.07).
      parse_classes: the class count of each field of a caption's parse (``shapes.PARSE_FIELDS``);
        when set, one linear head per field reads the text encoder's pooled state (parameters
        ``parse_0``, ``parse_1`` ...), so a loss on them asks that state, which DDPM and GAN
        condition on, to hold the caption's content in a form a linear layer can read.
      dtype: compute dtype of both towers.
    """

    embed_dim: int = 128
    text: dict | None = None
    image_widths: Sequence[int] = (32, 64, 128)
    image_dim: int = 256
    image_patch_size: int = 1
    image_colour: str = "joint"
    init_temperature: float = 0.07
    parse_classes: Sequence[int] = ()
    dtype: Dtype = jnp.float32

    def setup(self):
        self.text_tower = TextTower(self.embed_dim, self.text, self.dtype, name="text")
        self.image_encoder = ImageEncoder(
            widths=self.image_widths,
            out_dim=self.image_dim,
            patch_size=self.image_patch_size,
            colour=self.image_colour,
            dtype=self.dtype,
            name="image",
        )
        self.image_proj = nn.Dense(self.embed_dim, use_bias=False, name="image_proj")
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(np.log(1.0 / self.init_temperature)), ()
        )
        self.parse_heads = [
            nn.Dense(k, name=f"parse_{i}") for i, k in enumerate(self.parse_classes)
        ]

    def embed_text(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """int32 tokens ``[B, L]`` -> unit vectors ``[B, embed_dim]`` (float32)."""
        return self.text_tower(tokens, train)

    def embed_image(self, images: jax.Array) -> jax.Array:
        """float images ``[B, H, W, 3]`` in [-1, 1] -> unit vectors ``[B, embed_dim]``."""
        return l2_normalize(self.image_proj(self.image_encoder(images)))

    def parse_text(self, tokens: jax.Array, train: bool = False):
        """``(text_emb [B, D], logits)``: ``logits`` holds one float32 ``[B, k]`` per entry k of
        ``parse_classes``, read from the pooled state the embedding is projected from."""
        emb, pooled = self.text_tower(tokens, train, return_pooled=True)
        return emb, tuple(head(pooled) for head in self.parse_heads)

    def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False):
        """Returns ``(image_emb [B, D], text_emb [B, D], logit_scale [])``, and the parse logits
        (``parse_text``) as a fourth item when ``parse_classes`` is set."""
        if not self.parse_classes:
            return self.embed_image(images), self.embed_text(tokens, train), self.logit_scale
        txt, logits = self.parse_text(tokens, train)
        return self.embed_image(images), txt, self.logit_scale, logits
