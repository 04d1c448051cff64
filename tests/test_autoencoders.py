"""The autoencoder family: bottleneck math against numpy/scipy, networks, tokenizer, smoke runs."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import experiment_config, fake_vgg_file, run_cli
from scipy import stats

import jaxgen
from jaxgen.config import load_experiment
from jaxgen.models import bottlenecks as bn
from jaxgen.models.autoencoder import CellEncoder, Decoder, Encoder, PatchDiscriminator
from jaxgen.pipelines import autoencoder as ae
from jaxgen.pipelines import build_pipeline

KINDS = ("vae", "vqvae", "vqgan", "dvae")


# -- bottleneck math ------------------------------------------------------------------------
def test_nearest_codes_match_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 7, 6)).astype(np.float32)
    codebook = rng.normal(size=(11, 6)).astype(np.float32)
    got = np.asarray(bn.nearest_codes(jnp.asarray(z), jnp.asarray(codebook)))
    dists = ((z[..., None, :] - codebook) ** 2).sum(-1)  # [3, 5, 7, 11]
    np.testing.assert_array_equal(got, dists.argmin(-1))
    assert got.dtype == np.int32 and got.shape == (3, 5, 7)


def test_straight_through_gradient_is_identity_on_encoder_output():
    z_e = jnp.array([[0.3, -1.2], [2.0, 0.5]])
    z_q = jnp.array([[1.0, 1.0], [-1.0, 0.0]])
    w = jnp.array([[1.5, -2.0], [0.25, 3.0]])
    out = bn.straight_through(z_e, z_q)
    np.testing.assert_allclose(out, z_q)  # forward: the code
    grad = jax.grad(lambda z: jnp.sum(w * bn.straight_through(z, z_q)))(z_e)
    np.testing.assert_allclose(grad, w)  # backward: identity


def test_vq_terms_reach_the_right_parameters_with_beta_on_commitment():
    """d/dz_e of ``codebook + beta * commitment`` is ``beta * 2 (z_e - z_q) / N`` (not 2 (...)),
    and d/de_k is ``2 sum_{j -> k} (e_k - z_j) / N``: the codebook term moves codes only."""
    rng = np.random.default_rng(1)
    z_e = rng.normal(size=(6, 3)).astype(np.float32)
    codebook = rng.normal(size=(4, 3)).astype(np.float32)
    beta = 0.25
    idx = ((z_e[:, None] - codebook) ** 2).sum(-1).argmin(-1)

    def loss(z, cb):
        z_q = cb[bn.nearest_codes(z, cb)]
        codebook_term, commitment = bn.vq_losses(z, z_q)
        return codebook_term + beta * commitment

    g_z, g_cb = jax.grad(loss, argnums=(0, 1))(jnp.asarray(z_e), jnp.asarray(codebook))
    n = z_e.shape[0]
    np.testing.assert_allclose(g_z, beta * 2 * (z_e - codebook[idx]) / n, rtol=1e-5)
    want_cb = np.zeros_like(codebook)
    for j, k in enumerate(idx):
        want_cb[k] += 2 * (codebook[k] - z_e[j]) / n
    np.testing.assert_allclose(g_cb, want_cb, rtol=1e-5, atol=1e-7)
    # Each term alone: the codebook term has no encoder gradient, the commitment no code one.
    g_z_cb = jax.grad(lambda z: bn.vq_losses(z, jnp.asarray(codebook)[idx])[0])(jnp.asarray(z_e))
    g_cb_commit = jax.grad(lambda cb: bn.vq_losses(jnp.asarray(z_e), cb[idx])[1])(
        jnp.asarray(codebook)
    )
    np.testing.assert_array_equal(g_z_cb, 0.0)
    np.testing.assert_array_equal(g_cb_commit, 0.0)


def test_ema_codebook_update_matches_hand_computation():
    stats_in = {
        "cluster_size": np.array([2.0, 0.0, 1.0], np.float32),
        "embed_sum": np.array([[2.0, 2.0], [0.0, 0.0], [-1.0, 3.0]], np.float32),
    }
    z = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, -1.0]], np.float32)
    idx = np.array([0, 0, 2])
    d, eps = 0.9, 1e-5
    new, codebook = bn.ema_codebook_update(
        {k: jnp.asarray(v) for k, v in stats_in.items()}, jnp.asarray(z), jnp.asarray(idx), d, eps
    )
    # By hand: code 0 gets z0 + z1 = (4, 2) twice-counted, code 2 gets z2 = (0, -1) once.
    n = np.array([0.9 * 2 + 0.1 * 2, 0.0, 0.9 * 1 + 0.1 * 1])
    m = np.array([[0.9 * 2 + 0.1 * 4, 0.9 * 2 + 0.1 * 2], [0, 0], [-0.9, 0.9 * 3 - 0.1]])
    np.testing.assert_allclose(new["cluster_size"], n, rtol=1e-6)
    np.testing.assert_allclose(new["embed_sum"], m, rtol=1e-6)
    total = n.sum()
    smoothed = (n + eps) / (total + 3 * eps) * total
    np.testing.assert_allclose(codebook, m / smoothed[:, None], rtol=1e-5)


def test_dead_codes_are_restarted_from_encoder_outputs():
    codebook = jnp.arange(12.0).reshape(4, 3)
    usage = jnp.array([0.5, 0.001, 0.3, 0.0])
    z = 100.0 + jnp.arange(15.0).reshape(5, 3)
    new, dead = bn.restart_dead_codes(codebook, usage, z, jax.random.key(0), threshold=0.01)
    np.testing.assert_array_equal(dead, [False, True, False, True])
    np.testing.assert_array_equal(new[0], codebook[0])
    np.testing.assert_array_equal(new[2], codebook[2])
    for k in (1, 3):
        assert any(np.array_equal(new[k], row) for row in np.asarray(z)), new[k]


def test_usage_stats_and_counts():
    counts = bn.code_counts(jnp.array([[0, 1], [2, 3]]), 4)
    np.testing.assert_array_equal(counts, [1, 1, 1, 1])
    s = bn.usage_stats(counts)
    assert float(s["usage"]) == 1.0 and float(s["perplexity"]) == pytest.approx(4.0)
    s = bn.usage_stats(jnp.array([5.0, 0.0, 0.0, 0.0]))
    assert float(s["usage"]) == 0.25 and float(s["perplexity"]) == pytest.approx(1.0)


def test_gumbel_softmax_limits():
    logits = jnp.log(jnp.array([[0.1, 0.6, 0.3]] * 2000))
    rng = jax.random.key(0)
    cold = bn.gumbel_softmax(logits, rng, temperature=1e-3)
    # Low temperature: one-hot on argmax(logits + g), with the same Gumbel noise.
    g = jax.random.gumbel(rng, logits.shape)
    want = np.asarray(jax.nn.one_hot(jnp.argmax(logits + g, -1), 3))
    np.testing.assert_array_equal(np.argmax(cold, -1), want.argmax(-1))
    top2 = np.sort(np.asarray(logits + g), -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.02  # away from near-ties, the sample is one-hot
    assert clear.mean() > 0.95
    np.testing.assert_allclose(np.asarray(cold)[clear], want[clear], atol=1e-6)
    # ...so the argmax frequencies are the softmax probabilities (Gumbel-max trick).
    freq = np.asarray(cold).mean(0)
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.035)
    hot = bn.gumbel_softmax(logits, rng, temperature=1e4)
    np.testing.assert_allclose(hot, 1 / 3, atol=1e-3)
    np.testing.assert_allclose(jnp.sum(bn.gumbel_softmax(logits, rng, 0.5), -1), 1.0, rtol=1e-5)


def test_kl_to_uniform():
    np.testing.assert_allclose(bn.kl_to_uniform(jnp.zeros((2, 8))), 0.0, atol=1e-6)
    q = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(
        bn.kl_to_uniform(jnp.log(jnp.asarray(q))), stats.entropy(q, np.full(3, 1 / 3)), rtol=1e-5
    )


def test_aggregate_kl_to_uniform_is_the_kl_of_the_mean_posterior():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 6)) * 2.0
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q_bar = q.reshape(-1, 6).mean(0)
    np.testing.assert_allclose(
        bn.aggregate_kl_to_uniform(jnp.asarray(logits)),
        stats.entropy(q_bar, np.full(6, 1 / 6)),
        rtol=1e-5,
    )
    # Confident posteriors spread evenly over the codes: zero, though each position's KL is not.
    spread = jnp.log(jnp.eye(6) * 0.999 + 1e-4)
    assert float(bn.aggregate_kl_to_uniform(spread)) == pytest.approx(0.0, abs=1e-5)
    assert float(jnp.mean(bn.kl_to_uniform(spread))) > 1.0
    # Every position on one code: log K, the most it can be.
    collapsed = jnp.tile(jnp.array([30.0, 0, 0, 0, 0, 0]), (5, 1))
    assert float(bn.aggregate_kl_to_uniform(collapsed)) == pytest.approx(np.log(6), rel=1e-4)


def test_gaussian_kl_matches_numerical_integration():
    mean, logvar = np.array([0.7, -1.5]), np.array([-0.8, 0.6])
    got = float(bn.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
    x = np.linspace(-15, 15, 200_001)
    want = 0.0
    for m, lv in zip(mean, logvar, strict=True):
        p = stats.norm.pdf(x, m, math.exp(lv / 2))
        want += np.trapezoid(p * (np.log(p + 1e-300) - stats.norm.logpdf(x)), x)
    assert got == pytest.approx(want, rel=1e-5)


def test_discretized_gaussian_nll_matches_scipy():
    x = jnp.array([-1.0, -0.5, 0.0, 0.3, 1.0])
    mean, log_scale = jnp.array([-0.9, -0.4, 0.1, 0.9, 0.95]), jnp.log(0.2)
    got = np.asarray(ae.discretized_gaussian_nll(x, mean, log_scale))
    lo = np.where(np.asarray(x) < -0.999, -np.inf, np.asarray(x) - 1 / 255)
    hi = np.where(np.asarray(x) > 0.999, np.inf, np.asarray(x) + 1 / 255)
    want = -np.log(stats.norm.cdf(hi, mean, 0.2) - stats.norm.cdf(lo, mean, 0.2))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_psnr_closed_form():
    x = jnp.zeros((2, 4, 4, 3))
    y = x.at[0].set(0.2).at[1].set(0.02)  # MSE 0.04 and 0.0004 on a peak-to-peak of 2
    np.testing.assert_allclose(ae.psnr(y, x), [10 * np.log10(4 / 0.04), 10 * np.log10(4 / 4e-4)])


def test_schedules_end_points():
    config = experiment_config("dvae")
    dc = config.dvae
    assert float(ae.dvae_temperature(0, config)) == pytest.approx(1.0)
    assert float(ae.dvae_temperature(dc.anneal_steps, config)) == pytest.approx(1 / 16)
    mid = float(ae.dvae_temperature(dc.anneal_steps // 2, config))
    assert mid == pytest.approx(0.25, rel=1e-3)  # a cosine in log space passes the geometric mean
    assert float(ae.dvae_kl_weight(0, config)) == 0.0
    assert float(ae.dvae_kl_weight(10**6, config)) == pytest.approx(dc.kl_weight)


# -- networks and pipelines -----------------------------------------------------------------
def test_network_shapes_and_dtypes():
    x = jnp.zeros((2, 16, 16, 3))
    kw = dict(ch=8, ch_mults=(1, 2), num_res_blocks=1, patch_size=2)
    enc = Encoder(out_ch=5, **kw)
    p = enc.init(jax.random.key(0), x)
    chex.assert_shape(enc.apply(p, x), (2, 4, 4, 5))
    dec = Decoder(**kw)
    z = jnp.zeros((2, 4, 4, 5))
    p = dec.init(jax.random.key(1), z)
    out, feats = dec.apply(p, z, True)
    chex.assert_shape(out, (2, 16, 16, 3))
    assert out.dtype == jnp.float32 and feats.shape[:3] == (2, 8, 8)
    d = PatchDiscriminator(ch=8, num_layers=2)
    p = d.init(jax.random.key(2), x)
    chex.assert_shape(d.apply(p, x), (2, 4, 4))


def _changed_positions(encoder, x: jax.Array, pixel: tuple[int, int]) -> np.ndarray:
    """Which output positions of ``encoder`` move when one pixel of image 0 changes."""
    params = encoder.init(jax.random.key(0), x)
    before = encoder.apply(params, x)
    after = encoder.apply(params, x.at[(0, *pixel, 0)].add(1.0))
    return np.abs(np.asarray(after - before)).max(-1)[0] > 0


def test_cell_encoder_reads_only_its_own_cell():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    cell = CellEncoder(ch=8, factor=4, depth=2, out_ch=5)
    out = cell.apply(cell.init(jax.random.key(0), x), x)
    chex.assert_shape(out, (2, 4, 4, 5))
    assert out.dtype == jnp.float32
    # A pixel at (6, 9) lies in cell (1, 2): that output alone moves.
    expected = np.zeros((4, 4), bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(_changed_positions(cell, x, (6, 9)), expected)
    # The convolutional encoder (3x3 convs, GroupNorm over the image) is not local.
    conv = Encoder(out_ch=5, ch=8, ch_mults=(1, 2), num_res_blocks=1, patch_size=2)
    assert _changed_positions(conv, x, (6, 9)).sum() > 1
    # Identical cells, wherever they are and whatever surrounds them, get identical outputs.
    params = cell.init(jax.random.key(0), x)
    y = x.at[0, 12:16, 0:4].set(x[1, 4:8, 8:12])
    out = np.asarray(cell.apply(params, y))
    np.testing.assert_allclose(out[0, 3, 0], out[1, 1, 2], rtol=1e-6)


def test_cell_tokenizer_config_builds_a_cell_encoder():
    config = experiment_config("dvae", "cell,smoke")
    assert config.model.encoder == "cell"
    pipe = build_pipeline(config)
    assert isinstance(pipe.encoder, CellEncoder) and pipe.encoder.factor == pipe.factor == 4
    assert experiment_config("dvae", "smoke").model.encoder == "conv"


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _model_input(images) -> jax.Array:
    """uint8 images as the networks see them: float32 in [-1, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.sum(x**2, axis=-1, keepdims=True) + 1e-6)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _encoder_out(pipe, params, images) -> np.ndarray:
    return _f64(pipe.encoder.apply({"params": params["encoder"]}, _model_input(images)))


