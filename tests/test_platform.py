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
from jaxgen.pipelines import PIPELINES, build_pipeline, get_pipeline_class, state
from jaxgen.training import checkpoint as ckpt_lib
from jaxgen.training import images, mesh

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_valid_pipelines_on_unknown_name():
    assert get_pipeline_class("ddpm").__name__ == "DDPMPipeline"
    with pytest.raises(ValueError, match="Valid pipelines: clip, dalle, ddpm"):
        get_pipeline_class("nope")
    assert set(PIPELINES) >= {"ddpm"}


def test_every_registered_pipeline_is_in_the_import_contracts():
    """A new family added to the registry but not to .importlinter would escape the rule that no
    pipeline module imports another."""
    import configparser

    contracts = configparser.ConfigParser()
    contracts.read(ROOT / ".importlinter")
    independent = set(contracts["importlinter:contract:pipelines"]["modules"].split())
    layered = contracts["importlinter:contract:pipeline-shared"]["layers"].split("\n")
    families = {f"jaxgen.pipelines.{m.strip()}" for m in layered[0 if layered[0] else 1].split("|")}
    modules = {spec.split(":")[0] for spec in PIPELINES.values()}
    assert modules == independent == families


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
    with pytest.raises(ValueError, match="valid: one of shapes, digits, cifar10"):
        load_experiment("ddpm", "nope")


def test_unknown_dataset_names_valid_ones():
    cfg = ml_collections.ConfigDict({"name": "nope", "image_size": 16, "max_text_len": 32})
    with pytest.raises(ValueError, match="Valid datasets: shapes, shapes_layouts, scenes, digits"):
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


TWO_DEVICE_MESH_CHECK = """
import numpy as np
from jaxgen.training import mesh
m = mesh.make_mesh()
assert m.devices.size == 2, m.devices
mesh.check_batch_size(4, m)
try:
    mesh.check_batch_size(3, m)
except ValueError as e:
    assert "not divisible" in str(e), e
else:
    raise AssertionError("a batch of 3 over 2 devices was accepted")
batch = {"image": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)}
out = mesh.to_global(batch, m)
assert len(out["image"].sharding.device_set) == 2, out["image"].sharding
np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
print("ok")
"""


def test_batch_size_must_divide_over_devices():
    """On 2 fake CPU devices, in a subprocess: the test session itself has one device, where
    every batch size divides."""
    import subprocess
    import sys

    from helpers import REPO_ROOT, TEST_XLA_FLAGS, cli_env

    env = {**cli_env(), "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2"}
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICE_MESH_CHECK],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


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
    # No reference: the same config back, nothing to train.
    config.model.text_init = ""
    assert pretrain.resolve(config, tmp_path) is config and pretrain.pending(config, tmp_path) == []


def test_schedule_evaluates_by_steps_and_by_training_minutes():
    from jaxgen.training import loop

    config = ml_collections.ConfigDict(
        dict(
            train=dict(max_minutes=1.0, log_every=5, checkpoint_every=10),
            sample=dict(every_steps=4),
            eval=dict(every_steps=0, every_minutes=0.5),
        )
    )
    every = loop.Schedule(config, train_seconds=0.0)
    assert [every.evaluate(s, t) for s, t in [(1, 29.0), (2, 30.0), (3, 31.0), (4, 61.0)]] == [
        False,
        True,
        False,
        True,
    ]
    assert every.out_of_time(60.0) and not every.out_of_time(59.9)
    assert every.sample(8) and not every.sample(6) and every.checkpoint(20) and every.log(5)
    # Resumed after 75 s of training: the next timed evaluation falls at 90 s, not at 105 s.
    every = loop.Schedule(config, train_seconds=75.0)
    assert not every.evaluate(7, 89.0) and every.evaluate(8, 90.0)
    # An evaluation by step also moves the next timed one a period on.
    config.eval.every_steps = 3
    every = loop.Schedule(config, train_seconds=0.0)
    assert every.evaluate(3, 1.0) and not every.evaluate(4, 31.0) and every.evaluate(5, 61.0)
    config.train.max_minutes = 0.0
    assert not loop.Schedule(config, 0.0).out_of_time(1e9)


def test_throughput_leaves_out_paused_time(monkeypatch):
    from jaxgen.training import loop

    clock = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    throughput = loop.Throughput(batch_size=8)
    throughput.count()
    throughput.count()
    clock[0] += 1.0
    with throughput.paused():  # sampling and judging between steps
        clock[0] += 5.0
    assert throughput.rate() == 16.0
    throughput.reset()
    throughput.count()
    clock[0] += 2.0
    assert throughput.rate() == 4.0
