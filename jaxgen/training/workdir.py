"""What a run keeps in its workdir, and how a trained run is read back.

A workdir holds ``config.json`` (the config as given), ``checkpoints/`` (orbax), the metrics,
sample grids and ``eval.json``. This module writes and reads the config and the evaluations,
creates or restores the state, and loads a trained run as a ``TrainedModel``: the API's
``jaxgen.load`` and every pipeline that builds on another run (DDPM's frozen CLIP text encoder,
CLIP re-ranking, the CLIP that scores samples) load through it. Pipelines never read a workdir
themselves: ``build_pipeline`` hands each one ``load_trained`` as its ``load_run``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgen import data as data_lib
from jaxgen import pipelines
from jaxgen.config import apply_overrides
from jaxgen.pipelines.base import EvalPlan
from jaxgen.training import checkpoint as ckpt_lib
from jaxgen.training import mesh as mesh_lib
from jaxgen.training import pretrain

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"
EVAL_HISTORY_FILE = "eval_history.jsonl"


def build_pipeline(config: ml_collections.ConfigDict) -> pipelines.Pipeline:
    """The pipeline ``config.pipeline`` names, able to load the trained runs it builds on."""
    return pipelines.build_pipeline(config, load_run=load_trained)


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if jax.process_index() == 0:
        (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a workdir was trained with."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise ckpt_lib.NoCheckpointError(
            f"{path} does not exist: {workdir} is not a jaxgen workdir (train into it first)."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def write_eval(
    workdir: Path,
    results: dict,
    step: int,
    *,
    batch_size: int,
    train_minutes: float | None = None,
    final: bool = True,
) -> dict:
    """Appends the evaluation to ``eval_history.jsonl`` and, when it is the final one (or
    ``--mode=eval``), writes it to ``eval.json``. The record says what the numbers bought: the
    step, the images seen (step x global batch) and the minutes of training. Returns it."""
    record = {
        "step": int(step),
        "images_seen": int(step) * int(batch_size),
        "final": bool(final),
        **({"train_minutes": float(train_minutes)} if train_minutes else {}),
    }
    record.update({k: float(v) for k, v in results.items()})
    if jax.process_index() != 0:
        return record
    if final:
        (workdir / EVAL_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    with open(workdir / EVAL_HISTORY_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def format_eval(record: dict) -> str:
    """An evaluation record as text: what it bought, then one line per result with its 95%
    interval."""
    from jaxgen.evaluation.intervals import format_result, is_interval_key

    head = [f"step {record['step']}, {record['images_seen']:,} images seen"]
    if record.get("train_minutes"):
        head.append(f"{record['train_minutes']:.1f} min of training")
    meta = {"step", "images_seen", "final", "train_minutes"}
    lines = [
        f"  {k}: {format_result(record, k)}"
        for k in sorted(record)
        if k not in meta and not is_interval_key(k)
    ]
    return "\n".join([", ".join(head), *lines])


def root_rngs(seed: int) -> dict[str, jax.Array]:
    """One root key split once per purpose (init, train, sample, eval)."""
    names = ("init", "train", "sample", "eval")
    return dict(zip(names, jax.random.split(jax.random.key(seed), len(names)), strict=True))


def example_batch(source, n: int = 1) -> dict[str, np.ndarray]:
    """A small numpy batch with the source's shapes and dtypes, for ``init``."""
    items = [source[i] for i in range(n)]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def init_state(pipeline, config, mesh, source) -> Any:
    """The initial state, placed on the mesh (replicated, or split over ``fsdp``)."""
    batch = example_batch(source) if source is not None else None
    shardings = jax.tree.map(lambda x: x.sharding, abstract_state(pipeline, config, mesh, source))
    return jax.jit(pipeline.init, out_shardings=shardings)(root_rngs(config.seed)["init"], batch)