def _decoder_out(pipe, params, z) -> np.ndarray:
    return _f64(pipe.decoder.apply({"params": params["decoder"]}, jnp.asarray(z, jnp.float32)))


def _vq_numpy(pipe, params, images):
    """``(z_e, codes, z_q)`` of a VQ model in numpy: the encoder's output and the codebook
    (both l2-normalised with ``vq.l2_codes``), the nearest code by brute force."""
    z_e = _encoder_out(pipe, params, images)
    codebook = _f64(params["codebook"]["embedding"])
    if pipe.config.vq.l2_codes:
        z_e, codebook = _l2_normalize(z_e), _l2_normalize(codebook)
    codes = ((z_e[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)
    return z_e, codes, codebook[codes]


@pytest.fixture(scope="module")
def smoke_states():
    """kind -> (pipeline, initial state, batch, jitted train step) of each smoke config."""
    from jaxgen import data as data_lib

    out = {}
    for kind in KINDS:
        config = experiment_config(kind, "smoke")
        if kind == "vae":
            config.vae.beta = 0.5  # not 1, so that a lost or misplaced beta shows in the loss
        if kind == "vqgan":
            config.model.vgg_weights = ""  # the pixel loss alone, whatever is on this machine
        pipe = build_pipeline(config)
        src = data_lib.build_source(config.data, "train")
        batch = {k: np.stack([src[i][k] for i in range(4)]) for k in ("image", "tokens")}
        out[kind] = (pipe, pipe.init(jax.random.key(0), batch), batch, jax.jit(pipe.train_step))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_round_trip(kind, smoke_states):
    """``encode`` gives the codes computed here from the encoder's output (nearest code by brute
    force, the logits' argmax, the posterior mean), and ``decode``/``reconstruct`` give the
    decoder's image of exactly those codes: other codes decode to another image."""
    pipe, state, batch, step = smoke_states[kind]
    params = state.params
    raw = _encoder_out(pipe, params, batch["image"])
    codes = pipe.encode(params, batch["image"])
    g = pipe.grid
    if kind == "vae":
        chex.assert_shape(codes, (4, g, g, pipe.code_dim))
        want_codes = raw[..., : pipe.code_dim]  # the mean half of (mean, log-variance)
        np.testing.assert_allclose(codes, want_codes, rtol=1e-6, atol=1e-6)
        z, other, z_other = want_codes, -want_codes, -want_codes
    else:
        chex.assert_shape(codes, (4, g, g))
        assert codes.dtype == jnp.int32
        if pipe.vq:
            _, want_codes, z = _vq_numpy(pipe, params, batch["image"])
            codebook = _l2_normalize(_f64(params["codebook"]["embedding"]))
        else:
            want_codes = raw.argmax(-1)
            codebook = _f64(params["codebook"]["embedding"])
            z = codebook[want_codes]
        np.testing.assert_array_equal(codes, want_codes)
        other = (want_codes + 1) % pipe.num_codes
        z_other = codebook[other]
    recon = pipe.reconstruct(state, batch["image"])
    assert recon.shape == batch["image"].shape and recon.dtype == np.uint8
    want = _to_uint8(_decoder_out(pipe, params, z)).astype(int)
    assert np.abs(recon.astype(int) - want).max() <= 1  # float rounding at a level's edge
    decoded = np.asarray(pipe.decode(params, codes)).astype(int)
    assert np.abs(decoded - want).max() <= 1
    decoded_other = np.asarray(pipe.decode(params, jnp.asarray(other)))
    want_other = _to_uint8(_decoder_out(pipe, params, z_other)).astype(int)
    assert np.abs(decoded_other.astype(int) - want_other).max() <= 1
    assert np.abs(want_other - want).max() > 8  # a real difference, not rounding
    prior = pipe.generate(state, ["ignored"] * 3, jax.random.key(0))
    assert prior.shape == (3, pipe.size, pipe.size, 3) and prior.dtype == np.uint8


@pytest.mark.parametrize("kind", KINDS)
def test_train_step_metrics(kind, smoke_states):
    pipe, state, batch, step = smoke_states[kind]
    new, _ = step(state, batch, jax.random.key(0))  # the warmup's learning rate is 0 at step 0
    new, metrics = step(new, batch, jax.random.key(1))
    assert int(new.step) == 2
    for key in ("loss", "rec_loss", "psnr", "grad_norm"):
        assert np.isfinite(float(metrics[key])), key
    if kind != "vae":
        assert {"codebook_usage", "codebook_perplexity", "dead_codes"} <= set(metrics)
    if kind == "dvae":
        # The loss is the reconstruction plus the ramped per-token KL plus the usage term.
        assert float(metrics["usage_kl"]) >= 0.0 and float(metrics["kl_weight"]) > 0.0
        want = (
            metrics["rec_loss"]
            + metrics["kl_weight"] * metrics["kl"]
            + pipe.config.dvae.usage_weight * metrics["usage_kl"]
        )
        assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.params["encoder"], new.params["encoder"]
    )
    assert any(jax.tree.leaves(changed))


def test_vae_loss_is_the_gaussian_nll_plus_beta_kl(smoke_states):
    """In numpy from the networks' outputs: the per-dimension Gaussian NLL under the learned
    scale, shifted to the 8-bit bin width (``-log(2/255)``), plus beta times the closed-form
    ``KL[N(mu, sigma^2) || N(0, I)]`` of an image over its H*W*C dimensions."""
    pipe, state, batch, step = smoke_states["vae"]
    beta = float(pipe.config.vae.beta)
    assert beta != 1.0
    log_scale = -0.7  # not the initial 0, so that the scale's place in the NLL shows
    state = state.replace(params={**state.params, "log_scale": jnp.float32(log_scale)})
    rng = jax.random.key(3)
    _, metrics = step(state, batch, rng)
    mean, logvar = np.split(_encoder_out(pipe, state.params, batch["image"]), 2, axis=-1)
    # The step's noise: the first key of its rng's split (the second is the codebook's).
    eps = _f64(jax.random.normal(jax.random.split(rng)[0], mean.shape))
    recon = _decoder_out(pipe, state.params, mean + np.exp(0.5 * logvar) * eps)
    x = _f64(_model_input(batch["image"]))
    nll = 0.5 * ((x - recon) / math.exp(log_scale)) ** 2 + log_scale + 0.5 * math.log(2 * math.pi)
    rec = nll.mean() - math.log(2 / 255)
    kl = np.mean(np.sum(0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar), axis=(1, 2, 3)))
    dims = x[0].size
    assert float(metrics["rec_loss"]) == pytest.approx(rec, rel=1e-5)
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(rec + beta * kl / dims, rel=1e-5)
    assert float(metrics["bits_per_dim"]) == pytest.approx(
        (rec + kl / dims) / math.log(2), rel=1e-5
    )


