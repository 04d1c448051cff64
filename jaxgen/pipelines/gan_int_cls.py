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

The same pipeline trains the family's modern default (``experiments/gan.py``), which follows the
caption (AttnGAN, DF-GAN, LAFITE/GALIP): ``model.generator="attention"`` (``AttnGenerator``:
sentence FiLM in every block, cross-attention to the caption's token states),
``model.d_clip`` (the discriminator also reads the frozen image tower of the same CLIP, whose
parameters are stored in ``params["clip"]`` and never updated), ``gan.loss="hinge"``,
``gan.gp_weight`` (DF-GAN's matching-aware gradient penalty on real image and right text),
``gan.hard_negatives`` (the mismatched caption of each real image is also drawn from the batch's
captions closest to its own in content, so captions that differ in one attribute are fakes
too) and ``gan.clip_weight`` (a contrastive term between the generated images and their
captions in that CLIP's space).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data.pixels import to_model_space, to_uint8
from jaxgen.models.clip import ImageEncoder, TextTower, l2_normalize
from jaxgen.models.gan import AttnGenerator, Discriminator, Generator, InverseNetwork
from jaxgen.pipelines import pretrained
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline

VARIANTS = ("gan", "gan_cls", "gan_int", "gan_int_cls")
TEXT_SOURCES = ("clip", "joint")
GENERATORS = ("dcgan", "attention")
LOSSES = ("nonsaturating", "hinge")


def discriminator_loss(real, wrong, fake, *, matching_aware: bool, kind: str = "nonsaturating"):
    """The discriminator's loss from its logits.

    ``kind="nonsaturating"`` (the paper's): ``l_real(s) = -log sigmoid(s)``, ``l_fake(s) =
    -log(1 - sigmoid(s))``. ``kind="hinge"`` (DF-GAN's): ``l_real(s) = max(0, 1 - s)``,
    ``l_fake(s) = max(0, 1 + s)``.

    Args:
      real: logits of (real image, right text) ``[B]``.
      wrong: logits of (real image, mismatched text) ``[M]`` (used when ``matching_aware``; M
        may differ from B when several kinds of mismatch are scored).
      fake: logits of (generated image, right text) ``[B]``.
      matching_aware: GAN-CLS (Reed et al. Algorithm 1): the two fake kinds share the fake
        term, ``L = mean l_real(real) + (mean l_fake(wrong) + mean l_fake(fake)) / 2``;
        otherwise ``L = mean l_real(real) + mean l_fake(fake)``.
      kind: "nonsaturating" or "hinge".

    Returns:
      The scalar loss.
    """
    if kind == "hinge":
        l_real, l_fake = (lambda s: jax.nn.relu(1.0 - s)), (lambda s: jax.nn.relu(1.0 + s))
    else:
        l_real, l_fake = (lambda s: jax.nn.softplus(-s)), jax.nn.softplus
    if matching_aware:
        return jnp.mean(l_real(real)) + 0.5 * (jnp.mean(l_fake(wrong)) + jnp.mean(l_fake(fake)))
    return jnp.mean(l_real(real)) + jnp.mean(l_fake(fake))


def generator_loss(fake, kind: str = "nonsaturating"):
    """Batch mean of ``-log sigmoid(D(G(z), t))`` (non-saturating) or ``-D(G(z), t)``
    (hinge)."""
    if kind == "hinge":
        return -jnp.mean(fake)
    return jnp.mean(jax.nn.softplus(-fake))


def matching_gradient_penalty(score, images, texts, *, weight: float, power: float):
    """DF-GAN's matching-aware gradient penalty (MA-GP), on real images with their right texts:
    ``weight * mean_i (||[d D / d x_i, d D / d t_i]||_2) ** power``.

    Args:
      score: ``(images [B, ...], texts [B, E]) -> logits [B]``, each logit a function of its
        own pair alone (so the gradient of the sum is the per-pair gradient).
      images: real images ``[B, S, S, 3]``.
      texts: their text embeddings ``[B, E]``.
      weight, power: DF-GAN uses 2 and 6.
    """
    gx, gt = jax.grad(lambda x, t: jnp.sum(score(x, t)), argnums=(0, 1))(images, texts)
    b = images.shape[0]
    sq = jnp.sum(jnp.square(gx.reshape(b, -1)), -1) + jnp.sum(jnp.square(gt.reshape(b, -1)), -1)
    return weight * jnp.mean(jnp.sqrt(sq) ** power)


def clip_contrastive_loss(image_emb, text_emb, logit_scale):
    """The generator's CLIP term (LAFITE's contrastive loss, AttnGAN's DAMSM in CLIP's space):
    cross-entropy of each generated image's caption among the batch's captions, with logits
    ``exp(logit_scale) * <image_emb_i, text_emb_j>`` over unit vectors.

    Args:
      image_emb: unit ``[B, D]`` embeddings of the generated images.
      text_emb: unit ``[B, D]`` embeddings of their captions (row i is image i's).
      logit_scale: the CLIP's learned ``log(1 / temperature)``.
    """
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def nearest_mismatch(labels: jax.Array) -> jax.Array:
    """For each row of ``labels`` ``[B, K]`` (a caption's content as class labels), the index of
    the other row that differs from it in the fewest fields but at least one (ties: the lowest
    index); a row with no different row gets its right neighbour. Used to pick mismatched
    captions that differ from the right one in one attribute where the batch has one."""
    diff = jnp.sum(labels[:, None, :] != labels[None, :, :], axis=-1)
    big = labels.shape[1] + 1
    diff = jnp.where(diff == 0, big, diff)
    best = jnp.argmin(diff, axis=1)
    fallback = (jnp.arange(labels.shape[0]) + 1) % labels.shape[0]
    return jnp.where(jnp.min(diff, axis=1) < big, best, fallback)


def interpolate(t1: jax.Array, t2: jax.Array, beta) -> jax.Array:
    """``beta * t1 + (1 - beta) * t2`` (GAN-INT's interpolated text embeddings)."""
    return beta * t1 + (1.0 - beta) * t2


class GANINTCLSPipeline(Pipeline):
    """State: ``params`` and ``opt_state`` for ``G``, ``D``, ``S`` (and ``text`` when trained
    jointly; a frozen CLIP tower has parameters but no optimizer; so does the frozen CLIP image
    tower in ``params["clip"]`` when the discriminator or the CLIP term reads it), an EMA of
    ``G``."""

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
        self.generator_kind = mc.get("generator", "dcgan")
        if self.generator_kind not in GENERATORS:
            raise ValueError(
                f"Unknown model.generator {self.generator_kind!r}; valid: {', '.join(GENERATORS)}."
            )
        self.loss_kind = gc.get("loss", "nonsaturating")
        if self.loss_kind not in LOSSES:
            raise ValueError(f"Unknown gan.loss {self.loss_kind!r}; valid: {', '.join(LOSSES)}.")
        self.matching_aware = "cls" in gc.variant
        self.use_int = "int" in gc.variant
        self.frozen_text = mc.text_source == "clip"
        self.d_clip = bool(mc.get("d_clip", False))
        self.clip_weight = float(gc.get("clip_weight", 0.0))
        self.gp_weight = float(gc.get("gp_weight", 0.0))
        self.hard_negatives = bool(gc.get("hard_negatives", False))
        if self.clip_weight < 0 or self.gp_weight < 0:
            raise ValueError("gan.clip_weight and gan.gp_weight must be >= 0.")
        self.uses_clip_image = self.d_clip or self.clip_weight > 0
        if self.uses_clip_image and not self.frozen_text:
            raise ValueError(
                "model.d_clip and gan.clip_weight read the image tower of the CLIP at "
                "model.text_init; they need model.text_source='clip'."
            )
        if self.hard_negatives and not self.matching_aware:
            raise ValueError("gan.hard_negatives needs a matching-aware variant (gan_cls, ...).")
        dtype = state_lib.compute_dtype(mc)
        self.text = TextTower(
            int(mc.embed_dim), {**mc.text.to_dict(), "max_len": self.max_text_len}, dtype
        )
        if self.generator_kind == "attention":
            self.G = AttnGenerator(
                self.size,
                int(mc.g_ch),
                int(mc.text_dim),
                tuple(int(s) for s in mc.attention_sizes),
                int(mc.get("attention_heads", 4)),
                dtype,
            )
        else:
            self.G = Generator(self.size, int(mc.g_ch), int(mc.text_dim), dtype)
        self.D = Discriminator(self.size, int(mc.d_ch), int(mc.text_dim), dtype)
        self.S = InverseNetwork(self.size, int(mc.d_ch), self.z_dim, dtype)
        if self.uses_clip_image:
            ci = mc.clip_image
            self.clip_image = ImageEncoder(
                widths=tuple(ci.widths),
                out_dim=int(ci.dim),
                patch_size=int(ci.patch_size),
                colour=ci.colour,
                dtype=dtype,
            )
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)

    @property
    def trained_networks(self) -> tuple[str, ...]:
        return ("G", "D", "S") if self.frozen_text else ("G", "D", "S", "text")

    # -- training -------------------------------------------------------------------------
    def init(self, rng, example_batch):
        x = to_model_space(jnp.asarray(example_batch["image"]))
        tokens = jnp.asarray(example_batch["tokens"])
        k_text, k_g, k_d, k_s, k_c = jax.random.split(rng, 5)
        text = self.text.init(k_text, tokens)["params"]
        cond = self._condition(text, tokens)
        z = jnp.zeros((x.shape[0], self.z_dim))
        params = {
            "G": self.G.init(k_g, z, *self._g_inputs(cond))["params"],
            "S": self.S.init(k_s, x)["params"],
            "text": text,
        }
        feats = None
        if self.uses_clip_image:
            image = self.clip_image.init(k_c, x)["params"]
            dim = int(self.config.model.clip_image.dim)
            params["clip"] = {
                "image": image,
                # Placeholders until warm_start loads the CLIP's (random, not zero: a zero
                # projection has no direction to normalise).
                "image_proj": {
                    "kernel": jax.random.normal(k_c, (dim, int(self.config.model.embed_dim)))
                    * dim**-0.5
                },
                "logit_scale": jnp.zeros(()),
            }
            feats = self._clip_features(params["clip"], x)[0] if self.d_clip else None
        params["D"] = self.D.init(k_d, x, cond["emb"], feats)["params"]
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={k: self.tx.init(params[k]) for k in self.trained_networks},
            ema_params={"G": params["G"]},
        )

    def warm_start(self, state):
        """Loads the frozen CLIP text tower (and, for ``model.d_clip`` or ``gan.clip_weight``,
        its image tower) from the CLIP run at ``model.text_init``."""
        if not self.frozen_text:
            return state
        path = self.config.model.text_init
        causal = bool(self.config.model.text.get("causal", False))
        run = self.load_run(path)
        clip = pretrained.clip_params(run, "a text tower", causal)
        clip_config = run.config
        if not pretrained.shapes_match(state.params["text"], clip["text"]):
            raise ValueError(
                f"The CLIP text tower in {path} (model.text={clip_config.model.text.to_dict()}, "
                f"embed_dim={clip_config.model.embed_dim}, "
                f"data.max_text_len={clip_config.data.max_text_len}) does not fit this GAN's "
                "model.text, model.embed_dim and data.max_text_len; set them to the CLIP run's."
            )
        params = {**state.params, "text": clip["text"]}
        if self.uses_clip_image:
            image = {k: clip[k] for k in ("image", "image_proj", "logit_scale")}
            cm = clip_config.model
            if (
                not pretrained.shapes_match(state.params["clip"], image)
                or cm.get("image_colour", "joint") != self.config.model.clip_image.colour
            ):
                raise ValueError(
                    f"The CLIP image tower in {path} (image_widths={tuple(cm.image_widths)}, "
                    f"image_dim={cm.image_dim}, image_patch_size={cm.image_patch_size}, "
                    f"image_colour={cm.get('image_colour', 'joint')!r}) does not fit this GAN's "
                    "model.clip_image (widths, dim, patch_size, colour); set them to the CLIP "
                    "run's."
                )
            params["clip"] = image
        return state.replace(params=params)

    def train_step(self, state, batch, rng):
        gc, tc = self.config.gan, self.config.train
        x = to_model_space(batch["image"])
        b = x.shape[0]
        k_z, k_int = jax.random.split(rng)
        z = jax.random.normal(k_z, (b, self.z_dim))
        params = state.params
        clip = jax.lax.stop_gradient(params["clip"]) if self.uses_clip_image else None
        cond = jax.lax.stop_gradient(self._condition(params["text"], batch["tokens"]))
        t = cond["emb"]
        # One generator forward serves D's update and (through its VJP) G's.
        fake, g_vjp = jax.vjp(lambda g: self._g(g, z, cond), params["G"])
        mismatches = [jnp.roll(jnp.arange(b), 1)]  # each image with its neighbour's caption
        if self.hard_negatives:
            if "parse" not in batch:
                raise ValueError(
                    "gan.hard_negatives needs each caption's content as labels in the batch: "
                    "set data.parse_labels=True (shapes only)."
                )
            mismatches.append(nearest_mismatch(batch["parse"]))
        real_feats = self._d_features(clip, x)
        fake_feats = self._d_features(clip, jax.lax.stop_gradient(fake))

        def d_loss_fn(d_params, text_params):
            t_d = t if self.frozen_text else self._condition(text_params, batch["tokens"])["emb"]
            n = 1 + len(mismatches)
            images = jnp.concatenate([x] * n + [jax.lax.stop_gradient(fake)])
            texts = jnp.concatenate([t_d, *(t_d[i] for i in mismatches), t_d])
            feats = None if real_feats is None else jnp.concatenate([real_feats] * n + [fake_feats])
            logits = self._score(d_params, images, texts, feats)
            real, wrong, fk = logits[:b], logits[b : n * b], logits[n * b :]
            loss = discriminator_loss(
                real, wrong, fk, matching_aware=self.matching_aware, kind=self.loss_kind
            )
            gp = jnp.zeros(())
            if self.gp_weight > 0:
                gp = matching_gradient_penalty(
                    lambda xi, ti: self._score(d_params, xi, ti, self._d_features(clip, xi)),
                    x,
                    t_d,
                    weight=self.gp_weight,
                    power=float(gc.get("gp_power", 6.0)),
                )
            return loss + gp, (real, wrong, fk, gp)

        (d_loss, (real, wrong, fk, gp)), (d_grads, text_grads) = jax.value_and_grad(
            d_loss_fn, argnums=(0, 1), has_aux=True
        )(params["D"], params["text"])
        new_params, new_opt = dict(params), dict(state.opt_state)
        new_params["D"], new_opt["D"] = self._apply(params["D"], d_grads, state.opt_state["D"])
        if not self.frozen_text:
            new_params["text"], new_opt["text"] = self._apply(
                params["text"], text_grads, state.opt_state["text"]
            )

        # G against the updated D (and the frozen CLIP).
        def adversarial(images, texts, clip_out=None):
            # clip_out: the images' (features, embedding) when the caller has them already.
            feats = None
            if self.d_clip:
                feats = (clip_out or self._clip_features(clip, images))[0]
            return generator_loss(
                self._score(new_params["D"], images, texts, feats), self.loss_kind
            )

        def g_objective(images):
            # One pass of the frozen image tower serves D's features and the CLIP term.
            clip_out = self._clip_features(clip, images) if self.uses_clip_image else None
            adv = adversarial(images, t, clip_out)
            clip_loss = jnp.zeros(())
            if self.clip_weight > 0:
                clip_loss = clip_contrastive_loss(clip_out[1], t, clip["logit_scale"])
            return adv + self.clip_weight * clip_loss, clip_loss

        (g_loss, clip_loss), d_fake_images = jax.value_and_grad(g_objective, has_aux=True)(fake)
        (g_grads,) = g_vjp(d_fake_images)
        if self.use_int:
            beta = float(gc.int_beta)
            cond_int = jax.tree.map(lambda c: interpolate(c, jnp.roll(c, 1, axis=0), beta), cond)
            z_int = jax.random.normal(k_int, z.shape)

            def int_loss_fn(g_params):
                fake_int = self._g(g_params, z_int, cond_int)
                return float(gc.int_weight) * adversarial(fake_int, cond_int["emb"])

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
        prob = jax.nn.sigmoid
        metrics = {
            "loss": d_loss + g_loss,
            "d_loss": d_loss,
            "g_loss": g_loss,
            "s_loss": s_loss,
            "d_real": jnp.mean(prob(real)),
            "d_wrong": jnp.mean(prob(wrong)),
            "d_fake": jnp.mean(prob(fk)),
            "g_grad_norm": optax.tree.norm(g_grads),
            "d_grad_norm": optax.tree.norm(d_grads),
            "learning_rate": self.learning_rate(state.step),
        }
        if self.clip_weight > 0:
            metrics["clip_loss"] = clip_loss
        if self.gp_weight > 0:
            metrics["gp"] = gp
        new_state = state.replace(
            step=state.step + 1, params=new_params, opt_state=new_opt, ema_params=ema
        )
        return new_state, metrics

    def _condition(self, text_params, tokens) -> dict:
        """The caption as the networks read it: ``emb`` (phi(t), ``[B, E]``), ``words`` (the
        text encoder's token states ``[B, L, W]``) and ``mask`` (float ``[B, L]``, 1 on
        tokens)."""
        emb, words, mask = self.text.apply({"params": text_params}, tokens, return_sequence=True)
        return {"emb": emb, "words": words, "mask": mask.astype(jnp.float32)}

    def _g_inputs(self, cond) -> tuple:
        if self.generator_kind == "attention":
            return cond["emb"], cond["words"], cond["mask"]
        return (cond["emb"],)

    def _g(self, g_params, z, cond):
        return self.G.apply({"params": g_params}, z, *self._g_inputs(cond))

    def _clip_features(self, clip, images):
        """The frozen CLIP image tower on images in [-1, 1]: ``(features [B, F], unit
        embedding [B, E])``."""
        feats = self.clip_image.apply({"params": clip["image"]}, images)
        return feats, l2_normalize(feats @ clip["image_proj"]["kernel"])

    def _d_features(self, clip, images):
        """What the discriminator reads of the frozen CLIP (None without ``model.d_clip``)."""
        return self._clip_features(clip, images)[0] if self.d_clip else None

    def _score(self, d_params, images, texts, feats=None):
        """D's logits for (image, text embedding) pairs (``feats``: the images' CLIP
        features with ``model.d_clip``)."""
        return self.D.apply({"params": d_params}, images, texts, feats)

    def _apply(self, params, grads, opt_state):
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # -- generation -----------------------------------------------------------------------
    def embed_prompts(self, state, prompts: Sequence[str]) -> jax.Array:
        """phi(t) ``[N, embed_dim]`` of the prompts."""
        return self.condition_prompts(state, prompts)["emb"]

    def condition_prompts(self, state, prompts: Sequence[str]) -> dict:
        """The prompts as the generator reads them (``emb``, ``words``, ``mask``)."""
        return self._embed(state.params["text"], jnp.asarray(self.tokenize(prompts)))

    @functools.partial(jax.jit, static_argnums=0)
    def _embed(self, text_params, tokens):
        return self._condition(text_params, tokens)

    @functools.partial(jax.jit, static_argnums=0)
    def _generate(self, g_params, z, cond):
        return to_uint8(self._g(g_params, z, cond))

    @functools.partial(jax.jit, static_argnums=0)
    def _invert(self, s_params, images):
        return self.S.apply({"params": s_params}, to_model_space(images))

    def _g_params(self, state):
        return (state.ema_params or state.params)["G"]

    def noise(self, n: int, rng) -> jax.Array:
        """z ~ N(0, I) ``[n, z_dim]``."""
        return jax.random.normal(rng, (n, self.z_dim))

    def generate(self, state, prompts, rng, *, reference=None, z=None):
        """One image per prompt: ``G_ema(z, prompt)``.

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
        cond = self.condition_prompts(state, prompts)
        n = cond["emb"].shape[0]
        if reference is not None:
            z = self._invert(state.params["S"], self._uint8_images(reference, n, "reference"))
        elif z is None:
            z = self.noise(n, rng)
        z = jnp.asarray(z, jnp.float32)
        if z.shape != (n, self.z_dim):
            raise ValueError(f"z must be [{n}, {self.z_dim}], got {list(z.shape)}.")
        return np.asarray(self._generate(self._g_params(state), z, cond))

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
        clip = params["clip"] if self.uses_clip_image else None
        return self._score(params["D"], images, texts, self._d_features(clip, images))

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
        """Images along ``a -> b`` (the sentence embedding and, for the attention generator,
        the token states) with one fixed z (the paper's figure 6)."""
        cond = self.condition_prompts(state, [prompt_a, prompt_b])
        alphas = jnp.linspace(0.0, 1.0, num)
        conds = jax.tree.map(
            lambda c: interpolate(
                c[1][None], c[0][None], alphas.reshape((num,) + (1,) * (c.ndim - 1))
            ),
            cond,
        )
        z = jnp.repeat(self.noise(1, jax.random.key(seed)), num, axis=0)
        return np.asarray(self._generate(self._g_params(state), z, conds))

    def interpolate_noise(self, state, prompt: str, num: int = 8, seed=0):
        """Images along ``z1 -> z2`` with the text fixed (style varies, content should not)."""
        cond = jax.tree.map(
            lambda c: jnp.repeat(c, num, axis=0), self.condition_prompts(state, [prompt])
        )
        z1, z2 = self.noise(2, jax.random.key(seed))
        alphas = jnp.linspace(0.0, 1.0, num)[:, None]
        z = interpolate(z2[None], z1[None], alphas)
        return np.asarray(self._generate(self._g_params(state), z, cond))

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
