"""The local web demo: its checks without a browser, then the page in headless Chromium and
under concurrent requests."""

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, cli_env, shared_config_run
from PIL import Image

from jaxgen import api, demo
from jaxgen.pipelines.base import SampleOption


@pytest.fixture(scope="module")
def gan_workdir(tmp_path_factory):
    run = shared_config_run(tmp_path_factory, "--config=experiments/gan.py:smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    return run.workdir


@pytest.fixture(scope="module")
def ddpm(trained_workdir):
    return demo.DemoModel("ddpm", api.load(trained_workdir))


def test_sample_option_checks_type_and_range():
    steps = SampleOption("num_steps", "int", 1, 1000)
    assert steps.check(25) == 25 and isinstance(steps.check(25.0), int)
    for bad in (0, 1001, 2.5, "many", None):
        with pytest.raises(ValueError, match="num_steps"):
            steps.check(bad)
    scale = SampleOption("guidance_scale", "float", 0.0, 20.0)
    assert scale.check("3.5") == 3.5
    with pytest.raises(ValueError, match=r"\[0, 20\]"):
        scale.check(-1)
    decoding = SampleOption("decoding", "choice", choices=("greedy", "beam"))
    assert decoding.check("beam") == "beam"
    with pytest.raises(ValueError, match="greedy"):
        decoding.check("nucleus")


def test_generate_returns_images_and_the_judge_s_reading(ddpm):
    size = ddpm.image_size
    result = ddpm.generate("a large red circle", seed=3, num_images=3, options={"num_steps": 2})
    assert result.images.shape == (3, size, size, 3) and result.images.dtype == np.uint8
    # Each caption is the judge's reading of that image, recomputed here from the judge.
    readings = ddpm.pipeline.judge.read(result.images, "a large red circle")
    assert result.captions == [demo.describe_reading(r) for r in readings]
    assert all("colour" in c and "shape" in c for c in result.captions)
    assert result.summary.startswith("Judge: ")
    again = ddpm.generate("a large red circle", seed=3, num_images=3, options={"num_steps": 2})
    np.testing.assert_array_equal(again.images, result.images)  # the seed decides
    outside = ddpm.generate("a photograph of a cat", num_images=1, options={"num_steps": 2})
    assert outside.captions == [""] and "outside" in outside.summary
    assert ddpm.random_caption("test", 5) in ddpm.pipeline.judge.prompts("test", 256, seed=7)[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="   "), "empty"),
        (dict(prompt="a red circle " * 20), "at most 62 bytes"),
        (dict(prompt=12), "text"),
        (dict(num_images=0), "number of images"),
        (dict(num_images=demo.MAX_IMAGES + 1), "number of images"),
        (dict(num_images=2.5), "number of images"),
        (dict(seed=-1), "seed"),
        (dict(candidates=2), "re-rank"),  # the smoke DDPM has no CLIP
        (dict(num_images=16, candidates=4), "at most 32"),
        (dict(options={"num_steps": 0}), "num_steps"),
        (dict(options={"guidance_scale": 99}), "guidance_scale"),
    ],
)
def test_bad_requests_are_named(ddpm, kwargs, message):
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(demo.DemoError, match=message):
        ddpm.generate(kwargs.pop("prompt"), **kwargs)


def test_a_pipeline_s_own_refusal_is_a_message(ddpm, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("the sampler says no")

    monkeypatch.setattr(ddpm.pipeline, "rerank", refuse)
    with pytest.raises(demo.DemoError, match="the sampler says no"):
        ddpm.generate("a red circle")
    assert not ddpm.lock.locked()  # and the model is free for the next request


def test_settings_past_the_program_bound_clear_the_caches(ddpm, monkeypatch):
    cleared = []
    monkeypatch.setattr(demo, "MAX_PROGRAMS", 2)
    monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(1))
    ddpm._programs.clear()
    for steps in (2, 3, 2, 3):  # two settings: within the bound
        ddpm._compiles("generate", steps)
    assert cleared == []
    ddpm._compiles("generate", 4)  # a third: the caches go, and it is the one now held
    assert cleared == [1] and ddpm._programs == {("generate", 4)}


