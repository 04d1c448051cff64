"""Notebook-friendly API: load a trained workdir and generate from it.

model = jaxgen.load("runs/ddpm")
images = model.generate(["a large red circle"], seed=0)   # uint8 [1, 32, 32, 3]
"""

import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxgen.pipelines import build_pipeline
from jaxgen.training import loop, pretrain


class TrainedModel:
    """A pipeline with the state restored from a workdir's newest checkpoint."""

    def __init__(self, config, pipeline, state, step: int, workdir: Path):
        self.config, self.pipeline, self.state = config, pipeline, state
        self.step, self.workdir = step, workdir

    def generate(self, prompts: Sequence[str] | str, seed: int = 0, **options) -> np.ndarray:
        """One image per prompt: uint8 ``[N, H, W, 3]``. Options go to the pipeline's sampler;
        ``candidates=k`` keeps the best of k samples per prompt by CLIP (``Pipeline.rerank``;
        default ``config.sample.rerank``)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.pipeline.rerank(self.state, list(prompts), jax.random.key(seed), **options)

    def embed_texts(self, texts: Sequence[str] | str) -> np.ndarray:
        """Unit-norm text embeddings ``[N, D]`` (pipelines with a joint embedding, e.g. CLIP)."""
        return self._embedding_method("embed_texts")(self.state, texts)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Unit-norm image embeddings ``[N, D]`` of uint8 ``[N, H, W, 3]`` images."""
        return self._embedding_method("embed_images")(self.state, images)

    def _embedding_method(self, name: str):
        method = getattr(self.pipeline, name, None)
        if method is None:
            raise TypeError(
                f"A {self.config.pipeline!r} model does not embed texts or images; "
                "train experiments/clip.py for that."
            )
        return method

    def evaluate(self) -> dict[str, float]:
        """Runs the pipeline's evaluators with the key the training loop uses at this step."""
        rng = jax.random.fold_in(loop.root_rngs(self.config.seed)["eval"], self.step)
        return loop.run_evaluators(self.pipeline, self.state, rng)


def resolve_key(config, key: str):
    """``(parent, leaf)`` of a dotted config key; ValueError naming the valid keys if absent."""
    *parents, leaf = key.split(".")
    node, walked = config, []
    for part in [*parents, leaf]:
        if not hasattr(node, "keys") or part not in node:
            valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none)"
            where = ".".join(["config", *walked])
            raise ValueError(
                f"Unknown config key {key!r}: {where} has no {part!r}. Valid keys: {valid}."
            )
        if len(walked) < len(parents):
            node = node[part]
        walked.append(part)
    return node, leaf


def apply_overrides(config, overrides: dict):
    """Sets each dotted key of ``overrides`` in ``config`` (in place; returned for chaining).

    Raises ValueError naming the valid keys for a key the config does not have.
    """
    for key, value in overrides.items():
        parent, leaf = resolve_key(config, key)
        parent[leaf] = value
    return config


def load(workdir: str | Path, overrides: dict | None = None) -> TrainedModel:
    """Loads the config and newest checkpoint of ``workdir``.

    Args:
      workdir: a directory written by ``python -m jaxgen.main`` (or ``train``).
      overrides: dotted config keys to change for sampling, e.g. ``{"sample.num_steps": 20}``.
    """
    workdir = Path(workdir)
    config = apply_overrides(loop.load_config(workdir), overrides or {})
    if config.get("mesh") is not None and "mesh.fsdp" not in (overrides or {}):
        # A run sharded over more devices than this process has loads into the largest
        # sharding that fits here (the values do not depend on the placement).
        config.mesh.fsdp = math.gcd(int(config.mesh.get("fsdp", 1)), jax.device_count())
    config = pretrain.resolve(config, workdir)
    pipeline = build_pipeline(config)
    state, _, step = loop.restore_state(pipeline, config, workdir)
    return TrainedModel(config, pipeline, state, step, workdir)


def train(config, workdir: str | Path) -> dict:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final evaluation."""
    return loop.train_and_evaluate(config, workdir)
