"""Shared Flax building blocks: initialisers, group norm, attention, transformer blocks,
resampling, timestep embedding.

Everything here is written for a low op count: XLA on a CPU pays a fixed cost per fused kernel, so
the blocks avoid reshapes and transposes of large activations and fold affine terms into small
``[B, C]`` tensors before touching the ``[B, H, W, C]`` activation.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype | type

# DDPM (and the TF reference code) initialise every conv/dense as variance_scaling(scale, fan_avg,
# uniform) with scale 1, and the last layer of each residual branch with scale 0 (i.e. zeros).
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zeros_init = nn.initializers.zeros


def count_params(params) -> int:
    """Counts the scalars in a pytree of parameters.

    Args:
      params: any pytree of arrays (e.g. ``variables["params"]``).

    Returns:
      The total number of elements, as a Python int.
    """
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))


def num_groups_for(channels: int, max_groups: int) -> int:
    """Returns the largest group count <= ``max_groups`` that divides ``channels``.

    Args:
      channels: number of channels C.
      max_groups: the requested number of groups (e.g. 32).

    Returns:
      G with ``1 <= G <= min(max_groups, channels)`` and ``channels % G == 0``.
    """
    g = max(1, min(max_groups, channels))
    while channels % g:
        g -= 1
    return g


def as_parts(x) -> tuple[jax.Array, ...]:
    """An activation or a tuple (list) of parts that stand for their concatenation along the
    last axis, as a tuple of parts (``GroupNorm``, ``Conv3x3``, ``PartsDense`` read them)."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class GroupNorm(nn.Module):
    """Group normalisation over the spatial and in-group channel axes, with optional FiLM.

    Computes per-channel first and second moments over the spatial axes, averages them within
    groups on the small ``[B, C]`` tensors, and applies one fused ``x * a + b`` to the activation,
    where ``a`` and ``b`` fold the learned affine and (optionally) a FiLM scale/shift:
    ``GN(x) * (1 + scale) + shift`` (ADM's scale-shift norm). Statistics are computed in float32.
    The parameters are named and shaped like ``flax.linen.GroupNorm``'s (``scale``, ``bias``: [C]).

    Attributes:
      num_groups: requested number of groups; the largest divisor of C not above it is used.
      epsilon: added to the variance (1e-6 as in the DDPM reference implementation).
      dtype: output dtype.
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, film: tuple[jax.Array, jax.Array] | None = None):
        """Normalises ``x``.

        Args:
          x: activations ``[B, ..., C]`` (spatial axes in the middle), or a tuple of parts
            ``[B, ..., C_i]`` that stand for their concatenation along the channels (a UNet's
            upsampling input and its skip): each part is normalised as its channels of the
            concatenation would be, and the concatenation itself is never written.
          film: optional ``(scale, shift)``, each ``[B, C]``.

        Returns:
          ``[B, ..., C]`` in ``self.dtype`` (a tuple of the parts' for a tuple ``x``).
        """
        parts = as_parts(x)
        widths = [p.shape[-1] for p in parts]
        c = sum(widths)
        g = num_groups_for(c, self.num_groups)
        gamma = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        axes = tuple(range(1, parts[0].ndim - 1))
        # Per-channel moments of each part, joined on the small [B, C] tensors.
        mean = jnp.concatenate(
            [jnp.mean(p.astype(jnp.float32), axis=axes) for p in parts], axis=-1
        )  # [B, C]
        mean_sq = jnp.concatenate(
            [jnp.mean(jnp.square(p.astype(jnp.float32)), axis=axes) for p in parts], axis=-1
        )
        if g != c:
            b = parts[0].shape[0]
            mean = jnp.repeat(mean.reshape(b, g, c // g).mean(-1), c // g, axis=-1)
            mean_sq = jnp.repeat(mean_sq.reshape(b, g, c // g).mean(-1), c // g, axis=-1)
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        a = gamma * jax.lax.rsqrt(var + self.epsilon)
        bias = beta - mean * a
        if film is not None:
            scale, shift = film
            scale = 1.0 + scale.astype(jnp.float32)
            a = a * scale
            bias = bias * scale + shift.astype(jnp.float32)
        out, start = [], 0
        for p, w in zip(parts, widths, strict=True):
            bshape = (p.shape[0],) + (1,) * len(axes) + (w,)
            a_p = a[:, start : start + w].reshape(bshape)
            b_p = bias[:, start : start + w].reshape(bshape)
            out.append((p.astype(jnp.float32) * a_p + b_p).astype(self.dtype))
            start += w
        return tuple(out) if isinstance(x, (tuple, list)) else out[0]


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep embedding (DDPM's ``get_timestep_embedding``).

    Args:
      t: timesteps ``[B]``, int or float (fractional steps allowed).
      dim: embedding width D.
      max_period: the longest wavelength.

    Returns:
      ``[B, D]`` float32: ``[sin(t * f_i), cos(t * f_i)]`` with ``f_i = max_period^(-i/(D/2-1))``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    return_weights: bool = False,
):
    """Scaled dot-product attention, softmax in float32.

    Args:
      q: queries ``[B, Q, N, D]`` (N heads of width D).
      k: keys ``[B, K, N, D]``.
      v: values ``[B, K, N, D]``.
      mask: optional bool ``[B, K]`` (per key) or ``[B, Q, K]`` (per query and key); False keys get
        zero weight. A row with no True key attends uniformly (no NaN).
      return_weights: also return the attention weights.

    Returns:
      ``[B, Q, N, D]`` in ``q.dtype``; with ``return_weights`` also the float32 weights
      ``[B, N, Q, K]``.
    """
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None, :, :]
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bnqk,bknd->bqnd", w.astype(v.dtype), v)
    return (out, w) if return_weights else out


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    With a key/value ``cache`` it runs a slice of a longer sequence (an autoregressive decoder's
    prefill or one decoding step): the slice's keys and values are written into the cache at
    ``index`` and its queries attend over every cached position the mask allows.

    Attributes:
      num_heads: attention heads (width must divide by it).
      mlp_ratio: hidden width of the MLP over the model width.
      dropout: dropout rate on the attention and MLP outputs.
      dtype: compute dtype.
    """

    num_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        train: bool = False,
        cache: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | int = 0,
    ):
        """Applies the block.

        Args:
          x: ``[B, L, W]``.
          mask: bool ``[B, K]``, True for keys that may be attended to, or ``[B, L, K]`` per
            query and key (K = L without a cache, the cache length S with one); None: all.
          train: enables dropout.
          cache: optional ``(keys, values)``, each ``[B, S, N, W / N]``.
          index: where in the cache ``x``'s positions go (with a cache).

        Returns:
          ``[B, L, W]``; with a cache, ``([B, L, W], updated cache)``.
        """
        b, length, width = x.shape
        assert width % self.num_heads == 0, (width, self.num_heads)
        head_dim = width // self.num_heads
        h = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
        qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(h)
        qkv = qkv.reshape(b, length, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cache is not None:
            start = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        h = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        h = nn.Dense(width, dtype=self.dtype, name="attn_out")(h.reshape(b, length, width))
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        h = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(h)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(
            nn.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(h))
        )
        return x if cache is None else (x, cache)


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling as one broadcast and one reshape.

    Args:
      x: ``[B, H, W, C]``.

    Returns:
      ``[B, 2H, 2W, C]``.
    """
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2.

    Args:
      x: ``[B, H, W, C]`` with even H, W.

    Returns:
      ``[B, H/2, W/2, C]``.
    """
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)


