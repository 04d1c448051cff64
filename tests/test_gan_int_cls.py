"""GAN-INT-CLS: network shapes, the losses against hand computations, interpolation, the variants,
style transfer through the inverse network, and smoke runs of the CLI."""

import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO_ROOT, cli_env, experiment_config, parse_cross_entropy, run_cli

import jaxgen
from jaxgen.data import shapes
from jaxgen.models.clip import CLIP
from jaxgen.models.gan import (
    D_NORMS,
    G_NORMS,
    Discriminator,
    Generator,
    InverseNetwork,
    _d_norm,
    _Downsampler,
    _g_norm,
)
from jaxgen.pipelines.gan_int_cls import (
    GANINTCLSPipeline,
    clip_guidance_loss,
    discriminator_loss,
    generator_loss,
    interpolate,
    kl_to_standard_normal,
    r1_penalty,
)


# -- networks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 32])
def test_network_shapes_and_dtypes(size):
    z, t = jnp.zeros((2, 10)), jnp.ones((2, 24))
    x = jnp.zeros((2, size, size, 3))
    g, d, s = (
        Generator(size, ch=8, text_dim=16),
        Discriminator(size, 8, 16),
        InverseNetwork(size, 8, 10),
    )
    key = jax.random.key(0)
    img = g.apply(g.init(key, z, t), z, t)
    chex.assert_shape(img, (2, size, size, 3))
    chex.assert_type(img, jnp.float32)
    assert float(jnp.abs(img).max()) <= 1.0
    logit = d.apply(d.init(key, x, t), x, t)
    chex.assert_shape(logit, (2,))
    z_hat = s.apply(s.init(key, x), x)
    chex.assert_shape(z_hat, (2, 10))
    # With coordinate channels every 3x3 conv reads two more input channels.
    g_xy = Generator(size, ch=8, text_dim=16, coords=True)
    params = g_xy.init(key, z, t)["params"]
    chex.assert_shape(g_xy.apply({"params": params}, z, t), (2, size, size, 3))
    plain = g.init(key, z, t)["params"]
    for name in ("conv0", "to_rgb"):  # [3, 3, in, out]
        assert params[name]["kernel"].shape[2] == plain[name]["kernel"].shape[2] + 2
    # As a conditional VAE's encoder: a mean and a log-variance, both float32.
    s_var = InverseNetwork(size, 8, 10, log_variance=True)
    mean, log_var = s_var.apply(s_var.init(key, x), x)
    chex.assert_shape([mean, log_var], (2, 10))
    chex.assert_type([mean, log_var], jnp.float32)


def test_generator_rejects_a_size_it_cannot_make():
    with pytest.raises(ValueError, match="power of two"):
        Generator(24).init(jax.random.key(0), jnp.zeros((1, 4)), jnp.zeros((1, 4)))


def test_discriminator_uses_the_text():
    d = Discriminator(16, 8, 16)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    t1, t2 = jnp.zeros((2, 24)), jnp.ones((2, 24))
    variables = d.init(jax.random.key(0), x, t1)
    assert np.abs(d.apply(variables, x, t1) - d.apply(variables, x, t2)).max() > 1e-4


