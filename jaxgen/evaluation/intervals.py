"""95% intervals for evaluation results, so that a difference smaller than the noise of the
prompts drawn is not read as a gain.

Every interval is written next to its value as ``<name>_lo`` and ``<name>_hi``:

- a proportion (an accuracy, R-precision): the Wilson score interval of k successes in n;
- a mean (CLIP score): the normal approximation, mean +- 1.96 standard errors;
- any other statistic of the samples (a Frechet distance): the bootstrap, its percentile
  interval shifted by the resampling bias.
"""

from collections.abc import Callable, Mapping

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (NaNs for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval always holds p (rounding could put a bound a hair past p at k = 0 or n).
    return float(min(max(centre - half, 0.0), p)), float(max(min(centre + half, 1.0), p))


def proportion(name: str, outcomes) -> dict[str, float]:
    """``{name: k / n, name_lo, name_hi}`` of per-item outcomes (bools or 0/1)."""
    outcomes = np.asarray(outcomes, np.float64).reshape(-1)
    n = outcomes.size
    value = float(outcomes.mean()) if n else float("nan")
    lo, hi = wilson(float(outcomes.sum()), n)
    return {name: value, f"{name}_lo": lo, f"{name}_hi": hi}


def rate(name: str, value: float, n: int) -> dict[str, float]:
    """``proportion`` from a rate already computed over ``n`` items (``value * n`` successes)."""
    lo, hi = wilson(round(float(value) * n), n)
    return {name: float(value), f"{name}_lo": lo, f"{name}_hi": hi}


def mean(name: str, values, z: float = Z95) -> dict[str, float]:
    """``{name: mean, name_lo, name_hi}``: the mean of per-item values with the normal
    approximation of its 95% interval (NaN interval for fewer than 2 values)."""
    values = np.asarray(values, np.float64).reshape(-1)
    m = float(values.mean()) if values.size else float("nan")
    if values.size < 2:
        return {name: m, f"{name}_lo": float("nan"), f"{name}_hi": float("nan")}
    half = z * float(values.std(ddof=1)) / np.sqrt(values.size)
    return {name: m, f"{name}_lo": m - half, f"{name}_hi": m + half}


def bootstrap(
    name: str,
    statistic: Callable[..., float],
    *samples: np.ndarray,
    num_resamples: int = 200,
    seed: int = 0,
    floor: float | None = None,
) -> dict[str, float]:
    """``{name: statistic(*samples), name_lo, name_hi}`` with a bias-shifted percentile
    bootstrap: each sample (e.g. generated and real features) is resampled with replacement on
    its own, and the 2.5-97.5 percentile range of the draws is moved by their bias (median of
    the draws minus the value). A resample repeats items, which inflates a statistic such as a
    Frechet distance: the plain percentile interval of a Frechet distance can lie wholly above
    the value it is meant to hold. The shift can carry the lower end below a bound the statistic
    cannot cross (a distance near 0): ``floor`` clips it there."""
    rng = np.random.default_rng(seed)
    value = float(statistic(*samples))
    draws = [
        statistic(*(s[rng.integers(len(s), size=len(s))] for s in samples))
        for _ in range(num_resamples)
    ]
    lo, mid, hi = np.percentile(draws, [2.5, 50.0, 97.5])
    lo = value - (mid - lo)
    return {
        name: value,
        f"{name}_lo": float(lo if floor is None else max(lo, floor)),
        f"{name}_hi": float(value + (hi - mid)),
    }


def summarize(outcomes: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``proportion`` of every named outcome array, merged."""
    out = {}
    for name, values in outcomes.items():
        out.update(proportion(name, values))
    return out


def is_interval_key(key: str) -> bool:
    """Whether a results key is an interval bound rather than a value."""
    return key.endswith(("_lo", "_hi"))


def format_result(results: Mapping[str, float], key: str, digits: int = 3) -> str:
    """``"0.894 [0.851, 0.926]"``: a value with its interval when the results have one."""
    value = f"{results[key]:.{digits}f}"
    if f"{key}_lo" in results:
        value += f" [{results[f'{key}_lo']:.{digits}f}, {results[f'{key}_hi']:.{digits}f}]"
    return value
