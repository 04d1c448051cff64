"""CLIP-style contrastive pre-training of a text and an image encoder (Radford et al. 2021).

Other pipelines use a trained CLIP workdir by path: to score generated images (CLIP score,
R-precision, ``jaxgen.evaluation.clip_metrics``) and to initialise their text encoder
(``config.model.text_init`` of DDPM). ``generate`` is text-to-image retrieval: for each prompt
the best-matching image of a gallery of real test images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data.pixels import to_model_space
from jaxgen.evaluation import clip_metrics, intervals
from jaxgen.models.clip import CLIP
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline

# CLIP clips the learned logit scale at 100 so the temperature cannot collapse.
MAX_LOGIT_SCALE = float(np.log(100.0))


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array):
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropies.

    Args:
      image_emb, text_emb: unit vectors ``[B, D]``; row i of each is a matching pair.
      logit_scale: ``log(1 / temperature)`` (clipped at log 100).

    Returns:
      ``(loss, logits [B, B])`` with ``logits[i, j] = exp(logit_scale) * <image_i, text_j>``.
    """
    scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
    logits = scale * image_emb @ text_emb.T
    labels = jnp.arange(text_emb.shape[0])
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return 0.5 * (i2t + t2i), logits


def build_model(config) -> CLIP:
    """The ``CLIP`` module a CLIP run's config describes (its ``model`` and ``data`` keys)."""
    mc = config.model
    return CLIP(
        embed_dim=int(mc.embed_dim),
        text={**mc.text.to_dict(), "max_len": int(config.data.max_text_len)},
        image_widths=tuple(mc.image_widths),
        image_dim=int(mc.image_dim),
        image_patch_size=int(mc.get("image_patch_size", 1)),
        image_colour=str(mc.get("image_colour", "joint")),
        init_temperature=float(mc.init_temperature),
        parse_classes=parse_classes(config),
        dtype=state_lib.compute_dtype(mc),
    )


def parse_classes(config) -> tuple[int, ...]:
    """The class counts of the parse heads a CLIP config asks for (``model.parse_weight > 0``):
    those of ``shapes.PARSE_FIELDS``; empty otherwise, and for runs saved before the option."""
    if float(config.model.get("parse_weight", 0.0)) <= 0:
        return ()
    from jaxgen.data.shapes import PARSE_CLASSES

    return PARSE_CLASSES


def parse_loss(logits: Sequence[jax.Array], labels: jax.Array):
    """Mean over fields of the mean cross-entropy, and the fraction of rows with every field
    right. ``logits``: one ``[B, k]`` per field; ``labels``: int ``[B, fields]``."""
    losses = [
        optax.softmax_cross_entropy_with_integer_labels(lg, labels[:, i]).mean()
        for i, lg in enumerate(logits)
    ]
    right = jnp.stack([jnp.argmax(lg, -1) == labels[:, i] for i, lg in enumerate(logits)], -1)
    return sum(losses) / len(losses), jnp.mean(jnp.all(right, axis=-1))


