"""Samplers for discrete-time diffusion: DDPM ancestral (Alg. 2), DDIM, classifier-free guidance.

Each sampler is one traceable program: the chain of denoising steps is a `jax.lax.fori_loop`
(ancestral) or `jax.lax.scan` (DDIM), so the model is traced once and the whole chain compiles to
a single XLA loop. The caller may `jax.jit` a sampler with ``shape`` (and ``num_steps``) static;
the `Schedule` may be a traced argument.

A denoiser is ``model_fn(x_t [B, H, W, C], t [B] int32) -> output [B, H, W, C]`` in the
parameterisation named by ``prediction_type`` ("eps", "x0" or "v"); conditioning and guidance are
closed over by the caller (see `guided_model_fn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.process import (
    check_prediction_type,
    eps_from_x0,
    extract,
    predict_x0_eps,
    q_posterior_mean_variance,
)
from jaxgen.diffusion.schedules import Schedule

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]

VARIANCES = ("beta", "posterior")


# ------------------------------------------------------------------ classifier-free guidance


def classifier_free_guidance(
    cond_out: jnp.ndarray, uncond_out: jnp.ndarray, scale: float | jnp.ndarray
) -> jnp.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ``uncond + scale (cond - uncond)``.

    Scale 1 is the conditional model, 0 the unconditional one. The combination is linear, so it
    is the same whether applied to eps, x0 or v outputs (each is an affine function of the other
    given x_t), and it can be applied to the model output in whatever parameterisation it has.

    Args:
      cond_out: conditional model output ``[B, ...]``.
      uncond_out: unconditional model output ``[B, ...]``.
      scale: guidance scale ``w`` (``1 + w`` in the paper's notation).

    Returns:
      The guided output ``[B, ...]``.
    """
    return uncond_out + scale * (cond_out - uncond_out)


