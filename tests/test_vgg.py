"""VGG16 and VGG19 (the feature networks of the perceptual loss and of style transfer): the
loader on files the test writes, the layers' shapes, the first convolution against a direct
computation, and bad inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import vgg


def _write(tmp_path, arch, drop=None, reshape=None):
    rng = np.random.default_rng(0)
    arrays = {
        k: (rng.normal(size=s) * 0.05).astype(np.float32)
        for k, s in vgg.expected_shapes(arch).items()
    }
    arrays["fc6_W"] = np.zeros((2, 2), np.float32)  # the published file's dense layers: ignored
    if drop:
        del arrays[drop]
    if reshape:
        arrays[reshape] = arrays[reshape][..., :-1]
    path = tmp_path / f"{arch}.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_vgg19_has_sixteen_convolutions_and_loads_from_a_written_file(tmp_path):
    assert len(vgg.layer_names("vgg19")) == 16 and len(vgg.layer_names("vgg16")) == 13
    path, arrays = _write(tmp_path, "vgg19")
    params = vgg.load_vgg(path, "vgg19")
    assert vgg.architecture_of(params) == "vgg19"
    np.testing.assert_array_equal(params["conv5_4"]["kernel"], arrays["conv5_4_W"])
    assert "fc6" not in params


def test_activations_of_the_layers_gatys_et_al_read(tmp_path):
    params = vgg.load_vgg(_write(tmp_path, "vgg19")[0], "vgg19")
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
    params = vgg.load_vgg(_write(tmp_path, "vgg16")[0], "vgg16")
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
    path, _ = _write(tmp_path, "vgg16")
    with pytest.raises(ValueError, match="no array 'conv3_4_W': not a VGG19 weight file"):
        vgg.load_vgg(path, "vgg19")  # a VGG16 file read as VGG19
    path, _ = _write(tmp_path, "vgg19", reshape="conv2_1_W")
    with pytest.raises(ValueError, match="conv2_1_W has shape"):
        vgg.load_vgg(path, "vgg19")
    with pytest.raises(ValueError, match="unknown VGG architecture 'vgg11'"):
        vgg.layer_names("vgg11")
    params = vgg.load_vgg(_write(tmp_path, "vgg16")[0])
    with pytest.raises(ValueError, match="unknown VGG layers"):
        vgg.activations(params, jnp.zeros((1, 8, 8, 3)), ["conv3_4"])  # VGG19's, not VGG16's
