"""GAN-INT-CLS: text-conditional DCGAN with a matching-aware discriminator (Reed et al. 2016).

Variants (``config.gan.variant``):
  gan          D sees (real image, its text) as real and (fake image, its text) as fake.
  gan_cls      matching-aware D: (real image, mismatched text) is a third, fake, input.
  gan_int      G also learns from interpolated embeddings ``beta * t1 + (1 - beta) * t2``.
  gan_int_cls  both (the paper's best).

The text embedding ``phi(t)`` comes from a ``TextTower``: either a trained CLIP's, loaded from
``model.text_init`` and frozen (``model.text_source="clip"``), or one trained jointly with the
discriminator's loss (``"joint"``; the generator sees it through a stop-gradient). An inverse
network ``S(x) -> z`` is trained alongside with ``||z - S(G(z, t))||^2`` for style transfer
(section 4.4): ``generate(..., reference=images)`` keeps a reference's style and changes its
content to the prompt's.

With ``gan.clip_weight > 0`` the generator also learns from the frozen CLIP whose text tower it
conditions on: each generated image's CLIP image embedding is scored against the batch's captions
(``clip_guidance_loss``), as StyleGAN-T and GALIP add CLIP's judgement to the discriminator's.
The CLIP score and R-precision of such a run are then measured by the network it was trained
against; an independent CLIP run (``eval.clip_workdir``) keeps them honest. With
``model.d_features="clip"`` the discriminator also reads that CLIP image tower's last feature map
of every image it scores (as Projected GANs use a pretrained network's features), and the
generator's gradient flows back through the frozen tower.

With ``gan.aux_weight > 0`` (``shapes`` only) the discriminator also classifies each real
image's content, the labels ``shapes.parse_labels`` gives its caption (each object's colour,
shape and size, and the axis of their relation), and the generator is trained to make that
classifier read its samples as their captions say: the auxiliary classifier of AC-GAN (Odena et
al. 2017) and TAC-GAN (Dash et al. 2017), which tells the generator which attribute is wrong
rather than only that the pair does not match.

Three more conditioning options (off by default; README measures them): BigGAN's conditional
normalisation in G (``model.g_conditional``), the projection discriminator's text-image inner
product in D (``model.d_projection``), and a colour-blind silhouette stream in D
(``model.d_silhouette``).

With ``gan.recon_weight > 0`` S doubles as the Gaussian encoder of a conditional VAE
(``recon_loss``: CVAE-GAN, BicycleGAN's cVAE-GAN): G also learns to redraw each real image from
its code and caption. ``model.g_coords`` gives G's convs coordinate channels. Every evaluation
also judges real images redrawn from their own codes and captions (``reconstruction_metrics``),
which shows what G can draw when z is no guess.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data.shapes import PARSE_CLASSES
from jaxgen.evaluation import judges
from jaxgen.models.clip import CLIP, TextTower
from jaxgen.models.gan import D_NORMS, G_NORMS, Discriminator, Generator, InverseNetwork
from jaxgen.pipelines.base import Pipeline
from jaxgen.pipelines.clip import MAX_LOGIT_SCALE, parse_loss
from jaxgen.pipelines.ddpm import to_model_space, to_uint8
from jaxgen.training import state as state_lib

VARIANTS = ("gan", "gan_cls", "gan_int", "gan_int_cls")
D_FEATURES = ("", "clip")
LOSSES = ("non_saturating", "hinge")
TEXT_SOURCES = ("clip", "joint")


def discriminator_loss(real, wrong, fake, *, matching_aware: bool, loss: str = "non_saturating"):
    """The discriminator's loss from its logits.

    Args:
      real: logits of (real image, right text) ``[B]``.
      wrong: logits of (real image, mismatched text) ``[B]`` (used when ``matching_aware``).
      fake: logits of (generated image, right text) ``[B]``.
      matching_aware: GAN-CLS (Reed et al. Algorithm 1): the two fake kinds share the fake
        term, ``L = l_real(real) + (l_fake(wrong) + l_fake(fake)) / 2``; otherwise
        ``L = l_real(real) + l_fake(fake)``.
      loss: "non_saturating" (``l_real(s) = -log sigmoid(s)``, ``l_fake(s) = -log(1 -
        sigmoid(s))``) or "hinge" (``relu(1 - s)``, ``relu(1 + s)``).

    Returns:
      The scalar loss (mean over the batch).
    """
    if loss == "non_saturating":
        l_real, l_fake = jax.nn.softplus(-real), jax.nn.softplus(fake)
        l_wrong = jax.nn.softplus(wrong)
    elif loss == "hinge":
        l_real, l_fake = jax.nn.relu(1.0 - real), jax.nn.relu(1.0 + fake)
        l_wrong = jax.nn.relu(1.0 + wrong)
    else:
        raise ValueError(f"Unknown gan.loss {loss!r}; valid: {', '.join(LOSSES)}.")
    if matching_aware:
        return jnp.mean(l_real + 0.5 * (l_wrong + l_fake))
    return jnp.mean(l_real + l_fake)


def generator_loss(fake, loss: str = "non_saturating"):
    """``-log sigmoid(D(G(z), t))`` (non-saturating) or ``-D(G(z), t)`` (hinge), batch mean."""
    if loss == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake))
    if loss == "hinge":
        return -jnp.mean(fake)
    raise ValueError(f"Unknown gan.loss {loss!r}; valid: {', '.join(LOSSES)}.")


def r1_penalty(score_fn, images: jax.Array) -> jax.Array:
    """R1 (Mescheder et al. 2018): ``0.5 * E ||d score(x) / d x||^2`` over real images ``x``.

    Args:
      score_fn: images ``[B, H, W, C]`` -> logits ``[B]`` (the discriminator with its text).
      images: the real images.
    """
    grads = jax.grad(lambda im: jnp.sum(score_fn(im)))(images)
    return 0.5 * jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


def clip_guidance_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale) -> jax.Array:
    """How badly a CLIP matches generated images to their captions: the mean over images of
    ``-log softmax_j(s <image_i, text_j>)[i]``, the image->text half of CLIP's own loss, over the
    batch's captions ``j``, with the CLIP's learned scale ``s = exp(logit_scale)`` (at most 100).

    Args:
      image_emb: unit CLIP embeddings of the generated images ``[B, D]``.
      text_emb: unit CLIP embeddings of their captions ``[B, D]`` (row i is image i's).
      logit_scale: the CLIP's ``log(1 / temperature)``.

    Captions of equal content in one batch share the probability, so the loss cannot reach 0;
    the gradient still points each image away from the other captions' content.
    """
    scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
    logits = scale * image_emb @ text_emb.T
    labels = jnp.arange(image_emb.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def kl_to_standard_normal(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(log_var)) || N(0, I))``, summed over the last axis, batch mean:
    ``0.5 * sum(mean^2 + exp(log_var) - 1 - log_var)``."""
    terms = jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var
    return 0.5 * jnp.mean(jnp.sum(terms, axis=-1))


def interpolate(t1: jax.Array, t2: jax.Array, beta) -> jax.Array:
    """``beta * t1 + (1 - beta) * t2`` (GAN-INT's interpolated text embeddings)."""
    return beta * t1 + (1.0 - beta) * t2


class GANINTCLSPipeline(Pipeline):
    """State: ``params`` and ``opt_state`` for ``G``, ``D``, ``S`` (and ``text`` when trained
    jointly; a frozen CLIP tower has parameters but no optimizer), an EMA of ``G``."""

    def __init__(self, config):
        super().__init__(config)
        mc, gc = config.model, config.gan
        self.max_text_len = int(config.data.max_text_len)
        self.size = int(config.data.image_size)
        self.z_dim = int(mc.z_dim)
        if gc.variant not in VARIANTS:
            raise ValueError(f"Unknown gan.variant {gc.variant!r}; valid: {', '.join(VARIANTS)}.")
        if gc.loss not in LOSSES:
            raise ValueError(f"Unknown gan.loss {gc.loss!r}; valid: {', '.join(LOSSES)}.")
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
        self.hard_negatives = bool(config.data.get("hard_negatives", False))
        if self.hard_negatives and not self.matching_aware:
            raise ValueError(
                "data.hard_negatives gives the matching-aware discriminator its mismatched "
                f"captions; gan.variant {gc.variant!r} has none (use gan_cls or gan_int_cls)."
            )
        self.use_int = "int" in gc.variant
        self.frozen_text = mc.text_source == "clip"
        self.r1_weight = float(gc.get("r1_weight", 0.0))
        if self.r1_weight < 0:
            raise ValueError(f"gan.r1_weight must be >= 0, got {self.r1_weight}.")
        self.clip_weight = float(gc.get("clip_weight", 0.0))
        if self.clip_weight < 0:
            raise ValueError(f"gan.clip_weight must be >= 0, got {self.clip_weight}.")
        if self.clip_weight > 0 and not self.frozen_text:
            raise ValueError(
                "gan.clip_weight > 0 scores the samples with the CLIP run at model.text_init, "
                "against the text embedding that CLIP gives: it needs "
                "model.text_source='clip'."
            )
        self.d_features = str(mc.get("d_features", ""))
        if self.d_features not in D_FEATURES:
            raise ValueError(
                f"Unknown model.d_features {self.d_features!r}; valid: "
                f"{', '.join(map(repr, D_FEATURES))}."
            )
        if self.d_features and not self.frozen_text:
            raise ValueError(
                "model.d_features='clip' feeds D the image tower of the CLIP run at "
                "model.text_init: it needs model.text_source='clip'."
            )
        self.aux_weight = float(gc.get("aux_weight", 0.0))
        if self.aux_weight < 0:
            raise ValueError(f"gan.aux_weight must be >= 0, got {self.aux_weight}.")
        if self.aux_weight > 0 and not config.data.get("parse_labels", False):
            raise ValueError(
                "gan.aux_weight > 0 trains the discriminator to classify the images' content, "
                "which needs their labels: set --config.data.parse_labels=True (shapes only), "
                "or use the 'aux' variant."
            )
        self.recon_weight = float(gc.get("recon_weight", 0.0))
        self.kl_weight = float(gc.get("kl_weight", 0.0))
        if self.recon_weight < 0 or self.kl_weight < 0:
            raise ValueError(
                f"gan.recon_weight and gan.kl_weight must be >= 0, got {self.recon_weight} and "
                f"{self.kl_weight}."
            )
        if self.recon_weight > 0 and self.kl_weight == 0:
            raise ValueError(
                "gan.recon_weight > 0 decodes S's codes of real images, and without "
                "gan.kl_weight > 0 nothing keeps those codes near the N(0, I) that sampling "
                "draws z from; set gan.kl_weight (0.01, as BicycleGAN)."
            )
        # The frozen CLIP image tower, in params["clip_image"], for either use.
        self.uses_clip_image = self.clip_weight > 0 or bool(self.d_features)
        dtype = state_lib.compute_dtype(mc)
        self.text = TextTower(
            int(mc.embed_dim), {**mc.text.to_dict(), "max_len": self.max_text_len}, dtype
        )
        g_norm = str(mc.get("g_norm", "group"))
        if g_norm not in G_NORMS:
            raise ValueError(f"Unknown model.g_norm {g_norm!r}; valid: {', '.join(G_NORMS)}.")
        self.G = Generator(
            self.size,
            int(mc.g_ch),
            int(mc.text_dim),
            dtype,
            g_norm,
            conditional=bool(mc.get("g_conditional", False)),
            coords=bool(mc.get("g_coords", False)),
        )
        d_norm = str(mc.get("d_norm", "channel"))
        if d_norm not in D_NORMS:
            raise ValueError(f"Unknown model.d_norm {d_norm!r}; valid: {', '.join(D_NORMS)}.")
        aux_classes = PARSE_CLASSES if self.aux_weight > 0 else ()
        self.D = Discriminator(
            self.size,
            int(mc.d_ch),
            int(mc.text_dim),
            d_norm,
            dtype,
            aux_classes,
            projection=bool(mc.get("d_projection", False)),
            silhouette=bool(mc.get("d_silhouette", False)),
        )
        self.S = InverseNetwork(
            self.size, int(mc.d_ch), self.z_dim, dtype, log_variance=self.recon_weight > 0
        )
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)

    @functools.cached_property
    def clip_model(self) -> CLIP:
        """The CLIP of ``model.text_init`` (its image tower scores samples for ``clip_weight``)."""
        from jaxgen.pipelines.clip import build_model
        from jaxgen.training.loop import load_config

        return build_model(load_config(self.config.model.text_init))

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
            "S": self.S.init(k_s, x)["params"],
            "text": text,
        }
        if self.uses_clip_image:  # frozen, loaded by warm_start: no optimizer
            clip = self.clip_model.init(jax.random.fold_in(rng, 5), x, tokens)["params"]
            params["clip_image"] = {k: v for k, v in clip.items() if k != "text"}
        features = self._features(params, x)
        params["D"] = self.D.init(k_d, x, t, features)["params"]
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={k: self.tx.init(params[k]) for k in self.trained_networks},
            ema_params={"G": params["G"]},
        )

    def warm_start(self, state):
        """Loads the frozen CLIP text tower (and, for ``clip_weight``, the image tower) from
        ``model.text_init``."""
        if not self.frozen_text:
            return state
        from jaxgen.pipelines.clip import load_clip_params, shapes_match

        path = self.config.model.text_init
        causal = bool(self.config.model.text.get("causal", False))
        clip, clip_config = load_clip_params(path, "a text tower", causal)  # read once
        loaded = {"text": clip["text"]}
        mismatch = {
            "text": f"The CLIP text tower in {path} (model.text="
            f"{clip_config.model.text.to_dict()}, embed_dim={clip_config.model.embed_dim}, "
            f"data.max_text_len={clip_config.data.max_text_len}) does not fit this GAN's "
            "model.text, model.embed_dim and data.max_text_len; set them to the CLIP run's.",
            "clip_image": f"The CLIP image tower in {path} (data.image_size="
            f"{clip_config.data.image_size}) cannot score this GAN's {self.size}x{self.size} "
            "samples for gan.clip_weight or model.d_features; train the CLIP at the GAN's "
            "data.image_size.",
        }
        if self.uses_clip_image:
            loaded["clip_image"] = {k: clip[k] for k in state.params["clip_image"]}
        for name, tree in loaded.items():
            if not shapes_match(state.params[name], tree):
                raise ValueError(mismatch[name])
        params = {**state.params, **loaded}
        return state.replace(params=params)

    def train_step(self, state, batch, rng):
        gc, tc = self.config.gan, self.config.train
        x = to_model_space(batch["image"])
        b = x.shape[0]
        k_z, k_int = jax.random.split(rng)
        k_post = jax.random.fold_in(rng, 2)  # q(z | x)'s draw, for gan.recon_weight
        z = jax.random.normal(k_z, (b, self.z_dim))
        params = state.params

        def embed(text_params, tokens=batch["tokens"]):
            return self.text.apply({"params": text_params}, tokens)

        t = jax.lax.stop_gradient(embed(params["text"]))
        # One generator forward serves D's update and (through its VJP) G's.
        fake, g_vjp = jax.vjp(lambda g: self.G.apply({"params": g}, z, t), params["G"])

        # With d_features, the real images' CLIP map is read once for the real and mismatched
        # pairs (it does not depend on D's parameters).
        real_features = self._features(params, x)

        def d_loss_fn(d_params, text_params):
            t_d = t if self.frozen_text else embed(text_params)
            t_wrong = jnp.roll(t_d, 1, axis=0)  # each image with its neighbour's caption
            if self.hard_negatives:  # every other image with a caption one attribute away
                hard = embed(text_params, batch["neg_tokens"])
                hard = jax.lax.stop_gradient(hard) if self.frozen_text else hard
                t_wrong = jnp.where((jnp.arange(b) % 2 == 0)[:, None], hard, t_wrong)
            images = jnp.concatenate([x, x, jax.lax.stop_gradient(fake)])
            texts = jnp.concatenate([t_d, t_wrong, t_d])
            features = None
            if real_features is not None:
                fake_features = self._features(params, jax.lax.stop_gradient(fake))
                features = jnp.concatenate([real_features, real_features, fake_features])
            logits, aux = self._d(d_params, images, texts, features)
            real, wrong, fk = jnp.split(logits, 3)
            loss = discriminator_loss(
                real, wrong, fk, matching_aware=self.matching_aware, loss=gc.loss
            )
            aux_out = {}
            if aux:  # the classifier learns from the real images alone
                aux_out["d_aux"], aux_out["d_aux_accuracy"] = parse_loss(
                    [a[:b] for a in aux], batch["parse"]
                )
                loss = loss + self.aux_weight * aux_out["d_aux"]
            if self.r1_weight > 0:
                loss = loss + self.r1_weight * r1_penalty(
                    lambda im: self._score(d_params, params, im, t_d), x
                )
            return loss, (real, wrong, fk, aux_out)

        (d_loss, (real, wrong, fk, d_terms)), (d_grads, text_grads) = jax.value_and_grad(
            d_loss_fn, argnums=(0, 1), has_aux=True
        )(params["D"], params["text"])
        new_params, new_opt = dict(params), dict(state.opt_state)
        new_params["D"], new_opt["D"] = self._apply(params["D"], d_grads, state.opt_state["D"])
        if not self.frozen_text:
            new_params["text"], new_opt["text"] = self._apply(
                params["text"], text_grads, state.opt_state["text"]
            )

        # G against the updated D (and the frozen CLIP, with clip_weight).
        def adversarial(images, texts):
            return generator_loss(self._score(new_params["D"], params, images, texts), gc.loss)

        def g_loss_fn(images):
            out = {}
            logits, aux = self._d(new_params["D"], images, t, self._features(params, images))
            loss = generator_loss(logits, gc.loss)
            if aux:  # the samples should be classified as their captions say
                out["g_aux"], out["g_aux_accuracy"] = parse_loss(aux, batch["parse"])
                loss = loss + self.aux_weight * out["g_aux"]
            if self.clip_weight > 0:
                clip = params["clip_image"]
                emb = self.clip_model.apply({"params": clip}, images, method=CLIP.embed_image)
                out["g_clip"] = clip_guidance_loss(emb, t, clip["logit_scale"])
                loss = loss + self.clip_weight * out["g_clip"]
            return loss, out

        (g_loss, g_terms), d_fake_images = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
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
            z_hat = self._s_mean(s_params, jax.lax.stop_gradient(fake))
            return jnp.mean(jnp.sum(jnp.square(z - z_hat), axis=-1))

        s_loss, s_grads = jax.value_and_grad(s_loss_fn)(params["S"])
        if self.recon_weight > 0:
            (_, recon_terms), (rec_g, rec_s) = jax.value_and_grad(
                self.recon_loss, argnums=(0, 1), has_aux=True
            )(params["G"], params["S"], x, t, k_post)
            g_grads = jax.tree.map(jnp.add, g_grads, rec_g)
            s_grads = jax.tree.map(jnp.add, s_grads, rec_s)
            g_terms.update(recon_terms)
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
        metrics.update(d_terms)
        metrics.update(g_terms)
        new_state = state.replace(
            step=state.step + 1, params=new_params, opt_state=new_opt, ema_params=ema
        )
        return new_state, metrics

    def _features(self, params, images):
        """The frozen CLIP image tower's last feature map of ``images`` for D
        (``model.d_features='clip'``; gradients reach the images), else None."""
        if not self.d_features:
            return None
        _, out = self.clip_model.apply(
            {"params": params["clip_image"]},
            images,
            method=CLIP.embed_image,
            mutable=["intermediates"],
        )
        return out["intermediates"]["image"]["feature_map"][0]

    def recon_loss(self, g_params, s_params, x, t, rng):
        """The conditional VAE's terms (CVAE-GAN, BicycleGAN's cVAE-GAN): S encodes each real
        image ``x`` as q(z | x), and G redraws it from a code drawn from that and the image's own
        text embedding ``t``. Returns ``(recon_weight * L1 + kl_weight * KL, {"recon_l1",
        "kl"})``."""
        mean, log_var = self.S.apply({"params": s_params}, x)
        eps = jax.random.normal(rng, mean.shape)
        x_rec = self.G.apply({"params": g_params}, mean + jnp.exp(0.5 * log_var) * eps, t)
        terms = {
            "recon_l1": jnp.mean(jnp.abs(x_rec - x)),
            "kl": kl_to_standard_normal(mean, log_var),
        }
        return self.recon_weight * terms["recon_l1"] + self.kl_weight * terms["kl"], terms

    def _s_mean(self, s_params, images):
        """S's estimate of the z behind each image (the mean of q(z | x) with a log-variance
        head)."""
        out = self.S.apply({"params": s_params}, images)
        return out[0] if self.S.log_variance else out

    def _d(self, d_params, images, texts, features):
        """D's logits for (image, text embedding) pairs and its auxiliary class logits (an
        empty tuple without ``gan.aux_weight``)."""
        out = self.D.apply({"params": d_params}, images, texts, features)
        return out if self.D.aux_classes else (out, ())

    def _score(self, d_params, params, images, texts):
        """D's logits for (image, text embedding) pairs."""
        return self._d(d_params, images, texts, self._features(params, images))[0]

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
        return self._s_mean(s_params, to_model_space(images))

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
        return self._score(params["D"], params, images, texts)

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
    def diversity(self, state, rng) -> dict[str, float]:
        """Mean pairwise RMS distance (pixels in [0, 1]) of samples of one prompt, averaged
        over prompts: near 0 means mode collapse."""
        ec = self.config.eval
        prompts = self.judge.prompts("test", int(ec.diversity_prompts), seed=3)[0]
        per = int(ec.diversity_samples)
        dists = []
        for i, p in enumerate(prompts):
            imgs = self.generate(state, [p] * per, jax.random.fold_in(rng, i))
            x = imgs.reshape(per, -1).astype(np.float64) / 255.0
            d = np.sqrt(np.mean((x[:, None] - x[None]) ** 2, axis=-1))
            dists.append(d[np.triu_indices(per, 1)].mean())
        return {"diversity": float(np.mean(dists))}

    def reconstruction_metrics(self, state, rng) -> dict[str, float]:
        """The judge's accuracies on real images redrawn from their own captions in their own
        style, ``G(S(x), phi(caption of x))`` (style transfer to the same content), per split
        as ``<split>/rec_<metric>``: how well G draws a scene when z is no guess."""
        del rng
        ec, out = self.config.eval, {}
        for split in ec.splits:
            captions, truths, real = self.judge.prompts(split, int(ec.num_samples), seed=0)
            redrawn = self.generate(state, captions, None, reference=real)
            for k, v in self.judge.score(redrawn, truths).items():
                out[f"{split}/rec_{k}"] = float(v)
        return out

    def evaluators(self):
        ec = self.config.eval
        out = [self.diversity]
        if self.judge.has_truth:
            sampled = functools.partial(
                judges.evaluate_generator,
                self.rerank,
                self.judge,
                splits=tuple(ec.splits),
                num_samples=int(ec.num_samples),
                embedder=self.clip_embedder,
            )
            out = [sampled, *out, self.reconstruction_metrics]
        return out