def abstract_state(pipeline, config, mesh, source) -> Any:
    """Shapes, dtypes and shardings of the state, without computing it."""
    batch = example_batch(source) if source is not None else None
    abstract = jax.eval_shape(pipeline.init, root_rngs(config.seed)["init"], batch)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract,
        mesh_lib.state_sharding(abstract, mesh, mesh_lib.fsdp_min_size(config)),
    )


def restore_state(pipeline, config, workdir: str | Path):
    """Loads the newest checkpoint of a workdir. Returns ``(state, meta, step)``."""
    ckpt_dir = Path(workdir) / "checkpoints"
    if not ckpt_dir.exists():
        raise ckpt_lib.NoCheckpointError(
            f"No checkpoints in {workdir}: train first with "
            f"`python -m jaxgen.main --config=... --workdir={workdir}`."
        )
    source = data_lib.build_source(config.data, "train") if pipeline.needs_data else None
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir)
    try:
        abstract = abstract_state(pipeline, config, mesh_lib.make_mesh(config), source)
        return checkpointer.restore(abstract)
    finally:
        checkpointer.close()


def run_evaluators(pipeline, state, rng, final: bool = True) -> dict[str, float]:
    """Runs every evaluator of the pipeline and merges their results: the final evaluation on
    the splits a run reports, or (``final=False``) one during training on the validation
    splits (``EvalPlan``)."""
    plan = EvalPlan.from_config(pipeline.config.eval, final)
    results = {}
    for i, evaluator in enumerate(pipeline.evaluators(plan)):
        results.update(evaluator(state, jax.random.fold_in(rng, i)))
    return results


class TrainedModel:
    """A pipeline with the state restored from a workdir's newest checkpoint."""

    def __init__(
        self, config, pipeline, state, step: int, workdir: Path, train_minutes: float = 0.0
    ):
        self.config, self.pipeline, self.state = config, pipeline, state
        self.step, self.workdir, self.train_minutes = step, workdir, train_minutes

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

    def evaluate(self, final: bool = True) -> dict[str, float]:
        """Runs the pipeline's evaluators with the key the training loop uses at this step:
        the final evaluation (the splits a run reports), or with ``final=False`` the one on
        the validation splits that checks during training read."""
        rng = jax.random.fold_in(root_rngs(self.config.seed)["eval"], self.step)
        return run_evaluators(self.pipeline, self.state, rng, final)


def load(workdir: str | Path, overrides: dict | None = None) -> TrainedModel:
    """Loads the config and newest checkpoint of ``workdir``.

    Args:
      workdir: a directory written by ``python -m jaxgen.main`` (or ``jaxgen.train``).
      overrides: dotted config keys to change for sampling, e.g. ``{"sample.num_steps": 20}``.
    """
    workdir = Path(workdir)
    config = apply_overrides(load_config(workdir), overrides or {})
    if config.get("mesh") is not None and "mesh.fsdp" not in (overrides or {}):
        # A run sharded over more devices than this process has loads into the largest
        # sharding that fits here (the values do not depend on the placement).
        config.mesh.fsdp = math.gcd(int(config.mesh.get("fsdp", 1)), jax.device_count())
    config = pretrain.resolve(config, workdir)
    pipeline = build_pipeline(config)
    state, meta, step = restore_state(pipeline, config, workdir)
    minutes = float((meta or {}).get("train_seconds", 0.0)) / 60.0
    return TrainedModel(config, pipeline, state, step, workdir, minutes)


def load_trained(workdir: str) -> TrainedModel:
    """``load(workdir)``, once per path and checkpoint: the runs pipelines build on (a CLIP that
    conditions, re-ranks or scores) are read once per process, however often they are asked
    for, and again when the run has a newer checkpoint."""
    return _load_step(str(workdir), _newest_checkpoint(workdir))


@functools.lru_cache(maxsize=4)
def _load_step(workdir: str, step: int | None) -> TrainedModel:
    del step  # the cache key
    return load(workdir)


def _newest_checkpoint(workdir: str | Path) -> int | None:
    steps = [int(p.name) for p in (Path(workdir) / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=None)
