"""DDPM / ADM UNet with optional byte-text conditioning.

The layout follows the DDPM reference UNet (Ho et al. 2020, ``diffusion_tf/models/unet.py``):
conv_in, per level ``num_res_blocks`` residual blocks (+ self-attention at ``attn_resolutions``)
and a downsample, a middle res-attn-res, an up path with ``num_res_blocks + 1`` blocks per level
that concatenate the stored skips, and GroupNorm-SiLU-conv out. With ``film=False`` and no text
encoder the parameter count equals the reference CIFAR-10 model's (35,746,307).

ADM additions (Dhariwal & Nichol 2021): ``film=True`` scale-shift norm in the res blocks,
multi-head attention, and optional ``resblock_updown``. Text conditioning (GLIDE-style): the
UNet owns a ``TextEncoder``; its pooled embedding is projected and added to the time embedding,
and cross-attention blocks at ``cross_attn_resolutions`` attend from pixels to the token states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.layers import (
    Dtype,
    GroupNorm,
    PartsDense,
    attention,
    avg_pool2,
    conv3x3,
    dense,
    timestep_embedding,
    upsample_nearest,
)
from jaxgen.models.text_encoder import TextEncoder


class ResBlock(nn.Module):
    """Residual block: GN, SiLU, conv3x3, + emb, GN, SiLU, dropout, zero-init conv3x3, + skip.

    With ``film=False`` the embedding projection is added to the activation after the first conv
    (DDPM). With ``film=True`` it yields ``(scale, shift)`` applied as ``GN(h) * (1 + scale) +
    shift`` in the second norm (ADM). ``resample`` moves ADM's up/down sampling inside the block
    (nearest / 2x2 average, applied to both branches after the first norm).

    Attributes:
      out_ch: output channels.
      dropout: dropout rate before the last conv.
      film: scale-shift conditioning instead of an additive embedding.
      norm_groups: requested GroupNorm groups.
      resample: None, "up" or "down".
      dtype: compute dtype.
    """

    out_ch: int
    dropout: float = 0.0
    film: bool = False
    norm_groups: int = 32
    resample: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array | None, train: bool = False) -> jax.Array:
        """Applies the block.

        Args:
          x: ``[B, H, W, Cin]``, or a tuple of parts ``[B, H, W, Cin_i]`` read as their
            concatenation along the channels (the up path's input and skip) without writing it.
          emb: ``[B, E]`` conditioning embedding (already SiLU-activated by the caller), or
            None for an unconditional block.
          train: enables dropout.

        Returns:
          ``[B, H', W', out_ch]`` with ``H' = 2H``, ``H/2`` or ``H`` depending on ``resample``.
        """
        parts = isinstance(x, (tuple, list))
        h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm1")(x)
        h = tuple(map(nn.silu, h)) if parts else nn.silu(h)
        if self.resample:
            if parts:
                raise ValueError("a resampling ResBlock takes one input, not parts")
            resample = upsample_nearest if self.resample == "up" else avg_pool2
            h, x = resample(h), resample(x)
        h = conv3x3(self.out_ch, self.dtype, name="conv1")(h)
        if emb is None:  # unconditional (the autoencoders)
            h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm2")(h)
        elif self.film:
            e = dense(2 * self.out_ch, self.dtype, name="emb_proj")(emb)
            scale, shift = jnp.split(e, 2, axis=-1)
            h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm2")(h, (scale, shift))
        else:
            e = dense(self.out_ch, self.dtype, name="emb_proj")(emb)
            h = h + e[:, None, None, :]
            h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv3x3(self.out_ch, self.dtype, zero=True, name="conv2")(h)
        if parts and sum(p.shape[-1] for p in x) == self.out_ch:
            x = jnp.concatenate(x, axis=-1)  # the identity skip: nothing to save
        elif parts:  # a dense layer on concat(a, b) is one on a plus one on b (as the convs)
            x = PartsDense(self.out_ch, self.dtype, name="skip")(x)
        elif x.shape[-1] != self.out_ch:
            x = dense(self.out_ch, self.dtype, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Self- or cross-attention with a residual: ``x + proj(MHA(GN(x), context))``.

    Self-attention (``context is None``) uses one fused q,k,v 1x1 projection (same parameter count
    as DDPM's three NIN layers); cross-attention projects q from the pixels and k,v from the text
    states. The output projection is zero-initialised, so the block starts as the identity.

    Attributes:
      num_heads: attention heads (channels must divide by it).
      norm_groups: requested GroupNorm groups.
      dtype: compute dtype.
    """

    num_heads: int = 1
    norm_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Applies attention.

        Args:
          x: ``[B, H, W, C]``.
          context: optional ``[B, L, D]`` text states for cross-attention.
          context_mask: optional bool ``[B, L]``, False for PAD tokens.

        Returns:
          ``[B, H, W, C]``.
        """
        b, hgt, wid, c = x.shape
        assert c % self.num_heads == 0, (c, self.num_heads)
        nh, hd = self.num_heads, c // self.num_heads
        # NHWC -> [B, HW, C] is a free (layout-preserving) reshape.
        h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm")(x).reshape(b, hgt * wid, c)
        if context is None:
            qkv = dense(3 * c, self.dtype, name="qkv")(h).reshape(b, hgt * wid, 3, nh, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = dense(c, self.dtype, name="q")(h).reshape(b, hgt * wid, nh, hd)
            kv = dense(2 * c, self.dtype, name="kv")(context.astype(self.dtype))
            kv = kv.reshape(b, context.shape[1], 2, nh, hd)
            k, v = kv[:, :, 0], kv[:, :, 1]
        h = attention(q, k, v, context_mask).reshape(b, hgt * wid, c)
        h = dense(c, self.dtype, zero=True, name="proj_out")(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """Epsilon-prediction UNet (DDPM layout, ADM options, optional text conditioning).

    Attributes:
      ch: base channels; the time embedding has ``4 * ch``.
      ch_mults: channel multiplier per resolution level.
      num_res_blocks: res blocks per level on the down path (``+1`` on the up path).
      attn_resolutions: feature-map sizes (pixels) that get a self-attention block after each res
        block. The middle always has self-attention (as in DDPM).
      cross_attn_resolutions: feature-map sizes that also get a cross-attention block to the text
        (after the self-attention). The middle gets one whenever the model is text-conditioned
        and this tuple is non-empty. Ignored without a text encoder.
      num_heads: attention heads (DDPM used 1; the parameter count does not depend on it).
      dropout: dropout rate in the res blocks.
      out_ch: output channels.
      norm_groups: GroupNorm groups, reduced to the largest divisor of the channel count.
      dtype: compute dtype; parameters stay float32.
      text_encoder: a ``TextEncoder`` (which keeps its own ``dtype``), a mapping of its fields
        (whose ``dtype`` defaults to the UNet's), or None for an unconditional model. The
        encoder's parameters live under ``params["text_encoder"]``.
      resblock_updown: resample inside res blocks (ADM) instead of separate conv layers.
      film: ADM scale-shift norm (True) or DDPM additive embedding (False).
      patch_size: fold ``p x p`` pixel patches into channels before the first conv and unfold
        them after the last (space-to-depth, as in "simple diffusion", Hoogeboom et al. 2023):
        the UNet then runs at ``H / p``, cutting the cost of the high-resolution levels by
        ``p ** 2`` while every output pixel keeps its own output channel. 1 = off.
      cond_tokens: for a conditioning vector ``cond`` (unCLIP's CLIP image embedding): it is
        projected and added to the time embedding, and projected into this many extra context
        tokens that cross-attention reads next to the caption's (unCLIP after GLIDE). The
        tokens have the text encoder's width, or ``4 * ch`` without one.
    """

    ch: int = 64
    ch_mults: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (8,)
    cross_attn_resolutions: Sequence[int] = (16, 8)
    num_heads: int = 4
    dropout: float = 0.0
    out_ch: int = 3
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    text_encoder: TextEncoder | Mapping[str, Any] | None = None
    resblock_updown: bool = False
    film: bool = True
    patch_size: int = 1
    cond_tokens: int = 4

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        tokens: jax.Array | None = None,
        train: bool = False,
        cond: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the noise (or whatever the target is) for a noisy batch.

        Args:
          x: noisy images ``[B, H, W, C]`` (H, W divisible by ``2 ** (len(ch_mults) - 1)``).
          t: timesteps ``[B]``, int or float.
          tokens: int32 ``[B, L]`` byte tokens (PAD=0), required iff the model has a text
            encoder. Use an empty caption ``[BOS, EOS, PAD, ...]`` for the unconditional branch
            of classifier-free guidance.
          train: enables dropout (needs a ``"dropout"`` rng).
          cond: optional float ``[B, D]`` conditioning vector (see ``cond_tokens``); zeros
            stand for "none" in classifier-free guidance.

        Returns:
          ``[B, H, W, out_ch]`` in ``dtype``.
        """
        res_kw = dict(
            dropout=self.dropout,
            film=self.film,
            norm_groups=self.norm_groups,
            dtype=self.dtype,
        )
        attn_kw = dict(num_heads=self.num_heads, norm_groups=self.norm_groups, dtype=self.dtype)
        emb_dim = 4 * self.ch

        # Time embedding: sinusoid(ch) -> Dense(4ch) -> SiLU -> Dense(4ch).
        emb = timestep_embedding(t, self.ch).astype(self.dtype)
        emb = dense(emb_dim, self.dtype, name="temb_0")(emb)
        emb = dense(emb_dim, self.dtype, name="temb_1")(nn.silu(emb))

        context = context_mask = None
        if self.text_encoder is not None:
            if tokens is None:
                raise ValueError("this UNet is text-conditioned: pass tokens (empty caption ok)")
            encoder = self.text_encoder
            if isinstance(encoder, Mapping):
                encoder = TextEncoder(**{"dtype": self.dtype, **encoder}, name="text_encoder")
            context, pooled, context_mask = encoder(tokens, train=train)
            emb = emb + dense(emb_dim, self.dtype, name="text_proj")(pooled)
        if cond is not None:
            cond = cond.astype(self.dtype)
            emb = emb + dense(emb_dim, self.dtype, name="cond_proj")(cond)
            if self.cond_tokens:
                width = emb_dim if context is None else context.shape[-1]
                extra = dense(self.cond_tokens * width, self.dtype, name="cond_tokens")(cond)
                extra = extra.reshape(cond.shape[0], self.cond_tokens, width)
                extra_mask = jnp.ones(extra.shape[:2], bool)
                if context is None:
                    context, context_mask = extra, extra_mask
                else:
                    context = jnp.concatenate([context, extra.astype(context.dtype)], axis=1)
                    context_mask = jnp.concatenate([context_mask, extra_mask], axis=1)
        cross = set(self.cross_attn_resolutions) if context is not None else set()
        # Every res block applies SiLU then its own projection; compute the SiLU once.
        emb = nn.silu(emb)

        def attend(h: jax.Array, name: str, middle: bool = False) -> jax.Array:
            res = h.shape[1]
            if middle or res in self.attn_resolutions:
                h = AttnBlock(**attn_kw, name=f"{name}_attn")(h)
            if (middle and cross) or res in cross:
                h = AttnBlock(**attn_kw, name=f"{name}_xattn")(h, context, context_mask)
            return h

        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"image size {x.shape[1:3]} is not divisible by patch_size={p}")
        h = space_to_depth(x.astype(self.dtype), p)
        h = conv3x3(self.ch, self.dtype, name="conv_in")(h)
        skips = [h]
        for level, mult in enumerate(self.ch_mults):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, **res_kw, name=f"down_{level}_res_{i}")(h, emb, train)
                h = attend(h, f"down_{level}_{i}")
                skips.append(h)
            if level != len(self.ch_mults) - 1:
                if self.resblock_updown:
                    h = ResBlock(h.shape[-1], **res_kw, resample="down", name=f"down_{level}_ds")(
                        h, emb, train
                    )
                else:
                    h = conv3x3(h.shape[-1], self.dtype, strides=2, name=f"down_{level}_ds")(h)
                skips.append(h)

        h = ResBlock(h.shape[-1], **res_kw, name="mid_res_0")(h, emb, train)
        h = attend(h, "mid", middle=True)
        h = ResBlock(h.shape[-1], **res_kw, name="mid_res_1")(h, emb, train)

        for level, mult in reversed(list(enumerate(self.ch_mults))):
            for i in range(self.num_res_blocks + 1):
                # The block reads (h, skip) as their concatenation without writing it.
                h = ResBlock(self.ch * mult, **res_kw, name=f"up_{level}_res_{i}")(
                    (h, skips.pop()), emb, train
                )
                h = attend(h, f"up_{level}_{i}")
            if level != 0:
                if self.resblock_updown:
                    h = ResBlock(h.shape[-1], **res_kw, resample="up", name=f"up_{level}_us")(
                        h, emb, train
                    )
                else:
                    h = conv3x3(h.shape[-1], self.dtype, name=f"up_{level}_us")(upsample_nearest(h))
        assert not skips

        h = nn.silu(GroupNorm(self.norm_groups, dtype=self.dtype, name="norm_out")(h))
        h = conv3x3(self.out_ch * p * p, self.dtype, zero=True, name="conv_out")(h)
        return depth_to_space(h, p)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """``[B, H, W, C] -> [B, H/p, W/p, p*p*C]`` (identity for ``p == 1``)."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """Inverse of ``space_to_depth``: ``[B, h, w, p*p*C] -> [B, h*p, w*p, C]``."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c // (p * p))
