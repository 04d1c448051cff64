"""ImageFolderSource: captions.jsonl, RGB conversion, and clear errors for bad files."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxgen.data import tokenizer
from jaxgen.data.folder import ImageFolderSource
from jaxgen.data.pipeline import DataError, make_batch_iterator


def _write_folder(tmp_path, entries):
    with open(tmp_path / "captions.jsonl", "w") as f:
        for file, caption in entries:
            f.write(json.dumps({"file": file, "caption": caption}) + "\n")


def _good_folder(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("L", (16, 16), 128).save(tmp_path / "grey.jpg")
    (tmp_path / "sub").mkdir()
    Image.new("RGBA", (16, 16), (0, 0, 255, 10)).save(tmp_path / "sub" / "blue.png")
    _write_folder(
        tmp_path, [("red.png", "a red box"), ("grey.jpg", "grey"), ("sub/blue.png", "blue")]
    )


def test_reads_images_and_captions(tmp_path):
    _good_folder(tmp_path)
    src = ImageFolderSource(tmp_path, image_size=8, max_text_len=16)
    assert len(src) == 3
    red, grey, blue = src[0], src[1], src[2]
    for ex in (red, grey, blue):
        assert ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.uint8
        assert ex["tokens"].shape == (16,) and ex["tokens"].dtype == np.int32
    assert np.all(red["image"] == [255, 0, 0])
    assert np.all(np.abs(grey["image"].astype(int) - 128) <= 2)
    assert np.all(blue["image"] == [0, 0, 255])
    assert tokenizer.decode(red["tokens"]) == "a red box"
    assert src.example(2) == {"caption": "blue", "file": "sub/blue.png"}


def test_long_caption_is_truncated(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    _write_folder(tmp_path, [("a.png", "é" * 20)])
    tokens = ImageFolderSource(tmp_path, 8, 10)[0]["tokens"]
    # 8 bytes of room hold 4 two-byte characters exactly.
    assert tokenizer.decode(tokens) == "é" * 4


def test_truncated_png_raises_data_error_naming_file_and_index(tmp_path):
    _good_folder(tmp_path)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "broken.png")
    data = (tmp_path / "broken.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 2])
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write(json.dumps({"file": "broken.png", "caption": "broken"}) + "\n")
    src = ImageFolderSource(tmp_path, 8, 16)
    with pytest.raises(DataError, match=r"image 3 .*broken\.png"):
        src[3]
    # The same error surfaces through the batch pipeline, not a bare Pillow traceback.
    it = make_batch_iterator(src, batch_size=4, seed=0, shuffle=False)
    with pytest.raises(DataError, match="broken.png"):
        next(it)


def test_missing_file_and_bad_jsonl(tmp_path):
    with pytest.raises(DataError, match="captions.jsonl"):
        ImageFolderSource(tmp_path, 8, 16)
    _write_folder(tmp_path, [("nothere.png", "ghost")])
    with pytest.raises(DataError, match=r"image 0 .*nothere\.png"):
        ImageFolderSource(tmp_path, 8, 16)[0]
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png"}\n')
    with pytest.raises(DataError, match=r"captions.jsonl:1"):
        ImageFolderSource(tmp_path, 8, 16)
