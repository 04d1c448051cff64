"""VGG16 and VGG19 (the feature networks of the perceptual loss and of style transfer): the
loader on files the test writes in every format it reads (the NumPy conversion's .npz,
torchvision's state dict as .safetensors, .npz and .pth, Keras' .h5), the layers' shapes, the
first convolutions against direct computations with each format's input normalisation (and
against torch's where installed), the perceptual distance, and bad inputs."""

import sys

import h5py
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from helpers import fake_vgg_file, torchvision_vgg_arrays
from safetensors.numpy import save_file

from jaxgen.models import vgg


def test_vgg19_has_sixteen_convolutions_and_loads_from_a_written_file(tmp_path):
    assert len(vgg.layer_names("vgg19")) == 16 and len(vgg.layer_names("vgg16")) == 13
    arrays = fake_vgg_file(tmp_path / "vgg19.npz", "vgg19")
    params = vgg.load_vgg(tmp_path / "vgg19.npz", "vgg19")
    assert vgg.architecture_of(params) == "vgg19"
    np.testing.assert_array_equal(params["conv5_4"]["kernel"], arrays["conv5_4_W"])
    assert "fc6" not in params


def test_activations_of_the_layers_gatys_et_al_read(tmp_path):
    fake_vgg_file(tmp_path / "vgg19.npz", "vgg19")
    params = vgg.load_vgg(tmp_path / "vgg19.npz", "vgg19")
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 48, 3)), jnp.float32)
    names = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1"]
    acts = vgg.activations(params, x, names)
    assert list(acts) == names
    for name, (h, w, c) in zip(
        names,
        [(32, 48, 64), (16, 24, 128), (8, 12, 256), (4, 6, 512), (4, 6, 512), (2, 3, 512)],
        strict=True,
    ):
        assert acts[name].shape == (2, h, w, c), name
        assert float(acts[name].min()) >= 0.0  # post-ReLU
    # features() reads the last convolution of every block, VGG19's fourth in blocks 3-5.
    feats = vgg.features(params, x)
    np.testing.assert_array_equal(feats[4], vgg.activations(params, x, ["conv5_4"])["conv5_4"])


def test_the_first_convolution_against_a_direct_sum(tmp_path):
    fake_vgg_file(tmp_path / "vgg16.npz")
    params = vgg.load_vgg(tmp_path / "vgg16.npz")
    x = np.random.default_rng(2).uniform(-1, 1, (1, 5, 4, 3)).astype(np.float32)
    got = np.asarray(vgg.activations(params, jnp.asarray(x), ["conv1_1"])["conv1_1"])
    k = np.asarray(params["conv1_1"]["kernel"])
    bias = np.asarray(params["conv1_1"]["bias"])
    pixels = np.pad((x[0] + 1.0) * 127.5 - vgg.MEAN_RGB, ((1, 1), (1, 1), (0, 0)))  # SAME, zeros
    want = np.zeros((5, 4, 64), np.float32)
    for i in range(5):
        for j in range(4):
            want[i, j] = np.einsum("hwc,hwco->o", pixels[i : i + 3, j : j + 3], k) + bias
    np.testing.assert_allclose(got[0], np.maximum(want, 0.0), rtol=1e-4, atol=1e-3)


def test_bad_files_layers_and_architectures_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No VGG19 weight file"):
        vgg.load_vgg(tmp_path / "missing.npz", "vgg19")
    fake_vgg_file(tmp_path / "vgg16.npz")
    with pytest.raises(ValueError, match="no array 'conv3_4_W': not a VGG19 weight file"):
        vgg.load_vgg(tmp_path / "vgg16.npz", "vgg19")  # a VGG16 file read as VGG19
    arrays = fake_vgg_file(tmp_path / "vgg19.npz", "vgg19")
    arrays["conv2_1_W"] = arrays["conv2_1_W"][..., :-1]
    np.savez(tmp_path / "vgg19.npz", **arrays)
    with pytest.raises(ValueError, match="conv2_1_W has shape"):
        vgg.load_vgg(tmp_path / "vgg19.npz", "vgg19")
    with pytest.raises(ValueError, match="unknown VGG architecture 'vgg11'"):
        vgg.layer_names("vgg11")
    params = vgg.load_vgg(tmp_path / "vgg16.npz")
    with pytest.raises(ValueError, match="unknown VGG layers"):
        vgg.activations(params, jnp.zeros((1, 8, 8, 3)), ["conv3_4"])  # VGG19's, not VGG16's


