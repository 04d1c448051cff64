"""Datasets: embedded (shapes, digits), TFDS, image folders; batching with grain."""

from jaxgen.data.pipeline import DataError, make_batch_iterator

__all__ = ["DataError", "SOURCES", "build_source", "make_batch_iterator"]

SOURCES = ("shapes", "shapes_layouts", "scenes", "digits", "tfds", "folder", "content_crops")
#: jaxgen split -> TFDS split spec (``data.tfds_splits`` overrides it).
TFDS_SPLITS = {"train": "train[:98%]", "val": "train[98%:]", "test": "test"}


def build_source(data_config, split: str):
    """A random-access source for ``data_config.name`` and ``split``.

    Args:
      data_config: ``config.data`` with at least ``name``, ``image_size``, ``max_text_len``;
        ``tfds`` also needs ``tfds_name`` (and optionally ``data_dir``), ``folder`` needs
        ``directory`` (and optionally ``val_directory`` and ``test_directory`` for evaluation
        prompts).
      split: "train", "val", "test" (and "heldout_val", "heldout" for shapes and scenes). For TFDS,
        ``data_config.tfds_splits`` maps each to a TFDS split spec (by default ``val`` is the
        last 2% of TFDS ``train``, which ``train`` then leaves out).

    ``data_config.parse_labels`` (shapes only) adds each training caption's content as class
    labels, ``"parse"`` (``shapes.parse_labels``).
    """
    name = data_config.name
    parse = bool(data_config.get("parse_labels", False))
    if parse and name != "shapes":
        raise ValueError(
            f"data.parse_labels needs a dataset with ground truth (shapes); {name!r} has none. "
            "Set --config.data.parse_labels=False."
        )
    size, max_len = int(data_config.image_size), int(data_config.max_text_len)
    if name == "shapes":
        from jaxgen.data.shapes import ShapesSource

        return ShapesSource(
            split=split,
            image_size=size,
            seed=int(data_config.get("seed", 0)),
            max_text_len=max_len,
            parse_labels=parse and split == "train",
        )
    if name == "shapes_layouts":
        from jaxgen.data.shapes_layout import ShapesLayoutSource

        return ShapesLayoutSource(
            split=split, image_size=size, seed=int(data_config.get("seed", 0)), max_text_len=max_len
        )
    if name == "scenes":
        from jaxgen.data.scenes import ScenesSource

        return ScenesSource(
            split=split, image_size=size, seed=int(data_config.get("seed", 0)), max_text_len=max_len
        )
    if name == "digits":
        from jaxgen.data.digits import DigitsSource

        return DigitsSource(
            split=split,
            image_size=size,
            max_text_len=max_len,
            seed=int(data_config.get("seed", 0)),
        )
    if name == "tfds":
        from jaxgen.data.tfds_source import TfdsSource

        specs = dict(data_config.get("tfds_splits") or TFDS_SPLITS)
        if split not in specs:
            raise ValueError(
                f"No TFDS split for {split!r}: data.tfds_splits maps only {sorted(specs)}."
            )
        return TfdsSource(
            data_config.tfds_name,
            split=specs[split],
            image_size=size,
            max_text_len=max_len,
            data_dir=data_config.get("data_dir") or None,
        )
    if name == "content_crops":
        from jaxgen.data.style_images import ContentCrops

        # Style transfer's fast variant: crops of photographs and scenes, no captions.
        return ContentCrops(size, seed=int(data_config.get("seed", 0)), split=split)
    if name == "folder":
        from jaxgen.data.folder import ImageFolderSource

        # One folder is one split: pass a different directory per split via the config.
        directory = data_config.get(f"{split}_directory") or data_config.directory
        return ImageFolderSource(directory, image_size=size, max_text_len=max_len)
    raise ValueError(f"Unknown dataset {name!r}. Valid datasets: {', '.join(SOURCES)}.")
