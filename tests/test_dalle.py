"""DALL-E and MaskGIT: the transformer, its cache, the token samplers, the losses, the pipeline
and the CLI."""

import json
import math
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import copy_workdir, experiment_config, run_cli, shared_config_run

import jaxgen
from jaxgen.data import tokenizer
from jaxgen.data.tokenizer import PAD
from jaxgen.models import token_sampling as ts
from jaxgen.models.transformer import TokenTransformer
from jaxgen.pipelines import build_pipeline, dalle

K, GRID, TEXT_LEN = 16, 3, 6


def _model(causal=True, **kw):
    return TokenTransformer(
        image_vocab=K, grid=GRID, text_len=TEXT_LEN, width=32, depth=2, num_heads=4,
        causal=causal, **kw,
    )  # fmt: skip


def _random_params(model, seed=0):
    """Parameters far from their initialisation, so every path carries signal."""
    text = jnp.ones((1, TEXT_LEN), jnp.int32)
    image = jnp.zeros((1, GRID * GRID), jnp.int32)
    params = model.init(jax.random.key(seed), text, image)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(
        tree, [p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


def _inputs(seed=0, b=2):
    k1, k2 = jax.random.split(jax.random.key(seed))
    text = jax.random.randint(k1, (b, TEXT_LEN), 1, 259).at[:, -2:].set(PAD)
    image = jax.random.randint(k2, (b, GRID * GRID), 0, K)
    return text, image


# -- the transformer ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transformer_shapes_and_dtypes(dtype):
    text, image = _inputs()
    model = _model(dtype=dtype)
    params = _random_params(model)
    text_logits, image_logits = model.apply({"params": params}, text, image)
    chex.assert_shape(text_logits, (2, TEXT_LEN - 1, 259))
    chex.assert_shape(image_logits, (2, GRID * GRID, K))
    assert text_logits.dtype == image_logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    bi = _model(causal=False, dtype=dtype)
    bi_params = _random_params(bi)
    masked = image.at[:, :3].set(bi.mask_id)
    none, logits = bi.apply({"params": bi_params}, text, masked)
    assert none is None
    chex.assert_shape(logits, (2, GRID * GRID, K))
    assert logits.dtype == jnp.float32
    cache = model.init_cache(2)
    assert len(cache) == 2 and cache[0][0].shape == (2, TEXT_LEN + GRID * GRID, 4, 8)
    assert cache[0][0].dtype == dtype
    with pytest.raises(ValueError, match="image has 4 tokens, the model 9"):
        model.apply({"params": params}, text, image[:, :4])


def test_causal_mask_hides_every_later_token():
    model = _model()
    params = _random_params(model)
    text, image = _inputs()
    base_text, base_image = model.apply({"params": params}, text, image)
    # Image token j (stream position TEXT_LEN + j) is predicted at position TEXT_LEN + j - 1:
    # changing tokens j.. must leave the logits of tokens 0..j unchanged, and change later ones.
    j = 4
    changed = image.at[:, j:].set((image[:, j:] + 1) % K)
    text_logits, image_logits = model.apply({"params": params}, text, changed)
    np.testing.assert_array_equal(text_logits, base_text)
    np.testing.assert_allclose(image_logits[:, : j + 1], base_image[:, : j + 1], atol=1e-6)
    assert np.abs(image_logits[:, j + 1 :] - base_image[:, j + 1 :]).max() > 1e-3
    # The same for a text token: the text logits before it, and nothing else, stay.
    i = 2
    changed_text = text.at[:, i].set(text[:, i] % 250 + 3)
    text_logits, image_logits = model.apply({"params": params}, changed_text, image)
    np.testing.assert_allclose(text_logits[:, :i], base_text[:, :i], atol=1e-6)
    assert np.abs(text_logits[:, i:] - base_text[:, i:]).max() > 1e-3
    assert np.abs(image_logits - base_image).max() > 1e-3
    # Bidirectional: a later token changes earlier logits.
    bi = _model(causal=False)
    bi_params = _random_params(bi)
    _, a = bi.apply({"params": bi_params}, text, image)
    _, b = bi.apply({"params": bi_params}, text, changed)
    assert np.abs(a[:, :j] - b[:, :j]).max() > 1e-3


def test_pad_tokens_take_a_learned_embedding_per_position():
    model = _model()
    params = _random_params(model)
    text = jnp.full((1, TEXT_LEN), PAD, jnp.int32)
    emb = model.apply({"params": params}, text, method=model.embed_text)
    want = params["pad_emb"] + params["text_pos"]
    np.testing.assert_allclose(emb[0], want, rtol=1e-6)
    assert np.abs(want[0] - want[1]).max() > 0  # not one shared PAD vector


def test_kv_cached_logits_equal_a_full_recompute():
    model = _model()
    params = _random_params(model)
    text, image = _inputs(1)
    _, full = model.apply({"params": params}, text, image)
    cache = model.init_cache(2)
    logits, cache = model.apply({"params": params}, text, cache, method=model.prefill)
    cached = [logits]
    for j in range(GRID * GRID - 1):
        logits, cache = model.apply(
            {"params": params}, image[:, j], j, cache, method=model.decode_step
        )
        cached.append(logits)
    np.testing.assert_allclose(np.stack(cached, 1), full, rtol=1e-4, atol=1e-4)
    # MaskGIT: the caption, read once into the cache, gives every step the full forward's
    # logits (the caption does not read the image, so its keys and values never change).
    bi = _model(causal=False)
    bi_params = _random_params(bi, 4)
    _, cache = bi.apply({"params": bi_params}, text, bi.init_cache(2), method=bi.prefill)
    for masked in (image, image.at[:, ::2].set(bi.mask_id)):
        _, full = bi.apply({"params": bi_params}, text, masked)
        got = bi.apply({"params": bi_params}, masked, cache, method=bi.masked_logits)
        np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-4)


def _greedy_by_recompute(model, params, text, scale=1.0, uncond=None, prefix=None, m=0):
    """The greedy decode, recomputing the whole stream for every token (no cache)."""
    n = GRID * GRID
    tokens = np.zeros((text.shape[0], n), np.int32)
    for j in range(n):
        _, logits = model.apply({"params": params}, text, jnp.asarray(tokens))
        if scale != 1.0:
            _, u = model.apply({"params": params}, uncond, jnp.asarray(tokens))
            logits = u + scale * (logits - u)
        tokens[:, j] = prefix[:, j] if j < m else np.argmax(logits[:, j], -1)
    return tokens


def test_compiled_decode_with_guidance_and_a_prefix_matches_the_recompute():
    model = _model()
    params = _random_params(model, 3)
    text, image = _inputs(2)
    uncond = jnp.full_like(text, PAD)
    run = jax.jit(
        lambda p, t, r, pre, scale, m: ts.autoregressive(
            model, p, t, r, temperature=0.0, uncond_text=uncond[0], guidance_scale=scale,
            prefix=pre, prefix_len=m,
        ),
        static_argnums=(4,),
    )  # fmt: skip
    for scale, m in [(1.0, 0), (3.0, 0), (3.0, 4)]:
        got = np.asarray(run(params, text, jax.random.key(0), image, scale, m))
        want = _greedy_by_recompute(model, params, text, scale, uncond, np.asarray(image), m)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got[:, :m], image[:, :m])  # completion keeps the prefix
    unguided = run(params, text, jax.random.key(0), image, 1.0, 0)
    assert not np.array_equal(unguided, got)  # guidance changed the tokens