def test_vgg16_loader_and_perceptual_distance(tmp_path):
    arrays = fake_vgg_file(tmp_path / "vgg16_weights.npz")
    params = vgg.load_vgg(tmp_path / "vgg16_weights.npz")
    np.testing.assert_array_equal(params["conv3_2"]["kernel"], arrays["conv3_2_W"])
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    feats = vgg.features(params, x)
    assert [f.shape for f in feats] == [
        (2, 32, 32, 64),
        (2, 16, 16, 128),
        (2, 8, 8, 256),
        (2, 4, 4, 512),
        (2, 2, 2, 512),
    ]
    np.testing.assert_allclose(vgg.perceptual_distance(params, x, x), 0.0, atol=1e-6)
    assert np.all(np.asarray(vgg.perceptual_distance(params, x, -x)) > 0)


def test_vgg16_loader_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No VGG16 weight file"):
        vgg.load_vgg(tmp_path / "missing.npz")
    arrays = {k: np.zeros(s, np.float32) for k, s in vgg.expected_shapes().items()}
    del arrays["conv4_2_b"]
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(ValueError, match="conv4_2_b"):
        vgg.load_vgg(tmp_path / "a.npz")
    arrays["conv4_2_b"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(ValueError, match=r"conv4_2_b has shape \(3,\)"):
        vgg.load_vgg(tmp_path / "b.npz")


# -- the other formats: torchvision's state dict, Keras' .h5 --------------------------------
TV_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TV_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _conv_at(image, kernel_oihw, bias, i, j):
    """The ReLU of a 3x3 convolution of ``image`` ``[H, W, C]`` at interior pixel (i, j)."""
    patch = image[i - 1 : i + 2, j - 1 : j + 2]
    return np.maximum(np.einsum("hwc,ochw->o", patch, kernel_oihw) + bias, 0.0)


def _write_keras(path, arch, published_names=True, top=False) -> dict:
    """A Keras applications weight file with small random weights, written with h5py: the
    published files' names (``block1_conv1/block1_conv1_W_1:0``) or Keras 2's
    (``block1_conv1/block1_conv1/kernel:0``); returns ``{group: (kernel HWIO, bias)}``."""
    rng = np.random.default_rng(3)
    out = {}
    with h5py.File(path, "w") as f:
        for key, shape in vgg.expected_shapes(arch).items():
            if not key.endswith("_W"):
                continue
            b, i = key[4:-2].split("_")
            name = f"block{b}_conv{i}"
            kernel = (rng.normal(size=shape) * 0.05).astype(np.float32)
            bias = (rng.normal(size=shape[-1]) * 0.05).astype(np.float32)
            g = f.create_group(name)
            if published_names:
                g[f"{name}_W_1:0"], g[f"{name}_b_1:0"] = kernel, bias
            else:
                g[f"{name}/kernel:0"], g[f"{name}/bias:0"] = kernel, bias
            out[name] = (kernel, bias)
        if top:  # the full file's dense layers, ignored
            f["fc1/fc1/kernel:0"] = np.zeros((4, 2), np.float32)
            f["fc1/fc1/bias:0"] = np.zeros(2, np.float32)
    return out


def test_torchvision_safetensors_loads_as_the_network_torchvision_computes(tmp_path):
    arrays = torchvision_vgg_arrays("vgg19")
    save_file(arrays, str(tmp_path / "vgg19.safetensors"))
    params = vgg.load_vgg(tmp_path / "vgg19.safetensors")  # told VGG19 by its 16 convolutions
    assert set(params) == {*vgg.layer_names("vgg19"), "preprocess"}  # no classifier
    assert vgg.torchvision_indices("vgg19")["conv3_4"] == 16
    assert vgg.torchvision_indices("vgg16")["conv4_1"] == 17
    np.testing.assert_array_equal(
        params["conv4_3"]["kernel"], arrays["features.23.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(params["conv5_4"]["bias"], arrays["features.34.bias"])
    pre = params["preprocess"]
    np.testing.assert_allclose(pre["mean"], 255 * TV_MEAN, rtol=1e-6)
    np.testing.assert_allclose(pre["scale"], 1 / (255 * TV_STD), rtol=1e-6)
    # conv1_1 on [-1, 1] images is torchvision's on Normalize(mean, std) of [0, 1] RGB.
    x = np.random.default_rng(4).uniform(-1, 1, (1, 6, 5, 3)).astype(np.float32)
    got = np.asarray(vgg.activations(params, jnp.asarray(x), ["conv1_1"])["conv1_1"])
    normalised = ((x[0] + 1) / 2 - TV_MEAN) / TV_STD
    for i, j in [(1, 1), (2, 3), (4, 2)]:
        want = _conv_at(normalised, arrays["features.0.weight"], arrays["features.0.bias"], i, j)
        np.testing.assert_allclose(got[0, i, j], want, rtol=1e-4, atol=1e-5)
    # The same weights from an .npz of the state dict, and in half precision and bfloat16.
    np.savez(tmp_path / "vgg19_tv.npz", **arrays)
    from_npz = vgg.load_vgg(tmp_path / "vgg19_tv.npz", "vgg19")
    np.testing.assert_array_equal(from_npz["conv1_2"]["kernel"], params["conv1_2"]["kernel"])
    np.testing.assert_array_equal(from_npz["preprocess"]["scale"], pre["scale"])
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float64):
        low = {k: v.astype(dtype) for k, v in arrays.items()}
        save_file(low, str(tmp_path / "low.safetensors"))
        loaded = vgg.load_vgg(tmp_path / "low.safetensors", "vgg19")
        assert loaded["conv2_1"]["kernel"].dtype == jnp.float32
        np.testing.assert_array_equal(
            loaded["conv2_1"]["kernel"],
            low["features.5.weight"].astype(np.float32).transpose(2, 3, 1, 0),
        )


def test_torchvision_pth_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    arrays = torchvision_vgg_arrays("vgg16", seed=5)
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    params = vgg.load_vgg(tmp_path / "vgg16-397923af.pth")
    assert vgg.architecture_of(params) == "vgg16"
    wrapped = vgg.load_vgg(tmp_path / "checkpoint.pt", "vgg16")
    for name in vgg.layer_names("vgg16"):
        np.testing.assert_array_equal(params[name]["kernel"], wrapped[name]["kernel"])
    np.testing.assert_array_equal(
        params["conv5_3"]["kernel"], arrays["features.28.weight"].transpose(2, 3, 1, 0)
    )
    x = np.random.default_rng(6).uniform(-1, 1, (2, 8, 6, 3)).astype(np.float32)
    acts = vgg.activations(params, jnp.asarray(x), ["conv1_2", "conv2_1"])
    x01 = torch.from_numpy((x + 1) / 2).permute(0, 3, 1, 2)
    h = (x01 - torch.tensor(TV_MEAN)[:, None, None]) / torch.tensor(TV_STD)[:, None, None]
    with torch.no_grad():
        for idx in (0, 2):
            h = functional.relu(
                functional.conv2d(
                    h, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1
                )
            )
        want12 = h.permute(0, 2, 3, 1).numpy()
        h = functional.max_pool2d(h, 2)
        h = functional.relu(
            functional.conv2d(h, state["features.5.weight"], state["features.5.bias"], padding=1)
        )
        want21 = h.permute(0, 2, 3, 1).numpy()
    for got, want in ((acts["conv1_2"], want12), (acts["conv2_1"], want21)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("published_names", [True, False])
def test_keras_h5_takes_rgb_with_caffe_means(tmp_path, published_names):
    arch = "vgg16" if published_names else "vgg19"
    name = f"{arch}_weights_tf_dim_ordering_tf_kernels{'_notop' if published_names else ''}.h5"
    written = _write_keras(tmp_path / name, arch, published_names, top=not published_names)
    params = vgg.load_vgg(tmp_path / name)
    assert vgg.architecture_of(params) == arch
    kernel, bias = written["block1_conv1"]
    np.testing.assert_array_equal(params["conv1_1"]["kernel"], kernel[:, :, ::-1, :])  # BGR->RGB
    np.testing.assert_array_equal(params["conv1_1"]["bias"], bias)
    np.testing.assert_array_equal(params["conv3_2"]["kernel"], written["block3_conv2"][0])
    np.testing.assert_array_equal(params["preprocess"]["mean"], vgg.MEAN_RGB)
    np.testing.assert_array_equal(params["preprocess"]["scale"], np.ones(3))
    # Keras' network on its own preprocessing: BGR in [0, 255] minus the BGR Caffe means.
    x = np.random.default_rng(7).uniform(-1, 1, (1, 5, 6, 3)).astype(np.float32)
    got = np.asarray(vgg.activations(params, jnp.asarray(x), ["conv1_1"])["conv1_1"])
    bgr = (x[0] + 1) * 127.5
    bgr = bgr[..., ::-1] - CAFFE_MEAN_BGR
    for i, j in [(1, 1), (3, 4)]:
        want = _conv_at(bgr, kernel.transpose(3, 2, 0, 1), bias, i, j)
        np.testing.assert_allclose(got[0, i, j], want, rtol=1e-4, atol=1e-3)


def test_preprocessing_defaults_to_caffe_and_layers_skip_it(tmp_path):
    fake_vgg_file(tmp_path / "vgg16.npz")
    params = vgg.load_vgg(tmp_path / "vgg16.npz")
    np.testing.assert_array_equal(params["preprocess"]["mean"], vgg.MEAN_RGB)
    np.testing.assert_array_equal(params["preprocess"]["scale"], np.ones(3))
    x = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3), minval=-1, maxval=1)
    old = {k: v for k, v in params.items() if k != "preprocess"}  # params from before
    for a, b in zip(vgg.features(params, x), vgg.features(old, x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert vgg.architecture_of(params) == "vgg16"
    assert set(params) - {"preprocess"} == set(vgg.layer_names("vgg16"))
    np.testing.assert_allclose(vgg.perceptual_distance(params, x, x), 0.0, atol=1e-6)


def test_other_formats_bad_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "vgg16.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported .*'\.onnx'.*\.safetensors, \.pth"):
        vgg.load_vgg(tmp_path / "vgg16.onnx")
    with pytest.raises(FileNotFoundError, match="No VGG16 weight file"):
        vgg.load_vgg(tmp_path / "missing.safetensors")
    arrays = torchvision_vgg_arrays("vgg19")
    save_file(arrays, str(tmp_path / "vgg19.safetensors"))
    # The other network: a name only VGG16 has, or more convolutions than VGG16's.
    with pytest.raises(ValueError, match="no array 'features.17.weight': not a VGG16"):
        vgg.load_vgg(tmp_path / "vgg19.safetensors", "vgg16")
    fake_vgg_file(tmp_path / "vgg19.npz", "vgg19")
    with pytest.raises(ValueError, match="holds 16 convolutions, VGG16 13: a VGG19 weight file"):
        vgg.load_vgg(tmp_path / "vgg19.npz", "vgg16")
    _write_keras(tmp_path / "vgg19.h5", "vgg19", published_names=False)
    with pytest.raises(ValueError, match="holds 16 convolutions, VGG16 13"):
        vgg.load_vgg(tmp_path / "vgg19.h5", "vgg16")
    # A missing array and a misshapen one, in the file's own names, with the shape expected.
    missing = {k: v for k, v in arrays.items() if k != "features.7.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"no array 'features.7.bias'.*of shape \(128,\)"):
        vgg.load_vgg(tmp_path / "missing.safetensors")
    bad = dict(arrays, **{"features.5.weight": np.zeros((128, 64, 3, 1), np.float32)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        ValueError, match=r"features.5.weight has shape \(128, 64, 3, 1\), expected \(128, 64, 3"
    ):
        vgg.load_vgg(tmp_path / "bad.safetensors")
    with h5py.File(tmp_path / "vgg19.h5", "a") as f:
        del f["block2_conv1/block2_conv1/bias:0"]
    with pytest.raises(ValueError, match=r"no array 'block2_conv1/block2_conv1/bias:0'"):
        vgg.load_vgg(tmp_path / "vgg19.h5")
    bn = dict(arrays, **{"features.1.running_mean": np.zeros(64, np.float32)})
    save_file(bn, str(tmp_path / "vgg19_bn.safetensors"))
    with pytest.raises(ValueError, match="batch-normalised"):
        vgg.load_vgg(tmp_path / "vgg19_bn.safetensors")
    with pytest.raises(ValueError, match="unknown VGG architecture 'vgg11'"):
        vgg.load_vgg(tmp_path / "vgg19.safetensors", "vgg11")
    # A .pth without torch installed: what to install, or what to convert it to.
    (tmp_path / "vgg16.pth").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"needs torch.*bench.*\.safetensors or \.npz"):
        vgg.load_vgg(tmp_path / "vgg16.pth")