@pytest.mark.parametrize("ema", [True, False])
def test_vq_loss_is_rec_plus_beta_commitment_plus_codebook_term_without_ema(ema, smoke_states):
    """``rec + beta ||z_e - z_q||^2``, plus ``||z_e - z_q||^2`` again for the codebook when it is
    trained by gradient (not by EMA); the decoder reads the nearest codes. In numpy from the
    encoder's and decoder's outputs. (Both terms have the same value: which one beta weights
    is the gradients' business, tested in ``test_vq_terms_reach_the_right_parameters...``.)"""
    pipe, state, batch, step = smoke_states["vqvae"]
    assert pipe.vq_ema
    if not ema:
        config = experiment_config("vqvae", "smoke")
        config.vq.ema = False
        pipe = build_pipeline(config)
        state, step = pipe.init(jax.random.key(0), batch), jax.jit(pipe.train_step)
    _, metrics = step(state, batch, jax.random.key(4))
    z_e, _, z_q = _vq_numpy(pipe, state.params, batch["image"])
    dist = np.mean(np.sum((z_e - z_q) ** 2, axis=-1))
    x = _f64(_model_input(batch["image"]))
    rec = np.mean((_decoder_out(pipe, state.params, z_q) - x) ** 2)
    beta = float(pipe.config.vq.beta)
    want = rec + beta * dist + (0.0 if ema else dist)
    assert float(metrics["commitment"]) == pytest.approx(dist, rel=1e-4)
    assert float(metrics["codebook_loss"]) == pytest.approx(dist, rel=1e-4)
    assert float(metrics["rec_loss"]) == pytest.approx(rec, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_vqgan_loss_adds_the_adaptively_weighted_hinge_gan_term(smoke_states):
    """Once the discriminator is on: ``rec + beta commitment + w lambda (-mean D(recon))`` with
    ``lambda = ||dL_rec/dW|| / (||dL_gan/dW|| + 1e-4)`` at the decoder's last kernel W (by
    ``jax.grad`` through the whole decoder here, not the pipeline's vjp at W's input), and the
    discriminator's hinge loss ``(mean relu(1 - D(x)) + mean relu(1 + D(recon))) / 2``."""
    pipe, state, batch, step = smoke_states["vqgan"]
    assert pipe.vgg is None
    gc = pipe.config.gan
    state = state.replace(step=jnp.asarray(gc.start_step, jnp.int32))
    _, metrics = step(state, batch, jax.random.key(5))
    params = state.params
    z_e, _, z_q = _vq_numpy(pipe, params, batch["image"])
    dist = np.mean(np.sum((z_e - z_q) ** 2, axis=-1))
    x = _model_input(batch["image"])
    z = jnp.asarray(z_q, jnp.float32)

    def decode_with(kernel):
        last = {**params["decoder"]["conv_out"], "kernel": kernel}
        return pipe.decoder.apply({"params": {**params["decoder"], "conv_out": last}}, z)

    def discriminate(images):
        return pipe.D.apply({"params": params["D"]}, images)

    kernel = params["decoder"]["conv_out"]["kernel"]
    g_rec = jax.grad(lambda k: jnp.mean(jnp.square(decode_with(k) - x)))(kernel)
    g_gan = jax.grad(lambda k: -jnp.mean(discriminate(decode_with(k))))(kernel)
    lam = min(np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4), float(gc.max_weight))
    recon = decode_with(kernel)
    rec = np.mean((_f64(recon) - _f64(x)) ** 2)
    real, fake = _f64(discriminate(x)), _f64(discriminate(recon))
    g_adv = float(gc.weight) * lam * -fake.mean()
    d_loss = 0.5 * (np.maximum(1.0 - real, 0).mean() + np.maximum(1.0 + fake, 0).mean())
    assert float(metrics["adaptive_weight"]) == pytest.approx(lam, rel=1e-4)
    assert float(metrics["g_adv_loss"]) == pytest.approx(g_adv, rel=1e-4)
    assert float(metrics["d_real"]) == pytest.approx(real.mean(), rel=1e-4)
    assert float(metrics["d_fake"]) == pytest.approx(fake.mean(), rel=1e-4)
    assert float(metrics["d_loss"]) == pytest.approx(d_loss, rel=1e-5)
    want = rec + float(pipe.config.vq.beta) * dist + g_adv
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_gumbel_softmax_is_relaxed_and_its_gradient_is_the_softmax_jacobian():
    """The dVAE trains on the relaxed sample ``y = softmax((l + g) / T)`` itself (no
    straight-through one-hot): its values lie inside (0, 1), and ``dy/dl`` is
    ``(diag(y) - y y^T) / T`` per row, zero across rows."""
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)
    key, temperature = jax.random.key(7), 0.5
    y = _f64(bn.gumbel_softmax(logits, key, temperature))
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    assert np.all(y.max(-1) < 0.999) and np.all(y > 0), y
    jac = _f64(jax.jacobian(lambda lg: bn.gumbel_softmax(lg, key, temperature))(logits))
    want = np.zeros((3, 5, 3, 5))
    for r in range(3):
        want[r, :, r, :] = (np.diag(y[r]) - np.outer(y[r], y[r])) / temperature
    np.testing.assert_allclose(jac, want, atol=1e-6)


