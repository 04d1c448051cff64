"""Loading experiment config files outside the absl flag machinery (tests, benchmarks, notebooks).

config = load_experiment("experiments/ddpm.py:digits,smoke")
"""

from __future__ import annotations

import importlib.util
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
