"""Tests for the rule-based `shapes` judge: near perfect on real data, and able to fail."""

import numpy as np
import pytest
from scipy import ndimage

from jaxgen.data import shapes
from jaxgen.evaluation import shapes_judge as judge

_SCORED = ("colour", "shape", "size", "count", "relation", "all")


def _real(split, n, image_size=32):
    src = shapes.ShapesSource(split, image_size=image_size)
    batch = shapes.stack(src, range(n))
    return batch["image"], [src.truth(i) for i in range(n)]


def _noisy_blurred(images, seed=0):
    """Float images in [-1, 1] with a [1, 2, 1] / 4 blur and Gaussian noise of std 0.1."""
    x = images.astype(np.float32) / 127.5 - 1.0
    k = np.array([1.0, 2.0, 1.0]) / 4.0
    for axis in (1, 2):
        x = ndimage.convolve1d(x, k, axis=axis, mode="constant", cval=-1.0)
    x = x + np.random.default_rng(seed).normal(0.0, 0.1, x.shape)
    return x.astype(np.float32)


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_near_perfect_on_real_images(split):
    images, truths = _real(split, 1_000)
    scores = judge.judge_batch(images, truths)
    assert scores["num_images"] == 1_000 and scores["num_relations"] > 300
    for name in _SCORED:
        assert scores[name] >= 0.99, (name, scores)


def test_accepts_float_range_like_uint8():
    images, truths = _real("test", 200)
    as_float = images.astype(np.float32) / 127.5 - 1.0
    assert judge.judge_batch(as_float, truths) == judge.judge_batch(images, truths)
    with pytest.raises(TypeError, match="uint8 or float"):
        judge.judge_batch(images.astype(np.int32), truths)


def test_robust_to_mild_noise_and_blur():
    images, truths = _real("test", 500)
    scores = judge.judge_batch(_noisy_blurred(images), truths)
    for name in _SCORED:
        assert scores[name] >= 0.98, (name, scores)


def test_black_image_is_wrong():
    _, truths = _real("test", 20)
    scores = judge.judge_batch(np.zeros((20, 32, 32, 3), np.uint8), truths)
    for name in _SCORED:
        assert scores[name] == 0.0, (name, scores)


def test_wrong_colour_is_colour_wrong():
    _, truths = _real("test", 200)
    images = []
    for t in truths:
        used = {o["colour"] for o in t["objects"]}
        spare = [c for c in shapes.COLOUR_NAMES if c not in used]
        recoloured = [dict(o, colour=spare[k]) for k, o in enumerate(t["objects"])]
        images.append(shapes.render_scene(recoloured, 32))
    scores = judge.judge_batch(np.stack(images), truths)
    assert scores["colour"] == 0.0 and scores["all"] == 0.0
    assert scores["count"] == 1.0  # the right number of objects is still there


