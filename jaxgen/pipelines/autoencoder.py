"""The autoencoder family: VAE, VQ-VAE, VQGAN and DALL-E's dVAE, and the tokenizer API.

One pipeline, four bottlenecks (``config.pipeline``):

  vae    Gaussian posterior, loss = -log p(x|z) + beta KL[q(z|x) || N(0, I)] with a learned
         decoder scale; the ELBO is reported in bits per dimension (discretised Gaussian
         likelihood, so it is a bound on the 8-bit data's likelihood).
  vqvae  nearest-code quantisation, ``rec + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2``,
         straight-through gradients; options: EMA codebook, dead-code restart, l2-normalised
         codes, low-dimensional codes (``model.code_dim``).
  vqgan  vqvae + a patch discriminator (hinge loss) from ``gan.start_step``, weighted by the
         adaptive ``lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4)`` at the decoder's last
         layer L, and a VGG perceptual loss when VGG16 weights are on disk.
  dvae   Gumbel-softmax over K code logits, temperature annealed from 1 to 1/16, KL to the
         uniform prior with its weight ramped up (DALL-E, Ramesh et al. 2021), and a usage
         term: the KL of the batch-averaged posterior to uniform (``dvae.usage_weight``),
         which keeps the codebook from collapsing onto a few codes. The encoder's logits are
         multiplied by ``dvae.logit_scale``: in a short run, logits at the network's own scale
         stay small against the Gumbel noise, so the sampled codes carry little information.

``model.encoder``: "conv" (the VQGAN layout) or "cell" (each token reads only its own cell of
pixels, so identical cells get identical codes: the tokenizer DALL-E's transformer reads).

The discrete ones are image tokenizers: ``tokenizer(state)`` (``jaxgen.load_tokenizer(workdir)``)
gives ``encode(images) -> int32 [B, h, w]`` and ``decode(tokens) -> images``, pure and jittable,
for the next stage (a transformer over text and image tokens). ``generate`` ignores prompts: these
models have no text; it samples their prior (N(0, I) for the VAE, uniform codes for the dVAE,
codes drawn i.i.d. from their usage frequencies for VQ-VAE/VQGAN, the baseline a learned prior
replaces).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxgen.data.pixels import to_model_space, to_uint8
from jaxgen.evaluation import intervals
from jaxgen.evaluation.frechet import frechet_distance
from jaxgen.models import bottlenecks as bn
from jaxgen.models.autoencoder import (
    CellEncoder,
    Decoder,
    Encoder,
    PatchDiscriminator,
    conv_out,
    downsampling_factor,
)
from jaxgen.models.unet import space_to_depth
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline

KINDS = ("vae", "vqvae", "vqgan", "dvae")
DISCRETE = ("vqvae", "vqgan", "dvae")
REC_LOSSES = ("mse", "l1")


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image PSNR in dB ``[B]`` of images in [-1, 1] (peak-to-peak 2, i.e. 255 in uint8)."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def discretized_gaussian_nll(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """``-log P(x)`` per element of 8-bit data scaled to [-1, 1] under N(mean, exp(log_scale)^2)
    integrated over each value's bin (width 2/255; the end bins extend to infinity)."""
    inv = jnp.exp(-log_scale)
    upper = jnp.where(x > 0.999, jnp.inf, (x + 1.0 / 255.0 - mean) * inv)
    lower = jnp.where(x < -0.999, -jnp.inf, (x - 1.0 / 255.0 - mean) * inv)
    cdf_up, cdf_low = jax.scipy.stats.norm.cdf(upper), jax.scipy.stats.norm.cdf(lower)
    # Far in a tail the difference of CDFs underflows: use the log-survival/log-CDF forms.
    log_prob = jnp.where(
        lower > 0,
        jnp.log(
            jnp.maximum(jax.scipy.stats.norm.sf(lower) - jax.scipy.stats.norm.sf(upper), 1e-12)
        ),
        jnp.log(jnp.maximum(cdf_up - cdf_low, 1e-12)),
    )
    return -log_prob


