"""A local web page for trained models: a prompt in, images out, with the judge's reading.

    pip install -e ".[demo]"
    python -m jaxgen.demo --workdir=runs/ddpm --workdir=runs/gan [--host=127.0.0.1] [--port=7860]

Each workdir is loaded once (any pipeline) and served by one model instance; requests queue,
and one model samples one request at a time, so two users at once get their images without the
memory doubling. The page names models by the workdirs given at launch: a client cannot name a
file or a workdir. It binds to the loopback address unless ``--host`` says otherwise.

Tabs:
  Generate       every text-to-image run: prompt, seed, number of images, CLIP re-ranking
                 candidates, the sampler options the pipeline declares (``sample_options``), a
                 random test / held-out caption, and under each image the dataset judge's
                 reading of it against the prompt when the prompt is in the dataset's grammar.
  Interpolate    runs with ``interpolate_prompts`` (the GAN): caption a -> b with fixed noise.
  Compose        runs with ``composition_steps`` (Text2Scene): the canvas step by step and the
                 scene as JSON.
  Variations     runs with ``variations`` (unCLIP): variations of an uploaded or generated
                 image, and the interpolation between two.
  Complete       runs with ``complete`` (DALL-E): the top half of an image kept, the rest
                 sampled under a caption.
  Style transfer runs of Gatys et al.'s optimisation: a content and a style upload, optimised
                 with the run's settings.
  Stylize        runs with ``stylize_image`` (fast style transfer): an uploaded photo in the
                 run's style.

The logic (``DemoModel``) needs no web framework and is what the tests call directly; ``build_app``
draws the page with Gradio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import random
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Limits of one request: images per prompt, re-ranking candidates, prompt-free seeds.
MAX_IMAGES = 16
MAX_CANDIDATES = 8
MAX_SEED = 2**31 - 1
MAX_STEPS = 16  # images along an interpolation
MAX_SAMPLES = 32  # images x candidates of one request
MAX_UPLOAD_SIDE = 512  # an upload's longer side (larger ones are shrunk)
# Each new setting (steps, guidance, batch, upload shape) compiles a program that stays cached;
# past this many distinct ones the caches are cleared, so no client can grow the server's memory
# without bound by varying its settings.
MAX_PROGRAMS = 32


class DemoError(ValueError):
    """A request the page answers with a message instead of images."""


@contextlib.contextmanager
def _as_message():
    """A pipeline's own check of a request (a ValueError) as a message for the page."""
    try:
        yield
    except ValueError as e:
        raise DemoError(str(e)) from None


@dataclasses.dataclass
class Result:
    """What one request returns: images with a caption each, and a summary line."""

    images: np.ndarray
    captions: list[str]
    summary: str


def _check_int(name: str, value, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a whole number, got {value!r}.") from None
    if number != value or not low <= number <= high:
        raise DemoError(f"{name} must be a whole number in [{low}, {high}], got {value!r}.")
    return number


def as_rgb(image, size: int | None, what: str = "image") -> np.ndarray:
    """An uploaded image (uint8 or float array, grey, RGB or RGBA) as uint8 ``[size, size, 3]``,
    centre-cropped to a square (``size=None``: its own aspect, the longer side at most
    ``MAX_UPLOAD_SIDE``); DemoError for anything else."""
    from PIL import Image

    if image is None:
        raise DemoError(f"Upload an {what} first.")
    array = np.asarray(image)
    if array.dtype == object or array.ndim not in (2, 3) or min(array.shape[:2], default=0) < 1:
        raise DemoError(f"The {what} is not an image (got an array of shape {array.shape}).")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        raise DemoError(f"The {what} has {array.shape[-1]} channels; give a grey, RGB or RGBA one.")
    if array.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0 else 1.0
        array = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    pil = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    pil = pil.convert("RGB")
    if size is None:
        pil.thumbnail((MAX_UPLOAD_SIDE, MAX_UPLOAD_SIDE), Image.Resampling.BICUBIC)
        return np.asarray(pil)
    side = min(pil.size)
    left, top = (pil.size[0] - side) // 2, (pil.size[1] - side) // 2
    pil = pil.crop((left, top, left + side, top + side))
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))


def describe_reading(reading: dict[str, bool] | None) -> str:
    """``{"colour": True, "shape": False}`` -> "colour ✓ · shape ✗"."""
    if reading is None:
        return ""
    return " · ".join(f"{k} {'✓' if v else '✗'}" for k, v in reading.items())


