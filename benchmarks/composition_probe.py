"""Which tower of a CLIP run keeps colour and shape apart: linear probes on its embeddings.

    python benchmarks/composition_probe.py runs/clip

For one-object ``shapes`` scenes, fits a linear probe (``clip_metrics.probe_accuracy``) for the
object's shape and one for its colour on the image embeddings of ``--num`` training scenes, and
the same on their caption embeddings, then scores each probe on ``--num_eval`` scenes of the
``test`` split (the training pairs) and of the ``heldout`` split (colour-shape pairs never seen
in training). A tower whose embedding has a shape direction shared by all colours transfers
its shape probe to the held-out pairs; one that learned each pair as a unit cannot (below the
0.25 of a guess when the probe uses colour to rule out the shapes a colour never had).

Then binding: over the two-object ``test`` scenes (of the first ``--num_eval``) whose objects
have two different shapes, the fraction whose image scores its caption above the same caption
with the two shapes swapped ("a red circle left of a blue square" against "a red square left of
a blue circle"). The words are the same, so a bag of words scores 0.5. The workdir is not
written to.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from jaxgen import api  # noqa: E402
from jaxgen.data import shapes  # noqa: E402
from jaxgen.evaluation.clip_metrics import probe_accuracy  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402


def one_object_scenes(split: str, num: int, image_size: int, max_text_len: int) -> dict:
    """The first ``num`` one-object scenes of a split: images, captions, shapes and colours."""
    source = shapes.ShapesSource(split, image_size, max_text_len=max_text_len)
    out = {"image": [], "caption": [], "shape": [], "colour": []}
    for i in range(len(source)):
        truth = source.truth(i)
        if len(truth["objects"]) != 1:
            continue
        out["image"].append(shapes.render_scene(truth["objects"], image_size))
        out["caption"].append(truth["caption"])
        out["shape"].append(truth["objects"][0]["shape"])
        out["colour"].append(truth["objects"][0]["colour"])
        if len(out["caption"]) == num:
            break
    out["image"] = np.stack(out["image"])
    return out


def binding_accuracy(model, num: int, image_size: int) -> tuple[float, int]:
    """Zero-shot: the true caption against the one with the two objects' shapes swapped. A tie
    counts as half, so a text tower blind to word order (a bag of words) scores exactly 0.5."""
    source = shapes.ShapesSource("test", image_size, num_examples=num)
    images, true, swapped = [], [], []
    for i in range(len(source)):
        truth = source.truth(i)
        objects = [dict(o) for o in truth["objects"]]
        if len(objects) != 2 or objects[0]["shape"] == objects[1]["shape"]:
            continue
        images.append(shapes.render_scene(objects, image_size))
        true.append(shapes.describe(objects, truth["relation"]))
        objects[0]["shape"], objects[1]["shape"] = objects[1]["shape"], objects[0]["shape"]
        swapped.append(shapes.describe(objects, truth["relation"]))
    if not images:
        return float("nan"), 0
    image = model.embed_images(np.stack(images))
    right = (image * model.embed_texts(true)).sum(-1)
    wrong = (image * model.embed_texts(swapped)).sum(-1)
    return float(np.mean((right > wrong) + 0.5 * (right == wrong))), len(images)


def embed(model, scenes: dict) -> dict[str, np.ndarray]:
    return {
        "image": model.embed_images(scenes["image"]),
        "text": model.embed_texts(scenes["caption"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--num", type=int, default=2000, help="training scenes for the probes")
    parser.add_argument("--num_eval", type=int, default=500, help="scenes per evaluated split")
    args = parser.parse_args()
    try:
        model = api.load(args.workdir)
    except (NoCheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if model.config.pipeline != "clip" or model.config.data.name != "shapes":
        raise SystemExit(f"error: {args.workdir} is not a CLIP run on shapes.")
    size, length = int(model.config.data.image_size), int(model.config.data.max_text_len)
    splits = {"train": args.num, "test": args.num_eval, "heldout": args.num_eval}
    scenes = {s: one_object_scenes(s, n, size, length) for s, n in splits.items()}
    emb = {s: embed(model, scenes[s]) for s in splits}

    print(f"{args.workdir} at step {model.step}: linear probes fit on {args.num} training scenes")
    print("\n| tower | probe | test | heldout |\n|---|---|---:|---:|")
    for tower in ("image", "text"):
        for attribute in ("shape", "colour"):
            train = (emb["train"][tower], scenes["train"][attribute])
            cells = [
                probe_accuracy(*train, emb[s][tower], scenes[s][attribute])
                for s in ("test", "heldout")
            ]
            print(f"| {tower} | {attribute} | {cells[0]:.3f} | {cells[1]:.3f} |")
    accuracy, count = binding_accuracy(model, args.num_eval, size)
    print(
        f"\nbinding: {accuracy:.3f} of {count} two-object test scenes (shapes swapped; 0.5 = words)"
    )


if __name__ == "__main__":
    main()
