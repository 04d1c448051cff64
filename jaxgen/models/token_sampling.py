"""Sampling discrete tokens from a ``TokenTransformer``: logit filters (temperature, top-k,
top-p), classifier-free guidance, the autoregressive decode with a key/value cache and MaskGIT's
parallel decode. Each decode is one traceable function, so a jitted caller compiles the whole
loop over positions (or MaskGIT steps) into one program.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits ``[..., V]`` with every token outside the top ``top_k`` (0: all) and outside the
    nucleus (the fewest most likely tokens whose probabilities sum to at least ``top_p``; 1: all)
    set to a large negative number. The most likely token always stays."""
    vocab = logits.shape[-1]
    if not 0 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [0, {vocab}], got {top_k}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    logits = logits.astype(jnp.float32)
    if 0 < top_k < vocab:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A token stays when the tokens more likely than it sum to less than top_p.
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def sample_logits(
    rng: jax.Array, logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Draws int32 tokens ``[...]`` from logits ``[..., V]``; temperature 0 is the argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def guide(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
    """Classifier-free guidance on logits ("super-conditioning"): ``u + s (c - u)``."""
    return uncond + scale * (cond - uncond)


def _with_uncond(text: jax.Array, uncond_text: jax.Array | None) -> jax.Array:
    """Captions ``[B, L]`` -> ``[cond ; uncond]`` ``[2B, L]``, the batch guidance runs."""
    if uncond_text is None:
        raise ValueError("Guidance needs the unconditional caption tokens (uncond_text).")
    return jnp.concatenate([text, jnp.broadcast_to(uncond_text, text.shape)])


def _guided(logits: jax.Array, scale: float) -> jax.Array:
    """Logits of a doubled batch ``[cond ; uncond]`` -> guided logits of the first half."""
    if scale == 1.0:
        return logits
    cond, uncond = jnp.split(logits, 2)
    return guide(cond, uncond, scale)


def autoregressive(
    model,
    params,
    text: jax.Array,
    rng: jax.Array,
    *,
    uncond_text: jax.Array | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    prefix: jax.Array | None = None,
    prefix_len: int = 0,
) -> jax.Array:
    """Image tokens ``[B, N]`` of a causal ``TokenTransformer`` for captions ``text`` ``[B, L]``.

    The caption fills the key/value cache in one pass, then one ``lax.scan`` step per image
    token feeds the token drawn last and draws the next. With ``guidance_scale != 1`` the
    conditional and the unconditional (``uncond_text``, e.g. all PAD) streams run as one batch
    of 2B and share each drawn token. ``prefix`` ``[B, N]`` with ``prefix_len`` m keeps its first
    m tokens (image completion: the top rows given) and draws the rest.
    """
    b, n = text.shape[0], model.num_image_tokens
    guided = guidance_scale != 1.0
    text = _with_uncond(text, uncond_text) if guided else text
    if prefix is None:
        prefix = jnp.zeros((b, n), jnp.int32)
    cache = model.init_cache(text.shape[0])
    logits, cache = model.apply({"params": params}, text, cache, method=model.prefill)

    def step(carry, j):
        logits, cache, rng = carry
        rng, draw_rng = jax.random.split(rng)
        token = sample_logits(draw_rng, _guided(logits, guidance_scale), temperature, top_k, top_p)
        token = jnp.where(j < prefix_len, prefix[:, j], token)
        fed = jnp.concatenate([token, token]) if guided else token
        logits, cache = model.apply({"params": params}, fed, j, cache, method=model.decode_step)
        return (logits, cache, rng), token

    _, tokens = jax.lax.scan(step, (logits, cache, rng), jnp.arange(n))
    return tokens.T


def mask_schedule(ratio: jax.Array) -> jax.Array:
    """MaskGIT's cosine schedule: the fraction of tokens still masked at progress ``ratio``."""
    return jnp.cos(0.5 * math.pi * ratio)


def masked_counts(n: int, steps: int) -> list[int]:
    """How many of ``n`` tokens are still masked after each of ``steps`` decoding steps
    (``floor(n * cos(pi/2 * (t+1)/T))``, at least one fewer than before, 0 after the last)."""
    counts, prev = [], n
    for t in range(steps):
        m = int(math.floor(n * math.cos(0.5 * math.pi * (t + 1) / steps)))
        m = max(0, min(m, prev - 1)) if t < steps - 1 else 0
        counts.append(m)
        prev = m
    return counts


def maskgit(
    model,
    params,
    text: jax.Array,
    rng: jax.Array,
    *,
    steps: int = 8,
    uncond_text: jax.Array | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    choice_temperature: float = 4.5,
    tokens: jax.Array | None = None,
    given: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Image tokens ``[B, N]`` of a bidirectional ``TokenTransformer`` in ``steps`` parallel
    steps (MaskGIT's decode, Chang et al. 2022).

    The caption is read into a key/value cache once; every step then runs the image positions
    alone, predicts all masked tokens at once, draws one per position, and keeps the most
    confident; the rest are masked again, as many as the cosine schedule says
    (``masked_counts`` of the tokens not given), so the last step fills every position.
    Confidence is the drawn token's log-probability plus Gumbel noise scaled by
    ``choice_temperature * (1 - t / T)`` (annealed to none). ``tokens`` with the bool mask
    ``given`` ``[B, N]`` fixes those tokens (completion, inpainting); they never change.

    Returns ``(tokens [B, N], masked [T, B])``: the tokens, and how many were still masked
    after each step.
    """
    b, n = text.shape[0], model.num_image_tokens
    guided = guidance_scale != 1.0
    text = _with_uncond(text, uncond_text) if guided else text
    if given is None:
        given = jnp.zeros((b, n), bool)
    if tokens is None:
        tokens = jnp.zeros((b, n), jnp.int32)
    tokens = jnp.where(given, tokens, model.mask_id).astype(jnp.int32)
    unknown = jnp.sum(~given, axis=-1)
    # The caption reads only the caption: its keys and values are computed once, here.
    _, cache = model.apply(
        {"params": params}, text, model.init_cache(text.shape[0]), method=model.prefill
    )

    def step(carry, t):
        tokens, prev, rng = carry
        rng, draw_rng, noise_rng = jax.random.split(rng, 3)
        masked = tokens == model.mask_id
        fed = jnp.concatenate([tokens, tokens]) if guided else tokens
        logits = model.apply({"params": params}, fed, cache, method=model.masked_logits)
        logits = _guided(logits, guidance_scale)
        if temperature > 0:
            logits = filter_logits(logits / temperature, top_k, top_p)
        drawn = sample_logits(draw_rng, logits, 1.0 if temperature > 0 else 0.0)
        drawn = jnp.where(masked, drawn, tokens)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), drawn[..., None], -1)[..., 0]
        ratio = (t + 1.0) / steps
        count = jnp.floor(unknown * mask_schedule(ratio)).astype(jnp.int32)
        count = jnp.where(t == steps - 1, 0, jnp.clip(count, 0, jnp.maximum(prev - 1, 0)))
        noise = jax.random.gumbel(noise_rng, logp.shape)
        confidence = logp + choice_temperature * (1.0 - ratio) * noise
        confidence = jnp.where(masked, confidence, jnp.inf)
        rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
        tokens = jnp.where(rank < count[:, None], model.mask_id, drawn)
        return (tokens, count, rng), jnp.sum(tokens == model.mask_id, axis=-1)

    (tokens, _, _), masked = jax.lax.scan(step, (tokens, unknown, rng), jnp.arange(steps))
    return tokens, masked