# -- logits filters and guidance ----------------------------------------------------------------
def test_top_k_and_top_p_against_hand_computed_cases():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda out: set(np.flatnonzero(np.asarray(out)[0] > -1e29))  # noqa: E731
    assert kept(ts.filter_logits(logits, top_k=2)) == {1, 3}
    assert kept(ts.filter_logits(logits, top_k=1)) == {1}
    assert kept(ts.filter_logits(logits, top_k=0)) == {0, 1, 2, 3}
    # Nucleus: sorted 0.5, 0.3, 0.15, 0.05; cumulative 0.5, 0.8, 0.95, 1.0.
    assert kept(ts.filter_logits(logits, top_p=0.5)) == {1}
    assert kept(ts.filter_logits(logits, top_p=0.7)) == {1, 3}
    assert kept(ts.filter_logits(logits, top_p=0.9)) == {1, 2, 3}
    assert kept(ts.filter_logits(logits, top_p=0.01)) == {1}  # the most likely always stays
    assert kept(ts.filter_logits(logits, top_k=3, top_p=0.7)) == {1, 3}
    kept_values = np.asarray(ts.filter_logits(logits, top_k=2))[0, [1, 3]]
    np.testing.assert_allclose(kept_values, np.log(probs[[1, 3]]), rtol=1e-6)  # unchanged
    for bad in (dict(top_k=-1), dict(top_k=5), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            ts.filter_logits(logits, **bad)


def test_sampling_draws_from_the_filtered_distribution():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (20000, 4))
    rng = jax.random.key(0)
    freq = np.bincount(np.asarray(ts.sample_logits(rng, logits, 1.0, top_p=0.7)), minlength=4)
    np.testing.assert_allclose(freq / freq.sum(), [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=0.015)
    # Temperature 2 flattens: p ~ probs ** 0.5.
    freq = np.bincount(np.asarray(ts.sample_logits(rng, logits, 2.0)), minlength=4)
    want = np.sqrt(probs) / np.sqrt(probs).sum()
    np.testing.assert_allclose(freq / freq.sum(), want, atol=0.015)
    assert (np.asarray(ts.sample_logits(rng, logits, 0.0)) == 1).all()  # greedy


def test_guidance_is_the_formula():
    c, u = np.array([1.0, -2.0, 0.5]), np.array([0.5, 1.0, 0.0])
    np.testing.assert_allclose(ts.guide(c, u, 4.0), [0.5 + 4 * 0.5, 1.0 - 12.0, 2.0])
    np.testing.assert_allclose(ts.guide(c, u, 1.0), c)
    np.testing.assert_allclose(ts.guide(c, u, 0.0), u)


# -- MaskGIT ------------------------------------------------------------------------------------
def test_maskgit_schedule_counts():
    # floor(64 cos(pi/2 t/8)), t = 1..8, by hand: 62.77, 59.13, 53.21, 45.25, 35.56, 24.49,
    # 12.49, 0.
    assert ts.masked_counts(64, 8) == [62, 59, 53, 45, 35, 24, 12, 0]
    assert ts.masked_counts(64, 1) == [0]
    # Fewer tokens than steps: at least one fewer masked per step until none.
    assert ts.masked_counts(3, 5) == [2, 1, 0, 0, 0]


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_maskgit_decode_follows_the_schedule_and_keeps_given_tokens(steps):
    model = _model(causal=False)
    params = _random_params(model, 5)
    text, image = _inputs(3, b=4)
    given = jax.random.bernoulli(jax.random.key(9), 0.3, image.shape).at[0].set(False)
    run = jax.jit(
        lambda r: ts.maskgit(
            model, params, text, r, steps=steps, tokens=image, given=given,
            uncond_text=jnp.full((TEXT_LEN,), PAD), guidance_scale=2.0,
        )
    )  # fmt: skip
    tokens, masked = run(jax.random.key(1))
    tokens, masked = np.asarray(tokens), np.asarray(masked)
    assert masked.shape == (steps, 4)
    assert ((tokens >= 0) & (tokens < K)).all()  # every position filled, no mask token left
    g = np.asarray(given)
    np.testing.assert_array_equal(tokens[g], np.asarray(image)[g])
    for row in range(4):
        unknown = int((~g[row]).sum())
        want = [min(unknown, c) for c in _counts(unknown, steps)]
        np.testing.assert_array_equal(masked[:, row], want)


def _counts(unknown, steps):
    return ts.masked_counts(unknown, steps) if unknown else [0] * steps


def test_maskgit_training_mask_follows_the_cosine_schedule():
    rng = jax.random.key(0)
    mask = np.asarray(dalle.random_mask(rng, 20000, 64))
    counts = mask.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 64
    # ratio = cos(pi/2 u), u ~ U(0,1): E[ratio] = 2/pi; the ceil adds about half a token.
    assert abs(counts.mean() - (64 * 2 / math.pi + 0.5)) < 0.3
    # P(count <= 32) = P(cos(pi/2 u) <= 1/2) = P(u >= 2/3) = 1/3.
    assert abs((counts <= 32).mean() - 1 / 3) < 0.015


# -- losses and caption dropout -----------------------------------------------------------------
def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_weights_text_one_eighth_and_image_seven_eighths():
    rng = np.random.default_rng(0)
    text_logits, image_logits = rng.normal(size=(3, 5, 259)), rng.normal(size=(3, 9, K))
    text, codes = rng.integers(0, 259, (3, 6)), rng.integers(0, K, (3, 9))
    lt, li = _log_softmax64(text_logits), _log_softmax64(image_logits)
    text_ce = -np.mean(np.take_along_axis(lt, text[:, 1:, None], -1))
    image_ce = -np.mean(np.take_along_axis(li, codes[..., None], -1))
    loss, t, i = dalle.autoregressive_loss(
        jnp.asarray(text_logits), jnp.asarray(image_logits), jnp.asarray(text),
        jnp.asarray(codes), 1.0 / 8.0,
    )  # fmt: skip
    np.testing.assert_allclose([t, i], [text_ce, image_ce], rtol=1e-5)
    np.testing.assert_allclose(loss, text_ce / 8 + 7 * image_ce / 8, rtol=1e-5)
    assert abs(text_ce - image_ce) > 0.1  # a swapped weight would show
    masked = rng.random((3, 9)) < 0.4
    want = -np.take_along_axis(li, codes[..., None], -1)[..., 0][masked].mean()
    got = dalle.masked_loss(jnp.asarray(image_logits), jnp.asarray(codes), jnp.asarray(masked))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_caption_dropout_rate_and_rows():
    text = jnp.asarray(np.random.default_rng(0).integers(3, 259, (20000, 6)), jnp.int32)
    out = np.asarray(dalle.drop_captions(jax.random.key(0), text, 0.1))
    dropped = (out == PAD).all(-1)
    assert abs(dropped.mean() - 0.1) < 0.006
    np.testing.assert_array_equal(out[~dropped], np.asarray(text)[~dropped])


# -- the pipeline -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipelines():
    """causal -> (pipeline, state, batch) on an untrained smoke dVAE (no workdir on disk)."""
    from jaxgen import data as data_lib
    from jaxgen.training import workdir as workdir_lib

    tok_config = experiment_config("dvae", "smoke")
    tok_pipe = build_pipeline(tok_config)
    batch = workdir_lib.example_batch(data_lib.build_source(tok_config.data, "train"), 4)
    tok_run = types.SimpleNamespace(
        config=tok_config, pipeline=tok_pipe, state=tok_pipe.init(jax.random.key(0), batch)
    )
    out = {}
    for causal in (True, False):
        config = experiment_config("dalle", "smoke" if causal else "smoke,maskgit")
        pipe = dalle.DALLEPipeline(config, load_run=lambda path: tok_run)
        state = pipe.warm_start(pipe.init(jax.random.key(1), batch))
        out[causal] = (pipe, state, batch)
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_train_step_lowers_the_loss_and_leaves_the_tokenizer_alone(causal, pipelines):
    pipe, state, batch = pipelines[causal]
    tok_before = jax.tree.map(np.asarray, state.params["tokenizer"])
    step = jax.jit(pipe.train_step)
    losses = []
    for i in range(25):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    if causal:
        assert {"text_ce", "image_ce"} <= set(metrics)
    jax.tree.map(np.testing.assert_array_equal, state.params["tokenizer"], tok_before)
    assert "tokenizer" not in state.opt_state and "tokenizer" not in state.ema_params


@pytest.mark.parametrize("causal", [True, False])
def test_generate_complete_and_bad_input(causal, pipelines):
    pipe, state, batch = pipelines[causal]
    prompts = ["a large red circle", "a small blue square above a large green circle"]
    images = pipe.generate(state, prompts, jax.random.key(0), temperature=0.7, top_k=8)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    again = pipe.generate(state, prompts, jax.random.key(0), temperature=0.7, top_k=8)
    np.testing.assert_array_equal(images, again)  # one key, one sample
    # Completion keeps the top rows' tokens and samples the rest.
    real = batch["image"][:2]
    grid = pipe.model.grid
    tok_in = np.asarray(pipe.encode(state.params["tokenizer"], real))
    given = 2 * grid if causal else np.arange(grid * grid)[None].repeat(2, 0) < 2 * grid
    out = pipe.sample_tokens(state, prompts, jax.random.key(1), prefix=tok_in, given=given)
    np.testing.assert_array_equal(out[:, : 2 * grid], tok_in[:, : 2 * grid])
    assert (out[:, 2 * grid :] != tok_in[:, 2 * grid :]).any()
    done = pipe.complete(state, prompts, real, rows=2, rng=jax.random.key(1))
    np.testing.assert_array_equal(done, pipe._decode(state.params["tokenizer"], out))
    keep = np.random.default_rng(0).random((2, grid, grid)) < 0.5
    if causal:
        with pytest.raises(ValueError, match="bidirectional"):
            pipe.inpaint(state, prompts, real, keep, jax.random.key(2))
    else:
        filled = pipe.inpaint(state, prompts, real, keep, jax.random.key(2))
        out = pipe.sample_tokens(
            state, prompts, jax.random.key(2), prefix=tok_in, given=keep.reshape(2, -1)
        )
        np.testing.assert_array_equal(
            out.reshape(keep.shape)[keep], tok_in.reshape(keep.shape)[keep]
        )
        np.testing.assert_array_equal(filled, pipe._decode(state.params["tokenizer"], out))
        with pytest.raises(ValueError, match="keep must be bool"):
            pipe.inpaint(state, prompts, real, keep[:1], jax.random.key(2))
    with pytest.raises(tokenizer.PromptError):
        pipe.generate(state, [""], jax.random.key(0))
    with pytest.raises(tokenizer.PromptError):
        pipe.generate(state, ["x" * 200], jax.random.key(0))
    with pytest.raises(ValueError, match="top_p"):
        pipe.generate(state, prompts, jax.random.key(0), top_p=0.0)
    with pytest.raises(TypeError, match="Unknown sampling option"):
        pipe.generate(state, prompts, jax.random.key(0), num_steps=3)
    with pytest.raises(ValueError, match="rows"):
        pipe.complete(state, prompts, real, rows=grid + 1, rng=jax.random.key(1))
    with pytest.raises(ValueError, match="one per prompt"):
        pipe.complete(state, prompts, real[:1], rows=1, rng=jax.random.key(1))
    with pytest.raises(ValueError, match="uint8"):
        pipe.complete(state, prompts, real / 255.0, rows=1, rng=jax.random.key(1))
    with pytest.raises(ValueError, match="needs `given`"):
        pipe.sample_tokens(state, prompts, jax.random.key(1), prefix=tok_in)


@pytest.mark.parametrize("variant", [None, "digits", "vqgan", "maskgit", "smoke", "digits,smoke"])
def test_each_variant_reads_the_images_its_tokenizer_was_trained_on(variant):
    config = experiment_config("dalle", variant)
    tokenizer = experiment_config(*config.pretrain.tokenizer.split(":"))
    assert tokenizer.pipeline in ("dvae", "vqgan") and tokenizer.model.encoder == "cell"
    assert tokenizer.data.name == config.data.name
    assert tokenizer.data.image_size == config.data.image_size


def test_bad_configs_are_refused():
    config = experiment_config("dalle", "smoke")
    config.dalle.text_loss_weight = 1.5
    with pytest.raises(ValueError, match="text_loss_weight"):
        build_pipeline(config)
    config = experiment_config("dalle", "smoke")
    config.model.tokenizer = ""
    with pytest.raises(ValueError, match="model.tokenizer"):
        build_pipeline(config)
    config = experiment_config("dalle", "smoke")
    config.sample.temperature = -1.0
    with pytest.raises(ValueError, match="temperature"):
        build_pipeline(config)
    with pytest.raises(ValueError, match="Unknown dalle.py variant"):
        experiment_config("dalle", "maskgti")


# -- the CLI ------------------------------------------------------------------------------------
SMOKE = "--config=experiments/dalle.py:smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``dalle.py:smoke`` trained once per test session (its dVAE first)."""
    return shared_config_run(tmp_path_factory, SMOKE)


def _check_run(workdir):
    results = json.loads((workdir / "eval.json").read_text())
    assert results["step"] == 8 and results["final"]
    assert "test/colour" in results and "heldout/shape_lo" in results
    assert results["sampler/tokens_per_s"] > 0
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)
    assert list((workdir / "samples").glob("*.png"))


