"""GAN-INT-CLS: network shapes, the losses against hand computations, interpolation, the variants,
style transfer through the inverse network, and smoke runs of the CLI."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import experiment_config, pipeline_from, run_cli, train_batch

import jaxgen
from jaxgen.data import shapes
from jaxgen.models.gan import Discriminator, Generator, InverseNetwork
from jaxgen.pipelines.gan_int_cls import (
    GANINTCLSPipeline,
    discriminator_loss,
    generator_loss,
    interpolate,
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


def test_generator_rejects_a_size_it_cannot_make():
    with pytest.raises(ValueError, match="power of two"):
        Generator(24).init(jax.random.key(0), jnp.zeros((1, 4)), jnp.zeros((1, 4)))


def test_discriminator_uses_the_text():
    d = Discriminator(16, 8, 16)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    t1, t2 = jnp.zeros((2, 24)), jnp.ones((2, 24))
    variables = d.init(jax.random.key(0), x, t1)
    assert np.abs(d.apply(variables, x, t1) - d.apply(variables, x, t2)).max() > 1e-4


def test_normalisations_by_hand():
    # G: a GroupNorm before every ReLU, one channel per group at widths <= 32 (instance
    # normalisation); D: a LayerNorm over each position's channels after every conv but the first.
    g = Generator(16, ch=8, text_dim=16)
    z, t = jax.random.normal(jax.random.key(1), (2, 10)), jnp.ones((2, 24))
    variables = g.init(jax.random.key(0), z, t)
    norms = {k for k in variables["params"] if k.startswith("norm")}
    assert norms == {"norm0", "norm1", "norm_out"}
    _, inter = g.apply(variables, z, t, capture_intermediates=True)
    h = np.asarray(inter["intermediates"]["fc"]["__call__"][0], np.float64).reshape(2, 4, 4, -1)
    got = inter["intermediates"]["norm0"]["__call__"][0]
    mu, var = h.mean((1, 2), keepdims=True), h.var((1, 2), keepdims=True)
    np.testing.assert_allclose(got, (h - mu) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)
    d = Discriminator(16, 8, 16)
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    variables = d.init(jax.random.key(0), x, t)
    _, inter = d.apply(variables, x, t, capture_intermediates=True)
    h = np.asarray(inter["intermediates"]["down"]["conv1"]["__call__"][0], np.float64)
    got = inter["intermediates"]["down"]["norm1"]["__call__"][0]
    per_pos = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, per_pos, rtol=1e-4, atol=1e-4)


def test_discriminator_scores_each_sample_alone():
    d = Discriminator(16, 8, 16)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    t = jax.random.normal(jax.random.key(3), (4, 24))
    variables = d.init(jax.random.key(0), x, t)
    both = d.apply(variables, x, t)
    np.testing.assert_allclose(both[:1], d.apply(variables, x[:1], t[:1]), rtol=1e-4, atol=1e-5)


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


def test_generator_loss_by_hand():
    fake = np.array([0.0, 2.0])
    np.testing.assert_allclose(generator_loss(fake), np.mean(_sp(-fake)), rtol=1e-6)


def test_interpolation_path():
    t1, t2 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 3.0]])
    np.testing.assert_allclose(interpolate(t1, t2, 1.0), t1)
    np.testing.assert_allclose(interpolate(t1, t2, 0.0), t2)
    np.testing.assert_allclose(interpolate(t1, t2, 0.25), [[0.25, 2.25]])


# -- the pipeline in process --------------------------------------------------------------------
def _pipeline(arg="smoke,joint", **overrides):
    return pipeline_from("gan_int_cls", arg, **overrides)


def _batch(config, n=8):
    return train_batch(config, n)


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
    pipe, config = _pipeline(f"smoke,joint,{variant}")
    batch = _batch(config)
    state = jax.jit(pipe.init)(jax.random.key(0), batch)
    new, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    for name in ("G", "D", "S", "text"):
        moved = jax.tree.map(
            lambda a, b: float(jnp.abs(a - b).max()), new.params[name], state.params[name]
        )
        assert max(jax.tree.leaves(moved)) > 0, (variant, name)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert (metrics["d_wrong"] > 0) and (metrics["d_real"] > 0)


def test_the_mismatched_caption_of_the_matching_aware_discriminator():
    pipe, config = _pipeline("smoke,joint,gan_cls")
    batch = _batch(config)
    state = jax.jit(pipe.init)(jax.random.key(0), batch)
    _, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    # d_wrong is D's mean belief in (real image, mismatched caption) before its update.
    t = pipe.text.apply({"params": state.params["text"]}, jnp.asarray(batch["tokens"]))
    t_wrong = np.roll(np.asarray(t), 1, axis=0)  # the neighbour's caption
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    want = jnp.mean(jax.nn.sigmoid(pipe.D.apply({"params": state.params["D"]}, x, t_wrong)))
    np.testing.assert_allclose(metrics["d_wrong"], want, rtol=1e-5)


def test_match_logits_score_each_pair_with_d_on_its_own():
    pipe, config = _pipeline("smoke,joint")
    state = jax.jit(pipe.init)(jax.random.key(0), _batch(config))
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


def test_warm_start_loads_the_clip_text_tower(clip_smoke_workdir):
    pipe, config = _pipeline("smoke", **{"model.text_init": str(clip_smoke_workdir)})
    batch = _batch(config, 2)
    state = pipe.warm_start(jax.jit(pipe.init)(jax.random.key(0), batch))
    # The text tower is the CLIP run's (EMA) one; it has no optimizer (frozen).
    clip = jaxgen.load(clip_smoke_workdir).state.ema_params["clip"]
    chex.assert_trees_all_equal(state.params["text"], jax.device_get(clip["text"]))
    assert "text" not in state.opt_state
    # Built without the training layer's loader, the pipeline cannot read the CLIP run.
    with pytest.raises(ValueError, match="without a loader"):
        GANINTCLSPipeline(config).warm_start(state)


def test_warm_start_rejects_a_clip_text_tower_of_another_shape(clip_smoke_workdir):
    pipe, config = _pipeline(
        "smoke", **{"model.text_init": str(clip_smoke_workdir), "model.text.width": 64}
    )
    with pytest.raises(ValueError, match="does not fit this GAN's model.text"):
        pipe.warm_start(jax.jit(pipe.init)(jax.random.key(0), _batch(config, 2)))


def test_frozen_clip_text_and_bad_settings():
    with pytest.raises(ValueError, match="text_init"):
        _pipeline("smoke", **{"model.text_init": ""})
    with pytest.raises(ValueError, match="gan.variant"):
        _pipeline(**{"gan.variant": "gan_xyz"})
    with pytest.raises(ValueError, match="text_source"):
        _pipeline(**{"model.text_source": "bert"})
    with pytest.raises(ValueError, match="one of gan, gan_cls, gan_int, gan_int_cls at most"):
        experiment_config("gan_int_cls", "gan,gan_cls")
    with pytest.raises(ValueError, match="Unknown gan_int_cls.py variant 'aux'.*joint, smoke"):
        experiment_config("gan_int_cls", "aux")


def test_generation_interpolation_and_style_transfer():
    pipe, config = _pipeline()
    state = jax.jit(pipe.init)(jax.random.key(0), _batch(config))
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


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_smoke_run_pretrains_and_freezes_clip(tmp_path):
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
        "diversity",
    ):
        assert np.isfinite(results[key]), key
    # The smoke config names no evaluation CLIP: the GAN's own text CLIP does not score it.
    assert "test/r_precision" not in results
    model = jaxgen.load(workdir)  # resolves "pretrain:clip" to the run inside the workdir
    # The CLIP text tower was loaded and stayed frozen.
    clip = jaxgen.load(clip_workdir).state.ema_params["clip"]
    chex.assert_trees_all_equal(model.state.params["text"], clip["text"])
    assert model.generate(["a small red circle"]).shape == (1, 16, 16, 3)
    # The trained D scores (image, caption) pairs: one finite logit each.
    examples = [shapes.ShapesSource("test", 16).example(i) for i in range(6)]
    images = np.stack([e["image"] for e in examples])
    right = model.pipeline.match_logits(model.state, images, [e["caption"] for e in examples])
    assert right.shape == (6,) and np.all(np.isfinite(right))
    # A rerun finds the pretraining done and the GAN finished: nothing is trained again.
    before = (clip_workdir / "metrics.jsonl").read_text()
    proc = run_cli("--config=experiments/gan_int_cls.py:smoke", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (clip_workdir / "metrics.jsonl").read_text() == before


# -- the train step's losses, recomputed from the networks' outputs -----------------------------
PAPER_BETA = 0.5  # Reed et al. 2016, section 4.3: GAN-INT interpolates with beta = 0.5.
# Algorithm 1 (GAN-CLS): L_D = log(s_r) + (log(1 - s_w) + log(1 - s_f)) / 2.
PAPER_WRONG_WEIGHT = PAPER_FAKE_WEIGHT = 0.5


def _softplus64(v):
    """softplus in float64 numpy: ``-log sigmoid(-v) = -log(1 - sigmoid(v))``."""
    return np.logaddexp(0.0, np.asarray(v, np.float64))


@functools.cache
def _stepped(variant):
    """A ``smoke,joint,<variant>`` pipeline (the configuration, batch and initial state of
    ``test_a_step_trains_every_network``, so their compilations are shared) whose networks are
    moved far from their nearly text-blind initialisation, so that every term of the losses
    changes their values visibly; and one train step from it."""
    pipe, config = _pipeline(f"smoke,joint,{variant}")
    batch = _batch(config)
    state = jax.jit(pipe.init)(jax.random.key(0), batch)
    rs = np.random.default_rng(0)

    def perturb(path, p):  # the text projections most: D and G read the text through them
        scale = 3.0 if "text_proj" in jax.tree_util.keystr(path) else 0.3
        return np.asarray(p) + scale * rs.standard_normal(p.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(perturb, state.params)
    state = state.replace(params=params)
    rng = jax.random.key(1)
    new, metrics = jax.jit(pipe.train_step)(state, batch, rng)
    # The step's noise (its own split of rng): z for G and as S's target, and an independent z
    # for the interpolated texts.
    k_z, k_int = jax.random.split(rng)
    b = len(batch["image"])
    noise = jax.random.normal(k_z, (b, pipe.z_dim)), jax.random.normal(k_int, (b, pipe.z_dim))
    return pipe, config, batch, state, new, metrics, noise


@pytest.mark.parametrize("variant", ["gan", "gan_int_cls"])
def test_train_step_losses_recomputed_from_the_networks_outputs(variant):
    """GAN-INT-CLS (Reed et al. 2016): the step's d_loss (Algorithm 1's matching-aware loss, or
    the plain GAN's), g_loss (non-saturating, plus the GAN-INT term on ``beta * t1 + (1 - beta)
    * t2`` with the paper's beta = 1/2) and s_loss (section 4.4's inverse network,
    ``||z - S(G(z, phi(t)))||^2``) written out in float64 numpy from the networks' outputs."""
    pipe, config, batch, state, new, metrics, (z, z_int) = _stepped(variant)
    matching_aware, use_int = variant == "gan_int_cls", variant == "gan_int_cls"
    assert float(config.gan.int_beta) == PAPER_BETA and float(config.gan.int_weight) == 1.0

    @jax.jit
    def outputs(p, p_new):
        x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
        t = pipe.text.apply({"params": p["text"]}, jnp.asarray(batch["tokens"]))
        t_wrong = jnp.roll(t, 1, axis=0)  # each image with its neighbour's caption
        t_int = PAPER_BETA * t + (1.0 - PAPER_BETA) * t_wrong
        fake = pipe.G.apply({"params": p["G"]}, z, t)
        fake_int = pipe.G.apply({"params": p["G"]}, z_int, t_int)

        def d(d_params, images, texts):
            return pipe.D.apply({"params": d_params}, images, texts)

        return {
            "real": d(p["D"], x, t),  # D before its update
            "wrong": d(p["D"], x, t_wrong),
            "fake": d(p["D"], fake, t),
            "g_fake": d(p_new["D"], fake, t),  # G trains against the updated D
            "g_int": d(p_new["D"], fake_int, t_int),
            "z_hat": pipe.S.apply({"params": p["S"]}, fake),
        }

    out = jax.tree.map(lambda v: np.asarray(v, np.float64), outputs(state.params, new.params))
    # D: l_real(s) = -log sigmoid(s), l_fake(s) = -log(1 - sigmoid(s)).
    if matching_aware:
        want_d = np.mean(
            _softplus64(-out["real"])
            + PAPER_WRONG_WEIGHT * _softplus64(out["wrong"])
            + PAPER_FAKE_WEIGHT * _softplus64(out["fake"])
        )
    else:
        want_d = np.mean(_softplus64(-out["real"]) + _softplus64(out["fake"]))
    # G: -log sigmoid(D(G(z, t), t)), and with GAN-INT the same on the interpolated texts.
    want_g = np.mean(_softplus64(-out["g_fake"]))
    if use_int:
        want_g += np.mean(_softplus64(-out["g_int"]))
    # S: the squared Euclidean distance in z space, averaged over the batch.
    want_s = np.mean(np.sum((np.asarray(z, np.float64) - out["z_hat"]) ** 2, axis=-1))
    for name, want in (("d_loss", want_d), ("g_loss", want_g), ("s_loss", want_s)):
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(float(metrics["loss"]), want_d + want_g, rtol=2e-5)
    for name in ("real", "wrong", "fake"):
        np.testing.assert_allclose(
            float(metrics[f"d_{name}"]), np.mean(1.0 / (1.0 + np.exp(-out[name]))), rtol=1e-5
        )


