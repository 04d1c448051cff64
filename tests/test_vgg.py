"""VGG16 and VGG19 (the feature networks of the perceptual loss and of style transfer): the
loader on files the test writes, the layers' shapes, the first convolution against a direct
computation, the perceptual distance, and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fake_vgg_file

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
