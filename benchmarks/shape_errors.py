"""How a text-to-image workdir gets shapes wrong: per object count, and leaks between objects.

    python benchmarks/shape_errors.py runs/ddpm --num=192

Samples the first ``--num`` prompts of a ``shapes`` split (the workdir's own sampling settings;
``--set key=value`` overrides one) and prints ``shapes_judge.shape_confusion``: the shape asked
for each object against the shape drawn in its colour, the shape accuracy of one- and
two-object prompts apart, and, for two-object prompts asking two different shapes, how often
both are right and how often both objects come out as one shape. The workdir is not written to.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from common import print_counts, shapes_workdir_cli  # noqa: E402

from jaxgen.data import shapes  # noqa: E402
from jaxgen.evaluation import shapes_judge  # noqa: E402


def main() -> None:
    args, model = shapes_workdir_cli(__doc__.splitlines()[0], 192, "prompts to sample")
    size = int(model.config.data.image_size)
    captions, truths = shapes.make_prompts(args.split, args.num, image_size=size)
    images = model.generate(captions, seed=args.seed)
    result = shapes_judge.shape_confusion(images, truths)

    print(f"{args.workdir} at step {model.step}, {args.num} {args.split} prompts")
    print_counts("asked \\ drawn", shapes.SHAPES, [*shapes.SHAPES, "missing"], result["matrix"])
    print(
        f"\nshape right: one-object prompts {result['shape_one']:.3f}, two-object prompts "
        f"{result['shape_two']:.3f}; {result['pairs']} two-object prompts asking two shapes "
        f"(both colours found): both right {result['pairs_right']:.3f}, both drawn as one shape "
        f"{result['pairs_same']:.3f}"
    )


if __name__ == "__main__":
    main()