class Conv3x3(nn.Module):
    """A 3x3 convolution with symmetric padding 1 (XLA's native convolution).

    The parameters are ``nn.Conv``'s (``kernel`` [3, 3, Cin, Cout], ``bias`` [Cout]). On a CPU,
    XLA's convolution trains 1.1-5.0x faster than the same convolution written as im2col and one
    matmul at the package's stride-1 shapes of 8x8 and up; im2col keeps a lead of under 1.4 ms at
    4x4 and at some stride-2 shapes (``benchmarks/conv_forms.py``; docs/benchmarks.md).

    Attributes:
      features: output channels.
      strides: 1 or 2 (same along both spatial axes).
      zero: zero-initialise the kernel (last layer of a residual branch / of the network).
      dtype: compute dtype (params stay float32).
    """

    features: int
    strides: int = 1
    zero: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x) -> jax.Array:
        """Applies the convolution.

        Args:
          x: ``[B, H, W, Cin]``, or a tuple of parts ``[B, H, W, Cin_i]`` that stand for their
            concatenation along the channels: the convolution of the concatenation is the sum
            of each part's convolution with its slice of the kernel, so the concatenation is
            never written (the same parameters either way).

        Returns:
          ``[B, ceil(H / s), ceil(W / s), features]`` in ``dtype``.
        """
        parts = as_parts(x)
        c = sum(p.shape[-1] for p in parts)
        kernel = self.param(
            "kernel", zeros_init if self.zero else default_init, (3, 3, c, self.features)
        )
        bias = self.param("bias", zeros_init, (self.features,))
        kernel = kernel.astype(self.dtype)
        s, y, start = self.strides, bias.astype(self.dtype), 0
        for p in parts:
            y = y + jax.lax.conv_general_dilated(
                p.astype(self.dtype),
                kernel[:, :, start : start + p.shape[-1]],
                (s, s),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            start += p.shape[-1]
        return y


def conv3x3(
    features: int,
    dtype: Dtype,
    strides: int = 1,
    zero: bool = False,
    name: str | None = None,
) -> Conv3x3:
    """Shorthand for ``Conv3x3`` (see there).

    Args:
      features: output channels.
      dtype: compute dtype (params stay float32).
      strides: 1, or 2 for a downsampling conv.
      zero: zero-initialise the kernel.
      name: optional module name.

    Returns:
      A module mapping ``[B, H, W, C] -> [B, H/s, W/s, features]``.
    """
    return Conv3x3(features, strides, zero, dtype, name=name)


def dense(features: int, dtype: Dtype, zero: bool = False, name: str | None = None) -> nn.Dense:
    """A dense (or 1x1 conv / NIN) layer with DDPM initialisation.

    Args:
      features: output width.
      dtype: compute dtype (params stay float32).
      zero: zero-initialise the kernel.
      name: optional module name.

    Returns:
      An ``nn.Dense`` acting on the last axis.
    """
    return nn.Dense(
        features, dtype=dtype, kernel_init=zeros_init if zero else default_init, name=name
    )


class PartsDense(nn.Module):
    """``dense`` on a tuple of parts that stand for their concatenation along the last axis:
    the sum of each part times its rows of the kernel. Parameters are named and shaped like
    ``nn.Dense``'s (``kernel`` [sum C_i, features], ``bias`` [features]), DDPM-initialised.

    Attributes:
      features: output width.
      dtype: compute dtype (params stay float32).
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, parts) -> jax.Array:
        c = sum(p.shape[-1] for p in parts)
        kernel = self.param("kernel", default_init, (c, self.features)).astype(self.dtype)
        bias = self.param("bias", zeros_init, (self.features,)).astype(self.dtype)
        y, start = bias, 0
        for p in parts:
            y = y + jnp.dot(p.astype(self.dtype), kernel[start : start + p.shape[-1]])
            start += p.shape[-1]
        return y


def _conv_same(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        "SAME",
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_same(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """A stride-1 convolution with SAME padding (``[B, H, W, Cin]`` x HWIO kernel of odd size,
    optionally dilated), whose input gradient is the convolution with the flipped, transposed
    kernel computed in the standard layout.

    Why: inside a ``lax`` loop (an image optimised for hundreds of iterations), XLA:CPU compiles
    the automatic input gradient as a convolution that reads its kernel transposed, which ran
    2.4x slower per evaluation than the same gradient outside a loop (style transfer's VGG-19 at
    256 pixels, docs/results/style_transfer.md). The explicit flipped kernel behind an
    optimisation barrier keeps the fast layout; values and gradients are the same.
    """
    return _conv_same(x, kernel, dilation)


def _conv_same_fwd(x, kernel, dilation):
    return _conv_same(x, kernel, dilation), (x, kernel)


def _conv_same_bwd(dilation, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    if kh % 2 == 0 or kw % 2 == 0:  # SAME pads an even kernel unevenly: the plain gradient
        _, vjp = jax.vjp(lambda a, b: _conv_same(a, b, dilation), x, kernel)
        return vjp(g)
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    gx = _conv_same(g, flipped, dilation)
    _, vjp_kernel = jax.vjp(lambda b: _conv_same(x, b, dilation), kernel)
    return gx, vjp_kernel(g)[0]


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)
