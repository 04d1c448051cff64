"""Evaluates a trained workdir at several values of one sampling setting, as a Markdown table.

    python benchmarks/sweep_eval.py runs/ddpm --key=sample.guidance_scale --values=1.5,3,5,8
        [--set eval.num_samples=256 ...]

Each value reloads the workdir with that override (the same as ``--mode=eval --config.<key>=v``)
plus the ``--set`` ones, held fixed for every value, and runs the pipeline's evaluators with the
training loop's evaluation key, so the numbers are comparable to the run's own ``eval.json``.
The workdir is not written to.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from common import parse_overrides  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen import config as config_lib  # noqa: E402
from jaxgen.training import workdir as workdir_lib  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402

DEFAULT_METRICS = "test/colour,test/shape,test/relation,test/frechet,heldout/colour,heldout/shape"


def parse_value(text: str, like):
    """``text`` as the type of the config's current value (a float key gets floats)."""
    if isinstance(like, bool):
        return text.lower() in ("1", "true", "yes")
    return type(like)(text) if like is not None else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--key", required=True, help="dotted config key, e.g. sample.num_steps")
    parser.add_argument("--values", required=True, help="comma-separated values of --key")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help="comma-separated keys")
    parser.add_argument("--set", action="append", default=[], help="fixed override key=value")
    args = parser.parse_args()

    fixed = parse_overrides(args.set)
    try:
        config = workdir_lib.load_config(args.workdir)
        config_lib.apply_overrides(config, fixed)
        parent, leaf = config_lib.resolve_key(config, args.key)
    except (NoCheckpointError, ValueError) as e:  # not a workdir, or an unknown key
        raise SystemExit(f"error: {e}") from None
    values = [parse_value(v, parent[leaf]) for v in args.values.split(",")]
    keys = args.metrics.split(",")
    rows = []
    for value in values:
        t0 = time.perf_counter()
        model = api.load(args.workdir, overrides={**fixed, args.key: value})
        results = model.evaluate()
        seconds = time.perf_counter() - t0
        rows.append((value, results, seconds))
        shown = ", ".join(f"{k} {results[k]:.3f}" for k in keys if k in results)
        print(f"{args.key}={value}: {shown} ({seconds:.0f} s)", flush=True)
    keys = [k for k in keys if any(k in r for _, r, _ in rows)]
    print(f"\n{args.workdir} at step {model.step}\n")
    print(f"| {args.key} | " + " | ".join(keys) + " | eval s |")
    print("|---:|" + "---:|" * (len(keys) + 1))
    for value, results, seconds in rows:
        cells = [f"{results[k]:.3f}" if k in results else "" for k in keys]
        print(f"| {value} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