def test_dvae_decodes_the_relaxed_sample_and_its_gradient_reaches_the_encoder(smoke_states):
    """At step 2 of the smoke schedule (temperature 1/2 and a KL weight > 0, both in closed
    form): the reconstruction is the decoder's image of ``softmax((l + g) / T) @ codebook``,
    the loss adds the weighted per-token and batch-averaged KLs to uniform (numpy), and the
    gradient norm is that of this loss written out in jnp, whose reconstruction term reaches
    the encoder through the relaxation."""
    pipe, state, batch, step = smoke_states["dvae"]
    dc = pipe.config.dvae
    n = 2
    state = state.replace(step=jnp.asarray(n, jnp.int32))
    rng = jax.random.key(6)
    _, metrics = step(state, batch, rng)
    frac = 0.5 * (1.0 + math.cos(math.pi * n / dc.anneal_steps))
    temperature = math.exp(
        math.log(dc.temperature_end)
        + (math.log(dc.temperature_start) - math.log(dc.temperature_end)) * frac
    )
    kl_weight = dc.kl_weight * (1.0 - 0.5 * (1.0 + math.cos(math.pi * n / dc.kl_warmup_steps)))
    assert temperature == pytest.approx(0.5) and kl_weight > 0
    assert float(metrics["temperature"]) == pytest.approx(temperature, rel=1e-5)
    assert float(metrics["kl_weight"]) == pytest.approx(kl_weight, rel=1e-5)

    params = state.params
    k = pipe.num_codes
    logits = pipe.logit_scale * _encoder_out(pipe, params, batch["image"])
    # The step's noise: the first key of its rng's split.
    noise_key = jax.random.split(rng)[0]
    gumbel = _f64(jax.random.gumbel(noise_key, logits.shape, jnp.float32))
    soft = _softmax((logits + gumbel) / temperature)
    assert np.mean(soft.max(-1) < 0.99) > 0.1  # a relaxed sample, not a one-hot
    x = _f64(_model_input(batch["image"]))
    rec = np.mean(
        (_decoder_out(pipe, params, soft @ _f64(params["codebook"]["embedding"])) - x) ** 2
    )
    q = _softmax(logits)
    kl = np.mean(np.sum(q * np.log(q), -1) + np.log(k))
    q_bar = q.reshape(-1, k).mean(0)
    usage_kl = np.sum(q_bar * np.log(q_bar)) + np.log(k)
    assert float(metrics["rec_loss"]) == pytest.approx(rec, rel=1e-5)
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(metrics["usage_kl"]) == pytest.approx(usage_kl, rel=1e-4, abs=1e-7)
    want = rec + kl_weight * kl + dc.usage_weight * usage_kl
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)

    x32 = jnp.asarray(x, jnp.float32)
    g = jax.random.gumbel(noise_key, logits.shape, jnp.float32)

    def loss(p, through_relaxation=True):
        lg = pipe.logit_scale * pipe.encoder.apply({"params": p["encoder"]}, x32)
        y = jnp.exp(jax.nn.log_softmax((lg + g) / temperature))
        if not through_relaxation:
            y = jax.lax.stop_gradient(y)
        recon = pipe.decoder.apply({"params": p["decoder"]}, y @ p["codebook"]["embedding"])
        logq = jax.nn.log_softmax(lg)
        kl = jnp.mean(jnp.sum(jnp.exp(logq) * logq, -1)) + jnp.log(k)
        q_bar = jnp.mean(jnp.exp(logq).reshape(-1, k), 0)
        usage = jnp.sum(q_bar * jnp.log(q_bar)) + jnp.log(k)
        return jnp.mean(jnp.square(recon - x32)) + kl_weight * kl + dc.usage_weight * usage

    def grad_norm(through_relaxation):
        trained = {n: params[n] for n in ("encoder", "decoder", "codebook")}
        grads = jax.grad(loss)(trained, through_relaxation)
        return math.sqrt(sum(float(jnp.sum(jnp.square(v))) for v in jax.tree.leaves(grads)))

    norm = grad_norm(True)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-4)
    # The reconstruction's gradient to the encoder (through y) is a visible share of the norm.
    assert abs(grad_norm(False) - norm) > 1e-3 * norm


