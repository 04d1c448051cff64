"""unCLIP: the prior, the decoder's conditioning, the upsampler's corruption, slerp, DDIM
inversion, the pipeline's API and the CLI."""

import json
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    copy_workdir,
    experiment_config,
    run_benchmark,
    run_cli,
    shared_config_run,
    table_rows,
)

import jaxgen
from jaxgen import diffusion
from jaxgen.data import tokenizer
from jaxgen.models.prior import EXTRA_TOKENS, DiffusionPrior
from jaxgen.models.unet import UNet
from jaxgen.pipelines import build_pipeline, unclip

D, L, WT = 8, 6, 12


def _perturbed(params, seed, scale=0.3):
    """Parameters away from their initialisation (zero-initialised outputs included)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


def _prior_inputs(seed=0, b=3):
    k = jax.random.split(jax.random.key(seed), 4)
    caption = jax.random.normal(k[0], (b, L, WT))
    mask = jnp.ones((b, L), bool).at[:, -2:].set(False)
    text_emb = jax.random.normal(k[1], (b, D))
    t = jax.random.randint(k[2], (b,), 0, 1000)
    x_t = jax.random.normal(k[3], (b, D))
    return caption, mask, text_emb, t, x_t


@pytest.fixture(scope="module")
def prior():
    model = DiffusionPrior(embed_dim=D, width=16, depth=2, num_heads=2, text_len=L)
    params = _perturbed(model.init(jax.random.key(0), *_prior_inputs())["params"], 1)
    return model, params


# -- the prior ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_prior_shapes_and_dtypes(dtype):
    model = DiffusionPrior(embed_dim=D, width=16, depth=1, num_heads=2, text_len=L, dtype=dtype)
    inputs = _prior_inputs()
    params = model.init(jax.random.key(0), *inputs)["params"]
    out = model.apply({"params": params}, *inputs)
    chex.assert_shape(out, (3, D))
    assert out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert params["pos_emb"].shape == (L + EXTRA_TOKENS, 16)


def test_prior_reads_every_input_but_padding(prior):
    """The query reads the caption, the text embedding, the timestep and the noised embedding
    (changing any moves the output); caption states at padding positions are never read."""
    model, params = prior
    inputs = list(_prior_inputs())
    base = model.apply({"params": params}, *inputs)
    caption, mask, text_emb, t, x_t = inputs
    changed = {
        "caption": (0, caption.at[:, 1].add(1.0)),
        "text_emb": (2, text_emb + 1.0),
        "t": (3, (t + 300) % 1000),
        "x_t": (4, x_t + 1.0),
    }
    for name, (i, value) in changed.items():
        moved = list(inputs)
        moved[i] = value
        out = model.apply({"params": params}, *moved)
        assert float(jnp.abs(out - base).max()) > 1e-3, name
    padded = caption.at[:, -2:].set(100.0)  # the masked positions
    out = model.apply({"params": params}, padded, mask, text_emb, t, x_t)
    np.testing.assert_allclose(out, base, atol=1e-5)


def test_prior_rejects_wrong_widths(prior):
    model, params = prior
    caption, mask, text_emb, t, x_t = _prior_inputs()
    with pytest.raises(ValueError, match="width 8"):
        model.apply({"params": params}, caption, mask, text_emb, t, x_t[:, :5])
    with pytest.raises(ValueError, match="caption has 4 positions, the prior 6"):
        model.apply({"params": params}, caption[:, :4], mask[:, :4], text_emb, t, x_t)


# -- slerp, blur ---------------------------------------------------------------------------------
def test_slerp_against_closed_forms():
    a = jnp.array([1.0, 0.0, 0.0])
    b = jnp.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(unclip.slerp(a, b, 0.0), a, atol=1e-6)
    np.testing.assert_allclose(unclip.slerp(a, b, 1.0), b, atol=1e-6)
    half = unclip.slerp(a, b, 0.5)  # 45 degrees from each
    np.testing.assert_allclose(half, [np.sqrt(0.5), np.sqrt(0.5), 0.0], atol=1e-6)
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 16))
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    theta = np.linspace(0, 1, 7)
    path = np.asarray(unclip.slerp(jnp.tile(u, (7, 1)), jnp.tile(v, (7, 1)), theta))
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 1.0, atol=1e-5)
    omega = np.arccos(u @ v)
    np.testing.assert_allclose(np.arccos(np.clip(path @ u, -1, 1)), theta * omega, atol=1e-4)
    mid = np.asarray(unclip.slerp(u, v, 0.5))
    np.testing.assert_allclose(np.arccos(mid @ u), omega / 2, atol=1e-5)
    np.testing.assert_allclose(unclip.slerp(u, u, 0.3), u, atol=1e-6)  # parallel: no NaN


def test_upsampler_corruption_is_a_normalised_gaussian_blur():
    sigma = 0.8
    k = np.asarray(unclip.gaussian_kernel(jnp.float32(sigma), radius=2))
    x = np.arange(-2, 3)
    want = np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(k, want / want.sum(), rtol=1e-6)
    delta = np.zeros((1, 9, 9, 1), np.float32)
    delta[0, 4, 4, 0] = 1.0
    out = np.asarray(unclip.gaussian_blur(jnp.asarray(delta), jnp.array([sigma])))
    np.testing.assert_allclose(out[0, 2:7, 2:7, 0], np.outer(k, k), rtol=1e-5)
    images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    np.testing.assert_allclose(  # sigma 0: untouched
        unclip.gaussian_blur(images, jnp.zeros(2)), images, atol=1e-6
    )
    flat = jnp.full((1, 8, 8, 3), 0.3)  # edges replicated: a flat image stays flat
    np.testing.assert_allclose(unclip.gaussian_blur(flat, jnp.array([1.0])), flat, atol=1e-6)
    small = unclip.downsample(images, 4)
    np.testing.assert_allclose(small[0, 0, 0], images[0, :2, :2].mean(axis=(0, 1)), rtol=1e-6)
    assert unclip.upsample(small, 8).shape == (2, 8, 8, 3)


# -- the decoder's conditioning -------------------------------------------------------------------
def _unet(cond_tokens=4):
    return UNet(
        ch=16, ch_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
        cross_attn_resolutions=(4,), num_heads=1, cond_tokens=cond_tokens,
        text_encoder=dict(width=16, depth=1, num_heads=2, max_len=L),
    )  # fmt: skip


def test_decoder_embedding_reaches_time_embedding_and_cross_attention():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t = jnp.array([10, 500])
    tokens = jnp.asarray(tokenizer.encode_batch(["ab", "cd"], L))
    cond = jax.random.normal(jax.random.key(1), (2, D))
    for k in (4, 0):
        model = _unet(k)
        params = _perturbed(model.init(jax.random.key(2), x, t, tokens, cond=cond)["params"], 3)
        assert ("cond_tokens" in params) == (k > 0)

        def out(p, c, model=model):
            return model.apply({"params": p}, x, t, tokens, cond=c)

        assert float(jnp.abs(out(params, cond) - out(params, 0 * cond)).max()) > 1e-3
        # Without the path into the time embedding, only the extra tokens carry it.
        no_emb = {**params, "cond_proj": jax.tree.map(jnp.zeros_like, params["cond_proj"])}
        moved = float(jnp.abs(out(no_emb, cond) - out(no_emb, 0 * cond)).max())
        assert (moved > 1e-3) == (k > 0), (k, moved)


# -- the pipeline ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline():
    """(pipeline, state, batch) of ``unclip.py:smoke`` on an untrained smoke CLIP."""
    from jaxgen import data as data_lib
    from jaxgen.training import workdir as workdir_lib

    clip_config = experiment_config("clip", "joint,parse,smoke")
    clip_pipe = build_pipeline(clip_config)
    batch = workdir_lib.example_batch(data_lib.build_source(clip_config.data, "train"), 4)
    clip_state = clip_pipe.init(jax.random.key(0), batch)
    clip_state = clip_state.replace(ema_params=_perturbed(clip_state.ema_params, 9, 0.05))
    clip_run = types.SimpleNamespace(config=clip_config, pipeline=clip_pipe, state=clip_state)
    config = experiment_config("unclip", "smoke")
    pipe = unclip.UnCLIPPipeline(config, load_run=lambda path: clip_run)
    state = pipe.warm_start(pipe.init(jax.random.key(1), batch))
    batch = {k: v for k, v in batch.items() if k in ("image", "tokens")}
    return pipe, state, batch


def test_state_layout_and_the_frozen_clip(pipeline):
    pipe, state, batch = pipeline
    assert set(state.params) == {"prior", "decoder", "upsampler", "clip"}
    assert set(state.opt_state) == set(state.ema_params) == {"prior", "decoder", "upsampler"}
    assert "text_encoder" not in state.params["decoder"]  # the CLIP's, put back at apply
    clip = jax.device_get(pipe.clip_run.state.ema_params["clip"])
    chex.assert_trees_all_close(state.params["clip"], clip)
    step = jax.jit(pipe.train_step)
    losses = []
    new = state
    for i in range(20):
        new, metrics = step(new, batch, jax.random.key(i))
        losses.append([float(metrics[f"{k}_loss"]) for k in ("prior", "decoder", "upsampler")])
    losses = np.asarray(losses)
    assert np.isfinite(losses).all()
    assert (losses[-5:].mean(0) < losses[:5].mean(0)).all(), losses
    chex.assert_trees_all_close(new.params["clip"], clip)  # frozen


def test_prior_loss_against_a_direct_computation(pipeline):
    """The prior's loss is the MSE of its clean-embedding prediction (paper), here recomputed
    from the forward process by hand with the same draws."""
    pipe, state, batch = pipeline
    pipe.config.unclip.prior_drop_prob = 0.0
    try:
        rng = jax.random.key(5)
        params = {k: v for k, v in state.params.items() if k != "clip"}
        got = float(pipe.losses(params, state.params["clip"], batch, rng)["prior"])
    finally:
        pipe.config.unclip.prior_drop_prob = 0.1
    clip = state.params["clip"]
    tokens = jnp.asarray(batch["tokens"])
    states, mask, text_emb = pipe.clip_text(clip, tokens)
    images = jnp.asarray(batch["image"], jnp.float32) / 127.5 - 1.0
    z = np.asarray(pipe.clip_image(clip, images), np.float64) * np.sqrt(pipe.embed_dim)
    key = jax.random.split(rng, 7)[1]
    t_rng, noise_rng = jax.random.split(key)
    t = diffusion.sample_timesteps(t_rng, len(z), 1000, "uniform")
    eps = np.asarray(jax.random.normal(noise_rng, z.shape), np.float64)
    abar = np.asarray(pipe.schedule.alpha_bars, np.float64)[np.asarray(t)][:, None]
    x_t = np.sqrt(abar) * z + np.sqrt(1 - abar) * eps
    pred = pipe.prior.apply(
        {"params": state.params["prior"]}, states, mask, text_emb, t, jnp.asarray(x_t, jnp.float32)
    )
    want = np.mean((np.asarray(pred, np.float64) - z) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_guidance_is_the_formula(pipeline):
    pipe, state, batch = pipeline
    params = pipe._params(state)
    tokens = jnp.asarray(batch["tokens"])
    cond = jax.random.normal(jax.random.key(0), (4, pipe.embed_dim))
    x = jax.random.normal(jax.random.key(1), (4, pipe.base, pipe.base, 3))
    t = jnp.array([900, 500, 100, 0])
    params = {**params, "decoder": _perturbed(params["decoder"], 4, 0.1)}
    guided = pipe._decoder_fn(params, tokens, cond, 3.0)(x, t)
    dec = pipe._decoder_params(params["decoder"], params["clip"])
    c = pipe.decoder.apply({"params": dec}, x, t, tokens, cond=cond)
    empty = jnp.broadcast_to(pipe.empty_tokens, tokens.shape)
    u = pipe.decoder.apply({"params": dec}, x, t, empty, cond=jnp.zeros_like(cond))
    np.testing.assert_allclose(guided, u + 3.0 * (c - u), atol=1e-4)
    # The prior, one DDIM step (which returns its clean prediction), one candidate.
    rng = jax.random.key(2)
    pparams = {**params, "prior": _perturbed(params["prior"], 5, 0.1)}
    got = pipe.sample_prior(pparams, tokens, rng, 1, 2.5, 1)
    x_init = jax.random.normal(jax.random.split(rng)[0], (4, pipe.embed_dim))
    states, mask, text_emb = pipe.clip_text(params["clip"], tokens)
    e = pipe.clip_text(params["clip"], pipe.empty_tokens[None])
    tt = jnp.full((4,), 999)
    pc = pipe.prior.apply({"params": pparams["prior"]}, states, mask, text_emb, tt, x_init)
    pu = pipe.prior.apply(
        {"params": pparams["prior"]},
        jnp.broadcast_to(e[0], states.shape),
        jnp.broadcast_to(e[1], mask.shape),
        jnp.broadcast_to(e[2], text_emb.shape),
        tt,
        x_init,
    )
    want = unclip.l2_normalize(pu + 2.5 * (pc - pu))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_prior_keeps_the_candidate_nearest_the_text(pipeline):
    text = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    cands = jnp.array(
        [
            [[0.0, 1.0], [1.0, 0.0]],  # candidate 0: far from both
            [[0.8, 0.6], [0.6, 0.8]],  # candidate 1: nearest both
            [[0.6, 0.8], [0.8, 0.6]],
        ]
    )
    np.testing.assert_array_equal(unclip.nearest_candidate(cands, text), cands[1])
    cands = cands.at[2, 1].set(jnp.array([0.0, 1.0]))  # row 1: now candidate 2
    np.testing.assert_array_equal(unclip.nearest_candidate(cands, text)[1], [0.0, 1.0])
    pipe, state, batch = pipeline
    params = {**pipe._params(state), "prior": _perturbed(state.params["prior"], 6, 0.3)}
    best = pipe.sample_prior(params, jnp.asarray(batch["tokens"]), jax.random.key(3), 2, 1.0, 4)
    chex.assert_shape(best, (4, pipe.embed_dim))
    np.testing.assert_allclose(np.linalg.norm(best, axis=-1), 1.0, atol=1e-5)


def test_generate_and_the_unclip_api(pipeline):
    pipe, state, batch = pipeline
    prompts = ["a large red circle", "a small blue square"]
    images = pipe.generate(state, prompts, jax.random.key(0))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    for embedding in ("text", "none"):
        assert pipe.generate(state, prompts, jax.random.key(0), embedding=embedding).shape == (
            2,
            16,
            16,
            3,
        )
    real = batch["image"][:2]
    var = pipe.variations(state, real, jax.random.key(1), num=3)
    assert var.shape == (2, 3, 16, 16, 3) and var.dtype == np.uint8
    inter = pipe.interpolate(state, real[0], real[1], jax.random.key(2), steps=4)
    assert inter.shape == (4, 16, 16, 3)
    # It is the slerp between the two images' embeddings, decoded from one shared noise.
    a, b = pipe.embed_images(state, real)
    path = unclip.slerp(jnp.tile(a, (4, 1)), jnp.tile(b, (4, 1)), jnp.linspace(0, 1, 4))
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(2), 1), (1, 8, 8, 3))
    want = pipe.decode_embeddings(
        state, path, jax.random.key(2), x_init=jnp.tile(noise, (4, 1, 1, 1))
    )
    np.testing.assert_array_equal(inter, want)
    assert np.abs(inter[0].astype(int) - inter[-1]).max() > 0
    diff = pipe.text_diff(
        state, real[0], "a red circle", "a blue circle", jax.random.key(3), thetas=(0.0, 0.25)
    )
    assert diff.shape == (2, 16, 16, 3)
    x_t = pipe.invert(state, real)
    assert x_t.shape == (2, 8, 8, 3) and np.isfinite(x_t).all()


def test_bad_inputs_get_clear_errors(pipeline):
    pipe, state, batch = pipeline
    real = batch["image"][:2]
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, 16, 16, 3\]"):
        pipe.variations(state, real.astype(np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match=r"images must be uint8"):
        pipe.invert(state, real[:, :8, :8])
    with pytest.raises(ValueError, match="embedding must be one of prior, text, none"):
        pipe.generate(state, ["a red circle"], jax.random.key(0), embedding="clip")
    with pytest.raises(ValueError, match="prior_steps must be in"):
        pipe.generate(state, ["a red circle"], jax.random.key(0), prior_steps=0)
    with pytest.raises(TypeError, match="Unknown sampling option"):
        pipe.generate(state, ["a red circle"], jax.random.key(0), temperature=1.0)
    with pytest.raises(tokenizer.PromptError):
        pipe.generate(state, [""], jax.random.key(0))
    with pytest.raises(ValueError, match="steps must be >= 2"):
        pipe.interpolate(state, real[0], real[1], jax.random.key(0), steps=1)
    config = experiment_config("unclip", "smoke")
    config.unclip.base_size = 5
    with pytest.raises(ValueError, match="base_size=5 must divide data.image_size=16"):
        unclip.UnCLIPPipeline(config, load_run=lambda p: None)
    config = experiment_config("unclip", "smoke")
    config.unclip.caption_drop_prob = 1.0
    with pytest.raises(ValueError, match="caption_drop_prob must be in"):
        unclip.UnCLIPPipeline(config, load_run=lambda p: None)
    with pytest.raises(ValueError, match="Unknown unclip.py variant"):
        experiment_config("unclip", "sahpes")


# -- the CLI ------------------------------------------------------------------------------------
SMOKE = "--config=experiments/unclip.py:smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``unclip.py:smoke`` trained once per test session (its CLIP first)."""
    return shared_config_run(tmp_path_factory, SMOKE)


