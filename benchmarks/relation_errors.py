"""How a text-to-image workdir gets two-object relations wrong: the axis or the direction.

    python benchmarks/relation_errors.py runs/ddpm --num=96

Samples the first ``--num`` two-object prompts of a ``shapes`` split (the workdir's own sampling
settings; ``--set key=value`` overrides one, e.g. ``--set sample.guidance_scale=3``) and prints
``shapes_judge.relation_confusion``: asked relation against the one drawn between the two
prompted objects. A model that knows the axis but not which object comes first fills the 2x2
blocks on the diagonal evenly. The workdir is not written to.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from common import print_counts, shapes_workdir_cli  # noqa: E402

from jaxgen.data import shapes  # noqa: E402
from jaxgen.evaluation import shapes_judge  # noqa: E402


def main() -> None:
    args, model = shapes_workdir_cli(__doc__.splitlines()[0], 96, "two-object prompts to sample")
    size = int(model.config.data.image_size)
    captions, truths = shapes.make_prompts(args.split, 8 * args.num, image_size=size)
    pairs = [(c, t) for c, t in zip(captions, truths, strict=True) if t["relation"]][: args.num]
    images = model.generate([c for c, _ in pairs], seed=args.seed)
    result = shapes_judge.relation_confusion(images, [t for _, t in pairs])

    print(f"{args.workdir} at step {model.step}, {len(pairs)} {args.split} prompts")
    print_counts(
        "asked \\ drawn", shapes.RELATIONS, [*shapes.RELATIONS, "not readable"], result["matrix"]
    )
    print(f"\nrelation right {result['relation']:.3f}, axis right {result['axis']:.3f} (readable)")


if __name__ == "__main__":
    main()
