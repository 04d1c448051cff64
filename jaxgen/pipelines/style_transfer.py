"""Neural style transfer: Gatys, Ecker and Bethge (2016) by optimising the image, and Johnson,
Alahi and Fei-Fei (2016) by a feed-forward network trained with the same losses.

``style_transfer``: the state is the image being optimised (and its optimiser's state). The loss
is ``content_weight * sum_l 1/2 ||F_l(x) - F_l(c)||^2 + style_weight * sum_l w_l E_l(x, s)
+ tv_weight * TV(x)`` with Gatys et al.'s Gram-matrix style loss ``E_l``
(``jaxgen.evaluation.style_metrics``), read from a feature network (``config.features``: VGG
weights from a file, or with none the random multi-scale network, ``jaxgen.models.feature_nets``).
One training step is ``optim.chunk`` iterations of L-BFGS (optax's, with its zoom line search)
or Adam inside one ``lax.scan``; the generic loop reports progress and checkpoints between chunks.
``StyleTransferPipeline.optimise`` runs any number of iterations as one compiled program, with
progress reported from outside it every ``report_every`` iterations (``jaxgen.stylize``).

Options as jcjohnson/neural-style names them: several style images blended by weight
(``style_blend_weights``), ``style_scale``, ``init`` (content, noise, style), ``tv_weight``,
colour preservation (``preserve_colors``: "luminance" keeps the content's chrominance under the
result's luminance, as neural-style's original_colors; "histogram" gives the style images the
content's colour mean and covariance before the transfer, Gatys et al. 2017), coarse-to-fine
optimisation (``optim.scales``), and a spatial mask (``mask``: style only where it is white).

``fast_style_transfer``: Johnson et al.'s transformation network (``jaxgen.models.transform_net``)
trained on crops (``content_crops``) to minimise the same loss against its own input's content;
then one forward pass stylises any image.

Both are judged with a *different* feature network (``eval.features``, another seed and filter
size of the random network by default): the style distance to the style image, against the
content image's own, the content distance and the colour distance to the content image.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxgen.data import style_images
from jaxgen.data.pixels import to_model_space as to_model
from jaxgen.data.pixels import to_uint8
from jaxgen.evaluation import style_metrics
from jaxgen.models import feature_nets
from jaxgen.models.transform_net import TransformNet
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline

PRESERVE_COLORS = ("none", "luminance", "histogram")
INITS = ("content", "noise", "style")
OPTIMIZERS = ("lbfgs", "adam")


def _as_list(value) -> list:
    """Comma-separated names, or a sequence of names and arrays."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _floats(value) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in value.split(",") if v.strip()]
    return [float(v) for v in value]