def test_discriminator_norms_by_hand():
    h = jax.random.normal(jax.random.key(2), (3, 4, 4, 8)) * jnp.arange(1.0, 9.0) + 2.0
    out = {}
    for kind in D_NORMS:
        norm = _d_norm(kind, jnp.float32, "n")
        out[kind] = h if kind == "none" else norm.apply(norm.init(jax.random.key(0), h), h)
    hn = np.asarray(h, np.float64)
    # "channel": each position's vector standardised; "layer": each sample's whole map.
    per_pos = (hn - hn.mean(-1, keepdims=True)) / np.sqrt(hn.var(-1, keepdims=True) + 1e-6)
    mu, var = hn.mean((1, 2, 3), keepdims=True), hn.var((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out["channel"], per_pos, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["layer"], (hn - mu) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["none"], h)
    with pytest.raises(ValueError, match="channel, layer, none"):
        _d_norm("batch", jnp.float32, "n")


@pytest.mark.parametrize("norm", G_NORMS)
def test_generator_norms(norm):
    g = Generator(16, ch=8, text_dim=16, norm=norm)
    z, t = jax.random.normal(jax.random.key(1), (2, 10)), jnp.ones((2, 24))
    variables = g.init(jax.random.key(0), z, t)
    img = g.apply(variables, z, t)
    chex.assert_shape(img, (2, 16, 16, 3))
    assert float(jnp.abs(img).max()) <= 1.0
    # Only "group", "batch" and "layer" have parameters; they name them as the default does.
    names = {k for k in variables["params"] if k.startswith("norm")}
    assert names == (set() if norm in ("pixel", "none") else {"norm0", "norm1", "norm_out"})


def test_generator_norms_by_hand():
    h = jax.random.normal(jax.random.key(2), (2, 4, 4, 8)) * jnp.arange(1.0, 9.0) + 1.0
    hn = np.asarray(h, np.float64)
    pixel = _g_norm("pixel", 8, jnp.float32, "n")(h)
    want = hn / np.sqrt(np.mean(hn**2, axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pixel, want, rtol=1e-5)
    layer = _g_norm("layer", 8, jnp.float32, "n")
    got = layer.apply(layer.init(jax.random.key(0), h), h)
    mu, var = hn.mean((1, 2, 3), keepdims=True), hn.var((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(got, (hn - mu) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)
    group = _g_norm("group", 8, jnp.float32, "n")  # 8 channels: 8 groups, one channel each
    got = group.apply(group.init(jax.random.key(0), h), h)
    mu, var = hn.mean((1, 2), keepdims=True), hn.var((1, 2), keepdims=True)
    np.testing.assert_allclose(got, (hn - mu) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)
    batch = _g_norm("batch", 8, jnp.float32, "n")  # each channel over batch and positions
    got = batch.apply(batch.init(jax.random.key(0), h), h)
    mu, var = hn.mean((0, 1, 2), keepdims=True), hn.var((0, 1, 2), keepdims=True)
    np.testing.assert_allclose(got, (hn - mu) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    # The statistics are the batch's: a sample's output depends on the others in its batch.
    alone = batch.apply(batch.init(jax.random.key(0), h), h[:1])
    assert not np.allclose(alone, got[:1], atol=1e-3)
    with pytest.raises(ValueError, match="group, batch, pixel, layer, none"):
        _g_norm("instance", 8, jnp.float32, "n")


def _text_projection(params, text_emb):
    """``TextProjection`` (dense, leaky ReLU 0.2) in float64 numpy, from a network's params."""
    dense = params["text_proj"]["dense"]
    h = np.asarray(text_emb, np.float64) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    return np.where(h > 0, h, 0.2 * h)


def test_conditional_generator_norm_by_hand():
    g = Generator(8, ch=4, text_dim=6, norm="none", conditional=True)
    z = jax.random.normal(jax.random.key(1), (2, 5))
    t = jax.random.normal(jax.random.key(2), (2, 7))
    p = jax.tree.map(np.asarray, g.init(jax.random.key(0), z, t)["params"])
    assert {"norm0_cond", "norm_out_cond"} <= set(p)
    # Zero at initialisation: the plain generator with the same parameters.
    plain = Generator(8, ch=4, text_dim=6, norm="none")
    want = plain.apply({"params": {k: v for k, v in p.items() if "cond" not in k}}, z, t)
    np.testing.assert_allclose(g.apply({"params": p}, z, t), want, rtol=1e-6)
    # gamma = -1 at the last norm erases the map, leaving relu(beta) with
    # beta = [z, phi(t)] @ K + b: every inner pixel is the RGB conv of that constant by hand.
    rng = np.random.default_rng(0)
    c = p["norm_out_cond"]["kernel"].shape[0]
    width = p["norm_out_cond"]["bias"].shape[0] // 2
    k_beta, b_beta = rng.normal(size=(c, width)), rng.normal(size=width)
    kernel = np.concatenate([np.zeros((c, width)), k_beta], axis=1)
    bias = np.concatenate([-np.ones(width), b_beta])
    p = {**p, "norm_out_cond": {"kernel": kernel, "bias": bias}}
    tp = _text_projection(p, t)
    beta = np.maximum(np.concatenate([np.asarray(z), tp], axis=1) @ k_beta + b_beta, 0.0)
    rgb = np.einsum("c,yxco->o", beta[0], p["to_rgb"]["kernel"]) + p["to_rgb"]["bias"]
    got = np.asarray(g.apply({"params": p}, z, t))
    np.testing.assert_allclose(got[0, 1:-1, 1:-1], np.broadcast_to(np.tanh(rgb), (6, 6, 3)), 1e-4)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # each sample its own beta


@pytest.mark.parametrize("norm", D_NORMS)
def test_discriminator_scores_each_sample_alone(norm):
    d = Discriminator(16, 8, 16, norm)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    t = jax.random.normal(jax.random.key(3), (4, 24))
    variables = d.init(jax.random.key(0), x, t)
    both = d.apply(variables, x, t)
    np.testing.assert_allclose(both[:1], d.apply(variables, x[:1], t[:1]), rtol=1e-4, atol=1e-5)


def test_discriminator_reads_a_feature_map_beside_the_image():
    d = Discriminator(16, 8, 16)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    t = jax.random.normal(jax.random.key(3), (3, 24))
    feats = jax.random.normal(jax.random.key(4), (3, 8, 8, 5))
    variables = d.init(jax.random.key(0), x, t, feats)
    assert {"features", "norm_features"} <= set(variables["params"])
    out = d.apply(variables, x, t, feats)
    chex.assert_shape(out, (3,))
    # An 8x8 map is average-pooled to D's 4x4 grid: the pooled map by hand scores the same.
    pooled = np.asarray(feats).reshape(3, 4, 2, 4, 2, 5).mean(axis=(2, 4))
    np.testing.assert_allclose(out, d.apply(variables, x, t, jnp.asarray(pooled)), rtol=1e-5)
    assert not np.allclose(out, d.apply(variables, x, t, feats + 1.0), atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 4"):
        d.apply(variables, x, t, feats[:, :6, :6])


def test_discriminator_auxiliary_classifier_reads_the_image_alone():
    d = Discriminator(16, 8, 16, aux_classes=(6, 3))
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    t = jax.random.normal(jax.random.key(3), (3, 24))
    variables = d.init(jax.random.key(0), x, t)
    logits, aux = d.apply(variables, x, t)
    chex.assert_shape(logits, (3,))
    chex.assert_shape(aux, [(3, 6), (3, 3)])
    # Each head is a linear map of the image's 4x4 map, computed apart with D's downsampler.
    p = variables["params"]
    h = _Downsampler(16, 8, name="down").apply({"params": p["down"]}, x)
    flat = np.asarray(h).reshape(3, -1)
    for i, a in enumerate(aux):
        want = flat @ np.asarray(p[f"aux_{i}"]["kernel"]) + np.asarray(p[f"aux_{i}"]["bias"])
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-5)
    # The text does not reach the classifier, and D's own score is the plain D's.
    np.testing.assert_allclose(d.apply(variables, x, -t)[1][0], aux[0], rtol=1e-6)
    plain = Discriminator(16, 8, 16).apply(
        {"params": {k: v for k, v in p.items() if "aux" not in k}}, x, t
    )
    np.testing.assert_allclose(plain, logits, rtol=1e-6)


def test_projection_discriminator_adds_the_text_image_inner_product():
    d = Discriminator(16, 8, 16, projection=True)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    t = jax.random.normal(jax.random.key(3), (3, 24))
    variables = d.init(jax.random.key(0), x, t)
    p = variables["params"]
    # The term by hand: the image's 4x4 map (D's downsampler, run apart) averaged over
    # positions, dotted with the projection of the projected text.
    h = np.asarray(_Downsampler(16, 8, name="down").apply({"params": p["down"]}, x))
    tp = _text_projection(p, t)
    w = tp @ np.asarray(p["projection"]["kernel"]) + np.asarray(p["projection"]["bias"])
    want = np.sum(h.mean(axis=(1, 2)) * w, axis=-1)
    plain = Discriminator(16, 8, 16).apply(
        {"params": {k: v for k, v in p.items() if k != "projection"}}, x, t
    )
    got = d.apply(variables, x, t)
    np.testing.assert_allclose(got - plain, want, rtol=1e-4, atol=1e-6)
    assert np.abs(want).max() > 1e-4  # the term is not vanishingly small at initialisation


def test_silhouette_stream_reads_the_brightest_channel():
    d = Discriminator(16, 8, 16, aux_classes=(3,), silhouette=True)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
    t = jax.random.normal(jax.random.key(3), (2, 24))
    variables = d.init(jax.random.key(0), x, t)
    p = variables["params"]
    assert p["down_sil"]["conv0"]["kernel"].shape[2] == 1
    # The classifier reads the RGB stream's map and the silhouette stream's, each run apart.
    rgb = _Downsampler(16, 8, name="down").apply({"params": p["down"]}, x)
    sil_in = np.asarray(x).max(axis=-1, keepdims=True)
    sil = _Downsampler(16, 8, name="down").apply({"params": p["down_sil"]}, jnp.asarray(sil_in))
    flat = np.concatenate([np.asarray(rgb), np.asarray(sil)], axis=-1).reshape(2, -1)
    want = flat @ np.asarray(p["aux_0"]["kernel"]) + np.asarray(p["aux_0"]["bias"])
    _, (aux,) = d.apply(variables, x, t)
    np.testing.assert_allclose(aux, want, rtol=1e-4, atol=1e-5)


# -- losses by hand -----------------------------------------------------------------------------
def _sp(v):  # softplus, written out
    return np.log1p(np.exp(v))


def test_matching_aware_loss_by_hand():
    real, wrong, fake = np.array([2.0, -1.0]), np.array([0.5, 1.5]), np.array([-0.3, 0.7])
    # -log sigmoid(s) = softplus(-s); -log(1 - sigmoid(s)) = softplus(s).
    want_cls = np.mean(_sp(-real) + 0.5 * (_sp(wrong) + _sp(fake)))
    want_plain = np.mean(_sp(-real) + _sp(fake))
    got_cls = discriminator_loss(real, wrong, fake, matching_aware=True)
    got_plain = discriminator_loss(real, wrong, fake, matching_aware=False)
    np.testing.assert_allclose(got_cls, want_cls, rtol=1e-6)
    np.testing.assert_allclose(got_plain, want_plain, rtol=1e-6)
    hinge = discriminator_loss(real, wrong, fake, matching_aware=True, loss="hinge")
    # relu(1 - real) = [0, 2]; relu(1 + wrong) = [1.5, 2.5]; relu(1 + fake) = [0.7, 1.7].
    np.testing.assert_allclose(hinge, np.mean([0 + 0.5 * (1.5 + 0.7), 2 + 0.5 * (2.5 + 1.7)]))


def test_generator_loss_by_hand():
    fake = np.array([0.0, 2.0])
    np.testing.assert_allclose(generator_loss(fake), np.mean(_sp(-fake)), rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake, "hinge"), -1.0)
    with pytest.raises(ValueError, match="hinge"):
        generator_loss(fake, "wasserstein")


def test_r1_penalty_closed_forms():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, 2)), jnp.float32)
    # A linear critic has the same gradient w at every image: 0.5 * ||w||^2.
    got = r1_penalty(lambda im: jnp.sum(im * w, axis=(1, 2, 3)), x)
    np.testing.assert_allclose(got, 0.5 * np.sum(np.square(w)), rtol=1e-5)
    # sum(x^2) has gradient 2x: 0.5 * mean_i ||2 x_i||^2.
    got = r1_penalty(lambda im: jnp.sum(im**2, axis=(1, 2, 3)), x)
    want = 0.5 * np.mean(np.sum(np.square(2 * np.asarray(x)), axis=(1, 2, 3)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_clip_guidance_loss_by_hand():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    for logit_scale, scale in ((np.log(20.0), 20.0), (np.log(500.0), 100.0)):  # capped at 100
        logits = scale * img @ txt.T
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        want = -np.mean(np.diag(log_softmax))
        got = clip_guidance_loss(jnp.asarray(img), jnp.asarray(txt), logit_scale)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # An image that is its own caption's embedding, far from the others, costs almost nothing.
    np.testing.assert_allclose(
        clip_guidance_loss(jnp.eye(3), jnp.eye(3), np.log(100.0)), 0.0, atol=1e-6
    )


def test_kl_to_standard_normal_by_quadrature():
    mean = np.array([[0.0, 1.5, -0.7], [0.3, 0.0, 2.0]])
    log_var = np.array([[0.0, -1.0, 0.8], [-2.0, 0.5, 0.0]])
    # Each dimension's KL(q || p) = integral of q log(q / p), by the trapezoid rule.
    x = np.linspace(-12.0, 12.0, 200001)
    want = 0.0
    for m, lv in zip(mean.ravel(), log_var.ravel(), strict=True):
        s2 = np.exp(lv)
        log_q = -0.5 * (x - m) ** 2 / s2 - 0.5 * np.log(2 * np.pi * s2)
        log_p = -0.5 * x**2 - 0.5 * np.log(2 * np.pi)
        want += np.trapezoid(np.exp(log_q) * (log_q - log_p), x)
    got = kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(log_var))
    np.testing.assert_allclose(got, want / 2, rtol=1e-5)  # summed over dims, mean over 2 rows
    assert float(kl_to_standard_normal(jnp.zeros((1, 3)), jnp.zeros((1, 3)))) == 0.0


def test_interpolation_path():
    t1, t2 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 3.0]])
    np.testing.assert_allclose(interpolate(t1, t2, 1.0), t1)
    np.testing.assert_allclose(interpolate(t1, t2, 0.0), t2)
    np.testing.assert_allclose(interpolate(t1, t2, 0.25), [[0.25, 2.25]])