def test_first_updates_descend_the_recomputed_losses():
    """Each network's first Adam update is ``-lr * g / (|g| + eps)`` (no clipping, no weight
    decay): elementwise minus the sign of its gradient, here of the losses written out above
    (G's with the GAN-INT term) differentiated independently of the train step."""
    pipe, config, batch, state, new, _, (z, z_int) = _stepped("gan_int_cls")
    assert float(config.train.grad_clip) == 0.0
    assert float(config.train.get("weight_decay", 0.0)) == 0.0
    p, p_new = state.params, new.params

    @jax.jit
    def gradients(p, p_new):
        t = pipe.text.apply({"params": p["text"]}, jnp.asarray(batch["tokens"]))
        t_int = PAPER_BETA * t + (1.0 - PAPER_BETA) * jnp.roll(t, 1, axis=0)
        fake = pipe.G.apply({"params": p["G"]}, z, t)

        def g_loss(g_params):
            total = 0.0
            for noise, texts in ((z, t), (z_int, t_int)):
                images = pipe.G.apply({"params": g_params}, noise, texts)
                logits = pipe.D.apply({"params": p_new["D"]}, images, texts)
                total += jnp.mean(jax.nn.softplus(-logits))
            return total

        def s_loss(s_params):
            z_hat = pipe.S.apply({"params": s_params}, fake)
            return jnp.mean(jnp.sum((z - z_hat) ** 2, axis=-1))

        return {"G": jax.grad(g_loss)(p["G"]), "S": jax.grad(s_loss)(p["S"])}

    lr = float(config.train.learning_rate)
    for name, grads in gradients(p, p_new).items():
        largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
        for (path, grad), old, moved in zip(
            jax.tree_util.tree_leaves_with_path(grads),
            jax.tree.leaves(p[name]),
            jax.tree.leaves(p_new[name]),
            strict=True,
        ):
            grad, step = np.asarray(grad), (np.asarray(moved) - np.asarray(old)) / -lr
            clear = np.abs(grad) > 1e-4 * largest  # not lost in float32 rounding
            np.testing.assert_allclose(
                step[clear],
                np.sign(grad[clear]),
                atol=2e-2,
                err_msg=f"{name}{jax.tree_util.keystr(path)}",
            )


