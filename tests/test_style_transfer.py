"""Style transfer (Gatys et al. 2016; Johnson et al. 2016): images, colour, feature networks,
the compiled optimiser, the transformation network, the API and the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import copy_workdir, read_jsonl, run_cli, shared_config_run
from PIL import Image

from jaxgen import api
from jaxgen.config import load_experiment
from jaxgen.data import DataError, style_images
from jaxgen.evaluation import style_metrics
from jaxgen.models import feature_nets
from jaxgen.models.transform_net import TransformNet
from jaxgen.pipelines import style_transfer

CONFIG = "--config=experiments/style_transfer.py"


def cli(*args):
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


# -- images ----------------------------------------------------------------------------------
def test_images_load_from_files_names_and_arrays_with_grey_and_alpha_converted(tmp_path):
    grey = np.arange(32 * 40, dtype=np.uint32).reshape(32, 40) % 256
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "grey.png")
    rgb = style_images.load_image(tmp_path / "grey.png")
    assert rgb.shape == (32, 40, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], grey)
    np.testing.assert_array_equal(rgb[..., 2], grey)
    # Half-transparent red over white is pink; a fully transparent pixel is white.
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    out = style_images.load_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(out[5, 5], [255, 127, 127])
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    # Float arrays in [0, 1] are scaled; bundled names load offline.
    np.testing.assert_array_equal(style_images.load_image(np.ones((16, 16))), 255)
    cat = style_images.load_image("chelsea")
    assert cat.shape == (300, 451, 3)
    assert style_images.fit(cat, 128).shape == (85, 128, 3)


def test_bad_images_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file .*bundled image"):
        style_images.load_image(tmp_path / "missing.jpg", "content image")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="not an image"):
        style_images.load_image(tmp_path / "notes.png")
    with pytest.raises(DataError, match="too small"):
        style_images.load_image(np.zeros((8, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="expected an image"):
        style_images.load_image(np.zeros((16, 16, 5), np.uint8))


# -- colour ----------------------------------------------------------------------------------
def test_luminance_transfer_keeps_the_contents_chrominance():
    """Against scikit-image's YIQ: the output's I and Q are the content's, its Y the result's."""
    from skimage.color import rgb2yiq

    rng = np.random.default_rng(0)
    content = rng.integers(60, 196, size=(24, 24, 3)).astype(np.uint8)
    result = rng.integers(60, 196, size=(24, 24, 3)).astype(np.uint8)
    out = style_images.keep_colors(result, content)
    yiq_out, yiq_c, yiq_r = (rgb2yiq(a / 255.0) for a in (out, content, result))
    tol = 2.0 / 255  # rounding to uint8
    np.testing.assert_allclose(yiq_out[..., 1:], yiq_c[..., 1:], atol=tol)
    np.testing.assert_allclose(yiq_out[..., 0], yiq_r[..., 0], atol=tol)
    assert np.abs(yiq_r[..., 1:] - yiq_c[..., 1:]).mean() > 10 * tol  # the check can fail


def test_histogram_matching_gives_the_targets_mean_and_covariance():
    rng = np.random.default_rng(1)
    source = rng.normal(100, 20, size=(64, 64, 3)) @ np.array(
        [[1.0, 0.2, 0.0], [0.0, 0.8, 0.1], [0.1, 0.0, 0.5]]
    )
    source = np.clip(source, 0, 255).astype(np.uint8)
    target = np.clip(rng.normal([150, 90, 60], [30, 10, 25], size=(64, 64, 3)), 0, 255)
    target = target.astype(np.uint8)
    out = style_images.match_colors(source, target)
    mu_o, cov_o = style_images.color_statistics(out)
    mu_t, cov_t = style_images.color_statistics(target)
    np.testing.assert_allclose(mu_o, mu_t, atol=3e-3)
    np.testing.assert_allclose(cov_o, cov_t, atol=2e-3)
    assert style_images.color_distance(out, target) < 0.02 * style_images.color_distance(
        source, target
    )
    assert style_images.color_distance(target, target) == pytest.approx(0.0, abs=1e-9)


# -- feature networks ------------------------------------------------------------------------
def test_random_multiscale_network_shapes_at_odd_sizes_and_its_label():
    net = feature_nets.random_multiscale(seed=3, scales=(1, 2, 4), kernel=3, channels=8)
    assert feature_nets.layer_names(net) == ["scale1", "scale2", "scale4"]
    x = jnp.zeros((2, 37, 50, 3))
    acts = feature_nets.activations(net, x, ["scale1", "scale2", "scale4"])
    for name in ("scale1", "scale2", "scale4"):  # every scale at every pixel
        assert acts[name].shape == (2, 37, 50, 8)
    assert acts["scale4"].dtype == jnp.float32
    # Zero-mean filters see nothing in a flat image; the filters are seeded.
    assert float(jnp.abs(acts["scale1"]).max()) == 0.0
    again = feature_nets.random_multiscale(seed=3, scales=(1, 2, 4), kernel=3, channels=8)
    np.testing.assert_array_equal(net["scale2"]["kernel"], again["scale2"]["kernel"])
    label = feature_nets.describe(net, seed=3)
    assert "random multi-scale" in label and "untrained" in label and "seed 3" in label
    assert feature_nets.default_layers(net) == (("scale4",), ("scale1", "scale2", "scale4"))
    with pytest.raises(ValueError, match="unknown layers"):
        feature_nets.activations(net, x, ["conv4_2"])


def test_random_layers_against_direct_sums():
    """scale1: a 3x3 window times the filter; scale2: the 2x2 box means of the image at the
    filter's taps, two pixels apart."""
    net = feature_nets.random_multiscale(seed=0, scales=(1, 2), kernel=3, channels=4)
    x = np.random.default_rng(0).uniform(-1, 1, size=(1, 12, 12, 3)).astype(np.float32)
    acts = feature_nets.activations(net, jnp.asarray(x), ["scale1", "scale2"])
    k1, k2 = (np.asarray(net[n]["kernel"]) for n in ("scale1", "scale2"))
    direct = np.einsum("hwc,hwco->o", x[0, 3:6, 4:7], k1)
    np.testing.assert_allclose(acts["scale1"][0, 4, 5], np.maximum(direct, 0), rtol=1e-5, atol=1e-6)
    # XLA's SAME window of even size 2 covers [i, i + 1]; the dilated taps are at y + 2 * (a - 1).
    box = (x[0, :-1, :-1] + x[0, 1:, :-1] + x[0, :-1, 1:] + x[0, 1:, 1:]) / 4
    y, xx = 5, 6
    taps = box[y - 2 : y + 3 : 2, xx - 2 : xx + 3 : 2]
    direct2 = np.einsum("hwc,hwco->o", taps, k2)
    np.testing.assert_allclose(
        acts["scale2"][0, y, xx], np.maximum(direct2, 0), rtol=1e-5, atol=1e-5
    )


