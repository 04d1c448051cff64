"""Samplers: one-step formulas, guidance, toy problems with an exact denoiser, loop structure."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as dif

MU, STD = 0.3, 0.15  # toy data distribution N(MU, STD^2), independently per pixel


def gaussian_oracle(sched, prediction_type="eps", mu=MU, std=STD):
    """Exact denoiser for data x0 ~ N(mu, std^2) per pixel.

    With x_t = sqrt(a) x0 + sqrt(1 - a) eps, (eps, x_t) are jointly Gaussian and
    E[eps | x_t] = sqrt(1 - a) / (a std^2 + 1 - a) (x_t - sqrt(a) mu),
    E[x0 | x_t] = mu + sqrt(a) std^2 / (a std^2 + 1 - a) (x_t - sqrt(a) mu).
    """
    abar = jnp.asarray(np.asarray(sched.alpha_bars, np.float64), jnp.float32)

    @functools.partial(jax.jit, inline=False)
    def toy_model(x_t, t):
        a = abar[t].reshape(-1, 1, 1, 1)
        var_t = a * std**2 + 1.0 - a
        resid = x_t - jnp.sqrt(a) * mu
        eps = jnp.sqrt(1.0 - a) / var_t * resid
        x0 = mu + jnp.sqrt(a) * std**2 / var_t * resid
        v = jnp.sqrt(a) * eps - jnp.sqrt(1.0 - a) * x0
        return {"eps": eps, "x0": x0, "v": v}[prediction_type]

    return toy_model


# ------------------------------------------------------------------ one-step formulas


def _step_inputs(sched, t_val=400, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x_t = jax.random.normal(k1, (4, 3, 3, 2))
    eps_hat = jax.random.normal(k2, x_t.shape)
    t = jnp.full((4,), t_val, jnp.int32)
    return x_t, eps_hat, t


@pytest.mark.parametrize("t_val", [1, 400, 999])
def test_ancestral_step_equals_algorithm_2(t_val):
    sched = dif.make_schedule("linear", 1000)
    x_t, eps_hat, t = _step_inputs(sched, t_val)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    b, a = betas[t_val], abar[t_val]
    # Algorithm 2 line 4: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps) + sigma z.
    expected = (np.asarray(x_t) - b / np.sqrt(1 - a) * np.asarray(eps_hat)) / np.sqrt(1 - b)
    for variance, var in (("beta", b), ("posterior", b * (1 - abar[t_val - 1]) / (1 - a))):
        mean, std = dif.ancestral_step_mean_std(
            sched, eps_hat, x_t, t, "eps", variance=variance, clip_x0=False
        )
        np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(std).reshape(-1), np.sqrt(var), rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_one_step_equals_ancestral_posterior(prediction_type, clip_x0):
    sched = dif.make_schedule("cosine", 1000)
    x_t, out, t = _step_inputs(sched, 400, seed=1)
    out = out * 2.0  # large enough that clipping is active for the x0 parameterisation
    m_anc, s_anc = dif.ancestral_step_mean_std(
        sched, out, x_t, t, prediction_type, variance="posterior", clip_x0=clip_x0
    )
    m_ddim, s_ddim = dif.ddim_step_mean_std(
        sched, out, x_t, t, t - 1, eta=1.0, prediction_type=prediction_type, clip_x0=clip_x0
    )
    np.testing.assert_allclose(m_ddim, m_anc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_ddim, s_anc, rtol=1e-4)


def test_ddim_eta0_step_is_deterministic_eq_12():
    sched = dif.make_schedule("linear", 1000)
    x_t, eps_hat, t = _step_inputs(sched, 600, seed=2)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    a, a_prev = abar[600], abar[550]
    x0_hat = (np.asarray(x_t) - np.sqrt(1 - a) * np.asarray(eps_hat)) / np.sqrt(a)
    expected = np.sqrt(a_prev) * x0_hat + np.sqrt(1 - a_prev) * np.asarray(eps_hat)
    mean, std = dif.ddim_step_mean_std(sched, eps_hat, x_t, t, t - 50, eta=0.0, clip_x0=False)
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, 0.0)
    # t_prev = -1 goes to the data: the mean is the predicted x0.
    mean, std = dif.ddim_step_mean_std(sched, eps_hat, x_t, t, t * 0 - 1, eta=1.0, clip_x0=False)
    np.testing.assert_allclose(mean, x0_hat, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, 0.0)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_stochastic_skip_step_matches_eq_12_and_16(eta):
    """DDIM (Song et al. 2021) from t=600 to 550 with eta > 0, in numpy on the linear schedule:
    sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar') (eq. 16), and
    x' = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps_hat + sigma z (eq. 12)."""
    sched = dif.make_schedule("linear", 1000)
    x_t, eps_hat, t = _step_inputs(sched, 600, seed=3)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    a, a_prev = abar[600], abar[550]
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev)
    x0_hat = (np.asarray(x_t) - np.sqrt(1 - a) * np.asarray(eps_hat)) / np.sqrt(a)
    expected = np.sqrt(a_prev) * x0_hat + np.sqrt(1 - a_prev - sigma**2) * np.asarray(eps_hat)
    mean, std = dif.ddim_step_mean_std(sched, eps_hat, x_t, t, t - 50, eta=eta, clip_x0=False)
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(std).reshape(-1), sigma, rtol=1e-4)


