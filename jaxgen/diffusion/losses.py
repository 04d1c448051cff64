"""Diffusion training loss (DDPM Algorithm 1) with optional Min-SNR weighting.

Weightings, for per-step signal-to-noise ratio ``snr_t = abar_t / (1 - abar_t)``:

- ``"simple"``: the unweighted MSE on the prediction target (DDPM eq. 14, ``L_simple``, for eps;
  the same unweighted MSE on x0 or v for those targets).
- ``"min_snr"`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"): the
  x0-space loss weight ``min(snr_t, gamma)``, re-expressed for the regression target. Since
  ``||eps - eps^||^2 = snr_t ||x0 - x0^||^2`` and ``||v - v^||^2 = (snr_t + 1) ||x0 - x0^||^2``,
  the weight on the target MSE is ``min(snr_t, gamma) / snr_t`` for eps,
  ``min(snr_t, gamma) / (snr_t + 1)`` for v and ``min(snr_t, gamma)`` for x0.

Timestep sampling: ``"uniform"`` over ``{0, ..., T-1}`` (Algorithm 1), or ``"logit_normal"``
(Esser et al. 2024, SD3): ``t = floor(T * sigmoid(m + s * n))``, ``n ~ N(0, 1)``, which spends the
updates on the middle of the noise range, where layout and shape are decided, rather than on the
nearly clean and the nearly pure-noise ends.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgen.diffusion.process import check_prediction_type, q_sample, target_for, v_from_x0_eps
from jaxgen.diffusion.schedules import Schedule

WEIGHTINGS = ("simple", "min_snr")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def min_snr_weight(snr: jnp.ndarray, prediction_type: str, gamma: float) -> jnp.ndarray:
    """Min-SNR-gamma loss weight for a target (Hang et al. 2023, eq. 12 and Sec. 3.4).

    Args:
      snr: signal-to-noise ratios ``[B]``.
      prediction_type: "eps", "x0" or "v".
      gamma: the clamp, 5 in the paper.

    Returns:
      Weights ``[B]``: ``min(snr, gamma) / snr`` (eps), ``min(snr, gamma)`` (x0),
      ``min(snr, gamma) / (snr + 1)`` (v).
    """
    check_prediction_type(prediction_type)
    clamped = jnp.minimum(snr, gamma)
    if prediction_type == "eps":
        return clamped / snr
    if prediction_type == "x0":
        return clamped
    return clamped / (snr + 1.0)


def check_timestep_sampling(sampling: str, logit_std: float = 1.0) -> None:
    """Raises ValueError for an unknown ``sampling`` or a non-positive ``logit_std``."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(
            f"Unknown timestep sampling {sampling!r}; valid: {', '.join(TIMESTEP_SAMPLINGS)}"
        )
    if sampling == "logit_normal" and not logit_std > 0:
        raise ValueError(f"logit_std must be positive, got {logit_std}")


def sample_timesteps(
    rng: jax.Array,
    batch: int,
    num_timesteps: int,
    sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jnp.ndarray:
    """Draws ``batch`` int32 timesteps in ``[0, num_timesteps)`` (see the module docstring).

    Raises:
      ValueError: as ``check_timestep_sampling``.
    """
    check_timestep_sampling(sampling, logit_std)
    if sampling == "uniform":
        return jax.random.randint(rng, (batch,), 0, num_timesteps, dtype=jnp.int32)
    u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,)))
    return jnp.clip(jnp.floor(u * num_timesteps), 0, num_timesteps - 1).astype(jnp.int32)


def diffusion_loss(
    sched: Schedule,
    model_fn: ModelFn,
    x0: jnp.ndarray,
    rng: jax.Array,
    prediction_type: str = "eps",
    weighting: str = "simple",
    min_snr_gamma: float = 5.0,
    timestep_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Denoising loss of DDPM Algorithm 1 (eq. 14 for eps), for any prediction type.

    Draws ``t`` (``sample_timesteps``) and ``eps ~ N(0, I)`` per example, forms
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (eq. 4) and regresses ``model_fn(x_t, t)``
    onto the target (eps, x0 or v), with the weighting described in the module docstring.

    Args:
      sched: the schedule.
      model_fn: ``model_fn(x_t [B, H, W, C], t [B] int32) -> output [B, H, W, C]``.
      x0: clean data ``[B, H, W, C]`` in [-1, 1].
      rng: PRNG key; split here into the timestep and noise keys.
      prediction_type: "eps", "x0" or "v".
      weighting: "simple" or "min_snr".
      min_snr_gamma: gamma of the "min_snr" weighting.
      timestep_sampling: "uniform" or "logit_normal".
      logit_mean, logit_std: the logit-normal's parameters.

    Returns:
      ``(loss, per_example)``: the scalar mean loss and the weighted per-example MSE ``[B]``.

    Raises:
      ValueError: for an unknown prediction type, weighting or timestep sampling.
    """
    check_prediction_type(prediction_type)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    batch = x0.shape[0]
    t_rng, noise_rng = jax.random.split(rng)
    t = sample_timesteps(
        t_rng, batch, sched.num_timesteps, timestep_sampling, logit_mean, logit_std
    )
    eps = jax.random.normal(noise_rng, x0.shape, dtype=x0.dtype)
    x_t = q_sample(sched, x0, t, eps)
    output = model_fn(x_t, t)
    v = v_from_x0_eps(sched, x0, eps, t) if prediction_type == "v" else None
    target = target_for(prediction_type, x0, eps, v)
    sq_err = jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32))
    per_example = jnp.mean(sq_err, axis=tuple(range(1, x0.ndim)))
    if weighting == "min_snr":
        per_example = per_example * min_snr_weight(sched.snr[t], prediction_type, min_snr_gamma)
    return jnp.mean(per_example), per_example