def test_dvae_posterior_is_the_scaled_logits(smoke_states):
    # The logged per-token KL to uniform is that of softmax(logit_scale * encoder(x)), computed
    # here in numpy from the encoder's raw output.
    from jaxgen.data.pixels import to_model_space

    pipe, state, batch, step = smoke_states["dvae"]
    assert pipe.logit_scale == pipe.config.dvae.logit_scale == 4.0
    raw = pipe.encoder.apply({"params": state.params["encoder"]}, to_model_space(batch["image"]))
    raw = np.asarray(raw, np.float64)

    def kl_to_uniform(logits):
        logits = logits - logits.max(-1, keepdims=True)
        logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return np.mean(np.sum(np.exp(logq) * logq, -1) + np.log(logits.shape[-1]))

    _, metrics = step(state, batch, jax.random.key(0))
    assert float(metrics["kl"]) == pytest.approx(kl_to_uniform(4.0 * raw), rel=1e-4)
    assert float(metrics["kl"]) > 1.5 * kl_to_uniform(raw)
    # Tokens are the argmax, which the scale does not change.
    np.testing.assert_array_equal(pipe.encode(state.params, batch["image"]), raw.argmax(-1))


def test_ema_codebook_is_not_trained_by_the_optimizer(smoke_states):
    pipe, state, batch, step = smoke_states["vqvae"]
    assert pipe.vq_ema and "codebook" not in pipe.trained_networks
    # Usage starts at zero (every code restarts from the first batch); give each code a fair
    # share so that this step is the EMA update alone.
    k = pipe.num_codes
    fair = {**state.opt_state["codebook"], "usage": jnp.full((k,), 1.0 / k)}
    state = state.replace(opt_state={**state.opt_state, "codebook": fair})
    new, _ = step(state, batch, jax.random.key(1))
    # The EMA moved the codes (this is not a no-op)...
    assert not np.allclose(
        new.params["codebook"]["embedding"], state.params["codebook"]["embedding"]
    )
    # ...to the EMA of the assigned encoder outputs.
    x = ae.to_model_space(jnp.asarray(batch["image"]))
    z_e, _, idx = pipe._encode_vq(state.params, x)
    stats, want = bn.ema_codebook_update(
        {k: state.opt_state["codebook"][k] for k in ("cluster_size", "embed_sum")},
        z_e.reshape(-1, pipe.code_dim),
        idx,
        pipe.config.vq.ema_decay,
    )
    np.testing.assert_allclose(new.params["codebook"]["embedding"], want, rtol=1e-4, atol=1e-6)


