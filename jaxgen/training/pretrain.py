"""Runs an experiment needs before its own, trained into its workdir and referred to by name.

A config lists them as ``config.pretrain.<name> = "<experiment>[:variant]"`` and refers to one by
the string ``"pretrain:<name>"`` anywhere a workdir path is expected, e.g. DDPM's
``model.text_init = "pretrain:clip"``. The training loop trains each referenced run (once: a
finished run leaves ``done.json``; an interrupted one resumes) into ``<workdir>/pretrain/<name>``
and ``resolve`` replaces the reference by that path. Unreferenced entries cost nothing, so a
config can offer one that the user switches on with a single override. Training time of a
pretraining run is its own (its workdir's ``eval.json``), not counted in the main run's
``train.max_minutes``. A main run trained by its steps alone (``train.max_minutes=0``) trains its
pretraining runs by their steps alone too, so the same command is the same run on any machine.

A run that several experiments share, such as the evaluation CLIP that scores every family's
samples, is referred to as ``"shared:<experiment>[:variant]"``: it is trained the same way, once,
into ``shared_dir(spec)`` under ``$JAXGEN_SHARED_DIR`` (default ``~/.cache/jaxgen/shared``), and
every later run of any experiment reuses it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import ml_collections

from jaxgen.config import load_experiment
from jaxgen.training.checkpoint import NoCheckpointError

PREFIX = "pretrain:"
SHARED_PREFIX = "shared:"
DONE_FILE = "done.json"


def shared_root() -> Path:
    """Where shared runs live: ``$JAXGEN_SHARED_DIR``, else ``~/.cache/jaxgen/shared``."""
    root = os.environ.get("JAXGEN_SHARED_DIR") or Path.home() / ".cache" / "jaxgen" / "shared"
    return Path(root)


def shared_dir(spec: str) -> Path:
    """The workdir of the shared run of experiment ``spec`` (e.g. ``"clip:eval"``)."""
    return shared_root() / re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def shared_references(config: ml_collections.ConfigDict) -> set[str]:
    """Experiment specs ``x`` of every ``"shared:x"`` string value in the config."""
    return {
        v[len(SHARED_PREFIX) :]
        for v in _leaves(config)
        if isinstance(v, str) and v.startswith(SHARED_PREFIX)
    }


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
        elif isinstance(value, str) and value in paths:
            node[key] = paths[value]


def run_dir(workdir: str | Path, name: str) -> Path:
    """Where the pretraining run ``name`` of ``workdir`` lives."""
    return Path(workdir) / "pretrain" / name


def pending(config: ml_collections.ConfigDict, workdir: str | Path) -> list[tuple[str, Path]]:
    """``(experiment spec, run dir)`` of each referenced pretraining run not yet finished, for
    the training loop to train (and ``mark_done``) before ``resolve``."""
    names = _check_references(config)
    specs = config.get("pretrain") or {}
    runs = [(specs[name], run_dir(workdir, name)) for name in sorted(names)]
    runs += [(spec, shared_dir(spec)) for spec in sorted(shared_references(config))]
    return [(spec, sub) for spec, sub in runs if not (sub / DONE_FILE).exists()]


def experiment(spec: str, run: Path, config: ml_collections.ConfigDict):
    """The config that trains pretraining run ``spec`` into ``run`` for the main ``config``.

    A run of the main run's own (``<workdir>/pretrain/<name>``) drops its minute cap when the main
    run has none, so a steps-only command pins every step it depends on. A shared run keeps its
    own config: which experiment happened to train it first must not change it.
    """
    pre_config = load_experiment(spec)
    if Path(run) != shared_dir(spec) and not float(config.train.get("max_minutes", 0) or 0):
        pre_config.train.max_minutes = 0.0
    return pre_config


def mark_done(run: Path, spec: str) -> None:
    """Records that the pretraining run in ``run`` finished (``pending`` skips it from now)."""
    if jax.process_index() == 0:
        (run / DONE_FILE).write_text(json.dumps({"experiment": spec}) + "\n")


def resolve(config: ml_collections.ConfigDict, workdir: str | Path) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every ``"pretrain:<name>"`` and ``"shared:<spec>"`` replaced
    by that run's workdir.

    Raises ``NoCheckpointError`` for a referenced run that holds no checkpoint (the training
    loop trains the ``pending`` ones first; loading a workdir for sampling does not).
    """
    names = _check_references(config)
    shared = shared_references(config)
    if not names and not shared:
        return config
    specs = config.get("pretrain") or {}
    paths = {}
    for name in sorted(names):
        paths[PREFIX + name] = _trained(
            run_dir(workdir, name),
            f"pretraining run {name!r} ({specs[name]}) of {workdir}",
            f"train {workdir}",
        )
    for spec in sorted(shared):
        paths[SHARED_PREFIX + spec] = _trained(
            shared_dir(spec), f"shared run {spec!r}", "train any experiment that uses it"
        )
    config = ml_collections.ConfigDict(config.to_dict())
    _replace(config, paths)
    return config


def _trained(sub: Path, what: str, remedy: str) -> str:
    if not (sub / "checkpoints").exists():
        raise NoCheckpointError(
            f"{sub} holds no checkpoint: the {what} has not been trained; {remedy} first."
        )
    return str(sub)


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
