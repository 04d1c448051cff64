"""unCLIP's diffusion prior (Ramesh et al. 2022, section 2.1): a causal transformer that denoises
a CLIP image embedding given the caption.

The stream is ``[caption token states (L) ; CLIP text embedding ; timestep embedding ; noised
image embedding ; query]``; the output at the final query token predicts the clean image
embedding (the paper trains it with an MSE on that prediction, not on the noise).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.layers import Dtype, TransformerBlock, dense, timestep_embedding

#: Tokens after the caption: text embedding, timestep, noised image embedding, query.
EXTRA_TOKENS = 4


class DiffusionPrior(nn.Module):
    """Predicts the clean CLIP image embedding ``[B, D]`` from a noised one.

    Attributes:
      embed_dim: D, the CLIP embedding width (input and output).
      width: the transformer's width.
      depth: pre-LayerNorm blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width over ``width``.
      text_len: caption positions L (learned position embeddings cover the whole stream).
      dtype: compute dtype.
    """

    embed_dim: int
    width: int = 256
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    text_len: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        caption: jax.Array,
        caption_mask: jax.Array,
        text_emb: jax.Array,
        t: jax.Array,
        x_t: jax.Array,
    ) -> jax.Array:
        """Applies the prior.

        Args:
          caption: the caption's token states ``[B, L, Wt]`` (a frozen CLIP text encoder's).
          caption_mask: bool ``[B, L]``, False at padding.
          text_emb: the caption's CLIP text embedding ``[B, D]``.
          t: timesteps ``[B]``.
          x_t: the noised image embedding ``[B, D]``.

        Returns:
          The predicted clean image embedding ``[B, D]`` (float32).
        """
        b, length = caption_mask.shape
        if length != self.text_len:
            raise ValueError(f"caption has {length} positions, the prior {self.text_len}.")
        if x_t.shape[-1] != self.embed_dim or text_emb.shape[-1] != self.embed_dim:
            raise ValueError(
                f"embeddings must have width {self.embed_dim}, got text {text_emb.shape[-1]} "
                f"and image {x_t.shape[-1]}."
            )
        w = self.width
        time = timestep_embedding(t, w).astype(self.dtype)
        time = dense(w, self.dtype, name="time_1")(
            nn.silu(dense(w, self.dtype, name="time_0")(time))
        )
        query = self.param("query", nn.initializers.normal(0.02), (w,))
        stream = jnp.concatenate(
            [
                dense(w, self.dtype, name="caption_proj")(caption.astype(self.dtype)),
                dense(w, self.dtype, name="text_proj")(text_emb.astype(self.dtype))[:, None],
                time[:, None],
                dense(w, self.dtype, name="image_proj")(x_t.astype(self.dtype))[:, None],
                jnp.broadcast_to(query.astype(self.dtype), (b, 1, w)),
            ],
            axis=1,
        )
        n = length + EXTRA_TOKENS
        pos = self.param("pos_emb", nn.initializers.normal(0.02), (n, w))
        h = stream + pos.astype(self.dtype)[None]
        keys = jnp.concatenate([caption_mask, jnp.ones((b, EXTRA_TOKENS), bool)], axis=1)
        mask = keys[:, None, :] & jnp.tril(jnp.ones((n, n), bool))[None]
        for i in range(self.depth):
            h = TransformerBlock(
                self.num_heads, self.mlp_ratio, 0.0, self.dtype, name=f"block_{i}"
            )(h, mask)
        out = nn.LayerNorm(dtype=self.dtype, name="ln_out")(h[:, -1])
        return dense(self.embed_dim, self.dtype, name="out")(out).astype(jnp.float32)
