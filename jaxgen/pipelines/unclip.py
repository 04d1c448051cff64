"""DALL-E 2 / unCLIP (Ramesh et al. 2022): a diffusion prior from the caption to a CLIP image
embedding, a diffusion decoder from that embedding to pixels, and a diffusion upsampler.

A trained CLIP run (``model.clip``: a workdir, or ``"pretrain:clip"``, which the training loop
trains first) is copied into the state (``params["clip"]``) and frozen. One train step updates
the three networks on the same batch, each with its own optimiser state:

  prior      ``DiffusionPrior`` over ``[caption states ; text embedding ; timestep ; noised
             image embedding ; query]``, predicting the clean image embedding (MSE on it, as the
             paper), cosine schedule. Captions are dropped (to the empty caption) for
             ``unclip.prior_drop_prob`` of examples, for guidance.
  decoder    the project's UNet at ``unclip.base_size``, conditioned on the image embedding (added
             to the time embedding and as ``cond_tokens`` extra context tokens next to the
             caption's, unCLIP after GLIDE); its text encoder is the CLIP's, frozen. The
             embedding is dropped (zeros) for ``unclip.embed_drop_prob`` and the caption for
             ``unclip.caption_drop_prob`` of examples.
  upsampler  a UNet from ``base_size`` to ``data.image_size`` that reads the noisy image
             concatenated with the bilinearly upsampled low-resolution one; in training the
             low-resolution image is blurred by a Gaussian of a random width in
             ``[0, unclip.blur_sigma_max]`` (the paper's corruption for its first upsampler).
             Absent when ``base_size`` is the image size.

CLIP embeddings are unit vectors; the prior diffuses them scaled by ``sqrt(D)`` (unit variance per
component) and the decoder reads them at that scale.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import diffusion
from jaxgen.data import tokenizer
from jaxgen.data.pixels import to_model_space, to_uint8
from jaxgen.models.clip import l2_normalize
from jaxgen.models.prior import DiffusionPrior
from jaxgen.models.text_encoder import TextEncoder
from jaxgen.models.unet import UNet
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline, SampleOption

NETWORKS = ("prior", "decoder", "upsampler")
EMBEDDINGS = ("prior", "text", "none")


def slerp(a: jax.Array, b: jax.Array, theta: jax.Array | float) -> jax.Array:
    """Spherical interpolation of unit vectors ``[..., D]`` at fraction ``theta`` of their angle:
    ``a`` at 0, ``b`` at 1, unit norm between (``a`` where the two are parallel)."""
    a, b = l2_normalize(a), l2_normalize(b)
    theta = jnp.asarray(theta, jnp.float32)[..., None] if jnp.ndim(theta) else theta
    omega = jnp.arccos(jnp.clip(jnp.sum(a * b, -1, keepdims=True), -1.0, 1.0))
    so = jnp.sin(omega)
    safe = jnp.where(so < 1e-6, 1.0, so)
    mixed = (jnp.sin((1.0 - theta) * omega) * a + jnp.sin(theta * omega) * b) / safe
    return jnp.where(so < 1e-6, a, mixed)


def nearest_candidate(candidates: jax.Array, text_emb: jax.Array) -> jax.Array:
    """Of ``candidates`` ``[K, B, D]``, per row b the one with the highest dot product with
    ``text_emb[b]`` (the paper's choice between the prior's samples): ``[B, D]``."""
    best = jnp.argmax(jnp.einsum("kbd,bd->kb", candidates, text_emb), axis=0)
    return candidates[best, jnp.arange(candidates.shape[1])]


def gaussian_kernel(sigma: jax.Array, radius: int = 2) -> jax.Array:
    """Normalised 1-D Gaussian weights ``[2 radius + 1]`` of width ``sigma`` (a delta at 0)."""
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    w = jnp.exp(-0.5 * jnp.square(x / jnp.maximum(sigma, 1e-3)))
    return w / jnp.sum(w)


def gaussian_blur(images: jax.Array, sigma: jax.Array, radius: int = 2) -> jax.Array:
    """Blurs float ``[B, H, W, C]`` images, each by its own ``sigma`` ``[B]`` (separable, edges
    replicated); sigma 0 leaves an image as it is."""

    def one(img, s):
        k = gaussian_kernel(s, radius)
        pad = jnp.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
        h = sum(k[i] * pad[i : i + img.shape[0]] for i in range(2 * radius + 1))
        return sum(k[i] * h[:, i : i + img.shape[1]] for i in range(2 * radius + 1))

    return jax.vmap(one)(images, sigma)


def downsample(images: jax.Array, size: int) -> jax.Array:
    """Float ``[B, S, S, C]`` images averaged over blocks down to ``[B, size, size, C]``."""
    b, s, _, c = images.shape
    f = s // size
    return images.reshape(b, size, f, size, f, c).mean(axis=(2, 4))


def upsample(images: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of float ``[B, s, s, C]`` to ``[B, size, size, C]``."""
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, size, size, c), "bilinear")