def test_uploads_are_made_square_rgb_or_named():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    out = demo.as_rgb(rgba, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out[..., 0].min() == 200
    assert demo.as_rgb(np.full((8, 8), 0.5), 4).max() == 128  # grey float in [0, 1]
    wide = demo.as_rgb(np.zeros((300, 1200, 3), np.uint8), None)  # its aspect, shrunk
    assert wide.shape == (128, demo.MAX_UPLOAD_SIDE, 3)
    for bad, message in ((None, "Upload"), (np.zeros((4, 4, 2)), "channels"), ("x", "not an")):
        with pytest.raises(demo.DemoError, match=message):
            demo.as_rgb(bad, 16)


def test_family_requests(gan_workdir):
    gan = demo.DemoModel("gan", api.load(gan_workdir))
    assert gan.has("interpolate_prompts") and not gan.has("variations")
    result = gan.interpolate("a red circle", "a blue square", num=4, seed=1)
    assert result.images.shape[0] == 4 and result.captions[0] == "0.00"
    with pytest.raises(demo.DemoError, match="steps"):
        gan.interpolate("a red circle", "a blue square", num=1)
    with pytest.raises(demo.DemoError, match="empty"):
        gan.interpolate("", "a blue square")


_FAMILIES = {
    "text2scene": "--config=experiments/text2scene.py:smoke",
    "unclip": "--config=experiments/unclip.py:smoke",
    "dalle": "--config=experiments/dalle.py:smoke",
    "fast": "--config=experiments/style_transfer.py:fast,smoke",
}
_LOADED: dict[str, demo.DemoModel] = {}


def _smoke_model(tmp_path_factory, name: str) -> demo.DemoModel:
    """The shared smoke run of ``_FAMILIES[name]`` (other tests train the same), loaded once."""
    if name not in _LOADED:
        run = shared_config_run(tmp_path_factory, _FAMILIES[name])
        assert run.returncode == 0, run.stderr[-3000:]
        _LOADED[name] = demo.DemoModel(name, api.load(run.workdir))
    return _LOADED[name]


def _gatys() -> demo.DemoModel:
    import types

    from jaxgen.config import load_experiment
    from jaxgen.pipelines.style_transfer import StyleTransferPipeline

    config = load_experiment("style_transfer", "smoke")
    run = types.SimpleNamespace(config=config, pipeline=StyleTransferPipeline(config), state=None)
    return demo.DemoModel("gatys", run)


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size + 5, size, 3), dtype=np.uint8)


def test_text2scene_tab(tmp_path_factory):
    t2s = _smoke_model(tmp_path_factory, "text2scene")
    text = t2s.random_caption("test", 3)
    result, scene = t2s.compose(text, seed=0)
    steps = t2s.pipeline.composition_steps(t2s.model.state, [text], jax.random.key(0))[0]
    np.testing.assert_array_equal(result.images, steps)  # the canvas after each step
    assert result.captions[0] == "empty canvas" and len(result.captions) == len(steps)
    assert isinstance(scene, list) and all(isinstance(o, dict) for o in scene)
    with pytest.raises(demo.DemoError, match="Unknown word"):  # the family's own vocabulary
        t2s.compose("a large red circle")


def test_unclip_tab(tmp_path_factory):
    unclip = _smoke_model(tmp_path_factory, "unclip")
    size = unclip.image_size
    result = unclip.variations(_image(size), num=1, seed=0)
    assert result.images.shape == (2, size, size, 3) and result.captions == ["input", "variation 1"]
    path = unclip.interpolate_images(_image(size, 1), _image(size, 2), steps=2)
    assert path.images.shape == (2, size, size, 3)
    with pytest.raises(demo.DemoError, match="image B"):
        unclip.interpolate_images(_image(size), None)


def test_dalle_tab(tmp_path_factory):
    dalle = _smoke_model(tmp_path_factory, "dalle")
    size = dalle.image_size
    given = demo.as_rgb(_image(size), size)
    result = dalle.complete(given, "a large red circle", seed=0)
    assert result.images.shape == (2, size, size, 3)
    np.testing.assert_array_equal(result.images[0], given)
    with pytest.raises(demo.DemoError, match="empty"):
        dalle.complete(given, "")


def test_fast_style_tab(tmp_path_factory):
    fast = _smoke_model(tmp_path_factory, "fast")
    assert not fast.text_to_image
    with pytest.raises(demo.DemoError, match="does not generate from text"):
        fast.generate("a red circle")
    result = fast.stylize(_image(40))
    assert result.images.dtype == np.uint8 and result.images.shape[-1] == 3
    with pytest.raises(demo.DemoError, match="Upload"):
        fast.stylize(None)


def test_gatys_tab_optimises_two_uploads():
    gatys = _gatys()
    content, style = _image(20, 0), np.zeros((24, 24, 3), np.uint8)
    result = gatys.stylize_pair(content, style, iterations=3, size=16)
    assert result.images.shape == (3, 16, 16, 3) and result.captions[-1] == "stylised"
    np.testing.assert_array_equal(result.images[0], demo.as_rgb(content, 16))
    assert not np.array_equal(result.images[2], result.images[0])  # the optimisation moved it
    with pytest.raises(demo.DemoError, match="style image"):
        gatys.stylize_pair(content, None)
    with pytest.raises(demo.DemoError, match="iterations"):
        gatys.stylize_pair(content, style, iterations=0)


def test_the_page_has_a_tab_per_family_that_can(tmp_path_factory, ddpm, gan_workdir):
    gr = pytest.importorskip("gradio")
    models = {name: _smoke_model(tmp_path_factory, name) for name in _FAMILIES}
    models.update(ddpm=ddpm, gan=demo.DemoModel("gan", api.load(gan_workdir)), gatys=_gatys())
    app = demo.build_app(models)
    tabs = {b.label: b for b in app.blocks.values() if isinstance(b, gr.Tab)}
    assert set(tabs) == {
        "Generate",
        "Interpolate",
        "Compose",
        "Variations",
        "Complete",
        "Style transfer",
        "Stylize",
    }
    pickers = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "model"]
    # The Generate tab lists the text-to-image runs only (not the style transfer ones).
    listed = {choice[0] for choice in pickers[0].choices}
    assert listed == {"text2scene", "unclip", "dalle", "ddpm", "gan"}