# -- the compiled optimisation ---------------------------------------------------------------
def test_lbfgs_reaches_a_convex_quadratics_minimum_inside_the_compiled_loop():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 12))
    a = jnp.asarray(m @ m.T + 0.5 * np.eye(12), jnp.float32)
    b = jnp.asarray(rng.normal(size=12), jnp.float32)

    def f(x):
        return 0.5 * x @ a @ x - b @ x

    tx = optax.lbfgs()
    x0 = jnp.zeros(12)
    run = jax.jit(lambda x, s: style_transfer.minimize(f, x, s, tx, True, 40))
    x, _, losses, evals = run(x0, tx.init(x0))
    expected = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    np.testing.assert_allclose(np.asarray(x), expected, rtol=1e-3, atol=1e-3)
    minimum = -0.5 * float(np.asarray(b, np.float64) @ expected)
    assert losses.shape == (40,) and float(losses[0]) == 0.0
    assert int(evals[0]) >= 2 and int(evals.min()) >= 1  # x0, then the line search's
    assert float(losses[-1]) == pytest.approx(minimum, rel=1e-4)
    # Adam on the same problem goes down too (slower).
    adam = optax.adam(0.05)
    xa, _, la, _ = jax.jit(lambda x, s: style_transfer.minimize(f, x, s, adam, False, 40))(
        x0, adam.init(x0)
    )
    assert float(la[-1]) < float(la[0])