def summarize_readings(readings: list[dict[str, bool]] | None, example: str) -> str:
    """One line over the images of a request: how many follow the prompt, per attribute."""
    if readings is None:
        hint = f' such as "{example}"' if example else ""
        return (
            "The judge reads prompts in the dataset's grammar"
            f"{hint}; this one is outside it, so nothing is judged."
        )
    n = len(readings)
    right = sum(all(r.values()) for r in readings)
    per = ", ".join(f"{k} {sum(r[k] for r in readings)}/{n}" for k in readings[0])
    return f"Judge: {right}/{n} images follow the prompt ({per})."


class DemoModel:
    """One trained workdir behind a lock: what the page asks of it, checked."""

    def __init__(self, name: str, model):
        self.name, self.model = name, model
        self.pipeline, self.config = model.pipeline, model.config
        self.lock = threading.Lock()
        self._examples: dict[str, list[str]] = {}
        self._programs: set = set()

    def _compiles(self, *setting) -> None:
        """Notes the setting a request compiles for; clears JAX's caches when there are more
        than ``MAX_PROGRAMS`` of them (called under the lock)."""
        import jax

        if setting not in self._programs and len(self._programs) >= MAX_PROGRAMS:
            jax.clear_caches()
            self._programs.clear()
        self._programs.add(setting)

    @property
    def family(self) -> str:
        return str(self.config.pipeline)

    @property
    def text_to_image(self) -> bool:
        return bool(self.pipeline.prompts_are_text)

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def options(self):
        return tuple(self.pipeline.sample_options)

    @property
    def reranks(self) -> bool:
        return bool(str(self.config.sample.get("rerank_clip", "") or ""))

    def caption_splits(self) -> tuple[str, ...]:
        """The splits a run reports (e.g. test, heldout): the page's random captions."""
        return tuple(self.config.get("eval", {}).get("splits", ("test",)))

    def random_caption(self, split: str, seed: int) -> str:
        if split not in self.caption_splits():
            raise DemoError(f"{self.name} has no {split!r} captions.")
        if split not in self._examples:
            self._examples[split] = self.pipeline.judge.prompts(split, 256, seed=7)[0]
        captions = self._examples[split]
        return captions[seed % len(captions)]

    def has(self, method: str) -> bool:
        return callable(getattr(self.pipeline, method, None))

    # -- requests ---------------------------------------------------------------------------
    def check_prompt(self, prompt) -> str:
        from jaxgen.data import tokenizer

        if not isinstance(prompt, str):
            raise DemoError(f"The prompt must be text, got {type(prompt).__name__}.")
        try:
            self.pipeline.tokenize([prompt])  # the family's own checks (e.g. a vocabulary)
        except tokenizer.PromptError as e:
            message = str(e)
            raise DemoError(f"{message[:1].upper()}{message[1:]}.") from None
        return prompt

    def sampler_options(self, values: dict) -> dict:
        """The pipeline's declared options among ``values`` (others ignored), each checked."""
        out = {}
        for option in self.options:
            if values.get(option.name) is None:
                continue
            try:
                out[option.name] = option.check(values[option.name])
            except ValueError as e:
                raise DemoError(str(e)) from None
        return out

    def _generate_kwargs(self, total: int) -> dict:
        """A compiled batch near the request's size (powers of two up to the config's), so a
        request for 4 images does not sample a batch of 64."""
        if "batch_size" not in inspect.signature(self.pipeline.generate).parameters:
            return {}
        cap = int(self.config.sample.get("batch_size", 64) or 64)
        return {"batch_size": min(cap, 1 << max(0, total - 1).bit_length())}

    def generate(
        self, prompt, *, seed=0, num_images=4, candidates=1, options: dict | None = None
    ) -> Result:
        import jax

        if not self.text_to_image:
            raise DemoError(f"{self.name} ({self.family}) does not generate from text.")
        prompt = self.check_prompt(prompt)
        seed = _check_int("seed", seed, 0, MAX_SEED)
        num = _check_int("number of images", num_images, 1, MAX_IMAGES)
        k = _check_int("candidates", candidates, 1, MAX_CANDIDATES)
        if num * k > MAX_SAMPLES:
            raise DemoError(
                f"{num} images x {k} candidates is {num * k} samples; at most {MAX_SAMPLES} "
                "per request."
            )
        if k > 1 and not self.reranks:
            raise DemoError(f"{self.name} has no CLIP to re-rank with: use 1 candidate.")
        opts = self.sampler_options(options or {})
        opts.update(self._generate_kwargs(num * k))
        with self.lock, _as_message():
            self._compiles("generate", *sorted(opts.items()))
            images = self.pipeline.rerank(
                self.model.state, [prompt] * num, jax.random.key(seed), candidates=k, **opts
            )
        images = np.asarray(images)
        judge = self.pipeline.judge
        if not judge.has_truth:  # a dataset without ground truth: nothing to judge against
            return Result(images, [""] * num, "")
        readings = judge.read(images, prompt)
        example = self.random_caption(self.caption_splits()[0], 0)
        captions = [describe_reading(r) for r in readings] if readings else [""] * num
        return Result(images, captions, summarize_readings(readings, example))

    def interpolate(self, prompt_a, prompt_b, *, num=8, seed=0) -> Result:
        a, b = self.check_prompt(prompt_a), self.check_prompt(prompt_b)
        num = _check_int("steps", num, 2, MAX_STEPS)
        seed = _check_int("seed", seed, 0, MAX_SEED)
        with self.lock, _as_message():
            images = np.asarray(
                self.pipeline.interpolate_prompts(self.model.state, a, b, num, seed)
            )
        captions = [f"{i / (num - 1):.2f}" for i in range(num)]
        return Result(images, captions, f'"{a}" → "{b}", one noise vector')

    def compose(self, prompt, *, seed=0) -> tuple[Result, list[dict]]:
        import jax

        prompt = self.check_prompt(prompt)
        rng = jax.random.key(_check_int("seed", seed, 0, MAX_SEED))
        with self.lock, _as_message():
            steps = np.asarray(self.pipeline.composition_steps(self.model.state, [prompt], rng))
            scene = self.pipeline.generate_scenes(self.model.state, [prompt], rng)[0]
        captions = ["empty canvas"] + [f"after step {i}" for i in range(1, len(steps[0]))]
        return Result(steps[0], captions, f"{len(scene)} objects placed"), scene

    def variations(self, image, *, num=4, seed=0) -> Result:
        import jax

        image = as_rgb(image, self.image_size)
        num = _check_int("number of variations", num, 1, MAX_IMAGES)
        rng = jax.random.key(_check_int("seed", seed, 0, MAX_SEED))
        with self.lock, _as_message():
            out = np.asarray(self.pipeline.variations(self.model.state, image[None], rng, num=num))
        images = np.concatenate([image[None], out[0]])
        return Result(images, ["input"] + [f"variation {i + 1}" for i in range(num)], "")

    def interpolate_images(self, image_a, image_b, *, steps=5, seed=0) -> Result:
        import jax

        a = as_rgb(image_a, self.image_size, "image A")
        b = as_rgb(image_b, self.image_size, "image B")
        steps = _check_int("steps", steps, 2, MAX_STEPS)
        rng = jax.random.key(_check_int("seed", seed, 0, MAX_SEED))
        with self.lock, _as_message():
            out = np.asarray(self.pipeline.interpolate(self.model.state, a, b, rng, steps=steps))
        return Result(out, [f"{i / (steps - 1):.2f}" for i in range(steps)], "")

    def complete(self, image, prompt, *, seed=0) -> Result:
        import jax

        prompt = self.check_prompt(prompt)
        image = as_rgb(image, self.image_size)
        rng = jax.random.key(_check_int("seed", seed, 0, MAX_SEED))
        rows = int(self.pipeline.model.grid) // 2
        with self.lock, _as_message():
            out = np.asarray(
                self.pipeline.complete(self.model.state, [prompt], image[None], rows, rng)
            )
        return Result(np.stack([image, out[0]]), ["given (top half kept)", "completed"], "")

    def stylize_pair(self, content, style, *, iterations=100, size=128) -> Result:
        """Gatys et al.'s optimisation of ``content`` towards ``style`` (two uploads) with this
        run's settings (its feature network, weights and optimiser), ``iterations`` of it at
        ``size`` pixels: a new optimisation, compiled afresh, per request."""
        import jax

        iterations = _check_int("iterations", iterations, 1, 1000)
        size = _check_int("size", size, 16, 512)
        images = [as_rgb(content, size, "content image"), as_rgb(style, size, "style image")]
        config = self.config.copy_and_resolve_references()
        with config.ignore_type():  # arrays in place of paths
            config.content, config.style = images[0], [images[1]]
        config.image_size = size
        config.optim.iterations = config.optim.chunk = iterations
        with self.lock, _as_message():
            pipeline = type(self.pipeline)(config)
            state = pipeline.optimise(jax.jit(pipeline.init)(jax.random.key(0), None))
            out = pipeline.result(state)
        return Result(np.stack([*images, out]), ["content", "style", "stylised"], "")

    def stylize(self, image) -> Result:
        content = as_rgb(image, None)  # its own aspect: the network takes any
        with self.lock, _as_message():
            self._compiles("stylize", content.shape)
            out = np.asarray(self.pipeline.stylize_image(self.model.state, content))
        return Result(out[None], ["stylised"], "")


