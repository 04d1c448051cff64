"""GAN-INT-CLS: text-conditional DCGAN with a matching-aware discriminator (Reed et al. 2016).

Variants (``config.gan.variant``):
  gan          D sees (real image, its text) as real and (fake image, its text) as fake.
  gan_cls      matching-aware D: (real image, mismatched text) is a third, fake, input.
  gan_int      G also learns from interpolated embeddings ``beta * t1 + (1 - beta) * t2``.
  gan_int_cls  both (the paper's best).

Both networks train with the paper's non-saturating loss. The text embedding ``phi(t)`` comes
from a ``TextTower``: either a trained CLIP's, loaded from ``model.text_init`` and frozen
(``model.text_source="clip"``), or one trained jointly with the discriminator's loss
(``"joint"``; the generator sees it through a stop-gradient). An inverse network ``S(x) -> z`` is
trained alongside with ``||z - S(G(z, t))||^2`` for style transfer (section 4.4):
``generate(..., reference=images)`` keeps a reference's style and changes its content to the
prompt's. ``interpolate_prompts`` and ``interpolate_noise`` walk the text and the noise;
``match_logits`` exposes the discriminator's judgement of (image, prompt) pairs. The evaluators
judge samples (``judges.evaluate_generator``) and their diversity.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data.pixels import to_model_space, to_uint8
from jaxgen.models.clip import TextTower
from jaxgen.models.gan import Discriminator, Generator, InverseNetwork
from jaxgen.pipelines import pretrained
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline

VARIANTS = ("gan", "gan_cls", "gan_int", "gan_int_cls")
TEXT_SOURCES = ("clip", "joint")


def discriminator_loss(real, wrong, fake, *, matching_aware: bool):
    """The discriminator's non-saturating loss from its logits, with ``l_real(s) = -log
    sigmoid(s)`` and ``l_fake(s) = -log(1 - sigmoid(s))``.

    Args:
      real: logits of (real image, right text) ``[B]``.
      wrong: logits of (real image, mismatched text) ``[B]`` (used when ``matching_aware``).
      fake: logits of (generated image, right text) ``[B]``.
      matching_aware: GAN-CLS (Reed et al. Algorithm 1): the two fake kinds share the fake
        term, ``L = l_real(real) + (l_fake(wrong) + l_fake(fake)) / 2``; otherwise
        ``L = l_real(real) + l_fake(fake)``.

    Returns:
      The scalar loss (mean over the batch).
    """
    l_real, l_fake = jax.nn.softplus(-real), jax.nn.softplus(fake)
    if matching_aware:
        return jnp.mean(l_real + 0.5 * (jax.nn.softplus(wrong) + l_fake))
    return jnp.mean(l_real + l_fake)


def generator_loss(fake):
    """``-log sigmoid(D(G(z), t))`` (non-saturating), batch mean."""
    return jnp.mean(jax.nn.softplus(-fake))


def interpolate(t1: jax.Array, t2: jax.Array, beta) -> jax.Array:
    """``beta * t1 + (1 - beta) * t2`` (GAN-INT's interpolated text embeddings)."""
    return beta * t1 + (1.0 - beta) * t2


class GANINTCLSPipeline(Pipeline):
    """State: ``params`` and ``opt_state`` for ``G``, ``D``, ``S`` (and ``text`` when trained
    jointly; a frozen CLIP tower has parameters but no optimizer), an EMA of ``G``."""

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        mc, gc = config.model, config.gan
        self.max_text_len = int(config.data.max_text_len)
        self.size = int(config.data.image_size)
        self.z_dim = int(mc.z_dim)
        if gc.variant not in VARIANTS:
            raise ValueError(f"Unknown gan.variant {gc.variant!r}; valid: {', '.join(VARIANTS)}.")
        if mc.text_source not in TEXT_SOURCES:
            raise ValueError(
                f"Unknown model.text_source {mc.text_source!r}; valid: {', '.join(TEXT_SOURCES)}."
            )
        if mc.text_source == "clip" and not mc.get("text_init"):
            raise ValueError(
                "model.text_source='clip' needs model.text_init, a trained CLIP workdir "
                "(python -m jaxgen.main --config=experiments/clip.py); or use "
                "model.text_source='joint'."
            )
        self.matching_aware = "cls" in gc.variant
        self.use_int = "int" in gc.variant
        self.frozen_text = mc.text_source == "clip"
        dtype = state_lib.compute_dtype(mc)
        self.text = TextTower(
            int(mc.embed_dim), {**mc.text.to_dict(), "max_len": self.max_text_len}, dtype
        )
        self.G = Generator(self.size, int(mc.g_ch), int(mc.text_dim), dtype)
        self.D = Discriminator(self.size, int(mc.d_ch), int(mc.text_dim), dtype)
        self.S = InverseNetwork(self.size, int(mc.d_ch), self.z_dim, dtype)
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)

    @property
    def trained_networks(self) -> tuple[str, ...]:
        return ("G", "D", "S") if self.frozen_text else ("G", "D", "S", "text")

    # -- training -------------------------------------------------------------------------
    def init(self, rng, example_batch):
        x = to_model_space(jnp.asarray(example_batch["image"]))
        tokens = jnp.asarray(example_batch["tokens"])
        k_text, k_g, k_d, k_s = jax.random.split(rng, 4)
        text = self.text.init(k_text, tokens)["params"]
        t = self.text.apply({"params": text}, tokens)
        z = jnp.zeros((x.shape[0], self.z_dim))
        params = {
            "G": self.G.init(k_g, z, t)["params"],
            "D": self.D.init(k_d, x, t)["params"],
            "S": self.S.init(k_s, x)["params"],
            "text": text,
        }
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={k: self.tx.init(params[k]) for k in self.trained_networks},
            ema_params={"G": params["G"]},
        )

    def warm_start(self, state):
        """Loads the frozen CLIP text tower from the CLIP run at ``model.text_init``."""
        if not self.frozen_text:
            return state
        path = self.config.model.text_init
        causal = bool(self.config.model.text.get("causal", False))
        run = self.load_run(path)
        clip = pretrained.clip_params(run, "a text tower", causal)
        if not pretrained.shapes_match(state.params["text"], clip["text"]):
            clip_config = run.config
            raise ValueError(
                f"The CLIP text tower in {path} (model.text={clip_config.model.text.to_dict()}, "
                f"embed_dim={clip_config.model.embed_dim}, "
                f"data.max_text_len={clip_config.data.max_text_len}) does not fit this GAN's "
                "model.text, model.embed_dim and data.max_text_len; set them to the CLIP run's."
            )
        return state.replace(params={**state.params, "text": clip["text"]})

    def train_step(self, state, batch, rng):
        gc, tc = self.config.gan, self.config.train
        x = to_model_space(batch["image"])
        b = x.shape[0]
        k_z, k_int = jax.random.split(rng)
        z = jax.random.normal(k_z, (b, self.z_dim))
        params = state.params

        def embed(text_params):
            return self.text.apply({"params": text_params}, batch["tokens"])

        t = jax.lax.stop_gradient(embed(params["text"]))
        # One generator forward serves D's update and (through its VJP) G's.
        fake, g_vjp = jax.vjp(lambda g: self.G.apply({"params": g}, z, t), params["G"])

        def d_loss_fn(d_params, text_params):
            t_d = t if self.frozen_text else embed(text_params)
            t_wrong = jnp.roll(t_d, 1, axis=0)  # each image with its neighbour's caption
            images = jnp.concatenate([x, x, jax.lax.stop_gradient(fake)])
            texts = jnp.concatenate([t_d, t_wrong, t_d])
            real, wrong, fk = jnp.split(self._score(d_params, images, texts), 3)
            loss = discriminator_loss(real, wrong, fk, matching_aware=self.matching_aware)
            return loss, (real, wrong, fk)

        (d_loss, (real, wrong, fk)), (d_grads, text_grads) = jax.value_and_grad(
            d_loss_fn, argnums=(0, 1), has_aux=True
        )(params["D"], params["text"])
        new_params, new_opt = dict(params), dict(state.opt_state)
        new_params["D"], new_opt["D"] = self._apply(params["D"], d_grads, state.opt_state["D"])
        if not self.frozen_text:
            new_params["text"], new_opt["text"] = self._apply(
                params["text"], text_grads, state.opt_state["text"]
            )

        # G against the updated D.
        def adversarial(images, texts):
            return generator_loss(self._score(new_params["D"], images, texts))

        g_loss, d_fake_images = jax.value_and_grad(adversarial)(fake, t)
        (g_grads,) = g_vjp(d_fake_images)
        if self.use_int:
            t_int = interpolate(t, jnp.roll(t, 1, axis=0), float(gc.int_beta))
            z_int = jax.random.normal(k_int, z.shape)

            def int_loss_fn(g_params):
                fake_int = self.G.apply({"params": g_params}, z_int, t_int)
                return float(gc.int_weight) * adversarial(fake_int, t_int)

            int_loss, int_grads = jax.value_and_grad(int_loss_fn)(params["G"])
            g_loss = g_loss + int_loss
            g_grads = jax.tree.map(jnp.add, g_grads, int_grads)

        def s_loss_fn(s_params):
            z_hat = self.S.apply({"params": s_params}, jax.lax.stop_gradient(fake))
            return jnp.mean(jnp.sum(jnp.square(z - z_hat), axis=-1))

        s_loss, s_grads = jax.value_and_grad(s_loss_fn)(params["S"])
        new_params["G"], new_opt["G"] = self._apply(params["G"], g_grads, state.opt_state["G"])
        new_params["S"], new_opt["S"] = self._apply(params["S"], s_grads, state.opt_state["S"])

        decay = state_lib.ema_decay_at(state.step, float(tc.ema_decay))
        ema = {"G": state_lib.ema_update(state.ema_params["G"], new_params["G"], decay)}
        metrics = {
            "loss": d_loss + g_loss,
            "d_loss": d_loss,
            "g_loss": g_loss,
            "s_loss": s_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real)),
            "d_wrong": jnp.mean(jax.nn.sigmoid(wrong)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fk)),
            "g_grad_norm": optax.tree.norm(g_grads),
            "d_grad_norm": optax.tree.norm(d_grads),
            "learning_rate": self.learning_rate(state.step),
        }
        new_state = state.replace(
            step=state.step + 1, params=new_params, opt_state=new_opt, ema_params=ema
        )
        return new_state, metrics

    def _score(self, d_params, images, texts):
        """D's logits for (image, text embedding) pairs."""
        return self.D.apply({"params": d_params}, images, texts)

    def _apply(self, params, grads, opt_state):
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # -- generation -----------------------------------------------------------------------
    def embed_prompts(self, state, prompts: Sequence[str]) -> jax.Array:
        """phi(t) ``[N, embed_dim]`` of the prompts."""
        return self._embed(state.params["text"], jnp.asarray(self.tokenize(prompts)))

    @functools.partial(jax.jit, static_argnums=0)
    def _embed(self, text_params, tokens):
        return self.text.apply({"params": text_params}, tokens)

    @functools.partial(jax.jit, static_argnums=0)
    def _generate(self, g_params, z, t):
        return to_uint8(self.G.apply({"params": g_params}, z, t))

    @functools.partial(jax.jit, static_argnums=0)
    def _invert(self, s_params, images):
        return self.S.apply({"params": s_params}, to_model_space(images))

    def _g_params(self, state):
        return (state.ema_params or state.params)["G"]

    def noise(self, n: int, rng) -> jax.Array:
        """z ~ N(0, I) ``[n, z_dim]``."""
        return jax.random.normal(rng, (n, self.z_dim))

    def generate(self, state, prompts, rng, *, reference=None, z=None):
        """One image per prompt: ``G_ema(z, phi(prompt))``.

        Args:
          state: a TrainState.
          prompts: N strings.
          rng: PRNG key for z.
          reference: optional uint8 ``[N, S, S, 3]`` images whose style (the z the inverse
            network reads from them: background, size, position) replaces random z.
          z: optional explicit noise ``[N, z_dim]`` (ignored with ``reference``).

        Returns:
          uint8 ``[N, S, S, 3]``.
        """
        t = self.embed_prompts(state, prompts)
        n = t.shape[0]
        if reference is not None:
            z = self._invert(state.params["S"], self._uint8_images(reference, n, "reference"))
        elif z is None:
            z = self.noise(n, rng)
        z = jnp.asarray(z, jnp.float32)
        if z.shape != (n, self.z_dim):
            raise ValueError(f"z must be [{n}, {self.z_dim}], got {list(z.shape)}.")
        return np.asarray(self._generate(self._g_params(state), z, t))

    def match_logits(self, state, images, prompts: Sequence[str]) -> np.ndarray:
        """The matching-aware discriminator's judgement of (image, prompt) pairs: D's logit that
        each image is real and shows its prompt, ``[N]`` float32 (higher: more so).

        Args:
          state: a TrainState.
          images: uint8 ``[N, S, S, 3]``.
          prompts: N strings, one per image.
        """
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one each.")
        images = self._uint8_images(images, len(prompts), "images")
        texts = self.embed_prompts(state, prompts)
        return np.asarray(self._match_logits(state.params, to_model_space(images), texts))

    @functools.partial(jax.jit, static_argnums=0)
    def _match_logits(self, params, images, texts):
        return self._score(params["D"], images, texts)

    def _uint8_images(self, images, n: int, name: str) -> np.ndarray:
        """``images`` as uint8 ``[n, S, S, 3]`` (one per prompt), or a ValueError naming them."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape != (n, self.size, self.size, 3):
            raise ValueError(
                f"{name} must be uint8 [{n}, {self.size}, {self.size}, 3] (one per prompt), got "
                f"{images.dtype} {list(images.shape)}."
            )
        return images

    def interpolate_prompts(self, state, prompt_a: str, prompt_b: str, num: int = 8, seed=0):
        """Images along ``phi(a) -> phi(b)`` with one fixed z (the paper's figure 6)."""
        t = self.embed_prompts(state, [prompt_a, prompt_b])
        alphas = jnp.linspace(0.0, 1.0, num)[:, None]
        ts = interpolate(t[1][None], t[0][None], alphas)
        z = jnp.repeat(self.noise(1, jax.random.key(seed)), num, axis=0)
        return np.asarray(self._generate(self._g_params(state), z, ts))

    def interpolate_noise(self, state, prompt: str, num: int = 8, seed=0):
        """Images along ``z1 -> z2`` with the text fixed (style varies, content should not)."""
        t = jnp.repeat(self.embed_prompts(state, [prompt]), num, axis=0)
        z1, z2 = self.noise(2, jax.random.key(seed))
        alphas = jnp.linspace(0.0, 1.0, num)[:, None]
        z = interpolate(z2[None], z1[None], alphas)
        return np.asarray(self._generate(self._g_params(state), z, t))

    # -- evaluation -----------------------------------------------------------------------
    def diversity(self, state, rng, split: str = "val") -> dict[str, float]:
        """Mean pairwise RMS distance (pixels in [0, 1]) of samples of one prompt, averaged
        over prompts of ``split``: near 0 means mode collapse."""
        ec = self.config.eval
        prompts = self.judge.prompts(split, int(ec.diversity_prompts), seed=3)[0]
        per = int(ec.diversity_samples)
        dists = []
        for i, p in enumerate(prompts):
            imgs = self.generate(state, [p] * per, jax.random.fold_in(rng, i))
            x = imgs.reshape(per, -1).astype(np.float64) / 255.0
            d = np.sqrt(np.mean((x[:, None] - x[None]) ** 2, axis=-1))
            dists.append(d[np.triu_indices(per, 1)].mean())
        return {"diversity": float(np.mean(dists))}

    def evaluators(self, plan):
        out = [functools.partial(self.diversity, split=plan.splits[0])]
        if self.judge.has_truth:
            out = [self.sampled_evaluator(plan), *out]
        return out
