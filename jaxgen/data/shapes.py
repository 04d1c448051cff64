"""`shapes`: an embedded, procedural dataset of captioned scenes with full ground truth.

Each example is a black canvas with one or two objects drawn with hard edges (no anti-aliasing)
in one of six exact colours, one of four shapes and one of two sizes; two-object scenes have a
spatial relation that is unambiguous in pixels. The caption always names the colour, shape and
size of every object (and the relation), so the ground truth is fully specified by the caption,
which is what lets `jaxgen.evaluation.shapes_judge` score generated images against prompts.

Examples are generated on demand and are deterministic per (seed, split, index): the random
numbers of example i are a hash of that triple, so nothing is stored or downloaded and any
example costs the same (~0.1 ms at 32x32, caption and tokens included). Each split is its own
random stream: "train"; "val" for tuning and checks during training; "test" for the numbers a
run reports. The "heldout_val" and "heldout" splits contain colour-shape pairs
(`HELDOUT_PAIRS`) that never appear in "train", "val" or "test", to measure compositional
generalisation ("heldout_val" to tune on, "heldout" to report).

Ground truth of one example (`ShapesSource.truth(i)`):

    {"caption": "a small blue square to the left of a big red circle",
     "objects": [{"colour": "blue", "shape": "square", "size": "small", "box": (x0, y0, x1, y1)},
                 {"colour": "red", "shape": "circle", "size": "large", "box": (...)}],
     "relation": "left of"}          # objects[0] <relation> objects[1]; None for one object

Boxes are in pixels, half-open: the object covers columns x0..x1-1 and rows y0..y1-1, and its
mask touches all four sides of the box.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import re
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from jaxgen.data import tokenizer

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
_COLOUR_ARRAYS = {k: np.array(v, np.uint8) for k, v in COLOURS.items()}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# One pair per colour-shape "row" of a Latin-square-like pattern, so that every held-out colour
# and every held-out shape still appears in training with other partners.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "diamond"),
    ("blue", "circle"),
    ("yellow", "square"),
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)

# Split name -> RNG stream id. Streams 1 and 2 were "test" and "heldout" until settings had
# been chosen by their scores; they became the splits to tune on, and the splits that report
# drew new streams no setting has been chosen on.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "heldout_val": 2, "test": 3, "heldout": 4}
HELDOUT_SPLITS = ("heldout_val", "heldout")
DEFAULT_LENGTHS: dict[str, int] = {"train": 100_000, **dict.fromkeys(list(SPLITS)[1:], 2_000)}

_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_REL_WORDS = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
# Relation phrased from the second object's point of view: "a {b} with a {a} to its left".
_REL_ITS_WORDS = {
    "left of": ("to its left", "on its left"),
    "right of": ("to its right", "on its right"),
    "above": ("above it",),
    "below": ("below it", "under it"),
}
_SINGLE_TEMPLATES = (
    "a {a}",
    "one {a}",
    "there is a {a}",
    "a {a} on a black background",
    "an image of a {a}",
    "a picture of a single {a}",
    "a lone {a}",
)
_PAIR_TEMPLATES = (
    "a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
    "a {a} is {rel} a {b}",
    "a {a} placed {rel} a {b}",
    "a {b} with a {a} {rel_its}",
)


def object_sizes(image_size: int) -> dict[str, int]:
    """Side length in pixels of a small and a large object at this image size.

    Chosen so that at 32x32 the four shapes are clearly distinguishable even when small (9 px)
    and two large objects (14 px) fit side by side with the gap `object_gap`.

    Args:
      image_size: canvas side S (>= 16).

    Returns:
      {"small": int, "large": int}.
    """
    if image_size < 16:
        raise ValueError(f"shapes needs image_size >= 16, got {image_size}")
    return {"small": max(5, round(0.28 * image_size)), "large": max(7, round(0.44 * image_size))}


def object_gap(image_size: int) -> int:
    """Minimum empty pixels between the two boxes along the relation's axis."""
    return max(2, round(image_size / 16))