def test_adaptive_weight_matches_direct_gradient_norms(smoke_states):
    pipe, state, batch, step = smoke_states["vqgan"]
    params = state.params
    x = ae.to_model_space(jnp.asarray(batch["image"]))
    z_e, z_q, _ = pipe._encode_vq(params, x)
    z = bn.straight_through(z_e, z_q)

    def losses(kernel):
        dec = {**params["decoder"], "conv_out": {**params["decoder"]["conv_out"], "kernel": kernel}}
        recon = pipe._decode({**params, "decoder": dec}, z)
        rec = pipe._rec_loss(recon, x)
        gan = -jnp.mean(pipe.D.apply({"params": params["D"]}, recon))
        return rec, gan

    kernel = params["decoder"]["conv_out"]["kernel"]
    g_rec = jax.grad(lambda k: losses(k)[0])(kernel)
    g_gan = jax.grad(lambda k: losses(k)[1])(kernel)
    want = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)

    recon, feats = pipe._decode(params, z, return_features=True)
    g_rec_out = jax.grad(lambda r: pipe._rec_loss(r, x))(recon)
    g_gan_out = jax.grad(lambda r: -jnp.mean(pipe.D.apply({"params": params["D"]}, r)))(recon)
    got = pipe._adaptive_weight(params, feats, g_rec_out, g_gan_out)
    assert float(got) == pytest.approx(want, rel=1e-4)
    assert float(ae.adaptive_weight(g_rec, g_gan * 1e-12, max_weight=7.0)) == 7.0  # the clip


