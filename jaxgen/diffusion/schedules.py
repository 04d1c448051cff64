"""Noise schedules for discrete-time diffusion (DDPM, Ho et al. 2020; Nichol & Dhariwal 2021).

Time is discrete, ``t`` in ``[0, T)``, where ``t = 0`` is the least noisy step (``x_1`` in the
DDPM paper) and ``t = T - 1`` the noisiest (``x_T``). Every per-step quantity is a float32 array of
shape ``[T]`` indexed by ``t``. Quantities are computed in float64 numpy and cast once, so that
products such as ``alpha_bar`` do not accumulate float32 rounding over a thousand steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.struct
import jax.numpy as jnp
import numpy as np


def linear_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Linear betas of DDPM (Ho et al. 2020, Sec. 4): ``beta_t`` evenly from start to end.

    Args:
      num_timesteps: T, the number of diffusion steps.
      beta_start: beta of the least noisy step (t = 0).
      beta_end: beta of the noisiest step (t = T - 1).

    Returns:
      float64 numpy array ``[T]`` of betas.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_beta_schedule(
    num_timesteps: int, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
    """Cosine schedule of Improved DDPM (Nichol & Dhariwal 2021, eq. 17).

    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)`` and
    ``beta_t = min(1 - alpha_bar(t + 1) / alpha_bar(t), max_beta)``, so that step index ``i``
    (``x_{i+1}`` in the paper) has ``alpha_bar = f(i + 1) / f(0)`` wherever no beta is clipped.

    Args:
      num_timesteps: T, the number of diffusion steps.
      s: small offset that keeps beta from being too small near t = 0.
      max_beta: clip for betas, avoiding the singularity at t = T.

    Returns:
      float64 numpy array ``[T]`` of betas.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


@flax.struct.dataclass
class Schedule:
    """All per-step constants of a discrete diffusion process; each a float32 array ``[T]``.

    Attributes:
      betas: ``beta_t``, the forward step variance (DDPM eq. 2).
      alphas: ``alpha_t = 1 - beta_t``.
      alpha_bars: ``alpha_bar_t = prod_{s <= t} alpha_s`` (DDPM eq. 4).
      alpha_bars_prev: ``alpha_bar_{t-1}``, with ``alpha_bar_{-1} = 1`` (the clean data).
      sqrt_alpha_bars: ``sqrt(alpha_bar_t)``.
      sqrt_one_minus_alpha_bars: ``sqrt(1 - alpha_bar_t)``.
      posterior_variance: ``beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t``
        (DDPM eq. 7); zero at t = 0.
      posterior_log_variance_clipped: ``log beta~_t`` with the t = 0 entry replaced by the t = 1
        entry, so that the log is finite.
      posterior_mean_coef1: coefficient of x0 in ``mu~_t`` (DDPM eq. 7),
        ``sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)``.
      posterior_mean_coef2: coefficient of x_t in ``mu~_t`` (DDPM eq. 7),
        ``sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)``.
      snr: signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)``.
    """

    betas: jnp.ndarray
    alphas: jnp.ndarray
    alpha_bars: jnp.ndarray
    alpha_bars_prev: jnp.ndarray
    sqrt_alpha_bars: jnp.ndarray
    sqrt_one_minus_alpha_bars: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    snr: jnp.ndarray

    @property
    def num_timesteps(self) -> int:
        """T, a static Python int even when the schedule is traced."""
        return self.betas.shape[0]


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    """Builds a `Schedule` from betas (DDPM eqs. 4, 6-7), computing in float64.

    Args:
      betas: array ``[T]`` of betas in (0, 1).

    Returns:
      A `Schedule` of float32 arrays ``[T]``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if np.any(betas <= 0.0) or np.any(betas >= 1.0):
        raise ValueError("betas must lie in the open interval (0, 1)")
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
    # beta~_0 = 0; its log is replaced by log beta~_1 (as in the DDPM reference code).
    if betas.shape[0] > 1:
        log_var_source = np.concatenate([posterior_variance[1:2], posterior_variance[1:]])
    else:
        log_var_source = betas
    fields = dict(
        betas=betas,
        alphas=alphas,
        alpha_bars=alpha_bars,
        alpha_bars_prev=alpha_bars_prev,
        sqrt_alpha_bars=np.sqrt(alpha_bars),
        sqrt_one_minus_alpha_bars=np.sqrt(1.0 - alpha_bars),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(log_var_source),
        posterior_mean_coef1=betas * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars),
        posterior_mean_coef2=(1.0 - alpha_bars_prev) * np.sqrt(alphas) / (1.0 - alpha_bars),
        snr=alpha_bars / (1.0 - alpha_bars),
    )
    return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in fields.items()})


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
}


def make_schedule(name: str, num_timesteps: int) -> Schedule:
    """Builds the `Schedule` of a named beta schedule.

    Args:
      name: one of ``BETA_SCHEDULES`` ("linear", "cosine").
      num_timesteps: T, the number of diffusion steps.

    Returns:
      A `Schedule` of float32 arrays ``[T]``.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in BETA_SCHEDULES:
        raise ValueError(
            f"Unknown beta schedule {name!r}; valid names: {', '.join(sorted(BETA_SCHEDULES))}"
        )
    return schedule_from_betas(BETA_SCHEDULES[name](num_timesteps))
