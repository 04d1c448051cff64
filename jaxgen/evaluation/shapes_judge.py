"""A rule-based judge for `shapes` prompts: does a generated image show what the caption says?

The judge reads pixels only (no learned model, so its errors are inspectable):

1. Every pixel is classified as background or one of the six dataset colours: pixels whose
   brightest channel is below `dark_threshold` are background; the others are normalised by
   their brightest channel and each channel is called on/off at half of it, which maps hues to
   the nearest of red, green, blue, yellow, magenta, cyan (white-ish pixels count as background).
2. Connected components (8-connected) are found per colour and specks are dropped.
3. Each remaining component is an object: its shape is the dataset shape whose mask, drawn in
   the component's bounding box, has the highest IoU with it (the masks are exactly those the
   dataset renders); its size compares an equivalent side length with the midpoint between the
   dataset's small and large sides; its position is its centroid.

Images may be uint8 in [0, 255] or floating point in [-1, 1] (the range the models generate
in); any other dtype is an error. The judge is near perfect on real dataset images, also under
mild noise and blur (tests check it), so its scores on generated images are meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxgen.data import shapes

# Code of the on-channels (r + 2g + 4b) -> colour index in shapes.COLOUR_NAMES; -1 background.
_CODE_TO_COLOUR = np.full(8, -1, np.int8)
for _i, _rgb in enumerate(shapes.COLOURS.values()):
    _CODE_TO_COLOUR[(_rgb[0] > 0) + 2 * (_rgb[1] > 0) + 4 * (_rgb[2] > 0)] = _i
_COLOUR_INDEX = {name: i for i, name in enumerate(shapes.COLOUR_NAMES)}
# 8-connectivity within an image and none across the batch axis, so one label call per colour
# covers the whole batch.
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True

METRICS = ("colour", "shape", "size", "count", "relation", "all")
# Per colour: present, area, height, width, centroid x, centroid y, IoU with each shape.
_SLOT_FEATURES = 6 + len(shapes.SHAPES)
FEATURE_DIM = len(shapes.COLOUR_NAMES) * (1 + _SLOT_FEATURES) + 1


def to_unit_range(images) -> np.ndarray:
    """Converts images to float32 in [0, 1].

    Args:
      images: [..., 3], uint8 in [0, 255] or float in [-1, 1] (values outside are clipped).

    Returns:
      float32 array of the same shape in [0, 1].
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if np.issubdtype(images.dtype, np.floating):
        return np.clip((images.astype(np.float32) + 1.0) * 0.5, 0.0, 1.0)
    raise TypeError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")