def guided_model_fn(
    apply_fn: Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray],
    cond: Any,
    uncond: Any,
    scale: float | jnp.ndarray,
) -> ModelFn:
    """Closes conditioning and classifier-free guidance over a conditional denoiser.

    The conditional and unconditional passes run as ONE batched call of size 2B: inputs are
    concatenated along the batch axis, the output is split in halves and combined with
    `classifier_free_guidance`. Guidance acts on the output in its own parameterisation
    (eps, x0 or v); being linear, the result is equivalent for all three.

    Args:
      apply_fn: ``apply_fn(x_t [N, H, W, C], t [N] int32, cond) -> output [N, H, W, C]`` with
        ``cond`` a pytree of ``[N, ...]`` leaves.
      cond: conditioning pytree with leaves ``[B, ...]``.
      uncond: the null conditioning, same structure; leaves ``[B, ...]`` or ``[1, ...]``
        (broadcast to the batch).
      scale: guidance scale.

    Returns:
      ``model_fn(x_t [B, H, W, C], t [B]) -> guided output [B, H, W, C]``.
    """
    uncond = jax.tree.map(lambda u, c: jnp.broadcast_to(u, c.shape).astype(c.dtype), uncond, cond)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)

    def model_fn(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        batch = x_t.shape[0]
        out = apply_fn(jnp.concatenate([x_t, x_t], axis=0), jnp.concatenate([t, t], axis=0), both)
        return classifier_free_guidance(out[:batch], out[batch:], scale)

    return model_fn


# ------------------------------------------------------------------ one-step updates


def _x0_eps(sched, output, x_t, t, prediction_type, clip_x0):
    """(x0, eps) from a model output; with clipping, eps is recomputed from the clipped x0."""
    x0, eps = predict_x0_eps(sched, output, x_t, t, prediction_type)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = eps_from_x0(sched, x_t, t, x0)
    return x0, eps


def ancestral_step_mean_std(
    sched: Schedule,
    output: jnp.ndarray,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    prediction_type: str = "eps",
    variance: str = "beta",
    clip_x0: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and std of one ancestral step ``p(x_{t-1} | x_t)`` (DDPM Alg. 2 line 4, eqs. 7, 11).

    The mean is the posterior mean ``mu~_t(x0^, x_t)`` (eq. 7) at the predicted ``x0^``; without
    clipping, for an eps model this equals eq. 11,
    ``1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps^)``. The variance is
    ``sigma_t^2 = beta_t`` ("beta") or ``beta~_t`` ("posterior"), as in DDPM Sec. 3.2.

    Args:
      sched: the schedule.
      output: model output ``[B, H, W, C]``.
      x_t: current sample ``[B, H, W, C]``.
      t: int32 timesteps ``[B]`` (or a scalar).
      prediction_type: "eps", "x0" or "v".
      variance: "beta" or "posterior".
      clip_x0: clip the predicted x0 to [-1, 1] before forming the mean.

    Returns:
      ``(mean [B, H, W, C], std [B, 1, 1, 1])``.
    """
    if variance not in VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")
    x0, _ = _x0_eps(sched, output, x_t, t, prediction_type, clip_x0)
    mean, post_var, _ = q_posterior_mean_variance(sched, x0, x_t, t)
    var = extract(sched.betas, t, x_t) if variance == "beta" else post_var
    return mean, jnp.sqrt(var)


def ddim_step_mean_std(
    sched: Schedule,
    output: jnp.ndarray,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    t_prev: jnp.ndarray,
    eta: float = 0.0,
    prediction_type: str = "eps",
    clip_x0: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and std of one DDIM step from t to t_prev < t (Song et al. 2021, eqs. 12 and 16).

    ``x_prev = sqrt(abar_prev) x0^ + sqrt(1 - abar_prev - sigma^2) eps^ + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``.
    ``t_prev = -1`` denotes the clean data (``abar_prev = 1``). With ``eta = 1`` and
    ``t_prev = t - 1`` this is the DDPM ancestral step with the posterior variance.

    Args:
      sched: the schedule.
      output: model output ``[B, H, W, C]``.
      x_t: current sample ``[B, H, W, C]``.
      t: int32 timesteps ``[B]`` (or a scalar).
      t_prev: int32 previous timesteps, same shape as t, ``-1`` for x0.
      eta: 0 for deterministic DDIM, 1 for DDPM-like stochasticity.
      prediction_type: "eps", "x0" or "v".
      clip_x0: clip the predicted x0 to [-1, 1] (eps is then recomputed from it).

    Returns:
      ``(mean [B, H, W, C], std [B, 1, 1, 1])``.
    """
    x0, eps = _x0_eps(sched, output, x_t, t, prediction_type, clip_x0)
    abar_t = extract(sched.alpha_bars, t, x_t)
    # 1 - abar from the float64-derived sqrt: accurate where abar is near 1.
    one_minus_abar_t = extract(sched.sqrt_one_minus_alpha_bars, t, x_t) ** 2
    t_prev = jnp.asarray(t_prev)
    safe_prev = jnp.maximum(t_prev, 0)
    is_data = (t_prev < 0).reshape(t_prev.shape + (1,) * (x_t.ndim - t_prev.ndim))
    abar_prev = jnp.where(is_data, 1.0, extract(sched.alpha_bars, safe_prev, x_t))
    one_minus_abar_prev = jnp.where(
        is_data, 0.0, extract(sched.sqrt_one_minus_alpha_bars, safe_prev, x_t) ** 2
    )
    sigma = eta * jnp.sqrt(one_minus_abar_prev / one_minus_abar_t * (1.0 - abar_t / abar_prev))
    dir_coef = jnp.sqrt(jnp.maximum(one_minus_abar_prev - sigma**2, 0.0))
    mean = jnp.sqrt(abar_prev) * x0 + dir_coef * eps
    return mean, sigma


# ------------------------------------------------------------------ samplers


def ancestral_sample(
    model_fn: ModelFn,
    sched: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    prediction_type: str = "eps",
    variance: str = "beta",
    clip_x0: bool = True,
) -> jnp.ndarray:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) as one `lax.fori_loop` of T steps.

    Starts from ``x_T ~ N(0, I)`` and for ``t = T-1, ..., 0`` draws
    ``x_{t-1} = mu~_t(x0^, x_t) + sigma_t z`` (see `ancestral_step_mean_std`), with no noise at
    the last step, whose mean is the predicted x0 (``coef1_0 = 1``, ``coef2_0 = 0``).

    Args:
      model_fn: ``model_fn(x_t [B, H, W, C], t [B] int32) -> output [B, H, W, C]``.
      sched: the schedule (T steps).
      shape: static sample shape ``(B, H, W, C)``.
      rng: PRNG key.
      prediction_type: "eps", "x0" or "v".
      variance: "beta" (``sigma_t^2 = beta_t``) or "posterior" (``sigma_t^2 = beta~_t``).
      clip_x0: clip the predicted x0 to [-1, 1] at each step.

    Returns:
      Samples x0 ``shape`` float32.
    """
    check_prediction_type(prediction_type)
    if variance not in VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")
    num_timesteps = sched.num_timesteps
    init_rng, loop_rng = jax.random.split(rng)
    x_init = jax.random.normal(init_rng, shape, dtype=jnp.float32)

    def body(i, x):
        t = num_timesteps - 1 - i
        t_batch = jnp.full((shape[0],), t, dtype=jnp.int32)
        output = model_fn(x, t_batch)
        mean, std = ancestral_step_mean_std(
            sched, output, x, t_batch, prediction_type, variance, clip_x0
        )
        noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape, dtype=jnp.float32)
        return mean + jnp.where(t > 0, std, 0.0) * noise

    return jax.lax.fori_loop(0, num_timesteps, body, x_init)


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Evenly spaced, strictly decreasing timesteps from T-1 down to 0 (static numpy).

    Args:
      num_timesteps: T.
      num_steps: number of sampling steps, ``1 <= num_steps <= T``.

    Returns:
      int32 numpy array ``[num_steps]``, e.g. ``[999, 979, ..., 20, 0]`` for T=1000, 51 steps.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int32)
    # Round half up: spacing >= 1 then guarantees distinct steps.
    grid = np.floor(np.linspace(0.0, num_timesteps - 1, num_steps) + 0.5)
    return grid[::-1].astype(np.int32)


def ddim_sample(
    model_fn: ModelFn,
    sched: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    num_steps: int = 50,
    eta: float = 0.0,
    prediction_type: str = "eps",
    clip_x0: bool = True,
    x_init: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """DDIM sampling (Song et al. 2021, eq. 12, sigma from eta by eq. 16) as one `lax.scan`.

    Visits ``num_steps`` evenly spaced timesteps from T-1 to 0 (`ddim_timesteps`); the last
    step goes to the clean data (``abar_prev = 1``), returning the predicted x0.

    Args:
      model_fn: ``model_fn(x_t [B, H, W, C], t [B] int32) -> output [B, H, W, C]``.
      sched: the schedule (T steps).
      shape: static sample shape ``(B, H, W, C)``.
      rng: PRNG key.
      num_steps: static number of model evaluations, ``1 <= num_steps <= T``.
      eta: 0 (deterministic DDIM) to 1 (DDPM-like noise).
      prediction_type: "eps", "x0" or "v".
      clip_x0: clip the predicted x0 to [-1, 1] at each step.
      x_init: the starting ``x_T`` ``shape`` (e.g. from `ddim_invert`); default ``N(0, I)``.

    Returns:
      Samples x0 ``shape`` float32.
    """
    check_prediction_type(prediction_type)
    steps = ddim_timesteps(sched.num_timesteps, num_steps)
    steps_prev = np.concatenate([steps[1:], [-1]]).astype(np.int32)
    init_rng, loop_rng = jax.random.split(rng)
    if x_init is None:
        x_init = jax.random.normal(init_rng, shape, dtype=jnp.float32)
    keys = jax.random.split(loop_rng, num_steps)

    def body(x, inputs):
        t, t_prev, key = inputs
        t_batch = jnp.full((shape[0],), t, dtype=jnp.int32)
        t_prev_batch = jnp.full((shape[0],), t_prev, dtype=jnp.int32)
        output = model_fn(x, t_batch)
        mean, std = ddim_step_mean_std(
            sched, output, x, t_batch, t_prev_batch, eta, prediction_type, clip_x0
        )
        return mean + std * jax.random.normal(key, shape, dtype=jnp.float32), None

    x, _ = jax.lax.scan(body, x_init, (jnp.asarray(steps), jnp.asarray(steps_prev), keys))
    return x


def ddim_invert(
    model_fn: ModelFn,
    sched: Schedule,
    x0: jnp.ndarray,
    num_steps: int = 50,
    prediction_type: str = "eps",
) -> jnp.ndarray:
    """DDIM inversion: runs the deterministic (eta = 0) DDIM update backwards, from data to
    ``x_T``, as one `lax.scan` over the timesteps of `ddim_sample` in increasing order.

    Each step from ``t`` to the next larger ``t'`` predicts ``(x0^, eps^)`` at the current point
    and moves to ``sqrt(abar_t') x0^ + sqrt(1 - abar_t') eps^``: eq. 12 of Song et al. with the
    roles of ``t`` and ``t_prev`` swapped. The data itself is read as the point at ``t = 0``.
    ``ddim_sample(..., eta=0, x_init=ddim_invert(...))`` with the same ``num_steps`` returns
    ``x0`` up to the discretisation error (exactly as the steps shrink); unCLIP encodes an
    image's ``x_T`` this way for its variations.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t [B] int32) -> output [B, ...]``.
      sched: the schedule (T steps).
      x0: clean data ``[B, ...]``.
      num_steps: static number of model evaluations, as in `ddim_sample`.
      prediction_type: "eps", "x0" or "v".

    Returns:
      ``x_T`` float32, the shape of ``x0``.
    """
    check_prediction_type(prediction_type)
    steps = ddim_timesteps(sched.num_timesteps, num_steps)[::-1]  # 0 ... T-1
    cur = np.concatenate([[0], steps[:-1]]).astype(np.int32)  # the data read as t = 0
    batch = x0.shape[0]

    def body(x, inputs):
        t, t_next = inputs
        t_batch = jnp.full((batch,), t, dtype=jnp.int32)
        output = model_fn(x, t_batch)
        x0_hat, eps = predict_x0_eps(sched, output, x, t_batch, prediction_type)
        t_next_batch = jnp.full((batch,), t_next, dtype=jnp.int32)
        abar_next = extract(sched.alpha_bars, t_next_batch, x)
        one_minus = extract(sched.sqrt_one_minus_alpha_bars, t_next_batch, x) ** 2
        return jnp.sqrt(abar_next) * x0_hat + jnp.sqrt(one_minus) * eps, None

    x, _ = jax.lax.scan(
        body, x0.astype(jnp.float32), (jnp.asarray(cur), jnp.asarray(steps.astype(np.int32)))
    )
    return x
