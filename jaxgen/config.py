"""Experiment configs: the base every experiment file extends, loading a file outside the absl
flag machinery (tests, benchmarks, notebooks), and dotted overrides.

config = load_experiment("experiments/ddpm.py:digits,smoke")
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import ml_collections

#: The repository's experiments folder (present in a source checkout, not in a wheel).
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(spec: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of an experiment file.

    Args:
      spec: a path ``experiments/ddpm.py``, optionally with ``:variant`` as on the command line,
        or a bare experiment name (``"ddpm"``) looked up in the repository's experiments folder.
      arg: the variant, if not given in ``spec``.
    """
    path, _, variant = spec.partition(":")
    if arg is not None and variant:
        raise ValueError(f"Variant given twice: {spec!r} and arg={arg!r}.")
    file = Path(path)
    if file.suffix != ".py":
        file = EXPERIMENTS_DIR / f"{path}.py"
    if not file.is_file():
        raise FileNotFoundError(f"No experiment config file {file}.")
    module_spec = importlib.util.spec_from_file_location(f"_jaxgen_experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg if arg is not None else (variant or None))


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


def base_config(pipeline: str, dataset: str) -> ml_collections.ConfigDict:
    """The settings every experiment shares; an experiment file extends it with what makes it
    different (``experiments/*.py``).

    Args:
      pipeline: the family's registry name (``config.pipeline``).
      dataset: ``config.data.name``; ``shapes`` and ``scenes`` report their ``test`` and
        ``heldout`` splits
        (and checks ``val`` and ``heldout_val`` during training), every other dataset ``test``
        (and ``val``).
    """
    config = ml_collections.ConfigDict()
    config.pipeline = pipeline
    config.seed = 0
    config.data = ml_collections.ConfigDict(
        dict(name=dataset, image_size=32, max_text_len=64, seed=0, tfds_name="", data_dir="")
    )
    # "bfloat16": mixed precision (bfloat16 activations, float32 parameters and optimizer state).
    config.model = ml_collections.ConfigDict(dict(dtype="float32"))
    # Runs trained first into <workdir>/pretrain/<name>, referred to as "pretrain:<name>".
    config.pretrain = ml_collections.ConfigDict()
    # Devices are split into data-parallel groups of `fsdp` devices that shard the state.
    # Arrays smaller than fsdp_min_size elements stay replicated.
    config.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14))
    config.train = ml_collections.ConfigDict(
        dict(
            steps=1000,
            batch_size=64,
            learning_rate=1e-3,
            b1=0.9,
            b2=0.999,
            # Linear warmup, then a cosine decay to final_lr_fraction of the rate at `steps`
            # ("constant": no decay).
            warmup_steps=100,
            lr_schedule="cosine",
            final_lr_fraction=0.05,
            grad_clip=1.0,  # global-norm clipping; 0: off
            weight_decay=0.0,
            ema_decay=0.999,
            # Training time (minutes, excluding sampling and evaluation) after which the run
            # stops, whatever step it reached; 0: no limit.
            max_minutes=0.0,
            log_every=50,
            checkpoint_every=500,
            keep_checkpoints=2,
            # True: a step whose loss or gradient norm is NaN/Inf is skipped (state unchanged)
            # and counted in `skipped_steps`; False: the run stops there, keeping the last good
            # checkpoint.
            skip_nonfinite_updates=False,
        )
    )
    config.sample = ml_collections.ConfigDict(
        dict(
            # Sample grids written during training: `num` default prompts every `every_steps`.
            num=36,
            every_steps=500,
            # Candidates per prompt re-ranked by CLIP (Pipeline.rerank, as DALL-E re-ranks its
            # samples): the one whose embedding under the CLIP run at rerank_clip is nearest
            # the prompt's is kept; 1 = off. The final evaluation judges both single samples
            # and the re-ranked ones.
            rerank=1,
            rerank_clip="",
        )
    )
    heldout = dataset in ("shapes", "shapes_layouts", "scenes")
    config.eval = ml_collections.ConfigDict(
        dict(
            # The final evaluation (and --mode=eval) reports these splits, num_samples prompts
            # each (at least 256, so each score's 95% interval is a few points wide) ...
            splits=("test", "heldout") if heldout else ("test",),
            num_samples=256,
            # ... and the evaluations during training, which tuning reads, the validation
            # splits (0: num_samples prompts).
            val_splits=("val", "heldout_val") if heldout else ("val",),
            val_num_samples=0,
            every_minutes=0.0,  # evaluations during training, by training time ...
            every_steps=0,  # ... or by step; 0: only the final one
            # The evaluation CLIP (a workdir, "pretrain:<name>" or "shared:<experiment>") that
            # adds CLIP score and R-precision of the samples; "": none. It must be a run
            # nothing else in the experiment trains against or selects with.
            clip_workdir="",
        )
    )
    return config


def split_variant(
    arg: str | None, experiment: str, datasets: Sequence[str], options: Sequence[str] = ()
) -> tuple[str, set[str]]:
    """``(dataset, options)`` of a variant such as ``"digits,joint,smoke"``.

    At most one of ``datasets`` (default: the first), any of ``options`` and ``smoke``,
    comma-separated; anything else is a ValueError naming the valid words.
    """
    words = [w for w in (arg or "").split(",") if w]
    chosen = [w for w in words if w in datasets]
    unknown = [w for w in words if w not in datasets and w not in options and w != "smoke"]
    if unknown or len(chosen) > 1:
        raise ValueError(
            f"Unknown {experiment} variant {arg!r}; valid: one of {', '.join(datasets)}, and "
            f"any of {', '.join([*options, 'smoke'])}, comma-separated."
        )
    return (chosen[0] if chosen else datasets[0]), set(words) - set(chosen)


def make_smoke(config: ml_collections.ConfigDict, steps: int, batch_size: int, log_every: int):
    """Turns ``config`` into its ``:smoke`` variant in place: ``steps`` steps at 16x16 with a
    checkpoint and a sample grid halfway, no time limits, no evaluation before the final one,
    and the smoke variant of every pretraining run. The caller shrinks its networks."""
    config.data.image_size = 16
    config.train.update(
        dict(
            steps=steps,
            batch_size=batch_size,
            max_minutes=0.0,
            log_every=log_every,
            checkpoint_every=steps // 2,
        )
    )
    config.sample.update(dict(num=4, every_steps=steps // 2))
    config.eval.update(dict(every_minutes=0.0, every_steps=0))
    for name, spec in config.pretrain.items():
        config.pretrain[name] = spec + (",smoke" if ":" in spec else ":smoke")
    return config
