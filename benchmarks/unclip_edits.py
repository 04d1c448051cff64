"""What only unCLIP does, measured by the judge: variations, interpolations and text diffs.

    python benchmarks/unclip_edits.py runs/unclip [--num=128] [--k=4] [--split=test]
        [--out=DIR] [--set key=value ...]

- Variations: ``--k`` variations of each of ``--num`` real images of a ``shapes`` split (their
  CLIP embedding decoded from their DDIM-inverted noise, DDIM eta ``sample.variation_eta``); the
  judge reads each variation against the source image's ground truth (colour, shape, size, count)
  and the mean absolute pixel difference to the source (in [0, 1] units) says they differ.
- Text diffs: single-object images moved along "a <colour> <shape>" -> "a <other colour>
  <shape>" by theta in 0..0.5; per theta, the fraction of images the judge reads in the source
  colour, in the target colour, and with the source shape kept.
- Interpolations and the text-diff rows are written as grids to ``--out`` (default: the
  workdir's ``samples/edits``), with the judge's reading of every step printed beside them.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import parse_overrides  # noqa: E402
from PIL import Image  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen.data import shapes  # noqa: E402
from jaxgen.evaluation import intervals, shapes_judge  # noqa: E402
from jaxgen.evaluation.intervals import format_result  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402
from jaxgen.training.images import make_grid  # noqa: E402

THETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def reading(image) -> str:
    """The judge's reading of an image: its objects' size, colour and shape, largest first."""
    objs = shapes_judge.detect_objects(image[None])[0]
    return " + ".join(f"{o['size']} {o['colour']} {o['shape']}" for o in objs) or "(nothing)"


def save(images, path: Path, ncols: int) -> None:
    grid = Image.fromarray(make_grid(np.asarray(images), ncols=ncols))
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(path)


def variations(model, images, truths, k: int) -> dict[str, float]:
    pipe, state = model.pipeline, model.state
    out = pipe.variations(state, images, jax.random.key(1), num=k)  # [N, k, S, S, 3]
    flat = out.reshape(-1, *out.shape[2:])
    found = shapes_judge.judge_outcomes(flat, [t for t in truths for _ in range(k)])
    results = {}
    for name in ("colour", "shape", "size", "count"):
        results.update(intervals.proportion(f"variation/{name}", found[name]))
    diff = np.abs(out.astype(np.float64) - images[:, None].astype(np.float64)) / 255.0
    results.update(intervals.mean("variation/pixel_distance", diff.mean(axis=(1, 2, 3, 4))))
    return results, out


def text_diffs(model, images, truths, out_dir: Path) -> dict[str, float]:
    pipe, state = model.pipeline, model.state
    rows, results = [], {}
    src_colour, tgt_colour, kept_shape = ([] for _ in range(3))
    for i, (image, truth) in enumerate(zip(images, truths, strict=True)):
        obj = truth["objects"][0]
        target = shapes.COLOUR_NAMES[(shapes.COLOUR_NAMES.index(obj["colour"]) + 3) % 6]
        row = pipe.text_diff(
            state,
            image,
            f"a {obj['colour']} {obj['shape']}",
            f"a {target} {obj['shape']}",
            jax.random.key(2),
            thetas=THETAS,
        )
        rows.append(row)
        seen = [shapes_judge.detect_objects(x[None])[0] for x in row]
        src_colour.append([any(o["colour"] == obj["colour"] for o in s) for s in seen])
        tgt_colour.append([any(o["colour"] == target for o in s) for s in seen])
        kept_shape.append([any(o["shape"] == obj["shape"] for o in s) for s in seen])
        if i < 6:
            print(f"text diff {obj['colour']} -> {target} {obj['shape']}: ", end="")
            print(" | ".join(f"{t}: {reading(x)}" for t, x in zip(THETAS, row, strict=True)))
    for j, theta in enumerate(THETAS):
        for name, values in (
            ("source_colour", src_colour),
            ("target_colour", tgt_colour),
            ("shape_kept", kept_shape),
        ):
            results.update(
                intervals.proportion(f"text_diff/{theta}/{name}", [v[j] for v in values])
            )
    save(np.concatenate(rows[:6]), out_dir / "text_diffs.png", len(THETAS))
    return results


def interpolations(model, images, out_dir: Path, pairs: int = 4, steps: int = 6) -> None:
    pipe, state = model.pipeline, model.state
    rows = []
    for p in range(min(pairs, len(images) // 2)):
        a, b = images[2 * p], images[2 * p + 1]
        row = pipe.interpolate(state, a, b, jax.random.key(3 + p), steps=steps)
        rows.append(np.concatenate([a[None], row, b[None]]))
        print(f"interpolation {p}: " + " | ".join(reading(x) for x in row))
    save(np.concatenate(rows), out_dir / "interpolations.png", steps + 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--num", type=int, default=128, help="source images")
    parser.add_argument("--k", type=int, default=4, help="variations per image")
    parser.add_argument("--split", default="test", choices=("val", "test", "heldout"))
    parser.add_argument("--out", type=Path, help="where the grids go")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    try:
        model = api.load(args.workdir, parse_overrides(args.set))
    except (NoCheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if model.config.pipeline != "unclip" or model.config.data.name != "shapes":
        raise SystemExit(f"{args.workdir} holds no unCLIP run on shapes.")
    out_dir = args.out or args.workdir / "samples" / "edits"
    out_dir.mkdir(parents=True, exist_ok=True)
    captions, truths, images = model.pipeline.judge.prompts(args.split, args.num, seed=0)
    results, var = variations(model, images, truths, args.k)
    save(np.concatenate([images[:6, None], var[:6]], axis=1).reshape(-1, *images.shape[1:]),
         out_dir / "variations.png", args.k + 1)  # fmt: skip
    single = [i for i, t in enumerate(truths) if len(t["objects"]) == 1]
    results.update(text_diffs(model, images[single], [truths[i] for i in single], out_dir))
    interpolations(model, images, out_dir)
    print(f"\n{args.workdir}: {args.num} {args.split} images, {args.k} variations each; "
          f"{len(single)} single-object images for text diffs; grids in {out_dir}\n")  # fmt: skip
    print("| variations | colour | shape | size | count | pixel distance |")
    print("|---|---:|---:|---:|---:|---:|")
    keys = ("colour", "shape", "size", "count", "pixel_distance")
    cells = [format_result(results, f"variation/{k}") for k in keys]
    print("| judge vs source | " + " | ".join(cells) + " |")
    print("\n| text diff theta | source colour | target colour | shape kept |")
    print("|---:|---:|---:|---:|")
    for theta in THETAS:
        cells = [
            format_result(results, f"text_diff/{theta}/{k}")
            for k in ("source_colour", "target_colour", "shape_kept")
        ]
        print(f"| {theta} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