class UnCLIPPipeline(Pipeline):
    """State: ``params = {"prior", "decoder", "upsampler", "clip"}`` (the CLIP frozen: no
    optimiser state, no EMA), one AdamW state and one EMA per trained network."""

    sample_options = (
        SampleOption("num_steps", "int", 1, 1000, help="the decoder's DDIM steps"),
        SampleOption("guidance_scale", "float", 0.0, 20.0, help="the decoder's guidance"),
        SampleOption("prior_guidance_scale", "float", 0.0, 20.0, help="the prior's guidance"),
    )

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        uc = config.unclip
        self.size = int(config.data.image_size)
        self.base = int(uc.base_size)
        if self.base <= 0 or self.size % self.base:
            raise ValueError(
                f"unclip.base_size={self.base} must divide data.image_size={self.size}."
            )
        self.upsampling = self.base != self.size
        for key in ("prior_drop_prob", "embed_drop_prob", "caption_drop_prob"):
            if not 0.0 <= float(uc[key]) < 1.0:
                raise ValueError(f"unclip.{key} must be in [0, 1), got {uc[key]}.")
        if not str(config.model.get("clip", "") or ""):
            raise ValueError('model.clip must name a trained CLIP workdir or "pretrain:clip".')
        self.max_text_len = int(config.data.max_text_len)
        self.dtype = state_lib.compute_dtype(config.model)
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)
        self.schedule = diffusion.make_schedule(
            config.diffusion.schedule, int(config.diffusion.num_timesteps)
        )
        self.prediction_type = str(config.diffusion.prediction_type)
        if self.prediction_type not in diffusion.PREDICTION_TYPES:
            raise ValueError(
                f"diffusion.prediction_type must be one of {diffusion.PREDICTION_TYPES}, got "
                f"{self.prediction_type!r}."
            )
        self.empty_tokens = jnp.asarray(tokenizer.encode("", self.max_text_len))
        self._default_options()  # bad sample settings fail here

    # -- the frozen CLIP ----------------------------------------------------------------------
    @functools.cached_property
    def clip_run(self):
        path = str(self.config.model.clip)
        with jax.ensure_compile_time_eval():  # also when first asked for inside a trace (init)
            run = self.load_run(path)
        if run.config.pipeline != "clip":
            raise ValueError(f"model.clip={path} holds a {run.config.pipeline!r} run, not CLIP.")
        if int(run.config.data.max_text_len) != self.max_text_len:
            raise ValueError(
                f"The CLIP in {path} reads captions of {run.config.data.max_text_len} tokens, "
                f"data.max_text_len is {self.max_text_len}."
            )
        if int(run.config.data.image_size) != self.size:
            raise ValueError(
                f"The CLIP in {path} reads {run.config.data.image_size}px images, "
                f"data.image_size is {self.size}."
            )
        return run

    @functools.cached_property
    def embed_dim(self) -> int:
        return int(self.clip_run.config.model.embed_dim)

    @functools.cached_property
    def text_encoder(self) -> TextEncoder:
        """The CLIP's text encoder, as a module of its own (its token states feed the prior)."""
        text = self.clip_run.config.model.text.to_dict()
        return TextEncoder(max_len=self.max_text_len, dtype=self.dtype, **text)

    def clip_text(self, clip_params, tokens):
        """``(states [B, L, W], mask [B, L], embedding [B, D])`` of byte tokens."""
        states, _, mask = self.text_encoder.apply(
            {"params": clip_params["text"]["encoder"]}, tokens
        )
        emb = self.clip_run.pipeline.model.apply(
            {"params": clip_params}, tokens, method="embed_text"
        )
        return jax.lax.stop_gradient((states, mask, emb))

    def clip_image(self, clip_params, images):
        """Unit image embeddings ``[B, D]`` of float images in [-1, 1]."""
        emb = self.clip_run.pipeline.model.apply(
            {"params": clip_params}, images, method="embed_image"
        )
        return jax.lax.stop_gradient(emb)

    # -- the networks -------------------------------------------------------------------------
    @functools.cached_property
    def prior(self) -> DiffusionPrior:
        return DiffusionPrior(
            embed_dim=self.embed_dim,
            text_len=self.max_text_len,
            dtype=self.dtype,
            **self.config.model.prior.to_dict(),
        )

    @functools.cached_property
    def decoder(self) -> UNet:
        unet = self.config.model.decoder.to_dict()
        return UNet(**unet, text_encoder=self.text_encoder, dtype=self.dtype)

    @functools.cached_property
    def upsampler(self) -> UNet:
        unet = self.config.model.upsampler.to_dict()
        return UNet(**unet, cond_tokens=0, dtype=self.dtype)

    @property
    def scale(self) -> float:
        """The factor between unit CLIP embeddings and the diffused ones."""
        return math.sqrt(self.embed_dim)

    def _decoder_params(self, params, clip_params):
        """The decoder's trained parameters with the frozen CLIP text encoder put back in."""
        return {**params, "text_encoder": clip_params["text"]["encoder"]}

    def init(self, rng, example_batch):
        tokens = jnp.asarray(example_batch["tokens"])
        b = tokens.shape[0]
        clip = jax.tree.map(jnp.zeros_like, self.clip_run.state.ema_params["clip"])
        states, mask, text_emb = self.clip_text(clip, tokens)
        rngs = jax.random.split(rng, 3)
        t = jnp.zeros((b,), jnp.int32)
        params = {"prior": self.prior.init(rngs[0], states, mask, text_emb, t, text_emb)["params"]}
        low = jnp.zeros((b, self.base, self.base, 3))
        dec = self.decoder.init(rngs[1], low, t, tokens, cond=text_emb)["params"]
        params["decoder"] = {k: v for k, v in dec.items() if k != "text_encoder"}
        if self.upsampling:
            x = jnp.zeros((b, self.size, self.size, 6))
            params["upsampler"] = self.upsampler.init(rngs[2], x, t)["params"]
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            # The CLIP is filled by warm_start (a trace must not carry trained weights).
            params={**params, "clip": clip},
            opt_state={k: self.tx.init(v) for k, v in params.items()},
            ema_params=dict(params),
        )

    def warm_start(self, state):
        """Copies the trained CLIP's (EMA) parameters into the state."""
        clip = jax.device_get(self.clip_run.state.ema_params["clip"])
        return state.replace(params={**state.params, "clip": clip})

    # -- training -----------------------------------------------------------------------------
    def losses(self, params, clip_params, batch, rng):
        """The three networks' losses on one batch: ``{"prior", "decoder", "upsampler"}``."""
        uc = self.config.unclip
        tokens = batch["tokens"]
        images = to_model_space(batch["image"])
        b = tokens.shape[0]
        keys = jax.random.split(rng, 7)
        states, mask, text_emb = self.clip_text(clip_params, tokens)
        image_emb = self.clip_image(clip_params, images) * self.scale
        empty = jnp.broadcast_to(self.empty_tokens, tokens.shape)
        e_states, e_mask, e_emb = self.clip_text(clip_params, self.empty_tokens[None])
        out = {}

        # Prior: the caption dropped to the empty caption's states and embedding.
        drop = jax.random.bernoulli(keys[0], float(uc.prior_drop_prob), (b,))
        p_states = jnp.where(drop[:, None, None], e_states, states)
        p_mask = jnp.where(drop[:, None], e_mask, mask)
        p_emb = jnp.where(drop[:, None], e_emb, text_emb)

        def prior_fn(x_t, t):
            return self.prior.apply({"params": params["prior"]}, p_states, p_mask, p_emb, t, x_t)

        out["prior"], _ = diffusion.diffusion_loss(
            self.schedule, prior_fn, image_emb, keys[1], prediction_type="x0"
        )

        # Decoder at the base size: embedding dropped to zeros, caption to the empty one.
        low = downsample(images, self.base) if self.upsampling else images
        drop_emb = jax.random.bernoulli(keys[2], float(uc.embed_drop_prob), (b,))
        drop_cap = jax.random.bernoulli(keys[3], float(uc.caption_drop_prob), (b,))
        cond = jnp.where(drop_emb[:, None], 0.0, image_emb)
        dec_tokens = jnp.where(drop_cap[:, None], empty, tokens)
        dec_params = self._decoder_params(params["decoder"], clip_params)

        def decoder_fn(x_t, t):
            return self.decoder.apply({"params": dec_params}, x_t, t, dec_tokens, cond=cond)

        dc = self.config.diffusion
        out["decoder"], _ = diffusion.diffusion_loss(
            self.schedule,
            decoder_fn,
            low,
            keys[4],
            prediction_type=self.prediction_type,
            timestep_sampling=dc.get("timestep_sampling", "uniform"),
            logit_mean=float(dc.get("timestep_logit_mean", 0.0)),
        )

        if self.upsampling:
            sigma = jax.random.uniform(keys[5], (b,)) * float(uc.blur_sigma_max)
            lowres = upsample(gaussian_blur(low, sigma), self.size)

            def upsampler_fn(x_t, t):
                x = jnp.concatenate([x_t, lowres], axis=-1)
                return self.upsampler.apply({"params": params["upsampler"]}, x, t)

            out["upsampler"], _ = diffusion.diffusion_loss(
                self.schedule, upsampler_fn, images, keys[6], prediction_type=self.prediction_type
            )
        return out

    def train_step(self, state, batch, rng):
        clip_params = state.params["clip"]
        trained = {k: v for k, v in state.params.items() if k != "clip"}

        def loss_fn(params):
            parts = self.losses(params, clip_params, batch, rng)
            return sum(parts.values()), parts

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        decay = state_lib.ema_decay_at(state.step, float(self.config.train.ema_decay))
        params, opt_state, ema, metrics = {}, {}, {}, {"loss": loss}
        for name, p in trained.items():
            updates, opt_state[name] = self.tx.update(grads[name], state.opt_state[name], p)
            params[name] = optax.apply_updates(p, updates)
            ema[name] = state_lib.ema_update(state.ema_params[name], params[name], decay)
            metrics[f"{name}_loss"] = parts[name]
            metrics[f"{name}_grad_norm"] = optax.tree.norm(grads[name])
        metrics["learning_rate"] = self.learning_rate(state.step)
        new_state = state.replace(
            step=state.step + 1,
            params={**params, "clip": clip_params},
            opt_state=opt_state,
            ema_params=ema,
        )
        return new_state, metrics

    # -- sampling -----------------------------------------------------------------------------
    def _default_options(self) -> dict:
        sc = self.config.sample
        opts = dict(
            embedding=str(sc.embedding),
            prior_steps=int(sc.prior_steps),
            prior_guidance_scale=float(sc.prior_guidance_scale),
            prior_candidates=int(sc.prior_candidates),
            num_steps=int(sc.num_steps),
            guidance_scale=float(sc.guidance_scale),
            upsampler_steps=int(sc.upsampler_steps),
            eta=float(sc.eta),
        )
        return self._check_options(opts)

    def _check_options(self, opts: dict) -> dict:
        unknown = set(opts) - {
            "embedding",
            "prior_steps",
            "prior_guidance_scale",
            "prior_candidates",
            "num_steps",
            "guidance_scale",
            "upsampler_steps",
            "eta",
        }
        if unknown:
            raise TypeError(f"Unknown sampling option(s) {sorted(unknown)}.")
        if opts["embedding"] not in EMBEDDINGS:
            raise ValueError(
                f"embedding must be one of {', '.join(EMBEDDINGS)}, got {opts['embedding']!r}."
            )
        steps = self.schedule.num_timesteps
        for key in ("prior_steps", "num_steps", "upsampler_steps"):
            if not 1 <= int(opts[key]) <= steps:
                raise ValueError(f"{key} must be in [1, {steps}], got {opts[key]}.")
        if int(opts["prior_candidates"]) < 1:
            raise ValueError(f"prior_candidates must be >= 1, got {opts['prior_candidates']}.")
        if not 0.0 <= float(opts["eta"]) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {opts['eta']}.")
        return opts

    def _options(self, options: dict) -> dict:
        given = {k: v for k, v in options.items() if v is not None}
        return self._check_options({**self._default_options(), **given})

    def _params(self, state):
        params = dict(state.ema_params or state.params)
        params["clip"] = state.params["clip"]
        return params

    def sample_prior(self, params, tokens, rng, steps, guidance_scale, candidates):
        """Unit image embeddings ``[B, D]`` from the prior: ``candidates`` DDIM samples per
        caption, keeping the one with the highest dot product with the text embedding."""
        states, mask, text_emb = self.clip_text(params["clip"], tokens)
        b = tokens.shape[0]
        e_states, e_mask, e_emb = self.clip_text(params["clip"], self.empty_tokens[None])
        cond = (
            jnp.tile(states, (candidates, 1, 1)),
            jnp.tile(mask, (candidates, 1)),
            jnp.tile(text_emb, (candidates, 1)),
        )

        def apply(x, t, c):
            return self.prior.apply({"params": params["prior"]}, c[0], c[1], c[2], t, x)

        if guidance_scale != 1.0:
            model_fn = diffusion.guided_model_fn(
                apply, cond, (e_states, e_mask, e_emb), guidance_scale
            )
        else:

            def model_fn(x, t):
                return apply(x, t, cond)

        x = diffusion.ddim_sample(
            model_fn,
            self.schedule,
            (candidates * b, self.embed_dim),
            rng,
            num_steps=steps,
            prediction_type="x0",
            clip_x0=False,
        )
        return nearest_candidate(l2_normalize(x).reshape(candidates, b, -1), text_emb)

    def _decoder_fn(self, params, tokens, cond, guidance_scale):
        dec = self._decoder_params(params["decoder"], params["clip"])

        def apply(x, t, c):
            return self.decoder.apply({"params": dec}, x, t, c[0], cond=c[1])

        if guidance_scale == 1.0:
            return lambda x, t: apply(x, t, (tokens, cond))
        uncond = (self.empty_tokens[None], jnp.zeros((1, cond.shape[-1]), cond.dtype))
        return diffusion.guided_model_fn(apply, (tokens, cond), uncond, guidance_scale)

    def decode_base(self, params, tokens, emb, rng, opts, x_init=None):
        """Float images in [-1, 1] ``[B, b, b, 3]`` at the base size, decoded from unit
        embeddings ``[B, D]`` (zeros: none) under captions ``tokens``; ``x_init``: the
        decoder's starting noise (e.g. an inverted image's)."""
        model_fn = self._decoder_fn(params, tokens, emb * self.scale, opts["guidance_scale"])
        return diffusion.ddim_sample(
            model_fn,
            self.schedule,
            (tokens.shape[0], self.base, self.base, 3),
            rng,
            num_steps=opts["num_steps"],
            eta=opts["eta"],
            prediction_type=self.prediction_type,
            x_init=x_init,
        )

    def upsample_base(self, params, low, rng, opts):
        """The upsampler's DDIM from base-size float images to ``data.image_size``."""
        lowres = upsample(low, self.size)

        def up_fn(x_t, t):
            x = jnp.concatenate([x_t, lowres], axis=-1)
            return self.upsampler.apply({"params": params["upsampler"]}, x, t)

        return diffusion.ddim_sample(
            up_fn,
            self.schedule,
            (low.shape[0], self.size, self.size, 3),
            rng,
            num_steps=opts["upsampler_steps"],
            prediction_type=self.prediction_type,
        )

    def decode_embedding(self, params, tokens, emb, rng, opts, x_init=None):
        """``decode_base``, then ``upsample_base`` when the base size is not the image size."""
        dec_rng, up_rng = jax.random.split(rng)
        low = self.decode_base(params, tokens, emb, dec_rng, opts, x_init)
        return self.upsample_base(params, low, up_rng, opts) if self.upsampling else low

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _generate(self, params, tokens, rng, frozen_opts):
        opts = dict(frozen_opts)
        prior_rng, dec_rng = jax.random.split(rng)
        if opts["embedding"] == "prior":
            emb = self.sample_prior(
                params,
                tokens,
                prior_rng,
                opts["prior_steps"],
                opts["prior_guidance_scale"],
                opts["prior_candidates"],
            )
        elif opts["embedding"] == "text":  # the paper's baseline: the caption's embedding
            emb = self.clip_text(params["clip"], tokens)[2]
        else:  # the caption alone
            emb = jnp.zeros((tokens.shape[0], self.embed_dim))
        return to_uint8(self.decode_embedding(params, tokens, emb, dec_rng, opts))

    def _chunks(self, fn, n, batch_size, *arrays):
        """Runs ``fn(*chunk_arrays, i)`` over fixed-size chunks (last one padded)."""
        chunk = int(batch_size or self.config.sample.batch_size)
        padded = -(-n // chunk) * chunk
        arrays = [np.concatenate([a, np.repeat(a[-1:], padded - n, axis=0)]) for a in arrays]
        out = [fn(*(a[i : i + chunk] for a in arrays), i) for i in range(0, padded, chunk)]
        return np.concatenate([np.asarray(o) for o in out])[:n]

    def generate(self, state, prompts, rng, *, batch_size=None, **options) -> np.ndarray:
        """Samples one image per prompt: prior, decoder, upsampler (EMA parameters).

        ``options``: embedding ("prior"; "text" feeds the caption's CLIP text embedding to the
        decoder, "none" zeros: the paper's two baselines), prior_steps, prior_guidance_scale,
        prior_candidates (the prior's samples per caption, the best by dot product with the
        text embedding kept), num_steps and guidance_scale (the decoder's DDIM), upsampler_steps,
        eta. Returns uint8 ``[N, H, W, 3]``."""
        opts = tuple(sorted(self._options(options).items()))
        params = self._params(state)
        tokens = self.tokenize(prompts)
        return self._chunks(
            lambda tok, i: self._generate(params, tok, jax.random.fold_in(rng, i), opts),
            len(tokens),
            batch_size,
            tokens,
        )

    # -- what only unCLIP does ----------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=0)
    def _embed_images(self, clip_params, images):
        return self.clip_image(clip_params, to_model_space(images))

    @functools.partial(jax.jit, static_argnums=0)
    def _embed_texts(self, clip_params, tokens):
        return self.clip_text(clip_params, tokens)[2]

    def embed_images(self, state, images) -> np.ndarray:
        """Unit CLIP image embeddings ``[N, D]`` of uint8 images (the frozen CLIP)."""
        images = self.check_images(images)
        return np.asarray(self._embed_images(state.params["clip"], jnp.asarray(images)))

    def embed_texts(self, state, prompts) -> np.ndarray:
        """Unit CLIP text embeddings ``[N, D]`` of prompts (the frozen CLIP)."""
        tokens = jnp.asarray(self.tokenize(prompts))
        return np.asarray(self._embed_texts(state.params["clip"], tokens))

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _invert(self, params, images, emb, frozen_opts):
        """The decoder's DDIM-inverted ``x_T`` of float base-size images under their embedding
        and the empty caption (no guidance)."""
        opts = dict(frozen_opts)
        tokens = jnp.broadcast_to(self.empty_tokens, (images.shape[0], self.max_text_len))
        model_fn = self._decoder_fn(params, tokens, emb * self.scale, 1.0)
        return diffusion.ddim_invert(
            model_fn,
            self.schedule,
            images,
            num_steps=opts["num_steps"],
            prediction_type=self.prediction_type,
        )

    @functools.partial(jax.jit, static_argnums=(0, 5))
    def _decode(self, params, emb, x_init, rng, frozen_opts):
        tokens = jnp.broadcast_to(self.empty_tokens, (emb.shape[0], self.max_text_len))
        x = self.decode_embedding(params, tokens, emb, rng, dict(frozen_opts), x_init)
        return to_uint8(x)

    def invert(self, state, images, **options) -> np.ndarray:
        """DDIM-inverted decoder noise ``x_T`` ``[N, b, b, 3]`` of uint8 images (their
        base-size versions, under their own CLIP embedding and no caption)."""
        images = self.check_images(images)
        opts = tuple(sorted(self._options(options).items()))
        x = to_model_space(jnp.asarray(images))
        low = downsample(x, self.base) if self.upsampling else x
        emb = jnp.asarray(self.embed_images(state, images))
        return np.asarray(self._invert(self._params(state), low, emb, opts))

    def decode_embeddings(self, state, embeddings, rng, *, x_init=None, **options) -> np.ndarray:
        """uint8 images decoded (no caption) from CLIP embeddings ``[N, D]`` (normalised here),
        starting the decoder from ``x_init`` ``[N, b, b, 3]`` or fresh noise."""
        emb = l2_normalize(jnp.asarray(embeddings, jnp.float32))
        if x_init is None:
            x_init = jax.random.normal(
                jax.random.fold_in(rng, 1), (emb.shape[0], self.base, self.base, 3)
            )
        opts = tuple(sorted(self._options(options).items()))
        return np.asarray(self._decode(self._params(state), emb, jnp.asarray(x_init), rng, opts))

    def variations(self, state, images, rng, *, num=4, invert=True, eta=None, **options):
        """``num`` variations of each uint8 image ``[N, S, S, 3]`` -> uint8 ``[N, num, S, S, 3]``:
        its CLIP embedding decoded again; with ``invert`` from its DDIM-inverted ``x_T`` and
        DDIM with ``eta`` > 0 (the paper; ``sample.variation_eta``), otherwise fresh noise."""
        images = self.check_images(images)
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}.")
        eta = float(self.config.sample.variation_eta if eta is None else eta)
        emb = np.repeat(self.embed_images(state, images), num, axis=0)
        x_init = None
        if invert:
            x_init = np.repeat(self.invert(state, images, **options), num, axis=0)
        out = self.decode_embeddings(state, emb, rng, x_init=x_init, eta=eta, **options)
        return out.reshape(len(images), num, *out.shape[1:])

    def interpolate(self, state, image_a, image_b, rng, *, steps=5, **options) -> np.ndarray:
        """uint8 ``[steps, S, S, 3]``: the slerp from ``image_a``'s CLIP embedding to
        ``image_b``'s, decoded from one shared noise."""
        pair = self.check_images(np.stack([image_a, image_b]))
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}.")
        a, b = self.embed_images(state, pair)
        theta = jnp.linspace(0.0, 1.0, steps)
        emb = slerp(
            jnp.broadcast_to(a, (steps, a.size)), jnp.broadcast_to(b, (steps, b.size)), theta
        )
        noise = jax.random.normal(jax.random.fold_in(rng, 1), (1, self.base, self.base, 3))
        x_init = jnp.broadcast_to(noise, (steps, self.base, self.base, 3))
        return self.decode_embeddings(state, emb, rng, x_init=x_init, **options)

    def text_diff(
        self, state, image, source, target, rng, *, thetas=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), **opts
    ) -> np.ndarray:
        """The paper's text diffs, uint8 ``[len(thetas), S, S, 3]``: the image's embedding
        slerped by each theta towards the normalised difference of the captions' text
        embeddings (``target`` minus ``source``), decoded from the image's inverted ``x_T``."""
        image = self.check_images(np.asarray(image)[None])
        z = self.embed_images(state, image)[0]
        t_src, t_tgt = self.embed_texts(state, [source, target])
        diff = l2_normalize(jnp.asarray(t_tgt - t_src))
        theta = jnp.asarray(thetas, jnp.float32)
        n = len(thetas)
        emb = slerp(jnp.broadcast_to(z, (n, z.size)), jnp.broadcast_to(diff, (n, z.size)), theta)
        x_init = np.repeat(self.invert(state, image, **opts), n, axis=0)
        return self.decode_embeddings(state, emb, rng, x_init=x_init, **opts)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluators(self, plan):
        if not self.judge.has_truth:
            return []
        evaluators = [
            self.sampled_evaluator(plan),
            functools.partial(self.prior_quality, plan=plan),
        ]
        if plan.final:
            evaluators.append(self.sampler_speed)
        return evaluators

    def prior_quality(self, state, rng, *, plan) -> dict[str, float]:
        """Mean cosine between the prior's embedding for a caption and the CLIP embedding of
        the split's real image for it, against the caption's own text embedding (the paper's
        baseline), per split of ``plan``."""
        from jaxgen.evaluation import intervals

        opts = self._options({})
        params = self._params(state)
        fn = self._sample_prior_jit
        results = {}
        for split in plan.splits:
            captions, _, images = self.judge.prompts(split, plan.num_samples, seed=0)
            true = self.embed_images(state, images)
            text = self.embed_texts(state, captions)
            tokens = self.tokenize(captions)
            pred = self._chunks(
                lambda tok, i: fn(
                    params,
                    tok,
                    jax.random.fold_in(rng, i),
                    steps=opts["prior_steps"],
                    guidance_scale=opts["prior_guidance_scale"],
                    candidates=opts["prior_candidates"],
                ),
                len(tokens),
                None,
                tokens,
            )
            results.update(intervals.mean(f"{split}/prior_cosine", np.sum(pred * true, -1)))
            results.update(intervals.mean(f"{split}/text_cosine", np.sum(text * true, -1)))
        return {k: float(v) for k, v in results.items()}

    @functools.partial(
        jax.jit, static_argnums=0, static_argnames=("steps", "guidance_scale", "candidates")
    )
    def _sample_prior_jit(self, params, tokens, rng, steps, guidance_scale, candidates):
        return self.sample_prior(params, tokens, rng, steps, guidance_scale, candidates)

    @functools.partial(jax.jit, static_argnums=0, static_argnames="frozen_opts")
    def _decode_base_jit(self, params, tokens, emb, rng, frozen_opts):
        return self.decode_base(params, tokens, emb, rng, dict(frozen_opts))

    @functools.partial(jax.jit, static_argnums=0, static_argnames="frozen_opts")
    def _upsample_jit(self, params, low, rng, frozen_opts):
        return self.upsample_base(params, low, rng, dict(frozen_opts))

    def sampler_speed(self, state, rng) -> dict[str, float]:
        """Images per second of the whole two-hop sampler (``generate``) on one batch of
        ``sample.batch_size`` prompts, and the shares of its three parts (prior, decoder,
        upsampler) in the sum of their separately timed, compiled calls."""
        prompts = self.judge.prompts("val", int(self.config.sample.batch_size), seed=2)[0]
        opts = self._options({})
        params = self._params(state)
        tokens = jnp.asarray(self.tokenize(prompts))
        frozen = tuple(sorted(opts.items()))
        prior = functools.partial(
            self._sample_prior_jit,
            rng=rng,
            steps=opts["prior_steps"],
            guidance_scale=opts["prior_guidance_scale"],
            candidates=opts["prior_candidates"],
        )
        decoder = functools.partial(self._decode_base_jit, rng=rng, frozen_opts=frozen)
        upsampler = functools.partial(self._upsample_jit, rng=rng, frozen_opts=frozen)

        def timed(fn, *args):
            out = jax.block_until_ready(fn(*args))  # compiles
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            return out, time.perf_counter() - start

        emb, parts = timed(prior, params, tokens)
        low, t_dec = timed(decoder, params, tokens, emb)
        parts = {"prior": parts, "decoder": t_dec, "upsampler": 0.0}
        if self.upsampling:
            parts["upsampler"] = timed(upsampler, params, low)[1]
        _, total = timed(lambda: self.generate(state, prompts, rng))
        results = {"sampler/images_per_s": len(prompts) / total}
        for name, seconds in parts.items():
            results[f"sampler/{name}_share"] = seconds / sum(parts.values())
        return results
