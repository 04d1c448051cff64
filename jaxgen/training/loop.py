"""The one generic training loop, shared by every pipeline.

``train_and_evaluate(config, workdir)`` builds the pipeline named by the config, shards batches
over a device mesh, jits the pipeline's pure ``train_step`` with the state donated, and handles
everything around it: progress, metrics, sample grids, periodic evaluation, checkpoints, resume,
preemption and non-finite losses. Only this module and ``main.py`` touch the workdir.
"""

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxgen import data as data_lib
from jaxgen.pipelines import build_pipeline
from jaxgen.training import checkpoint as ckpt_lib
from jaxgen.training import images as images_lib
from jaxgen.training import mesh as mesh_lib
from jaxgen.training import pretrain
from jaxgen.training.metrics import MetricWriter


class NonFiniteLossError(FloatingPointError):
    """A training metric became NaN or Inf; the last good checkpoint is kept."""


CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"
EVAL_HISTORY_FILE = "eval_history.jsonl"


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
    rng = root_rngs(config.seed)["init"]
    abstract = jax.eval_shape(pipeline.init, rng, batch)
    shardings = mesh_lib.state_sharding(abstract, mesh, mesh_lib.fsdp_min_size(config))
    return jax.jit(pipeline.init, out_shardings=shardings)(rng, batch)


def abstract_state(pipeline, config, mesh, source) -> Any:
    """Shapes, dtypes and shardings of the state, without computing it."""
    batch = example_batch(source) if source is not None else None
    abstract = jax.eval_shape(pipeline.init, root_rngs(config.seed)["init"], batch)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract,
        mesh_lib.state_sharding(abstract, mesh, mesh_lib.fsdp_min_size(config)),
    )


def guard_nonfinite(train_step):
    """Wraps a train step so that a step with a non-finite metric leaves the state unchanged.

    The returned step computes the update, checks every metric for NaN/Inf on the device, and
    keeps the old state where any is bad (one select per array, no host round trip); its metrics
    gain ``skipped`` (1.0 for a skipped step, else 0.0). The bad metrics are still returned, so
    the loop can log them.
    """

    def step(state, batch, rng):
        new_state, metrics = train_step(state, batch, rng)
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(metrics)]))
        new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        # The step counter still advances: the skipped batch is consumed, like any other.
        new_state = new_state.replace(step=state.step + 1)
        return new_state, {**metrics, "skipped": 1.0 - ok.astype(jnp.float32)}

    return step


def restore_state(pipeline, config, workdir: str | Path, mesh=None, source=None):
    """Loads the newest checkpoint of a workdir. Returns ``(state, meta, step)``."""
    mesh = mesh or mesh_lib.make_mesh(config)
    ckpt_dir = Path(workdir) / "checkpoints"
    if not ckpt_dir.exists():
        raise ckpt_lib.NoCheckpointError(
            f"No checkpoints in {workdir}: train first with "
            f"`python -m jaxgen.main --config=... --workdir={workdir}`."
        )
    if source is None and pipeline.needs_data:
        source = data_lib.build_source(config.data, "train")
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir)
    try:
        return checkpointer.restore(abstract_state(pipeline, config, mesh, source))
    finally:
        checkpointer.close()


def _check_finite(metrics: dict[str, float], step: int, skip: bool = False) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad and skip:
        logging.warning(
            "Non-finite %s at step %d: update skipped (train.skip_nonfinite_updates).",
            ", ".join(f"{k}={metrics[k]}" for k in bad),
            step,
        )
        return
    if bad:
        raise NonFiniteLossError(
            f"Non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)} at step {step}; "
            "stopping. The last good checkpoint is kept in the workdir."
        )


def run_evaluators(pipeline, state, rng) -> dict[str, float]:
    """Runs every evaluator of the pipeline and merges their results."""
    results = {}
    for i, evaluator in enumerate(pipeline.evaluators()):
        results.update(evaluator(state, jax.random.fold_in(rng, i)))
    return results


