"""Tests for the procedural `shapes` dataset."""

import numpy as np
import pytest

from jaxgen.data import shapes, tokenizer

_PALETTE = np.array([(0, 0, 0), *shapes.COLOURS.values()], np.uint8)


def _pixels_of(image, colour):
    """(ys, xs) of the pixels of one exact colour."""
    return np.nonzero(np.all(image == np.array(shapes.COLOURS[colour], np.uint8), axis=-1))


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_item_layout_and_exact_colours(image_size):
    src = shapes.ShapesSource("train", image_size=image_size, max_text_len=64)
    images = []
    for i in range(200):
        item = src[i]
        assert set(item) == {"image", "tokens"}
        assert item["image"].shape == (image_size, image_size, 3)
        assert item["image"].dtype == np.uint8
        assert item["tokens"].shape == (64,) and item["tokens"].dtype == np.int32
        images.append(item["image"])
    pixels = np.stack(images).reshape(-1, 1, 3)
    # Every pixel is black or exactly one of the six colours: no anti-aliasing.
    assert np.all(np.any(np.all(pixels == _PALETTE[None], axis=-1), axis=-1))


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_boxes_match_pixels(image_size):
    src = shapes.ShapesSource("test", image_size=image_size)
    for i in range(200):
        ex = src.example(i)
        for obj in ex["objects"]:
            ys, xs = _pixels_of(ex["image"], obj["colour"])
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
            # The mask touches all four sides of its box.
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            side = shapes.object_sizes(image_size)[obj["size"]]
            assert x1 - x0 == side and y1 - y0 == side


def test_sizes_distinct_and_two_large_fit():
    for s in (16, 32, 64):
        px = shapes.object_sizes(s)
        assert px["small"] < px["large"]
        assert 2 * px["large"] + shapes.object_gap(s) <= s
    assert shapes.object_sizes(32) == {"small": 9, "large": 14}


def test_shape_masks_are_distinct():
    for side in (5, 9, 14):
        masks = [shapes.shape_mask(name, side, side) for name in shapes.SHAPES]
        for a in range(len(masks)):
            for b in range(a + 1, len(masks)):
                assert np.any(masks[a] != masks[b])
    tri = shapes.shape_mask("triangle", 9, 9)
    assert tri[0].sum() < tri[-1].sum()  # points up


