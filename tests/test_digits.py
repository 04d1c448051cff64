"""DigitsSource (real sklearn digits, captioned) and the DigitsJudge trained on its train split."""

import numpy as np
import pytest

from jaxgen.data import digits, tokenizer
from jaxgen.data.digits import DigitsSource, make_prompts
from jaxgen.evaluation.digits_judge import DigitsJudge


@pytest.fixture(scope="module")
def test_split():
    src = DigitsSource("test", image_size=32, max_text_len=48)
    images = np.stack([src[i]["image"] for i in range(len(src))])
    return src, images


def test_splits_are_disjoint_and_cover_all():
    train, val, test = (digits.split_indices(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1203, 297, 297)
    assert not set(train) & set(test) and not set(train) & set(val) and not set(val) & set(test)
    assert len(set(train) | set(val) | set(test)) == 1797
    with pytest.raises(ValueError, match="split"):
        digits.split_indices("validation")


def test_example_format_and_caption(test_split):
    src, _ = test_split
    ex, info = src[5], src.example(5)
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert np.array_equal(ex["image"][..., 0], ex["image"][..., 1])
    assert ex["tokens"].shape == (48,) and ex["tokens"].dtype == np.int32
    assert tokenizer.decode(ex["tokens"]) == info["caption"]
    assert int(ex["label"]) == info["label"] == src.labels[5]
    word, numeral = digits.DIGIT_WORDS[info["label"]], str(info["label"])
    assert word in info["caption"] or numeral in info["caption"]
    # White digit on black: most pixels are dark background, the strokes reach full brightness.
    assert np.median(ex["image"]) < 64 and ex["image"].max() > 200


def test_deterministic_and_varied_captions():
    a, b = DigitsSource("train", 16, seed=0), DigitsSource("train", 16, seed=0)
    assert [a.example(i) for i in range(20)] == [b.example(i) for i in range(20)]
    assert np.array_equal(a[7]["image"], b[7]["image"])
    captions = {a.example(i)["caption"] for i in range(200)}
    assert len(captions) > 40  # many of the 10 labels x 8 templates appear
    other = DigitsSource("train", 16, seed=1)
    assert [a.example(i) for i in range(20)] != [other.example(i) for i in range(20)]
    assert np.array_equal(a.labels, other.labels)  # the seed never moves the split


def test_make_prompts_balanced_and_deterministic():
    captions, labels = make_prompts("test", 30, seed=3)
    assert len(captions) == 30 and labels.dtype == np.int32
    assert np.bincount(labels, minlength=10).tolist() == [3] * 10
    for c, y in zip(captions, labels, strict=True):
        assert digits.DIGIT_WORDS[y] in c or str(y) in c
    assert make_prompts("test", 30, seed=3)[0] == captions


def test_judge_accurate_on_real_test_split(test_split):
    src, images = test_split
    judge = DigitsJudge()
    assert judge.accuracy(images, src.labels) >= 0.95
    # The models' float range [-1, 1] scores the same.
    as_float = images.astype(np.float32) / 127.5 - 1.0
    assert judge.accuracy(as_float, src.labels) >= 0.95
    feats = judge.features(images[:10])
    assert feats.shape == (10, judge.feature_dim) and np.all(np.isfinite(feats))
    assert DigitsJudge() is not judge and DigitsJudge()._clf is judge._clf  # cached fit


def test_judge_near_chance_on_noise(test_split):
    src, _ = test_split
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (len(src), 32, 32, 3), dtype=np.uint8)
    assert DigitsJudge().accuracy(noise, src.labels) < 0.25


@pytest.mark.parametrize(
    "text, label",
    [
        ("a handwritten seven", 7),
        ("the digit 3", 3),
        ("The Number ZERO", 0),
        ("a 5 or a 6", None),
        ("a handwritten cat", None),
        (None, None),
    ],
)
def test_parse_caption(text, label):
    assert digits.parse_caption(text) == label


def test_parse_caption_reads_every_template():
    for d in range(10):
        for t in range(len(digits.CAPTION_TEMPLATES)):
            assert digits.parse_caption(digits.caption_for(d, t)) == d


def test_judge_reads_real_digits_against_typed_prompts():
    import ml_collections

    from jaxgen.evaluation import judges

    reader = judges.build_judge(ml_collections.ConfigDict(dict(name="digits", image_size=16)))
    src = DigitsSource("test", image_size=16)
    sevens = np.stack([src[int(i)]["image"] for i in np.flatnonzero(src.labels == 7)[:10]])
    right = [r["digit"] for r in reader.read(sevens, "a handwritten seven")]
    wrong = [r["digit"] for r in reader.read(sevens, "the digit 1")]
    assert sum(right) >= 8 and sum(wrong) <= 2
    assert reader.read(sevens, "a handwritten cat") is None
