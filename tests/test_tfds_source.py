"""TfdsSource on mocked TFDS data (tfds.testing.mock_data; no TensorFlow, no download)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen.data import tokenizer
from jaxgen.data.pipeline import DataError, make_batch_iterator
from jaxgen.data.tfds_source import TfdsSource, default_caption, to_square_rgb


def test_mnist_mock_grayscale_to_rgb_resized_with_captions():
    with tfds.testing.mock_data(num_examples=6):
        src = TfdsSource("mnist", "train", image_size=32, max_text_len=32)
        assert len(src) == 6
        ex = src[2]
        info = src.example(2)
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    # Grey replicated, not tinted.
    assert np.array_equal(ex["image"][..., 0], ex["image"][..., 2])
    assert ex["tokens"].shape == (32,) and ex["tokens"].dtype == np.int32
    assert info["caption"] == f"a handwritten {src.label_names[info['label']]}"
    assert tokenizer.decode(ex["tokens"]) == info["caption"]
    assert int(ex["label"]) == info["label"]


def test_cifar10_mock_keeps_size_and_batches():
    with tfds.testing.mock_data(num_examples=8):
        src = TfdsSource("cifar10", "test", image_size=32, max_text_len=48)
        batch = next(make_batch_iterator(src, batch_size=4, seed=0))
        info = src.example(0)
    assert batch["image"].shape == (4, 32, 32, 3)
    assert batch["tokens"].shape == (4, 48)
    assert info["caption"].startswith("a photo of a")


def test_caption_fn_overrides_class_names():
    with tfds.testing.mock_data(num_examples=3):
        src = TfdsSource(
            "mnist", "train", 28, 32, caption_fn=lambda raw, names: f"digit {raw['label']}"
        )
        info = src.example(1)
    assert info["caption"] == f"digit {info['label']}"


def test_unprepared_dataset_names_dataset_dir_and_fix(tmp_path):
    with pytest.raises(DataError) as err:
        TfdsSource("mnist", "train", 32, 32, data_dir=tmp_path)
    msg = str(err.value)
    assert "'mnist'" in msg and str(tmp_path) in msg and "tfds build mnist" in msg


def test_default_caption_and_square_conversion():
    assert default_caption("cifar10", "airplane") == "a photo of an airplane"
    assert default_caption("mnist:3.0.1", "7") == "a handwritten 7"
    rect = np.zeros((20, 10, 4), np.uint8)
    rect[5:15, :, :3] = 200  # the centred square is all 200, the bands above and below are 0
    out = to_square_rgb(rect, 10)
    assert out.shape == (10, 10, 3) and np.all(out == 200)