def test_deterministic_and_order_independent():
    a = shapes.ShapesSource("train", seed=3)
    b = shapes.ShapesSource("train", seed=3)
    order = [17, 5, 99, 5]
    items_a = [a[i] for i in order]
    items_b = [b[i] for i in reversed(order)][::-1]
    for x, y in zip(items_a, items_b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    assert a.truth(17) == b.truth(17)
    other_seed = shapes.ShapesSource("train", seed=4)
    other_split = shapes.ShapesSource("test", seed=3)
    assert [a.truth(i) for i in range(20)] != [other_seed.truth(i) for i in range(20)]
    assert [a.truth(i) for i in range(20)] != [other_split.truth(i) for i in range(20)]


def test_lengths_and_indexing():
    assert len(shapes.ShapesSource("train")) == 100_000
    for split in ("val", "heldout_val", "test", "heldout"):
        assert len(shapes.ShapesSource(split)) == 2_000
    src = shapes.ShapesSource("test", num_examples=10)
    assert len(src) == 10
    np.testing.assert_array_equal(src[-1]["image"], src[9]["image"])
    np.testing.assert_array_equal(src[np.int64(3)]["image"], src[3]["image"])
    with pytest.raises(IndexError):
        src[10]
    with pytest.raises(ValueError, match="valid"):
        shapes.ShapesSource("validation")


def test_heldout_pairs():
    assert len(shapes.HELDOUT_PAIRS) == 4
    heldout = set(shapes.HELDOUT_PAIRS)
    for split, n in (("train", 20_000), ("val", 2_000), ("test", 2_000)):
        src = shapes.ShapesSource(split)
        for i in range(n):
            for obj in src.truth(i)["objects"]:
                assert (obj["colour"], obj["shape"]) not in heldout, (split, i)
    for split in ("heldout_val", "heldout"):
        src = shapes.ShapesSource(split)
        for i in range(2_000):
            pairs = {(o["colour"], o["shape"]) for o in src.truth(i)["objects"]}
            assert pairs & heldout, (split, i)


def test_every_split_is_its_own_stream_and_val_keeps_the_old_test_stream():
    """Tuning reads val, reports read test: the two must be different examples. Stream 1 (the
    old test split, which settings were chosen on) is val now; test is a stream of its own."""

    def scene(split, i):
        t = shapes.sample_truth(split, i)
        return t["caption"], str(t["objects"])

    first = {s: [scene(s, i) for i in range(200)] for s in shapes.SPLITS}
    for a in first:
        for b in first:
            if a < b:  # whole scenes (caption and boxes) repeat across splits by chance only
                assert len(set(first[a]) & set(first[b])) <= 2, (a, b)
    assert shapes.SPLITS["val"] == 1 and shapes.SPLITS["heldout_val"] == 2
    assert shapes.SPLITS["test"] not in (0, 1, 2) and shapes.SPLITS["heldout"] not in (0, 1, 2)


def test_scene_statistics():
    src = shapes.ShapesSource("train")
    truths = [src.truth(i) for i in range(2_000)]
    two = [t for t in truths if len(t["objects"]) == 2]
    assert 0.4 < len(two) / len(truths) < 0.6
    assert {t["relation"] for t in two} == set(shapes.RELATIONS)
    assert all(t["relation"] is None for t in truths if len(t["objects"]) == 1)
    seen = {(o["colour"], o["shape"], o["size"]) for t in truths for o in t["objects"]}
    assert len(seen) == 2 * len(shapes.TRAIN_PAIRS)


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_relation_unambiguous_in_pixels(image_size):
    src = shapes.ShapesSource("train", image_size=image_size)
    gap = shapes.object_gap(image_size)
    checked = 0
    for i in range(400):
        ex = src.example(i)
        if ex["relation"] is None:
            continue
        a, b = ex["objects"]
        assert a["colour"] != b["colour"]
        ya, xa = _pixels_of(ex["image"], a["colour"])
        yb, xb = _pixels_of(ex["image"], b["colour"])
        dx, dy = xa.mean() - xb.mean(), ya.mean() - yb.mean()
        rel = ex["relation"]
        if rel == "left of":
            assert xa.max() + gap < xb.min() and abs(dx) > abs(dy)
        elif rel == "right of":
            assert xb.max() + gap < xa.min() and abs(dx) > abs(dy)
        elif rel == "above":
            assert ya.max() + gap < yb.min() and abs(dy) > abs(dx)
        else:
            assert yb.max() + gap < ya.min() and abs(dy) > abs(dx)
        checked += 1
    assert checked > 150


def test_captions_state_every_attribute():
    src = shapes.ShapesSource("heldout")
    size_words = {"small": ("small", "little"), "large": ("large", "big")}
    rel_words = {"left of": "left", "right of": "right", "above": "above", "below": "below"}
    captions = set()
    for i in range(500):
        ex = src.example(i)
        caption = ex["caption"]
        captions.add(caption)
        assert tokenizer.decode(ex["tokens"]) == caption
        for obj in ex["objects"]:
            phrase = [f"{w} {obj['colour']} {obj['shape']}" for w in size_words[obj["size"]]]
            assert any(p in caption for p in phrase), (caption, obj)
        if ex["relation"] == "above":
            assert any(w in caption for w in ("above", "over"))
        elif ex["relation"] == "below":
            assert any(w in caption for w in ("below", "under", "beneath"))
        elif ex["relation"] is not None:
            assert rel_words[ex["relation"]] in caption
    # Varied English: many distinct phrasings, synonyms used.
    text = " ".join(captions)
    for word in ("big", "large", "little", "small", "to the left of", "there is"):
        assert word in text


def test_captions_fit_short_token_budget():
    src = shapes.ShapesSource("train", max_text_len=64)
    for i in range(2_000):
        assert len(src.truth(i)["caption"].encode()) <= 62


def test_make_prompts_and_captions():
    captions, truths = shapes.make_prompts("test", 8, seed=0)
    assert len(captions) == len(truths) == 8
    src = shapes.ShapesSource("test")
    assert captions == src.captions(range(8))
    assert truths[0] == src.truth(0)


def test_render_scene_clips_boxes():
    obj = {"colour": "red", "shape": "square", "box": (-4, -4, 6, 6)}
    image = shapes.render_scene([obj], 16)
    assert _pixels_of(image, "red")[0].size == 36


@pytest.mark.parametrize("split", list(shapes.SPLITS))
def test_parse_caption_reads_back_every_generated_caption(split):
    for i in range(1_500):
        truth = shapes.sample_truth(split, i)
        parsed = shapes.parse_caption(truth["caption"])
        assert parsed is not None, truth["caption"]
        want = [{k: o[k] for k in ("colour", "shape", "size")} for o in truth["objects"]]
        assert (parsed["objects"], parsed["relation"]) == (want, truth["relation"]), truth


@pytest.mark.parametrize(
    "text, objects, relation",
    [
        ("A BIG Red Circle.", [("red", "circle", "large")], None),
        ("a red circle", [("red", "circle", None)], None),
        (
            "a little cyan square with a large blue triangle on its right",
            [("blue", "triangle", "large"), ("cyan", "square", "small")],
            "right of",
        ),
        (
            "a green diamond to the left of a yellow circle",
            [("green", "diamond", None), ("yellow", "circle", None)],
            "left of",
        ),
        (
            "a red circle beneath a big blue square",
            [("red", "circle", None), ("blue", "square", "large")],
            "below",
        ),
    ],
)
def test_parse_caption_of_user_prompts(text, objects, relation):
    parsed = shapes.parse_caption(text)
    assert [(o["colour"], o["shape"], o["size"]) for o in parsed["objects"]] == objects
    assert parsed["relation"] == relation and parsed["caption"] == text


@pytest.mark.parametrize(
    "text",
    [
        "a cat on a mat",  # no object
        "a red circle left of a red square",  # one colour twice
        "a red circle and a blue square",  # no relation
        "a red circle above a blue square and to the left of it",  # two relations
        "a red circle left of a blue square left of a green diamond",  # three objects
        "",
        None,
        42,
    ],
)
def test_parse_caption_outside_the_grammar_is_none(text):
    assert shapes.parse_caption(text) is None
