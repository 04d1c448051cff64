"""Bottlenecks of the autoencoder family: vector quantisation, Gumbel-softmax, Gaussian.

Pure functions on arrays, so that each piece of math is testable on its own:

* VQ-VAE (van den Oord et al. 2017): nearest-code assignment, the codebook and commitment terms
  ``||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2`` (beta on the *commitment* term, the one
  whose gradient reaches the encoder), the straight-through estimator, EMA codebook updates
  (appendix A.1), restart of dead codes, and codebook statistics (usage, perplexity).
* dVAE (Ramesh et al. 2021): the Gumbel-softmax relaxation and the KL to a uniform prior.
* VAE (Kingma & Welling 2014): the KL of a diagonal Gaussian to N(0, I).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the closest code (squared Euclidean distance) of each vector.

    Args:
      z: ``[..., D]`` vectors.
      codebook: ``[K, D]`` codes.

    Returns:
      int32 ``[...]`` indices into the codebook.
    """
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin.
    d = jnp.sum(codebook**2, axis=-1)[None] - 2.0 * flat @ codebook.T
    return jnp.argmin(d, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])


def vq_losses(z_e: jax.Array, z_q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two VQ-VAE terms, unweighted, as batch means of the per-vector squared distance.

    Returns:
      ``(codebook, commitment)``: ``||sg[z_e] - z_q||^2`` (gradient to the codes only) and
      ``||z_e - sg[z_q]||^2`` (gradient to the encoder only). The loss is
      ``codebook + beta * commitment``.
    """
    sg = jax.lax.stop_gradient
    codebook = jnp.mean(jnp.sum(jnp.square(sg(z_e) - z_q), axis=-1))
    commitment = jnp.mean(jnp.sum(jnp.square(z_e - sg(z_q)), axis=-1))
    return codebook, commitment


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
    """``z_q`` in the forward pass; the identity to ``z_e`` in the backward pass."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
    """How often each code is used: float32 ``[K]``."""
    return jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(1.0)


def usage_stats(counts: jax.Array) -> dict[str, jax.Array]:
    """Codebook statistics from code counts ``[K]``.

    Returns:
      ``usage``: fraction of codes used at least once; ``perplexity``: ``exp(H(p))`` of the
      code frequencies ``p`` (K when all codes are equally used, 1 when one code is).
    """
    counts = counts.astype(jnp.float32)
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {"usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


def ema_codebook_update(
    stats: dict[str, jax.Array],
    z: jax.Array,
    indices: jax.Array,
    decay: float,
    eps: float = 1e-5,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """One EMA step of the codebook (VQ-VAE appendix A.1), with Laplace smoothing of counts.

    ``N_i <- d N_i + (1 - d) n_i``, ``m_i <- d m_i + (1 - d) sum_{j: k(j) = i} z_j`` and
    ``e_i = m_i / N~_i`` with ``N~_i = (N_i + eps) / (sum N + K eps) * sum N``.

    Args:
      stats: ``{"cluster_size": [K], "embed_sum": [K, D]}``.
      z: ``[N, D]`` encoder outputs (no gradient flows here).
      indices: int ``[N]`` their assigned codes.
      decay: the EMA decay ``d``.
      eps: Laplace smoothing, keeps unused codes from dividing by zero.

    Returns:
      ``(new_stats, new_codebook [K, D])``.
    """
    k = stats["cluster_size"].shape[0]
    one_hot = jax.nn.one_hot(indices.reshape(-1), k, dtype=jnp.float32)
    z = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    cluster_size = decay * stats["cluster_size"] + (1.0 - decay) * one_hot.sum(0)
    embed_sum = decay * stats["embed_sum"] + (1.0 - decay) * one_hot.T @ z
    n = jnp.sum(cluster_size)
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    new_stats = {"cluster_size": cluster_size, "embed_sum": embed_sum}
    return new_stats, embed_sum / smoothed[:, None]


def restart_dead_codes(
    codebook: jax.Array,
    usage: jax.Array,
    z: jax.Array,
    rng: jax.Array,
    threshold: float,
) -> tuple[jax.Array, jax.Array]:
    """Replaces codes whose usage EMA is below ``threshold`` by random encoder outputs.

    Args:
      codebook: ``[K, D]``.
      usage: ``[K]`` moving average of how often each code is assigned per batch.
      z: ``[N, D]`` encoder outputs of the current batch (candidates).
      rng: picks the candidates.
      threshold: a code is dead when its usage is below this.

    Returns:
      ``(codebook, dead)``: the new codebook and the boolean ``[K]`` mask of restarted codes.
    """
    z = z.reshape(-1, z.shape[-1]).astype(codebook.dtype)
    dead = usage < threshold
    picks = jax.random.randint(rng, (codebook.shape[0],), 0, z.shape[0])
    return jnp.where(dead[:, None], z[picks], codebook), dead


def gumbel_softmax(logits: jax.Array, rng: jax.Array, temperature):
    """A relaxed one-hot sample ``softmax((logits + g) / temperature)``, ``g ~ Gumbel(0, 1)``.

    As ``temperature -> 0`` the sample tends to the one-hot of ``argmax(logits + g)``.
    """
    g = jax.random.gumbel(rng, logits.shape, jnp.float32)
    return jax.nn.softmax((logits.astype(jnp.float32) + g) / temperature, axis=-1)


def kl_to_uniform(logits: jax.Array) -> jax.Array:
    """``KL(softmax(logits) || Uniform(K)) = sum_k q_k log q_k + log K`` per position ``[...]``."""
    logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(logq) * logq, axis=-1) + jnp.log(float(logits.shape[-1]))


def aggregate_kl_to_uniform(logits: jax.Array) -> jax.Array:
    """``KL(q_bar || Uniform(K))`` of the posterior averaged over all positions ``[..., K]``.

    ``mean_x KL(q(z|x) || u) = KL(q_bar || u) + I(x; z)``: the per-position KL of DALL-E also
    pays for the information a token carries, while this term only asks that codes be used
    evenly across the batch, which is what a collapsing codebook lacks.
    """
    q = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(-1, logits.shape[-1])
    q_bar = jnp.mean(q, axis=0)
    return jnp.sum(q_bar * jnp.log(jnp.maximum(q_bar, 1e-30))) + jnp.log(float(logits.shape[-1]))


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` summed over the last axis, in nats."""
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
