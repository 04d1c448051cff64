"""Image grids and PNG files."""

import math
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W, 3]`` uint8 images into one ``[H', W', 3]`` image with a grey border."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 96, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Writes a uint8 ``[H, W, 3]`` image, optionally upscaled (nearest) for viewing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(image, np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path