# -- the pipeline in process --------------------------------------------------------------------
def _pipeline(arg="smoke,joint", **overrides):
    config = experiment_config("gan_int_cls", arg)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return GANINTCLSPipeline(config), config


def _batch(config, n=8, keys=("image", "tokens")):
    from jaxgen import data as data_lib

    src = data_lib.build_source(config.data, "train")
    return {k: np.stack([src[i][k] for i in range(n)]) for k in keys}


def test_variants_select_the_paper_components():
    flags = {}
    for variant in ("gan", "gan_cls", "gan_int", "gan_int_cls"):
        pipe, _ = _pipeline(f"smoke,joint,{variant}")
        flags[variant] = (pipe.matching_aware, pipe.use_int)
    assert flags == {
        "gan": (False, False),
        "gan_cls": (True, False),
        "gan_int": (False, True),
        "gan_int_cls": (True, True),
    }


@pytest.mark.parametrize("variant", ["gan", "gan_int_cls"])
def test_a_step_trains_every_network(variant):
    # The plain GAN's D also carries the projection term (model.d_projection) and the
    # silhouette stream (model.d_silhouette), its G the conditional normalisation
    # (model.g_conditional) and coordinate channels (model.g_coords), and S the conditional
    # VAE's log-variance head (gan.recon_weight); they train too.
    extra = variant == "gan"
    options = ("model.d_projection", "model.d_silhouette", "model.g_conditional", "model.g_coords")
    pipe, config = _pipeline(
        f"smoke,joint,{variant}",
        **dict.fromkeys(options, extra),
        **{"gan.recon_weight": 2.0 * extra},
    )
    batch = _batch(config)
    state = pipe.init(jax.random.key(0), batch)
    assert ("projection" in state.params["D"]) == extra
    assert ("norm0_cond" in state.params["G"]) == extra
    new, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    for name in ("G", "D", "S", "text"):
        moved = jax.tree.map(
            lambda a, b: float(jnp.abs(a - b).max()), new.params[name], state.params[name]
        )
        assert max(jax.tree.leaves(moved)) > 0, (variant, name)
    if extra:
        assert {"recon_l1", "kl"} <= set(metrics) and metrics["recon_l1"] > 0
        assert state.params["G"]["to_rgb"]["kernel"].shape[2] == config.model.g_ch + 2
        paths = (("D", "projection"), ("G", "norm0_cond"), ("D", "down_sil", "conv0"))
        for path in (*paths, ("S", "fc_log_var")):
            before, after = state.params, new.params
            for key in path:
                before, after = before[key], after[key]
            assert not np.allclose(after["kernel"], before["kernel"]), path
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert (metrics["d_wrong"] > 0) and (metrics["d_real"] > 0)