class CLIPPipeline(Pipeline):
    """State: ``params["clip"]`` (both towers and the temperature), AdamW state and an EMA."""

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        self.max_text_len = int(config.data.max_text_len)
        self.model = build_model(config)
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)
        self.parse_weight = float(config.model.get("parse_weight", 0.0))
        if self.parse_weight > 0 and not config.data.get("parse_labels", False):
            raise ValueError(
                "model.parse_weight > 0 trains the text tower to parse captions, which needs "
                "their labels: set --config.data.parse_labels=True (shapes only)."
            )
        self._gallery = None

    # -- training -------------------------------------------------------------------------
    def init(self, rng, example_batch):
        x = to_model_space(jnp.asarray(example_batch["image"]))
        tokens = jnp.asarray(example_batch["tokens"])
        params = self.model.init(rng, x, tokens)["params"]
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params={"clip": params},
            opt_state={"clip": self.tx.init(params)},
            ema_params={"clip": params},
        )

    def train_step(self, state, batch, rng):
        x, tokens = to_model_space(batch["image"]), batch["tokens"]

        def loss_fn(params):
            img, txt, scale, *parse = self.model.apply(
                {"params": params}, x, tokens, train=True, rngs={"dropout": rng}
            )
            loss, logits = contrastive_loss(img, txt, scale)
            aux = {}
            if parse:
                aux["parse_loss"], aux["batch_parse_accuracy"] = parse_loss(
                    parse[0], batch["parse"]
                )
                loss = loss + self.parse_weight * aux["parse_loss"]
            return loss, (logits, aux)

        params = state.params["clip"]
        (loss, (logits, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, state.opt_state["clip"], params)
        params = jax.tree.map(jnp.add, params, updates)
        decay = state_lib.ema_decay_at(state.step, float(self.config.train.ema_decay))
        ema = state_lib.ema_update(state.ema_params["clip"], params, decay)
        labels = jnp.arange(tokens.shape[0])
        metrics = {
            "loss": loss,
            "batch_i2t_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
            "batch_t2i_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
            "temperature": jnp.exp(-jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": self.learning_rate(state.step),
            **aux,
        }
        new_state = state.replace(
            step=state.step + 1,
            params={"clip": params},
            opt_state={"clip": opt_state},
            ema_params={"clip": ema},
        )
        return new_state, metrics

    # -- embedding ------------------------------------------------------------------------
    def _params(self, state):
        return (state.ema_params or state.params)["clip"]

    @functools.partial(jax.jit, static_argnums=0)
    def _embed_text(self, params, tokens):
        return self.model.apply({"params": params}, tokens, method=CLIP.embed_text)

    @functools.partial(jax.jit, static_argnums=0)
    def _embed_image(self, params, images):
        return self.model.apply({"params": params}, to_model_space(images), method=CLIP.embed_image)

    @functools.partial(jax.jit, static_argnums=0)
    def _parse(self, params, tokens):
        _, logits = self.model.apply({"params": params}, tokens, method=CLIP.parse_text)
        return jnp.stack([jnp.argmax(lg, -1) for lg in logits], -1)

    def _chunked(self, fn, params, inputs: np.ndarray) -> np.ndarray:
        """Applies ``fn`` in fixed-size chunks (the last one padded): one compile per shape."""
        chunk = int(self.config.eval.get("batch_size", 256))
        n = len(inputs)
        if n == 0:
            raise ValueError("Nothing to embed: got an empty batch.")
        padded = -(-n // chunk) * chunk
        inputs = np.concatenate([inputs, np.repeat(inputs[-1:], padded - n, axis=0)])
        out = [np.asarray(fn(params, inputs[i : i + chunk])) for i in range(0, padded, chunk)]
        return np.concatenate(out)[:n]

    def embed_texts(self, state, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings ``[N, D]`` (float32) with the EMA parameters."""
        return self._chunked(self._embed_text, self._params(state), self.tokenize(texts))

    def embed_images(self, state, images: np.ndarray) -> np.ndarray:
        """Unit-norm image embeddings ``[N, D]`` of uint8 images ``[N, S, S, 3]``."""
        images = np.asarray(images)
        size = int(self.config.data.image_size)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"embed_images takes uint8 [N, {size}, {size}, 3] images, got "
                f"{images.dtype} {list(images.shape)}."
            )
        return self._chunked(self._embed_image, self._params(state), images)

    # -- generation (retrieval) -----------------------------------------------------------
    def gallery(self) -> np.ndarray:
        """The real validation images ``generate`` retrieves from (``sample.gallery_size``)."""
        if self._gallery is None:
            n = int(self.config.sample.get("gallery_size", 512))
            self._gallery = self.judge.prompts("val", n, seed=2)[2]
        return self._gallery

    def generate(self, state, prompts, rng, **options):
        """Text-to-image retrieval: per prompt, the gallery image with the highest similarity.

        ``rng`` and ``options`` are unused (retrieval is deterministic); they are accepted so the
        loop and the CLI treat CLIP like every other pipeline.
        """
        del rng, options
        gallery = self.gallery()
        sim = self.embed_texts(state, prompts) @ self.embed_images(state, gallery).T
        return gallery[np.argmax(sim, axis=1)]

    # -- evaluation -----------------------------------------------------------------------
    def evaluate_embeddings(self, state, rng=None, *, plan) -> dict[str, float]:
        """Retrieval recall@1/@5 both ways and zero-shot accuracy per attribute, per split of
        ``plan``."""
        del rng
        results = {}
        for split in plan.splits:
            captions, truths, images = self.judge.prompts(split, plan.num_samples, seed=0)
            keys = [self.judge.content_key(t) for t in truths]
            img = self.embed_images(state, images)
            txt = self.embed_texts(state, captions)
            sim = txt @ img.T
            n = len(captions)  # every rate below is over n queries, or n_attr for zero-shot
            for k, v in clip_metrics.recall_at_k(sim, keys, keys, (1, 5)).items():
                results.update(intervals.rate(f"{split}/t2i_recall@{k}", v, n))
            for k, v in clip_metrics.recall_at_k(sim.T, keys, keys, (1, 5)).items():
                results.update(intervals.rate(f"{split}/i2t_recall@{k}", v, n))
            if self.model.parse_classes:  # every field of the caption's parse right
                from jaxgen.data.shapes import parse_labels

                got = self._chunked(self._parse, self._params(state), self.tokenize(captions))
                want = np.stack([parse_labels(t) for t in truths])
                results.update(
                    intervals.proportion(f"{split}/parse_accuracy", np.all(got == want, -1))
                )
            variants = [self.judge.attribute_variants(t) for t in truths]
            for attr in sorted({a for v in variants for a in v}):
                rows = [i for i, v in enumerate(variants) if attr in v]
                flat = [c for i in rows for c in variants[i][attr]]
                emb = self.embed_texts(state, flat)
                bounds = np.cumsum([0] + [len(variants[i][attr]) for i in rows])
                cands = [emb[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
                accuracy = clip_metrics.zero_shot_accuracy(img[rows], cands)
                results.update(intervals.rate(f"{split}/zero_shot_{attr}", accuracy, len(rows)))
        return results

    def evaluators(self, plan):
        return [functools.partial(self.evaluate_embeddings, plan=plan)]
