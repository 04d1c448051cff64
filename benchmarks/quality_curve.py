"""Prints a run's evaluations against training time, as a Markdown table.

    python benchmarks/quality_curve.py runs/ddpm
    python benchmarks/quality_curve.py runs/ddpm_digits --metrics=val/accuracy,val/frechet

It reads ``eval_history.jsonl``, which the training loop appends at every evaluation: every
``config.eval.every_minutes`` of training time on the validation splits, and at the end on the
splits the run reports (``--metrics=test/...`` shows that row). Training minutes exclude the time
spent sampling and judging.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from jaxgen.evaluation.intervals import format_result  # noqa: E402

DEFAULT_METRICS = (
    "val/colour,val/shape,val/size,val/count,val/relation,val/frechet,"
    "heldout_val/colour,heldout_val/shape,heldout_val/relation,heldout_val/frechet"
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
    rows = list({(r["step"], r.get("final", True)): r for r in rows}.values())
    keys = [k for k in args.metrics.split(",") if any(k in r for r in rows)]
    print("| train min | step | images seen | " + " | ".join(keys) + " |")
    print("|---:|---:|---:|" + "---:|" * len(keys))
    for r in rows:
        cells = [format_result(r, k) if k in r else "" for k in keys]
        minutes = r.get("train_minutes")
        print(f"| {minutes:.1f} | " if minutes is not None else "| | ", end="")
        seen = f"{r['images_seen']:,}" if "images_seen" in r else ""
        print(f"{r['step']} | {seen} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
