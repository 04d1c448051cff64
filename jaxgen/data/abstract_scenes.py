"""Readers for the data of Text2Scene's abstract-scene experiments, for users who have it:
Zitnick and Parikh's Abstract Scenes dataset (v1.1) and pretrained word vectors in GloVe's text
format. Nothing here downloads; the embedded `scenes` dataset is the offline default.

The dataset's published layout (``AbstractScenes_v1.1/``):

- ``Scenes_10020.txt``: a first line with the number of scenes, then per scene a line
  ``<class> <number of objects>`` and one line per object,
  ``<png name> <type index> <object index> <x> <y> <z> <flip>`` (x, y in pixels of the
  500 x 400 scene, z the depth 0-2 that also sets the scale, flip 0/1). The scenes of one
  class are consecutive; the i-th of class c is scene ``10 * c + i``.
- ``SimpleSentences/SimpleSentences{1,2}_10020.txt``: lines
  ``<scene index> <sentence index> <sentence>``, two groups of descriptions per scene.

Objects map to categories as Text2Scene's code maps them: every clip-art PNG is its own category
except the boy and the girl (``hb0_k``, ``hb1_k``), each one category whose PNG index k encodes
the pose (k // 5, 7 poses) and the expression (k % 5, 5 expressions). Scenes 8000-8999 are the
test split; of the rest, the first 8,500 train and the remainder validation, as in that code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCENE_FILE = "Scenes_10020.txt"
SENTENCE_FILES = (
    "SimpleSentences/SimpleSentences1_10020.txt",
    "SimpleSentences/SimpleSentences2_10020.txt",
)
WIDTH, HEIGHT = 500, 400
PEOPLE = {"hb0": "boy", "hb1": "girl"}
NUM_POSES, NUM_EXPRESSIONS, NUM_DEPTHS = 7, 5, 3
TEST_SCENES = range(8000, 9000)
NUM_TRAIN = 8500


class AbstractScenesError(ValueError):
    """A file that is not in the published layout; the message names the file and line."""


def category(png: str) -> tuple[str, int | None, int | None]:
    """``(category, pose, expression)`` of a clip-art PNG name (with or without ``.png``)."""
    name = png.removesuffix(".png")
    prefix, _, index = name.partition("_")
    if prefix in PEOPLE and index.isdigit():
        k = int(index)
        return PEOPLE[prefix], k // NUM_EXPRESSIONS, k % NUM_EXPRESSIONS
    return name, None, None


def read_scene_file(path: str | Path) -> dict[int, list[dict]]:
    """Scene index -> its objects in file order: dicts with "png", "name", "pose",
    "expression", "x", "y", "z", "flip"."""
    path = Path(path)
    lines = [ln.split() for ln in path.read_text().splitlines()]
    scenes, counts, i = {}, {}, 1  # the first line is the number of scenes
    while i < len(lines):
        head = lines[i]
        if not head:
            i += 1
            continue
        if len(head) != 2 or not all(v.isdigit() for v in head):
            raise AbstractScenesError(
                f"{path}:{i + 1}: expected '<class> <number of objects>', got {' '.join(head)!r}"
            )
        cls, n = int(head[0]), int(head[1])
        index = 10 * cls + counts.get(cls, 0)
        counts[cls] = counts.get(cls, 0) + 1
        objects = []
        for j in range(i + 1, i + 1 + n):
            fields = lines[j] if j < len(lines) else []
            if len(fields) != 7:
                raise AbstractScenesError(
                    f"{path}:{j + 1}: expected '<png> <type> <index> <x> <y> <z> <flip>', got "
                    f"{' '.join(fields)!r}"
                )
            name, pose, expression = category(fields[0])
            x, y, z, flip = (int(v) for v in fields[3:])
            objects.append(
                dict(
                    png=fields[0].removesuffix(".png"),
                    name=name,
                    pose=pose,
                    expression=expression,
                    x=x,
                    y=y,
                    z=z,
                    flip=flip,
                )
            )
        scenes[index] = objects
        i += 1 + n
    return scenes


def read_sentence_file(path: str | Path) -> dict[int, dict[int, str]]:
    """Scene index -> sentence index -> sentence."""
    path = Path(path)
    out: dict[int, dict[int, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=2)
        if len(fields) < 3 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise AbstractScenesError(
                f"{path}:{number}: expected '<scene> <sentence index> <sentence>', got {line!r}"
            )
        out.setdefault(int(fields[0]), {})[int(fields[1])] = fields[2].strip()
    return out


def drawing_order(objects: list[dict]) -> list[dict]:
    """Text2Scene's output order: sky objects (PNG names starting with "s_") first, then the
    farther (larger z) first, then file order."""
    keyed = sorted(
        enumerate(objects), key=lambda io: (not io[1]["png"].startswith("s_"), -io[1]["z"], io[0])
    )
    return [o for _, o in keyed]


def split_of(index: int) -> str:
    if index in TEST_SCENES:
        return "test"
    rest = index if index < TEST_SCENES.start else index - len(TEST_SCENES)
    return "train" if rest < NUM_TRAIN else "val"


def load(root: str | Path, split: str, max_sentences: int = 3) -> list[dict]:
    """The examples of a split: one per scene and sentence group, ``{"scene": index,
    "caption": the group's first ``max_sentences`` sentences joined, "objects": in
    `drawing_order`}``. Scenes without objects or sentences are left out."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; valid: 'train', 'val', 'test'")
    root = Path(root)
    if not (root / SCENE_FILE).is_file():
        raise FileNotFoundError(
            f"No {SCENE_FILE} in {root}: point to the unpacked AbstractScenes_v1.1 folder."
        )
    scenes = read_scene_file(root / SCENE_FILE)
    groups = [read_sentence_file(root / f) for f in SENTENCE_FILES if (root / f).is_file()]
    if not groups:
        raise FileNotFoundError(f"No sentence files {SENTENCE_FILES} in {root}.")
    out = []
    for index in sorted(scenes):
        if split_of(index) != split or not scenes[index]:
            continue
        for group in groups:
            sentences = group.get(index)
            if not sentences:
                continue
            text = " ".join(sentences[k] for k in sorted(sentences)[:max_sentences])
            out.append(dict(scene=index, caption=text, objects=drawing_order(scenes[index])))
    return out


