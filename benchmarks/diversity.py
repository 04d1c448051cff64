"""Fidelity and diversity of text-to-image workdirs side by side, on the same prompts and seeds.

    python benchmarks/diversity.py runs/unclip runs/ddpm [--num=256] [--k=4] [--split=test]
        [--set key=value ...]

For each workdir: ``--k`` samples (seeds 0..k-1, one sample per prompt each, no re-ranking) of
the first ``--num`` prompts of a ``shapes`` split; the judge's colour / shape / relation over all
of them, and the diversity of each prompt's k samples: their mean pairwise distance in the
judge's features and in the evaluation CLIP's image embeddings (the workdir's
``eval.clip_workdir``), with 95% intervals over prompts. unCLIP's paper claims more diversity
than a text-conditional model at similar fidelity; this is the measurement. The workdirs are not
written to.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import numpy as np  # noqa: E402
from common import parse_overrides  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen.evaluation import intervals  # noqa: E402
from jaxgen.evaluation.diversity import mean_pairwise_distance  # noqa: E402
from jaxgen.evaluation.intervals import format_result  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402

METRICS = ("colour", "shape", "relation", "judge_diversity", "clip_diversity")


def measure(model, num: int, k: int, split: str) -> dict[str, float]:
    judge = model.pipeline.judge
    captions, truths, _ = judge.prompts(split, num, seed=0)
    samples = [model.generate(captions, seed=s, candidates=1) for s in range(k)]
    images = np.concatenate(samples)  # sample s of prompt i at s * num + i
    results = {}
    outcomes = judge.outcomes(images, truths * k)
    for name in ("colour", "shape", "relation"):
        if name in outcomes:
            results.update(intervals.proportion(name, outcomes[name]))
    feats = judge.features(images)
    if feats is not None:
        per_prompt = feats.reshape(k, num, -1).transpose(1, 0, 2)
        results.update(intervals.mean("judge_diversity", mean_pairwise_distance(per_prompt)))
    embedder = model.pipeline.clip_embedder
    if embedder is not None:
        emb = embedder.embed_images(images).reshape(k, num, -1).transpose(1, 0, 2)
        results.update(intervals.mean("clip_diversity", mean_pairwise_distance(emb)))
    return {key: float(v) for key, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", type=Path, nargs="+")
    parser.add_argument("--num", type=int, default=256, help="prompts")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt (>= 2)")
    parser.add_argument("--split", default="test", choices=("val", "test", "heldout"))
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    if args.k < 2:
        raise SystemExit("error: --k must be at least 2 to measure diversity.")
    rows = []
    for workdir in args.workdirs:
        try:
            model = api.load(workdir, parse_overrides(args.set))
        except (NoCheckpointError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
        if model.config.data.name != "shapes":
            raise SystemExit(f"{workdir} was trained on {model.config.data.name!r}, not shapes.")
        rows.append((workdir, model.config.pipeline, measure(model, args.num, args.k, args.split)))
        print(f"{workdir}: done", file=sys.stderr)
    print(f"\n{args.num} {args.split} prompts, {args.k} samples each (seeds 0..{args.k - 1})\n")
    print("| workdir | pipeline | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---:|" * len(METRICS))
    for workdir, pipeline, res in rows:
        cells = [format_result(res, m) if m in res else "" for m in METRICS]
        print(f"| {workdir} | {pipeline} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
