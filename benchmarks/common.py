"""Measurement helpers shared by the benchmark scripts: timing, XLA FLOPs, a matmul peak and the
loop's jitted train step on any pipeline."""

from __future__ import annotations

import argparse
import ast
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxgen.training import mesh as mesh_lib  # noqa: E402
from jaxgen.training import workdir as workdir_lib  # noqa: E402

MATMUL_N = 2048


def parse_overrides(items) -> dict:
    """``["a.b=3", "c=x"]`` -> ``{"a.b": 3, "c": "x"}``: Python literals where they parse."""
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def shapes_workdir_cli(description: str, num: int, num_help: str):
    """The command line of a diagnostic that samples a ``shapes`` generator's (or layout
    model's) workdir.

    Parses ``workdir``, ``--num`` (default ``num``), ``--split``, ``--set key=value`` (repeatable
    overrides) and ``--seed``, then ``api.load``s the workdir. Exits with one error line when it
    is not a workdir, a key is unknown or the dataset is another. Returns ``(args, model)``.
    """
    from jaxgen import api
    from jaxgen.training.checkpoint import NoCheckpointError

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--num", type=int, default=num, help=num_help)
    # Analyses that steer the next change read the validation splits by default.
    parser.add_argument("--split", default="val", choices=("val", "heldout_val", "test", "heldout"))
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        model = api.load(args.workdir, parse_overrides(args.set))
    except (NoCheckpointError, ValueError) as e:  # not a workdir, or a bad --set key
        raise SystemExit(f"error: {e}") from None
    # Layouts of shapes captions (Text2Scene's `:shapes`) are drawn by the shapes renderer.
    if model.config.data.name not in ("shapes", "shapes_layouts"):
        raise SystemExit(f"{args.workdir} was trained on {model.config.data.name!r}, not shapes.")
    return args, model


