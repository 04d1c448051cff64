"""Which attributes of the caption does a GAN-INT-CLS discriminator check?

    python benchmarks/d_match_probe.py runs/gan_int_cls --num=512

Scores each of the first ``--num`` real images of a ``shapes`` split with the workdir's D
(``match_logits``) against its own caption, against the next example's caption (the kind of
mismatched text the matching-aware loss trains D with), and against captions that differ from its
own in one attribute (``shapes.hard_negative``: the colour, shape or size of one object, or, for
two objects, the relation). Prints, per kind of mismatch, how often D scores the right caption
higher (0.5: D does not tell them apart) and the mean logit gap. The workdir is not written to.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from common import shapes_workdir_cli  # noqa: E402

from jaxgen.data import shapes  # noqa: E402

KINDS = ("colour", "shape", "size", "relation")


def main() -> None:
    args, model = shapes_workdir_cli(__doc__.splitlines()[0], 512, "real images to score")
    pipe, state, data = model.pipeline, model.state, model.config.data
    if not hasattr(pipe, "match_logits"):
        raise SystemExit(f"{args.workdir} is a {model.config.pipeline} run, not a GAN-INT-CLS one.")
    size, seed, text_len = int(data.image_size), int(data.seed), int(data.max_text_len)
    source = shapes.ShapesSource(args.split, size, seed=seed, max_text_len=text_len)
    examples = [source.example(i) for i in range(args.num + 1)]
    images = np.stack([e["image"] for e in examples[:-1]])
    right = pipe.match_logits(state, images, [e["caption"] for e in examples[:-1]])
    nxt = pipe.match_logits(state, images, [e["caption"] for e in examples[1:]])
    rows = [("the next example's caption", right, nxt)]
    for kind in KINDS:
        changed = shapes.ShapesSource(
            args.split, size, seed=seed, max_text_len=text_len, hard_negative_kinds=(kind,)
        )
        # A one-object scene has no relation to change (hard_negative would change another kind).
        idx = [i for i in range(args.num) if kind != "relation" or examples[i].get("relation")]
        captions = [changed.negative_caption(i, examples[i]) for i in idx]
        rows.append(
            (f"{kind} changed", right[idx], pipe.match_logits(state, images[idx], captions))
        )
    print(f"{args.workdir} at step {model.step}, {args.num} real {args.split} images")
    print(f"D's logit for the right caption: mean {right.mean():.3f}\n")
    print("| mismatched caption | pairs | D scores the right caption higher | mean logit gap |")
    print("|---|---:|---:|---:|")
    for name, r, w in rows:
        print(f"| {name} | {len(r)} | {np.mean(r > w):.3f} | {np.mean(r - w):.3f} |")


if __name__ == "__main__":
    main()