@pytest.mark.parametrize("hard", [False, True])
def test_the_mismatched_caption_of_the_matching_aware_discriminator(hard):
    from jaxgen import data as data_lib

    pipe, config = _pipeline("smoke,joint,gan_cls", **{"data.hard_negatives": hard})
    src = data_lib.build_source(config.data, "train")
    keys = ("image", "tokens", "neg_tokens") if hard else ("image", "tokens")
    batch = {k: np.stack([src[i][k] for i in range(8)]) for k in keys}
    state = pipe.init(jax.random.key(0), batch)
    _, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    # d_wrong is D's mean belief in (real image, mismatched caption) before its update.
    text = state.params["text"]
    t = pipe.text.apply({"params": text}, jnp.asarray(batch["tokens"]))
    t_wrong = np.roll(np.asarray(t), 1, axis=0)  # the neighbour's caption
    if hard:  # even rows: the caption of a scene one attribute away
        neg = pipe.text.apply({"params": text}, jnp.asarray(batch["neg_tokens"]))
        t_wrong[::2] = np.asarray(neg)[::2]
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    want = jnp.mean(jax.nn.sigmoid(pipe.D.apply({"params": state.params["D"]}, x, t_wrong)))
    np.testing.assert_allclose(metrics["d_wrong"], want, rtol=1e-5)


