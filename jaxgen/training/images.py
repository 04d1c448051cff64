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


def plot_curve(values, title: str = "", width: int = 480, height: int = 300) -> np.ndarray:
    """A line plot of ``values`` against their index as a uint8 ``[height, width, 3]`` image,
    on a log scale when every value is positive (losses span decades), with the first and last
    values and the range written on it."""
    from PIL import ImageDraw

    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 10, width - 10, 24, height - 24
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    if v.size == 0:
        draw.text((left, 4), f"{title}: no values", fill=(0, 0, 0))
        return np.asarray(img)
    log = bool(np.all(v > 0))
    y = np.log10(v) if log else v
    lo, hi = float(y.min()), float(y.max())
    span = hi - lo or 1.0
    xs = left + (right - left) * np.arange(v.size) / max(v.size - 1, 1)
    ys = bottom - (bottom - top) * (y - lo) / span
    draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(31, 119, 180), width=2)
    scale = "log10 " if log else ""
    draw.text((left, 4), f"{title} ({scale}y; {v.size} points)", fill=(0, 0, 0))
    draw.text(
        (left, bottom + 6),
        f"first {v[0]:.4g}   last {v[-1]:.4g}   min {v.min():.4g}   max {v.max():.4g}",
        fill=(0, 0, 0),
    )
    return np.asarray(img)
