"""The family's default GAN (experiments/gan.py): word attention in the generator, the CLIP-feature
matching-aware discriminator, the hinge loss, DF-GAN's gradient penalty and the CLIP term, each
against a hand computation; the frozen CLIP; bad settings; a CLI smoke run."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    copy_workdir,
    experiment_config,
    pipeline_from,
    run_cli,
    shared_config_run,
    train_batch,
)

import jaxgen
from jaxgen.models.gan import AttnGenerator, Discriminator, WordAttention
from jaxgen.pipelines.gan_int_cls import (
    clip_contrastive_loss,
    discriminator_loss,
    generator_loss,
    matching_gradient_penalty,
    nearest_mismatch,
)


# -- networks -----------------------------------------------------------------------------------
def _words(b=2, length=7, width=12, pads=(2, 4)):
    words = jax.random.normal(jax.random.key(5), (b, length, width))
    mask = np.ones((b, length), np.float32)
    for i, p in enumerate(pads[:b]):
        mask[i, length - p :] = 0.0  # trailing PAD tokens
    return words, jnp.asarray(mask)


@pytest.mark.parametrize("size", [16, 32])
def test_attention_generator_shapes_and_attention_maps(size):
    g = AttnGenerator(size, ch=8, text_dim=16, attention_sizes=(4, 8), num_heads=2)
    z, t = jax.random.normal(jax.random.key(0), (2, 10)), jnp.ones((2, 24))
    words, mask = _words()
    variables = g.init(jax.random.key(1), z, t, words, mask)
    img, inter = g.apply(variables, z, t, words, mask, mutable=["intermediates"])
    chex.assert_shape(img, (2, size, size, 3))
    chex.assert_type(img, jnp.float32)
    assert float(jnp.abs(img).max()) <= 1.0
    maps = {k: v["attention"][0] for k, v in inter["intermediates"].items()}
    assert sorted(maps) == ["attn0", "attn1"]  # at 4x4 and 8x8
    for name, side in (("attn0", 4), ("attn1", 8)):
        w = np.asarray(maps[name])
        chex.assert_shape(w, (2, 2, side * side, 7))  # [B, heads, H * W, L]
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
        assert np.all(w[0, :, :, -2:] == 0) and np.all(w[1, :, :, -4:] == 0)  # PAD: no weight
    with pytest.raises(ValueError, match="needs the words"):
        g.apply(variables, z, t)


def test_generator_reads_the_words_once_attention_is_trained():
    # The output projection starts at zero (the block is the identity), so the words matter
    # only through a trained projection: set it, and other words give other images.
    g = AttnGenerator(16, ch=8, text_dim=16, attention_sizes=(4,), num_heads=2)
    z, t = jnp.zeros((1, 10)), jnp.ones((1, 24))
    words, mask = _words(1)
    params = g.init(jax.random.key(1), z, t, words, mask)["params"]
    same = g.apply({"params": params}, z, t, words * 0, mask)
    np.testing.assert_allclose(g.apply({"params": params}, z, t, words, mask), same, atol=1e-6)
    kernel = params["attn0"]["out"]["kernel"]
    params["attn0"]["out"]["kernel"] = jax.random.normal(jax.random.key(2), kernel.shape)
    a = g.apply({"params": params}, z, t, words, mask)
    b = g.apply({"params": params}, z, t, words * 0, mask)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_word_attention_by_hand():
    attn = WordAttention(num_heads=1)
    x = jax.random.normal(jax.random.key(0), (1, 2, 2, 4))
    words, mask = _words(1, length=3, width=5, pads=(1,))
    params = attn.init(jax.random.key(1), x, words, mask)["params"]
    params["out"]["kernel"] = jnp.eye(4)
    got = attn.apply({"params": params}, x, words, mask)
    # x + out(softmax(q k^T / sqrt(d)) v), written out in numpy over the two real tokens.
    p = jax.tree.map(np.asarray, params)
    xs = np.asarray(x, np.float64).reshape(4, 4)
    ln = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-6)
    ln = ln * p["ln"]["scale"] + p["ln"]["bias"]
    q = (ln + p["pos"]) @ p["q"]["kernel"] + p["q"]["bias"]
    kv = np.asarray(words[0, :2], np.float64) @ p["kv"]["kernel"] + p["kv"]["bias"]
    k, v = kv[:, :4], kv[:, 4:]
    logits = q @ k.T / 2.0
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = xs + (w @ v) @ np.eye(4) + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(got).reshape(4, 4), want, rtol=1e-4, atol=1e-4)


def test_discriminator_with_clip_features():
    d = Discriminator(16, 8, 16)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    t = jax.random.normal(jax.random.key(2), (3, 24))
    f = jax.random.normal(jax.random.key(3), (3, 20))
    params = d.init(jax.random.key(0), x, t, f)["params"]
    assert {"clip_proj", "clip_match"} <= set(params)
    logits = d.apply({"params": params}, x, t, f)
    chex.assert_shape(logits, (3,))
    # The projection term <W f, t> is added to the logit (and starts at zero).
    w = jax.random.normal(jax.random.key(4), params["clip_match"]["kernel"].shape)
    moved = {**params, "clip_match": {"kernel": w}}
    np.testing.assert_allclose(
        d.apply({"params": moved}, x, t, f) - logits,
        np.sum((np.asarray(f) @ np.asarray(w)) * np.asarray(t), -1),
        rtol=1e-4,
        atol=1e-4,
    )
    # Without CLIP features the discriminator is the paper's: no CLIP parameters.
    assert "clip_proj" not in d.init(jax.random.key(0), x, t)["params"]


# -- losses by hand -----------------------------------------------------------------------------
def test_hinge_matching_aware_loss_by_hand():
    real, fake = np.array([2.0, 0.5]), np.array([-0.3, 0.7])
    wrong = np.array([0.5, -1.5, 1.2, -2.0])  # random and nearest mismatches, two of each
    want = np.mean([0.0, 0.5]) + 0.5 * (np.mean([1.5, 0.0, 2.2, 0.0]) + np.mean([0.7, 1.7]))
    got = discriminator_loss(real, wrong, fake, matching_aware=True, kind="hinge")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got = discriminator_loss(real, wrong, fake, matching_aware=False, kind="hinge")
    np.testing.assert_allclose(got, np.mean([0.0, 0.5]) + np.mean([0.7, 1.7]), rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake, "hinge"), -0.2, rtol=1e-6)


def test_matching_aware_gradient_penalty_by_hand():
    # D(x, t) = 0.5 * sum(x^2) + <b, t>: per pair the gradient is (x_i, b), its norm
    # sqrt(|x_i|^2 + |b|^2); MA-GP = weight * mean(norm ** power).
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 3))
    t = jax.random.normal(jax.random.key(1), (3, 5))
    b = np.arange(5.0) / 10

    def score(images, texts):
        return 0.5 * jnp.sum(jnp.square(images), axis=(1, 2, 3)) + texts @ b

    norms = np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=(1, 2, 3)) + np.sum(b**2))
    got = matching_gradient_penalty(score, x, t, weight=2.0, power=6.0)
    np.testing.assert_allclose(got, 2.0 * np.mean(norms**6), rtol=1e-4)


def test_clip_term_is_the_direct_cross_entropy():
    rs = np.random.default_rng(0)
    img = rs.standard_normal((4, 6))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = rs.standard_normal((4, 6))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    scale = 2.5
    want = 0.0
    for i in range(4):  # -log p(caption i | image i) among the batch's captions
        s = np.exp(scale) * np.array([img[i] @ txt[j] for j in range(4)])
        want -= s[i] - np.log(np.sum(np.exp(s)))
    got = clip_contrastive_loss(jnp.asarray(img), jnp.asarray(txt), scale)
    np.testing.assert_allclose(got, want / 4, rtol=1e-5)


def test_nearest_mismatch_picks_the_closest_different_caption():
    labels = jnp.array(
        [
            [0, 1, 0, 2],  # 0
            [0, 1, 0, 2],  # 1: the same content as 0
            [0, 1, 1, 2],  # 2: one field from 0 and 1
            [3, 2, 1, 0],  # 3: three fields from 2, four from 0 and 1
        ]
    )
    np.testing.assert_array_equal(nearest_mismatch(labels), [2, 2, 0, 2])
    # A batch of one content has no different caption: the right neighbour's.
    np.testing.assert_array_equal(nearest_mismatch(jnp.zeros((3, 4), jnp.int32)), [1, 2, 0])


# -- the pipeline in process --------------------------------------------------------------------
def _pipeline(arg="smoke", **overrides):
    # The tests build states with init and do not warm-start from a CLIP run.
    overrides = {"model.text_init": "unused: no warm start", **overrides}
    return pipeline_from("gan", arg, **overrides)


def _batch(config, n=8):
    return train_batch(config, n, ("image", "tokens", "parse"))


def test_variants_and_ablations_select_their_components():
    got = {}
    for arg in (
        "smoke",
        "smoke,no_clip_loss",
        "smoke,no_clip_d",
        "smoke,no_attention",
        "smoke,int",
    ):
        pipe, config = _pipeline(arg)
        got[arg] = (
            pipe.clip_weight > 0,
            pipe.d_clip,
            bool(config.model.attention_sizes),
            pipe.use_int,
            pipe.matching_aware,
            pipe.loss_kind,
        )
    assert got == {
        "smoke": (True, True, True, False, True, "hinge"),
        "smoke,no_clip_loss": (False, True, True, False, True, "hinge"),
        "smoke,no_clip_d": (True, False, True, False, True, "hinge"),
        "smoke,no_attention": (True, True, False, False, True, "hinge"),
        "smoke,int": (True, True, True, True, True, "hinge"),
    }
    default = experiment_config("gan")
    assert default.pipeline == "gan" and default.pretrain.clip == "clip:joint,parse"
    assert default.eval.clip_workdir == "shared:clip:eval" and default.train.max_minutes == 20


@pytest.fixture(scope="module")
def stepped():
    pipe, config = _pipeline("smoke,int")
    batch = _batch(config)
    state = jax.jit(pipe.init)(jax.random.key(0), batch)
    new, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    return pipe, batch, state, new, metrics


def test_a_step_trains_g_d_s_and_leaves_the_clip_frozen(stepped):
    pipe, _, state, new, metrics = stepped
    for name in ("G", "D", "S"):
        moved = jax.tree.leaves(
            jax.tree.map(
                lambda a, b: float(jnp.abs(a - b).max()), new.params[name], state.params[name]
            )
        )
        assert max(moved) > 0, name
    # The CLIP towers have parameters in the state but no optimizer: unchanged by the step.
    assert set(new.opt_state) == {"G", "D", "S"}
    chex.assert_trees_all_equal(new.params["clip"], state.params["clip"])
    chex.assert_trees_all_equal(new.params["text"], state.params["text"])
    for key in ("clip_loss", "gp", "d_loss", "g_loss"):
        assert np.isfinite(float(metrics[key])), key


def test_the_steps_clip_term_and_penalty_recomputed(stepped):
    pipe, batch, state, _, metrics = stepped
    params = state.params
    cond = pipe._condition(params["text"], jnp.asarray(batch["tokens"]))
    x = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    # MA-GP on (real image, right caption), through the frozen CLIP features, by finite
    # differences along random directions of the image and the caption embedding.
    feats = pipe.clip_image.apply({"params": params["clip"]["image"]}, x)

    def d(xx, tt):
        f = pipe.clip_image.apply({"params": params["clip"]["image"]}, xx)
        return pipe.D.apply({"params": params["D"]}, xx, tt, f)

    assert feats.shape[0] == x.shape[0]
    eps = 1e-2
    gx, gt = jax.grad(lambda a, b: jnp.sum(d(a, b)), argnums=(0, 1))(x, cond["emb"])
    vx = jax.random.normal(jax.random.key(7), x.shape)
    vx = vx / jnp.sqrt(jnp.sum(jnp.square(vx), axis=(1, 2, 3), keepdims=True))  # unit per image
    fd = (d(x + eps * vx, cond["emb"]) - d(x - eps * vx, cond["emb"])) / (2 * eps)
    np.testing.assert_allclose(fd, jnp.sum(gx * vx, axis=(1, 2, 3)), rtol=0.05, atol=1e-3)
    norms = np.sqrt(
        np.sum(np.asarray(gx, np.float64) ** 2, axis=(1, 2, 3))
        + np.sum(np.asarray(gt, np.float64) ** 2, axis=1)
    )
    np.testing.assert_allclose(metrics["gp"], 2.0 * np.mean(norms**6), rtol=1e-3)
    # The CLIP term: G's images of the step (EMA aside, the params' G with the step's z).
    k_z, _ = jax.random.split(jax.random.key(1))
    z = jax.random.normal(k_z, (x.shape[0], pipe.z_dim))
    fake = pipe._g(params["G"], z, cond)
    f = pipe.clip_image.apply({"params": params["clip"]["image"]}, fake)
    emb = np.asarray(f, np.float64) @ np.asarray(params["clip"]["image_proj"]["kernel"])
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
    logits = np.exp(float(params["clip"]["logit_scale"])) * emb @ np.asarray(cond["emb"]).T
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True))
    logp -= logits.max(1, keepdims=True)
    np.testing.assert_allclose(metrics["clip_loss"], -np.mean(np.diag(logp)), rtol=1e-3)


def test_generation_and_interpolation_with_the_attention_generator(stepped):
    pipe, _, _, new, _ = stepped
    prompts = ["a small red circle", "a large blue square left of a small green triangle"]
    imgs = pipe.generate(new, prompts, jax.random.key(0))
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    row = pipe.interpolate_prompts(new, *prompts, num=4)
    z = jnp.repeat(pipe.noise(1, jax.random.key(0)), 2, axis=0)
    np.testing.assert_array_equal(row[[0, -1]], pipe.generate(new, prompts, None, z=z))
    assert pipe.interpolate_noise(new, prompts[0], num=3).shape == (3, 16, 16, 3)
    # The paper's style transfer: z read from references by S, the content from the prompts.
    z_ref = pipe._invert(new.params["S"], imgs)
    np.testing.assert_array_equal(
        pipe.generate(new, prompts, None, reference=imgs),
        pipe.generate(new, prompts, None, z=z_ref),
    )
    logits = pipe.match_logits(new, imgs, prompts)
    assert logits.shape == (2,) and np.all(np.isfinite(logits))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="model.generator"):
        _pipeline(**{"model.generator": "stylegan"})
    with pytest.raises(ValueError, match="gan.loss"):
        _pipeline(**{"gan.loss": "wasserstein"})
    with pytest.raises(ValueError, match="need model.text_source='clip'"):
        _pipeline(**{"model.text_source": "joint"})
    with pytest.raises(ValueError, match="matching-aware variant"):
        _pipeline(**{"gan.variant": "gan"})
    with pytest.raises(ValueError, match=">= 0"):
        _pipeline(**{"gan.clip_weight": -1.0})
    with pytest.raises(ValueError, match="Unknown gan.py variant 'digits'"):
        experiment_config("gan", "digits")
    pipe, config = _pipeline()
    batch = _batch(config)
    state = jax.jit(pipe.init)(jax.random.key(0), batch)
    with pytest.raises(ValueError, match="data.parse_labels=True"):
        pipe.train_step(state, {k: batch[k] for k in ("image", "tokens")}, jax.random.key(1))


def test_warm_start_rejects_a_clip_image_tower_of_another_shape(clip_smoke_workdir):
    # clip.py:smoke is bidirectional and factorised; the settings must say so to load it.
    pipe, config = _pipeline(
        **{
            "model.text_init": str(clip_smoke_workdir),
            "model.text.causal": False,
            "model.clip_image.widths": (8, 32),
        }
    )
    state = jax.jit(pipe.init)(jax.random.key(0), _batch(config, 2))
    with pytest.raises(ValueError, match="does not fit this GAN's model.clip_image"):
        pipe.warm_start(state)
    pipe, config = _pipeline(
        **{
            "model.text_init": str(clip_smoke_workdir),
            "model.text.causal": False,
            "model.clip_image.colour": "factorised",
        }
    )
    state = pipe.warm_start(jax.jit(pipe.init)(jax.random.key(0), _batch(config, 2)))
    clip = jaxgen.load(clip_smoke_workdir).state.ema_params["clip"]
    chex.assert_trees_all_equal(state.params["clip"]["image"], jax.device_get(clip["image"]))


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_smoke_run_sample_and_eval(tmp_path, tmp_path_factory):
    # The smoke run the README test shares; a private copy for the reruns.
    proc = shared_config_run(tmp_path_factory, "--config=experiments/gan.py:smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    workdir = copy_workdir(proc.workdir, tmp_path / "gan")
    results = json.loads((workdir / "eval.json").read_text())
    for key in ("test/colour", "test/shape", "test/relation", "heldout/shape", "diversity"):
        assert np.isfinite(results[key]), key
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("clip_loss" in m and "gp" in m for m in metrics)
    model = jaxgen.load(workdir)
    # The frozen CLIP in the state is the pretraining run's.
    clip = jaxgen.load(workdir / "pretrain" / "clip").state.ema_params["clip"]
    chex.assert_trees_all_equal(model.state.params["clip"]["image"], clip["image"])
    chex.assert_trees_all_equal(model.state.params["text"], clip["text"])
    assert model.generate(["a small red circle above a large blue square"]).shape == (1, 16, 16, 3)
    # Sample and eval modes on the workdir (a finished run's rerun trains nothing: tested for
    # GAN-INT-CLS, the same pipeline and loop).
    proc = run_cli(
        "--config=experiments/gan.py:smoke",
        f"--workdir={workdir}",
        "--mode=sample",
        "--prompt=a small green circle",
        "--num_samples=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("--config=experiments/gan.py:smoke", f"--workdir={workdir}", "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
