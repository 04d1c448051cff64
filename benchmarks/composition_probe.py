"""Which tower of a CLIP run keeps colour and shape apart: linear probes on its embeddings.

    python benchmarks/composition_probe.py runs/clip

For one-object ``shapes`` scenes, fits a linear probe (``clip_metrics.probe_accuracy``) for the
object's shape and one for its colour on the image embeddings of ``--num`` training scenes, and
the same on their caption embeddings, then scores each probe on ``--num_eval`` scenes of the
``test`` split (the training pairs) and of the ``heldout`` split (colour-shape pairs never seen
in training). A tower whose embedding has a shape direction shared by all colours transfers
its shape probe to the held-out pairs; one that learned each pair as a unit cannot (below the
0.25 of a guess when the probe uses colour to rule out the shapes a colour never had). The
workdir is not written to.
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


if __name__ == "__main__":
    main()