def classify_pixels(images, dark_threshold: float = 0.4) -> np.ndarray:
    """Labels each pixel as background (-1) or a colour index into shapes.COLOUR_NAMES.

    Args:
      images: [N, S, S, 3] uint8 or float in [-1, 1].
      dark_threshold: pixels whose brightest channel (in [0, 1]) is below it are background.

    Returns:
      int8 array [N, S, S].
    """
    x = to_unit_range(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [N, S, S, 3], got shape {x.shape}")
    brightest = x.max(axis=-1, keepdims=True)
    on = x > 0.5 * brightest
    code = on[..., 0] + 2 * on[..., 1].astype(np.int8) + 4 * on[..., 2].astype(np.int8)
    labels = _CODE_TO_COLOUR[code]
    labels[brightest[..., 0] < dark_threshold] = -1
    return labels


def _min_object_area(image_size: int) -> float:
    # A third of the smallest object the dataset draws (a small diamond covers about half of its
    # box): anything below is a speck of noise, not an object.
    small = shapes.object_sizes(image_size)["small"]
    return max(3.0, small * small / 6.0)


def _describe(component: np.ndarray, y0: int, x0: int, colour: int, image_size: int) -> dict:
    """Geometry, shape and size of one component (bool [h, w], cropped to its bounding box)."""
    h, w = component.shape
    area = int(component.sum())
    ious = np.empty(len(shapes.SHAPES))
    for k, name in enumerate(shapes.SHAPES):
        template = shapes.shape_mask(name, h, w)
        inter = np.count_nonzero(template & component)
        ious[k] = inter / (area + np.count_nonzero(template) - inter)
    best = int(np.argmax(ious))
    fill = shapes.shape_mask(shapes.SHAPES[best], h, w).mean()
    # Averaging the box extent with the side implied by the area makes the size robust both to
    # a stray pixel stretching the box and to a blurred, thinned or thickened outline.
    side = 0.5 * (max(h, w) + np.sqrt(area / fill))
    px = shapes.object_sizes(image_size)
    ys, xs = np.nonzero(component)
    return {
        "colour": shapes.COLOUR_NAMES[colour],
        "shape": shapes.SHAPES[best],
        "size": "large" if side > 0.5 * (px["small"] + px["large"]) else "small",
        "area": area,
        "box": (x0, y0, x0 + w, y0 + h),
        "centroid": (x0 + xs.mean() + 0.5, y0 + ys.mean() + 0.5),
        "ious": ious,
    }


def detect_objects(images, dark_threshold: float = 0.4) -> list[list[dict]]:
    """Finds the objects in each image.

    Args:
      images: [N, S, S, 3] uint8 or float in [-1, 1].
      dark_threshold: see `classify_pixels`.

    Returns:
      N lists of objects, largest first, each a dict with "colour", "shape", "size", "area"
      (pixels), "box" (x0, y0, x1, y1) half-open, "centroid" (x, y) in pixels and "ious"
      (float [4], IoU with each of shapes.SHAPES).
    """
    labels = classify_pixels(images, dark_threshold)
    n, s = labels.shape[0], labels.shape[1]
    min_area = _min_object_area(s)
    found: list[list[dict]] = [[] for _ in range(n)]
    for colour in range(len(shapes.COLOUR_NAMES)):
        components, count = ndimage.label(labels == colour, structure=_STRUCTURE)
        if count == 0:
            continue
        areas = np.bincount(components.ravel(), minlength=count + 1)
        for k, sl in enumerate(ndimage.find_objects(components), start=1):
            if sl is None or areas[k] < min_area:
                continue
            crop = components[sl][0] == k
            found[sl[0].start].append(_describe(crop, sl[1].start, sl[2].start, colour, s))
    for objs in found:
        objs.sort(key=lambda o: -o["area"])
    return found


def _relation_holds(subject: dict, other: dict, relation: str) -> bool:
    # The dataset guarantees the offset along the relation's axis dominates the other axis.
    if relation not in shapes.RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; valid: {shapes.RELATIONS}")
    return drawn_relation(subject, other) == relation


def _match_by_colour(detected: list[dict], truth: dict) -> list[dict | None]:
    """Per truth object, the detected object of its colour (None if absent)."""
    by_colour: dict[str, dict] = {}
    for obj in detected:  # largest first: the largest component of a colour stands for it
        by_colour.setdefault(obj["colour"], obj)
    return [by_colour.get(t["colour"]) for t in truth["objects"]]


def judge_one(detected: list[dict], truth: dict) -> dict:
    """Scores one image's detected objects against one ground truth.

    Args:
      detected: the image's entry of `detect_objects`.
      truth: a ground-truth dict of `shapes` ("objects", "relation").

    Returns:
      {"colour": [bool per truth object], "shape": [...], "size": [...], "count": bool,
       "relation": bool or None (one-object truth), "all": bool}.
    """
    matched = _match_by_colour(detected, truth)
    colour = [m is not None for m in matched]
    pairs = list(zip(matched, truth["objects"], strict=True))
    shape = [m is not None and m["shape"] == t["shape"] for m, t in pairs]
    size = [m is not None and m["size"] == t["size"] for m, t in pairs]
    count = len(detected) == len(truth["objects"])
    relation = None
    if truth.get("relation") is not None:
        relation = all(colour) and _relation_holds(matched[0], matched[1], truth["relation"])
    everything = all(colour) and all(shape) and all(size) and count and relation is not False
    return {
        "colour": colour,
        "shape": shape,
        "size": size,
        "count": count,
        "relation": relation,
        "all": everything,
    }


def judge_outcomes(images, truths: Sequence[dict], dark_threshold: float = 0.4) -> dict:
    """Per-item outcomes of generated images against their prompts' ground truths.

    Args:
      images: [N, S, S, 3], uint8 in [0, 255] or float in [-1, 1].
      truths: N ground-truth dicts from `shapes` (e.g. `shapes.make_prompts`).
      dark_threshold: see `classify_pixels`.

    Returns:
      bool arrays: "colour", "shape", "size" (one entry per truth object: the colour is
      present; the object of that colour has the right shape / size), "count" (per image: as
      many objects detected as the truth has), "relation" (per two-object truth), "all" (per
      image: every attribute above right).
    """
    images = np.asarray(images)
    if len(images) != len(truths):
        raise ValueError(f"{len(images)} images but {len(truths)} truths")
    results = [
        judge_one(d, t) for d, t in zip(detect_objects(images, dark_threshold), truths, strict=True)
    ]
    per_object = {k: np.array([v for r in results for v in r[k]], bool) for k in OBJECT_FIELDS}
    return {
        **per_object,
        "count": np.array([r["count"] for r in results], bool),
        "relation": np.array([r["relation"] for r in results if r["relation"] is not None], bool),
        "all": np.array([r["all"] for r in results], bool),
    }


OBJECT_FIELDS = ("colour", "shape", "size")


def judge_batch(images, truths: Sequence[dict], dark_threshold: float = 0.4) -> dict:
    """The means of `judge_outcomes`: accuracies in [0, 1] ("relation" is NaN without
    two-object truths), plus "num_images" and "num_relations"."""
    outcomes = judge_outcomes(images, truths, dark_threshold)
    out = {k: float(v.mean()) if v.size else float("nan") for k, v in outcomes.items()}
    out["num_images"] = len(outcomes["count"])
    out["num_relations"] = len(outcomes["relation"])
    return out


def drawn_relation(subject: dict, other: dict) -> str | None:
    """The relation of ``subject`` to ``other`` along the axis their centroids differ most, or
    None when neither axis dominates."""
    dx = subject["centroid"][0] - other["centroid"][0]
    dy = subject["centroid"][1] - other["centroid"][1]
    if abs(dx) > abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return None


def relation_confusion(images, truths: Sequence[dict], dark_threshold: float = 0.4) -> dict:
    """Which relation each image draws between its two prompted objects, against the asked one.

    Separates the two ways a relation can be wrong: the axis (asked "left of", drew "above") and
    the direction (asked "left of", drew "right of": the objects swapped).

    Args:
      images: [N, S, S, 3], uint8 or float in [-1, 1].
      truths: N ground truths; one-object ones are skipped.
      dark_threshold: see `classify_pixels`.

    Returns:
      {"matrix": int [4, 5] (rows: asked relation in shapes.RELATIONS order; columns: drawn
       relation, then "not readable": an object's colour is missing or no axis dominates),
       "relation": accuracy over the readable images, "axis": the fraction of those with the
       right axis}.
    """
    images = np.asarray(images)
    if len(images) != len(truths):
        raise ValueError(f"{len(images)} images but {len(truths)} truths")
    matrix = np.zeros((len(shapes.RELATIONS), len(shapes.RELATIONS) + 1), np.int64)
    for detected, truth in zip(detect_objects(images, dark_threshold), truths, strict=True):
        if truth.get("relation") is None:
            continue
        a, b = _match_by_colour(detected, truth)
        row = shapes.RELATIONS.index(truth["relation"])
        drawn = None if a is None or b is None else drawn_relation(a, b)
        col = len(shapes.RELATIONS) if drawn is None else shapes.RELATIONS.index(drawn)
        matrix[row, col] += 1
    found = matrix[:, :-1]
    total = found.sum()
    axis = found[:2, :2].sum() + found[2:, 2:].sum()  # RELATIONS: two horizontal, two vertical
    return {
        "matrix": matrix,
        "relation": float(np.trace(found) / total) if total else float("nan"),
        "axis": float(axis / total) if total else float("nan"),
    }


def shape_confusion(images, truths: Sequence[dict], dark_threshold: float = 0.4) -> dict:
    """Which shape each prompted object is drawn with, and whether two objects' shapes leak.

    A two-object prompt of two different shapes can go wrong by drawing both objects with one
    shape (the shape words leak from one object to the other) rather than by drawing a third.

    Args:
      images: [N, S, S, 3], uint8 or float in [-1, 1].
      truths: N ground truths.
      dark_threshold: see `classify_pixels`.

    Returns:
      {"matrix": int [4, 5] (rows: asked shape in shapes.SHAPES order; columns: the shape drawn
       in that object's colour, then "missing": no object of that colour),
       "shape_one" / "shape_two": shape accuracy over the objects of one- / two-object prompts,
       "pairs": two-object prompts asking two different shapes with both colours found,
       "pairs_right": the fraction of those with both shapes right,
       "pairs_same": the fraction drawing both objects with one shape}.
    """
    images = np.asarray(images)
    if len(images) != len(truths):
        raise ValueError(f"{len(images)} images but {len(truths)} truths")
    matrix = np.zeros((len(shapes.SHAPES), len(shapes.SHAPES) + 1), np.int64)
    right: dict[int, list[bool]] = {1: [], 2: []}
    pairs = pairs_right = pairs_same = 0
    for detected, truth in zip(detect_objects(images, dark_threshold), truths, strict=True):
        matched = _match_by_colour(detected, truth)
        asked = [t["shape"] for t in truth["objects"]]
        drawn = [None if m is None else m["shape"] for m in matched]
        for a, d in zip(asked, drawn, strict=True):
            col = len(shapes.SHAPES) if d is None else shapes.SHAPES.index(d)
            matrix[shapes.SHAPES.index(a), col] += 1
            right[len(asked)].append(a == d)
        if len(asked) == 2 and asked[0] != asked[1] and None not in drawn:
            pairs += 1
            pairs_right += drawn == asked
            pairs_same += drawn[0] == drawn[1]

    def mean(values):
        return float(np.mean(values)) if len(values) else float("nan")

    return {
        "matrix": matrix,
        "shape_one": mean(right[1]),
        "shape_two": mean(right[2]),
        "pairs": pairs,
        "pairs_right": pairs_right / pairs if pairs else float("nan"),
        "pairs_same": pairs_same / pairs if pairs else float("nan"),
    }


def features(images, dark_threshold: float = 0.4) -> np.ndarray:
    """A fixed descriptor of each image, for a Frechet distance between image sets.

    Per colour (in shapes.COLOUR_NAMES order): the fraction of pixels of that colour, then for
    its largest object: present, area / S^2, height / S, width / S, centroid x / S, centroid
    y / S and the IoU with each shape (zeros when absent); last, the number of objects.

    Args:
      images: [N, S, S, 3], uint8 or float in [-1, 1].
      dark_threshold: see `classify_pixels`.

    Returns:
      float64 array [N, FEATURE_DIM].
    """
    labels = classify_pixels(images, dark_threshold)
    n, s = labels.shape[0], labels.shape[1]
    num_colours = len(shapes.COLOUR_NAMES)
    flat = labels.reshape(n, -1).astype(np.int64) + 1  # 0 is background
    offsets = (np.arange(n) * (num_colours + 1))[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=n * (num_colours + 1))
    fractions = counts.reshape(n, num_colours + 1)[:, 1:] / (s * s)
    slots = np.zeros((n, num_colours, _SLOT_FEATURES))
    num_objects = np.zeros((n, 1))
    for i, objs in enumerate(detect_objects(images, dark_threshold)):
        num_objects[i] = len(objs)
        for obj in reversed(objs):  # smallest first, so the largest of a colour writes last
            x0, y0, x1, y1 = obj["box"]
            cx, cy = obj["centroid"]
            geometry = [1.0, obj["area"] / s**2, (y1 - y0) / s, (x1 - x0) / s, cx / s, cy / s]
            slots[i, _COLOUR_INDEX[obj["colour"]]] = np.concatenate([geometry, obj["ious"]])
    return np.concatenate([fractions, slots.reshape(n, -1), num_objects], axis=1)