def test_ddim_timesteps_evenly_spaced_and_distinct():
    steps = dif.ddim_timesteps(1000, 50)
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) == 50
    assert np.all(np.diff(steps) < 0)
    np.testing.assert_allclose(np.diff(steps), -999 / 49, atol=1.0)
    for n in (1, 2, 7, 999, 1000):
        s = dif.ddim_timesteps(1000, n)
        assert len(np.unique(s)) == n
    with pytest.raises(ValueError):
        dif.ddim_timesteps(1000, 1001)


# ------------------------------------------------------------------ guidance


def test_classifier_free_guidance_formula_and_batched_call():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (3, 2, 2, 1))
    t = jnp.array([5, 6, 7], jnp.int32)
    cond = jax.random.normal(k2, (3, 4))
    uncond = jnp.zeros((1, 4))
    w = jax.random.normal(k3, (4,))
    calls = []

    def apply_fn(x_t, t, c):
        calls.append(x_t.shape[0])
        return x_t * (c @ w)[:, None, None, None] + t[:, None, None, None] * 0.01

    cond_out = apply_fn(x, t, cond)
    uncond_out = apply_fn(x, t, jnp.zeros((3, 4)))
    calls.clear()
    for scale in (0.0, 1.0, 7.5):
        got = dif.guided_model_fn(apply_fn, cond, uncond, scale)(x, t)
        expected = np.asarray(uncond_out) + scale * (np.asarray(cond_out) - np.asarray(uncond_out))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert calls == [6, 6, 6]  # one batched call of size 2B per evaluation
    chex.assert_trees_all_close(dif.classifier_free_guidance(cond_out, uncond_out, 1.0), cond_out)


# ------------------------------------------------------------------ samplers on toy problems


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_samplers_recover_single_point(prediction_type):
    """Data at one point c: the exact denoiser predicts x0 = c, so every sampler returns c."""
    sched = dif.make_schedule("linear", 200)
    model = gaussian_oracle(sched, prediction_type, mu=-0.4, std=0.0)
    shape = (4, 2, 2, 1)
    x = dif.ancestral_sample(model, sched, shape, jax.random.key(0), prediction_type)
    np.testing.assert_allclose(x, -0.4, atol=1e-4)
    x = dif.ddim_sample(model, sched, shape, jax.random.key(0), 10, 0.5, prediction_type)
    np.testing.assert_allclose(x, -0.4, atol=1e-4)


def _expected_law(kind, num_steps, eta=1.0, variance="posterior", mu=MU, std=STD):
    """Mean and std of the sampler output for N(mu, std^2) data, propagated in float64.

    With the exact denoiser every step is affine in x plus Gaussian noise, so the law of the
    output is Gaussian and follows from the published step formulas (DDPM eqs. 7, 11; DDIM
    eqs. 12, 16) applied to the mean and variance, starting from x_T ~ N(0, 1).
    """
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    if kind == "ancestral":
        steps = np.arange(999, -1, -1)
    else:
        steps = np.round(np.linspace(999, 0, num_steps)).astype(int)
    m, v = 0.0, 1.0
    for k, t in enumerate(steps):
        a = abar[t]
        a_prev = abar[steps[k + 1]] if k + 1 < len(steps) else 1.0
        var_t = a * std**2 + 1 - a
        gain_x0 = np.sqrt(a) * std**2 / var_t  # E[x0 | x] = mu + gain_x0 (x - sqrt(a) mu)
        gain_eps = np.sqrt(1 - a) / var_t  # E[eps | x] = gain_eps (x - sqrt(a) mu)
        if kind == "ancestral":
            beta = betas[t]
            c1, c2 = np.sqrt(a_prev) * beta / (1 - a), np.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
            post_var = (1 - a_prev) / (1 - a) * beta
            sig2 = 0.0 if t == 0 else (beta if variance == "beta" else post_var)
            gain = c1 * gain_x0 + c2
            new_m = c1 * (mu - gain_x0 * np.sqrt(a) * mu) + gain * m
        else:
            sig2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
            dir_c = np.sqrt(1 - a_prev - sig2)
            gain = np.sqrt(a_prev) * gain_x0 + dir_c * gain_eps
            new_m = np.sqrt(a_prev) * mu + gain * (m - np.sqrt(a) * mu)
        m, v = new_m, gain**2 * v + sig2
    return m, np.sqrt(v)


