"""Prints a run's evaluations against training time, as a Markdown table.

    python benchmarks/quality_curve.py runs/ddpm
    python benchmarks/quality_curve.py runs/ddpm_digits --metrics=test/accuracy,test/frechet

It reads ``eval_history.jsonl``, which the training loop appends at every evaluation (every
``config.eval.every_minutes`` of training time, and at the end), so the numbers in the results
logs come from the run itself. Training minutes exclude the time spent sampling and judging.
"""

import argparse
import json
from pathlib import Path

DEFAULT_METRICS = (
    "test/colour,test/shape,test/size,test/count,test/relation,test/frechet,"
    "heldout/colour,heldout/shape,heldout/relation,heldout/frechet"
)


def read_history(workdir: Path) -> list[dict]:
    path = workdir / "eval_history.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path} not found (train into {workdir} first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help="comma-separated keys")
    args = parser.parse_args()
    rows = read_history(args.workdir)
    # One row per step: an evaluation repeated at the same step (e.g. rerunning a finished run)
    # is shown once, with its latest numbers.
    rows = list({r["step"]: r for r in rows}.values())
    keys = [k for k in args.metrics.split(",") if any(k in r for r in rows)]
    print("| train min | step | " + " | ".join(keys) + " |")
    print("|---:|---:|" + "---:|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "" for k in keys]
        minutes = r.get("train_minutes")
        print(f"| {minutes:.1f} | " if minutes is not None else "| | ", end="")
        print(f"{r['step']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