def test_wrong_shape_size_and_relation_are_caught():
    _, truths = _real("test", 300)
    swap_shape = {"circle": "square", "square": "circle", "triangle": "diamond"}
    swap_shape["diamond"] = "triangle"
    wrong_shape, wrong_size, mirrored, resized_all = [], [], [], []
    for t in truths:
        objs = t["objects"]
        wrong_shape.append(
            shapes.render_scene([dict(o, shape=swap_shape[o["shape"]]) for o in objs], 32)
        )
        # Same centre, other size: the judge must read the size from the pixels.
        resized = []
        for o in objs:
            other = shapes.object_sizes(32)["small" if o["size"] == "large" else "large"]
            x0, y0, x1, y1 = o["box"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            box = (
                cx - other // 2,
                cy - other // 2,
                cx - other // 2 + other,
                cy - other // 2 + other,
            )
            resized.append(dict(o, box=box))
        wrong_size.append(shapes.render_scene(resized[:1], 32))
        resized_all.append(resized)
        # Swapping the two objects' positions reverses the relation.
        if len(objs) == 2:
            a, b = objs
            mirrored.append(shapes.render_scene([dict(a, box=b["box"]), dict(b, box=a["box"])], 32))
    one_object = [t for t in truths if len(t["objects"]) == 1]
    two_object = [t for t in truths if len(t["objects"]) == 2]
    assert judge.judge_batch(np.stack(wrong_shape), truths)["shape"] == 0.0
    # Only where the resized object stays on the canvas (a large object grown from a small one
    # at the border would be clipped back to about the small size).
    inside = [
        len(t["objects"]) == 1 and min(r[0]["box"]) >= 0 and max(r[0]["box"]) <= 32
        for t, r in zip(truths, resized_all, strict=True)
    ]
    single_sized = [img for img, keep in zip(wrong_size, inside, strict=True) if keep]
    kept = [t for t, keep in zip(truths, inside, strict=True) if keep]
    assert len(kept) > 0.8 * len(one_object)
    assert judge.judge_batch(np.stack(single_sized), kept)["size"] == 0.0
    assert judge.judge_batch(np.stack(mirrored), two_object)["relation"] == 0.0


def test_relation_confusion_separates_axis_from_direction():
    images, truths = _real("test", 300)
    pairs = [(img, t) for img, t in zip(images, truths, strict=True) if t["relation"]]
    two = [t for _, t in pairs]
    real = judge.relation_confusion(np.stack([img for img, _ in pairs]), truths=two)
    counts = np.bincount([shapes.RELATIONS.index(t["relation"]) for t in two], minlength=4)
    np.testing.assert_array_equal(real["matrix"], np.c_[np.diag(counts), np.zeros(4, int)])
    assert real["relation"] == real["axis"] == 1.0
    # Swapped positions: the axis stays, the direction flips (left <-> right, above <-> below).
    swapped = [
        shapes.render_scene(
            [
                dict(t["objects"][0], box=t["objects"][1]["box"]),
                dict(t["objects"][1], box=t["objects"][0]["box"]),
            ],
            32,
        )
        for t in two
    ]
    flipped = judge.relation_confusion(np.stack(swapped), two)
    mirror = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    np.testing.assert_array_equal(flipped["matrix"][:, :4], mirror * counts[:, None])
    assert flipped["relation"] == 0.0 and flipped["axis"] == 1.0
    # A black image has no objects: every row lands in "not readable".
    black = judge.relation_confusion(np.zeros((len(two), 32, 32, 3), np.uint8), two)
    np.testing.assert_array_equal(black["matrix"][:, 4], counts)
    assert np.isnan(black["relation"])
    with pytest.raises(ValueError, match="truths"):
        judge.relation_confusion(np.zeros((2, 32, 32, 3), np.uint8), two[:1])


def test_shape_confusion_counts_leaks_between_two_objects():
    images, truths = _real("test", 300)
    real = judge.shape_confusion(images, truths)
    asked = [shapes.SHAPES.index(o["shape"]) for t in truths for o in t["objects"]]
    counts = np.bincount(asked, minlength=4)
    np.testing.assert_array_equal(real["matrix"], np.c_[np.diag(counts), np.zeros(4, int)])
    assert real["shape_one"] == real["shape_two"] == real["pairs_right"] == 1.0
    assert real["pairs_same"] == 0.0
    differ = [t for t in truths if t["relation"] and len({o["shape"] for o in t["objects"]}) == 2]
    assert real["pairs"] == len(differ) > 20
    # Both objects drawn with the first one's shape: the second object is always wrong, into the
    # first object's shape column, and every such pair counts as "one shape".
    leaked = [
        shapes.render_scene(
            [t["objects"][0], dict(t["objects"][1], shape=t["objects"][0]["shape"])], 32
        )
        for t in differ
    ]
    out = judge.shape_confusion(np.stack(leaked), differ)
    assert out["shape_two"] == 0.5 and np.isnan(out["shape_one"])
    assert out["pairs"] == len(differ) and out["pairs_right"] == 0.0 and out["pairs_same"] == 1.0
    expected = np.zeros((4, 5), int)
    for t in differ:
        first, second = (shapes.SHAPES.index(o["shape"]) for o in t["objects"])
        expected[first, first] += 1
        expected[second, first] += 1
    np.testing.assert_array_equal(out["matrix"], expected)
    # A black image: every object is missing, no pair is readable.
    black = judge.shape_confusion(np.zeros((len(differ), 32, 32, 3), np.uint8), differ)
    assert black["matrix"][:, 4].sum() == 2 * len(differ) and black["pairs"] == 0
    with pytest.raises(ValueError, match="truths"):
        judge.shape_confusion(np.zeros((2, 32, 32, 3), np.uint8), differ[:1])


def test_count_detects_extra_object():
    _, truths = _real("test", 100)
    one = [t for t in truths if len(t["objects"]) == 1][:20]
    images = []
    for t in one:
        obj = t["objects"][0]
        extra_colour = next(c for c in shapes.COLOUR_NAMES if c != obj["colour"])
        x0, y0, _, _ = obj["box"]
        # A small square in the corner farthest from the object.
        ex = 0 if x0 > 11 else 23
        ey = 0 if y0 > 11 else 23
        extra = {"colour": extra_colour, "shape": "square", "box": (ex, ey, ex + 9, ey + 9)}
        images.append(shapes.render_scene([obj, extra], 32))
    scores = judge.judge_batch(np.stack(images), one)
    assert scores["count"] == 0.0 and scores["colour"] == 1.0


def test_detect_objects_reports_geometry():
    images, truths = _real("test", 50)
    for found, t in zip(judge.detect_objects(images), truths, strict=True):
        assert len(found) == len(t["objects"])
        by_colour = {o["colour"]: o for o in found}
        for obj in t["objects"]:
            assert by_colour[obj["colour"]]["box"] == obj["box"]


def test_features():
    images, _ = _real("test", 64)
    f = judge.features(images)
    assert f.shape == (64, judge.FEATURE_DIM) and f.dtype == np.float64
    assert np.all(np.isfinite(f))
    np.testing.assert_array_equal(f, judge.features(images.astype(np.float32) / 127.5 - 1.0))
    # Real and black images are far apart in feature space; real images agree with each other.
    black = judge.features(np.zeros_like(images))
    assert np.all(black == 0.0)
    other, _ = _real("train", 64)
    g = judge.features(other)
    assert np.linalg.norm(f.mean(0) - g.mean(0)) < np.linalg.norm(f.mean(0) - black.mean(0))


def test_read_judges_each_image_against_a_typed_prompt():
    import ml_collections

    from jaxgen.evaluation import judges

    reader = judges.build_judge(ml_collections.ConfigDict(dict(name="shapes", image_size=32)))
    images, truths = _real("test", 40)
    two = next(i for i, t in enumerate(truths) if t["relation"] is not None)
    one = next(i for i, t in enumerate(truths) if t["relation"] is None)
    for i in (one, two):
        (reading,) = reader.read(images[i : i + 1], truths[i]["caption"])
        assert all(reading.values()) and set(reading) >= {"colour", "shape", "size", "count"}
        assert ("relation" in reading) == (i == two)
    # The one-object image read against prompts that change one thing each.
    obj = truths[one]["objects"][0]
    other_shape = next(s for s in shapes.SHAPES if s != obj["shape"])
    other_colour = next(c for c in shapes.COLOUR_NAMES if c != obj["colour"])
    (reading,) = reader.read(images[one : one + 1], f"a {obj['colour']} {other_shape}")
    assert reading == {"colour": True, "shape": False, "count": True}  # no size asked
    (reading,) = reader.read(images[one : one + 1], f"a {other_colour} {obj['shape']}")
    assert reading["colour"] is False and reading["count"] is True
    pair = f"a {obj['colour']} {obj['shape']} left of a {other_colour} {other_shape}"
    (reading,) = reader.read(images[one : one + 1], pair)
    assert reading["count"] is False and reading["relation"] is False
    # Sizes are read only for the objects the prompt sizes.
    a, b = truths[two]["objects"]
    flip = {"small": "large", "large": "small"}
    rel = truths[two]["relation"]
    for size_a, size_b, right in ((a["size"], flip[b["size"]], False), ("", b["size"], True)):
        prompt = (
            f"a {size_a} {a['colour']} {a['shape']} {rel} a {size_b} {b['colour']} {b['shape']}"
        )
        (reading,) = reader.read(images[two : two + 1], " ".join(prompt.split()))
        assert reading["size"] is right and reading["shape"] and reading["relation"], prompt
    assert reader.read(images[:3], "a photograph of a cat") is None
    assert len(reader.read(images[:3], truths[0]["caption"])) == 3
