"""The generic platform: registry, configs, optimiser/EMA, grids, checkpoints, judges glue."""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxgen import data as data_lib
from jaxgen.config import load_experiment
from jaxgen.evaluation import judges
from jaxgen.pipelines import PIPELINES, build_pipeline, get_pipeline_class
from jaxgen.training import checkpoint as ckpt_lib
from jaxgen.training import images, mesh, state

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_valid_pipelines_on_unknown_name():
    assert get_pipeline_class("ddpm").__name__ == "DDPMPipeline"
    with pytest.raises(ValueError, match="Valid pipelines: clip, ddpm"):
        get_pipeline_class("nope")
    assert set(PIPELINES) >= {"ddpm"}


@pytest.mark.parametrize(
    "arg", [None, "smoke", "digits", "digits,smoke", "cifar10", "cifar10,smoke"]
)
def test_ddpm_config_variants_build(arg):
    config = load_experiment("ddpm", arg)
    assert config.pipeline == "ddpm"
    if arg and "smoke" in arg:
        assert config.train.steps <= 50
    if arg and "digits" in arg:
        assert config.data.name == "digits"
    if arg and "cifar10" in arg:
        assert config.data.tfds_name == "cifar10"
    build_pipeline(config)  # Constructs models, schedule and optimiser without error.


def test_ddpm_config_rejects_unknown_variant():
    with pytest.raises(ValueError, match="valid: shapes, digits, cifar10"):
        load_experiment("ddpm", "nope")


def test_ddpm_text_lr_scale_scales_the_text_encoder_update_only():
    from jaxgen.training import loop

    def pipeline_and_batch(**model):
        config = load_experiment("ddpm", "smoke")
        config.model.update(model)
        config.train.warmup_steps = 0  # a first step with a learning rate above zero
        source = data_lib.build_source(config.data, "train")
        return build_pipeline(config), jax.tree.map(jnp.asarray, loop.example_batch(source, 4))

    # The zero-initialised output layers give the text encoder a zero gradient for the first
    # few steps; a few steps of the full-rate pipeline make a state where it has one.
    full, batch = pipeline_and_batch(freeze_text=False)
    state = full.init(jax.random.key(0), batch)
    step = jax.jit(full.train_step)
    for i in range(4):
        state, _ = step(state, batch, jax.random.key(i))

    def moved(train_step):
        after, _ = train_step(state, batch, jax.random.key(9))
        return jax.tree.map(lambda a, b: np.asarray(a - b), after.params, state.params)["unet"]

    one = moved(step)
    quarter = moved(
        jax.jit(pipeline_and_batch(freeze_text=False, text_lr_scale=0.25)[0].train_step)
    )
    # Same gradients and Adam state: the text encoder moves a quarter as far, the UNet the same
    # (to float32 rounding of params + update, ~1e-8 here against updates of ~1e-4).
    assert max(np.abs(x).max() for x in jax.tree.leaves(one["text_encoder"])) > 0
    jax.tree.map(
        lambda q, f: np.testing.assert_allclose(q, 0.25 * f, rtol=1e-4, atol=1e-7),
        quarter["text_encoder"],
        one["text_encoder"],
    )
    rest = [k for k in one if k != "text_encoder"]
    jax.tree.map(
        lambda q, f: np.testing.assert_allclose(q, f, rtol=1e-4, atol=1e-7),
        {k: quarter[k] for k in rest},
        {k: one[k] for k in rest},
    )
    config = load_experiment("ddpm", "smoke")
    config.model.text_lr_scale = 1.5
    with pytest.raises(ValueError, match="text_lr_scale must be in"):
        build_pipeline(config)


def test_ddpm_text_adapter_trains_beside_a_frozen_text_encoder():
    from jaxgen.training import loop

    config = load_experiment("ddpm", "smoke")
    config.model.freeze_text = True
    config.model.unet.text_adapter_depth = 1
    config.train.warmup_steps = 0
    source = data_lib.build_source(config.data, "train")
    batch = jax.tree.map(jnp.asarray, loop.example_batch(source, 4))
    pipeline = build_pipeline(config)
    state = pipeline.init(jax.random.key(0), batch)
    step = jax.jit(pipeline.train_step)
    after = state
    for i in range(3):  # the zero-initialised output layers pass no gradient on the first step
        after, _ = step(after, batch, jax.random.key(i))
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), after.params, state.params)
    assert max(jax.tree.leaves(moved["unet"]["text_encoder"])) == 0.0
    for name in ("text_adapter_pos", "text_adapter_0", "text_adapter_proj"):
        assert max(jax.tree.leaves(moved["unet"][name])) > 0, name


def test_unknown_dataset_names_valid_ones():
    cfg = ml_collections.ConfigDict({"name": "nope", "image_size": 16, "max_text_len": 32})
    with pytest.raises(ValueError, match="Valid datasets: shapes, digits"):
        data_lib.build_source(cfg, "train")


def test_ema_decay_warmup_and_update_closed_form():
    assert float(state.ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(state.ema_decay_at(10**6, 0.999)) == pytest.approx(0.999)
    assert float(state.ema_decay_at(5, 0.999, warmup=False)) == pytest.approx(0.999)
    ema = {"w": jnp.array([0.0, 1.0])}
    params = {"w": jnp.array([1.0, 3.0])}
    out = state.ema_update(ema, params, jnp.float32(0.75))
    np.testing.assert_allclose(out["w"], [0.25, 1.5], rtol=1e-6)


def test_learning_rate_schedules():
    tc = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            warmup_steps=10,
            lr_schedule="cosine",
            steps=110,
            final_lr_fraction=0.1,
        )
    )
    lr = state.make_learning_rate(tc)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(110)) == pytest.approx(1e-4, rel=1e-3)
    # Half-way through the cosine: (1 + alpha) / 2 of the peak.
    assert float(lr(60)) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-3)
    tc.lr_schedule = "linear-ish"
    with pytest.raises(ValueError, match="valid: 'constant', 'cosine'"):
        state.make_learning_rate(tc)


