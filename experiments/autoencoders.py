"""The autoencoder family (VAE, VQ-VAE, VQGAN, dVAE): the settings they share and their own.

``experiments/vae.py``, ``vqvae.py``, ``vqgan.py`` and ``dvae.py`` are this file with the kind
fixed, e.g. ``--config=experiments/vqgan.py:digits,smoke``. Variants, comma-separated:
  (none) / shapes   the embedded ``shapes`` dataset at 32x32, 8x8 tokens (CPU, <= 20 minutes)
  digits            scikit-learn's digits at 16x16, 4x4 tokens
  cifar10           CIFAR-10 via TFDS at 32x32, 8x8 tokens, a larger network (VQGAN, accelerators)
  cell              each token reads only its own cell of pixels (``model.encoder="cell"``): the
                    tokenizer of experiments/dalle.py
  smoke             a tiny version of any of the above that runs in under a minute on a CPU

The measurements behind the settings are in docs/results/autoencoders.md.
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant

KINDS = ("vae", "vqvae", "vqgan", "dvae")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    kind, _, rest = (arg or "").partition(",")
    if kind not in KINDS:
        raise ValueError(
            f"Unknown autoencoder variant {arg!r}: expected <kind>[,<dataset>][,smoke] with kind "
            f"in {', '.join(KINDS)} and dataset in shapes, digits, cifar10."
        )
    dataset, options = split_variant(rest, f"{kind}.py", ("shapes", "digits", "cifar10"), ("cell",))
    smoke = "smoke" in options
    if dataset == "cifar10" and kind != "vqgan":
        raise ValueError("The cifar10 variant is VQGAN's (experiments/vqgan.py:cifar10).")
    config = base_config(kind, dataset)

    # 2x2 pixels folded into channels, then levels at 16x16 and 8x8: 32x32 images -> 8x8 grid.
    config.model.encoder = "cell" if "cell" in options else "conv"
    config.model.ch = 64
    config.model.ch_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.patch_size = 2
    # Codes: K entries of code_dim (a low code_dim is the "factorised" codes of ViT-VQGAN); for
    # the VAE, code_dim is the latent's channels; for the dVAE, the width of the code embedding
    # that the decoder reads (DALL-E feeds the one-hot to a conv: a full-width embedding).
    config.model.num_codes = 512
    config.model.code_dim = {"vae": 4, "dvae": 128}.get(kind, 8)
    # "mse" optimises PSNR directly; "l1" is VQGAN's pixel loss.
    config.model.rec_loss = "mse"
    # VGG16 perceptual loss (VQGAN): used when the weight file is on disk, else off with a
    # warning. Nothing is downloaded; see jaxgen/models/vgg.py for the file's layout.
    config.model.perceptual_weight = 1.0 if kind == "vqgan" else 0.0
    config.model.vgg_weights = "~/.cache/jaxgen/vgg16_weights.npz"

    if kind == "vae":
        config.vae = ml_collections.ConfigDict(dict(beta=1.0))
    if kind in ("vqvae", "vqgan"):
        config.vq = ml_collections.ConfigDict(
            dict(
                beta=0.25,  # weight of the commitment term ||z_e - sg[z_q]||^2
                ema=True,  # codebook by EMA of assigned encoder outputs (else by gradient)
                ema_decay=0.99,
                # l2-normalised 8-d codes and encoder outputs (ViT-VQGAN). Measured on shapes,
                # 187 steps on one core each: heldout PSNR 23.8 dB, usage 0.98 against 22.7 dB,
                # 0.95 with unnormalised 32-d codes.
                l2_codes=True,
                restart_dead=True,
                # A code is dead below this fraction of a fair share (1/K) of the positions,
                # in a moving average over ~1/(1 - usage_decay) batches.
                dead_threshold=0.03,
                usage_decay=0.9,
            )
        )
    if kind == "dvae":
        config.dvae = ml_collections.ConfigDict(
            dict(
                temperature_start=1.0,
                temperature_end=1.0 / 16.0,
                # 400 measured worse on shapes (held-out 23.9 dB, shape 0.62).
                anneal_steps=800,
                # Per-token KL (nats) against the per-pixel MSE: a small weight, ramped up.
                # 1e-4 measured the same on shapes (held-out 25.1 dB, shape 0.80).
                kl_weight=1e-3,
                kl_warmup_steps=200,
                # KL of the batch-averaged posterior to uniform: spreads tokens over the codebook.
                # Measured on shapes, 166 steps on one core each: held-out usage 0.77 and
                # perplexity 144 at 0.1, against 0.47 / 62 at 0.01 (0 collapsed to ~0.1 / 8).
                usage_weight=0.1,
                # Multiplies the encoder's logits: their margins against the Gumbel noise, and
                # how fast they grow. Measured on shapes at step 450 (two runs at a time):
                # held-out PSNR 23.9 dB, shape 0.80 at 4 against 23.0 dB, 0.61 at 1 and
                # 23.6 dB, 0.71 at 8; with code_dim 128 (8 before) 24.6 dB, 0.85.
                logit_scale=4.0,
                dead_threshold=0.03,
                usage_decay=0.9,
            )
        )
    if kind == "vqgan":
        config.gan = ml_collections.ConfigDict(
            dict(
                start_step=450,  # the discriminator joins once reconstructions are good
                weight=0.1,  # times the adaptive weight
                max_weight=1e4,  # the adaptive weight's clip
                d_ch=32,
                d_layers=2,
                d_learning_rate=2e-4,
                b1=0.5,
                b2=0.9,
            )
        )

    # ~1.3 s/step at batch 64 on a 2-core CPU (measured): the cosine ends near 20 minutes.
    config.train.update(dict(steps=900, b2=0.99, ema_decay=0.0, max_minutes=20.0))
    # dVAE: 2e-3 measured better on shapes at step 450 (held-out PSNR 25.1 against 24.6 dB).
    config.train.learning_rate = 2e-3 if kind == "dvae" else 1e-3
    config.sample.num = 36  # 18 input/reconstruction pairs (+ 36 prior samples for the VAE)
    config.eval.num_samples = 512
    config.eval.every_minutes = 5.0

    if dataset == "digits":
        config.data.image_size = 16  # 4x4 tokens
        config.model.num_codes = 128
        config.train.steps = 800
        config.train.max_minutes = 10.0
        config.eval.num_samples = 256
        if kind == "dvae":
            config.dvae.anneal_steps = 600
            # The shapes settings (logit scale 4, 128-d codes) measured worse here: test PSNR
            # 24.70 dB, classifier accuracy 0.973 against 25.54 dB, 0.977 (800 steps, one core,
            # both at learning rate 1e-3).
            config.dvae.logit_scale = 1.0
            config.model.code_dim = 8
            config.train.learning_rate = 1e-3
        if kind == "vqgan":
            config.gan.start_step = 400
    elif dataset == "cifar10":
        config.data.name = "tfds"
        config.data.tfds_name = "cifar10"
        config.model.update(
            dict(
                dtype="bfloat16",
                ch=128,
                ch_mults=(1, 2, 2),
                num_res_blocks=2,
                patch_size=1,
                num_codes=1024,
                code_dim=64,
                rec_loss="l1",
            )
        )
        config.gan.update(dict(start_step=50_000, weight=0.8, d_ch=64, d_layers=3))
        config.train.update(
            dict(
                steps=400_000,
                batch_size=128,
                learning_rate=4.5e-6 * 128,
                warmup_steps=0,
                lr_schedule="constant",
                b1=0.5,
                b2=0.9,
                max_minutes=0.0,
                checkpoint_every=10_000,
            )
        )
        config.sample.every_steps = 10_000
        config.eval.update(dict(num_samples=2048, every_minutes=0.0, every_steps=50_000))

    if smoke:
        make_smoke(config, steps=6, batch_size=8, log_every=2)
        config.model.update(
            dict(
                ch=16,
                ch_mults=(1, 2),
                patch_size=2,
                num_res_blocks=1,
                num_codes=16,
                code_dim=4 if kind == "vae" else 8,
                dtype="float32",
            )
        )
        if kind == "vqgan":
            config.gan.update(dict(start_step=3, d_ch=8, d_layers=2))
        if kind == "dvae":
            config.dvae.update(dict(anneal_steps=6, kl_warmup_steps=3))
        config.train.update(dict(warmup_steps=2, lr_schedule="cosine"))
        config.sample.num = 8
        config.eval.num_samples = 16
    return config