def test_codebook_starts_from_encoder_outputs(smoke_states):
    """Usage starts at zero, so the first step restarts every code from that batch's encoder
    outputs (a data-dependent initialisation)."""
    pipe, state, batch, step = smoke_states["vqvae"]
    new, metrics = step(state, batch, jax.random.key(2))
    assert float(metrics["dead_codes"]) == pipe.num_codes
    x = ae.to_model_space(jnp.asarray(batch["image"]))
    z_e = np.asarray(pipe._encode_vq(state.params, x)[0]).reshape(-1, pipe.code_dim)
    for code in np.asarray(new.params["codebook"]["embedding"]):
        assert np.min(np.abs(z_e - code).max(-1)) < 1e-5


def test_discriminator_waits_for_start_step(smoke_states):
    pipe, state, batch, step = smoke_states["vqgan"]
    before, m0 = step(state, batch, jax.random.key(0))
    assert float(m0["adaptive_weight"]) == 0.0 and float(m0["d_loss"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, before.params["D"], state.params["D"])
    late = state.replace(step=jnp.asarray(pipe.config.gan.start_step, jnp.int32))
    after, m1 = step(late, batch, jax.random.key(0))
    assert float(m1["adaptive_weight"]) > 0.0 and float(m1["d_loss"]) > 0.0
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), after.params["D"], state.params["D"])
    assert all(jax.tree.leaves(moved))


# -- VGG perceptual loss (the network and its loader: tests/test_vgg.py) -----------------------
def test_vqgan_uses_vgg_weights_when_present(tmp_path):
    config = experiment_config("vqgan", "smoke")
    config.model.vgg_weights = str(tmp_path / "missing.npz")
    assert build_pipeline(config).vgg is None
    fake_vgg_file(tmp_path / "vgg16_weights.npz")
    config.model.vgg_weights = str(tmp_path / "vgg16_weights.npz")
    pipe = build_pipeline(config)
    assert pipe.vgg is not None
    x = jnp.zeros((1, 16, 16, 3))
    assert float(pipe._rec_loss(x + 0.5, x)) > 0.25  # the MSE plus a positive VGG distance


