"""Notebook-friendly API: load a trained workdir and generate from it.

model = jaxgen.load("runs/ddpm")
images = model.generate(["a large red circle"], seed=0)   # uint8 [1, 32, 32, 3]
"""

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxgen.pipelines import build_pipeline
from jaxgen.training import loop


class TrainedModel:
    """A pipeline with the state restored from a workdir's newest checkpoint."""

    def __init__(self, config, pipeline, state, step: int, workdir: Path):
        self.config, self.pipeline, self.state = config, pipeline, state
        self.step, self.workdir = step, workdir

    def generate(self, prompts: Sequence[str] | str, seed: int = 0, **options) -> np.ndarray:
        """One image per prompt: uint8 ``[N, H, W, 3]``. Options go to the pipeline's sampler."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.pipeline.generate(self.state, list(prompts), jax.random.key(seed), **options)

    def evaluate(self, seed: int = 0) -> dict[str, float]:
        """Runs the pipeline's evaluators on the restored state."""
        return loop.run_evaluators(self.pipeline, self.state, jax.random.key(seed))


def load(workdir: str | Path, overrides: dict | None = None) -> TrainedModel:
    """Loads the config and newest checkpoint of ``workdir``.

    Args:
      workdir: a directory written by ``python -m jaxgen.main`` (or ``train``).
      overrides: dotted config keys to change for sampling, e.g. ``{"sample.num_steps": 20}``.
    """
    workdir = Path(workdir)
    config = loop.load_config(workdir)
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    pipeline = build_pipeline(config)
    state, _, step = loop.restore_state(pipeline, config, workdir)
    return TrainedModel(config, pipeline, state, step, workdir)


def train(config, workdir: str | Path) -> dict:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final evaluation."""
    return loop.train_and_evaluate(config, workdir)
