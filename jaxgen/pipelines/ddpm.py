"""Text-conditional DDPM (Ho et al. 2020) with classifier-free guidance and DDIM sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import diffusion
from jaxgen.data import tokenizer
from jaxgen.data.pixels import to_model_space, to_uint8
from jaxgen.models.text_encoder import TextEncoder
from jaxgen.models.unet import UNet
from jaxgen.pipelines import pretrained
from jaxgen.pipelines import state as state_lib
from jaxgen.pipelines.base import Pipeline, SampleOption


def _with_frozen_text(loss_fn):
    """``loss_fn`` with the text encoder behind a stop-gradient (its gradient is zero)."""

    def frozen(params):
        text = jax.lax.stop_gradient(params["text_encoder"])
        return loss_fn({**params, "text_encoder": text})

    return frozen


class DDPMPipeline(Pipeline):
    """A UNet denoiser conditioned on a byte-level text encoder.

    State: ``params["unet"]`` (the text encoder is a submodule of the UNet, trained jointly),
    its AdamW state and an EMA of the parameters, which ``generate`` uses.
    """

    sample_options = (
        SampleOption("num_steps", "int", 1, 1000, help="DDIM steps"),
        SampleOption(
            "guidance_scale", "float", 0.0, 20.0, help="classifier-free guidance (1: off)"
        ),
    )

    def __init__(self, config, load_run=None):
        super().__init__(config, load_run)
        mc, dc = config.model, config.diffusion
        self.max_text_len = int(config.data.max_text_len)
        dtype = state_lib.compute_dtype(mc)
        size, patch = int(config.data.image_size), int(mc.unet.get("patch_size", 1))
        factor = patch * 2 ** (len(mc.unet.ch_mults) - 1)
        if size <= 0 or size % factor:
            raise ValueError(
                f"data.image_size={size} does not fit this UNet: it must be a positive multiple of "
                f"{factor} (model.unet.patch_size={patch} times 2 per downsampling of "
                f"model.unet.ch_mults={tuple(mc.unet.ch_mults)})."
            )
        text = None
        if mc.get("text") is not None:
            text = TextEncoder(max_len=self.max_text_len, dtype=dtype, **mc.text.to_dict())
        self.model = UNet(**mc.unet.to_dict(), text_encoder=text, dtype=dtype)
        self.conditional = text is not None
        if not 0.0 <= float(dc.cond_drop_prob) < 1.0:
            raise ValueError(
                f"diffusion.cond_drop_prob must be in [0, 1), got {dc.cond_drop_prob}."
            )
        self.schedule = diffusion.make_schedule(dc.schedule, int(dc.num_timesteps))
        # Workdirs from before these keys existed trained with uniform timesteps.
        self.timestep_kw = dict(
            timestep_sampling=dc.get("timestep_sampling", "uniform"),
            logit_mean=float(dc.get("timestep_logit_mean", 0.0)),
            logit_std=float(dc.get("timestep_logit_std", 1.0)),
        )
        diffusion.check_timestep_sampling(
            self.timestep_kw["timestep_sampling"], self.timestep_kw["logit_std"]
        )
        self.prediction_type = dc.prediction_type
        self.tx = state_lib.make_optimizer(config.train)
        self.learning_rate = state_lib.make_learning_rate(config.train)
        self.empty_tokens = jnp.asarray(tokenizer.encode("", self.max_text_len))
        self.text_init = str(mc.get("text_init", "") or "")
        self.freeze_text = bool(mc.get("freeze_text", False))
        if (self.text_init or self.freeze_text) and not self.conditional:
            raise ValueError(
                "model.text_init / model.freeze_text need a text encoder (model.text)."
            )

    # -- training -------------------------------------------------------------------------
    def init(self, rng, example_batch):
        x = to_model_space(jnp.asarray(example_batch["image"]))
        tokens = jnp.asarray(example_batch["tokens"]) if self.conditional else None
        t = jnp.zeros((x.shape[0],), jnp.int32)
        params = self.model.init(rng, x, t, tokens)["params"]
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params={"unet": params},
            opt_state={"unet": self.tx.init(params)},
            ema_params={"unet": params},
        )

    def warm_start(self, state):
        """Loads the text encoder of the CLIP run at ``model.text_init`` (if set)."""
        if not self.text_init:
            return state
        params = dict(state.params["unet"])
        params["text_encoder"] = pretrained.text_encoder_params(
            self.load_run(self.text_init),
            like=params["text_encoder"],
            causal=bool(self.config.model.text.get("causal", False)),
        )
        return state.replace(params={"unet": params}, ema_params={"unet": params})

    def train_step(self, state, batch, rng):
        dc, tc = self.config.diffusion, self.config.train
        x0 = to_model_space(batch["image"])
        drop_rng, loss_rng, dropout_rng = jax.random.split(rng, 3)
        tokens = None
        if self.conditional:
            tokens = batch["tokens"]
            # Classifier-free guidance training: the empty caption stands for "no text".
            drop = jax.random.bernoulli(drop_rng, float(dc.cond_drop_prob), (x0.shape[0],))
            tokens = jnp.where(drop[:, None], self.empty_tokens[None], tokens)

        def loss_fn(params):
            def model_fn(x_t, t):
                return self.model.apply(
                    {"params": params}, x_t, t, tokens, train=True, rngs={"dropout": dropout_rng}
                )

            loss, _ = diffusion.diffusion_loss(
                self.schedule,
                model_fn,
                x0,
                loss_rng,
                prediction_type=self.prediction_type,
                weighting=dc.loss_weighting,
                min_snr_gamma=float(dc.get("min_snr_gamma", 5.0)),
                **self.timestep_kw,
            )
            return loss

        params = state.params["unet"]
        if self.freeze_text:
            # A pretrained (CLIP) text encoder stays as it is: no gradient, so Adam leaves it.
            loss_fn = _with_frozen_text(loss_fn)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = self.tx.update(grads, state.opt_state["unet"], params)
        params = jax.tree.map(jnp.add, params, updates)
        decay = state_lib.ema_decay_at(state.step, float(tc.ema_decay))
        ema = state_lib.ema_update(state.ema_params["unet"], params, decay)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": self.learning_rate(state.step),
            "ema_decay": decay,
        }
        new_state = state.replace(
            step=state.step + 1,
            params={"unet": params},
            opt_state={"unet": opt_state},
            ema_params={"unet": ema},
        )
        return new_state, metrics

    # -- sampling -------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
    def _sample(self, params, tokens, rng, sampler, num_steps, guidance_scale, eta):
        size = int(self.config.data.image_size)
        shape = (tokens.shape[0], size, size, 3)

        def apply(x, t, tok):
            return self.model.apply({"params": params}, x, t, tok if self.conditional else None)

        if self.conditional and guidance_scale != 1.0:
            uncond = jnp.broadcast_to(self.empty_tokens, tokens.shape)
            model_fn = diffusion.guided_model_fn(apply, tokens, uncond, guidance_scale)
        else:

            def model_fn(x, t):
                return apply(x, t, tokens)

        if sampler == "ddim":
            x = diffusion.ddim_sample(
                model_fn,
                self.schedule,
                shape,
                rng,
                num_steps=num_steps,
                eta=eta,
                prediction_type=self.prediction_type,
            )
        elif sampler == "ancestral":
            x = diffusion.ancestral_sample(
                model_fn,
                self.schedule,
                shape,
                rng,
                prediction_type=self.prediction_type,
                variance="posterior" if eta == 0.0 else "beta",
            )
        else:
            raise ValueError(f"Unknown sampler {sampler!r}; valid: 'ddim', 'ancestral'.")
        return to_uint8(x)

    def generate(
        self,
        state,
        prompts,
        rng,
        *,
        sampler=None,
        num_steps=None,
        guidance_scale=None,
        eta=None,
        batch_size=None,
    ):
        """Samples one image per prompt with the EMA parameters.

        Args:
          state: a TrainState.
          prompts: list of N strings (each non-empty and short enough for the text encoder).
          rng: a PRNG key.
          sampler: "ddim" (default from config) or "ancestral" (DDPM Algorithm 2).
          num_steps: DDIM steps; guidance_scale: classifier-free guidance s (1 = off);
          eta: DDIM eta; batch_size: prompts per compiled call (pads the last chunk).

        Returns:
          uint8 numpy array ``[N, H, W, 3]``.
        """
        sc = self.config.sample
        tokens = self.tokenize(prompts)
        sampler = sampler or sc.sampler
        num_steps = int(num_steps or sc.num_steps)
        guidance_scale = float(sc.guidance_scale if guidance_scale is None else guidance_scale)
        eta = float(sc.eta if eta is None else eta)
        chunk = int(batch_size or sc.batch_size)
        params = (state.ema_params or state.params)["unet"]
        n = len(tokens)
        padded = -(-n // chunk) * chunk
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], padded - n, axis=0)])
        out = []
        for i in range(0, padded, chunk):
            out.append(
                self._sample(
                    params,
                    tokens[i : i + chunk],
                    jax.random.fold_in(rng, i),
                    sampler,
                    num_steps,
                    guidance_scale,
                    eta,
                )
            )
        return np.concatenate([np.asarray(o) for o in out])[:n]

    # -- evaluation -----------------------------------------------------------------------
    def evaluators(self, plan):
        if not self.judge.has_truth:
            return []  # e.g. TFDS/folder datasets: nothing to judge against.
        num_steps = int(self.config.eval.get("num_steps", 0) or 0) or None
        return [self.sampled_evaluator(plan, num_steps=num_steps)]
