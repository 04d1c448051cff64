"""Images for style transfer: files or the sample images inside scikit-image's wheel, their
colour conversions, and the content set the fast (feed-forward) variant trains on.

An image is named by a path (PNG, JPEG, ... anything Pillow reads) or by one of ``BUNDLED``:
scikit-image ships these inside its package, so they load offline. (Other ``skimage.data``
images are downloaded on first use and are never used here.)

Images are uint8 ``[H, W, 3]`` RGB. Grey images are repeated over the three channels; an alpha
channel is composited over white (what an image viewer shows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxgen.data.pipeline import DataError

#: Sample images that ship inside scikit-image's wheel: photographs for content, textures and
#: pictures for style (brick, gravel and grass are grey).
BUNDLED_CONTENT = ("astronaut", "chelsea", "coffee", "rocket")
BUNDLED_STYLE = ("hubble_deep_field", "immunohistochemistry", "brick", "gravel", "grass")
BUNDLED = BUNDLED_CONTENT + BUNDLED_STYLE
#: The smallest side a feature network with four poolings can read.
MIN_SIZE = 16


def to_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a grey ``[H, W]`` / ``[H, W, 1]``, RGB or RGBA array (alpha
    composited over white); floats in [0, 1] are scaled to [0, 255]."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{name}: expected a numeric image array, got dtype {a.dtype}")
        scale = 255.0 if a.size and float(np.max(a)) <= 1.0 else 1.0
        a = np.clip(np.round(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(
            f"{name}: expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape "
            f"{a.shape}"
        )
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        rgb = a[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.round(rgb).astype(np.uint8)
    return a


def load_image(spec, name: str = "image") -> np.ndarray:
    """An image from a path, a ``BUNDLED`` name or an array, as uint8 RGB ``[H, W, 3]``.

    Raises:
      FileNotFoundError: a path that does not exist (and is no bundled name).
      DataError: a file Pillow cannot read, or an image smaller than ``MIN_SIZE``.
    """
    if isinstance(spec, np.ndarray) or hasattr(spec, "__array__"):
        image = to_rgb(np.asarray(spec), name)
    elif str(spec) in BUNDLED:
        import skimage.data

        image = to_rgb(getattr(skimage.data, str(spec))(), str(spec))
    else:
        path = Path(str(spec)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: no file {str(spec)!r} (and not a bundled image: {', '.join(BUNDLED)})"
            )
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im
                image = to_rgb(np.asarray(im.convert("RGBA" if im.mode == "RGBA" else "RGB")))
        except UnidentifiedImageError as e:
            raise DataError(f"{name}: {path} is not an image Pillow can read") from e
    if min(image.shape[:2]) < MIN_SIZE:
        raise DataError(
            f"{name}: {image.shape[1]}x{image.shape[0]} is too small; style transfer needs at "
            f"least {MIN_SIZE} pixels a side."
        )
    return image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` resampled to ``[height, width, 3]`` (Lanczos)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def fit(image: np.ndarray, size: int, multiple: int = 1) -> np.ndarray:
    """``image`` resized so its longer side is ``size`` (0: unchanged), keeping its aspect ratio;
    both sides rounded to a multiple of ``multiple``."""
    h, w = image.shape[:2]
    if size:
        s = size / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    h, w = (max(multiple, round(v / multiple) * multiple) for v in (h, w))
    return resize(image, h, w)


# -- colour ---------------------------------------------------------------------------------
# YIQ (NTSC): Y is the luminance, I and Q the chrominance; jcjohnson/neural-style's
# original_colors keeps the content's I and Q under the result's Y.
_RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.59590059, -0.27455667, -0.32134392],
        [0.21153661, -0.52273617, 0.31119955],
    ],
    np.float64,
)


def rgb_to_yiq(rgb: np.ndarray) -> np.ndarray:
    """float ``[..., 3]`` RGB in [0, 1] -> YIQ."""
    return np.asarray(rgb, np.float64) @ _RGB_TO_YIQ.T


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    return np.asarray(yiq, np.float64) @ np.linalg.inv(_RGB_TO_YIQ).T


def keep_colors(result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Luminance-only transfer (Gatys et al. 2017): the result's luminance with the content's
    chrominance; uint8 ``[..., H, W, 3]`` of the same shape."""
    r, c = (np.asarray(a, np.float64) / 255.0 for a in (result, content))
    yiq = rgb_to_yiq(c)
    yiq[..., 0] = rgb_to_yiq(r)[..., 0]
    return np.clip(np.round(yiq_to_rgb(yiq) * 255.0), 0, 255).astype(np.uint8)


