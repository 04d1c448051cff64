"""The one generic training loop, shared by every pipeline.

``train_and_evaluate(config, workdir)`` builds the pipeline named by the config, shards batches
over a device mesh, jits the pipeline's pure ``train_step`` with the state donated, and handles
everything around it: progress, metrics, sample grids, periodic evaluation, checkpoints, resume,
preemption and non-finite losses. Only the training layer and ``main.py`` touch the workdir.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxgen import data as data_lib
from jaxgen.evaluation.intervals import is_interval_key
from jaxgen.training import checkpoint as ckpt_lib
from jaxgen.training import images as images_lib
from jaxgen.training import mesh as mesh_lib
from jaxgen.training import pretrain
from jaxgen.training import workdir as workdir_lib
from jaxgen.training.metrics import MetricWriter


class NonFiniteLossError(FloatingPointError):
    """A training metric became NaN or Inf; the last good checkpoint is kept."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains (or resumes) the experiment in ``workdir`` and returns the final evaluation (the
    latest one, when a SIGTERM stopped the run first)."""
    return _train_and_evaluate(config, workdir)[0]


def _train_and_evaluate(config, workdir) -> tuple[dict, bool]:
    """``train_and_evaluate``, and whether SIGTERM stopped the run (or a pretraining run)."""
    # Everything cheap is validated before the workdir is touched or anything pretrains.
    validate_train_config(config.train)
    workdir_lib.build_pipeline(config)
    mesh = mesh_lib.make_mesh(config)
    mesh_lib.check_batch_size(config.train.batch_size, mesh)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.save_config(config, workdir)  # as given: "pretrain:<name>" stays relative
    for spec, pretrain_dir in pretrain.pending(config, workdir):
        logging.info("Pretraining %s in %s.", spec, pretrain_dir)
        pre_config = pretrain.experiment(spec, pretrain_dir, config)
        results, preempted = _train_and_evaluate(pre_config, pretrain_dir)
        if preempted:  # not done: the next start resumes the pretraining run
            return results, True
        pretrain.mark_done(pretrain_dir, spec)
    config = pretrain.resolve(config, workdir)

    run = Run(config, workdir, mesh)
    try:
        preempted = run.train()
    finally:
        run.close()  # also on errors (e.g. a NaN loss): in-flight saves of good states finish
    if not preempted and run.step > run.start_step:
        run.write_samples()
        run.write_outputs()
        run.evaluate(final=True)
    run.writer.close()
    return run.results, preempted


class Run:
    """One training run in its workdir: the pipeline, its data, its state and its writers.

    A fresh workdir starts from ``pipeline.init`` (and ``warm_start``); a workdir with a
    checkpoint resumes from the newest readable one, with the data position, the training time
    and the skipped-step count it saved.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, mesh):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.pipeline = workdir_lib.build_pipeline(config)
        self.rngs = workdir_lib.root_rngs(config.seed)
        tc = config.train
        self.source, self.iterator = None, None
        if self.pipeline.needs_data:
            self.source = data_lib.build_source(config.data, "train")
            self.iterator = data_lib.make_batch_iterator(
                self.source,
                batch_size=tc.batch_size,
                seed=config.seed,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        self.checkpointer = ckpt_lib.Checkpointer(
            workdir / "checkpoints", max_to_keep=tc.get("keep_checkpoints", 3)
        )
        self.train_seconds, self.skipped, self.results = 0.0, 0, {}
        self.skip_nonfinite = bool(tc.get("skip_nonfinite_updates", False))
        if self.checkpointer.latest_step() is None:
            self.state, self.start_step, self.last_saved = self._fresh_state(), 0, None
        else:
            self._resume()
        self.step = self.start_step
        self.writer = MetricWriter(workdir, resume_step=self.start_step)
        self.sample_prompts = self.pipeline.default_prompts(int(config.sample.get("num", 16)))

    def _fresh_state(self):
        state = workdir_lib.init_state(self.pipeline, self.config, self.mesh, self.source)
        warm = self.pipeline.warm_start(state)
        if warm is state:
            return state
        # Copies (may_alias=False): warm_start may put one array in several leaves (params and
        # EMA), and the step donates every leaf.
        shardings = jax.tree.map(lambda x: x.sharding, state)
        return jax.device_put(warm, shardings, may_alias=False)

    def _resume(self):
        abstract = workdir_lib.abstract_state(self.pipeline, self.config, self.mesh, self.source)
        self.state, meta, self.start_step = self.checkpointer.restore(
            abstract, delete_unreadable=True
        )
        self.last_saved = self.start_step
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.skipped = int(meta.get("skipped_steps", 0))
        if self.iterator is not None and meta.get("data") is not None:
            self.iterator.set_state(meta["data"])
        logging.info("Resumed from step %d in %s.", self.start_step, self.workdir)

    def compiled_step(self):
        """The pipeline's step, jitted with the state donated and placed by ``config.mesh``."""
        step_fn = self.pipeline.train_step
        if self.skip_nonfinite:
            step_fn = guard_nonfinite(step_fn)
        shardings = mesh_lib.state_sharding(
            self.state, self.mesh, mesh_lib.fsdp_min_size(self.config)
        )
        logging.info("Mesh %s; %s.", dict(self.mesh.shape), mesh_lib.describe_sharding(shardings))
        return jax.jit(
            step_fn, donate_argnums=(0,), out_shardings=(shardings, mesh_lib.replicated(self.mesh))
        )

    def train(self) -> bool:
        """Steps until ``train.steps``, ``train.max_minutes`` or SIGTERM, with the periodic
        logging, checkpoints, sample grids and evaluations. Returns whether it was preempted."""
        tc = self.config.train
        train_step = self.compiled_step()
        every = Schedule(self.config, self.train_seconds)
        throughput = Throughput(tc.batch_size)
        bar = tqdm(
            total=int(tc.steps),
            initial=self.step,
            desc="train",
            unit="step",
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        with bar, _Preemption() as preemption:
            while self.step < int(tc.steps):
                if every.out_of_time(self.train_seconds):
                    logging.info("Reached train.max_minutes at step %d.", self.step)
                    break
                t0 = time.perf_counter()
                batch = self.next_batch()
                rng = jax.random.fold_in(self.rngs["train"], self.step)
                self.state, metrics = train_step(self.state, batch, rng)
                self.step += 1
                throughput.count()
                is_last = self.step == int(tc.steps)
                must_save = every.checkpoint(self.step) or is_last or preemption.requested
                # Every step's few scalars come to the host (the step is waited on anyway), so a
                # non-finite value is caught at the step that produced it, before any save.
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(host, self.step, skip=self.skip_nonfinite)
                self.skipped += int(host.get("skipped", 0.0))
                if every.log(self.step) or must_save:
                    host["images_per_second"] = throughput.rate()
                    host["train_minutes"] = (self.train_seconds + time.perf_counter() - t0) / 60
                    if self.skip_nonfinite:
                        host["skipped_steps"] = self.skipped
                    self.writer.write_scalars(self.step, host)
                    bar.set_postfix(
                        loss=f"{host.get('loss', float('nan')):.4f}",
                        img_s=f"{host['images_per_second']:.0f}",
                    )
                    throughput.reset()
                self.train_seconds += time.perf_counter() - t0
                bar.update(1)
                if must_save:
                    self.save()
                if preemption.requested:
                    logging.warning("SIGTERM: saved a checkpoint at step %d; exiting.", self.step)
                    break
                if is_last:
                    break  # the final grid and evaluation follow the loop
                if every.out_of_time(self.train_seconds):
                    continue  # the loop's check ends it; the final grid and evaluation follow
                with throughput.paused():  # time spent sampling and judging is not training
                    if every.sample(self.step):
                        self.write_samples()
                    if every.evaluate(self.step, self.train_seconds):
                        self.evaluate(final=False)
        if self.last_saved != self.step:
            self.save()
        return preemption.requested

    def next_batch(self):
        if self.iterator is None:
            return None
        return mesh_lib.to_global(next(self.iterator), self.mesh)

    def save(self) -> None:
        meta = {
            "data": self.iterator.get_state() if self.iterator is not None else None,
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped,
        }
        self.checkpointer.save(self.step, self.state, meta)
        self.last_saved = self.step

    def write_samples(self) -> None:
        """A grid of ``pipeline.sample_images`` for the default prompts, as PNG and to
        TensorBoard; the same key every time, so grids of successive steps compare."""
        rng = jax.random.fold_in(self.rngs["sample"], 0)
        images = self.pipeline.sample_images(self.state, self.sample_prompts, rng)
        grid = images_lib.make_grid(np.asarray(images))
        if jax.process_index() == 0:
            path = self.workdir / "samples" / f"step_{self.step:07d}.png"
            images_lib.save_png(grid, path, scale=2)
            self.writer.write_image(self.step, "samples", grid)

    def write_outputs(self) -> None:
        """The pipeline's named results (``Pipeline.outputs``) as PNGs in the workdir."""
        if jax.process_index() != 0:
            return
        for name, value in self.pipeline.outputs(self.state).items():
            value = np.asarray(value)
            image = images_lib.plot_curve(value, title=name) if value.ndim == 1 else value
            images_lib.save_png(image, self.workdir / f"{name}.png")

    def evaluate(self, final: bool) -> None:
        """The final evaluation (the splits the run reports, ``eval.json``) or one during
        training (the validation splits, ``eval_history.jsonl`` only)."""
        rng = jax.random.fold_in(self.rngs["eval"], self.step)
        results = workdir_lib.run_evaluators(self.pipeline, self.state, rng, final)
        minutes = self.train_seconds / 60.0
        self.writer.write_scalars(
            self.step, {f"eval/{k}": v for k, v in results.items() if not is_interval_key(k)}
        )
        workdir_lib.write_eval(
            self.workdir,
            results,
            self.step,
            batch_size=self.config.train.batch_size,
            train_minutes=minutes,
            final=final,
        )
        logging.info(
            "%s evaluation at step %d (%.1f min of training): %s",
            "Final" if final else "Validation",
            self.step,
            minutes,
            {k: v for k, v in results.items() if not is_interval_key(k)},
        )
        self.results = results

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.flush()


class Schedule:
    """When the loop logs, saves, samples and evaluates, and when its time is up (from
    ``config.train``, ``config.sample`` and ``config.eval``). The first evaluation by time falls
    on the next multiple of ``eval.every_minutes`` of training time (also across a resume); each
    evaluation, by step or by time, moves the next timed one a period on."""

    def __init__(self, config: ml_collections.ConfigDict, train_seconds: float):
        tc = config.train
        self.max_seconds = 60.0 * float(tc.get("max_minutes", 0) or 0)
        self.log_every = int(tc.get("log_every", 50))
        self.checkpoint_every = int(tc.get("checkpoint_every", 1000))
        self.sample_every = int(config.sample.get("every_steps", 0) or 0)
        self.eval_every_steps = int(config.eval.get("every_steps", 0) or 0)
        self.eval_every_seconds = 60.0 * float(config.eval.get("every_minutes", 0) or 0)
        self.next_eval_seconds = math.inf
        if self.eval_every_seconds:
            periods = train_seconds // self.eval_every_seconds + 1
            self.next_eval_seconds = periods * self.eval_every_seconds

    def out_of_time(self, train_seconds: float) -> bool:
        return bool(self.max_seconds) and train_seconds >= self.max_seconds

    def log(self, step: int) -> bool:
        return step % self.log_every == 0

    def checkpoint(self, step: int) -> bool:
        return step % self.checkpoint_every == 0

    def sample(self, step: int) -> bool:
        return bool(self.sample_every) and step % self.sample_every == 0

    def evaluate(self, step: int, train_seconds: float) -> bool:
        """Whether an evaluation is due; each one moves the next timed one a period on."""
        due = bool(self.eval_every_steps) and step % self.eval_every_steps == 0
        due = due or train_seconds >= self.next_eval_seconds
        if due:
            self.next_eval_seconds += self.eval_every_seconds
        return due


class Throughput:
    """Images per second over the steps since the last ``reset()``, less paused time."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def count(self) -> None:
        self.steps += 1

    def rate(self) -> float:
        return self.steps * self.batch_size / (time.perf_counter() - self.start)

    @contextlib.contextmanager
    def paused(self):
        t0 = time.perf_counter()
        yield
        self.start += time.perf_counter() - t0


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


def check_finite(metrics: dict[str, float], step: int, skip: bool = False) -> None:
    """Raises ``NonFiniteLossError`` naming the bad metrics, or with ``skip`` only warns (the
    guarded step has already left the state unchanged)."""
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