# -- configs and bad input ------------------------------------------------------------------
def test_configs_and_bad_settings():
    for kind in KINDS:
        config = experiment_config(kind)
        assert config.pipeline == kind and config.train.max_minutes <= 20
        pipe = build_pipeline(config)
        assert pipe.grid == 8 and pipe.size == 32
    assert build_pipeline(experiment_config("vqgan", "cifar10")).num_codes == 1024
    with pytest.raises(ValueError, match="cifar10 variant is VQGAN"):
        experiment_config("vqvae", "cifar10")
    with pytest.raises(ValueError, match="Unknown vqvae.py variant 'mnist'; valid: one of shapes"):
        experiment_config("vqvae", "mnist")
    with pytest.raises(ValueError, match="Unknown autoencoder variant 'ae'"):
        load_experiment("experiments/autoencoders.py:ae")
    config = experiment_config("vqvae", "smoke")
    config.data.image_size = 18
    with pytest.raises(ValueError, match="multiple of 4"):
        build_pipeline(config)
    config = experiment_config("vqvae", "smoke")
    config.model.rec_loss = "huber"
    with pytest.raises(ValueError, match="rec_loss"):
        build_pipeline(config)
    config = experiment_config("dvae", "smoke")
    config.dvae.logit_scale = 0.0
    with pytest.raises(ValueError, match="logit_scale"):
        build_pipeline(config)
    config = experiment_config("dvae", "smoke")
    config.model.encoder = "vit"
    with pytest.raises(ValueError, match="Unknown model.encoder 'vit'; valid: conv, cell"):
        build_pipeline(config)


def test_bad_images_and_tokens(smoke_states):
    pipe, state, _, _ = smoke_states["vqvae"]
    with pytest.raises(ValueError, match="uint8"):
        pipe.reconstruct(state, np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 16, 16, 3\]"):
        pipe.reconstruct(state, np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(TypeError, match="integers"):
        pipe.decode(state.params, jnp.zeros((1, 4, 4)))


# -- end to end -----------------------------------------------------------------------------
def test_vae_bits_per_dim_is_the_discretised_negative_elbo(smoke_states):
    """``E_x[-log2 P(x | z) + KL / ln 2] / (H W C)`` with ``z ~ q(z | x)`` drawn with the given
    key and ``P`` the probability of each 8-bit value's bin (width 2/255, the end bins open)
    under ``N(decoder(z), s^2)``: in float64 with scipy."""
    pipe, state, batch, _ = smoke_states["vae"]
    log_scale = -0.5
    state = state.replace(params={**state.params, "log_scale": jnp.float32(log_scale)})
    rng = jax.random.key(8)
    bpd = pipe.bits_per_dim(state, batch["image"], rng)
    mean, logvar = np.split(_encoder_out(pipe, state.params, batch["image"]), 2, axis=-1)
    eps = _f64(jax.random.normal(rng, mean.shape))
    recon = _decoder_out(pipe, state.params, mean + np.exp(0.5 * logvar) * eps)
    images = np.asarray(batch["image"])
    x = images / 127.5 - 1.0
    lo = np.where(images == 0, -np.inf, x - 1 / 255)
    hi = np.where(images == 255, np.inf, x + 1 / 255)
    scale = math.exp(log_scale)
    upper_tail = lo > recon
    prob = np.where(
        upper_tail,
        stats.norm.sf(lo, recon, scale) - stats.norm.sf(hi, recon, scale),
        stats.norm.cdf(hi, recon, scale) - stats.norm.cdf(lo, recon, scale),
    )
    nll = -np.log(prob).sum(axis=(1, 2, 3))
    kl = np.sum(0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar), axis=(1, 2, 3))
    want = np.mean(nll + kl) / (x[0].size * math.log(2))
    assert bpd == pytest.approx(want, rel=1e-4)


def test_vqgan_cli_train_sample_and_tokenizer(tmp_path):
    workdir = tmp_path / "vqgan"
    common = ["--config=experiments/vqgan.py:smoke", f"--workdir={workdir}"]
    r = run_cli(*common)  # 6 steps, the discriminator on from step 3 (resume: tested for DDPM)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Perceptual loss off" in r.stderr  # no VGG weights on this machine: said so
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "d_loss" in m]
    assert max(steps) == 6 and any(m["d_loss"] > 0 for m in metrics if m["step"] > 3)
    results = json.loads((workdir / "eval.json").read_text())
    assert results["step"] == 6 and 0 < results["heldout/codebook_usage"] <= 1
    r = run_cli(*common, "--mode=sample", "--num_samples=4")
    assert r.returncode == 0 and "Wrote 4 samples" in r.stdout, r.stderr[-3000:]
    # (--mode=eval runs the same evaluators as the end of training; tested for DDPM.)

    tok = jaxgen.load_tokenizer(workdir)
    images = np.zeros((3, 16, 16, 3), np.uint8)
    tokens = jax.jit(tok.encode)(images)
    assert tokens.shape == (3, *tok.grid) and tokens.dtype == jnp.int32 and tok.vocab_size == 16
    decoded = jax.jit(lambda t, toks: t.decode(toks))(tok, tokens)  # the tokenizer is a pytree
    assert decoded.shape == images.shape and decoded.dtype == jnp.uint8