def test_hard_negatives_need_the_matching_aware_discriminator():
    with pytest.raises(ValueError, match="gan_cls or gan_int_cls"):
        _pipeline("smoke,joint,gan_int", **{"data.hard_negatives": True})
    with pytest.raises(ValueError, match="model.g_norm"):
        _pipeline("smoke,joint", **{"model.g_norm": "instance"})


def test_match_logits_score_each_pair_with_d_on_its_own():
    pipe, config = _pipeline("smoke,joint")
    state = pipe.init(jax.random.key(0), _batch(config))
    source = shapes.ShapesSource("test", config.data.image_size)
    examples = [source.example(i) for i in range(6)]
    images = np.stack([e["image"] for e in examples])
    prompts = [e["caption"] for e in examples[1:]] + ["a small red circle"]
    logits = pipe.match_logits(state, images, prompts)
    assert logits.shape == (6,) and logits.dtype == np.float32
    # D on the text tower's embedding of the prompts and the images in [-1, 1], by hand.
    t = pipe.text.apply({"params": state.params["text"]}, jnp.asarray(pipe.tokenize(prompts)))
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    expected = pipe.D.apply({"params": state.params["D"]}, x, t)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # Each pair's score is its own: scoring in two halves changes nothing.
    halves = [pipe.match_logits(state, images[k : k + 3], prompts[k : k + 3]) for k in (0, 3)]
    np.testing.assert_allclose(np.concatenate(halves), logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="6 images but 5 prompts"):
        pipe.match_logits(state, images, prompts[:5])
    with pytest.raises(ValueError, match="uint8"):
        pipe.match_logits(state, images.astype(np.float32), prompts)


def test_r1_weight_adds_the_penalty_to_the_discriminator_loss():
    pipe0, config = _pipeline("smoke,joint,gan")
    pipe1, _ = _pipeline("smoke,joint,gan", **{"gan.r1_weight": 10.0})
    batch = _batch(config)
    state = pipe0.init(jax.random.key(0), batch)
    new0, m0 = jax.jit(pipe0.train_step)(state, batch, jax.random.key(1))
    new1, m1 = jax.jit(pipe1.train_step)(state, batch, jax.random.key(1))
    # The penalty is added to D's loss (the logged d_loss grows by gamma times it) ...
    d = state.params["D"]
    t = pipe0.text.apply({"params": state.params["text"]}, jnp.asarray(batch["tokens"]))
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    penalty = r1_penalty(lambda im: pipe0.D.apply({"params": d}, im, t), x)
    np.testing.assert_allclose(m1["d_loss"] - m0["d_loss"], 10.0 * penalty, rtol=1e-4, atol=1e-6)
    # ... so D moves differently, and G, which trains against the updated D, sees another loss.
    diff = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), new0.params["D"], new1.params["D"]
    )
    assert max(jax.tree.leaves(diff)) > 0
    assert abs(float(m0["g_loss"]) - float(m1["g_loss"])) > 1e-7
    with pytest.raises(ValueError, match="r1_weight"):
        _pipeline("smoke,joint", **{"gan.r1_weight": -1.0})