def test_load_failure_names_the_workdir(tmp_path, trained_workdir):
    missing = tmp_path / "no_such_run"
    with pytest.raises(SystemExit, match=f"{missing}"):
        demo.load_models([str(trained_workdir), str(missing)])
    models = demo.load_models([str(trained_workdir), f"{trained_workdir}/."])
    assert len(models) == 1  # one model instance per workdir


# -- the served page -------------------------------------------------------------------------
def _chromium() -> str:
    path = os.environ.get("JAXGEN_CHROMIUM") or shutil.which("chromium")
    if path is None:
        message = "no Chromium: apt-get install chromium (or set JAXGEN_CHROMIUM)"
        if os.environ.get("JAXGEN_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m jaxgen.demo`` in a subprocess, on a free loopback port."""

    def __init__(self, *workdirs, timeout: float = 300):
        pytest.importorskip("gradio")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        args = [f"--workdir={w}" for w in workdirs]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jaxgen.demo", *args, f"--port={self.port}"],
            cwd=REPO_ROOT,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited:\n{self.proc.stdout.read()[-4000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("the demo did not serve within the timeout")

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(field)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def test_page_in_headless_chromium_and_under_concurrent_requests(
    trained_workdir, gan_workdir, tmp_path
):
    """One server (starting it and compiling the sampler is most of the cost): a user in
    Chromium, then twelve requests at once from the Gradio client."""
    chromium = _chromium()
    playwright = pytest.importorskip("playwright.sync_api")
    client_lib = pytest.importorskip("gradio_client")
    demo_model = demo.DemoModel("ddpm", api.load(trained_workdir))
    server = Server(trained_workdir, gan_workdir)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(server.url)
            page.locator("#prompt textarea").fill("a large red circle left of a small blue square")
            page.locator("#generate").click()
            status = page.locator("#status")
            status.get_by_text("Judge:").wait_for(timeout=240_000)
            images = page.locator("#gallery img")
            images.first.wait_for(timeout=30_000)
            assert images.count() >= 4
            text = page.locator("#readings").inner_text()
            assert text.count("colour") == 4 and text.count("relation") == 4, text
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            assert (tmp_path / "demo.png").stat().st_size > 10_000
            # A random test caption lands in the (cleared) prompt box, then a held-out one.
            box = page.locator("#prompt textarea")
            box.fill("")
            page.locator("#random-test").click()
            page.wait_for_function(
                "() => document.querySelector('#prompt textarea').value.length > 0"
            )
            test_caption = box.input_value()
            assert test_caption in demo_model.pipeline.judge.prompts("test", 256, seed=7)[0]
            page.locator("#random-heldout").click()
            page.wait_for_function(
                "c => document.querySelector('#prompt textarea').value !== c", arg=test_caption
            )
            heldout = demo_model.pipeline.judge.prompts("heldout", 256, seed=7)[0]
            assert box.input_value() in heldout
            # An empty prompt shows the error; the server keeps serving.
            page.locator("#prompt textarea").fill("")
            page.locator("#generate").click()
            status.get_by_text("empty").wait_for(timeout=60_000)
            assert "Error" in status.inner_text()
            browser.close()

        # Concurrent requests, with the settings the page sent (its sampler is compiled).
        client = client_lib.Client(server.url, verbose=False)
        sample = api.load(trained_workdir).config.sample
        name = Path(trained_workdir).name  # the page names models by their folders

        def ask(seed):
            # model, prompt, seed, images, candidates, then the sampler's num_steps, guidance
            return client.predict(
                name,
                "a small red circle",
                seed,
                4,
                1,
                sample.num_steps,
                sample.guidance_scale,
                api_name="/generate",
            )

        def pixels(gallery):
            return [np.asarray(Image.open(item["image"])) for item in gallery]

        warm = server.rss_mib()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, range(1, 13)))
        after = server.rss_mib()
        for answer, gallery, _ in results:
            assert answer.startswith("Judge:") and len(gallery) == 4, answer
        # Each answer is its own request's: asked again alone, seeds 3 and 8 give the same images.
        for seed in (3, 8):
            alone = pixels(ask(seed)[1])
            for a, b in zip(alone, pixels(results[seed - 1][1]), strict=True):
                np.testing.assert_array_equal(a, b)
        # One model instance serves them all: twelve requests leave the server within 25% of
        # its size after the first (a second copy of the model and its programs would not).
        assert after < 1.25 * warm, (warm, after)
        assert server.proc.poll() is None
    finally:
        log = server.stop()
        print(log[-4000:])  # shown with a failure
    assert "gan from" in log  # both workdirs were served