class StyleLoss:
    """The perceptual loss of both variants, for one feature network and one set of styles.

    ``targets(content, styles)`` computes what the loss compares with (the content's features,
    the styles' blended Gram matrices, rescaled to the result's number of positions) and
    ``__call__(net, targets, images, mask)`` the loss per image ``[B]`` and its parts.
    """

    def __init__(self, config, net):
        lc = config.loss
        default_content, default_style = feature_nets.default_layers(net)
        self.content_layers = tuple(lc.get("content_layers") or default_content)
        self.style_layers = tuple(lc.get("style_layers") or default_style)
        valid = feature_nets.layer_names(net)
        bad = [n for n in self.content_layers + self.style_layers if n not in valid]
        if bad:
            raise ValueError(f"loss layers {bad} are not in the feature network; valid: {valid}")
        weights = _floats(lc.get("style_layer_weights") or ())
        if weights and len(weights) != len(self.style_layers):
            raise ValueError(
                f"loss.style_layer_weights has {len(weights)} values for "
                f"{len(self.style_layers)} style layers {self.style_layers}"
            )
        self.layer_weights = weights or [1.0 / len(self.style_layers)] * len(self.style_layers)
        self.content_weight = float(lc.content_weight)
        self.style_weight = float(lc.style_weight)
        self.tv_weight = float(lc.tv_weight)

    def grams(self, net, images: jax.Array, mask: jax.Array | None = None) -> dict:
        """Gram matrices per position ``G / M`` of each style layer (``[B, C, C]``); with a
        mask ``[B, H, W, 1]``, of the masked features (Gatys et al. 2017's spatial control)."""
        acts = feature_nets.activations(net, images, self.style_layers)
        out = {}
        for name, f in acts.items():
            if mask is not None:
                f = f * _resize_mask(mask, f.shape)
            out[name] = style_metrics.gram(f) / (f.shape[1] * f.shape[2])
        return out

    def targets(self, net, content: jax.Array, styles: Sequence[jax.Array], blend) -> dict:
        """``content`` ``[B, H, W, 3]``; ``styles`` each ``[1, h, w, 3]`` (any sizes); ``blend``
        the styles' weights (summing to 1)."""
        feats = feature_nets.activations(net, content, self.content_layers)
        return {"content": feats, "grams": self.grams_of(net, styles, blend)}

    def grams_of(self, net, styles: Sequence[jax.Array], blend) -> dict:
        """The styles' Gram matrices per position ``[C, C]``, blended by weight."""
        grams = None
        for image, w in zip(styles, blend, strict=True):
            g = {k: w * v[0] for k, v in self.grams(net, image).items()}
            grams = g if grams is None else jax.tree.map(jnp.add, grams, g)
        return grams

    def __call__(self, net, targets, images, mask=None):
        acts = feature_nets.activations(net, images, self.content_layers + self.style_layers)
        content = sum(
            style_metrics.content_loss(acts[n], targets["content"][n]) for n in self.content_layers
        )
        feats, grams = [], []
        for n in self.style_layers:
            f = acts[n]
            if mask is not None:
                f = f * _resize_mask(mask, f.shape)
            feats.append(f)
            grams.append(targets["grams"][n] * (f.shape[1] * f.shape[2]))  # back to G's scale
        style = style_metrics.style_loss(feats, grams, self.layer_weights)
        tv = style_metrics.total_variation(images)
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return total, {"content": content, "style": style, "tv": tv}


def _resize_mask(mask: jax.Array, shape) -> jax.Array:
    return jax.image.resize(mask, (shape[0], shape[1], shape[2], 1), "linear", antialias=True)


def _load_styles(config, content: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """The style images (at ``style_scale`` times the content's longer side, colour-matched to
    the content for ``preserve_colors="histogram"``) and their normalised blend weights."""
    names = _as_list(config.style)
    if not names:
        raise ValueError("style transfer needs at least one style image (--config.style=PATH)")
    weights = _floats(config.get("style_blend_weights") or ()) or [1.0] * len(names)
    if len(weights) != len(names) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"style_blend_weights {weights} must be {len(names)} non-negative numbers, not all 0"
        )
    scale = float(config.get("style_scale", 1.0))
    if scale <= 0:
        raise ValueError(f"style_scale must be positive, got {scale}")
    size = max(style_images.MIN_SIZE, round(max(content.shape[:2]) * scale))
    styles = []
    for i, name in enumerate(names):
        image = style_images.fit(style_images.load_image(name, f"style image {i}"), size)
        if config.get("preserve_colors", "none") == "histogram":
            image = style_images.match_colors(image, content)
        styles.append(image)
    return styles, [w / sum(weights) for w in weights]


def _check_choice(name: str, value: str, valid) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    return value


