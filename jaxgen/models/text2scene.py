"""Text2Scene (Tan, Feng, Ordonez, CVPR 2019): compose a scene object by object.

At step t the model reads the description (encoded once), and the canvas drawn so far (a CNN
over the rendered image, carried over steps by a convolutional GRU, paper section 3.2), then

- the *what* decoder: spatial attention over the canvas state and attention over the words,
  queried by the previous object, predict the next object or end-of-scene (section 3.3);
- the *where* decoder: attention over the words queried by the chosen object and the what
  context, tiled over the canvas grid and read by a convolutional head that gives, per grid
  cell, the location logit and every attribute's logits (section 3.4).

The module is a set of methods (`encode_text`, `encode_canvas`, `update_canvas`, `what`,
`where`) so that a pipeline can run them step by step inside a compiled decoder; `__call__` runs
them all under teacher forcing.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis where ``mask`` is True (all-False rows give zeros)."""
    scores = jnp.where(mask, scores, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.where(mask, weights, 0.0)


class Attention(nn.Module):
    """Luong's "general" attention: ``softmax(q W k)`` over the keys, and the weighted values.

    ``query`` ``[..., Q]``, ``keys`` ``[..., N, K]``, ``mask`` ``[..., N]`` (broadcastable);
    returns ``(context [..., K], weights [..., N])``.
    """

    @nn.compact
    def __call__(self, query, keys, mask):
        q = nn.Dense(keys.shape[-1], use_bias=False, name="query")(query)
        scores = jnp.einsum("...k,...nk->...n", q, keys)
        weights = masked_softmax(scores, mask)
        return jnp.einsum("...n,...nk->...k", weights, keys), weights


class BiGRUEncoder(nn.Module):
    """Word embeddings read by a bidirectional GRU (paper section 3.1).

    Returns ``[B, L, 2 * hidden]`` word features (zero at padding) and the mask ``[B, L]``.
    """

    vocab_size: int
    embed_dim: int = 64
    hidden: int = 64

    @nn.compact
    def __call__(self, words):
        mask = words > 0
        x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(words)
        lengths = mask.sum(-1)
        bi = nn.Bidirectional(
            nn.RNN(nn.GRUCell(self.hidden), name="forward"),
            nn.RNN(nn.GRUCell(self.hidden), name="backward"),
        )
        feats = bi(x, seq_lengths=lengths)
        return feats * mask[..., None], mask


class TransformerTextEncoder(nn.Module):
    """The option beside the paper's GRU: a small bidirectional transformer encoder."""

    vocab_size: int
    max_len: int
    width: int = 128
    depth: int = 2
    num_heads: int = 4

    @nn.compact
    def __call__(self, words):
        mask = words > 0
        x = nn.Embed(self.vocab_size, self.width, name="embed")(words)
        pos = self.param("pos", nn.initializers.normal(0.02), (self.max_len, self.width))
        x = x + pos[: words.shape[1]]
        attn_mask = mask[:, None, None, :]
        for i in range(self.depth):
            h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
            h = nn.MultiHeadDotProductAttention(self.num_heads, name=f"attn_{i}")(
                h, h, mask=attn_mask
            )
            x = x + h
            h = nn.LayerNorm(name=f"ln_mlp_{i}")(x)
            h = nn.Dense(4 * self.width, name=f"mlp_in_{i}")(h)
            x = x + nn.Dense(self.width, name=f"mlp_out_{i}")(nn.gelu(h))
        x = nn.LayerNorm(name="ln_out")(x)
        return x * mask[..., None], mask


class ConvGRUCell(nn.Module):
    """A GRU whose gates are 3x3 convolutions over ``[B, G, G, C]`` grids (Ballas et al. 2016)."""

    features: int

    @nn.compact
    def __call__(self, h, x):
        hx = jnp.concatenate([h, x], -1)
        gates = nn.sigmoid(nn.Conv(2 * self.features, (3, 3), name="gates")(hx))
        r, z = jnp.split(gates, 2, axis=-1)
        cand = jnp.tanh(
            nn.Conv(self.features, (3, 3), name="candidate")(jnp.concatenate([r * h, x], -1))
        )
        return (1 - z) * h + z * cand


class Text2Scene(nn.Module):
    """The Text2Scene network.

    Attributes:
      vocab_size: words (0 is padding).
      num_objects: object classes; the what head has ``num_objects + 1`` outputs (the last is
        end-of-scene) and the previous-object input has one more (start).
      attributes: classes per attribute head, in order (e.g. size 3, flip 2, pose 3, expr 3).
      grid: the location grid side G; the canvas encoder maps the image to ``[G, G, C]``.
      image_size: canvas side S (a multiple of G).
      width: channels of the canvas state; hidden: text features are ``2 * hidden`` wide.
      text_encoder: "gru" (paper) or "transformer".
      canvas: False gives the "blind" ablation: the canvas image is replaced by the background
        (zeros), so the model never sees what it drew.
      spatial_attention: False replaces the what decoder's spatial attention by average pooling.
      what_attention, where_attention: False replaces that decoder's attention over the words by
        their average (the paper's ablations without text attention).
      where_dilations: the dilation of each 3x3 layer of the where head (the first is 1): (1, 1)
        sees a cell's 5x5 neighbourhood of the canvas state, (1, 2, 4, 8) the whole 16x16 grid,
        so that "left of what I drew" can be read at cells far from it.
      max_words: longest description (transformer positions).
    """

    vocab_size: int
    num_objects: int
    attributes: Sequence[int]
    grid: int = 16
    image_size: int = 64
    width: int = 64
    hidden: int = 64
    embed_dim: int = 64
    text_encoder: str = "gru"
    canvas: bool = True
    spatial_attention: bool = True
    what_attention: bool = True
    where_attention: bool = True
    where_dilations: Sequence[int] = (1, 1)
    max_words: int = 72

    def setup(self):
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} is not a multiple of grid {self.grid}")
        if self.text_encoder == "gru":
            self.text = BiGRUEncoder(self.vocab_size, self.embed_dim, self.hidden)
        elif self.text_encoder == "transformer":
            self.text = TransformerTextEncoder(self.vocab_size, self.max_words, 2 * self.hidden)
        else:
            raise ValueError(
                f"text_encoder must be 'gru' or 'transformer', got {self.text_encoder!r}"
            )
        levels = (self.image_size // self.grid).bit_length() - 1
        self.canvas_convs = [
            nn.Conv(
                self.width // 2 if i < levels - 1 else self.width,
                (3, 3),
                strides=2,
                name=f"canvas_down_{i}",
            )
            for i in range(levels)
        ]
        self.canvas_out = nn.Conv(self.width, (3, 3), name="canvas_out")
        self.gru = ConvGRUCell(self.width)
        # Objects embedded for the queries: num_objects, end, start.
        self.object_embed = nn.Embed(self.num_objects + 2, self.embed_dim)
        self.spatial_attn = Attention()
        self.what_text_attn = Attention()
        self.what_mlp = nn.Dense(2 * self.hidden)
        self.what_out = nn.Dense(self.num_objects + 1)
        self.where_text_attn = Attention()
        if len(self.where_dilations) < 2 or self.where_dilations[0] != 1:
            raise ValueError(
                "where_dilations needs at least two 3x3 layers, the first undilated, got "
                f"{tuple(self.where_dilations)}"
            )
        self.where_convs = [nn.Conv(2 * self.width, (3, 3))] + [
            nn.Conv(self.width, (3, 3), kernel_dilation=d) for d in self.where_dilations[1:]
        ]
        self.where_query = nn.Dense(2 * self.width)
        self.where_out = nn.Conv(1 + sum(self.attributes), (1, 1))

    # -- the parts ----------------------------------------------------------------------------
    def encode_text(self, words):
        """``words`` int ``[B, L]`` -> (features ``[B, L, D]``, mask ``[B, L]``)."""
        return self.text(words)

    def encode_canvas(self, images):
        """uint8 ``[..., S, S, 3]`` canvases -> features ``[..., G, G, C]``."""
        lead = images.shape[:-3]
        x = images.reshape((-1, *images.shape[-3:])).astype(jnp.float32) / 127.5 - 1.0
        if not self.canvas:
            x = jnp.zeros_like(x)
        for conv in self.canvas_convs:
            x = nn.relu(conv(x))
        x = nn.relu(self.canvas_out(x))
        return x.reshape((*lead, *x.shape[1:]))

    def initial_state(self, batch: int):
        return jnp.zeros((batch, self.grid, self.grid, self.width))

    def update_canvas(self, state, features):
        """One convolutional GRU step: ``[B, G, G, C]`` state and canvas features."""
        return self.gru(state, features)

    def what(self, state, previous, text, text_mask):
        """Next-object logits ``[..., num_objects + 1]`` and the text attention ``[..., L]``.

        Args:
          state: canvas state ``[..., G, G, C]``; previous: the previous object id ``[...]``
            (``num_objects + 1`` = start); text, text_mask: `encode_text`'s outputs, broadcast
            against the leading axes.
        """
        prev = self.object_embed(previous)
        cells = state.reshape((*state.shape[:-3], -1, state.shape[-1]))
        if self.spatial_attention:
            ones = jnp.ones(cells.shape[:-1], bool)
            pooled, _ = self.spatial_attn(prev, cells, ones)
        else:
            pooled = cells.mean(-2)
        context, attn = self._text_context(
            self.what_text_attn,
            self.what_attention,
            jnp.concatenate([pooled, prev], -1),
            text,
            text_mask,
        )
        h = nn.relu(self.what_mlp(jnp.concatenate([pooled, context, prev], -1)))
        return self.what_out(h), context, attn

    @staticmethod
    def _text_context(attention, enabled, query, text, text_mask):
        if enabled:
            return attention(query, text, text_mask)
        # Without attention: the words' average, i.e. uniform weights over the real words.
        weights = text_mask / jnp.maximum(text_mask.sum(-1, keepdims=True), 1)
        weights = jnp.broadcast_to(weights, (*query.shape[:-1], text_mask.shape[-1]))
        return jnp.einsum("...n,...nk->...k", weights, text), weights

    def where(self, state, obj, what_context, text, text_mask):
        """Per-cell location logits ``[..., G * G]`` and attribute logits (a list of
        ``[..., G * G, k]``), and the where text attention ``[..., L]``."""
        emb = self.object_embed(obj)
        context, attn = self._text_context(
            self.where_text_attn,
            self.where_attention,
            jnp.concatenate([what_context, emb], -1),
            text,
            text_mask,
        )
        query = jnp.concatenate([context, emb], -1)
        # A convolution over [state ; query tiled over the grid] is the state's convolution
        # plus the query's projection added at every cell (up to the zero padding at the
        # borders); adding it saves the convolution over the tiled channels.
        lead = state.shape[:-3]
        x = self.where_convs[0](state.reshape((-1, *state.shape[-3:])))
        x = x + self.where_query(query).reshape((-1, 1, 1, x.shape[-1]))
        x = nn.relu(x)
        for conv in self.where_convs[1:]:
            x = nn.relu(conv(x))
        out = self.where_out(x).reshape((*lead, self.grid * self.grid, -1))
        splits = np.cumsum([1, *self.attributes])[:-1].tolist()
        pieces = jnp.split(out, splits, axis=-1)
        return pieces[0][..., 0], pieces[1:], attn

    # -- teacher forcing ----------------------------------------------------------------------
    def __call__(self, words, canvases, previous, objects):
        """All steps at once under teacher forcing.

        Args:
          words: int ``[B, L]``.
          canvases: uint8 ``[B, T, S, S, 3]``, the ground-truth canvas before each step.
          previous: int ``[B, T]`` the object before each step (start first).
          objects: int ``[B, T]`` the true object of each step (fed to the where decoder).

        Returns:
          dict with "what" ``[B, T, O + 1]``, "location" ``[B, T, G * G]``, "attributes" (list of
          ``[B, T, G * G, k]``), "what_attention" and "where_attention" ``[B, T, L]``.
        """
        text, mask = self.encode_text(words)
        feats = self.encode_canvas(canvases)
        state = self.initial_state(words.shape[0])
        states = []
        for t in range(canvases.shape[1]):
            state = self.update_canvas(state, feats[:, t])
            states.append(state)
        states = jnp.stack(states, 1)
        t = canvases.shape[1]
        text_t = jnp.broadcast_to(text[:, None], (text.shape[0], t, *text.shape[1:]))
        mask_t = jnp.broadcast_to(mask[:, None], (mask.shape[0], t, mask.shape[1]))
        what_logits, what_context, what_attn = self.what(states, previous, text_t, mask_t)
        location, attrs, where_attn = self.where(states, objects, what_context, text_t, mask_t)
        return {
            "what": what_logits,
            "location": location,
            "attributes": attrs,
            "what_attention": what_attn,
            "where_attention": where_attn,
        }