def match_colors(source: np.ndarray, target: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Colour histogram matching (Gatys et al. 2017): ``source``'s pixels linearly transformed
    so their mean and covariance are ``target``'s (the matrix square-root transfer); uint8.

    Used to give the style image the content image's colours before a transfer.
    """
    s = np.asarray(source, np.float64).reshape(-1, 3) / 255.0
    t = np.asarray(target, np.float64).reshape(-1, 3) / 255.0
    mu_s, mu_t = s.mean(0), t.mean(0)
    cov_s = np.cov(s, rowvar=False) + eps * np.eye(3)
    cov_t = np.cov(t, rowvar=False) + eps * np.eye(3)

    def sqrtm(c, power):
        w, v = np.linalg.eigh(c)
        return (v * np.maximum(w, eps) ** power) @ v.T

    a = sqrtm(cov_t, 0.5) @ sqrtm(cov_s, -0.5)
    out = (s - mu_s) @ a.T + mu_t
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8).reshape(np.shape(source))


def color_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[3]`` and covariance ``[3, 3]`` of an image's RGB in [0, 1]."""
    x = np.asarray(image, np.float64).reshape(-1, 3) / 255.0
    return x.mean(0), np.cov(x, rowvar=False)


def color_distance(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two images' colour distributions are: the Fréchet distance between the
    Gaussians of their RGB values in [0, 1] (0 for the same distribution)."""
    from scipy import linalg

    mu_a, cov_a = color_statistics(a)
    mu_b, cov_b = color_statistics(b)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * covmean))


# -- the fast variant's content set ---------------------------------------------------------
class ContentCrops:
    """Random-access crops for training a feed-forward stylisation network: square crops of
    three bundled photographs (astronaut, coffee, rocket) at random positions and scales, and
    procedural pictures (the embedded clip-art ``scenes`` dataset, upsampled), ``size`` pixels
    a side, flipped at random.

    Item ``i`` is a fixed function of ``(seed, i)``: ``{"image": uint8 [size, size, 3]}``.
    """

    def __init__(self, size: int, num: int = 4096, seed: int = 0, split: str = "train"):
        if size < MIN_SIZE:
            raise ValueError(f"crops need at least {MIN_SIZE} pixels a side, got {size}")
        self.size, self.num = int(size), int(num)
        # Never chelsea, the content both variants are judged on: the evaluation crops are its.
        names = ("astronaut", "coffee", "rocket") if split == "train" else ("chelsea",)
        self.photos = [load_image(n) for n in names]
        self.seed = (int(seed), 0 if split == "train" else 1)
        self._scenes = None

    def __len__(self) -> int:
        return self.num

    def _scene(self, rng) -> np.ndarray:
        if self._scenes is None:
            from jaxgen.data import scenes

            self._scenes = scenes.ScenesSource("train", image_size=64, seed=self.seed[0])
        item = self._scenes[int(rng.integers(len(self._scenes)))]
        return resize(np.asarray(item["image"]), self.size, self.size)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((*self.seed, int(i)))
        if rng.random() < 0.25:
            image = self._scene(rng)
        else:
            photo = self.photos[int(rng.integers(len(self.photos)))]
            h, w = photo.shape[:2]
            side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
            y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            image = resize(photo[y : y + side, x : x + side], self.size, self.size)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image)}