class _StyleFamily(Pipeline):
    """What both variants share: the feature network, the loss and the judge."""

    prompts_are_text = False  # prompts name the content images

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        self.preserve = _check_choice(
            "preserve_colors", str(config.get("preserve_colors", "none")), PRESERVE_COLORS
        )
        self.net = feature_nets.load(config.features, int(config.get("features_seed", 0)))
        self.net_name = feature_nets.describe(
            self.net,
            int(config.get("features_seed", 0)) if feature_nets.is_random(self.net) else None,
        )
        logging.warning("Style transfer features: %s.", self.net_name)
        self.loss = StyleLoss(config, self.net)

    def default_prompts(self, n: int) -> list[str]:
        return [str(self.config.content)]

    def postprocess(self, result: np.ndarray, content: np.ndarray) -> np.ndarray:
        """The luminance-only transfer keeps the content's chrominance."""
        if self.preserve == "luminance":
            return style_images.keep_colors(result, content)
        return result

    @functools.cached_property
    def _judge(self):
        """The evaluation network, its loss and that loss's parts compiled, built once."""
        ec = self.config.eval
        net = feature_nets.load(ec.features, int(ec.features_seed))
        judge = StyleLoss(_judge_config(net), net)
        return net, judge, jax.jit(lambda net, targets, images: judge(net, targets, images)[1])

    def judge_images(self, result: np.ndarray, content: np.ndarray, styles, blend) -> dict:
        """Style, content and colour distances of ``result`` (uint8 ``[H, W, 3]``) under the
        evaluation network, beside the content image's own."""
        net, judge, parts = self._judge
        c, r = to_model(content[None]), to_model(result[None])
        targets = judge.targets(net, c, [to_model(s[None]) for s in styles], blend)
        mine, own = parts(net, targets, r), parts(net, targets, c)
        content_norm = sum(float(jnp.sum(jnp.square(v))) / 2 for v in targets["content"].values())
        out = {
            "style_distance": float(mine["style"][0]),
            "style_distance_of_content": float(own["style"][0]),
            "content_distance": float(mine["content"][0]) / content_norm,
            "color_distance_to_content": style_images.color_distance(result, content),
        }
        out["style_reduction"] = out["style_distance_of_content"] / max(
            out["style_distance"], 1e-30
        )
        return out


def _judge_config(net):
    """Equal weights over every layer of the evaluation network, its default content layer."""
    import ml_collections

    content, _ = feature_nets.default_layers(net)
    return ml_collections.ConfigDict(
        dict(
            loss=dict(
                content_weight=1.0,
                style_weight=1.0,
                tv_weight=0.0,
                content_layers=content,
                style_layers=tuple(feature_nets.layer_names(net)),
                style_layer_weights=(),
            )
        )
    )


