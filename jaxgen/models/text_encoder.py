"""Byte-level transformer text encoder (pre-LayerNorm, padding-masked, optionally causal)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.data.tokenizer import BOS as BOS_ID
from jaxgen.data.tokenizer import EOS as EOS_ID
from jaxgen.data.tokenizer import PAD as PAD_ID
from jaxgen.data.tokenizer import VOCAB_SIZE as BYTE_VOCAB_SIZE
from jaxgen.models.layers import Dtype, TransformerBlock

__all__ = ["BOS_ID", "BYTE_VOCAB_SIZE", "EOS_ID", "PAD_ID", "TextEncoder", "masked_mean"]


def masked_mean(seq: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``seq`` ``[B, L, W]`` over the positions where ``mask`` ``[B, L]`` is True, in
    float32 and cast back to ``seq``'s dtype; a row with no True position gives zeros."""
    m = mask.astype(jnp.float32)[:, :, None]
    count = jnp.maximum(m.sum(axis=1), 1.0)
    return ((seq.astype(jnp.float32) * m).sum(axis=1) / count).astype(seq.dtype)


class TextEncoder(nn.Module):
    """Transformer encoder over byte tokens (PAD=0, BOS=1, EOS=2, byte b -> b + 3).

    Learned token and position embeddings, ``depth`` pre-LN blocks whose attention ignores PAD keys,
    and a final LayerNorm. The pooled embedding is the masked mean of the final sequence over the
    non-PAD positions (BOS, the bytes and EOS). The mean was chosen over the EOS state because it
    needs no search for the EOS position, is defined for any row with at least one non-PAD token
    (an empty caption ``[BOS, EOS, PAD...]`` pools its two tokens), and is exactly invariant to
    trailing PAD tokens. A row that is entirely PAD pools to zeros.

    With ``causal`` each token attends to itself and the tokens before it (as GPT and CLIP's
    text transformer). That makes word order part of every state: the bytes of "left of" in "a
    red circle left of a blue square" have seen "red circle" and not "blue square", so the pooled
    mean tells that caption from "a blue square left of a red circle". With bidirectional
    attention and mean pooling the two came out as one bag of words (measured with CLIP on
    shapes: zero-shot relation accuracy stuck at 0.50 of 4, the axis right and the direction a
    coin flip). No parameter changes shape, so weights cannot tell which attention they were
    trained with: ``pipelines.pretrained.clip_params`` checks the setting.

    Attributes:
      vocab_size: token vocabulary size (259 for bytes + PAD/BOS/EOS).
      max_len: the longest token sequence (number of position embeddings).
      width: model width W.
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width over W.
      dropout: dropout rate (embedding, attention output, MLP output).
      causal: attend only to earlier tokens (and oneself).
      dtype: compute dtype; parameters stay float32.
    """

    vocab_size: int = BYTE_VOCAB_SIZE
    max_len: int = 64
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, tokens: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encodes a batch of token rows.

        Args:
          tokens: int32 ``[B, L]`` with ``L <= max_len``, PAD (0) after EOS.
          train: enables dropout (needs a ``"dropout"`` rng).

        Returns:
          seq: ``[B, L, W]`` in ``dtype``, the final-LayerNorm token states.
          pooled: ``[B, W]`` in ``dtype``, masked mean of ``seq`` over non-PAD tokens.
          mask: bool ``[B, L]``, True where ``tokens != PAD``.
        """
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"token length {length} exceeds max_len {self.max_len}")
        mask = tokens != PAD_ID
        emb_init = nn.initializers.normal(0.02)
        x = nn.Embed(self.vocab_size, self.width, embedding_init=emb_init, name="token_emb")(tokens)
        pos = self.param("pos_emb", emb_init, (self.max_len, self.width), jnp.float32)
        x = (x + pos[None, :length]).astype(self.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        attn_mask = mask
        if self.causal:
            attn_mask = mask[:, None, :] & jnp.tril(jnp.ones((length, length), bool))[None]
        for i in range(self.depth):
            x = TransformerBlock(
                self.num_heads, self.mlp_ratio, self.dropout, self.dtype, name=f"block_{i}"
            )(x, attn_mask, train)
        seq = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
        pooled = masked_mean(seq, mask)
        return seq, pooled, mask