def write_eval(workdir: Path, results: dict, step: int, train_minutes: float | None = None):
    """Writes ``eval.json`` (latest) and appends to ``eval_history.jsonl``."""
    if jax.process_index() != 0:
        return
    record = {"step": int(step), **({"train_minutes": train_minutes} if train_minutes else {})}
    record.update({k: float(v) for k, v in results.items()})
    (workdir / EVAL_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    with open(workdir / EVAL_HISTORY_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread (e.g. a notebook worker): no handler.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def validate_train_config(tc) -> None:
    """Rejects out-of-range ``config.train`` values with a message naming the key."""
    for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        value = tc.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"train.{key} must be a positive integer, got {value!r}.")
    checks = (
        ("learning_rate", lambda v: v > 0, "a positive number"),
        ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("max_minutes", lambda v: v >= 0, ">= 0 (0: no limit)"),
        ("grad_clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
        ("weight_decay", lambda v: v >= 0, ">= 0"),
    )
    for key, ok, what in checks:
        value = tc.get(key)
        if value is not None and not (math.isfinite(float(value)) and ok(float(value))):
            raise ValueError(f"train.{key} must be {what}, got {value!r}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains (or resumes) the experiment in ``workdir`` and returns the final evaluation."""
    # Validate everything cheap before touching the workdir.
    validate_train_config(config.train)
    build_pipeline(config)  # validates the pipeline's settings before any pretraining
    mesh = mesh_lib.make_mesh(config)
    tc = config.train
    mesh_lib.check_batch_size(tc.batch_size, mesh)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir)  # as given: "pretrain:<name>" references stay relative
    config = pretrain.resolve(config, workdir, train=True)
    pipeline = build_pipeline(config)
    rngs = root_rngs(config.seed)

    source = data_lib.build_source(config.data, "train") if pipeline.needs_data else None
    iterator = None
    if source is not None:
        iterator = data_lib.make_batch_iterator(
            source,
            batch_size=tc.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    checkpointer = ckpt_lib.Checkpointer(
        workdir / "checkpoints", max_to_keep=tc.get("keep_checkpoints", 3)
    )
    start_step, train_seconds, skipped = 0, 0.0, 0
    if checkpointer.latest_step() is None:
        state = init_state(pipeline, config, mesh, source)
        warm = pipeline.warm_start(state)
        if warm is not state:
            # Copies (may_alias=False): warm_start may put one array in several leaves (params
            # and EMA), and the step donates every leaf.
            shardings = jax.tree.map(lambda x: x.sharding, state)
            state = jax.device_put(warm, shardings, may_alias=False)
    else:
        state, meta, start_step = checkpointer.restore(
            abstract_state(pipeline, config, mesh, source), delete_unreadable=True
        )
        train_seconds = float(meta.get("train_seconds", 0.0))
        skipped = int(meta.get("skipped_steps", 0))
        if iterator is not None and meta.get("data") is not None:
            iterator.set_state(meta["data"])
        logging.info("Resumed from step %d in %s.", start_step, workdir)

    skip_nonfinite = bool(tc.get("skip_nonfinite_updates", False))
    step_fn = guard_nonfinite(pipeline.train_step) if skip_nonfinite else pipeline.train_step
    shardings = mesh_lib.state_sharding(state, mesh, mesh_lib.fsdp_min_size(config))
    logging.info("Mesh %s; %s.", dict(mesh.shape), mesh_lib.describe_sharding(shardings))
    train_step = jax.jit(
        step_fn, donate_argnums=(0,), out_shardings=(shardings, mesh_lib.replicated(mesh))
    )
    writer = MetricWriter(workdir, resume_step=start_step)
    num_steps = int(tc.steps)
    max_seconds = 60.0 * float(tc.get("max_minutes", 0) or 0)
    log_every = int(tc.get("log_every", 50))
    ckpt_every = int(tc.get("checkpoint_every", 1000))
    sample_every = int(config.sample.get("every_steps", 0) or 0)
    eval_every_steps = int(config.eval.get("every_steps", 0) or 0)
    eval_every_seconds = 60.0 * float(config.eval.get("every_minutes", 0) or 0)
    next_eval_seconds = (
        (train_seconds // eval_every_seconds + 1) * eval_every_seconds
        if (eval_every_seconds)
        else math.inf
    )
    sample_prompts = pipeline.default_prompts(int(config.sample.get("num", 16)))

    def meta() -> dict:
        return {
            "data": iterator.get_state() if iterator is not None else None,
            "train_seconds": train_seconds,
            "skipped_steps": skipped,
        }

    def write_samples(step: int) -> None:
        imgs = pipeline.sample_images(state, sample_prompts, jax.random.fold_in(rngs["sample"], 0))
        grid = images_lib.make_grid(np.asarray(imgs))
        if jax.process_index() == 0:
            images_lib.save_png(grid, workdir / "samples" / f"step_{step:07d}.png", scale=2)
            writer.write_image(step, "samples", grid)

    def evaluate(step: int) -> dict:
        results = run_evaluators(pipeline, state, jax.random.fold_in(rngs["eval"], step))
        writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
        write_eval(workdir, results, step, train_minutes=train_seconds / 60.0)
        logging.info(
            "Evaluation at step %d (%.1f min of training): %s", step, train_seconds / 60.0, results
        )
        return results

    step = start_step
    last_saved = start_step if checkpointer.latest_step() is not None else None
    results = {}
    window_start, window_steps = time.perf_counter(), 0
    bar = tqdm(
        total=num_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    try:
        with _Preemption() as preemption:
            while step < num_steps:
                if max_seconds and train_seconds >= max_seconds:
                    logging.info("Reached train.max_minutes at step %d.", step)
                    break
                t0 = time.perf_counter()
                batch = mesh_lib.to_global(next(iterator), mesh) if iterator is not None else None
                state, metrics = train_step(state, batch, jax.random.fold_in(rngs["train"], step))
                step += 1
                window_steps += 1
                is_last = step == num_steps
                must_save = step % ckpt_every == 0 or is_last or preemption.requested
                # Every step's few scalars come to the host (the step is waited on anyway), so
                # a non-finite value is caught at the step that produced it, before any save.
                host_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host_metrics, step, skip=skip_nonfinite)
                skipped += int(host_metrics.get("skipped", 0.0))
                if step % log_every == 0 or must_save:
                    elapsed = time.perf_counter() - window_start
                    host_metrics["images_per_second"] = window_steps * tc.batch_size / elapsed
                    host_metrics["train_minutes"] = (train_seconds + time.perf_counter() - t0) / 60
                    if skip_nonfinite:
                        host_metrics["skipped_steps"] = skipped
                    writer.write_scalars(step, host_metrics)
                    bar.set_postfix(
                        loss=f"{host_metrics.get('loss', float('nan')):.4f}",
                        img_s=f"{host_metrics['images_per_second']:.0f}",
                    )
                    window_start, window_steps = time.perf_counter(), 0
                train_seconds += time.perf_counter() - t0
                bar.update(1)
                if must_save:
                    checkpointer.save(step, state, meta())
                    last_saved = step
                if preemption.requested:
                    logging.warning("SIGTERM: saved a checkpoint at step %d; exiting.", step)
                    break
                paused = time.perf_counter()
                if is_last:
                    break  # The final grid and evaluation follow the loop.
                if max_seconds and train_seconds >= max_seconds:
                    continue  # The time is up: the final grid and evaluation follow the loop.
                if sample_every and step % sample_every == 0:
                    write_samples(step)
                if (eval_every_steps and step % eval_every_steps == 0) or (
                    train_seconds >= next_eval_seconds
                ):
                    results = evaluate(step)
                    next_eval_seconds += eval_every_seconds
                # Time spent sampling and judging is not training time.
                window_start += time.perf_counter() - paused
        preempted = preemption.requested
        if last_saved != step:
            checkpointer.save(step, state, meta())
    finally:
        # Also on errors (e.g. a NaN loss): let in-flight saves of good states finish.
        bar.close()
        checkpointer.close()
        writer.flush()
    if not preempted and step > start_step:
        write_samples(step)
        results = evaluate(step)
    writer.close()
    return results