class StyleTransferPipeline(_StyleFamily):
    """Gatys et al.: the pixels are the parameters."""

    needs_data = False

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        oc = config.optim
        self.init_kind = _check_choice("init", str(config.init), INITS)
        self.kind = _check_choice("optim.optimizer", str(oc.optimizer), OPTIMIZERS)
        self.iterations, self.chunk = int(oc.iterations), int(oc.chunk)
        if self.iterations < 1 or self.chunk < 1 or self.iterations % self.chunk:
            raise ValueError(
                f"optim.iterations ({self.iterations}) must be a positive multiple of "
                f"optim.chunk ({self.chunk}), the iterations of one step"
            )
        self.content = style_images.fit(
            style_images.load_image(config.content, "content image"), int(config.image_size)
        )
        self.styles, self.blend = _load_styles(config, self.content)
        self.scales = tuple(float(s) for s in oc.get("scales", (1.0,)))
        if not self.scales or self.scales[-1] != 1.0 or any(s <= 0 for s in self.scales):
            raise ValueError(f"optim.scales must end with 1.0 (full size), got {self.scales}")
        self._programs = {}  # optimise's compiled programs
        self.mask = None
        spec = config.get("mask", "")
        if not (isinstance(spec, str) and not spec):
            m = style_images.load_image(spec, "mask")
            m = style_images.resize(m, *self.content.shape[:2])
            self.mask = (m.mean(-1) / 255.0).astype(np.float32)[None, :, :, None]

    # -- the optimisation ---------------------------------------------------------------------
    def optimizer(self) -> optax.GradientTransformation:
        oc = self.config.optim
        if self.kind == "adam":
            return optax.adam(float(oc.learning_rate))
        return optax.lbfgs(
            memory_size=int(oc.memory),
            linesearch=optax.scale_by_zoom_linesearch(
                max_linesearch_steps=int(oc.max_linesearch_steps)
            ),
        )

    def _objective(self, net, targets, mask):
        def f(image):
            return jnp.sum(self.loss(net, targets, image, mask)[0])

        return f

    def _iterate(self, image, opt_state, net, targets, mask, num: int, report_every: int = 0):
        f = self._objective(net, targets, mask)
        lbfgs = self.kind == "lbfgs"
        return minimize(f, image, opt_state, self.optimizer(), lbfgs, num, report_every)

    def _problem(self, scale: float):
        """The content, style and mask arrays at ``scale`` of the full size."""
        h, w = self.content.shape[:2]
        hs, ws = max(16, round(h * scale)), max(16, round(w * scale))
        content = style_images.resize(self.content, hs, ws)
        styles = [
            style_images.fit(s, max(16, round(max(s.shape[:2]) * scale))) for s in self.styles
        ]
        mask = None if self.mask is None else jax.image.resize(self.mask, (1, hs, ws, 1), "linear")
        return to_model(content[None]), [to_model(s[None]) for s in styles], mask

    def _start(self, rng, content, styles):
        if self.init_kind == "content":
            return content
        if self.init_kind == "style":
            return jax.image.resize(styles[0], content.shape, "linear", antialias=True)
        # jcjohnson/neural-style's random init: small Gaussian noise.
        return 0.1 * jax.random.normal(rng, content.shape, jnp.float32)

    def init(self, rng, example_batch=None):
        """The image to optimise at full size, after the coarse scales' optimisations (when
        ``optim.scales`` has any: each starts from the previous one's result, upsampled)."""
        del example_batch
        image = None
        coarse = int(self.config.optim.get("coarse_iterations", 0))
        # The images and the network are constants of this program: the barrier keeps XLA from
        # spending seconds folding their features at compile time.
        net = jax.lax.optimization_barrier(self.net)
        for scale in self.scales:
            content, styles, mask = jax.lax.optimization_barrier(self._problem(scale))
            if image is None:
                image = self._start(rng, content, styles)
            else:
                image = jax.image.resize(image, content.shape, "linear")
            targets = self.loss.targets(net, content, styles, self.blend)
            if scale == 1.0:
                break
            start = self.optimizer().init(image)
            image = self._iterate(image, start, net, targets, mask, coarse)[0]
        return {
            "step": jnp.zeros((), jnp.int32),
            "image": image,
            "opt_state": self.optimizer().init(image),
            "targets": targets,
            "net": net,
            "losses": jnp.zeros((self.iterations,), jnp.float32),
        }

    def mask_array(self):
        return None if self.mask is None else jnp.asarray(self.mask)

    def train_step(self, state, batch, rng):
        del batch, rng
        image, opt_state, losses, evals = self._iterate(
            state["image"],
            state["opt_state"],
            state["net"],
            state["targets"],
            self.mask_array(),
            self.chunk,
        )
        _, parts = self.loss(state["net"], state["targets"], image, self.mask_array())
        start = state["step"] * self.chunk
        new = dict(
            state,
            step=state["step"] + 1,
            image=image,
            opt_state=opt_state,
            losses=jax.lax.dynamic_update_slice(state["losses"], losses, (start,)),
        )
        metrics = {
            "loss": losses[-1],
            "content_loss": jnp.sum(parts["content"]),
            "style_loss": jnp.sum(parts["style"]),
            "tv_loss": jnp.sum(parts["tv"]),
            "iterations": (state["step"] + 1) * self.chunk,
        }
        metrics["evaluations_per_iteration"] = jnp.mean(evals.astype(jnp.float32))
        return new, metrics

    def optimise(self, state, iterations: int | None = None, report_every: int = 0):
        """``iterations`` (default ``optim.iterations``) iterations as one compiled program;
        returns the new state (its ``losses`` hold the first ``optim.iterations`` losses)."""
        num = int(iterations or self.iterations)
        key = (num, int(report_every))
        if key not in self._programs:  # one compilation per (iterations, report_every)

            def run(image, opt_state, net, targets):
                mask = self.mask_array()
                return self._iterate(image, opt_state, net, targets, mask, num, report_every)

            self._programs[key] = jax.jit(run)
        image, opt_state, losses, _ = self._programs[key](
            state["image"], state["opt_state"], state["net"], state["targets"]
        )
        n = min(num, self.iterations)
        return dict(
            state,
            image=image,
            opt_state=opt_state,
            step=state["step"] + num // self.chunk,
            losses=state["losses"].at[:n].set(losses[:n]),
        )

    # -- results ------------------------------------------------------------------------------
    def result(self, state) -> np.ndarray:
        """The stylised image, uint8 ``[H, W, 3]`` (colour-preserved as configured)."""
        return self.postprocess(np.asarray(to_uint8(state["image"][0])), self.content)

    def generate(self, state, prompts, rng, **options) -> np.ndarray:
        """The optimised image for the content it was optimised for (``config.content``); any
        other content needs its own optimisation (``jaxgen.stylize``)."""
        del rng, options
        for p in prompts:
            if str(p) != str(self.config.content):
                raise ValueError(
                    f"This run optimised the image for {self.config.content!r}, not {p!r}: "
                    "stylising another image is another optimisation (jaxgen.stylize, or a run "
                    "with --config.content=...)."
                )
        return np.stack([self.result(state)] * len(prompts))

    def strip(self, state) -> np.ndarray:
        """content | style(s) | result, each at the content's height."""
        h = self.content.shape[0]
        panels = [self.content]
        for s in self.styles:
            panels.append(style_images.resize(s, h, max(1, round(s.shape[1] * h / s.shape[0]))))
        panels.append(self.result(state))
        gap = np.full((h, 4, 3), 255, np.uint8)
        out = [panels[0]]
        for p in panels[1:]:
            out += [gap, p]
        return np.concatenate(out, axis=1)

    def sample_images(self, state, prompts, rng) -> np.ndarray:
        del prompts, rng
        return self.strip(state)[None]

    def outputs(self, state) -> dict[str, np.ndarray]:
        done = int(state["step"]) * self.chunk
        return {
            "result": self.result(state),
            "strip": self.strip(state),
            "loss_curve": np.asarray(state["losses"][:done]),
        }

    def evaluators(self, plan):
        del plan

        def evaluate(state, rng):
            del rng
            out = self.judge_images(self.result(state), self.content, self.styles, self.blend)
            return {f"style/{k}": v for k, v in out.items()}

        return [evaluate]


