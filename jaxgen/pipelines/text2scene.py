"""Text2Scene (Tan, Feng, Ordonez 2019): scenes composed object by object from a description.

Training is teacher-forced (paper section 3.5): the ground-truth canvas before each step is
rendered inside the compiled step by the JAX sprite renderer, and the loss is the weighted
negative log-likelihood of the next object (weight 5 in the paper), its location (2) and its
attributes (2), plus the attention loss ``sum_w (1 - sum_t alpha_{t,w})^2`` of each decoder.
Decoding (greedy, sampling or beam search) runs the whole composition, re-rendering the canvas
after every object, as one compiled program for a batch of descriptions.

The pipeline composes any layout domain with the interface of `jaxgen.data.scenes` (the
embedded clip-art scenes) and `jaxgen.data.shapes_layout` (layouts of `shapes` captions, which
the shapes judge scores like every text-to-image family's images).
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxgen.data import scenes
from jaxgen.models.text2scene import Text2Scene
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline, SampleOption

DECODINGS = ("greedy", "sample", "beam")
# data.name -> the module that defines its layouts (objects, attributes, grid, words, sprites).
DOMAINS = {"scenes": "jaxgen.data.scenes", "shapes_layouts": "jaxgen.data.shapes_layout"}


def _nll(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _masked_mean(values, mask):
    mask = mask.astype(jnp.float32)
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def attention_loss(weights, step_mask, word_mask):
    """The paper's attention loss, ``mean_b sum_w (sum_t alpha_{t,w} - 1)^2`` over real words
    and steps (it pushes the decoder to attend to every word once over the scene).

    Args:
      weights: ``[B, T, L]`` attention over words per step.
      step_mask: ``[B, T]``; word_mask: ``[B, L]``.
    """
    total = (weights * step_mask[..., None]).sum(1)
    return (((total - 1.0) * word_mask) ** 2).sum(-1).mean()


class Text2ScenePipeline(Pipeline):
    """The Text2Scene network on `scenes` or on layouts of `shapes` (``DOMAINS``).

    State: ``params["text2scene"]``, its AdamW state and an EMA, which decoding uses.
    """

    sample_options = (
        SampleOption("decoding", "choice", choices=DECODINGS),
        SampleOption("temperature", "float", 0.01, 5.0, help="of decoding='sample'"),
    )

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        dc, mc = config.data, config.model
        if dc.name not in DOMAINS:
            raise ValueError(
                f"text2scene composes the embedded 'scenes' dataset or layouts of 'shapes' "
                f"('shapes_layouts'); got data.name={dc.name!r}."
            )
        self.domain = importlib.import_module(DOMAINS[dc.name])
        d = self.domain
        self.image_size = int(dc.image_size)
        self.max_words = int(dc.max_text_len)
        self.bank = d.sprite_bank(self.image_size)
        self.canvas = scenes.JaxCanvas(self.bank)
        self.attribute_names = tuple(d.ATTRIBUTES)
        self.end = len(d.OBJECTS)  # the what head's end-of-scene class
        self.model = Text2Scene(
            vocab_size=len(d.VOCAB),
            num_objects=len(d.OBJECTS),
            attributes=tuple(d.ATTRIBUTES.values()),
            grid=d.GRID,
            image_size=self.image_size,
            max_words=self.max_words,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in mc.network.to_dict().items()},
        )
        self.steps = d.MAX_OBJECTS + 1
        self.start_id = self.end + 1  # the previous-object input of step 0
        # [objects + end, attributes]: which heads count for each object (end: none).
        applies = [[d.applies(name, a) for a in self.attribute_names] for name in d.OBJECTS]
        self.applies = jnp.asarray(applies + [[False] * len(self.attribute_names)])
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)

    # -- training -------------------------------------------------------------------------
    def _teacher_canvases(self, batch):
        """uint8 ``[B, T, S, S, 3]``: the true canvas before each step."""
        objects = batch["objects"]
        sprites = self.canvas.sprite_ids(objects, batch["attributes"])
        grid = self.domain.GRID
        xs, ys = batch["locations"] % grid, batch["locations"] // grid
        valid = objects < self.end
        steps = jax.vmap(self.canvas.render_steps)(sprites, xs, ys, valid)
        return steps[:, : self.steps]

    def _previous(self, objects):
        start = jnp.full((objects.shape[0], 1), self.start_id, objects.dtype)
        return jnp.concatenate([start, objects[:, :-1]], axis=1)

    def init(self, rng, example_batch):
        words = jnp.asarray(example_batch["tokens"])
        b = words.shape[0]
        canvases = jnp.zeros((b, self.steps, self.image_size, self.image_size, 3), jnp.uint8)
        objects = jnp.zeros((b, self.steps), jnp.int32)
        params = self.model.init(rng, words, canvases, objects, objects)["params"]
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params={"text2scene": params},
            opt_state={"text2scene": self.tx.init(params)},
            ema_params={"text2scene": params},
        )

    def warm_start(self, state):
        """Loads pretrained word vectors (GloVe's text format) into the word embedding when
        ``model.word_vectors`` names a file; the offline default learns them."""
        path = str(self.config.model.get("word_vectors", "") or "")
        if not path:
            return state
        from jaxgen.data import abstract_scenes

        vectors, found = abstract_scenes.read_word_vectors(path, list(self.domain.VOCAB))
        params = state.params["text2scene"]
        table = params["text"]["embed"]["embedding"]
        if vectors.shape != table.shape:
            raise ValueError(
                f"{path} has {vectors.shape[1]}-dimensional vectors but the word embedding is "
                f"{table.shape[1]}-dimensional: set model.network.embed_dim={vectors.shape[1]}."
            )
        vocab = self.domain.VOCAB[1:]
        missing = [w for w, ok in zip(vocab, found[1:], strict=True) if not ok]
        if missing:
            logging.warning(
                "%s lacks %d words (%s); they start random.",
                path,
                len(missing),
                ", ".join(missing[:10]),
            )
        text = {**params["text"], "embed": {"embedding": jnp.asarray(vectors)}}
        params = {**params, "text": text}
        return state.replace(
            params={"text2scene": params},
            ema_params={"text2scene": params},
            opt_state={"text2scene": self.tx.init(params)},
        )

    def losses(self, params, batch):
        """The weighted losses of a batch under teacher forcing, and teacher-forced accuracies.

        Returns ``(total, metrics)``.
        """
        lc = self.config.loss
        objects, steps = batch["objects"], batch["steps"]
        out = self.model.apply(
            {"params": params},
            batch["tokens"],
            self._teacher_canvases(batch),
            self._previous(objects),
            objects,
        )
        placed = steps & (objects < self.end)
        what = _masked_mean(_nll(out["what"], objects), steps)
        where = _masked_mean(_nll(out["location"], batch["locations"]), placed)
        loc = batch["locations"][..., None, None]
        attrs, metrics = [], {}
        for k, (name, logits) in enumerate(
            zip(self.attribute_names, out["attributes"], strict=True)
        ):
            at_true = jnp.take_along_axis(logits, loc, axis=2)[:, :, 0]  # [B, T, classes]
            mask = placed & self.applies[objects, k]
            term = _masked_mean(_nll(at_true, batch["attributes"][..., k]), mask)
            attrs.append(term)
            metrics[f"{name}_loss"] = term
        word_mask = (batch["tokens"] > 0).astype(jnp.float32)
        attn = attention_loss(out["what_attention"], steps, word_mask) + attention_loss(
            out["where_attention"], placed, word_mask
        )
        total = (
            float(lc.object_weight) * what
            + float(lc.location_weight) * where
            + float(lc.attribute_weight) * sum(attrs)
            + float(lc.attention_weight) * attn
        )
        metrics.update(
            {
                "object_loss": what,
                "location_loss": where,
                "attention_loss": attn,
                "object_accuracy": _masked_mean(out["what"].argmax(-1) == objects, steps),
                "location_accuracy": _masked_mean(
                    out["location"].argmax(-1) == batch["locations"], placed
                ),
            }
        )
        return total, metrics

    def train_step(self, state, batch, rng):
        del rng  # teacher forcing is deterministic; the model has no dropout
        params = state.params["text2scene"]
        (loss, metrics), grads = jax.value_and_grad(self.losses, has_aux=True)(params, batch)
        updates, opt_state = self.tx.update(grads, state.opt_state["text2scene"], params)
        params = optax.apply_updates(params, updates)
        decay = state_lib.ema_decay_at(state.step, float(self.config.train.ema_decay))
        ema = state_lib.ema_update(state.ema_params["text2scene"], params, decay)
        metrics.update(
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            learning_rate=self.learning_rate(state.step),
        )
        return (
            state.replace(
                step=state.step + 1,
                params={"text2scene": params},
                opt_state={"text2scene": opt_state},
                ema_params={"text2scene": ema},
            ),
            metrics,
        )

    # -- decoding -------------------------------------------------------------------------
    def _observe(self, params, state, canvas, previous, text, mask):
        """One step's reading of the canvas: the new canvas state, the what logits and the
        what context (rows of a batch; ``canvas`` padded as `JaxCanvas` keeps it)."""
        model, variables = self.model, {"params": params}
        image = jax.vmap(self.canvas.crop)(canvas)
        feats = model.apply(variables, image, method=model.encode_canvas)
        state = model.apply(variables, state, feats, method=model.update_canvas)
        logits, context, _ = model.apply(variables, state, previous, text, mask, method=model.what)
        return state, logits, context

    def _place(self, params, state, obj, context, text, mask, pick):
        """Where and how ``obj`` goes: ``pick(logits, index)`` chooses the cell (index 0) and
        each attribute at that cell (index 1 + k); attributes that do not apply to ``obj`` are
        0. Returns ``(location, attributes [.., 4], log-probability of the choices)``."""
        model = self.model
        loc_logits, attr_logits, _ = model.apply(
            {"params": params}, state, obj, context, text, mask, method=model.where
        )
        loc = pick(loc_logits, 0)
        logp = jnp.take_along_axis(jax.nn.log_softmax(loc_logits), loc[:, None], 1)[:, 0]
        attrs = []
        for k, logits_k in enumerate(attr_logits):
            at = jnp.take_along_axis(logits_k, loc[:, None, None], axis=1)[:, 0]
            value = pick(at, 1 + k)
            applies = self.applies[obj, k]
            chosen = jnp.take_along_axis(jax.nn.log_softmax(at), value[:, None], 1)[:, 0]
            logp = logp + jnp.where(applies, chosen, 0.0)
            attrs.append(jnp.where(applies, value, 0))
        return loc, jnp.stack(attrs, -1), logp

    def _draw(self, canvas, obj, attrs, loc):
        placed = obj < self.end
        sprite = self.canvas.sprite_ids(obj, attrs)
        x, y = loc % self.domain.GRID, loc // self.domain.GRID
        return jax.vmap(self.canvas.draw)(canvas, sprite, x, y, placed), placed

    def _start(self, params, rows):
        start = self.canvas.start()
        return (
            self.model.apply({"params": params}, rows, method=self.model.initial_state),
            jnp.broadcast_to(start, (rows, *start.shape)),
            jnp.full((rows,), self.start_id, jnp.int32),
            jnp.zeros((rows,), bool),
        )

    @functools.partial(jax.jit, static_argnums=(0, 4, 5))
    def _decode(self, params, words, rng, decoding, temperature):
        """The whole composition of a batch: at each step what, where, attributes, draw.

        Returns ``(objects [B, T], attributes [B, T, 4], locations [B, T], canvases
        [B, T + 1, S, S, 3])``; after END every object is END and nothing more is drawn.
        """
        text, mask = self.model.apply({"params": params}, words, method=self.model.encode_text)

        def step(carry, key):
            state, canvas, previous, done = carry

            def pick(logits, index):
                if decoding == "greedy":
                    return logits.argmax(-1)
                return jax.random.categorical(
                    jax.random.fold_in(key, index), logits / temperature, axis=-1
                )

            state, logits, context = self._observe(params, state, canvas, previous, text, mask)
            obj = jnp.where(done, self.end, pick(logits, len(self.attribute_names) + 1))
            loc, attrs, _ = self._place(params, state, obj, context, text, mask, pick)
            canvas, placed = self._draw(canvas, obj, attrs, loc)
            out = (obj, attrs, jnp.where(placed, loc, 0), jax.vmap(self.canvas.crop)(canvas))
            return (state, canvas, obj, done | ~placed), out

        carry = self._start(params, words.shape[0])
        first = jax.vmap(self.canvas.crop)(carry[1])[:, None]
        _, (objs, attrs, locs, canvases) = jax.lax.scan(
            step, carry, jax.random.split(rng, self.steps)
        )
        canvases = jnp.concatenate([first, jnp.moveaxis(canvases, 0, 1)], axis=1)
        return objs.T, jnp.moveaxis(attrs, 0, 1), locs.T, canvases

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _beam_decode(self, params, words, beam):
        """Beam search over the objects: each step extends every beam by its ``beam`` likeliest
        next objects, each placed with its likeliest cell and attributes, ranks them by the
        log-probability of all choices so far per decision step (the object steps and the END),
        and keeps the ``beam`` best. Finished beams extend only by END at no cost. Ranked by
        the summed log-probability instead, an empty scene (END at once) beat the described
        one for 11 of 128 validation descriptions: each object drawn pays for its cell and
        attributes. Width 1 is greedy decoding. Returns what `_decode` returns, for the best
        beam."""
        b, k, o = words.shape[0], beam, self.end + 1
        n = b * k
        text, mask = self.model.apply({"params": params}, words, method=self.model.encode_text)
        text, mask = jnp.repeat(text, k, 0), jnp.repeat(mask, k, 0)
        end_only = jnp.where(jnp.arange(o) == self.end, 0.0, -1e9)

        def greedy(logits, index):
            del index
            return logits.argmax(-1)

        def step(carry, t):
            state, canvas, previous, done, score, length, hist = carry
            state, logits, context = self._observe(params, state, canvas, previous, text, mask)
            logp = jnp.where(done[:, None], end_only, jax.nn.log_softmax(logits))
            top_lp, top_obj = jax.lax.top_k(logp, k)  # [N, k]
            rep = functools.partial(jnp.repeat, repeats=k, axis=0)
            loc, attrs, place_lp = self._place(
                params,
                rep(state),
                top_obj.reshape(-1),
                rep(context),
                rep(text),
                rep(mask),
                greedy,
            )
            placed = top_obj.reshape(-1) < self.end
            cand = top_lp.reshape(-1) + jnp.where(placed, place_lp, 0.0)  # [N * k]
            total = (score.reshape(n, 1) + cand.reshape(n, k)).reshape(b, k * k)
            steps = jnp.repeat(length.reshape(-1) + (~done).astype(jnp.float32), k)
            _, idx = jax.lax.top_k(total / steps.reshape(b, k * k), k)  # [B, K]
            score = jnp.take_along_axis(total, idx, axis=1)
            length = jnp.take_along_axis(steps.reshape(b, k * k), idx, axis=1)
            parent = (jnp.arange(b)[:, None] * k + idx // k).reshape(-1)  # rows of N
            chosen = (jnp.arange(b)[:, None] * k * k + idx).reshape(-1)  # rows of N * k
            obj, loc, attrs = top_obj.reshape(-1)[chosen], loc[chosen], attrs[chosen]
            canvas, placed = self._draw(canvas[parent], obj, attrs, loc)
            hist = jax.tree.map(lambda h: h[parent], hist)
            objs, attr_h, locs, canv = hist
            hist = (
                objs.at[:, t].set(obj),
                attr_h.at[:, t].set(attrs),
                locs.at[:, t].set(jnp.where(placed, loc, 0)),
                canv.at[:, t + 1].set(jax.vmap(self.canvas.crop)(canvas)),
            )
            done = done[parent] | ~placed
            return (state[parent], canvas, obj, done, score, length, hist), None

        state, canvas, previous, done = self._start(params, n)
        t = self.steps
        first = jax.vmap(self.canvas.crop)(canvas)
        hist = (
            jnp.full((n, t), self.end, jnp.int32),
            jnp.zeros((n, t, len(self.attribute_names)), jnp.int32),
            jnp.zeros((n, t), jnp.int32),
            jnp.broadcast_to(first[:, None], (n, t + 1, *first.shape[1:])),
        )
        # Only the first beam is alive at the start, so the beams do not begin as copies.
        score = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -1e9), (b, 1))
        length = jnp.zeros((b, k), jnp.float32)  # decision steps taken by each beam
        carry = (state, canvas, previous, done, score, length, hist)
        (_, _, _, _, score, length, hist), _ = jax.lax.scan(step, carry, jnp.arange(t))
        best = jnp.arange(b) * k + (score / length).argmax(-1)
        return tuple(h[best] for h in hist)

    def tokenize(self, prompts):
        """Word ids ``[N, data.max_text_len]`` of descriptions; ``PromptError`` for an empty,
        over-long or non-text description or a word outside the dataset's vocabulary."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return np.stack([self.domain.encode_words(p, self.max_words) for p in prompts])

    def compose(
        self,
        state,
        prompts,
        rng,
        *,
        decoding=None,
        temperature=None,
        beam_size=None,
        batch_size=None,
    ):
        """Decodes each description; returns numpy ``(objects, attributes, locations,
        canvases)`` as `_decode` (canvases hold every step).

        Args:
          decoding: "greedy" (default ``sample.decoding``), "sample" (with ``temperature``) or
            "beam" (``beam_size`` beams, `_beam_decode`).
        """
        sc = self.config.sample
        decoding = decoding or sc.decoding
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}.")
        temperature = float(sc.temperature if temperature is None else temperature)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        beam_size = int(sc.beam_size if beam_size is None else beam_size)
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
        words = self.tokenize(prompts)
        chunk = int(batch_size or sc.batch_size)
        params = (state.ema_params or state.params)["text2scene"]
        n = len(words)
        padded = -(-n // chunk) * chunk
        words = np.concatenate([words, np.repeat(words[-1:], padded - n, axis=0)])
        parts = [
            self._beam_decode(params, words[i : i + chunk], beam_size)
            if decoding == "beam"
            else self._decode(
                params, words[i : i + chunk], jax.random.fold_in(rng, i), decoding, temperature
            )
            for i in range(0, padded, chunk)
        ]
        return tuple(np.concatenate([np.asarray(p[k]) for p in parts])[:n] for k in range(4))

    def generate(self, state, prompts, rng, **options):
        """The composed scenes rendered: uint8 ``[N, S, S, 3]``. Options go to `compose`."""
        return self.compose(state, prompts, rng, **options)[3][:, -1]

    def generate_scenes(self, state, prompts, rng, **options) -> list[list[dict]]:
        """The composed scenes as JSON-friendly lists of objects, in drawing order."""
        objs, attrs, locs, _ = self.compose(state, prompts, rng, **options)
        return [self.domain.objects_from_arrays(*s) for s in zip(objs, attrs, locs, strict=True)]

    def composition_steps(self, state, prompts, rng, **options) -> np.ndarray:
        """uint8 ``[N, T + 1, S, S, 3]``: the canvas before any object and after each step (the
        paper's step-by-step figure)."""
        return self.compose(state, prompts, rng, **options)[3]

    # -- evaluation -----------------------------------------------------------------------
    def scene_evaluator(self, plan, **options):
        """The paper's metrics (`jaxgen.evaluation.scene_metrics`) of the decoded scenes of each
        split's first ``plan.num_samples`` descriptions, and each attribute's chance rate."""

        def evaluate(state, rng):
            from jaxgen import data as data_lib
            from jaxgen.evaluation import scene_metrics

            d, results = self.domain, {}
            for split in plan.splits:
                source = data_lib.build_source(self.config.data, split)
                truths = [source.truth(i) for i in range(plan.num_samples)]
                predicted = self.generate_scenes(
                    state, [t["caption"] for t in truths], rng, **options
                )
                scores = [
                    scene_metrics.scene_scores(
                        p,
                        d.truth_objects(t),
                        categories=d.OBJECTS,
                        grid=d.GRID,
                        box_of=self._box,
                        attributes=self.attribute_names,
                        applies=d.applies,
                    )
                    for p, t in zip(predicted, truths, strict=True)
                ]
                summary = scene_metrics.summarize(scores, self.attribute_names)
                for name, k in d.ATTRIBUTES.items():
                    summary[f"{name}_chance"] = 1.0 / k
                results.update({f"{split}/{k}": v for k, v in summary.items()})
            return results

        return evaluate

    def _box(self, obj):
        h, w = self.domain.sprite_size(obj["name"], obj["size"], self.image_size)
        return w / self.image_size, h / self.image_size

    def evaluators(self, plan):
        evaluators = [self.scene_evaluator(plan)]
        if self.judge.has_truth:  # layouts of shapes: the shared judge reads the renders
            evaluators.append(self.sampled_evaluator(plan))
        return evaluators