@functools.lru_cache(maxsize=1024)
def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Hard-edged mask of a shape filling an height x width box.

    Pixel centres are tested against the ideal shape in box-normalised coordinates; the masks
    touch all four sides of the box. The triangle points up.

    Args:
      shape: one of SHAPES.
      height: box height in pixels.
      width: box width in pixels.

    Returns:
      bool array [height, width] (read-only: it is cached and shared).
    """
    v = ((np.arange(height) + 0.5) / height)[:, None]
    u = ((np.arange(width) + 0.5) / width)[None, :]
    tol = 1e-6  # boundary pixels sit exactly on the edge at even sizes; include them
    if shape == "square":
        mask = np.ones((height, width), bool)
    elif shape == "circle":
        mask = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25 + tol
    elif shape == "diamond":
        mask = np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5 + tol
    elif shape == "triangle":
        # Half-width grows linearly from the apex row to the full base on the last row; using the
        # bottom edge of each row (i + 1) keeps the apex one or two pixels wide instead of empty.
        half = 0.5 * ((np.arange(height) + 1.0) / height)[:, None]
        mask = np.abs(u - 0.5) <= half + tol
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    mask = np.broadcast_to(mask, (height, width)).copy()
    mask.flags.writeable = False
    return mask


def render_scene(objects: Iterable[dict], image_size: int) -> np.ndarray:
    """Draws objects on a black canvas with exact colours and hard edges.

    Args:
      objects: dicts with "colour", "shape" and "box" (x0, y0, x1, y1), half-open pixels.
        Boxes may extend past the canvas; the part outside is clipped.
      image_size: canvas side S.

    Returns:
      uint8 image [S, S, 3].
    """
    canvas = np.zeros((image_size, image_size, 3), np.uint8)
    for obj in objects:
        x0, y0, x1, y1 = (int(c) for c in obj["box"])
        mask = shape_mask(obj["shape"], y1 - y0, x1 - x0)
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, image_size), min(y1, image_size)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        sub = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
        region = canvas[cy0:cy1, cx0:cx1]
        # np.where over the box is ~5x faster than boolean-mask assignment at these sizes.
        region[...] = np.where(sub, _COLOUR_ARRAYS[obj["colour"]], region)
    return canvas


class _Draws:
    """The random numbers of one example: a BLAKE2b hash of (seed, split, index).

    A counter-based scheme (as in JAX's PRNG) makes example i an O(1) pure function of its
    key; hashing costs ~3 us, where seeding a numpy Generator costs ~20-50 us, which would
    dominate the time to produce an example.
    """

    def __init__(self, seed: int, split_id: int, index: int):
        digest = hashlib.blake2b(
            struct.pack("<qqq", seed, split_id, index), digest_size=64, person=b"jaxgen.shapes"
        ).digest()
        self._u = [v * 2.0**-32 for v in struct.unpack("<16I", digest)]
        self._next = 0

    def random(self) -> float:
        """Uniform float in [0, 1)."""
        u = self._u[self._next]  # 16 draws cover the at most 14 an example needs
        self._next += 1
        return u

    def integers(self, low: int, high: int | None = None) -> int:
        """Uniform int in [low, high), or in [0, low) when high is None."""
        if high is None:
            low, high = 0, low
        return low + min(int(self.random() * (high - low)), high - low - 1)


def _object_phrase(obj: dict, rng: _Draws) -> str:
    words = _SIZE_WORDS[obj["size"]]
    return f"{words[rng.integers(len(words))]} {obj['colour']} {obj['shape']}"


def _caption(objects: list[dict], relation: str | None, rng: _Draws, max_bytes: int) -> str:
    """A caption from a random template; always names every colour, shape and size."""
    a = _object_phrase(objects[0], rng)
    if relation is None:
        candidates = [t.format(a=a) for t in _SINGLE_TEMPLATES]
    else:
        b = _object_phrase(objects[1], rng)
        candidates = [
            t.format(a=a, b=b, rel=rel, rel_its=rel_its)
            for t in _PAIR_TEMPLATES
            for rel in _REL_WORDS[relation]
            for rel_its in _REL_ITS_WORDS[relation]
        ]
        # A template without {rel_its} repeats once per its-phrase; dedupe keeps choices uniform.
        candidates = list(dict.fromkeys(candidates))
    # Phrasings that do not fit the token budget are skipped rather than truncated: a truncated
    # caption would no longer specify the ground truth. If none fits, the shortest is returned
    # and tokenizer.encode reports the overflow.
    fitting = [c for c in candidates if len(c.encode("utf-8")) <= max_bytes] or [
        min(candidates, key=len)
    ]
    return fitting[rng.integers(len(fitting))]


def _place_pair(
    sizes_px: tuple[int, int], relation: str, image_size: int, rng: _Draws
) -> list[tuple]:
    """Boxes for objects[0] <relation> objects[1], disjoint along the relation's axis.

    Along the axis the two boxes are separated by at least `object_gap` pixels; across it the
    centre offset is at most half the centre offset along it, so the relation is unambiguous.
    """
    s = image_size
    gap = object_gap(s)
    # The object with the lower coordinate along the axis comes first ("a" in this function).
    subject_first = relation in ("left of", "above")
    sa, sb = sizes_px if subject_first else sizes_px[::-1]
    slack = s - sa - sb - gap
    assert slack >= 0, "object_sizes must let two large objects fit"
    # Two cuts split the slack into before / between / after the boxes.
    u0, u1 = sorted((rng.integers(slack + 1), rng.integers(slack + 1)))
    a_ax, b_ax = u0, u1 + sa + gap
    d_ax = (b_ax + sb / 2) - (a_ax + sa / 2)
    a_perp = rng.integers(s - sa + 1)
    ca = a_perp + sa / 2
    lo = max(0, math.ceil(ca - 0.5 * d_ax - sb / 2))
    hi = min(s - sb, math.floor(ca + 0.5 * d_ax - sb / 2))
    b_perp = rng.integers(lo, hi + 1) if lo <= hi else min(max(round(ca - sb / 2), 0), s - sb)
    horizontal = relation in ("left of", "right of")

    def box(ax, perp, size):
        return (
            (ax, perp, ax + size, perp + size) if horizontal else (perp, ax, perp + size, ax + size)
        )

    boxes = [box(a_ax, a_perp, sa), box(b_ax, b_perp, sb)]
    return boxes if subject_first else boxes[::-1]


def sample_truth(
    split: str, index: int, seed: int = 0, image_size: int = 32, max_text_len: int = 64
) -> dict:
    """Samples the ground truth of one example (no rendering).

    Args:
      split: one of SPLITS.
      index: example index (any non-negative int).
      seed: dataset seed.
      image_size: canvas side S (boxes are in its pixels).
      max_text_len: token budget; the caption fits in it with BOS/EOS.

    Returns:
      {"caption": str, "objects": list of {"colour", "shape", "size", "box"},
       "relation": str | None}; see the module docstring.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {tuple(SPLITS)}")
    rng = _Draws(seed, SPLITS[split], index)
    num_objects = 1 + (rng.random() < 0.5)
    heldout = split in HELDOUT_SPLITS
    pool = ALL_PAIRS if heldout else TRAIN_PAIRS
    if heldout:
        # Every heldout example contains at least one held-out pair, in a random slot.
        first = HELDOUT_PAIRS[rng.integers(len(HELDOUT_PAIRS))]
    else:
        first = pool[rng.integers(len(pool))]
    pairs = [first]
    if num_objects == 2:
        others = [p for p in pool if p[0] != first[0]]
        pairs.append(others[rng.integers(len(others))])
        if rng.random() < 0.5:
            pairs.reverse()
    sizes = [SIZES[rng.integers(2)] for _ in pairs]
    px = object_sizes(image_size)
    side = [px[z] for z in sizes]
    if num_objects == 1:
        x0, y0 = rng.integers(image_size - side[0] + 1), rng.integers(image_size - side[0] + 1)
        boxes = [(x0, y0, x0 + side[0], y0 + side[0])]
        relation = None
    else:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        boxes = _place_pair((side[0], side[1]), relation, image_size, rng)
    objects = [
        {"colour": c, "shape": sh, "size": z, "box": tuple(int(v) for v in b)}
        for (c, sh), z, b in zip(pairs, sizes, boxes, strict=True)
    ]
    caption = _caption(objects, relation, rng, max_text_len - 2)
    return {"caption": caption, "objects": objects, "relation": relation}


class ShapesSource:
    """Random-access source of `shapes` examples (grain-compatible).

    Args:
      split: "train"; "val" or "test" (the training distribution, other RNG streams);
        "heldout_val" or "heldout" (every example contains a pair from HELDOUT_PAIRS).
      image_size: canvas side S (>= 16; 16, 32 and 64 are tested).
      seed: dataset seed; example i is a pure function of (seed, split, i).
      num_examples: length; defaults to DEFAULT_LENGTHS[split].
      max_text_len: token length L of the caption tokens.
      parse_labels: also return ``"parse"``, the caption's content as class labels
        (``parse_labels``), to supervise a text encoder.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        seed: int = 0,
        num_examples: int | None = None,
        max_text_len: int = 64,
        parse_labels: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {tuple(SPLITS)}")
        object_sizes(image_size)  # validates image_size early
        self.split = split
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.num_examples = DEFAULT_LENGTHS[split] if num_examples is None else int(num_examples)
        self.max_text_len = int(max_text_len)
        self.parse_labels = bool(parse_labels)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (
            f"ShapesSource(split={self.split!r}, image_size={self.image_size}, seed={self.seed}, "
            f"num_examples={self.num_examples}, max_text_len={self.max_text_len}, "
            f"parse_labels={self.parse_labels})"
        )

    def _index(self, index) -> int:
        i = operator.index(index)  # ints and numpy ints; a float index is a bug upstream
        if i < 0:
            i += self.num_examples
        if not 0 <= i < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return i

    def truth(self, index: int) -> dict:
        """Ground truth of example `index` without rendering (see `sample_truth`)."""
        return sample_truth(
            self.split, self._index(index), self.seed, self.image_size, self.max_text_len
        )

    def example(self, index: int) -> dict:
        """Ground truth plus the rendered image and tokens.

        Returns:
          `truth(index)` with "image" uint8 [S, S, 3] and "tokens" int32 [max_text_len] added.
        """
        ex = self.truth(index)
        ex["image"] = render_scene(ex["objects"], self.image_size)
        ex["tokens"] = tokenizer.encode(ex["caption"], self.max_text_len)
        return ex

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Returns {"image": uint8 [S, S, 3], "tokens": int32 [max_text_len]}, and "parse" int32
        [len(PARSE_FIELDS)] with ``parse_labels``."""
        ex = self.example(index)
        out = {"image": ex["image"], "tokens": ex["tokens"]}
        if self.parse_labels:
            out["parse"] = parse_labels(ex)
        return out

    def captions(self, indices: Iterable[int]) -> list[str]:
        """Captions of the given examples."""
        return [self.truth(i)["caption"] for i in indices]


def make_prompts(
    split: str = "test", n: int = 64, seed: int = 0, image_size: int = 32, max_text_len: int = 64
) -> tuple[list[str], list[dict]]:
    """Evaluation prompts with their ground truths: the first n examples of a split.

    Args:
      split: one of SPLITS.
      n: number of prompts.
      seed: dataset seed.
      image_size: image size the ground-truth boxes refer to.
      max_text_len: token budget of the captions.

    Returns:
      (captions, truths): n strings and n ground-truth dicts (for `shapes_judge.judge_batch`).
    """
    source = ShapesSource(split, image_size, seed, num_examples=n, max_text_len=max_text_len)
    truths = [source.truth(i) for i in range(n)]
    return [t["caption"] for t in truths], truths


def stack(source: ShapesSource, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Batches examples: {"image": uint8 [N, S, S, 3], "tokens": int32 [N, L]}."""
    items = [source[i] for i in indices]
    return {k: np.stack([it[k] for it in items]) for k in ("image", "tokens")}


_MIRROR = {"right of": "left of", "below": "above"}


def content_key(truth: dict) -> tuple:
    """What a caption pins down about a scene, independent of wording and exact positions.

    Two scenes with the same key satisfy the same captions: the objects' (colour, shape, size),
    and for two objects the relation, with "b right of a" and "a left of b" (and "below" /
    "above") identified. Used to count a retrieved item as a hit when its content equals the
    query's even if it is another example.
    """
    objects = [(o["colour"], o["shape"], o["size"]) for o in truth["objects"]]
    relation = truth.get("relation")
    if relation in _MIRROR:
        objects, relation = objects[::-1], _MIRROR[relation]
    return (*objects, relation)


# The caption's content as class labels, one per field: the objects in spatial order (for two
# objects, "a" is the left or upper one; see ``content_key``), then the relation's axis. "b"
# fields have one more class, "none", for one-object scenes; the axis is "none", "horizontal" or
# "vertical".
PARSE_FIELDS: tuple[tuple[str, int], ...] = (
    ("colour_a", len(COLOUR_NAMES)),
    ("shape_a", len(SHAPES)),
    ("size_a", len(SIZES)),
    ("colour_b", len(COLOUR_NAMES) + 1),
    ("shape_b", len(SHAPES) + 1),
    ("size_b", len(SIZES) + 1),
    ("axis", 3),
)
PARSE_CLASSES: tuple[int, ...] = tuple(k for _, k in PARSE_FIELDS)  # the class counts alone
_AXES = (None, "left of", "above")


def parse_labels(truth: dict) -> np.ndarray:
    """``int32 [len(PARSE_FIELDS)]``: the class of each ``PARSE_FIELDS`` entry for a scene.

    The objects come in ``content_key``'s order, so "a red circle right of a blue square" and
    "a blue square left of a red circle" get the same labels (blue square first, horizontal):
    to predict them from the caption a text encoder must read which object the relation puts
    where, and which colour goes with which shape.
    """
    key = content_key(truth)
    objects, relation = key[:-1], key[-1]
    values = (COLOUR_NAMES, SHAPES, SIZES)
    labels = [v.index(x) for v, x in zip(values, objects[0], strict=True)]
    if len(objects) == 2:
        labels += [v.index(x) for v, x in zip(values, objects[1], strict=True)]
    else:
        labels += [len(v) for v in values]  # "none"
    labels.append(_AXES.index(relation))
    return np.asarray(labels, np.int32)


def describe(objects: Sequence[dict], relation: str | None) -> str:
    """One fixed phrasing of a scene: "a large red circle left of a small blue square"."""
    phrases = [f"{o['size']} {o['colour']} {o['shape']}" for o in objects]
    if relation is None:
        return f"a {phrases[0]}"
    return f"a {phrases[0]} {relation} a {phrases[1]}"


def _one_attribute_changes(objects: Sequence[dict]) -> dict[str, list[list[dict]]]:
    """Per attribute ("colour", "shape", "size"), every copy of ``objects`` with that attribute
    of one object changed, object by object, values in their tuple's order; a colour is never
    changed to another object's colour (the dataset never draws two objects of one colour)."""
    values = {"colour": COLOUR_NAMES, "shape": SHAPES, "size": SIZES}
    out = {}
    for attr, options in values.items():
        out[attr] = []
        for k, obj in enumerate(objects):
            taken = {o["colour"] for j, o in enumerate(objects) if j != k}
            for value in options:
                if value == obj[attr] or (attr == "colour" and value in taken):
                    continue
                changed = [dict(o) for o in objects]
                changed[k][attr] = value
                out[attr].append(changed)
    return out


def attribute_variants(truth: dict) -> dict[str, list[str]]:
    """Captions that differ from the truth in one attribute alone, the truth's own first.

    For each attribute ("colour", "shape", "size", and "relation" for two objects) the list holds
    ``describe(truth)`` followed by every caption that changes that attribute of one object (or
    the relation) and nothing else, all in the same phrasing, so that a zero-shot classifier
    picks among them on the attribute only. In two-object scenes a colour is never swapped to the
    other object's colour (the dataset never draws two objects of one colour).
    """
    objects = [dict(o) for o in truth["objects"]]
    relation = truth.get("relation")
    out = {
        attr: [describe(objects, relation)] + [describe(c, relation) for c in variants]
        for attr, variants in _one_attribute_changes(objects).items()
    }
    if relation is not None:
        out["relation"] = [describe(objects, relation)] + [
            describe(objects, r) for r in RELATIONS if r != relation
        ]
    return out


_PHRASE = re.compile(
    r"\b(?:(?P<size>{sizes})\s+)?(?P<colour>{colours})\s+(?P<shape>{shapes})\b".format(
        sizes="|".join(w for words in _SIZE_WORDS.values() for w in words),
        colours="|".join(COLOUR_NAMES),
        shapes="|".join(SHAPES),
    )
)
_SIZE_OF_WORD = {w: size for size, words in _SIZE_WORDS.items() for w in words}


def _find_relation(text: str, phrases: dict[str, tuple[str, ...]]) -> str | None:
    """The one relation some phrasing of which occurs in ``text`` ("to the left of" holds
    "left of": both are "left of"); None when none or two different ones do."""
    found = {rel for rel, words in phrases.items() for w in words if re.search(rf"\b{w}\b", text)}
    return found.pop() if len(found) == 1 else None


def parse_caption(text: str) -> dict | None:
    """The ground truth a caption in the dataset's grammar pins down, or None.

    Reads the phrasings the dataset writes (``_SINGLE_TEMPLATES``, ``_PAIR_TEMPLATES``, any
    case, surrounding words ignored) and, for a user's prompt, object phrases without a size
    word ("a red circle": ``"size": None``). None when the text names no object, more than
    two, two of one colour (the dataset never draws that, and the judge matches objects by
    colour), or two objects without exactly one relation between them.

    Returns:
      ``{"caption", "objects": [{"colour", "shape", "size"}], "relation"}`` as in
      ``sample_truth`` without boxes: objects[0] <relation> objects[1].
    """
    if not isinstance(text, str):
        return None
    lowered = " ".join(text.lower().split())
    matches = list(_PHRASE.finditer(lowered))
    objects = [
        {
            "colour": m["colour"],
            "shape": m["shape"],
            "size": _SIZE_OF_WORD[m["size"]] if m["size"] else None,
        }
        for m in matches
    ]
    if len(objects) == 1:
        return {"caption": text, "objects": objects, "relation": None}
    if len(objects) != 2 or objects[0]["colour"] == objects[1]["colour"]:
        return None
    between = lowered[matches[0].end() : matches[1].start()]
    after = lowered[matches[1].end() :]
    if re.search(r"\bwith\b", between):
        # "a {b} with a {a} to its left": the subject is the second phrase.
        relation = _find_relation(after, _REL_ITS_WORDS)
        objects = objects[::-1]
    else:
        relation = _find_relation(between, _REL_WORDS)
        if any(_find_relation(after, words) for words in (_REL_WORDS, _REL_ITS_WORDS)):
            return None  # a second relation ("... and to the left of it"): not one scene
    if relation is None:
        return None
    return {"caption": text, "objects": objects, "relation": relation}