def minimize(f, x, opt_state, tx, lbfgs: bool, num: int, report_every: int = 0):
    """``num`` iterations of ``tx`` on ``f(x)`` inside one ``lax.scan`` (call it under ``jit``).

    L-BFGS (``lbfgs``): optax's, whose line search evaluates ``f`` and whose accepted value and
    gradient are reused by the next iteration (``optax.value_and_grad_from_state``), so an
    iteration costs one evaluation when the first step is accepted. Returns ``(x, opt_state,
    losses, evaluations)``: ``losses[i]`` the value before iteration ``i``, ``evaluations[i]``
    the evaluations of ``f`` (and its gradient) the iteration made (1 for Adam; the line
    search's for L-BFGS, whose first iteration also evaluates at ``x``). With ``report_every``,
    the host prints the loss and an ETA every that many iterations (a callback out of the
    compiled loop).
    """
    value_and_grad = optax.value_and_grad_from_state(f) if lbfgs else jax.value_and_grad(f)
    progress = _Progress(num) if report_every else None

    def body(carry, i):
        x, s = carry
        if lbfgs:
            value, grad = value_and_grad(x, state=s)
            updates, s = tx.update(grad, s, x, value=value, grad=grad, value_fn=f)
            evals = optax.tree_utils.tree_get(s, "num_linesearch_steps") + (i == 0)
        else:
            value, grad = value_and_grad(x)
            updates, s = tx.update(grad, s, x)
            evals = jnp.ones((), jnp.int32)
        if progress is not None:
            jax.lax.cond(
                (i + 1) % report_every == 0,
                lambda: jax.debug.callback(progress, i + 1, value),
                lambda: None,
            )
        return (optax.apply_updates(x, updates), s), (value, evals.astype(jnp.int32))

    (x, opt_state), (losses, evals) = jax.lax.scan(body, (x, opt_state), jnp.arange(num))
    return x, opt_state, losses, evals