def load_models(workdirs: Sequence[str]) -> dict[str, DemoModel]:
    """Each workdir loaded once (given twice, served once), named by its folder (numbered when
    two share a name).
    SystemExit naming every workdir that fails to load and why."""
    from jaxgen import api

    models, failures, seen = {}, [], set()
    for workdir in workdirs:
        if Path(workdir).resolve() in seen:  # one model instance per workdir
            continue
        seen.add(Path(workdir).resolve())
        try:
            model = api.load(workdir)
        except Exception as e:  # noqa: BLE001 - reported per workdir at start-up
            failures.append(f"  {workdir}: {type(e).__name__}: {e}")
            continue
        name = Path(workdir).resolve().name
        unique, i = name, 2
        while unique in models:
            unique, i = f"{name}-{i}", i + 1
        models[unique] = DemoModel(unique, model)
    if failures:
        raise SystemExit("Could not load:\n" + "\n".join(failures))
    if not models:
        raise SystemExit("Give at least one trained workdir: --workdir=runs/ddpm")
    return models


# -- the page ------------------------------------------------------------------------------------
def _gallery(result: Result):
    return [(img, cap) for img, cap in zip(result.images, result.captions, strict=True)]


def _numbered(captions: list[str]) -> str:
    """The judge's readings as a numbered list (the gallery's captions are cut short)."""
    return "\n".join(f"{i}. {c}" for i, c in enumerate(captions, 1) if c)


