"""Speed of unCLIP's two-hop sampler: images/s of ``generate`` at the workdir's sampling settings,
the shares of its parts (prior, decoder, upsampler), and, with ``--ddpm``, a DDPM workdir's
``generate`` timed in the same process for a ratio that load on the machine does not move much.

    python benchmarks/unclip_speed.py runs/unclip [--ddpm=runs/ddpm] [--repeats=3]

Each part is a compiled call on one batch of ``sample.batch_size`` validation prompts, timed
after a compiling call (``UnCLIPPipeline.sampler_speed``); the medians of ``--repeats`` rounds are
printed. The workdirs are not written to.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import jax  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--ddpm", type=Path, help="a DDPM workdir to time beside it")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        model = api.load(args.workdir)
        ddpm = api.load(args.ddpm) if args.ddpm else None
    except (NoCheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if model.config.pipeline != "unclip":
        raise SystemExit(f"{args.workdir} holds a {model.config.pipeline!r} run, not unCLIP.")
    rows = []
    prompts = model.pipeline.judge.prompts("val", int(model.config.sample.batch_size), seed=2)[0]
    for r in range(args.repeats):
        row = model.pipeline.sampler_speed(model.state, jax.random.key(r))
        if ddpm is not None:
            ddpm.generate(prompts, seed=r, candidates=1)  # compiles on the first round
            start = time.perf_counter()
            ddpm.generate(prompts, seed=r, candidates=1)
            row["ddpm/images_per_s"] = len(prompts) / (time.perf_counter() - start)
        rows.append(row)
    print(f"\n{args.workdir}: batch {len(prompts)}, median of {args.repeats}\n")
    print("| row | value |")
    print("|---|---:|")
    for key in rows[0]:
        print(f"| {key} | {statistics.median(r[key] for r in rows):.3f} |")
    if ddpm is not None:
        ratios = [r["sampler/images_per_s"] / r["ddpm/images_per_s"] for r in rows]
        print(f"| unCLIP / DDPM images/s | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
