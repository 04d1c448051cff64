"""Layouts on `shapes`: the `shapes` captions as Text2Scene's task (the paper's COCO-layout task
in miniature). Each object is a category (its shape), two attributes (colour, size) and a cell
of a `GRID` x `GRID` grid holding its box's centre; a layout is drawn by the `shapes` renderer's
masks, so a layout model is a text-to-image model the shapes judge can score.

This module has the same layout interface as `jaxgen.data.scenes` (``OBJECTS``,
``ATTRIBUTE_VALUES``, ``applies``, ``GRID``, ``MAX_OBJECTS``, ``VOCAB``, ``sprite_bank``, a
source), so the Text2Scene pipeline composes either. Its dataset name is ``shapes_layouts``: the
`shapes` examples (same splits, same captions, same judge) with word ids and layout arrays.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxgen.data import scenes, shapes

OBJECTS: tuple[str, ...] = shapes.SHAPES
ATTRIBUTE_VALUES: dict[str, tuple] = {"colour": shapes.COLOUR_NAMES, "size": shapes.SIZES}
ATTRIBUTES: dict[str, int] = {k: len(v) for k, v in ATTRIBUTE_VALUES.items()}
DEFAULTS: dict[str, object] = {"colour": None, "size": None}
GRID = 16
MAX_OBJECTS = 2
END = len(OBJECTS)
#: The captions' byte budget: that of every family's `shapes` captions (``data.max_text_len``
#: of the pixel models), so that a layout model reads the same captions they do.
#: ``max_text_len`` of a layouts source is its word budget.
CAPTION_BYTES = 64
SPLITS = shapes.SPLITS
HELDOUT_SPLITS = shapes.HELDOUT_SPLITS


def applies(name: str, attribute: str) -> bool:
    """Every shape has a colour and a size."""
    del name, attribute
    return True


def _grammar_words() -> list[str]:
    words = set()
    for text in (
        *shapes._SINGLE_TEMPLATES,
        *shapes._PAIR_TEMPLATES,
        *(w for ws in shapes._SIZE_WORDS.values() for w in ws),
        *(w for ws in shapes._REL_WORDS.values() for w in ws),
        *(w for ws in shapes._REL_ITS_WORDS.values() for w in ws),
        *shapes.COLOUR_NAMES,
        *shapes.SHAPES,
    ):
        words.update(scenes.split_words(text.replace("{a}", "").replace("{b}", "")))
    return sorted(words)


#: The caption vocabulary: id 0 is padding, words from 1.
VOCAB: tuple[str, ...] = ("<pad>", *_grammar_words())
_WORD_IDS = {w: i for i, w in enumerate(VOCAB)}


def encode_words(text: object, max_words: int) -> np.ndarray:
    """`scenes.encode_words` with this vocabulary."""
    return scenes.encode_words(text, max_words, _WORD_IDS)


def layout(truth: dict, image_size: int) -> list[dict]:
    """A `shapes` ground truth as layout objects, in the truth's order: name (shape), colour,
    size and the cell of the box's centre."""
    cell = image_size / GRID
    out = []
    for o in truth["objects"]:
        x0, y0, x1, y1 = o["box"]
        out.append(
            {
                "name": o["shape"],
                "colour": o["colour"],
                "size": o["size"],
                "x": min(int((x0 + x1) / 2 / cell), GRID - 1),
                "y": min(int((y0 + y1) / 2 / cell), GRID - 1),
            }
        )
    return out


def truth_objects(truth: dict) -> list[dict]:
    """The layout of a `ShapesLayoutSource` ground truth."""
    return truth["layout"]


class SpriteBank:
    """Every (shape, colour, size) of the `shapes` renderer as an RGBA sprite (see
    `scenes.SpriteBank` for the attributes); the background is black."""

    def __init__(self, image_size: int):
        self.image_size, self.grid = int(image_size), GRID
        sides = shapes.object_sizes(image_size)
        big = max(sides.values())
        self.index = np.zeros((len(OBJECTS), *ATTRIBUTES.values()), np.int32)
        sprites, dims = [], []
        for t, shape in enumerate(OBJECTS):
            for c, colour in enumerate(shapes.COLOUR_NAMES):
                for z, size in enumerate(shapes.SIZES):
                    side = sides[size]
                    rgba = np.zeros((big, big, 4), np.uint8)
                    mask = shapes.shape_mask(shape, side, side)
                    rgba[:side, :side, :3][mask] = shapes.COLOURS[colour]
                    rgba[:side, :side, 3][mask] = 255
                    self.index[t, c, z] = len(sprites)
                    sprites.append(rgba)
                    dims.append((side, side))
        self.sprites = np.stack(sprites)
        self.shapes = np.asarray(dims, np.int32)
        self.background = np.zeros((image_size, image_size, 3), np.uint8)

    def sprite_id(self, obj: dict) -> int:
        t = OBJECTS.index(obj["name"])
        c = shapes.COLOUR_NAMES.index(obj["colour"])
        return int(self.index[t, c, shapes.SIZES.index(obj["size"])])

    def top_left(self, sprite: int, x: int, y: int) -> tuple[int, int]:
        h, w = (int(v) for v in self.shapes[sprite])
        cell = self.image_size / self.grid
        return int(np.floor((y + 0.5) * cell - h / 2)), int(np.floor((x + 0.5) * cell - w / 2))


@functools.lru_cache(maxsize=8)
def sprite_bank(image_size: int) -> SpriteBank:
    return SpriteBank(image_size)


def sprite_size(name: str, size: str, image_size: int) -> tuple[int, int]:
    """(height, width) in pixels of a shape of ``size``."""
    del name
    side = shapes.object_sizes(image_size)[size]
    return side, side


def render(objects, image_size: int = 32) -> np.ndarray:
    """A layout drawn by the sprites (the `shapes` masks at the cells' centres)."""
    return scenes.render_scene(objects, image_size, sprite_bank(image_size))


def scene_arrays(objects) -> dict[str, np.ndarray]:
    import sys

    return scenes.scene_arrays(objects, sys.modules[__name__])


def objects_from_arrays(types, attributes, locations) -> list[dict]:
    import sys

    return scenes.objects_from_arrays(types, attributes, locations, sys.modules[__name__])


class ShapesLayoutSource(shapes.ShapesSource):
    """`shapes` examples with word ids as "tokens" (``max_text_len`` words) and the layout
    arrays of `scenes.scene_arrays`; ``truth(i)`` is the `shapes` truth with its "layout".

    The captions are those of a `shapes` source with the pixel models' byte budget
    (`CAPTION_BYTES`), whatever the word budget: the same scenes and the same words."""

    def truth(self, index: int) -> dict:
        truth = shapes.sample_truth(
            self.split, self._index(index), self.seed, self.image_size, CAPTION_BYTES
        )
        truth["layout"] = layout(truth, self.image_size)
        return truth

    def example(self, index: int) -> dict:
        ex = self.truth(index)
        ex["image"] = shapes.render_scene(ex["objects"], self.image_size)
        ex["tokens"] = encode_words(ex["caption"], self.max_text_len)
        return ex

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        ex = self.example(index)
        return {"image": ex["image"], "tokens": ex["tokens"], **scene_arrays(ex["layout"])}
