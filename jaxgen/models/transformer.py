"""DALL-E's transformer over one stream ``[text tokens ; image tokens]`` (Ramesh et al. 2021),
autoregressive with a key/value cache, or bidirectional over masked image tokens (MaskGIT, Chang
et al. 2022).

The text part is the byte tokens of ``jaxgen.data.tokenizer`` (PAD = 0 after EOS); each PAD
becomes a learned padding embedding of its own position, as DALL-E pads its captions, so a caption
of only PADs ("no caption", the unconditional stream of classifier-free guidance) is an input
like any other. Text positions are learned; image positions are a row plus a column embedding
(axial). Pre-LayerNorm blocks (``jaxgen.models.layers.TransformerBlock``), a final LayerNorm, and
separate text and image output heads; logits are float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.data.tokenizer import PAD as PAD_ID
from jaxgen.data.tokenizer import VOCAB_SIZE as BYTE_VOCAB_SIZE
from jaxgen.models.layers import Dtype, TransformerBlock

KVCache = list[tuple[jax.Array, jax.Array]]


class TokenTransformer(nn.Module):
    """The stream ``[text (text_len) ; image (grid * grid)]``.

    Autoregressive (``causal``): position ``p`` predicts token ``p + 1``; the input is the stream
    without its last image token, so ``__call__`` returns text logits for text tokens 1..L-1 and
    image logits for image tokens 0..N-1. Bidirectional (not ``causal``, MaskGIT): the input is
    the whole stream with masked image tokens set to ``mask_id`` (= ``image_vocab``), and the
    image logits at each image position predict that position's token.

    Attributes:
      image_vocab: codes of the image tokenizer K.
      grid: image tokens per side (N = grid * grid tokens).
      text_len: text positions L.
      text_vocab: text token vocabulary (bytes + PAD/BOS/EOS).
      width, depth, num_heads, mlp_ratio, dropout: the transformer.
      causal: autoregressive (True) or bidirectional (False).
      dtype: compute dtype; parameters and logits stay float32.
    """

    image_vocab: int
    grid: int
    text_len: int = 64
    text_vocab: int = BYTE_VOCAB_SIZE
    width: int = 256
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = True
    dtype: Dtype = jnp.float32

    @property
    def num_image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def mask_id(self) -> int:
        """The input id of a masked image token (bidirectional only)."""
        return self.image_vocab

    def setup(self):
        init = nn.initializers.normal(0.02)
        self.text_emb = nn.Embed(self.text_vocab, self.width, embedding_init=init)
        self.pad_emb = self.param("pad_emb", init, (self.text_len, self.width))
        self.text_pos = self.param("text_pos", init, (self.text_len, self.width))
        extra = 0 if self.causal else 1  # the mask token
        self.image_emb = nn.Embed(self.image_vocab + extra, self.width, embedding_init=init)
        self.row_pos = self.param("row_pos", init, (self.grid, self.width))
        self.col_pos = self.param("col_pos", init, (self.grid, self.width))
        self.blocks = [
            TransformerBlock(self.num_heads, self.mlp_ratio, self.dropout, self.dtype)
            for _ in range(self.depth)
        ]
        self.ln_final = nn.LayerNorm(dtype=self.dtype)
        self.text_head = nn.Dense(self.text_vocab, dtype=self.dtype)
        self.image_head = nn.Dense(self.image_vocab, dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    # -- embeddings ------------------------------------------------------------------------
    def embed_text(self, text: jax.Array) -> jax.Array:
        """int32 ``[B, L]`` -> ``[B, L, W]``: PAD positions take their own padding embedding."""
        if text.shape[1] != self.text_len:
            raise ValueError(f"text has {text.shape[1]} tokens, the model {self.text_len}.")
        x = jnp.where((text == PAD_ID)[..., None], self.pad_emb[None], self.text_emb(text))
        return (x + self.text_pos[None]).astype(self.dtype)

    def embed_image(self, tokens: jax.Array, start: jax.Array | int = 0) -> jax.Array:
        """int32 ``[B, n]`` image tokens at positions ``start..start+n-1`` -> ``[B, n, W]``."""
        pos = start + jnp.arange(tokens.shape[1])
        where = self.row_pos[pos // self.grid] + self.col_pos[pos % self.grid]
        return (self.image_emb(tokens) + where[None]).astype(self.dtype)

    # -- the whole stream (training) ---------------------------------------------------------
    def __call__(self, text: jax.Array, image: jax.Array, train: bool = False):
        """Logits over the stream.

        Args:
          text: int32 ``[B, L]`` byte tokens.
          image: int32 ``[B, N]`` image tokens in raster order (bidirectional: ``mask_id`` where
            masked).
          train: enables dropout.

        Returns:
          ``(text_logits [B, L-1, text_vocab], image_logits [B, N, image_vocab])``, float32;
          text_logits is None for the bidirectional model (the caption is only read).
        """
        n = self.num_image_tokens
        if image.shape[1] != n:
            raise ValueError(f"image has {image.shape[1]} tokens, the model {n}.")
        if self.causal:
            image = image[:, :-1]
        x = jnp.concatenate([self.embed_text(text), self.embed_image(image)], axis=1)
        x = self.drop(x, deterministic=not train)
        length = x.shape[1]
        mask = self.attention_mask(jnp.arange(length), jnp.arange(length))
        mask = jnp.broadcast_to(mask, (x.shape[0], length, length))
        for block in self.blocks:
            x = block(x, mask, train)
        h = self.ln_final(x)
        L = self.text_len
        if not self.causal:
            return None, self.image_head(h[:, L:]).astype(jnp.float32)
        text_logits = self.text_head(h[:, : L - 1]).astype(jnp.float32)
        return text_logits, self.image_head(h[:, L - 1 :]).astype(jnp.float32)

    def attention_mask(self, query: jax.Array, key: jax.Array) -> jax.Array:
        """bool ``[Q, K]``: which stream positions ``key`` each position in ``query`` reads.

        Autoregressive: itself and everything before it. Bidirectional: the caption reads only
        the caption (so its keys and values are computed once per decode, not once per MaskGIT
        step); an image token reads everything."""
        if self.causal:
            return key[None, :] <= query[:, None]
        return (key[None, :] < self.text_len) | (query[:, None] >= self.text_len)

    # -- decoding with a key/value cache -----------------------------------------------------
    def init_cache(self, batch: int) -> KVCache:
        """Empty keys and values for the whole stream, one pair per block."""
        heads, dim = self.num_heads, self.width // self.num_heads
        shape = (batch, self.text_len + self.num_image_tokens, heads, dim)
        return [(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))] * self.depth

    def _cached(self, x: jax.Array, cache: KVCache, start) -> tuple[jax.Array, KVCache]:
        """Runs stream positions ``start..start+len-1`` through the blocks with the cache; a
        position reads the cached ones ``attention_mask`` allows (unwritten ones are never
        allowed: they lie after it, or, bidirectionally, are image positions written with it)."""
        b, length, _ = x.shape
        size = cache[0][0].shape[1]
        mask = self.attention_mask(start + jnp.arange(length), jnp.arange(size))
        mask = jnp.broadcast_to(mask, (b, length, size))
        new = []
        for block, kv in zip(self.blocks, cache, strict=True):
            x, kv = block(x, mask, cache=kv, index=start)
            new.append(kv)
        return self.ln_final(x), new

    def prefill(self, text: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Reads the caption into the cache; returns the logits of image token 0 ``[B, K]``
        (autoregressive; MaskGIT ignores them)."""
        h, cache = self._cached(self.embed_text(text), cache, 0)
        return self.image_head(h[:, -1]).astype(jnp.float32), cache

    def decode_step(self, token: jax.Array, j, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Feeds image token ``j`` (int32 ``[B]``); returns the logits of image token ``j + 1``."""
        x = self.embed_image(token[:, None], j)
        h, cache = self._cached(x, cache, self.text_len + j)
        return self.image_head(h[:, -1]).astype(jnp.float32), cache

    def masked_logits(self, image: jax.Array, cache: KVCache) -> jax.Array:
        """Bidirectional: logits ``[B, N, K]`` of every image position for tokens ``[B, N]``
        (``mask_id`` where masked), reading the caption from a ``prefill``-ed cache."""
        h, _ = self._cached(self.embed_image(image), cache, self.text_len)
        return self.image_head(h).astype(jnp.float32)