def test_the_loss_is_zero_at_its_targets_and_a_mask_of_ones_changes_nothing():
    config = load_experiment("style_transfer", "smoke")
    net = feature_nets.random_multiscale(seed=0, scales=(1, 2, 4), kernel=3, channels=8)
    loss = style_transfer.StyleLoss(config, net)
    assert loss.content_layers == ("scale4",)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 24, 32, 3)), jnp.float32)
    targets = loss.targets(net, x, [x], [1.0])
    total, parts = loss(net, targets, x)
    assert float(parts["content"][0]) == 0.0
    assert float(parts["style"][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(parts["tv"][0]) > 0.0
    y = x[:, ::-1]  # the same texture, mirrored: the content moved, the Gram matrices did not
    masked = loss(net, targets, y, jnp.ones((1, 24, 32, 1)))[1]
    plain = loss(net, targets, y)[1]
    np.testing.assert_allclose(masked["style"], plain["style"], rtol=1e-5)
    assert float(plain["content"][0]) > 0.0
    # The style targets of a style image at another size are rescaled to the result's size:
    # against the Gram matrices per position, the paper's E_l of the same image is unchanged.
    big = jax.image.resize(x, (1, 48, 64, 3), "linear")
    t_big = loss.targets(net, x, [big], [1.0])
    f = feature_nets.activations(net, x, ["scale1"])["scale1"]
    own = style_metrics.gram(f) / (f.shape[1] * f.shape[2])
    assert t_big["grams"]["scale1"].shape == own[0].shape


def test_gatys_reduces_its_loss_blends_styles_and_keeps_colours():
    rng = np.random.default_rng(0)
    content = rng.integers(60, 196, size=(40, 56, 3)).astype(np.uint8)  # room to change colour
    stripes = np.zeros((48, 48, 3), np.uint8)
    stripes[::4] = [255, 0, 0]
    result, state = api.stylize(
        content,
        [stripes, "gravel"],
        iterations=20,
        report_every=0,
        return_state=True,
        image_size=56,
        style_blend_weights="3,1",
        preserve_colors="luminance",
        features="random3",
    )
    assert result.shape == (40, 56, 3) and result.dtype == np.uint8
    losses = np.asarray(state["losses"])
    assert losses.shape == (20,) and losses[19] < 0.5 * losses[0]
    from skimage.color import rgb2yiq

    # Where no channel was clipped back into [0, 255], the chrominance is the content's.
    inside = np.all((result > 0) & (result < 255), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(
        rgb2yiq(result / 255.0)[inside][:, 1:], rgb2yiq(content / 255.0)[inside][:, 1:], atol=0.01
    )


@pytest.mark.parametrize(
    "options, match",
    [
        ({"optim.chunk": 7}, "multiple of"),
        ({"preserve_colors": "sepia"}, "preserve_colors must be one of"),
        ({"style_blend_weights": "1,2"}, "style_blend_weights"),
        ({"optim.scales": (0.5,)}, "must end with 1.0"),
        ({"init": "zeros"}, "init must be one of"),
        ({"loss.content_layers": ("conv4_2",)}, "not in the feature network"),
        ({"style_scale": 0.0}, "style_scale must be positive"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        api.stylize("chelsea", "brick", iterations=30, report_every=0, **options)


# -- the fast variant's network --------------------------------------------------------------
@pytest.mark.parametrize("size", [(33, 47), (16, 16), (21, 64)])
def test_transformation_network_keeps_any_images_size(size):
    net = TransformNet(width=4, num_residual=1)
    x = jnp.zeros((2, *size, 3))
    params = net.init(jax.random.PRNGKey(0), x)
    y = net.apply(params, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(jnp.abs(y).max()) <= 1.0
    names = set(params["params"])
    assert sum(n.startswith("ResidualBlock") for n in names) == 1
    with pytest.raises(ValueError, match="expected images"):
        net.apply(params, jnp.zeros((2, 16, 16)))


def test_instance_norm_normalises_each_image_and_channel():
    from jaxgen.models.transform_net import InstanceNorm

    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 5.0, size=(2, 8, 8, 4)), jnp.float32)
    y = InstanceNorm().apply({"params": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}, x)
    np.testing.assert_allclose(np.asarray(y).mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).std(axis=(1, 2)), 1.0, atol=1e-3)


def test_content_crops_are_deterministic_squares():
    crops = style_images.ContentCrops(32, num=8, seed=0)
    a, b = crops[3]["image"], crops[3]["image"]
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert len({crops[i]["image"].tobytes() for i in range(8)}) == 8


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_optimises_resumes_samples_and_evaluates(tmp_path):
    workdir = tmp_path / "gatys"
    style = tmp_path / "style.png"
    Image.fromarray(style_images.load_image("brick")[:64, :64]).save(style)
    args = (CONFIG + ":smoke", f"--workdir={workdir}", f"--config.style={style},gravel")
    out = cli(*args)
    assert "random multi-scale" in out.stderr
    for name in ("result.png", "strip.png", "loss_curve.png", "eval.json"):
        assert (workdir / name).is_file(), name
    result = np.asarray(Image.open(workdir / "result.png"))
    assert result.shape == (32, 48, 3)  # chelsea's aspect, 48 pixels on the longer side
    evaluation = json.loads((workdir / "eval.json").read_text())
    for key in ("style_distance", "style_distance_of_content", "content_distance"):
        assert np.isfinite(evaluation[f"style/{key}"])
    metrics = [r for r in read_jsonl(workdir / "metrics.jsonl") if "iterations" in r]
    assert [r["iterations"] for r in metrics] == [3.0, 6.0]
    # Rerun: resumes at the end (nothing to do); sample and eval modes read the workdir.
    again = cli(*args)
    assert "Resumed from step 2" in again.stderr
    cli(f"--workdir={workdir}", CONFIG + ":smoke", "--mode=sample")
    sampled = np.asarray(Image.open(next((workdir / "samples").glob("sample_*.png"))))
    assert sampled.shape[2] == 3
    ev = cli(f"--workdir={workdir}", CONFIG + ":smoke", "--mode=eval")
    assert "style/style_reduction" in ev.stdout


def test_cli_trains_the_fast_variant_and_stylises_an_image(tmp_path, tmp_path_factory):
    run = shared_config_run(tmp_path_factory, CONFIG + ":fast,smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    workdir = copy_workdir(run.workdir, tmp_path / "fast")
    assert "Resumed" not in run.stderr and (workdir / "samples").is_dir()
    evaluation = json.loads((workdir / "eval.json").read_text())
    assert np.isfinite(evaluation["style/style_distance"])
    photo = tmp_path / "photo.png"
    Image.fromarray(style_images.load_image("coffee")[:50, :70]).save(photo)
    out = cli(f"--workdir={workdir}", CONFIG + ":fast,smoke", "--mode=sample", f"--prompt={photo}")
    assert "Wrote 1 samples" in out.stdout
    model = api.load(workdir)
    image = model.pipeline.stylize_image(model.state, str(photo))
    assert image.shape == (34, 48, 3)


def test_cli_names_a_missing_content_file(tmp_path):
    out = run_cli(
        CONFIG + ":smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.content={tmp_path / 'nope.jpg'}",
    )
    assert out.returncode != 0
    assert "no file" in out.stderr and "nope.jpg" in out.stderr


def test_coarse_to_fine_and_a_mask_keep_the_contents_size():
    rng = np.random.default_rng(2)
    content = rng.integers(0, 255, size=(36, 52, 3)).astype(np.uint8)
    mask = np.zeros((36, 52), np.uint8)
    mask[:, 26:] = 255
    result, state = api.stylize(
        content,
        "brick",
        iterations=4,
        report_every=0,
        return_state=True,
        image_size=52,
        mask=mask,
        features="random3",
        **{"optim.scales": (0.5, 1.0), "optim.coarse_iterations": 3},
    )
    assert result.shape == (36, 52, 3)
    assert np.all(np.isfinite(np.asarray(state["losses"])))


def test_the_fast_variant_refuses_histogram_matching():
    config = load_experiment("style_transfer", "fast,smoke")
    config.preserve_colors = "histogram"
    with pytest.raises(ValueError, match="luminance"):
        style_transfer.FastStyleTransferPipeline(config)


def test_the_vgg_variant_reads_a_vgg19_file_and_gatys_layers(tmp_path):
    from helpers import fake_vgg_file

    fake_vgg_file(tmp_path / "vgg19.npz", "vgg19")
    result, state = api.stylize(
        "chelsea",
        "brick",
        iterations=2,
        report_every=0,
        return_state=True,
        variant="vgg",
        image_size=32,
        features=str(tmp_path / "vgg19.npz"),
    )
    assert result.shape == (21, 32, 3)
    assert set(state["targets"]["grams"]) == set(feature_nets.VGG_STYLE_LAYERS)
    assert set(state["targets"]["content"]) == {"conv4_2"}
    assert state["targets"]["grams"]["conv5_1"].shape == (512, 512)
    with pytest.raises(FileNotFoundError):
        api.stylize("chelsea", "brick", iterations=2, variant="vgg", features="missing.npz")
    with pytest.raises(ValueError, match="No feature network"):
        api.stylize("chelsea", "brick", iterations=2, variant="vgg")


@pytest.mark.parametrize("dilation, size", [(1, 3), (2, 3), (1, 5), (3, 5), (1, 2)])
def test_conv_same_gradients_equal_autodiffs(dilation, size):
    """The custom input gradient against JAX's own differentiation of the plain convolution."""
    from jaxgen.models.layers import conv_same

    rng = np.random.default_rng(dilation * 10 + size)
    x = jnp.asarray(rng.normal(size=(2, 11, 14, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(size, size, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2, 11, 14, 4)), jnp.float32)

    def plain(x, k):
        y = jax.lax.conv_general_dilated(
            x,
            k,
            (1, 1),
            "SAME",
            rhs_dilation=(dilation,) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jnp.sum(jnp.tanh(y) * w)

    def custom(x, k):
        return jnp.sum(jnp.tanh(conv_same(x, k, dilation)) * w)

    np.testing.assert_allclose(custom(x, k), plain(x, k), rtol=1e-6)
    grads = zip(jax.grad(custom, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k), strict=True)
    for got, want in grads:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_loss_curves_are_drawn_on_a_log_scale_when_positive():
    from jaxgen.training.images import plot_curve

    falling = plot_curve(np.geomspace(1e6, 1.0, 50), title="loss")
    assert falling.shape == (300, 480, 3) and falling.dtype == np.uint8
    blue = np.all(falling == [31, 119, 180], axis=-1)
    ys, xs = np.nonzero(blue)
    # Geometric decay is a straight line on a log scale: the curve's midpoint is mid-height.
    mid = ys[np.abs(xs - xs.mean()) < 2].mean()
    assert abs(mid - (ys.min() + ys.max()) / 2) < 8
    assert plot_curve([]).shape == (300, 480, 3)  # no values: an empty frame, no error
    assert np.any(np.all(plot_curve([-1.0, 2.0, 0.5]) == [31, 119, 180], axis=-1))


@pytest.mark.parametrize("init", style_transfer.INITS)
def test_the_optimisation_starts_from_the_content_noise_or_the_style(init):
    config = load_experiment("style_transfer", "smoke")
    config.init, config.features = init, "random3"
    pipeline = style_transfer.StyleTransferPipeline(config)
    image = np.asarray(jax.jit(pipeline.init)(jax.random.PRNGKey(0), None)["image"])
    content = np.asarray(style_transfer.to_model(pipeline.content[None]))
    assert image.shape == content.shape == (1, 32, 48, 3)
    if init == "content":
        np.testing.assert_allclose(image, content, atol=1e-6)  # x / 127.5 - 1 compiled
    elif init == "noise":  # neural-style's small random start, reproducible from the seed
        assert 0.05 < image.std() < 0.15 and abs(image.mean()) < 0.02
        again = jax.jit(pipeline.init)(jax.random.PRNGKey(0), None)["image"]
        np.testing.assert_array_equal(image, np.asarray(again))
    else:  # the style image at the content's size
        style = style_transfer.to_model(pipeline.styles[0][None])
        expected = jax.image.resize(style, content.shape, "linear", antialias=True)
        np.testing.assert_allclose(image, expected, atol=1e-6)