def test_cli_trains_resumes_samples_evaluates_and_loads(smoke_run, tmp_path):
    assert smoke_run.returncode == 0, smoke_run.stderr[-3000:]
    assert (smoke_run.workdir / "pretrain" / "clip" / "done.json").exists()
    results = json.loads((smoke_run.workdir / "eval.json").read_text())
    assert results["step"] == 8 and results["final"]
    assert "test/colour" in results and "heldout/shape_lo" in results
    assert "test/prior_cosine" in results and "test/text_cosine" in results
    assert results["sampler/images_per_s"] > 0
    shares = [results[f"sampler/{k}_share"] for k in ("prior", "decoder", "upsampler")]
    assert min(shares) > 0 and abs(sum(shares) - 1) < 1e-6, shares
    assert list((smoke_run.workdir / "samples").glob("*.png"))
    workdir = copy_workdir(smoke_run.workdir, tmp_path / "unclip")
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


def test_edit_and_diversity_benchmarks_read_a_trained_run(smoke_run, tmp_path):
    assert smoke_run.returncode == 0, smoke_run.stderr[-3000:]
    out = tmp_path / "edits"
    proc = run_benchmark(
        "unclip_edits.py", str(smoke_run.workdir), "--num=6", "--k=2", f"--out={out}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    # Variations: colour, shape, size, count and the pixel distance, each with its interval.
    assert rows[1][0] == "judge vs source" and all("[" in c for c in rows[1][1:]), proc.stdout
    assert float(rows[1][5].split()[0]) > 0  # the variations differ from their sources
    assert [r[0] for r in rows[3:]] == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5"], proc.stdout
    assert {p.name for p in out.iterdir()} == {
        "variations.png",
        "text_diffs.png",
        "interpolations.png",
    }
    proc = run_benchmark("diversity.py", str(smoke_run.workdir), "--num=3", "--k=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert table_rows(proc.stdout)[1][1] == "unclip", proc.stdout
    proc = run_benchmark("unclip_speed.py", str(smoke_run.workdir), "--repeats=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r[0]: float(r[1]) for r in table_rows(proc.stdout)[1:]}
    shares = [rows[f"sampler/{k}_share"] for k in ("prior", "decoder", "upsampler")]
    assert rows["sampler/images_per_s"] > 0 and abs(sum(shares) - 1) < 2e-3, proc.stdout
    proc = run_benchmark("unclip_edits.py", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "not a jaxgen workdir" in proc.stderr, proc.stderr[-2000:]
