"""Evaluates a trained workdir at several values of one sampling setting, as a Markdown table.

    python benchmarks/sweep_eval.py runs/ddpm --key=sample.guidance_scale --values=1.5,3,5,8
        [--set eval.val_num_samples=256 ...]

A sweep chooses a setting, so it reads the validation splits (``eval.val_splits``, e.g. val
and heldout_val), never the ones a run reports: each value reloads the workdir with that
override plus the ``--set`` ones, held fixed for every value, and runs the evaluation the
training loop runs during training (``evaluate(final=False)``), with its key. Each cell gives
the value and its 95% interval; a gap inside the intervals is not a choice. The workdir is not
written to.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from common import parse_overrides  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen import config as config_lib  # noqa: E402
from jaxgen.evaluation.intervals import format_result  # noqa: E402
from jaxgen.training import workdir as workdir_lib  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402

DEFAULT_METRICS = (
    "val/colour,val/shape,val/relation,val/frechet,heldout_val/colour,heldout_val/shape"
)


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
        results = model.evaluate(final=False)
        seconds = time.perf_counter() - t0
        rows.append((value, results, seconds))
        shown = ", ".join(f"{k} {format_result(results, k)}" for k in keys if k in results)
        print(f"{args.key}={value}: {shown} ({seconds:.0f} s)", flush=True)
    keys = [k for k in keys if any(k in r for _, r, _ in rows)]
    print(f"\n{args.workdir} at step {model.step}\n")
    print(f"| {args.key} | " + " | ".join(keys) + " | eval s |")
    print("|---:|" + "---:|" * (len(keys) + 1))
    for value, results, seconds in rows:
        cells = [format_result(results, k) if k in results else "" for k in keys]
        print(f"| {value} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