def test_aux_weight_classifies_real_images_and_steers_the_generator():
    pipe, config = _pipeline("smoke,joint,gan,aux", **{"gan.aux_weight": 2.0})
    batch = _batch(config, keys=("image", "tokens", "parse"))
    state = pipe.init(jax.random.key(0), batch)
    assert {"aux_0", "aux_6"} <= set(state.params["D"])
    new, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    d, labels = state.params["D"], batch["parse"]
    t = pipe.text.apply({"params": state.params["text"]}, jnp.asarray(batch["tokens"]))
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    # The step's samples (z drawn as the step draws it).
    z = jax.random.normal(jax.random.split(jax.random.key(1))[0], (8, pipe.z_dim))
    fake = pipe.G.apply({"params": state.params["G"]}, z, t)
    # D's classifier on the real images, against numpy's cross-entropy with their labels ...
    real, aux = pipe.D.apply({"params": d}, x, t)
    want = parse_cross_entropy(aux, labels)
    np.testing.assert_allclose(metrics["d_aux"], want, rtol=1e-4)
    # ... added to the plain GAN's discriminator loss with its weight.
    fake_logits, _ = pipe.D.apply({"params": d}, fake, t)
    adversarial = np.mean(_sp(-np.asarray(real)) + _sp(np.asarray(fake_logits)))
    np.testing.assert_allclose(metrics["d_loss"], adversarial + 2.0 * want, rtol=1e-4)
    # G's term: the updated classifier's cross-entropy on the samples with their captions'
    # labels.
    _, aux_fake = pipe.D.apply({"params": new.params["D"]}, fake, t)
    want_g = parse_cross_entropy(aux_fake, labels)
    np.testing.assert_allclose(metrics["g_aux"], want_g, rtol=1e-4)
    right = np.all(np.stack([np.argmax(a, -1) for a in aux_fake], -1) == labels, -1)
    np.testing.assert_allclose(metrics["g_aux_accuracy"], right.mean())
    with pytest.raises(ValueError, match="parse_labels"):
        _pipeline("smoke,joint", **{"gan.aux_weight": 1.0})
    with pytest.raises(ValueError, match="aux_weight"):
        _pipeline("smoke,joint,aux", **{"gan.aux_weight": -1.0})


def test_recon_loss_by_hand():
    weights = {"gan.recon_weight": 3.0, "gan.kl_weight": 0.5}
    pipe, config = _pipeline("smoke,joint,gan", **weights)
    batch = _batch(config)
    params = pipe.init(jax.random.key(0), batch).params
    assert "fc_log_var" in params["S"]
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    t = pipe.text.apply({"params": params["text"]}, jnp.asarray(batch["tokens"]))
    key = jax.random.key(1)
    (loss, terms), (g_grads, s_grads) = jax.value_and_grad(
        pipe.recon_loss, argnums=(0, 1), has_aux=True
    )(params["G"], params["S"], x, t, key)
    # By hand: S encodes the real images, G redraws them from a code drawn from q(z | x) and
    # their own captions.
    mean, log_var = pipe.S.apply({"params": params["S"]}, x)
    eps = jax.random.normal(key, mean.shape)
    z_post = np.asarray(mean) + np.exp(0.5 * np.asarray(log_var)) * np.asarray(eps)
    x_rec = pipe.G.apply({"params": params["G"]}, jnp.asarray(z_post), t)
    np.testing.assert_allclose(terms["recon_l1"], np.abs(x_rec - x).mean(), rtol=1e-5)
    m, lv = np.asarray(mean, np.float64), np.asarray(log_var, np.float64)
    want_kl = 0.5 * np.mean(np.sum(m**2 + np.exp(lv) - 1 - lv, axis=-1))
    np.testing.assert_allclose(terms["kl"], want_kl, rtol=1e-5)
    np.testing.assert_allclose(loss, 3.0 * terms["recon_l1"] + 0.5 * want_kl, rtol=1e-5)
    # Both G and S's log-variance head learn from it.
    assert float(optax.tree.norm(g_grads)) > 0
    assert float(jnp.abs(s_grads["fc_log_var"]["kernel"]).max()) > 0
    # Style transfer reads S's mean.
    ref = np.asarray((x[:2] + 1.0) * 127.5, np.uint8)
    np.testing.assert_allclose(
        pipe._invert(params["S"], ref),
        pipe.S.apply({"params": params["S"]}, jnp.asarray(ref, jnp.float32) / 127.5 - 1.0)[0],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="kl_weight"):
        _pipeline("smoke,joint", **{"gan.recon_weight": 1.0, "gan.kl_weight": 0.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        _pipeline("smoke,joint", **{"gan.recon_weight": -1.0})


def test_clip_weight_scores_samples_with_the_frozen_clip(clip_smoke_workdir):
    from jaxgen.pipelines.clip import load_clip_params

    common = {"model.text_init": str(clip_smoke_workdir), "gan.variant": "gan"}
    pipe0, config = _pipeline("smoke", **common)
    pipe1, _ = _pipeline("smoke", **common, **{"gan.clip_weight": 0.5})
    batch = _batch(config)
    state = pipe1.warm_start(pipe1.init(jax.random.key(0), batch))
    # The image tower and scale are the CLIP run's, and embed as that run does.
    clip, _ = load_clip_params(clip_smoke_workdir)
    assert sorted(state.params["clip_image"]) == ["image", "image_proj", "logit_scale"]
    chex.assert_trees_all_equal(
        state.params["clip_image"], {k: clip[k] for k in state.params["clip_image"]}
    )
    clip_run = jaxgen.load(clip_smoke_workdir)
    emb = pipe1.clip_model.apply(
        {"params": state.params["clip_image"]},
        jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0,
        method=CLIP.embed_image,
    )
    np.testing.assert_allclose(
        emb, clip_run.pipeline.embed_images(clip_run.state, batch["image"]), atol=1e-5
    )
    # The step adds clip_weight times the guidance to G's loss, leaves D's step alone (D moves
    # first) and the CLIP frozen.
    plain = {k: v for k, v in state.params.items() if k != "clip_image"}
    state0 = state.replace(params=plain, ema_params=state.ema_params)
    new0, m0 = jax.jit(pipe0.train_step)(state0, batch, jax.random.key(1))
    new1, m1 = jax.jit(pipe1.train_step)(state, batch, jax.random.key(1))
    assert "g_clip" not in m0 and 0 < float(m1["g_clip"]) < 2 * np.log(len(batch["image"]))
    np.testing.assert_allclose(m1["g_loss"] - m0["g_loss"], 0.5 * m1["g_clip"], rtol=1e-4)
    chex.assert_trees_all_close(new0.params["D"], new1.params["D"])
    chex.assert_trees_all_equal(new1.params["clip_image"], state.params["clip_image"])
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), new0.params["G"], new1.params["G"]
    )
    assert max(jax.tree.leaves(moved)) > 0
    # A CLIP trained at another image size cannot score the samples.
    pipe32, config32 = _pipeline(
        "smoke", **common, **{"gan.clip_weight": 1.0, "data.image_size": 32}
    )
    with pytest.raises(ValueError, match="cannot score this GAN's 32x32 samples"):
        pipe32.warm_start(pipe32.init(jax.random.key(0), _batch(config32, 2)))
    with pytest.raises(ValueError, match="text_source='clip'"):
        _pipeline("smoke,joint", **{"gan.clip_weight": 1.0})
    with pytest.raises(ValueError, match="clip_weight must be >= 0"):
        _pipeline("smoke", **{"gan.clip_weight": -1.0})


