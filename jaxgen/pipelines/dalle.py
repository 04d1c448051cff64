"""DALL-E (Ramesh et al. 2021): a transformer over text and image tokens on a frozen tokenizer,
and MaskGIT's parallel decoding (Chang et al. 2022) as its bidirectional variant.

Stage 1 is a trained discrete autoencoder (``experiments/dvae.py`` as the paper, or
``vqgan.py``), referred to by ``model.tokenizer`` (a workdir, or ``"pretrain:tokenizer"``, which
the training loop trains first). Its encoder, decoder and codebook are copied into the state
(``params["tokenizer"]``), frozen, so a run's checkpoint holds everything it samples with; the
training step encodes each batch's images into tokens.

Stage 2 (``model.causal``):
  autoregressive  one causal stream ``[caption bytes ; image tokens]``; loss = w CE(text) +
                  (1 - w) CE(image) with w = ``dalle.text_loss_weight`` (1/8 in the paper).
                  Sampling reads the caption into a key/value cache, then draws the image
                  tokens one by one, all in one compiled program.
  MaskGIT         bidirectional; a cosine-scheduled fraction of each image's tokens is replaced
                  by a mask token and the loss is the CE of the masked tokens. Sampling fills the
                  grid in ``sample.maskgit_steps`` parallel steps.

Both drop the caption to all padding tokens for a fraction ``dalle.cond_drop_prob`` of training
examples, so sampling can guide: ``logits = uncond + s (cond - uncond)`` (dalle-mini's
"super-conditioning", ``sample.guidance_scale``).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data.tokenizer import PAD
from jaxgen.models import token_sampling
from jaxgen.models.transformer import TokenTransformer
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline, SampleOption


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position cross-entropy ``[...]`` of float logits ``[..., V]`` against int targets."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def autoregressive_loss(text_logits, image_logits, text, codes, text_weight: float):
    """DALL-E's loss: ``w * mean CE(text tokens 1..L-1) + (1 - w) * mean CE(image tokens)``.

    Returns ``(loss, text_ce, image_ce)``."""
    text_ce = jnp.mean(cross_entropy(text_logits, text[:, 1:]))
    image_ce = jnp.mean(cross_entropy(image_logits, codes))
    return text_weight * text_ce + (1.0 - text_weight) * image_ce, text_ce, image_ce


def masked_loss(image_logits, codes, masked):
    """MaskGIT's loss: the mean CE over the masked image tokens (bool ``masked`` ``[B, N]``)."""
    ce = cross_entropy(image_logits, codes)
    m = masked.astype(jnp.float32)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


def drop_captions(rng: jax.Array, text: jax.Array, rate: float) -> jax.Array:
    """Caption tokens ``[B, L]`` with each row replaced by all PAD ("no caption") with
    probability ``rate``: classifier-free guidance's unconditional examples."""
    drop = jax.random.bernoulli(rng, rate, (text.shape[0],))
    return jnp.where(drop[:, None], PAD, text)


def random_mask(rng: jax.Array, batch: int, n: int) -> jax.Array:
    """MaskGIT's training mask, bool ``[batch, n]``: per row, ``ceil(n cos(pi/2 u))`` random
    positions (at least one) with u ~ U(0, 1)."""
    ratio_rng, order_rng = jax.random.split(rng)
    ratio = token_sampling.mask_schedule(jax.random.uniform(ratio_rng, (batch,)))
    count = jnp.clip(jnp.ceil(ratio * n), 1, n).astype(jnp.int32)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(order_rng, (batch, n)), -1), -1)
    return rank < count[:, None]


