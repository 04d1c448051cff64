"""Diffusion math against closed forms and independent float64 numpy computations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as dif

T = 1000


def _np_linear_alpha_bars(num_timesteps, beta_start=1e-4, beta_end=0.02):
    betas = np.array(
        [
            beta_start + (beta_end - beta_start) * i / (num_timesteps - 1)
            for i in range(num_timesteps)
        ]
    )
    return betas, np.cumprod(1.0 - betas)


# ------------------------------------------------------------------ schedules


def test_linear_schedule_alpha_bar_matches_float64_cumprod():
    sched = dif.make_schedule("linear", T)
    betas, abar = _np_linear_alpha_bars(T)
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(sched.alpha_bars, abar, rtol=1e-5)
    # Known value: alpha_bar_T of the DDPM schedule is about 4.04e-5.
    assert abs(float(sched.alpha_bars[-1]) - 4.04e-5) < 0.02e-5
    np.testing.assert_allclose(sched.alpha_bars_prev[0], 1.0)
    np.testing.assert_allclose(sched.alpha_bars_prev[1:], abar[:-1], rtol=1e-5)
    np.testing.assert_allclose(sched.snr, abar / (1.0 - abar), rtol=1e-4)
    for leaf in jax.tree.leaves(sched):
        assert leaf.dtype == jnp.float32 and leaf.shape == (T,)


def test_cosine_schedule_matches_closed_form():
    s = 0.008
    sched = dif.make_schedule("cosine", T)

    def f(u):
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    # Index i is x_{i+1} in the paper: alpha_bar = f(i + 1) / f(0).
    expected = np.array([f(i + 1) / f(0) for i in range(T)])
    betas = np.asarray(sched.betas, dtype=np.float64)
    unclipped = betas < 0.999 - 1e-6
    assert unclipped[: T - 1].all() and not unclipped[-1]  # only the final beta is clipped
    np.testing.assert_allclose(
        np.asarray(sched.alpha_bars)[unclipped], expected[unclipped], rtol=2e-4, atol=1e-7
    )
    assert float(sched.betas.max()) == pytest.approx(0.999, rel=1e-6)


def test_make_schedule_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="cosine.*linear"):
        dif.make_schedule("quadratic", 10)


# ------------------------------------------------------------------ forward process


@pytest.mark.parametrize("t", [0, 300, 999])
def test_q_sample_moments_match_closed_form(t):
    sched = dif.make_schedule("linear", T)
    n = 20_000
    x0_img = jnp.array([-0.9, -0.2, 0.5, 1.0]).reshape(1, 2, 2, 1)
    x0 = jnp.broadcast_to(x0_img, (n, 2, 2, 1))
    noise = jax.random.normal(jax.random.key(t), x0.shape)
    ts = jnp.full((n,), t, jnp.int32)
    x_t = jax.jit(dif.q_sample)(sched, x0, ts, noise)
    _, abar = _np_linear_alpha_bars(T)
    mean = np.asarray(x_t.mean(axis=0))
    var = np.asarray(x_t.var(axis=0))
    np.testing.assert_allclose(mean, math.sqrt(abar[t]) * np.asarray(x0_img[0]), atol=0.03)
    np.testing.assert_allclose(var, np.full_like(var, 1.0 - abar[t]), rtol=0.06)
    m, v, logv = dif.q_mean_variance(sched, x0[:1], ts[:1])
    np.testing.assert_allclose(m[0], math.sqrt(abar[t]) * np.asarray(x0_img[0]), rtol=1e-5)
    np.testing.assert_allclose(v.reshape(()), 1.0 - abar[t], rtol=1e-5)
    np.testing.assert_allclose(logv.reshape(()), math.log(1.0 - abar[t]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_matches_gaussian_conditioning(name):
    """q(x_{t-1} | x_t, x0) from conditioning the joint Gaussian of (x_{t-1}, x_t) given x0."""
    sched = dif.make_schedule(name, T)
    betas = np.asarray(
        dif.linear_beta_schedule(T) if name == "linear" else dif.cosine_beta_schedule(T)
    )
    ts = np.array([0, 1, 10, 500, 998])
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(len(ts), 3, 2, 1))
    x_t = rng.normal(size=x0.shape)
    exp_mean, exp_var = np.zeros_like(x0), np.zeros(len(ts))
    for i, t in enumerate(ts):
        abar_prev = np.prod(1.0 - betas[:t])  # empty product = 1 for t = 0
        alpha = 1.0 - betas[t]
        # x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) e1; x_t = sqrt(alpha) x_{t-1} + ...
        mu = np.array([math.sqrt(abar_prev), math.sqrt(abar_prev * alpha)])
        c11 = 1.0 - abar_prev
        c12 = math.sqrt(alpha) * c11
        c22 = alpha * c11 + betas[t]
        exp_mean[i] = mu[0] * x0[i] + c12 / c22 * (x_t[i] - mu[1] * x0[i])
        exp_var[i] = c11 - c12**2 / c22
    mean, var, _ = jax.jit(dif.q_posterior_mean_variance)(
        sched, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(ts)
    )
    np.testing.assert_allclose(mean, exp_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var.reshape(-1), exp_var, rtol=1e-4, atol=1e-9)
    chex.assert_shape(var, (len(ts), 1, 1, 1))


def test_parameterisation_conversions_round_trip():
    sched = dif.make_schedule("cosine", T)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.uniform(k1, (16, 4, 4, 3), minval=-1, maxval=1)
    eps = jax.random.normal(k2, x0.shape)
    t = jax.random.randint(k3, (16,), 0, T - 1)
    x_t = dif.q_sample(sched, x0, t, eps)
    ab = np.asarray(sched.alpha_bars)[np.asarray(t)].reshape(-1, 1, 1, 1)
    v_expected = np.sqrt(ab) * np.asarray(eps) - np.sqrt(1 - ab) * np.asarray(x0)
    v = dif.v_from_x0_eps(sched, x0, eps, t)
    np.testing.assert_allclose(v, v_expected, atol=1e-5)
    tol = dict(atol=5e-4, rtol=1e-4)
    chex.assert_trees_all_close(dif.x0_from_eps(sched, x_t, t, eps), x0, **tol)
    chex.assert_trees_all_close(dif.eps_from_x0(sched, x_t, t, x0), eps, **tol)
    chex.assert_trees_all_close(dif.x0_from_v(sched, x_t, t, v), x0, **tol)
    chex.assert_trees_all_close(dif.eps_from_v(sched, x_t, t, v), eps, **tol)
    for kind, out in (("eps", eps), ("x0", x0), ("v", v)):
        got_x0, got_eps = dif.predict_x0_eps(sched, out, x_t, t, kind)
        chex.assert_trees_all_close((got_x0, got_eps), (x0, eps), **tol)
        chex.assert_trees_all_close(dif.target_for(kind, x0, eps, v), out)
    with pytest.raises(ValueError, match="eps, x0, v"):
        dif.predict_x0_eps(sched, eps, x_t, t, "score")


# ------------------------------------------------------------------ losses


def _point_oracle(sched, c, prediction_type, offset=0.0, seen_t=None):
    """Exact denoiser for data concentrated at the point c (x0 = c), plus an offset."""
    abar = np.asarray(sched.alpha_bars, np.float64)

    def model_fn(x_t, t):
        if seen_t is not None:
            seen_t.append(np.asarray(t))
        a = jnp.asarray(abar, jnp.float32)[t].reshape(-1, 1, 1, 1)
        eps = (x_t - jnp.sqrt(a) * c) / jnp.sqrt(1 - a)
        out = {
            "eps": eps,
            "x0": jnp.full_like(x_t, c),
            "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * c,
        }
        return out[prediction_type] + offset

    return model_fn


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_loss_is_zero_for_exact_denoiser(prediction_type):
    sched = dif.make_schedule("linear", 100)
    x0 = jnp.full((8, 4, 4, 3), 0.25)
    model_fn = _point_oracle(sched, 0.25, prediction_type)
    loss, per_ex = jax.jit(
        lambda r: dif.diffusion_loss(sched, model_fn, x0, r, prediction_type=prediction_type)
    )(jax.random.key(0))
    chex.assert_shape(per_ex, (8,))
    assert float(loss) < 1e-6


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_min_snr_weights_per_target(prediction_type):
    """An output off by exactly 1 everywhere has MSE 1, so the per-example loss is the weight."""
    sched = dif.make_schedule("linear", 100)
    betas, abar = _np_linear_alpha_bars(100)
    seen_t = []
    model_fn = _point_oracle(sched, -0.5, prediction_type, offset=1.0, seen_t=seen_t)
    x0 = jnp.full((64, 2, 2, 1), -0.5)
    loss, per_ex = dif.diffusion_loss(
        sched, model_fn, x0, jax.random.key(3), prediction_type, "min_snr", min_snr_gamma=5.0
    )
    snr = abar[seen_t[0]] / (1 - abar[seen_t[0]])
    expected = {
        "eps": np.minimum(snr, 5.0) / snr,
        "x0": np.minimum(snr, 5.0),
        "v": np.minimum(snr, 5.0) / (snr + 1.0),
    }[prediction_type]
    np.testing.assert_allclose(per_ex, expected, rtol=1e-3)
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-3)
    # Timesteps cover the range [0, T).
    assert seen_t[0].min() >= 0 and seen_t[0].max() < 100 and len(np.unique(seen_t[0])) > 20
    _, simple = dif.diffusion_loss(sched, model_fn, x0, jax.random.key(3), prediction_type)
    np.testing.assert_allclose(simple, np.ones(64), rtol=1e-3)


def test_loss_simple_eps_with_zero_model_and_gradients():
    sched = dif.make_schedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(0), (32, 8, 8, 3), minval=-1, maxval=1)

    def loss_fn(w):
        return dif.diffusion_loss(sched, lambda x, t: w * x, x0, jax.random.key(5))[0]

    # With a zero model the eps-MSE is E[eps^2] = 1.
    assert abs(float(loss_fn(0.0)) - 1.0) < 0.05
    g = jax.grad(loss_fn)(0.0)
    assert np.isfinite(g) and float(g) < 0.0  # w > 0 correlates with eps: the loss decreases


def test_logit_normal_timesteps_match_closed_form_cdf():
    """P(t <= k) = P(sigmoid(m + s n) < (k + 1) / T) = Phi((logit((k + 1) / T) - m) / s)."""
    num, m, s = 1000, 0.5, 1.0
    t = np.asarray(
        jax.jit(lambda r: dif.sample_timesteps(r, 200_000, num, "logit_normal", m, s))(
            jax.random.key(0)
        )
    )
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() < num
    for k in (49, 249, 499, 749, 949):
        u = (k + 1) / num
        cdf = 0.5 * (1 + math.erf((math.log(u / (1 - u)) - m) / (s * math.sqrt(2))))
        assert abs(np.mean(t <= k) - cdf) < 0.005, (k, np.mean(t <= k), cdf)
    # Uniform: every step equally likely (P(t <= k) = (k + 1) / T).
    uni = np.asarray(dif.sample_timesteps(jax.random.key(1), 200_000, num))
    for k in (49, 499, 949):
        assert abs(np.mean(uni <= k) - (k + 1) / num) < 0.005
    # The loss draws its timesteps this way.
    seen = []

    def model_fn(x, t):
        seen.append(np.asarray(t))
        return x

    x0 = jnp.zeros((4096, 1, 1, 1))
    dif.diffusion_loss(
        dif.make_schedule("linear", num),
        model_fn,
        x0,
        jax.random.key(2),
        "eps",
        "simple",
        timestep_sampling="logit_normal",
        logit_mean=m,
        logit_std=s,
    )
    assert abs(np.median(seen[0]) / num - 1 / (1 + math.exp(-m))) < 0.02


def test_loss_rejects_unknown_names():
    sched = dif.make_schedule("linear", 10)
    x0 = jnp.zeros((2, 2, 2, 1))
    with pytest.raises(ValueError, match="min_snr"):
        dif.diffusion_loss(sched, lambda x, t: x, x0, jax.random.key(0), weighting="p2")
    with pytest.raises(ValueError, match="eps, x0, v"):
        dif.diffusion_loss(sched, lambda x, t: x, x0, jax.random.key(0), prediction_type="score")
    with pytest.raises(ValueError, match="uniform, logit_normal"):
        dif.diffusion_loss(sched, lambda x, t: x, x0, jax.random.key(0), timestep_sampling="beta")
    with pytest.raises(ValueError, match="logit_std"):
        dif.sample_timesteps(jax.random.key(0), 2, 10, "logit_normal", logit_std=0.0)


# ------------------------------------------------------------------ classifier-free guidance


class _TokenRecorder:
    """Stands in for the DDPM pipeline's UNet: predicts zeros and records, on each call, the
    tokens the train step conditions it on."""

    def __init__(self):
        self.seen = []

    def apply(self, variables, x_t, t, tokens, train=False, rngs=None):
        del t, train, rngs
        jax.debug.callback(lambda tok: self.seen.append(np.asarray(tok)), tokens)
        return jnp.zeros_like(x_t) * variables["params"]["w"]


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3])
def test_train_step_drops_each_caption_with_probability_p(p):
    """Classifier-free guidance training (Ho & Salimans 2022) replaces each example's caption by
    the empty one independently with probability ``diffusion.cond_drop_prob``: per batch the
    number dropped is Binomial(B, p) (checked against its two-sided 1e-6 quantiles, which
    dropping all or none of a batch at once, or dropping with 1 - p, miss by far)."""
    from helpers import experiment_config
    from scipy import stats

    from jaxgen.data import tokenizer
    from jaxgen.pipelines import state as state_lib
    from jaxgen.pipelines.ddpm import DDPMPipeline

    config = experiment_config("ddpm", "smoke")
    config.diffusion.cond_drop_prob = p
    pipe = DDPMPipeline(config)
    assert pipe.conditional and not pipe.freeze_text
    recorder = pipe.model = _TokenRecorder()
    b, steps = 2000, 3
    tokens = pipe.tokenize([f"caption {i}" for i in range(b)])
    empty = tokenizer.encode("", int(config.data.max_text_len))
    assert not (tokens == empty).all(-1).any()
    params = {"unet": {"w": jnp.ones(())}}
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"unet": pipe.tx.init(params["unet"])},
        ema_params=params,
    )
    batch = {"image": np.zeros((b, 1, 1, 3), np.uint8), "tokens": tokens}
    step = jax.jit(pipe.train_step)
    lo, hi = stats.binom.interval(1 - 1e-6, b, p)
    dropped_sets = []
    for i in range(steps):
        recorder.seen.clear()
        jax.block_until_ready(step(state, batch, jax.random.key(i)))
        assert recorder.seen, "the model never saw the tokens"
        for other in recorder.seen[1:]:  # every call of one step sees the same captions
            np.testing.assert_array_equal(other, recorder.seen[0])
        seen = recorder.seen[0]
        dropped = (seen == empty).all(-1)
        # A dropped caption is the empty one; every other is its own example's, unchanged.
        np.testing.assert_array_equal(seen[~dropped], tokens[~dropped])
        assert lo <= dropped.sum() <= hi, (p, i, int(dropped.sum()), (lo, hi))
        dropped_sets.append(np.flatnonzero(dropped))
    if p == 0.0:
        assert all(len(s) == 0 for s in dropped_sets)
    else:  # each step draws its own examples to drop
        assert not np.array_equal(dropped_sets[0], dropped_sets[1])
