"""GAN-INT-CLS (Reed et al. 2016): text-conditional DCGAN with a matching-aware discriminator.

Variants (``--config=experiments/gan_int_cls.py:<arg>``, comma-separated):
  (none) / shapes   the embedded ``shapes`` dataset at 32x32 (CPU, ~20 min)
  digits            scikit-learn's handwritten digits at 16x16
  gan, gan_cls, gan_int, gan_int_cls
                    the paper's variants (default gan_int_cls)
  joint             a text encoder trained jointly with D instead of a frozen CLIP
  smoke             a tiny version that runs in under a minute on a CPU

The default takes its text embedding from a CLIP run (frozen), which it first trains into
``<workdir>/pretrain/clip`` (about 10 minutes; once per workdir); to reuse a trained CLIP workdir
pass ``--config.model.text_init=runs/clip``. Another CLIP, which the GAN never sees in training,
scores the samples (CLIP score, R-precision): ``experiments/clip.py:eval``, trained once per
machine and shared by every family. The ``joint`` variant needs no CLIP of its own.
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant

VARIANTS = ("gan", "gan_cls", "gan_int", "gan_int_cls")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, options = split_variant(
        arg, "gan_int_cls.py", ("shapes", "digits"), (*VARIANTS, "joint")
    )
    smoke, joint = "smoke" in options, "joint" in options
    variants = options & set(VARIANTS)
    if len(variants) > 1:
        raise ValueError(f"gan_int_cls.py variant {arg!r}: one of {', '.join(VARIANTS)} at most.")
    config = base_config("gan_int_cls", dataset)

    config.gan = ml_collections.ConfigDict()
    config.gan.variant = variants.pop() if variants else "gan_int_cls"
    config.gan.int_beta = 0.5  # the paper's fixed interpolation weight
    config.gan.int_weight = 1.0
    # The modern default's options (experiments/gan.py), off here: the paper's loss and nothing
    # else.
    config.gan.loss = "nonsaturating"  # or "hinge"
    config.gan.gp_weight = 0.0  # DF-GAN's matching-aware gradient penalty (2.0 there)
    config.gan.gp_power = 6.0
    config.gan.clip_weight = 0.0  # contrastive CLIP term on the generated images
    config.gan.hard_negatives = False  # mismatches from the batch's nearest captions (shapes)

    config.model.z_dim = 100
    config.model.g_ch = 32
    config.model.d_ch = 32
    config.model.text_dim = 128  # the paper's projected text embedding
    config.model.generator = "dcgan"  # or "attention" (AttnGenerator, experiments/gan.py)
    config.model.attention_sizes = (4, 8, 16)  # resolutions of the word attention
    config.model.attention_heads = 4
    config.model.d_clip = False  # the discriminator also reads the frozen CLIP image tower
    # The CLIP's image tower settings (experiments/clip.py), for d_clip and gan.clip_weight.
    config.model.clip_image = ml_collections.ConfigDict(
        dict(widths=(32, 64, 128), dim=256, patch_size=2, colour="factorised")
    )
    # "clip": the frozen text tower of the CLIP run at text_init; "joint": trained with D's loss.
    # "pretrain:clip" trains config.pretrain.clip into <workdir>/pretrain/clip first (~10
    # minutes on a 2-core CPU); a path reuses a trained CLIP workdir.
    config.model.text_source = "joint" if joint else "clip"
    config.model.text_init = "" if joint else "pretrain:clip"
    config.pretrain.clip = "clip:digits" if dataset == "digits" else "clip"
    # Text tower shape: must equal the CLIP run's (experiments/clip.py) when loading it.
    config.model.embed_dim = 128
    config.model.text = ml_collections.ConfigDict(
        dict(width=128, depth=2, num_heads=4, causal=False)
    )

    # Adam 2e-4, beta1 0.5, constant, as the paper; max_minutes ends the run first on a CPU.
    config.train.update(
        dict(
            steps=2000 if dataset == "digits" else 5000,
            learning_rate=2e-4,
            b1=0.5,
            warmup_steps=0,
            lr_schedule="constant",
            grad_clip=0.0,
            max_minutes=10.0 if dataset == "digits" else 20.0,
        )
    )

    config.eval.every_minutes = 5.0
    config.eval.clip_workdir = (
        "shared:clip:digits,eval" if dataset == "digits" else "shared:clip:eval"
    )
    config.eval.diversity_prompts = 8
    config.eval.diversity_samples = 16

    if dataset == "digits":
        config.data.image_size = 16

    if smoke:
        make_smoke(config, steps=12, batch_size=8, log_every=4)
        config.model.update(dict(g_ch=8, d_ch=8, z_dim=16, text_dim=16, embed_dim=32))
        config.model.text.update(dict(width=32, depth=1, num_heads=2))
        config.model.clip_image.update(dict(widths=(8, 16), dim=32, patch_size=1))
        config.eval.update(
            dict(num_samples=16, diversity_prompts=2, diversity_samples=4, clip_workdir="")
        )
    return config
