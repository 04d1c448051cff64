"""GAN-INT-CLS: network shapes, the losses against hand computations, interpolation, the variants,
style transfer through the inverse network, and smoke runs of the CLI."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import experiment_config, run_cli

import jaxgen
from jaxgen.data import shapes
from jaxgen.models.gan import Discriminator, Generator, InverseNetwork
from jaxgen.pipelines.gan_int_cls import (
    GANINTCLSPipeline,
    discriminator_loss,
    generator_loss,
    interpolate,
)
from jaxgen.training.workdir import build_pipeline


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
    config = experiment_config("gan_int_cls", arg)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return build_pipeline(config), config


def _batch(config, n=8):
    from jaxgen import data as data_lib

    src = data_lib.build_source(config.data, "train")
    return {k: np.stack([src[i][k] for i in range(n)]) for k in ("image", "tokens")}


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
        "test/clip_score",
        "test/r_precision",
        "heldout/r_precision",
        "diversity",
    ):
        assert np.isfinite(results[key]), key
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
