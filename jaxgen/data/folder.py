"""A folder of the user's own captioned images as a random-access source.

Layout:

    directory/
      captions.jsonl      one JSON object a line: {"file": "cat.png", "caption": "a cat"}
      cat.png
      sub/dog.jpg         "file" is relative to `directory`

Images are read lazily (PNG, JPEG or anything Pillow opens), converted to RGB, centre-cropped to
a square and resized to `image_size`. A corrupt, truncated or missing image raises `DataError`
naming the file and the index, not a Pillow traceback.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from jaxgen.data.pipeline import DataError, check_index, encode_caption

CAPTIONS_FILE = "captions.jsonl"


def _read_captions(path: str) -> list[tuple[str, str]]:
    """Returns [(file, caption)] from a captions.jsonl, with errors naming the line."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("file"), str)
                or not isinstance(record.get("caption"), str)
            ):
                raise DataError(
                    f'{path}:{line_no}: expected {{"file": str, "caption": str}}, '
                    f"got {line.strip()!r:.200}"
                )
            entries.append((record["file"], record["caption"]))
    return entries


def load_square_rgb(path: str, image_size: int) -> np.ndarray:
    """Reads an image file as a centre-cropped, resized RGB square.

    Args:
      path: image file.
      image_size: output side S.

    Returns:
      uint8 [S, S, 3].

    Raises:
      OSError, ValueError (and other Pillow errors) if the file cannot be decoded; callers wrap
      them in DataError with the example's index.
    """
    with Image.open(path) as img:
        # `load` forces the full decode, so truncated data fails here, not later in a worker.
        img.load()
        rgb = img.convert("RGB")
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    rgb = rgb.crop((left, top, left + side, top + side))
    if side != image_size:
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


class ImageFolderSource:
    """Random-access source over a folder of captioned images.

    Example `i` is {"image": uint8 [S, S, 3], "tokens": int32 [max_text_len]}; captions longer
    than `max_text_len - 2` UTF-8 bytes are truncated.

    Args:
      directory: folder holding `captions.jsonl` and the images it names.
      image_size: output side S in pixels.
      max_text_len: token length, BOS and EOS included.

    Raises:
      DataError: if `captions.jsonl` is missing, malformed or empty.
    """

    def __init__(self, directory: str | os.PathLike, image_size: int, max_text_len: int):
        self.directory = os.fspath(directory)
        self.image_size = image_size
        self.max_text_len = max_text_len
        captions_path = os.path.join(self.directory, CAPTIONS_FILE)
        if not os.path.isfile(captions_path):
            raise DataError(
                f"no {CAPTIONS_FILE} in {self.directory}; write one line per image: "
                '{"file": "relative/path.png", "caption": "..."}'
            )
        self._entries = _read_captions(captions_path)
        if not self._entries:
            raise DataError(f"{captions_path} lists no images")

    def __len__(self) -> int:
        return len(self._entries)

    def _check(self, i: int) -> int:
        return check_index(i, len(self), "ImageFolderSource")

    def example(self, i: int) -> dict:
        """Returns {"caption": str, "file": str (relative to the directory)} of example `i`."""
        file, caption = self._entries[self._check(i)]
        return {"caption": caption, "file": file}

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = self._check(i)
        file, caption = self._entries[i]
        path = os.path.join(self.directory, file)
        try:
            image = load_square_rgb(path, self.image_size)
        except Exception as e:  # Pillow raises many types for bad files
            raise DataError(f"image {i} ({path}) could not be read: {type(e).__name__}: {e}") from e
        return {"image": image, "tokens": encode_caption(caption, self.max_text_len)}
