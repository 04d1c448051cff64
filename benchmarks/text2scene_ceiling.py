"""What the paper's metrics can reach on `scenes`: the scores of oracles that read each
description exactly (`scenes.parse_caption`) and fill in what it leaves open, so that a model's
numbers can be read against the data's own randomness.

    python benchmarks/text2scene_ceiling.py [--split=test] [--num=1000]

- "sampled": every object where the description puts it, its cell drawn like the dataset draws
  it (the column's centre +- 1, a row of its band), flip drawn where the description is silent
  (never: people and animals always have it); the expected score of a model that knows all the
  description says and samples the rest.
- "centre": the same with the most central cell of each range instead of a draw.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import numpy as np  # noqa: E402

from jaxgen.data import scenes  # noqa: E402
from jaxgen.evaluation import scene_metrics  # noqa: E402


def oracle(truth: dict, rng: np.random.Generator | None) -> list[dict]:
    out = []
    for item in scenes.parse_caption(truth["caption"]):
        name = item["name"]
        rows = scenes.SKY_ROWS if name in scenes.SKY else scenes.GROUND_ROWS
        centre = scenes.COLUMN_CENTRES[item["column"]]
        if rng is None:
            x, y = centre, (rows[0] + rows[1]) // 2
        else:
            x, y = centre + int(rng.integers(-1, 2)), int(rng.integers(rows[0], rows[1] + 1))
        out.append(
            {
                "name": name,
                "size": item["size"],
                "flip": item.get("flip", 0),
                "pose": item.get("pose"),
                "expression": item.get("expression"),
                "x": x,
                "y": y,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=tuple(scenes.SPLITS))
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    truths = [scenes.sample_truth(args.split, i) for i in range(args.num)]
    keys = ("u_precision", "u_recall", "u_coord", "b_precision", "b_recall", "b_coord")

    def box(o):
        h, w = scenes.sprite_size(o["name"], o["size"], args.image_size)
        return w / args.image_size, h / args.image_size

    print(f"\n{args.split}, {args.num} scenes\n")
    print("| oracle | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, r in (("sampled", rng), ("centre", None)):
        scores = [
            scene_metrics.scene_scores(
                oracle(t, r),
                t["objects"],
                categories=scenes.OBJECTS,
                grid=scenes.GRID,
                box_of=box,
                attributes=tuple(scenes.ATTRIBUTES),
                applies=scenes.applies,
            )
            for t in truths
        ]
        s = scene_metrics.summarize(scores)
        print(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