def test_d_features_feed_d_the_frozen_clip_image_tower(clip_smoke_workdir):
    from jaxgen.pipelines.clip import load_clip_params

    common = {"model.text_init": str(clip_smoke_workdir), "gan.variant": "gan"}
    pipe, config = _pipeline("smoke", **common, **{"model.d_features": "clip"})
    batch = _batch(config)
    state = pipe.warm_start(pipe.init(jax.random.key(0), batch))
    clip, _ = load_clip_params(clip_smoke_workdir)
    chex.assert_trees_all_equal(
        state.params["clip_image"], {k: clip[k] for k in state.params["clip_image"]}
    )
    # The map D reads is the CLIP image tower's last one, before its pooling: a dense layer
    # on it, flattened, gives the tower's own feature vector.
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    fmap = pipe._features(state.params, x)
    image = state.params["clip_image"]["image"]
    fc = fmap.reshape(fmap.shape[0], -1) @ image["fc"]["kernel"] + image["fc"]["bias"]
    h = jax.nn.gelu(fc)
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    want = (h - mu) / jnp.sqrt(var + 1e-6) * image["ln_out"]["scale"] + image["ln_out"]["bias"]
    got = pipe.clip_model.apply(
        {"params": state.params["clip_image"]}, x, method=lambda m, im: m.image_encoder(im)
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # A step trains D's feature layer and leaves the CLIP frozen.
    new, _ = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    chex.assert_trees_all_equal(new.params["clip_image"], state.params["clip_image"])
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()),
        new.params["D"]["features"],
        state.params["D"]["features"],
    )
    assert max(jax.tree.leaves(moved)) > 0
    with pytest.raises(ValueError, match="text_source='clip'"):
        _pipeline("smoke,joint", **{"model.d_features": "clip"})
    with pytest.raises(ValueError, match="Unknown model.d_features"):
        _pipeline("smoke", **common, **{"model.d_features": "vgg"})


def test_warm_start_rejects_a_clip_text_tower_of_another_shape(clip_smoke_workdir):
    pipe, config = _pipeline(
        "smoke", **{"model.text_init": str(clip_smoke_workdir), "model.text.width": 64}
    )
    with pytest.raises(ValueError, match="does not fit this GAN's model.text"):
        pipe.warm_start(pipe.init(jax.random.key(0), _batch(config, 2)))


def test_frozen_clip_text_and_bad_settings():
    with pytest.raises(ValueError, match="text_init"):
        _pipeline("smoke", **{"model.text_init": ""})
    with pytest.raises(ValueError, match="gan.variant"):
        _pipeline(**{"gan.variant": "gan_xyz"})
    with pytest.raises(ValueError, match="text_source"):
        _pipeline(**{"model.text_source": "bert"})
    with pytest.raises(ValueError, match="model.d_norm"):
        _pipeline("smoke,joint", **{"model.d_norm": "batch"})
    with pytest.raises(ValueError, match="Unknown gan_int_cls.py variant"):
        experiment_config("gan_int_cls", "gan,gan_cls")