# -- the evaluation judges the samples it was given ---------------------------------------------
def test_final_evaluation_numbers_recomputed_from_the_samples():
    """The final evaluation (what eval.json holds), with ``generate`` replaced by stand-ins whose
    samples are known: the judge gives the dataset's own images of the prompts full marks and
    their neighbours' images far less, the Frechet distance of the real images to themselves
    is 0, and ``diversity`` is the mean pairwise RMS distance recomputed from the samples."""
    from jaxgen.training import workdir as workdir_lib

    pipe, config = _pipeline("smoke,joint")
    splits, n = tuple(config.eval.splits), int(config.eval.num_samples)
    per = int(config.eval.diversity_samples)
    real = {}  # caption -> a real image of it, from each split's evaluation prompts
    for split in splits:
        captions, _, images = pipe.judge.prompts(split, n, seed=0)
        real.update(zip(captions, images, strict=True))
    mode, diversity_samples = ["real"], []

    def generate(state, prompts, rng, **options):
        del state, options
        prompts = list(prompts)
        if len(set(prompts)) == 1 and len(prompts) == per:  # diversity: samples of one prompt
            seed = int(jax.random.randint(rng, (), 0, 2**30))
            images = np.random.default_rng(seed).integers(0, 256, (per, 16, 16, 3), np.uint8)
            diversity_samples.append(images)
            return images
        images = np.stack([real[p] for p in prompts])
        return images if mode[0] == "real" else np.roll(images, 1, axis=0)

    pipe.generate = generate
    results = workdir_lib.run_evaluators(pipe, None, jax.random.key(0), final=True)
    for split in splits:
        for key in ("colour", "shape", "size", "count", "all"):
            assert results[f"{split}/{key}"] == 1.0, (split, key, results)
        assert abs(results[f"{split}/frechet"]) < 1e-3, results
    # Diversity by hand: each pair of one prompt's samples once, RMS over pixels in [0, 1].
    assert len(diversity_samples) == int(config.eval.diversity_prompts)
    per_prompt = []
    for images in diversity_samples:
        x = images.reshape(per, -1).astype(np.float64) / 255.0
        pairs = [(i, j) for i in range(per) for j in range(i + 1, per)]
        per_prompt.append(np.mean([np.sqrt(np.mean((x[i] - x[j]) ** 2)) for i, j in pairs]))
    np.testing.assert_allclose(results["diversity"], np.mean(per_prompt), rtol=1e-9)

    mode[0] = "rolled"  # each prompt gets its neighbour's image
    rolled = workdir_lib.run_evaluators(pipe, None, jax.random.key(0), final=True)
    for split in splits:
        assert rolled[f"{split}/all"] <= 0.25, (split, rolled)
        assert rolled[f"{split}/shape"] <= 0.6, (split, rolled)