def vocabulary(examples: list[dict]) -> list[str]:
    """The categories of a set of examples, sorted (the model's object classes)."""
    return sorted({o["name"] for e in examples for o in e["objects"]})


def to_grid(x: int, y: int, grid: int = 28) -> tuple[int, int]:
    """The cell of pixel (x, y) on a ``grid`` x ``grid`` location grid over the scene (the
    paper's 28 x 28)."""
    gx = min(max(int(x * grid / WIDTH), 0), grid - 1)
    gy = min(max(int(y * grid / HEIGHT), 0), grid - 1)
    return gx, gy


def read_word_vectors(path: str | Path, vocab: list[str], seed: int = 0):
    """Pretrained word vectors in GloVe's text format (``word v1 ... vd`` per line) for a
    vocabulary.

    Returns:
      ``(vectors float32 [len(vocab), d], found bool [len(vocab)])``: each word's vector, and
      for words the file lacks a small random one (``found`` False). A padding entry
      ("<pad>") gets zeros.

    Raises:
      ValueError naming the line whose width differs from the first line's.
    """
    path = Path(path)
    index = {w: i for i, w in enumerate(vocab)}
    vectors, dim = {}, None
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split(" ")
            if len(fields) < 2:
                continue
            if dim is None:
                dim = len(fields) - 1
            if len(fields) - 1 != dim:
                raise ValueError(
                    f"{path}:{number}: {len(fields) - 1} values, but the first line has {dim}"
                )
            if fields[0] in index:
                vectors[fields[0]] = np.asarray(fields[1:], np.float32)
    if dim is None:
        raise ValueError(f"{path} holds no word vectors")
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 0.1, (len(vocab), dim)).astype(np.float32)
    found = np.zeros(len(vocab), bool)
    for word, vec in vectors.items():
        out[index[word]], found[index[word]] = vec, True
    if "<pad>" in index:
        out[index["<pad>"]] = 0.0
    return out, found