class DALLEPipeline(Pipeline):
    """State: ``params = {"transformer", "tokenizer"}`` (the tokenizer frozen: no optimiser
    state, no EMA), the transformer's AdamW state and an EMA of it, which ``generate`` uses."""

    sample_options = (
        SampleOption("temperature", "float", 0.0, 5.0, help="0: greedy"),
        SampleOption("top_k", "int", 0, 100000, help="0: off"),
        SampleOption(
            "guidance_scale", "float", 0.0, 20.0, help="classifier-free guidance (1: off)"
        ),
    )

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        mc, dc = config.model, config.dalle
        self.causal = bool(mc.causal)
        self.text_len = int(config.data.max_text_len)
        self.text_weight = float(dc.text_loss_weight)
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"dalle.text_loss_weight must be in [0, 1], got {self.text_weight}.")
        self.cond_drop_prob = float(dc.cond_drop_prob)
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"dalle.cond_drop_prob must be in [0, 1), got {dc.cond_drop_prob}.")
        if not str(mc.get("tokenizer", "") or ""):
            raise ValueError(
                "model.tokenizer must name a trained dvae/vqgan/vqvae workdir or "
                '"pretrain:tokenizer".'
            )
        self.dtype = state_lib.compute_dtype(mc)
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)
        self.uncond_text = jnp.full((self.text_len,), PAD, jnp.int32)
        self._sampling_options(**self._default_options())  # bad sample settings fail here

    # -- stage 1 ---------------------------------------------------------------------------
    @functools.cached_property
    def tokenizer(self):
        """The trained tokenizer run's ``Tokenizer`` (its pipeline encodes and decodes)."""
        path = str(self.config.model.tokenizer)
        with jax.ensure_compile_time_eval():  # also when first asked for inside a trace (init)
            run = self.load_run(path)
        if not hasattr(run.pipeline, "tokenizer"):
            raise ValueError(
                f"model.tokenizer={path} holds a {run.config.pipeline!r} run, not a discrete "
                "tokenizer (dvae, vqgan, vqvae)."
            )
        tok = run.pipeline.tokenizer(run.state)
        size = int(self.config.data.image_size)
        if tok.image_size != size:
            raise ValueError(
                f"The tokenizer in {path} reads {tok.image_size}x{tok.image_size} images, "
                f"data.image_size is {size}."
            )
        return tok

    @functools.cached_property
    def model(self) -> TokenTransformer:
        tok = self.tokenizer
        return TokenTransformer(
            image_vocab=tok.vocab_size,
            grid=tok.grid[0],
            text_len=self.text_len,
            causal=self.causal,
            dtype=self.dtype,
            **self.config.model.transformer.to_dict(),
        )

    def encode(self, tok_params, images) -> jax.Array:
        """uint8 images -> int32 image tokens ``[B, N]`` in raster order."""
        codes = self.tokenizer.pipeline.encode(tok_params, images)
        return jax.lax.stop_gradient(codes.reshape(codes.shape[0], -1))

    def decode(self, tok_params, tokens) -> jax.Array:
        """int32 ``[B, N]`` -> uint8 images."""
        g = self.model.grid
        return self.tokenizer.pipeline.decode(tok_params, tokens.reshape(-1, g, g))

    # -- training ----------------------------------------------------------------------------
    def init(self, rng, example_batch):
        text = jnp.asarray(example_batch["tokens"])
        image = jnp.zeros((text.shape[0], self.model.num_image_tokens), jnp.int32)
        params = self.model.init(rng, text, image)["params"]
        tok = self.tokenizer.params
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            # Filled by warm_start (a trace must not carry the trained weights as constants).
            params={"transformer": params, "tokenizer": jax.tree.map(jnp.zeros_like, tok)},
            opt_state={"transformer": self.tx.init(params)},
            ema_params={"transformer": params},
        )

    def warm_start(self, state):
        """Copies the trained tokenizer's encoder, decoder and codebook into the state."""
        return state.replace(params={**state.params, "tokenizer": self.tokenizer.params})

    def train_step(self, state, batch, rng):
        drop_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
        codes = self.encode(state.params["tokenizer"], batch["image"])
        b, n = codes.shape
        text = drop_captions(drop_rng, batch["tokens"], self.cond_drop_prob)
        masked = None if self.causal else random_mask(mask_rng, b, n)
        inputs = codes if self.causal else jnp.where(masked, self.model.mask_id, codes)

        def loss_fn(params):
            text_logits, image_logits = self.model.apply(
                {"params": params}, text, inputs, train=True, rngs={"dropout": dropout_rng}
            )
            if self.causal:
                loss, text_ce, image_ce = autoregressive_loss(
                    text_logits, image_logits, text, codes, self.text_weight
                )
                return loss, {"text_ce": text_ce, "image_ce": image_ce}
            return masked_loss(image_logits, codes, masked), {}

        params = state.params["transformer"]
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, state.opt_state["transformer"], params)
        params = optax.apply_updates(params, updates)
        decay = state_lib.ema_decay_at(state.step, float(self.config.train.ema_decay))
        ema = state_lib.ema_update(state.ema_params["transformer"], params, decay)
        metrics = {
            "loss": loss,
            **parts,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": self.learning_rate(state.step),
        }
        new_state = state.replace(
            step=state.step + 1,
            params={**state.params, "transformer": params},
            opt_state={"transformer": opt_state},
            ema_params={"transformer": ema},
        )
        return new_state, metrics

    # -- sampling ----------------------------------------------------------------------------
    def _default_options(self) -> dict:
        sc = self.config.sample
        return dict(
            temperature=float(sc.temperature),
            top_k=int(sc.top_k),
            top_p=float(sc.top_p),
            guidance_scale=float(sc.guidance_scale),
            steps=int(sc.get("maskgit_steps", 8)),
        )

    @staticmethod
    def _sampling_options(temperature, top_k, top_p, guidance_scale, steps) -> tuple:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p}.")
        if steps < 1:
            raise ValueError(f"MaskGIT needs at least 1 decoding step, got {steps}.")
        return (float(temperature), int(top_k), float(top_p), float(guidance_scale), int(steps))

    @functools.partial(jax.jit, static_argnums=(0, 6))
    def _sample_tokens(self, params, text, rng, prefix, given, options):
        temperature, top_k, top_p, guidance_scale, steps = options
        common = dict(
            uncond_text=self.uncond_text,
            guidance_scale=guidance_scale,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        if self.causal:  # ``given``: how many leading tokens of ``prefix`` stay
            return token_sampling.autoregressive(
                self.model, params, text, rng, prefix=prefix, prefix_len=given, **common
            )
        return token_sampling.maskgit(
            self.model, params, text, rng, steps=steps, tokens=prefix, given=given, **common
        )[0]

    @functools.partial(jax.jit, static_argnums=0)
    def _decode(self, tok_params, tokens):
        return self.decode(tok_params, tokens)

    def sample_tokens(
        self, state, prompts, rng, *, prefix=None, given=None, batch_size=None, **options
    ) -> np.ndarray:
        """int32 image tokens ``[N, grid * grid]``, one row per prompt (EMA parameters).

        ``options``: temperature, top_k, top_p, guidance_scale, steps (MaskGIT). ``prefix``
        ``[N, grid * grid]`` holds given tokens: for the autoregressive model its first
        ``given`` (an int) tokens, for MaskGIT the positions where the bool ``given``
        ``[N, grid * grid]`` is True."""
        opts = {**self._default_options(), **{k: v for k, v in options.items() if v is not None}}
        unknown = set(opts) - set(self._default_options())
        if unknown:
            raise TypeError(f"Unknown sampling option(s) {sorted(unknown)}.")
        opts = self._sampling_options(**opts)
        text = self.tokenize(prompts)
        n, length = len(text), self.model.num_image_tokens
        if prefix is None:
            prefix = np.zeros((n, length), np.int32)
            given = 0 if self.causal else np.zeros((n, length), bool)
        elif given is None:
            raise ValueError("A prefix needs `given`: which of its tokens to keep.")
        chunk = int(batch_size or self.config.sample.batch_size)
        padded = -(-n // chunk) * chunk

        def pad(a):
            return np.concatenate([a, np.repeat(a[-1:], padded - n, axis=0)])

        text, prefix = pad(text), pad(np.asarray(prefix, np.int32))
        if not self.causal:
            given = pad(np.asarray(given, bool))
        params = (state.ema_params or state.params)["transformer"]
        out = []
        for i in range(0, padded, chunk):
            part = given if self.causal else given[i : i + chunk]
            out.append(
                self._sample_tokens(
                    params,
                    text[i : i + chunk],
                    jax.random.fold_in(rng, i),
                    prefix[i : i + chunk],
                    part,
                    opts,
                )
            )
        return np.concatenate([np.asarray(o) for o in out])[:n]

    def generate(self, state, prompts, rng, *, batch_size=None, **options) -> np.ndarray:
        """Samples one image per prompt. ``options``: temperature (0: greedy), top_k (0: off),
        top_p (1: off), guidance_scale (1: off), steps (MaskGIT's decoding steps).
        Returns uint8 ``[N, H, W, 3]``."""
        tokens = self.sample_tokens(state, prompts, rng, batch_size=batch_size, **options)
        return np.asarray(self._decode(state.params["tokenizer"], jnp.asarray(tokens)))

    def _encode_images(self, state, prompts, images) -> np.ndarray:
        """Tokens ``[N, grid * grid]`` of uint8 ``[N, S, S, 3]`` images, one per prompt."""
        images = np.asarray(images)
        size = int(self.config.data.image_size)
        if images.dtype != np.uint8 or images.shape != (len(prompts), size, size, 3):
            raise ValueError(
                f"images must be uint8 [{len(prompts)}, {size}, {size}, 3] (one per prompt), "
                f"got {images.dtype} {list(images.shape)}."
            )
        return np.asarray(self.encode(state.params["tokenizer"], jnp.asarray(images)))

    def complete(self, state, prompts, images, rows: int, rng, **options) -> np.ndarray:
        """The paper's image completion: keeps the top ``rows`` rows of each image's tokens and
        samples the rest under its caption. ``images``: uint8 ``[N, H, W, 3]``, one per prompt.
        Returns uint8 ``[N, H, W, 3]``."""
        grid = self.model.grid
        if not 0 <= rows <= grid:
            raise ValueError(f"rows must be in [0, {grid}], got {rows}.")
        tokens = self._encode_images(state, prompts, images)
        given = rows * grid
        if not self.causal:
            given = np.broadcast_to(np.arange(grid * grid) < given, tokens.shape)
        out = self.sample_tokens(state, prompts, rng, prefix=tokens, given=given, **options)
        return np.asarray(self._decode(state.params["tokenizer"], jnp.asarray(out)))

    def inpaint(self, state, prompts, images, keep, rng, **options) -> np.ndarray:
        """MaskGIT only: keeps the image tokens where the bool ``keep`` ``[N, grid, grid]`` is
        True and samples the others under the caption. Returns uint8 ``[N, H, W, 3]``."""
        if self.causal:
            raise ValueError(
                "Inpainting any mask needs the bidirectional model (experiments/dalle.py:maskgit); "
                "the autoregressive one completes from the top rows (complete)."
            )
        grid = self.model.grid
        keep = np.asarray(keep, bool)
        if keep.shape != (len(prompts), grid, grid):
            raise ValueError(
                f"keep must be bool [{len(prompts)}, {grid}, {grid}], got {keep.shape}."
            )
        tokens = self._encode_images(state, prompts, images)
        given = keep.reshape(len(prompts), -1)
        out = self.sample_tokens(state, prompts, rng, prefix=tokens, given=given, **options)
        return np.asarray(self._decode(state.params["tokenizer"], jnp.asarray(out)))

    # -- evaluation ---------------------------------------------------------------------------
    def evaluators(self, plan):
        if not self.judge.has_truth:
            return []
        evaluators = [self.sampled_evaluator(plan)]
        if plan.final:
            evaluators.append(self.sampler_speed)
        return evaluators

    def sampler_speed(self, state, rng) -> dict[str, float]:
        """Image tokens (and images) per second of the compiled decode on one batch of
        ``sample.batch_size`` prompts with the config's sampling settings, timed after a
        compiling call; the tokenizer's decoder is not included."""
        prompts = self.judge.prompts("val", int(self.config.sample.batch_size), seed=2)[0]
        self.sample_tokens(state, prompts, rng)  # compiles
        start = time.perf_counter()
        self.sample_tokens(state, prompts, rng)
        seconds = time.perf_counter() - start
        tokens = len(prompts) * self.model.num_image_tokens
        return {
            "sampler/tokens_per_s": tokens / seconds,
            "sampler/images_per_s": len(prompts) / seconds,
        }
