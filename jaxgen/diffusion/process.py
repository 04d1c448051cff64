"""The forward process q and conversions between parameterisations (DDPM, Ho et al. 2020).

Shapes: images ``x`` are ``[B, H, W, C]`` (any ``[B, ...]`` works); ``t`` is an int32 array
``[B]`` or a scalar, indexing the `Schedule`. Per-step constants are broadcast over the
non-batch axes.

Parameterisations of a denoiser output, with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

- ``"eps"``: the noise eps (DDPM eq. 11);
- ``"x0"``: the clean data x0;
- ``"v"``: ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, eq. 9 / App. D).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxgen.diffusion.schedules import Schedule

PREDICTION_TYPES = ("eps", "x0", "v")


def check_prediction_type(prediction_type: str) -> None:
    """Raises ValueError naming the valid prediction types if ``prediction_type`` is not one."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}"
        )


def extract(values: jnp.ndarray, t: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Gathers ``values[t]`` and reshapes it to broadcast against ``x``.

    Args:
      values: per-step array ``[T]``.
      t: int array ``[B]`` or scalar.
      x: array ``[B, ...]`` to broadcast against.

    Returns:
      ``values[t]`` with shape ``[B, 1, ..., 1]`` (or ``[1, ..., 1]`` for a scalar t).
    """
    out = values[t]
    return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))


def q_sample(sched: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """Samples ``x_t ~ q(x_t | x0)`` (DDPM eq. 4): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

    Args:
      sched: the schedule.
      x0: clean data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.
      noise: standard normal ``[B, H, W, C]``.

    Returns:
      ``x_t`` ``[B, H, W, C]``.
    """
    return (
        extract(sched.sqrt_alpha_bars, t, x0) * x0
        + extract(sched.sqrt_one_minus_alpha_bars, t, x0) * noise
    )


def q_mean_variance(
    sched: Schedule, x0: jnp.ndarray, t: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Moments of ``q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)`` (DDPM eq. 4).

    Args:
      sched: the schedule.
      x0: clean data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.

    Returns:
      ``(mean [B, H, W, C], variance [B, 1, 1, 1], log_variance [B, 1, 1, 1])``.
    """
    mean = extract(sched.sqrt_alpha_bars, t, x0) * x0
    # Squaring the float64-derived sqrt keeps 1 - abar_t accurate where abar_t is near 1.
    variance = extract(sched.sqrt_one_minus_alpha_bars, t, x0) ** 2
    return mean, variance, jnp.log(variance)


def q_posterior_mean_variance(
    sched: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Moments of the posterior ``q(x_{t-1} | x_t, x0) = N(mu~_t, beta~_t I)`` (DDPM eqs. 6-7).

    ``mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) /
    (1 - abar_t) x_t`` and ``beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``.

    Args:
      sched: the schedule.
      x0: clean (or predicted clean) data ``[B, H, W, C]``.
      x_t: noisy data at step t ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.

    Returns:
      ``(mean [B, H, W, C], variance [B, 1, 1, 1], log_variance_clipped [B, 1, 1, 1])``.
    """
    mean = (
        extract(sched.posterior_mean_coef1, t, x_t) * x0
        + extract(sched.posterior_mean_coef2, t, x_t) * x_t
    )
    variance = extract(sched.posterior_variance, t, x_t)
    log_variance = extract(sched.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


def x0_from_eps(sched: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
    """Inverts DDPM eq. 4 for x0: ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

    Args:
      sched: the schedule.
      x_t: noisy data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.
      eps: noise ``[B, H, W, C]``.

    Returns:
      x0 ``[B, H, W, C]``.
    """
    return (x_t - extract(sched.sqrt_one_minus_alpha_bars, t, x_t) * eps) / extract(
        sched.sqrt_alpha_bars, t, x_t
    )


def eps_from_x0(sched: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, x0: jnp.ndarray) -> jnp.ndarray:
    """Inverts DDPM eq. 4 for eps: ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``.

    Args:
      sched: the schedule.
      x_t: noisy data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.
      x0: clean data ``[B, H, W, C]``.

    Returns:
      eps ``[B, H, W, C]``.
    """
    return (x_t - extract(sched.sqrt_alpha_bars, t, x_t) * x0) / extract(
        sched.sqrt_one_minus_alpha_bars, t, x_t
    )


def v_from_x0_eps(
    sched: Schedule, x0: jnp.ndarray, eps: jnp.ndarray, t: jnp.ndarray
) -> jnp.ndarray:
    """The v target (Salimans & Ho 2022): ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``.

    Args:
      sched: the schedule.
      x0: clean data ``[B, H, W, C]``.
      eps: noise ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.

    Returns:
      v ``[B, H, W, C]``.
    """
    return (
        extract(sched.sqrt_alpha_bars, t, x0) * eps
        - extract(sched.sqrt_one_minus_alpha_bars, t, x0) * x0
    )


def x0_from_v(sched: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """x0 from v (Salimans & Ho 2022): ``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``.

    Args:
      sched: the schedule.
      x_t: noisy data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.
      v: v prediction ``[B, H, W, C]``.

    Returns:
      x0 ``[B, H, W, C]``.
    """
    return (
        extract(sched.sqrt_alpha_bars, t, x_t) * x_t
        - extract(sched.sqrt_one_minus_alpha_bars, t, x_t) * v
    )


def eps_from_v(sched: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """eps from v (Salimans & Ho 2022): ``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v``.

    Args:
      sched: the schedule.
      x_t: noisy data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.
      v: v prediction ``[B, H, W, C]``.

    Returns:
      eps ``[B, H, W, C]``.
    """
    return (
        extract(sched.sqrt_one_minus_alpha_bars, t, x_t) * x_t
        + extract(sched.sqrt_alpha_bars, t, x_t) * v
    )


def predict_x0_eps(
    sched: Schedule,
    output: jnp.ndarray,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    prediction_type: str,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Converts a denoiser output to the pair (x0, eps) consistent with x_t (DDPM eq. 4).

    Args:
      sched: the schedule.
      output: model output ``[B, H, W, C]`` in the ``prediction_type`` parameterisation.
      x_t: noisy data ``[B, H, W, C]``.
      t: int32 timesteps ``[B]``.
      prediction_type: "eps", "x0" or "v".

    Returns:
      ``(x0, eps)``, each ``[B, H, W, C]``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return x0_from_eps(sched, x_t, t, output), output
    if prediction_type == "x0":
        return output, eps_from_x0(sched, x_t, t, output)
    return x0_from_v(sched, x_t, t, output), eps_from_v(sched, x_t, t, output)


def target_for(
    prediction_type: str, x0: jnp.ndarray, eps: jnp.ndarray, v: jnp.ndarray
) -> jnp.ndarray:
    """Selects the regression target of a parameterisation.

    Args:
      prediction_type: "eps", "x0" or "v".
      x0: clean data ``[B, H, W, C]``.
      eps: noise ``[B, H, W, C]``.
      v: v target ``[B, H, W, C]`` (see `v_from_x0_eps`).

    Returns:
      The target ``[B, H, W, C]``.
    """
    check_prediction_type(prediction_type)
    return {"eps": eps, "x0": x0, "v": v}[prediction_type]
