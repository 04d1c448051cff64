"""Prepared TensorFlow Datasets (mnist, cifar10, ...) as random-access captioned sources.

Reads through `tfds.data_source`, i.e. array_record files decoded with numpy and Pillow: no
TensorFlow at run time and no download (a dataset must have been prepared beforehand, once, with
`tfds build NAME --file_format=array_record`, which does need TensorFlow). Images become uint8
RGB squares of `image_size`; captions come from the dataset's class names ("a photo of a cat",
"a handwritten 7" for mnist) unless a `caption_fn` is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxgen.data.pipeline import DataError, check_index, encode_caption

# Datasets whose images are handwritten characters, not photos.
_HANDWRITTEN = ("mnist", "emnist", "kmnist", "binarized_mnist")


def default_caption(dataset_name: str, label_name: str) -> str:
    """Returns the class-name caption of an example.

    Args:
      dataset_name: TFDS name, e.g. "mnist" or "cifar10" (a config suffix "/..." is ignored).
      label_name: the ClassLabel name, e.g. "7" or "airplane".

    Returns:
      "a handwritten 7" for digit/character datasets, else "a photo of a cat" / "an airplane".
    """
    base = dataset_name.split("/")[0].split(":")[0]
    name = label_name.replace("_", " ").strip()
    if base in _HANDWRITTEN:
        return f"a handwritten {name}"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"a photo of {article} {name}"


def to_square_rgb(image: np.ndarray, image_size: int) -> np.ndarray:
    """Converts a decoded TFDS image to a uint8 RGB square.

    Args:
      image: uint8 [H, W, C] with C in {1, 3, 4}, or [H, W].
      image_size: output side S.

    Returns:
      uint8 [S, S, 3]: grey replicated to 3 channels, alpha dropped, centre-cropped to a square
      and bicubically resized when the size differs.
    """
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 1|3|4], got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {x.dtype}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    h, w = x.shape[:2]
    if (h, w) == (image_size, image_size):
        return np.ascontiguousarray(x)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pil = Image.fromarray(np.ascontiguousarray(x[top : top + side, left : left + side]))
    return np.asarray(pil.resize((image_size, image_size), Image.Resampling.BICUBIC))


def _not_prepared_message(name: str, split: str, data_dir: str | None, error: Exception) -> str:
    where = (
        data_dir
        if data_dir is not None
        else "the default TFDS data dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets)"
    )
    dir_flag = f" --data_dir={data_dir}" if data_dir is not None else ""
    return (
        f"TFDS dataset {name!r} (split {split!r}) is not available as array_record in {where}: "
        f"{type(error).__name__}: {error}\n"
        f"Prepare it once, in an environment with TensorFlow (pip install 'jaxgen[tfds-build]'):\n"
        f"  tfds build {name} --file_format=array_record{dir_flag}\n"
        f"jaxgen never downloads at run time."
    )


class TfdsSource:
    """Random-access source over a prepared TFDS dataset.

    Example `i` is {"image": uint8 [S, S, 3], "tokens": int32 [max_text_len]} plus
    "label": int32 [] when the dataset has a class label.

    Args:
      name: TFDS name, e.g. "mnist", "cifar10", "mnist:3.0.1".
      split: TFDS split spec, e.g. "train", "test[:10%]".
      image_size: output side S in pixels.
      max_text_len: token length, BOS and EOS included; longer captions are truncated.
      data_dir: TFDS data dir holding the prepared dataset; None for the TFDS default.
      caption_fn: optional `caption_fn(raw_example: dict, label_names: list[str] | None) -> str`,
        for datasets whose caption is not a class name (e.g. coco_captions).
      image_key: feature holding the image.
      label_key: feature holding the class label (ignored if the dataset has none).

    Raises:
      DataError: if the dataset is not prepared as array_record under `data_dir`; the message
        names the dataset and directory and gives the command that prepares it.
    """

    def __init__(
        self,
        name: str,
        split: str,
        image_size: int,
        max_text_len: int,
        data_dir: str | os.PathLike | None = None,
        caption_fn: Callable[[dict[str, Any], Sequence[str] | None], str] | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        # Imported here: tensorflow_datasets is only needed by users of TFDS data.
        import tensorflow_datasets as tfds

        data_dir = os.fspath(data_dir) if data_dir is not None else None
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types for "not prepared"
            raise DataError(_not_prepared_message(name, split, data_dir, e)) from e
        self.name = name
        self.split = split
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.image_key = image_key
        self._caption_fn = caption_fn
        features = self._ds.dataset_info.features
        if image_key not in features:
            raise ValueError(
                f"{name} has no image feature {image_key!r}; features: {list(features.keys())}"
            )
        label_feature = features[label_key] if label_key in features else None
        names = getattr(label_feature, "names", None)
        self.label_key = label_key if label_feature is not None else None
        self.label_names: list[str] | None = list(names) if names else None
        if caption_fn is None and self.label_names is None:
            raise ValueError(
                f"{name} has no class label {label_key!r} to caption from; pass caption_fn"
            )

    def __len__(self) -> int:
        return len(self._ds)

    def _check(self, i: int) -> int:
        return check_index(i, len(self), f"TfdsSource({self.name!r})")

    def _caption(self, raw: dict[str, Any]) -> str:
        if self._caption_fn is not None:
            return self._caption_fn(raw, self.label_names)
        return default_caption(self.name, self.label_names[int(raw[self.label_key])])

    def example(self, i: int) -> dict:
        """Returns {"caption": str} and, for labelled datasets, "label": int of example `i`."""
        raw = self._ds[self._check(i)]
        out = {"caption": self._caption(raw)}
        if self.label_key is not None:
            out["label"] = int(raw[self.label_key])
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        raw = self._ds[self._check(i)]
        out = {
            "image": to_square_rgb(raw[self.image_key], self.image_size),
            "tokens": encode_caption(self._caption(raw), self.max_text_len),
        }
        if self.label_key is not None:
            out["label"] = np.int32(raw[self.label_key])
        return out