def test_optimizer_clips_gradients():
    tc = ml_collections.ConfigDict(dict(learning_rate=1.0, steps=1, grad_clip=1.0, b1=0.9))
    tx = state.make_optimizer(tc)
    params = {"w": jnp.zeros(4)}
    _, opt = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
    # The clipped gradient has global norm 1: 100 * 1 / 200 = 0.5 per entry; Adam's first
    # moment after one step is (1 - b1) * g.
    mu = optax.tree_utils.tree_get(opt, "mu")
    np.testing.assert_allclose(mu["w"], np.full(4, 0.1 * 0.5), rtol=1e-6)


def test_batch_size_must_divide_over_devices():
    m = mesh.make_mesh()
    mesh.check_batch_size(8 * m.devices.size, m)
    if m.devices.size > 1:
        with pytest.raises(ValueError, match="not divisible"):
            mesh.check_batch_size(m.devices.size + 1, m)


def test_to_global_keeps_values():
    m = mesh.make_mesh()
    batch = {"image": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)}
    out = mesh.to_global(batch, m)
    np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])


def test_make_grid_layout():
    imgs = np.stack([np.full((2, 2, 3), i, np.uint8) for i in range(5)])
    grid = images.make_grid(imgs, ncols=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 1 and grid[4, 1, 0] == 3
    assert grid[4, 7, 0] == 96  # The empty sixth cell stays background.


def test_checkpoint_roundtrip_and_fallback_to_older_step(tmp_path):
    tree = {"w": jnp.arange(4.0), "step": jnp.int32(3)}
    ck = ckpt_lib.Checkpointer(tmp_path / "ck", max_to_keep=3, async_save=False)
    ck.save(1, tree, {"data": {"next_batch": 1}})
    ck.save(2, jax.tree.map(lambda x: x + 1, tree), {"data": {"next_batch": 2}})
    ck.wait()
    restored, meta, step = ck.restore(tree)
    assert step == 2 and meta["data"]["next_batch"] == 2
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) + 1)
    # Damage every file of step 2's state: restore falls back to step 1.
    for f in (tmp_path / "ck" / "2" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    restored, meta, step = ck.restore(tree)
    assert step == 1 and meta["data"]["next_batch"] == 1
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    ck.close()


def test_no_checkpoint_error(tmp_path):
    ck = ckpt_lib.Checkpointer(tmp_path / "empty", async_save=False)
    with pytest.raises(ckpt_lib.NoCheckpointError, match="No checkpoint"):
        ck.restore({"w": jnp.zeros(2)})
    ck.close()


def test_evaluate_generator_scores_real_images_as_perfect():
    """Feeding the judge the real images for its prompts must score ~1 and Frechet ~0."""
    cfg = ml_collections.ConfigDict(
        {"name": "shapes", "image_size": 32, "max_text_len": 64, "seed": 0}
    )
    judge = judges.build_judge(cfg)
    _, _, real = judge.prompts("test", 64, seed=0)

    def generate(state, prompts, rng):
        del state, rng
        assert len(prompts) == len(real)
        return real

    res = judges.evaluate_generator(
        generate, judge, None, jax.random.key(0), splits=("test",), num_samples=64
    )
    assert res["test/colour"] >= 0.99 and res["test/shape"] >= 0.99
    assert res["test/frechet"] == pytest.approx(0.0, abs=1e-6)

    def generate_black(state, prompts, rng):
        return np.zeros_like(real)

    res = judges.evaluate_generator(
        generate_black, judge, None, jax.random.key(0), splits=("test",), num_samples=64
    )
    assert res["test/colour"] == 0.0 and res["test/frechet"] > 1.0


def test_pretrain_references_resolve_to_runs_inside_the_workdir(tmp_path):
    import ml_collections

    from jaxgen.training import checkpoint as ckpt_lib
    from jaxgen.training import pretrain

    config = ml_collections.ConfigDict(
        {"pretrain": {"clip": "clip:smoke"}, "model": {"text_init": "pretrain:clip", "n": 3}}
    )
    assert pretrain.references(config) == {"clip"}
    # Not trained and not asked to train: a clear error naming the run.
    with pytest.raises(ckpt_lib.NoCheckpointError, match="'clip'"):
        pretrain.resolve(config, tmp_path)
    (tmp_path / "pretrain" / "clip" / "checkpoints").mkdir(parents=True)
    resolved = pretrain.resolve(config, tmp_path)
    assert resolved.model.text_init == str(tmp_path / "pretrain" / "clip")
    assert config.model.text_init == "pretrain:clip"  # the input is left as it was
    config.model.text_init = "pretrain:vqgan"
    with pytest.raises(ValueError, match=r"\['vqgan'\].*defined: \['clip'\]"):
        pretrain.resolve(config, tmp_path)
    # No reference: the same config back, nothing trained.
    config.model.text_init = ""
    assert pretrain.resolve(config, tmp_path, train=True) is config