def print_counts(corner: str, rows, columns, matrix) -> None:
    """A Markdown table of counts: one row per name in ``rows``, one column per ``columns``."""
    print(f"\n| {corner} | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in zip(rows, matrix, strict=True):
        print(f"| {name} | " + " | ".join(str(v) for v in row) + " |")


def flops_of(compiled) -> float:
    """'flops' from XLA's cost analysis (a dict, or a list of dicts in some versions)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, dict):
        cost = [cost]
    return float(sum((c or {}).get("flops", 0.0) for c in cost or []))


def timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def median(xs) -> float:
    return statistics.median(xs) if xs else math.nan


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", flush=True)


def pause() -> None:
    """Lets spinning worker threads of the previous contender go idle before the next block."""
    time.sleep(0.05)


class Matmul:
    """A jitted float32 NxN matmul: the measured peak that FLOP rates are compared to."""

    def __init__(self, n: int = MATMUL_N):
        ka, kb = jax.random.split(jax.random.key(1))
        self.a = jax.random.normal(ka, (n, n), jnp.float32)
        self.b = jax.random.normal(kb, (n, n), jnp.float32)
        self.fn = jax.jit(jnp.matmul)
        self.flops = 2.0 * n**3
        self.times: list[float] = []
        for _ in range(2):
            jax.block_until_ready(self.fn(self.a, self.b))

    def run(self, reps: int = 5) -> None:
        for _ in range(reps):
            self.times.append(timed(lambda: self.fn(self.a, self.b)))

    @property
    def gflops(self) -> float:
        return self.flops / median(self.times) / 1e9


class Trainer:
    """The loop's jitted, donated train step on one pipeline, timed step by step."""

    def __init__(self, config, mesh, source, iterator, pipeline=None):
        self.pipeline = pipeline or workdir_lib.build_pipeline(config)
        self.mesh = mesh
        self.iterator = iterator
        self.state = workdir_lib.init_state(self.pipeline, config, mesh, source)
        self.rng = workdir_lib.root_rngs(config.seed)["train"]
        self.batch_size = int(config.train.batch_size)
        self.params = sum(x.size for x in jax.tree.leaves(self.state.params))
        repl = mesh_lib.replicated(mesh)
        state_sharding = jax.tree.map(lambda _: repl, self.state)
        jitted = jax.jit(
            self.pipeline.train_step, donate_argnums=(0,), out_shardings=(state_sharding, repl)
        )
        self.fixed_batch = self.next_batch()
        t0 = time.perf_counter()
        self.step_fn = jitted.lower(self.state, self.fixed_batch, self.rng).compile()
        self.compile_s = time.perf_counter() - t0
        # XLA's cost analysis counts one device's share of a step split over the mesh.
        self.flops = flops_of(self.step_fn) * mesh.devices.size
        self.step = 0
        self.times = {"data": [], "fixed": []}

    @classmethod
    def for_config(cls, config, pipeline=None) -> Trainer:
        """On the config's mesh over every device, with real batches of its training data."""
        from jaxgen import data as data_lib

        mesh = mesh_lib.make_mesh(config)
        source = data_lib.build_source(config.data, "train")
        iterator = data_lib.make_batch_iterator(
            source, batch_size=int(config.train.batch_size), seed=config.seed
        )
        return cls(config, mesh, source, iterator, pipeline)

    def next_batch(self):
        return mesh_lib.to_global(next(self.iterator), self.mesh)

    def _one(self, with_data: bool) -> float:
        t0 = time.perf_counter()
        batch = self.next_batch() if with_data else self.fixed_batch
        self.state, metrics = self.step_fn(
            self.state, batch, jax.random.fold_in(self.rng, self.step)
        )
        jax.block_until_ready((self.state, metrics))
        self.step += 1
        return time.perf_counter() - t0

    def warmup(self, n: int) -> None:
        for _ in range(n):
            self._one(with_data=True)

    def run(self, n: int, with_data: bool) -> None:
        key = "data" if with_data else "fixed"
        self.times[key] += [self._one(with_data) for _ in range(n)]

    def img_s(self, key: str) -> float:
        return self.batch_size / median(self.times[key])


def example_batch(config, n: int = 2) -> dict:
    """``n`` training examples of ``config``'s dataset, for ``init``."""
    from jaxgen import data as data_lib

    return workdir_lib.example_batch(data_lib.build_source(config.data, "train"), n)


def load_config(spec: str, overrides) -> object:
    """``path[:variant]`` with ``key=value`` overrides; a bad key or value exits with one error
    line (naming the valid keys)."""
    from jaxgen.config import apply_overrides, load_experiment

    try:
        return apply_overrides(load_experiment(spec), parse_overrides(overrides))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def fresh_pipeline(config):
    """``config``'s pipeline, the runs it refers to as ``"pretrain:<name>"`` (a CLIP, a
    tokenizer) freshly initialised at its image size. For timings, which do not depend on the
    weights."""
    from jaxgen.config import load_experiment
    from jaxgen.pipelines import build_pipeline
    from jaxgen.training import pretrain

    def load_run(spec: str):
        sub = load_experiment(str(config.pretrain[spec.removeprefix(pretrain.PREFIX)]))
        sub.data.image_size = config.data.image_size
        return fresh_run(sub)

    return build_pipeline(config, load_run=load_run)


def fresh_run(config):
    """A freshly initialised run of ``config`` (``load_run``'s shape: ``config``, ``pipeline``,
    ``state``) on ``fresh_pipeline``."""
    import types

    pipe = fresh_pipeline(config)
    state = pipe.warm_start(pipe.init(jax.random.key(0), example_batch(config)))
    return types.SimpleNamespace(config=config, pipeline=pipe, state=state)


def train_throughput(config, label: str, steps: int, pipeline=None) -> dict:
    """Images/s of the loop's train step on ``config`` with real batches, after one warmup step
    (``pipeline``: one built already, e.g. on a tokenizer that is not in a workdir)."""
    trainer = Trainer.for_config(config, pipeline)
    trainer.warmup(1)
    trainer.run(steps, with_data=True)
    img_s = trainer.img_s("data")
    step_s = trainer.batch_size / img_s
    return {
        "config": label,
        "pipeline": config.pipeline,
        "batch_size": trainer.batch_size,
        "parameters": int(trainer.params),
        "images_per_second": img_s,
        "step_seconds": step_s,
        "step_gflop": trainer.flops / 1e9,
        "achieved_gflop_per_s": trainer.flops / step_s / 1e9,
        "compile_seconds": trainer.compile_s,
    }
