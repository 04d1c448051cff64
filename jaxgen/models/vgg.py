"""VGG16 and VGG19 features (Simonyan & Zisserman 2015): a perceptual loss from the published
ILSVRC weights, and any layer's activations (style transfer reads VGG19's).

``load_vgg`` reads the weights in the formats they are published in, told apart by the suffix:

- ``.npz``: the widely used NumPy conversion (``vgg16_weights.npz``), one array per layer:
  ``conv{b}_{i}_W`` ``[3, 3, Cin, Cout]`` (HWIO) and ``conv{b}_{i}_b`` ``[Cout]`` for the 13
  (VGG16) or 16 (VGG19) convolutions; or an ``.npz`` of torchvision's state dict (below).
- ``.safetensors``, ``.pth`` / ``.pt``: torchvision's ``vgg16`` / ``vgg19`` state dict
  (``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``): ``features.{idx}.weight``
  ``[Cout, Cin, 3, 3]`` (OIHW) and ``features.{idx}.bias``, ``idx`` the convolution's place in
  the ``features`` Sequential (a convolution and a ReLU per layer, a max-pool after each block).
  ``.safetensors`` is read here (F32, F16, BF16, F64); ``.pth`` needs torch.
- ``.h5``: Keras applications' ``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`` (and the
  VGG19 ones): per convolution a group ``block{b}_conv{i}`` with an HWIO kernel and a bias
  (``block1_conv1_W_1:0`` / ``block1_conv1_b_1:0`` in the published files,
  ``block1_conv1/kernel:0`` / ``.../bias:0`` in files Keras 2 saved); needs h5py. These
  networks take BGR input: conv1_1's input channels are reversed so that they take RGB.

The dense layers (``fc*``, ``classifier.*``, ``fc1``, ...) are ignored. Nothing is downloaded:
the file must already be on disk (``model.vgg_weights``).

Each format carries the input normalisation its network was trained with, kept in
``params["preprocess"]`` as ``mean`` and ``scale`` (RGB): the network sees
``([0, 255] pixels - mean) * scale``. The NumPy and Keras weights are Caffe's (RGB in [0, 255]
minus the ImageNet channel means, ``MEAN_RGB``); torchvision's expect
``Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))`` of RGB in [0, 1], which is
``mean = 255 * (0.485, 0.456, 0.406)``, ``scale = 1 / (255 * (0.229, 0.224, 0.225))``.

The perceptual distance is LPIPS's (Zhang et al. 2018) without its learned per-channel weights:
features at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are unit-normalised over channels,
and the squared differences are averaged over channels and positions and summed over layers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.layers import conv_same

#: (block, convs per block) of each network.
ARCHITECTURES = {
    "vgg16": ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)),
    "vgg19": ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)),
}
CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
#: Caffe's input normalisation (the NumPy and Keras weights): RGB in [0, 255] minus these.
MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)
#: torchvision's ``transforms.Normalize`` of [0, 1] RGB, on [0, 255] pixels.
TORCHVISION_MEAN = (255.0 * np.array([0.485, 0.456, 0.406])).astype(np.float32)
TORCHVISION_SCALE = (1.0 / (255.0 * np.array([0.229, 0.224, 0.225]))).astype(np.float32)

#: The suffixes ``load_vgg`` reads.
SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".h5")
#: The key layouts of the weight files: the NumPy conversion's, torchvision's and Keras'.
LAYOUTS = ("vgg", "torchvision", "keras")


def _blocks(arch: str):
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown VGG architecture {arch!r}; valid: {tuple(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def layer_names(arch: str = "vgg16") -> list[str]:
    return [f"conv{b}_{i}" for b, n in _blocks(arch) for i in range(1, n + 1)]


def architecture_of(params) -> str:
    """The network ``params`` hold: VGG19 has a fourth convolution in block 3, VGG16 not."""
    return "vgg19" if "conv3_4" in params else "vgg16"


def torchvision_indices(arch: str = "vgg16") -> dict[str, int]:
    """Each convolution's index in torchvision's ``features`` Sequential: a convolution and a
    ReLU per layer, one max-pool after each block."""
    out, idx = {}, 0
    for b, n in _blocks(arch):
        for i in range(1, n + 1):
            out[f"conv{b}_{i}"] = idx
            idx += 2
        idx += 1
    return out


def _layer_keys(arch: str, layout: str) -> dict[str, tuple[str, str, tuple, tuple]]:
    """``{layer: (kernel key, bias key, kernel shape, bias shape)}`` in a layout's own naming
    and axis order (Keras': the names Keras 2 gives them)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown VGG weight layout {layout!r}; valid: {LAYOUTS}")
    out, cin = {}, 3
    indices = torchvision_indices(arch)
    for name in layer_names(arch):
        cout = CHANNELS[int(name[4])]
        if layout == "vgg":
            keys = (f"{name}_W", f"{name}_b", (3, 3, cin, cout))
        elif layout == "torchvision":
            idx = indices[name]
            keys = (f"features.{idx}.weight", f"features.{idx}.bias", (cout, cin, 3, 3))
        else:
            group = "block{}_conv{}".format(*name[4:].split("_"))
            keys = (f"{group}/{group}/kernel:0", f"{group}/{group}/bias:0", (3, 3, cin, cout))
        out[name] = (*keys, (cout,))
        cin = cout
    return out


def expected_shapes(arch: str = "vgg16", layout: str = "vgg") -> dict[str, tuple[int, ...]]:
    """The shape of every array the loader needs, by key in ``layout`` (one of ``LAYOUTS``)."""
    shapes = {}
    for kernel, bias, kernel_shape, bias_shape in _layer_keys(arch, layout).values():
        shapes[kernel], shapes[bias] = kernel_shape, bias_shape
    return shapes


# -- reading the files --------------------------------------------------------------------------
# Each reader returns the file's array names and a function reading one of them (float32 numpy),
# so that the dense layers (most of a full file) are never read where the format allows.
_Source = tuple[list[str], Callable[[str], np.ndarray]]


def _npz_source(path: Path) -> _Source:
    with np.load(path) as f:
        names = list(f.files)

    def read(key: str) -> np.ndarray:
        with np.load(path) as f:
            return np.asarray(f[key])

    return names, read


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def _safetensors_source(path: Path) -> _Source:
    """The safetensors format: an 8-byte little-endian header length, a JSON header mapping
    names to ``{"dtype", "shape", "data_offsets"}`` (offsets into the bytes after the header),
    then the raw little-endian data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            if not 0 < n <= size - 8:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a safetensors file ({e}).") from None
    header.pop("__metadata__", None)
    start = 8 + n

    def read(key: str) -> np.ndarray:
        info = header[key]
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(
                f"{path}: {key} has dtype {dtype}; supported: {', '.join(_SAFETENSORS_DTYPES)}."
            )
        with open(path, "rb") as f:
            f.seek(start + begin)
            data = f.read(end - begin)
        a = np.frombuffer(data, _SAFETENSORS_DTYPES[dtype])
        if a.size != int(np.prod(shape)):
            raise ValueError(f"{path}: {key} holds {a.size} values, not {shape}'s.")
        if dtype == "BF16":  # bfloat16 is float32's upper half
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a.reshape(shape)

    return list(header), read


def _torch_source(path: Path) -> _Source:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path.name} (a PyTorch state dict) needs torch: install it (the bench "
            'extra: pip install -e ".[bench]"), or convert the file to .safetensors or .npz.'
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return list(tensors), lambda key: tensors[key].detach().to(torch.float32).numpy()


_KERAS_LAYER = re.compile(r"block(\d+)_conv(\d+)")
_KERAS_KERNEL = re.compile(r"kernel|_W(_\d+)?(:\d+)?$")
_KERAS_BIAS = re.compile(r"bias|_b(_\d+)?(:\d+)?$")


def _keras_source(path: Path) -> tuple[_Source, dict[tuple[str, str], str]]:
    """Also returns ``{(layer, "kernel" | "bias"): dataset name}``: the datasets are found by
    walking the file, under a group ``block{b}_conv{i}`` (at any depth: a whole saved model
    keeps them under ``model_weights``)."""
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"Reading {path.name} (Keras weights) needs h5py: pip install h5py."
        ) from None
    found: dict[tuple[str, str], str] = {}

    def visit(name: str, obj) -> None:
        parts = name.split("/")
        if not isinstance(obj, h5py.Dataset) or parts[0] == "optimizer_weights":
            return
        layer = next((p for p in parts[:-1] if _KERAS_LAYER.fullmatch(p)), None)
        if layer is None:
            return
        b, i = _KERAS_LAYER.fullmatch(layer).groups()
        kind = "kernel" if _KERAS_KERNEL.search(parts[-1]) else None
        kind = kind or ("bias" if _KERAS_BIAS.search(parts[-1]) else None)
        if kind is not None:
            found.setdefault((f"conv{b}_{i}", kind), name)

    with h5py.File(path, "r") as f:
        f.visititems(visit)

    def read(key: str) -> np.ndarray:
        with h5py.File(path, "r") as f:
            return np.asarray(f[key][()])

    return (list(found.values()), read), found


def _count_convolutions(names, layout: str, found=None) -> int:
    if layout == "keras":
        return sum(kind == "kernel" for _, kind in found)
    pattern = r"conv\d+_\d+_W" if layout == "vgg" else r"features\.\d+\.weight"
    return sum(re.fullmatch(pattern, k) is not None for k in names)


def load_vgg(path: str | Path, arch: str | None = None) -> dict[str, dict[str, jax.Array]]:
    """Reads VGG16 or VGG19 weights in one of the formats above: ``{"conv1_1": {"kernel",
    "bias"}, ..., "preprocess": {"mean", "scale"}}`` (float32, kernels HWIO, RGB input).

    Args:
      path: a ``.npz``, ``.safetensors``, ``.pth`` / ``.pt`` or ``.h5`` file.
      arch: "vgg16" or "vgg19", checked against the file; None: told from the file's number of
        convolutions.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unsupported suffix; a missing array or one of the wrong shape (named as the
        file names it, with the shape expected); a file of the other network than ``arch``.
      ImportError: a ``.pth`` file without torch installed.
    """
    if arch is not None:
        _blocks(arch)
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported VGG weight file suffix {path.suffix!r}; supported: "
            f"{', '.join(SUFFIXES)}."
        )
    if not path.is_file():
        what = f"{arch.upper()} weight file" if arch else "VGG16 weight file (nor VGG19)"
        raise FileNotFoundError(f"No {what} at {path}.")
    found = None
    if suffix == ".npz":
        names, read = _npz_source(path)
    elif suffix == ".safetensors":
        names, read = _safetensors_source(path)
    elif suffix == ".h5":
        (names, read), found = _keras_source(path)
    else:
        names, read = _torch_source(path)
    if found is not None:
        layout = "keras"
    elif any(re.fullmatch(r"conv\d+_\d+_W", k) for k in names):
        layout = "vgg"
    elif any(k.startswith("features.") for k in names):
        layout = "torchvision"
        if any(k.endswith(".running_mean") for k in names):
            raise ValueError(
                f"{path} holds a batch-normalised VGG (torchvision's vgg16_bn / vgg19_bn): not "
                "supported, only vgg16 and vgg19."
            )
    else:  # neither: the error below names the first array missing
        layout = "torchvision" if suffix in (".safetensors", ".pth", ".pt") else "vgg"

    count = _count_convolutions(names, layout, found)
    arch = arch or ("vgg19" if count > len(layer_names("vgg16")) else "vgg16")
    params = {}
    for i, (name, spec) in enumerate(_layer_keys(arch, layout).items()):
        kernel_key, bias_key, kernel_shape, bias_shape = spec
        if found is not None:  # Keras: the names the file gives them
            kernel_key = found.get((name, "kernel"), kernel_key)
            bias_key = found.get((name, "bias"), bias_key)
        arrays = []
        for key, shape in ((kernel_key, kernel_shape), (bias_key, bias_shape)):
            if key not in names:
                raise ValueError(
                    f"{path} has no array {key!r}: not a {arch.upper()} weight file "
                    f"(expected {key} of shape {shape})."
                )
            a = np.asarray(read(key), np.float32)
            if tuple(a.shape) != shape:
                raise ValueError(f"{path}: {key} has shape {tuple(a.shape)}, expected {shape}.")
            arrays.append(a)
        kernel, bias = arrays
        if layout == "torchvision":
            kernel = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif layout == "keras" and i == 0:
            kernel = kernel[:, :, ::-1, :]  # BGR -> RGB input
        params[name] = {
            "kernel": jnp.asarray(np.ascontiguousarray(kernel)),
            "bias": jnp.asarray(bias),
        }
    want = len(layer_names(arch))
    if count != want:
        other = "vgg19" if arch == "vgg16" else "vgg16"
        hint = (
            f"a {other.upper()} weight file? (arch={other!r} or None)"
            if count == len(layer_names(other))
            else "not a VGG weight file?"
        )
        raise ValueError(f"{path} holds {count} convolutions, {arch.upper()} {want}: {hint}")
    if layout == "torchvision":
        mean, scale = TORCHVISION_MEAN, TORCHVISION_SCALE
    else:
        mean, scale = MEAN_RGB, np.ones(3, np.float32)
    params["preprocess"] = {"mean": jnp.asarray(mean), "scale": jnp.asarray(scale)}
    return params


def activations(params, images: jax.Array, names) -> dict[str, jax.Array]:
    """The post-ReLU activations of the convolutions ``names`` (e.g. "conv4_2", "conv1_1": the
    layers Gatys et al. name), computed up to the deepest one asked for.

    Args:
      params: ``load_vgg``'s result (VGG16 or VGG19, told apart by its layers; without
        ``"preprocess"``, Caffe's: ``MEAN_RGB`` subtracted).
      images: ``[B, H, W, 3]`` in [-1, 1].
      names: layer names of that network.

    Returns:
      ``{name: [B, H / 2**(b-1), W / 2**(b-1), C_b]}`` for each ``conv{b}_{i}`` asked for.
    """
    order = layer_names(architecture_of(params))
    unknown = [n for n in names if n not in order]
    if unknown:
        raise ValueError(f"unknown VGG layers {unknown}; valid: {order}")
    last = max(order.index(n) for n in names)
    pre = params.get("preprocess") or {"mean": MEAN_RGB, "scale": np.ones(3, np.float32)}
    h = ((images.astype(jnp.float32) + 1.0) * 127.5 - pre["mean"]) * pre["scale"]
    out = {}
    for name in order[: last + 1]:
        b, i = (int(v) for v in name[4:].split("_"))
        if b > 1 and i == 1:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
        p = params[name]
        h = jax.nn.relu(conv_same(h, p["kernel"]) + p["bias"])
        if name in names:
            out[name] = h
    return out


def features(params, images: jax.Array) -> list[jax.Array]:
    """The relu{b}_{last} activation of every block.

    Args:
      params: ``load_vgg``'s result.
      images: ``[B, H, W, 3]`` in [-1, 1].

    Returns:
      Five ``[B, H / 2**b, W / 2**b, C_b]`` arrays (b = 0..4).
    """
    last = [f"conv{b}_{n}" for b, n in _blocks(architecture_of(params))]
    acts = activations(params, images, last)
    return [acts[name] for name in last]


def perceptual_distance(params, x: jax.Array, y: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Per-image distance ``[B]`` between images in [-1, 1] (0 for identical images)."""
    total = 0.0
    for fx, fy in zip(features(params, x), features(params, y), strict=True):
        fx = fx * jax.lax.rsqrt(jnp.sum(jnp.square(fx), axis=-1, keepdims=True) + eps)
        fy = fy * jax.lax.rsqrt(jnp.sum(jnp.square(fy), axis=-1, keepdims=True) + eps)
        total = total + jnp.mean(jnp.square(fx - fy), axis=(1, 2, 3))
    return total
