"""Runs an experiment needs before its own, trained into its workdir and referred to by name.

A config lists them as ``config.pretrain.<name> = "<experiment>[:variant]"`` and refers to one by
the string ``"pretrain:<name>"`` anywhere a workdir path is expected, e.g. DDPM's
``model.text_init = "pretrain:clip"``. ``resolve`` trains each referenced run (once: a finished
run leaves ``done.json``; an interrupted one resumes) into ``<workdir>/pretrain/<name>`` and
replaces the reference by that path. Unreferenced entries cost nothing, so a config can offer one
that the user switches on with a single override. Training time of a pretraining run is its own
(its workdir's ``eval.json``), not counted in the main run's ``train.max_minutes``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
from absl import logging

PREFIX = "pretrain:"
DONE_FILE = "done.json"


def references(config: ml_collections.ConfigDict) -> set[str]:
    """Names ``x`` of every ``"pretrain:x"`` string value in the config."""
    found = set()
    for value in _leaves(config):
        if isinstance(value, str) and value.startswith(PREFIX):
            found.add(value[len(PREFIX) :])
    return found


def _leaves(node):
    for value in node.values():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value)
        else:
            yield value


def _replace(node, paths: dict[str, str]) -> None:
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            _replace(value, paths)
        elif isinstance(value, str) and value.startswith(PREFIX):
            node[key] = paths[value[len(PREFIX) :]]


def run_dir(workdir: str | Path, name: str) -> Path:
    """Where the pretraining run ``name`` of ``workdir`` lives."""
    return Path(workdir) / "pretrain" / name


def resolve(
    config: ml_collections.ConfigDict, workdir: str | Path, train: bool = False
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every ``"pretrain:<name>"`` replaced by that run's workdir.

    Args:
      config: the experiment config.
      workdir: the experiment's workdir.
      train: train referenced runs that are not finished (the training loop); otherwise a
        missing run is an error (loading a workdir for sampling or evaluation).
    """
    names = references(config)
    if not names:
        return config
    specs = config.get("pretrain") or {}
    unknown = sorted(names - set(specs))
    if unknown:
        raise ValueError(
            f"The config refers to pretraining run(s) {unknown} that config.pretrain does not "
            f"define; defined: {sorted(specs) or 'none'}."
        )
    from jaxgen.config import load_experiment
    from jaxgen.training import checkpoint as ckpt_lib

    paths = {}
    for name in sorted(names):
        sub = run_dir(workdir, name)
        if train and not (sub / DONE_FILE).exists():
            from jaxgen.training.loop import train_and_evaluate

            logging.info("Pretraining %r (%s) in %s.", name, specs[name], sub)
            train_and_evaluate(load_experiment(specs[name]), sub)
            if jax.process_index() == 0:
                (sub / DONE_FILE).write_text(f'{{"experiment": "{specs[name]}"}}\n')
        elif not (sub / "checkpoints").exists():
            raise ckpt_lib.NoCheckpointError(
                f"{sub} holds no checkpoint: the pretraining run {name!r} ({specs[name]}) of "
                f"{workdir} has not been trained; train {workdir} first."
            )
        paths[name] = str(sub)
    config = ml_collections.ConfigDict(config.to_dict())
    _replace(config, paths)
    return config
