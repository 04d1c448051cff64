"""Tests of the Python API (``jaxgen.load``/``generate``) and of the loop's non-finite stop."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import experiment_config, read_jsonl

import jaxgen
from jaxgen.data.tokenizer import PromptError
from jaxgen.pipelines.ddpm import DDPMPipeline
from jaxgen.training import checkpoint as ckpt_lib
from jaxgen.training.loop import NonFiniteLossError

PROMPTS = ["a large red circle", "a small blue square", "a green triangle"]
SMOKE = experiment_config("ddpm", "smoke")
SIZE = SMOKE.data.image_size


@pytest.fixture(scope="module")
def model(trained_workdir):
    return jaxgen.load(trained_workdir)


def test_load_restores_the_final_step(model):
    assert model.step == SMOKE.train.steps
    assert int(model.state.step) == SMOKE.train.steps
    assert model.config.pipeline == "ddpm"


def test_generate_shape_and_dtype(model):
    images = model.generate(PROMPTS, seed=0)
    assert isinstance(images, np.ndarray)
    assert images.shape == (len(PROMPTS), SIZE, SIZE, 3) and images.dtype == np.uint8
    single = model.generate("a large red circle", seed=0)
    assert single.shape == (1, SIZE, SIZE, 3) and single.dtype == np.uint8


def test_generate_is_deterministic_per_seed(model):
    a = model.generate(PROMPTS, seed=0)
    b = model.generate(PROMPTS, seed=0)
    c = model.generate(PROMPTS, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("prompts", [[""], ["a red circle", "  "], ["x" * 100]])
def test_generate_rejects_bad_prompts(model, prompts):
    with pytest.raises(PromptError):
        model.generate(prompts, seed=0)


def test_load_non_workdir(tmp_path):
    with pytest.raises(ckpt_lib.NoCheckpointError, match="not a jaxgen workdir"):
        jaxgen.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        jaxgen.load(tmp_path / "does_not_exist")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN loss at step 4 raises, naming the step; the checkpoint of step 2 stays loadable."""
    nan_from = 4

    def train_step(self, state, batch, rng):
        del self, batch, rng
        step = state.step + 1
        loss = jnp.where(step >= nan_from, jnp.nan, 1.0 / step)
        return state.replace(step=step), {"loss": loss}

    monkeypatch.setattr(DDPMPipeline, "train_step", train_step)
    config = experiment_config("ddpm", "smoke")
    config.train.steps = 10
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.sample.every_steps = 0
    workdir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=f"loss=nan at step {nan_from}"):
        jaxgen.train(config, workdir)
    losses = [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")]
    assert losses == list(range(1, nan_from)), losses
    # Nothing at or past the NaN was saved, not even partially.
    saved = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert saved == ["2"], saved
    # The last good checkpoint (step 2) loads as soon as the error is raised.
    model = jaxgen.load(workdir)
    assert model.step == 2 and int(model.state.step) == 2


def test_guidance_and_the_caption_change_the_samples(model):
    """The same seed, with guidance off (s = 1) and on (s = 5), and with another caption."""
    a, b, c = PROMPTS
    unguided = model.generate([a, b], seed=3, guidance_scale=1.0).astype(int)
    guided = model.generate([a, b], seed=3, guidance_scale=5.0).astype(int)
    assert np.abs(guided - unguided).mean() > 1.0
    # Another caption in row 0 changes row 0 only: row 1 keeps its prompt and its noise.
    swapped = model.generate([c, b], seed=3, guidance_scale=5.0).astype(int)
    assert np.abs(swapped[0] - guided[0]).mean() > 0.25
    np.testing.assert_array_equal(swapped[1], guided[1])