def test_generation_interpolation_and_style_transfer():
    pipe, config = _pipeline()
    state = pipe.init(jax.random.key(0), _batch(config))
    prompts = ["a small red circle", "a large blue square"]
    imgs = pipe.generate(state, prompts, jax.random.key(0))
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    row = pipe.interpolate_prompts(state, *prompts, num=5)
    assert row.shape == (5, 16, 16, 3)
    # The ends of the text path are the prompts themselves with the same z.
    z = jnp.repeat(pipe.noise(1, jax.random.key(0)), 2, axis=0)
    np.testing.assert_array_equal(row[[0, -1]], pipe.generate(state, prompts, None, z=z))
    assert pipe.interpolate_noise(state, prompts[0], num=4).shape == (4, 16, 16, 3)
    # Style transfer: z comes from S(reference), so the same reference gives the same z.
    ref = imgs[:1].repeat(2, axis=0)
    out = pipe.generate(state, prompts, None, reference=ref)
    z_ref = pipe._invert(state.params["S"], ref)
    np.testing.assert_array_equal(out, pipe.generate(state, prompts, None, z=z_ref))
    with pytest.raises(ValueError, match="reference must be uint8"):
        pipe.generate(state, prompts, None, reference=np.zeros((1, 16, 16, 3), np.uint8))
    # The reconstruction evaluator judges G(S(x), phi(caption of x)) of real images.
    config.eval.num_samples = 8
    judged = []
    score = pipe.judge.score
    pipe.judge.score = lambda images, truths: (
        judged.append((images, truths)) or score(images, truths)
    )
    rec = pipe.reconstruction_metrics(state, None)
    assert len(judged) == len(config.eval.splits)
    for (images, truths), split in zip(judged, config.eval.splits, strict=True):
        captions, _, real = pipe.judge.prompts(split, 8, seed=0)
        assert [e["caption"] for e in truths] == captions
        x = jnp.asarray(real, jnp.float32) / 127.5 - 1.0
        t = pipe.text.apply({"params": state.params["text"]}, jnp.asarray(pipe.tokenize(captions)))
        g = state.ema_params["G"]
        y = pipe.G.apply({"params": g}, pipe.S.apply({"params": state.params["S"]}, x), t)
        want = np.clip(np.round((np.asarray(y) + 1.0) * 127.5), 0, 255)
        assert np.abs(images.astype(float) - want).max() <= 1  # rounding at .5 may differ
        assert {f"{split}/rec_{k}": v for k, v in score(images, truths).items()} == {
            k: v for k, v in rec.items() if k.startswith(f"{split}/")
        }


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_smoke_run_pretrains_and_freezes_clip(tmp_path):
    import jaxgen
    from jaxgen.pipelines.clip import load_text_tower

    # The default trains config.pretrain.clip into <workdir>/pretrain/clip first.
    workdir = tmp_path / "gan"
    proc = run_cli("--config=experiments/gan_int_cls.py:smoke", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    clip_workdir = workdir / "pretrain" / "clip"
    assert (clip_workdir / "done.json").is_file() and (clip_workdir / "eval.json").is_file()
    assert json.loads((workdir / "config.json").read_text())["model"]["text_init"] == (
        "pretrain:clip"
    )
    results = json.loads((workdir / "eval.json").read_text())
    for key in (
        "test/colour",
        "test/shape",
        "test/frechet",
        "test/clip_score",
        "test/r_precision",
        "heldout/r_precision",
        "test/rec_shape",
        "heldout/rec_colour",
        "diversity",
    ):
        assert np.isfinite(results[key]), key
    model = jaxgen.load(workdir)  # resolves "pretrain:clip" to the run inside the workdir
    # The CLIP text tower was loaded and stayed frozen.
    chex.assert_trees_all_equal(model.state.params["text"], load_text_tower(clip_workdir)[0])
    assert model.generate(["a small red circle"]).shape == (1, 16, 16, 3)
    # The discriminator probe reads the run: a row per kind of mismatched caption, rates in [0, 1].
    probe = subprocess.run(
        [sys.executable, "benchmarks/d_match_probe.py", str(workdir), "--num=6"],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    rows = [
        r.split(" | ") for r in probe.stdout.splitlines() if r.startswith("| ") and "---" not in r
    ]
    assert [r[0] for r in rows[1:]] == [
        "| the next example's caption",
        "| colour changed",
        "| shape changed",
        "| size changed",
        "| relation changed",
    ]
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows[1:])
    examples = [shapes.ShapesSource("test", 16).example(i) for i in range(7)]
    two_objects = sum(bool(e["relation"]) for e in examples[:6])
    assert [int(r[1]) for r in rows[1:]] == [6, 6, 6, 6, two_objects]
    # Its first row, recomputed here from the same images and captions.
    images = np.stack([e["image"] for e in examples[:6]])
    right = model.pipeline.match_logits(model.state, images, [e["caption"] for e in examples[:6]])
    nxt = model.pipeline.match_logits(model.state, images, [e["caption"] for e in examples[1:]])
    assert rows[1][2:] == [f"{np.mean(right > nxt):.3f}", f"{np.mean(right - nxt):.3f} |"]
    # A rerun finds the pretraining done and the GAN finished: nothing is trained again.
    before = (clip_workdir / "metrics.jsonl").read_text()
    proc = run_cli("--config=experiments/gan_int_cls.py:smoke", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (clip_workdir / "metrics.jsonl").read_text() == before