@pytest.mark.parametrize(
    "sampler",
    [
        dict(kind="ancestral", variance="beta"),
        dict(kind="ancestral", variance="posterior", prediction_type="x0"),
        dict(kind="ddim", eta=0.0, num_steps=50),
        dict(kind="ddim", eta=1.0, num_steps=50, prediction_type="v"),
        dict(kind="ddim", eta=0.0, num_steps=1000),
    ],
    ids=["ancestral-beta", "ancestral-posterior-x0", "ddim50-eta0", "ddim50-eta1-v", "ddim1000"],
)
def test_samplers_recover_gaussian_data(sampler):
    opts = dict(sampler)
    kind = opts.pop("kind")
    prediction_type = opts.pop("prediction_type", "eps")
    sched = dif.make_schedule("linear", 1000)
    model = gaussian_oracle(sched, prediction_type)
    shape = (256, 4, 4, 1)  # 4096 independent scalar samples
    sample_fn = dif.ancestral_sample if kind == "ancestral" else dif.ddim_sample
    fn = functools.partial(
        sample_fn, model, shape=shape, prediction_type=prediction_type, clip_x0=False, **opts
    )
    x = np.asarray(jax.jit(fn)(sched, rng=jax.random.key(42)))
    assert x.shape == shape and np.isfinite(x).all()
    # Standard errors with 4096 samples: ~0.0023 on the mean, ~1.1% on the std.
    exp_mean, exp_std = _expected_law(
        kind, opts.get("num_steps"), opts.get("eta", 1.0), opts.get("variance", "posterior")
    )
    assert abs(x.mean() - exp_mean) < 0.01, (x.mean(), exp_mean)
    assert abs(x.std() - exp_std) < 0.04 * exp_std, (x.std(), exp_std)
    # The data distribution itself is recovered; 50 DDIM steps are visibly coarser on this
    # narrow Gaussian (std ~0.127 for eta=0, ~0.113 for eta=1: a discretisation error).
    assert abs(x.mean() - MU) < 0.01
    tol = 0.3 if opts.get("num_steps") == 50 else 0.05
    assert abs(x.std() - STD) < tol * STD, x.std()


# ------------------------------------------------------------------ loop structure


def _count_model_calls(jaxpr, in_loop=False):
    """Counts calls of the jitted toy model as (outside a loop, inside a loop)."""
    outside = inside = 0
    for eqn in jaxpr.eqns:
        if eqn.params.get("name") == "toy_model":
            inside, outside = (inside + 1, outside) if in_loop else (inside, outside + 1)
            continue
        loop = in_loop or eqn.primitive.name in ("while", "scan")
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub_jaxpr = getattr(sub, "jaxpr", sub)
                if hasattr(sub_jaxpr, "eqns"):
                    o, i = _count_model_calls(sub_jaxpr, loop)
                    outside, inside = outside + o, inside + i
    return outside, inside


@pytest.mark.parametrize("kind", ["ancestral", "ddim"])
def test_sampler_is_one_loop_with_one_model_call(kind):
    sched = dif.make_schedule("linear", 1000)
    model = gaussian_oracle(sched)
    if kind == "ancestral":
        fn = lambda s, r: dif.ancestral_sample(model, s, (2, 4, 4, 1), r)
    else:
        fn = lambda s, r: dif.ddim_sample(model, s, (2, 4, 4, 1), r, num_steps=20)
    jaxpr = jax.make_jaxpr(fn)(sched, jax.random.key(0))
    assert _count_model_calls(jaxpr.jaxpr) == (0, 1)


def test_sampler_rejects_unknown_options():
    sched = dif.make_schedule("linear", 10)
    model = lambda x, t: x
    with pytest.raises(ValueError, match="beta, posterior"):
        dif.ancestral_sample(model, sched, (1, 2, 2, 1), jax.random.key(0), variance="large")
    with pytest.raises(ValueError, match="eps, x0, v"):
        dif.ddim_sample(model, sched, (1, 2, 2, 1), jax.random.key(0), 5, prediction_type="s")


def test_ddim_inversion_then_sampling_returns_the_data():
    """With the exact denoiser of Gaussian data (x0 ~ N(0, s^2)), the DDIM ODE is smooth: inverting
    then sampling with eta 0 returns x0, the error shrinking with the steps."""
    sched = dif.make_schedule("cosine", 1000)
    s2 = 0.25

    def model_fn(x, t):  # E[eps | x_t] for Gaussian data
        abar = sched.alpha_bars[t][:, None]
        return jnp.sqrt(1 - abar) * x / (abar * s2 + 1 - abar)

    x0 = jax.random.normal(jax.random.key(0), (4, 8)) * np.sqrt(s2)
    errors = []
    for n in (10, 50, 200):
        x_t = dif.ddim_invert(model_fn, sched, x0, n)
        back = dif.ddim_sample(
            model_fn, sched, x0.shape, jax.random.key(1), n, clip_x0=False, x_init=x_t
        )
        errors.append(float(jnp.abs(back - x0).max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors
    # x_T of the data is (close to) the data whitened: x0 / s at abar_T ~ 0.
    np.testing.assert_allclose(x_t, x0 / np.sqrt(s2), atol=0.05)
