"""Runs an experiment needs before its own, trained into its workdir and referred to by name.

A config lists them as ``config.pretrain.<name> = "<experiment>[:variant]"`` and refers to one by
the string ``"pretrain:<name>"`` anywhere a workdir path is expected, e.g. DDPM's
``model.text_init = "pretrain:clip"``. The training loop trains each referenced run (once: a
finished run leaves ``done.json``; an interrupted one resumes) into ``<workdir>/pretrain/<name>``
and ``resolve`` replaces the reference by that path. Unreferenced entries cost nothing, so a
config can offer one that the user switches on with a single override. Training time of a
pretraining run is its own (its workdir's ``eval.json``), not counted in the main run's
``train.max_minutes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections

from jaxgen.training.checkpoint import NoCheckpointError

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


def pending(config: ml_collections.ConfigDict, workdir: str | Path) -> list[tuple[str, Path]]:
    """``(experiment spec, run dir)`` of each referenced pretraining run not yet finished, for
    the training loop to train (and ``mark_done``) before ``resolve``."""
    names = _check_references(config)
    specs = config.get("pretrain") or {}
    runs = [(specs[name], run_dir(workdir, name)) for name in sorted(names)]
    return [(spec, sub) for spec, sub in runs if not (sub / DONE_FILE).exists()]


def mark_done(run: Path, spec: str) -> None:
    """Records that the pretraining run in ``run`` finished (``pending`` skips it from now)."""
    if jax.process_index() == 0:
        (run / DONE_FILE).write_text(json.dumps({"experiment": spec}) + "\n")


def resolve(config: ml_collections.ConfigDict, workdir: str | Path) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every ``"pretrain:<name>"`` replaced by that run's workdir.

    Raises ``NoCheckpointError`` for a referenced run that holds no checkpoint (the training
    loop trains the ``pending`` ones first; loading a workdir for sampling does not).
    """
    names = _check_references(config)
    if not names:
        return config
    specs = config.get("pretrain") or {}
    paths = {}
    for name in sorted(names):
        sub = run_dir(workdir, name)
        if not (sub / "checkpoints").exists():
            raise NoCheckpointError(
                f"{sub} holds no checkpoint: the pretraining run {name!r} ({specs[name]}) of "
                f"{workdir} has not been trained; train {workdir} first."
            )
        paths[name] = str(sub)
    config = ml_collections.ConfigDict(config.to_dict())
    _replace(config, paths)
    return config


def _check_references(config) -> set[str]:
    names = references(config)
    specs = config.get("pretrain") or {}
    unknown = sorted(names - set(specs))
    if unknown:
        raise ValueError(
            f"The config refers to pretraining run(s) {unknown} that config.pretrain does not "
            f"define; defined: {sorted(specs) or 'none'}."
        )
    return names