def test_cli_trains_resumes_samples_evaluates_and_loads(smoke_run, tmp_path):
    assert smoke_run.returncode == 0, smoke_run.stderr[-3000:]
    assert (smoke_run.workdir / "pretrain" / "tokenizer" / "done.json").exists()
    _check_run(smoke_run.workdir)
    workdir = copy_workdir(smoke_run.workdir, tmp_path / "dalle")
    common = [SMOKE, f"--workdir={workdir}"]
    r = run_cli(*common)  # rerun: resumes at the end, trains nothing more
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Pretraining" not in r.stderr and "Resum" in r.stderr
    r = run_cli(*common, "--mode=sample", "--prompt=a large red circle", "--num_samples=2")
    assert r.returncode == 0 and "Wrote 2 samples" in r.stdout, r.stderr[-3000:]
    r = run_cli(*common, "--mode=eval")
    assert r.returncode == 0 and "test/colour" in r.stdout, r.stderr[-3000:]
    model = jaxgen.load(workdir)
    images = model.generate(["a small green square"], seed=0)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8


def test_cli_maskgit_on_a_trained_tokenizer(smoke_run, tmp_path):
    tokenizer_dir = smoke_run.workdir / "pretrain" / "tokenizer"
    workdir = tmp_path / "maskgit"
    r = run_cli(
        f"{SMOKE},maskgit", f"--workdir={workdir}", f"--config.model.tokenizer={tokenizer_dir}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (workdir / "pretrain").exists()  # the given tokenizer, not a new one
    _check_run(workdir)