class _Progress:
    """Prints ``iteration i/num, loss, elapsed, ETA`` (the clock starts at the first report)."""

    def __init__(self, num: int):
        self.num, self.start = num, None

    def __call__(self, i, value):
        import time

        i, now = int(i), time.perf_counter()
        if self.start is None:
            self.start, self.first = now, i
            eta = ""
        else:
            rate = (now - self.start) / max(i - self.first, 1)
            eta = f", {now - self.start:.0f} s, ETA {rate * (self.num - i):.0f} s"
        print(f"style transfer: iteration {i}/{self.num}, loss {float(value):.6g}{eta}", flush=True)


class FastStyleTransferPipeline(_StyleFamily):
    """Johnson et al.: a network trained to stylise any image in one pass."""

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        nc = config.model.network
        self.model = TransformNet(width=int(nc.width), num_residual=int(nc.num_residual))
        self.tx = state_lib.make_optimizer(config.train)
        if self.preserve == "histogram":
            raise ValueError(
                'preserve_colors="histogram" matches the style to one content image, which a '
                'network for any image does not have: use "luminance" with the fast variant.'
            )
        size = int(config.data.image_size)
        self.styles, self.blend = _load_styles(config, np.zeros((size, size, 3), np.uint8))
        self.eval_size = int(config.image_size)

    def init(self, rng, example_batch):
        x = to_model(example_batch["image"][:1])
        params = {"net": self.model.init(rng, x)["params"]}
        # Constants of this program: the barrier keeps XLA from folding their features.
        net, styles = jax.lax.optimization_barrier(
            (self.net, [to_model(s[None]) for s in self.styles])
        )
        grams = self.loss.grams_of(net, styles, self.blend)
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params={**params, "grams": grams, "features": net},
            opt_state={"net": self.tx.init(params["net"])},
        )

    def apply(self, params, images: jax.Array) -> jax.Array:
        return self.model.apply({"params": params["net"]}, images)

    def train_step(self, state, batch, rng):
        del rng
        x = to_model(batch["image"])
        net, grams = state.params["features"], state.params["grams"]

        def loss_fn(p):
            y = self.apply({"net": p}, x)
            targets = {"content": feature_nets.activations(net, x, self.loss.content_layers)}
            targets["grams"] = grams
            total, parts = self.loss(net, targets, y)
            return jnp.mean(total), parts

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["net"])
        updates, opt = self.tx.update(grads, state.opt_state["net"], state.params["net"])
        params = dict(state.params, net=optax.apply_updates(state.params["net"], updates))
        metrics = {"loss": loss, **{f"{k}_loss": jnp.mean(v) for k, v in parts.items()}}
        metrics["grad_norm"] = optax.global_norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state={"net": opt}), metrics

    @functools.cached_property
    def _forward(self):
        return jax.jit(self.apply)

    def stylize_image(self, state, image) -> np.ndarray:
        """One image (path, bundled name or array; any size and aspect) -> uint8 [H, W, 3], its
        longer side ``image_size`` (0: as given)."""
        content = style_images.fit(style_images.load_image(image), self.eval_size)
        out = np.asarray(to_uint8(self._forward(state.params, to_model(content[None]))[0]))
        return self.postprocess(out, content)

    def generate(self, state, prompts, rng, **options) -> np.ndarray:
        """Stylises the images ``prompts`` names (paths or bundled names); all are resized to
        the first one's size (``stylize_image`` keeps each one's own)."""
        del rng, options
        first = style_images.fit(style_images.load_image(prompts[0]), self.eval_size)
        h, w = first.shape[:2]
        batch = np.stack(
            [first] + [style_images.resize(style_images.load_image(p), h, w) for p in prompts[1:]]
        )
        out = np.asarray(to_uint8(self._forward(state.params, to_model(batch))))
        return np.stack([self.postprocess(o, c) for o, c in zip(out, batch, strict=True)])

    def sample_images(self, state, prompts, rng) -> np.ndarray:
        return self.generate(state, prompts, rng)

    def evaluators(self, plan):
        del plan

        def evaluate(state, rng):
            del rng
            content = style_images.fit(style_images.load_image(self.config.content), self.eval_size)
            styles, blend = _load_styles(self.config, content)
            result = self.stylize_image(state, content)
            out = self.judge_images(result, content, styles, blend)
            return {f"style/{k}": v for k, v in out.items()}

        return [evaluate]