def _label(option) -> str:
    return f"{option.name} ({option.help})" if option.help else option.name


def _positional(n: int, progress) -> inspect.Signature:
    """A signature of ``n`` positional inputs and then a progress tracker."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(f"input_{i}", kind) for i in range(n)]
    return inspect.Signature([*params, inspect.Parameter("progress", kind, default=progress)])


def _error(e: Exception) -> str:
    return f"**Error:** {e}"


def build_app(models: dict[str, DemoModel]):
    """The Gradio page over ``models`` (name -> DemoModel)."""
    import gradio as gr

    names = list(models)
    text_models = [n for n in names if models[n].text_to_image]
    # One control per sampler option name across the models; shown for the models that have it.
    option_specs = {}
    for name in text_models:
        for option in models[name].options:
            option_specs.setdefault(option.name, option)

    def lookup(name) -> DemoModel:
        if name not in models:
            raise DemoError(f"Unknown model {name!r}; this page serves {', '.join(names)}.")
        return models[name]

    with gr.Blocks(title="jaxgen demo") as app:
        gr.Markdown("# jaxgen\nType a caption, pick a model, press **Generate**.")
        if text_models:
            with gr.Tab("Generate"):
                first = models[text_models[0]]
                with gr.Row():
                    model = gr.Dropdown(text_models, value=text_models[0], label="model")
                    prompt = gr.Textbox(
                        label="prompt",
                        placeholder="a large red circle left of a small blue square",
                        elem_id="prompt",
                        scale=3,
                    )
                with gr.Row():
                    test_button = gr.Button("random test caption", elem_id="random-test")
                    heldout_button = gr.Button(
                        "random held-out caption",
                        elem_id="random-heldout",
                        visible=any("heldout" in models[n].caption_splits() for n in text_models),
                    )
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                    num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images")
                    candidates = gr.Slider(
                        1,
                        MAX_CANDIDATES,
                        value=1,
                        step=1,
                        label="CLIP re-ranking candidates",
                        visible=first.reranks,
                    )
                controls = {}
                with gr.Accordion("sampler", open=False):
                    mine = {o.name: o for o in first.options}
                    for option in option_specs.values():
                        visible = option.name in mine
                        label = _label(mine.get(option.name, option))
                        value = mine[option.name].default(first.config) if visible else None
                        if option.kind == "choice":
                            controls[option.name] = gr.Dropdown(
                                list(option.choices), value=value, label=label, visible=visible
                            )
                        else:
                            controls[option.name] = gr.Number(
                                value=value,
                                label=label,
                                visible=visible,
                                precision=0 if option.kind == "int" else None,
                                minimum=option.low,
                                maximum=option.high,
                            )
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="images", columns=4, elem_id="gallery", height="auto")
                readings = gr.Markdown(elem_id="readings")
                option_names = list(controls)

                def on_model(name):
                    m = lookup(name)
                    mine = {o.name: o for o in m.options}
                    updates = [gr.update(visible=m.reranks, value=1)]
                    for option_name in option_names:
                        o = mine.get(option_name)
                        if o is None:
                            updates.append(gr.update(visible=False, value=None))
                        elif o.kind == "choice":
                            updates.append(
                                gr.update(
                                    visible=True, value=o.default(m.config), choices=o.choices
                                )
                            )
                        else:  # this model's range and help, not the first model's
                            updates.append(
                                gr.update(
                                    visible=True,
                                    value=o.default(m.config),
                                    label=_label(o),
                                    minimum=o.low,
                                    maximum=o.high,
                                )
                            )
                    return updates

                model.change(
                    on_model, model, [candidates, *controls.values()], api_visibility="private"
                )

                def on_generate(name, text, seed_value, n, k, *rest):
                    *values, progress = rest
                    try:
                        m = lookup(name)
                        progress(0.0, desc=f"sampling with {name}")
                        result = m.generate(
                            text,
                            seed=seed_value,
                            num_images=n,
                            candidates=k,
                            options=dict(zip(option_names, values, strict=True)),
                        )
                    except DemoError as e:
                        return _error(e), [], ""
                    return result.summary, _gallery(result), _numbered(result.captions)

                # Gradio finds its progress tracker among positional parameters only.
                on_generate.__signature__ = _positional(5 + len(controls), gr.Progress())

                go.click(
                    on_generate,
                    [model, prompt, seed, num_images, candidates, *controls.values()],
                    [status, gallery, readings],
                    api_name="generate",
                )
                prompt.submit(
                    on_generate,
                    [model, prompt, seed, num_images, candidates, *controls.values()],
                    [status, gallery, readings],
                    api_visibility="private",
                )

                def caption_from(split):
                    def pick(name):
                        try:
                            return lookup(name).random_caption(split, random.randrange(1 << 30)), ""
                        except DemoError as e:
                            return gr.update(), _error(e)

                    return pick

                for button, split in ((test_button, "test"), (heldout_button, "heldout")):
                    button.click(
                        caption_from(split), model, [prompt, status], api_visibility="private"
                    )

        _family_tabs(gr, models, lookup)
    return app


def _family_tabs(gr, models: dict[str, DemoModel], lookup) -> None:
    """The tabs of what only some families do, each over the models that can."""

    def having(method):
        return [n for n, m in models.items() if m.has(method)]

    def shown(ask):
        """A handler of (model name, *inputs): ``ask(model, *inputs)``'s Result as the tab's
        (status, gallery), or the message of a DemoError."""

        def run(name, *inputs):
            try:
                result = ask(lookup(name), *inputs)
            except DemoError as e:
                return _error(e), []
            return result.summary, _gallery(result)

        return run

    if names := having("interpolate_prompts"):
        with gr.Tab("Interpolate"):
            model = gr.Dropdown(names, value=names[0], label="model")
            with gr.Row():
                a = gr.Textbox(label="caption a", value="a large red circle")
                b = gr.Textbox(label="caption b", value="a large blue square")
            with gr.Row():
                steps = gr.Slider(2, MAX_STEPS, value=8, step=1, label="steps")
                seed = gr.Number(value=0, precision=0, label="noise seed")
            go = gr.Button("Interpolate", variant="primary")
            status, gallery = gr.Markdown(), gr.Gallery(columns=8, height="auto")

            go.click(
                shown(lambda m, pa, pb, n, s: m.interpolate(pa, pb, num=n, seed=s)),
                [model, a, b, steps, seed],
                [status, gallery],
            )

    if names := having("composition_steps"):
        with gr.Tab("Compose"):
            model = gr.Dropdown(names, value=names[0], label="model")
            prompt = gr.Textbox(label="prompt", value=models[names[0]].random_caption("test", 0))
            seed = gr.Number(value=0, precision=0, label="seed")
            go = gr.Button("Compose", variant="primary")
            status, gallery = gr.Markdown(), gr.Gallery(columns=8, height="auto")
            scene = gr.JSON(label="scene")

            def compose(name, text, s):
                try:
                    r, objects = lookup(name).compose(text, seed=s)
                except DemoError as e:
                    return _error(e), [], None
                return r.summary, _gallery(r), objects

            go.click(compose, [model, prompt, seed], [status, gallery, scene])

    if names := having("variations"):
        with gr.Tab("Variations"):
            model = gr.Dropdown(names, value=names[0], label="model")
            with gr.Row():
                image_a = gr.Image(type="numpy", label="image (A)")
                image_b = gr.Image(type="numpy", label="image B (interpolation)")
            with gr.Row():
                num = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="variations / steps")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Row():
                caption = gr.Textbox(label="or draw image A from a caption", scale=3)
                draw = gr.Button("Draw A")
            with gr.Row():
                vary = gr.Button("Variations of A", variant="primary")
                between = gr.Button("Interpolate A -> B")
            status, gallery = gr.Markdown(), gr.Gallery(columns=8, height="auto")

            def draw_a(name, text, s):
                try:
                    return lookup(name).generate(text, seed=s, num_images=1).images[0], ""
                except DemoError as e:
                    return gr.update(), _error(e)

            draw.click(draw_a, [model, caption, seed], [image_a, status])

            vary.click(
                shown(lambda m, img, n, s: m.variations(img, num=n, seed=s)),
                [model, image_a, num, seed],
                [status, gallery],
            )
            between.click(
                shown(lambda m, a, b, n, s: m.interpolate_images(a, b, steps=n, seed=s)),
                [model, image_a, image_b, num, seed],
                [status, gallery],
            )

    if names := having("complete"):
        with gr.Tab("Complete"):
            model = gr.Dropdown(names, value=names[0], label="model")
            image = gr.Image(type="numpy", label="image (its top half is kept)")
            prompt = gr.Textbox(label="caption of the whole image")
            seed = gr.Number(value=0, precision=0, label="seed")
            go = gr.Button("Complete", variant="primary")
            status, gallery = gr.Markdown(), gr.Gallery(columns=2, height="auto")

            go.click(
                shown(lambda m, img, text, s: m.complete(img, text, seed=s)),
                [model, image, prompt, seed],
                [status, gallery],
            )

    if names := [n for n in having("optimise") if not models[n].text_to_image]:
        with gr.Tab("Style transfer"):
            model = gr.Dropdown(names, value=names[0], label="settings of")
            with gr.Row():
                content = gr.Image(type="numpy", label="content")
                style = gr.Image(type="numpy", label="style")
            with gr.Row():
                iterations = gr.Slider(1, 1000, value=100, step=1, label="iterations")
                size = gr.Slider(16, 512, value=128, step=16, label="size (pixels)")
            go = gr.Button("Optimise", variant="primary")
            status, gallery = gr.Markdown(), gr.Gallery(columns=3, height="auto")

            go.click(
                shown(lambda m, c, st, n, px: m.stylize_pair(c, st, iterations=n, size=px)),
                [model, content, style, iterations, size],
                [status, gallery],
            )

    if names := having("stylize_image"):
        with gr.Tab("Stylize"):
            model = gr.Dropdown(names, value=names[0], label="model")
            image = gr.Image(type="numpy", label="photo")
            go = gr.Button("Stylize", variant="primary")
            status, gallery = gr.Markdown(), gr.Gallery(columns=1, height="auto")

            go.click(shown(lambda m, img: m.stylize(img)), [model, image], [status, gallery])


def serve(models: dict[str, DemoModel], host: str = "127.0.0.1", port: int = 7860, **launch):
    """Builds the page and serves it (blocks unless ``prevent_thread_lock=True``): requests
    queue, at most two sample at once, and one model samples one request at a time."""
    app = build_app(models)
    app.queue(default_concurrency_limit=2, max_size=64)
    launch.setdefault("max_file_size", "20mb")  # uploads; larger ones are refused
    app.launch(server_name=host, server_port=port, show_error=True, **launch)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jaxgen.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", action="append", required=True, help="a trained run (repeat for more)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    # Nothing leaves the machine: no usage reports, no share links.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('The demo needs Gradio: pip install -e ".[demo]"') from None
    models = load_models(args.workdir)
    for name, m in models.items():
        print(f"{name}: {m.family} from {m.model.workdir} (step {m.model.step})", flush=True)
    print(f"Serving on http://{args.host}:{args.port}", flush=True)
    serve(models, args.host, args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