def cosine_ramp(step, start: float, end: float, steps: int) -> jax.Array:
    """``start`` at step 0 to ``end`` at ``steps`` along a half cosine, then ``end``."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(steps), 1), 0.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def dvae_temperature(step, config) -> jax.Array:
    """Gumbel-softmax temperature: 1 -> 1/16 (``dvae.temperature_*``) on a cosine in log space."""
    dc = config.dvae
    log_t = cosine_ramp(
        step,
        math.log(float(dc.temperature_start)),
        math.log(float(dc.temperature_end)),
        int(dc.anneal_steps),
    )
    return jnp.exp(log_t)


def dvae_kl_weight(step, config) -> jax.Array:
    """KL weight ramped from 0 to ``dvae.kl_weight`` over ``dvae.kl_warmup_steps``."""
    dc = config.dvae
    return cosine_ramp(step, 0.0, float(dc.kl_weight), int(dc.kl_warmup_steps))


def adaptive_weight(g_rec_last, g_gan_last, max_weight: float = 1e4) -> jax.Array:
    """VQGAN's ``||g_rec|| / (||g_gan|| + 1e-4)``, clipped to ``[0, max_weight]``, no gradient.

    Args:
      g_rec_last, g_gan_last: gradients of the reconstruction and generator losses with respect
        to the decoder's last layer weight.
    """
    w = optax.tree.norm(g_rec_last) / (optax.tree.norm(g_gan_last) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


class AutoencoderPipeline(Pipeline):
    """State: ``params`` {encoder, decoder, codebook (discrete), log_scale (vae), D (vqgan)};
    ``opt_state`` {autoencoder: AdamW, D: AdamW (vqgan), codebook: {usage, EMA statistics}}."""

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        kind = config.pipeline
        if kind not in KINDS:
            raise ValueError(f"AutoencoderPipeline serves {', '.join(KINDS)}, not {kind!r}.")
        mc = config.model
        self.kind = kind
        self.discrete = kind in DISCRETE
        self.vq = kind in ("vqvae", "vqgan")
        self.size = int(config.data.image_size)
        self.patch = int(mc.patch_size)
        self.factor = downsampling_factor(self.patch, mc.ch_mults)
        if self.size <= 0 or self.size % self.factor:
            raise ValueError(
                f"data.image_size={self.size} does not fit this autoencoder: it must be a "
                f"multiple of {self.factor} (model.patch_size={self.patch} times 2 per level "
                f"after the first of model.ch_mults={tuple(mc.ch_mults)})."
            )
        self.grid = self.size // self.factor
        if mc.rec_loss not in REC_LOSSES:
            raise ValueError(
                f"Unknown model.rec_loss {mc.rec_loss!r}; valid: {', '.join(REC_LOSSES)}."
            )
        self.num_codes = int(mc.num_codes) if self.discrete else 0
        self.code_dim = int(mc.code_dim)
        self.vq_ema = self.vq and bool(config.vq.ema)
        if self.vq and float(config.vq.beta) < 0:
            raise ValueError(f"vq.beta must be >= 0, got {config.vq.beta}.")
        self.logit_scale = float(config.dvae.get("logit_scale", 1.0)) if kind == "dvae" else 1.0
        if self.logit_scale <= 0:
            raise ValueError(
                f"dvae.logit_scale must be > 0 (tokens are the logits' argmax), got "
                f"{self.logit_scale}."
            )
        dtype = state_lib.compute_dtype(mc)
        enc_out = {
            "vae": 2 * self.code_dim,
            "vqvae": self.code_dim,
            "vqgan": self.code_dim,
            "dvae": self.num_codes,
        }[kind]
        arch = dict(
            ch=int(mc.ch),
            ch_mults=tuple(mc.ch_mults),
            num_res_blocks=int(mc.num_res_blocks),
            patch_size=self.patch,
            dtype=dtype,
        )
        encoder = str(mc.get("encoder", "conv"))
        if encoder == "conv":
            self.encoder = Encoder(out_ch=enc_out, **arch)
        elif encoder == "cell":
            # As wide as the conv encoder's last level, one MLP block per conv residual block.
            self.encoder = CellEncoder(
                ch=int(mc.ch) * int(tuple(mc.ch_mults)[-1]),
                factor=self.factor,
                depth=max(1, int(mc.num_res_blocks)) * len(tuple(mc.ch_mults)),
                out_ch=enc_out,
                dtype=dtype,
            )
        else:
            raise ValueError(f"Unknown model.encoder {encoder!r}; valid: conv, cell.")
        self.decoder = Decoder(**arch)
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)
        self.D = None
        if kind == "vqgan":
            gc = config.gan
            self.D = PatchDiscriminator(int(gc.d_ch), int(gc.d_layers), dtype)
            d_train = config.train.copy_and_resolve_references()
            d_train.update(_d_overrides(gc))
            self.d_tx = state_lib.make_optimizer(d_train)
        self.vgg = self._load_vgg() if float(mc.get("perceptual_weight", 0.0)) > 0 else None

    def _load_vgg(self):
        from jaxgen.models import vgg

        path = str(self.config.model.get("vgg_weights", ""))
        try:
            return vgg.load_vgg(path) if path else None
        except FileNotFoundError:
            logging.log_first_n(
                logging.WARNING,
                "Perceptual loss off: no VGG16 weights at %r (model.vgg_weights; see "
                "jaxgen/models/vgg.py for the file). Training on the pixel loss alone.",
                1,
                path,
            )
            return None

    @property
    def trained_networks(self) -> tuple[str, ...]:
        names = ["encoder", "decoder"]
        if self.kind == "vae":
            names.append("log_scale")
        if self.discrete and not self.vq_ema:
            names.append("codebook")
        return tuple(names)

    # -- networks ---------------------------------------------------------------------------
    def init(self, rng, example_batch):
        x = to_model_space(jnp.asarray(example_batch["image"]))
        k_enc, k_dec, k_code, k_d = jax.random.split(rng, 4)
        z = jnp.zeros((x.shape[0], self.grid, self.grid, self.code_dim))
        params = {
            "encoder": self.encoder.init(k_enc, x)["params"],
            "decoder": self.decoder.init(k_dec, z)["params"],
        }
        codebook_state = {}
        if self.discrete:
            k = self.num_codes
            # VQ-VAE: uniform(-1/K, 1/K) as in the reference implementation; the dVAE's
            # codebook is its decoder's first (1x1) layer over one-hot codes.
            params["codebook"] = {
                "embedding": jax.random.uniform(
                    k_code, (k, self.code_dim), jnp.float32, -1.0 / k, 1.0 / k
                )
                if self.vq
                else jax.random.normal(k_code, (k, self.code_dim)) / math.sqrt(self.code_dim)
            }
            # Usage starts at zero: every code is dead at the first step, so with restarts on,
            # the codebook is initialised from the first batch's encoder outputs.
            codebook_state["usage"] = jnp.zeros((k,), jnp.float32)
            if self.vq_ema:
                codebook_state["cluster_size"] = jnp.zeros((k,), jnp.float32)
                codebook_state["embed_sum"] = jnp.zeros((k, self.code_dim), jnp.float32)
        if self.kind == "vae":
            params["log_scale"] = jnp.zeros((), jnp.float32)
        opt_state = {
            "autoencoder": self.tx.init({n: params[n] for n in self.trained_networks}),
            "codebook": codebook_state,
        }
        if self.D is not None:
            params["D"] = self.D.init(k_d, x)["params"]
            opt_state["D"] = self.d_tx.init(params["D"])
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state
        )

    def _codebook(self, params):
        cb = params["codebook"]["embedding"]
        return bn.l2_normalize(cb) if self.config.vq.get("l2_codes", False) else cb

    def _encode_vq(self, params, x):
        """``(z_e, z_q, indices)`` of images ``x`` in [-1, 1]."""
        z_e = self.encoder.apply({"params": params["encoder"]}, x)
        if self.config.vq.get("l2_codes", False):
            z_e = bn.l2_normalize(z_e)
        codebook = self._codebook(params)
        indices = bn.nearest_codes(z_e, codebook)
        return z_e, codebook[indices], indices

    def _decode(self, params, z, return_features: bool = False):
        return self.decoder.apply({"params": params["decoder"]}, z, return_features)

    def _rec_loss(self, recon, x):
        """Per-pixel MSE or L1 (+ the VGG perceptual distance when enabled), batch mean."""
        mc = self.config.model
        diff = recon - x
        loss = jnp.mean(jnp.square(diff)) if mc.rec_loss == "mse" else jnp.mean(jnp.abs(diff))
        if self.vgg is not None:
            from jaxgen.models import vgg

            loss = loss + float(mc.perceptual_weight) * jnp.mean(
                vgg.perceptual_distance(self.vgg, recon, x)
            )
        return loss

    # -- training ---------------------------------------------------------------------------
    def train_step(self, state, batch, rng):
        x = to_model_space(batch["image"])
        params = state.params
        trained = {n: params[n] for n in self.trained_networks}
        frozen = {n: v for n, v in params.items() if n not in trained and n != "D"}
        k_noise, k_restart = jax.random.split(rng)

        def forward(p):
            """Reconstruction and the bottleneck's loss terms (weighted sum ``reg``)."""
            p = {**frozen, **p}
            aux = {}
            if self.kind == "vae":
                stats = self.encoder.apply({"params": p["encoder"]}, x)
                mean, logvar = jnp.split(stats, 2, axis=-1)
                logvar = jnp.clip(logvar, -30.0, 20.0)
                z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_noise, mean.shape)
                kl = jnp.mean(jnp.sum(bn.gaussian_kl(mean, logvar), axis=(1, 2)))
                aux["kl"] = kl
                reg = float(self.config.vae.beta) * kl / self._dims
            elif self.vq:
                z_e, z_q, indices = self._encode_vq(p, x)
                codebook_loss, commitment = bn.vq_losses(z_e, z_q)
                z = bn.straight_through(z_e, z_q)
                aux.update(
                    indices=indices, z_e=z_e, codebook_loss=codebook_loss, commitment=commitment
                )
                reg = float(self.config.vq.beta) * commitment
                if not self.vq_ema:
                    reg = reg + codebook_loss
            else:  # dvae
                # The scale multiplies the logits' margins against the Gumbel noise (and their
                # learning speed); tokens, the argmax, do not depend on it.
                logits = self.logit_scale * self.encoder.apply({"params": p["encoder"]}, x)
                temperature = dvae_temperature(state.step, self.config)
                soft = bn.gumbel_softmax(logits, k_noise, temperature)
                z = soft @ p["codebook"]["embedding"]
                kl = jnp.mean(bn.kl_to_uniform(logits))
                usage_kl = bn.aggregate_kl_to_uniform(logits)
                kl_weight = dvae_kl_weight(state.step, self.config)
                aux.update(
                    indices=jnp.argmax(logits, -1),
                    kl=kl,
                    usage_kl=usage_kl,
                    temperature=temperature,
                    kl_weight=kl_weight,
                )
                reg = kl_weight * kl + float(self.config.dvae.usage_weight) * usage_kl
            recon, features = self._decode(p, z, return_features=True)
            aux["features"] = features
            return (recon, reg), aux

        (recon, reg), vjp_fn, aux = jax.vjp(forward, trained, has_aux=True)
        if self.kind == "vae":
            rec_loss, g_rec = jax.value_and_grad(self._vae_nll)(recon, x, params["log_scale"])
            # log_scale enters the NLL directly, not through recon: its gradient is added below.
            g_log_scale = jax.grad(lambda s: self._vae_nll(recon, x, s))(params["log_scale"])
        else:
            rec_loss, g_rec = jax.value_and_grad(self._rec_loss)(recon, x)
        metrics = {"rec_loss": rec_loss, "psnr": jnp.mean(psnr(recon, x))}
        cotangent = g_rec
        new_params, new_opt = dict(params), dict(state.opt_state)
        if self.D is not None:
            g_adv, d_grads, gan_metrics = self._adversarial(
                params, state.step, x, recon, g_rec, aux["features"]
            )
            cotangent = cotangent + g_adv
            new_params["D"], new_opt["D"] = _apply(
                self.d_tx, params["D"], d_grads, state.opt_state["D"]
            )
            metrics.update(gan_metrics)
        (grads,) = vjp_fn((cotangent, jnp.ones_like(reg)))
        if self.kind == "vae":
            grads = {**grads, "log_scale": grads["log_scale"] + g_log_scale}
        updated, new_opt["autoencoder"] = _apply(
            self.tx, trained, grads, state.opt_state["autoencoder"]
        )
        new_params.update(updated)
        if self.discrete:
            new_params, new_opt["codebook"], cb_metrics = self._codebook_step(
                new_params, state.opt_state["codebook"], aux, k_restart
            )
            metrics.update(cb_metrics)
        metrics["loss"] = rec_loss + reg + metrics.get("g_adv_loss", 0.0)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = self.learning_rate(state.step)
        for key in ("kl", "usage_kl", "temperature", "kl_weight", "codebook_loss", "commitment"):
            if key in aux:
                metrics[key] = aux[key]
        if self.kind == "vae":
            metrics["bits_per_dim"] = (rec_loss + aux["kl"] / self._dims) / math.log(2.0)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt)
        return new_state, metrics

    @property
    def _dims(self) -> int:
        return self.size * self.size * 3

    def _vae_nll(self, recon, x, log_scale):
        """Gaussian ``-log p(x|z)`` per dimension, in nats, with the continuous density shifted
        to the 8-bit bin width (``log(2/255)``), which makes it close to the discretised one."""
        nll = 0.5 * jnp.square((x - recon) * jnp.exp(-log_scale)) + log_scale
        return jnp.mean(nll) + 0.5 * math.log(2 * math.pi) - math.log(2.0 / 255.0)

    def _adversarial(self, params, step, x, recon, g_rec, features):
        """VQGAN's discriminator update and the generator's adversarial cotangent on ``recon``,
        scaled by the adaptive weight, both zero before ``gan.start_step``."""
        gc = self.config.gan
        d_apply = functools.partial(self.D.apply, {"params": params["D"]})
        fake = jax.lax.stop_gradient(recon)

        def active(_):
            g_adv_loss, g_adv = jax.value_and_grad(lambda r: -jnp.mean(d_apply(r)))(recon)
            lam = self._adaptive_weight(params, features, g_rec, g_adv)
            weight = float(gc.weight) * lam

            def d_loss_fn(d_params):
                real_logits = self.D.apply({"params": d_params}, x)
                fake_logits = self.D.apply({"params": d_params}, fake)
                loss = 0.5 * (
                    jnp.mean(jax.nn.relu(1.0 - real_logits))
                    + jnp.mean(jax.nn.relu(1.0 + fake_logits))
                )
                return loss, (jnp.mean(real_logits), jnp.mean(fake_logits))

            (d_loss, (d_real, d_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
                params["D"]
            )
            m = {
                "g_adv_loss": weight * g_adv_loss,
                "adaptive_weight": lam,
                "d_loss": d_loss,
                "d_real": d_real,
                "d_fake": d_fake,
            }
            return weight * g_adv, d_grads, m

        def inactive(_):
            zeros = {
                k: jnp.zeros((), jnp.float32)
                for k in ("g_adv_loss", "adaptive_weight", "d_loss", "d_real", "d_fake")
            }
            return jnp.zeros_like(recon), jax.tree.map(jnp.zeros_like, params["D"]), zeros

        return jax.lax.cond(step >= int(gc.start_step), active, inactive, None)

    def _adaptive_weight(self, params, features, g_rec, g_adv):
        """The adaptive weight from the gradients at the decoder's ``conv_out`` kernel."""
        layer = params["decoder"]["conv_out"]
        last = conv_out(3 * self.patch**2, features.dtype)
        features = jax.lax.stop_gradient(features)

        def apply_last(kernel):
            return last.apply({"params": {**layer, "kernel": kernel}}, features)

        _, vjp_last = jax.vjp(apply_last, layer["kernel"])
        (g_rec_last,) = vjp_last(space_to_depth(g_rec, self.patch).astype(features.dtype))
        (g_adv_last,) = vjp_last(space_to_depth(g_adv, self.patch).astype(features.dtype))
        return adaptive_weight(g_rec_last, g_adv_last, float(self.config.gan.max_weight))

    def _codebook_step(self, params, cb_state, aux, rng):
        """Usage statistics, EMA codebook update and dead-code restart after the optimiser.

        A code is dead when its usage (a moving average of the fraction of positions assigned
        to it) is below ``dead_threshold / K``, i.e. that fraction of a fair share.
        """
        k = self.num_codes
        vc = self.config.vq if self.vq else self.config.dvae
        counts = bn.code_counts(aux["indices"], k)
        metrics = {f"codebook_{n}": v for n, v in bn.usage_stats(counts).items()}
        decay = float(vc.usage_decay)
        usage = decay * cb_state["usage"] + (1.0 - decay) * counts / jnp.sum(counts)
        threshold = float(vc.dead_threshold) / k
        # Dead as of the previous step (all of them at the first): these are restarted below.
        metrics["dead_codes"] = jnp.sum(cb_state["usage"] < threshold)
        new_state = dict(cb_state, usage=usage)
        if not self.vq:
            return params, new_state, metrics
        params = dict(params)
        z_e = jax.lax.stop_gradient(aux["z_e"]).reshape(-1, self.code_dim)
        codebook = params["codebook"]["embedding"]
        if self.vq_ema:
            stats = {n: cb_state[n] for n in ("cluster_size", "embed_sum")}
            stats, codebook = bn.ema_codebook_update(
                stats, z_e, aux["indices"], float(vc.ema_decay)
            )
            new_state.update(stats)
        if bool(vc.restart_dead):
            codebook, dead = bn.restart_dead_codes(codebook, cb_state["usage"], z_e, rng, threshold)
            # A restarted code starts with a fair share, so it is not restarted again at once.
            new_state["usage"] = jnp.where(dead, 1.0 / k, usage)
            if self.vq_ema:
                share = jnp.sum(new_state["cluster_size"]) / k
                new_state["cluster_size"] = jnp.where(dead, share, new_state["cluster_size"])
                new_state["embed_sum"] = jnp.where(
                    dead[:, None], codebook * share, new_state["embed_sum"]
                )
        params["codebook"] = {"embedding": codebook}
        return params, new_state, metrics

    # -- the tokenizer and generation --------------------------------------------------------
    def encode(self, params, images: jax.Array) -> jax.Array:
        """uint8 ``[B, S, S, 3]`` -> int32 tokens ``[B, S/f, S/f]`` (discrete kinds); for the
        VAE, the posterior mean ``[B, S/f, S/f, code_dim]``. Pure and jittable."""
        x = to_model_space(jnp.asarray(images))
        if self.vq:
            return self._encode_vq(params, x)[2]
        out = self.encoder.apply({"params": params["encoder"]}, x)
        if self.kind == "dvae":
            return jnp.argmax(out, axis=-1).astype(jnp.int32)
        return jnp.split(out, 2, axis=-1)[0]

    def decode(self, params, codes: jax.Array) -> jax.Array:
        """Tokens ``[B, h, w]`` (or VAE latents) -> uint8 images. Pure and jittable."""
        if self.discrete:
            codes = jnp.asarray(codes)
            if not jnp.issubdtype(codes.dtype, jnp.integer):
                raise TypeError(f"tokens must be integers, got {codes.dtype}.")
            z = (self._codebook(params) if self.vq else params["codebook"]["embedding"])[codes]
        else:
            z = codes
        return to_uint8(self._decode(params, z))

    @functools.partial(jax.jit, static_argnums=0)
    def _reconstruct(self, params, images):
        return self.decode(params, self.encode(params, images))

    def reconstruct(self, state, images) -> np.ndarray:
        """uint8 images -> their reconstructions through the bottleneck (tokens for the
        discrete kinds, the posterior mean for the VAE)."""
        return np.asarray(self._reconstruct(state.params, self._check_images(images)))

    def _check_images(self, images) -> jax.Array:
        return jnp.asarray(self.check_images(images))

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _sample_prior(self, state, rng, n):
        shape = (n, self.grid, self.grid)
        if self.kind == "vae":
            return self.decode(state.params, jax.random.normal(rng, (*shape, self.code_dim)))
        if self.vq:
            logits = jnp.log(jnp.maximum(state.opt_state["codebook"]["usage"], 1e-12))
        else:
            logits = jnp.zeros((self.num_codes,))
        return self.decode(state.params, jax.random.categorical(rng, logits, shape=shape))

    def generate(self, state, prompts: Sequence[str], rng, **options) -> np.ndarray:
        """Prior samples, one per prompt (the prompts are not read: no text conditioning)."""
        del options
        if isinstance(prompts, str):
            prompts = [prompts]
        return np.asarray(self._sample_prior(state, rng, len(prompts)))

    def default_prompts(self, n: int) -> list[str]:
        return [""] * n

    def tokenizer(self, state) -> Tokenizer:
        """This trained discrete autoencoder as a ``Tokenizer`` (encoder, decoder, codebook)."""
        if not self.discrete:
            raise ValueError(
                f"A {self.kind!r} model is not a discrete tokenizer ({', '.join(DISCRETE)})."
            )
        keep = ("encoder", "decoder", "codebook")
        return Tokenizer(params={k: v for k, v in state.params.items() if k in keep}, pipeline=self)

    def sample_images(self, state, prompts, rng) -> np.ndarray:
        """The training grid: real validation images next to their reconstructions (pairs),
        and for the VAE, prior samples after them."""
        n = max(len(prompts) // 2, 1)
        real = self.judge.prompts("val", n, seed=1)[2]
        pairs = np.stack([real, self.reconstruct(state, real)], axis=1).reshape(
            2 * n, *real.shape[1:]
        )
        if self.kind != "vae":
            return pairs
        return np.concatenate([pairs, self.generate(state, [""] * len(prompts), rng)])

    # -- evaluation -------------------------------------------------------------------------
    def reconstruction_metrics(self, state, rng, *, plan) -> dict[str, float]:
        """Per split of ``plan``: PSNR, the judge's accuracies on reconstructions, Frechet
        distance of the reconstructions, codebook usage and perplexity (discrete), bits/dim
        (VAE); the VAE's prior samples against the first split's images."""
        out = {}
        for split in plan.splits:
            _, truths, real = self.judge.prompts(split, plan.num_samples, seed=0)
            recon = self.reconstruct(state, real)
            x, y = to_model_space(jnp.asarray(real)), to_model_space(jnp.asarray(recon))
            found = intervals.mean("psnr", np.asarray(psnr(y, x)))
            if self.judge.has_truth:
                found.update({f"rec_{k}": v for k, v in self.judge.score(recon, truths).items()})
                found.update(
                    intervals.bootstrap(
                        "rec_frechet",
                        frechet_distance,
                        self.judge.features(recon),
                        self.judge.features(real),
                        floor=0.0,
                    )
                )
            out.update({f"{split}/{k}": v for k, v in found.items()})
            if self.discrete:
                tokens = np.concatenate(
                    [
                        np.asarray(self._encode_jit(state.params, jnp.asarray(real[i : i + 256])))
                        for i in range(0, len(real), 256)
                    ]
                )
                stats = bn.usage_stats(bn.code_counts(jnp.asarray(tokens), self.num_codes))
                out[f"{split}/codebook_usage"] = float(stats["usage"])
                out[f"{split}/perplexity"] = float(stats["perplexity"])
            if self.kind == "vae":
                out[f"{split}/bits_per_dim"] = self.bits_per_dim(state, real, rng)
        if self.kind == "vae" and self.judge.has_truth:
            _, _, real = self.judge.prompts(plan.splits[0], plan.num_samples, seed=0)
            samples = self.generate(state, [""] * len(real), rng)
            out.update(
                intervals.bootstrap(
                    "prior/frechet",
                    frechet_distance,
                    self.judge.features(samples),
                    self.judge.features(real),
                    floor=0.0,
                )
            )
        return out

    @functools.partial(jax.jit, static_argnums=0)
    def _encode_jit(self, params, images):
        return self.encode(params, images)

    @functools.partial(jax.jit, static_argnums=0)
    def _neg_elbo(self, params, images, rng):
        """``-ELBO`` per image in nats, with the discretised likelihood (one z sample)."""
        x = to_model_space(images)
        stats = self.encoder.apply({"params": params["encoder"]}, x)
        mean, logvar = jnp.split(stats, 2, axis=-1)
        logvar = jnp.clip(logvar, -30.0, 20.0)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
        recon = self._decode(params, z)
        nll = discretized_gaussian_nll(x, recon, params["log_scale"])
        kl = bn.gaussian_kl(mean, logvar)
        return jnp.sum(nll, axis=(1, 2, 3)) + jnp.sum(kl, axis=(1, 2))

    def bits_per_dim(self, state, images, rng) -> float:
        """The negative ELBO of 8-bit images in bits per dimension (an upper bound on -log2 p)."""
        nats = self._neg_elbo(state.params, jnp.asarray(images), rng)
        return float(jnp.mean(nats) / (self._dims * math.log(2.0)))

    def evaluators(self, plan):
        return [functools.partial(self.reconstruction_metrics, plan=plan)]


def _d_overrides(gan_config) -> dict:
    """The discriminator's optimiser settings (``gan.d_learning_rate``, ``gan.b1``...)."""
    return {
        "learning_rate": float(gan_config.d_learning_rate),
        "b1": float(gan_config.b1),
        "b2": float(gan_config.b2),
        "warmup_steps": 0,
    }


def _apply(tx, params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@flax.struct.dataclass
class Tokenizer:
    """A trained discrete autoencoder as an image tokenizer; a pytree, so it can be passed to
    jitted functions. ``encode``/``decode`` are pure JAX and can be jitted or traced.

    tok = jaxgen.load_tokenizer("runs/vqgan")
    tokens = tok.encode(images)        # uint8 [B, 32, 32, 3] -> int32 [B, 8, 8]
    images = tok.decode(tokens)        # -> uint8 [B, 32, 32, 3]
    """

    params: dict
    pipeline: AutoencoderPipeline = flax.struct.field(pytree_node=False)

    @property
    def vocab_size(self) -> int:
        return self.pipeline.num_codes

    @property
    def grid(self) -> tuple[int, int]:
        return (self.pipeline.grid, self.pipeline.grid)

    @property
    def image_size(self) -> int:
        return self.pipeline.size

    def encode(self, images) -> jax.Array:
        return self.pipeline.encode(self.params, images)

    def decode(self, tokens) -> jax.Array:
        return self.pipeline.decode(self.params, tokens)
