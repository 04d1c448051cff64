"""A text-to-image GAN that follows the caption: the family's default.

One forward pass per image, on the paper's GAN-INT-CLS machinery (``experiments/gan_int_cls.py``
keeps the paper's four variants as they are) with what later GANs changed:

- the generator reads the caption word by word: cross-attention from every position of its 4x4,
  8x8 and 16x16 maps to the token states of a frozen CLIP text tower (AttnGAN, GigaGAN), and the
  sentence embedding modulates every normalisation (DF-GAN's fusion blocks, as FiLM);
- the discriminator checks the match: hinge loss, mismatched captions as fakes (a random one and
  the batch's caption nearest in content, so one that differs in a single attribute where the
  batch has one), DF-GAN's matching-aware gradient penalty, and frozen features of the same
  CLIP's image tower beside its own convolutions (LAFITE, GALIP);
- a CLIP term: a contrastive loss between each generated image and its caption in that CLIP's
  space (LAFITE; AttnGAN's DAMSM).

The CLIP is ``clip.py:joint,parse`` (DDPM's), trained first into ``<workdir>/pretrain/clip``
(about 10 minutes; ``--config.model.text_init=runs/clip`` reuses one). The evaluation scores
samples with the shared pixel-rule judge and another CLIP (``clip.py:eval``) that the GAN never
sees.

Variants (``--config=experiments/gan.py:<arg>``, comma-separated):
  (none) / shapes   the embedded ``shapes`` dataset at 32x32 (CPU, 20 minutes)
  int               adds the paper's interpolated-text term (GAN-INT)
  no_clip_loss, no_clip_d, no_attention
                    ablations: without the CLIP term, without the CLIP features in the
                    discriminator, without the word attention (sentence modulation only)
  smoke             a tiny version that runs in under a minute on a CPU
"""

from pathlib import Path

import ml_collections

from jaxgen.config import load_experiment, split_variant

ABLATIONS = ("no_clip_loss", "no_clip_d", "no_attention")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, options = split_variant(arg, "gan.py", ("shapes",), (*ABLATIONS, "int"))
    smoke = "smoke" in options
    paper = ["gan_int_cls" if "int" in options else "gan_cls"] + (["smoke"] if smoke else [])
    config = load_experiment(str(Path(__file__).with_name("gan_int_cls.py")), ",".join(paper))
    config.pipeline = "gan"

    # DDPM's CLIP: causal text attention and caption-parsing heads (the token states hold which
    # colour goes with which shape and where), the image tower convolving colours jointly.
    config.pretrain.clip = "clip:joint,parse" + (",smoke" if smoke else "")
    config.model.text.causal = True
    config.model.clip_image.colour = "joint"
    config.data.parse_labels = True  # the batch's content labels pick the hard mismatches

    config.model.generator = "attention"
    config.model.attention_sizes = () if "no_attention" in options else (4, 8, 16)
    config.model.d_clip = "no_clip_d" not in options
    config.gan.loss = "hinge"
    config.gan.gp_weight = 2.0  # DF-GAN's k = 2, p = 6
    config.gan.gp_power = 6.0
    config.gan.hard_negatives = True
    config.gan.clip_weight = 0.0 if "no_clip_loss" in options else 1.0
    if smoke:
        config.model.attention_sizes = () if "no_attention" in options else (4, 8)
    return config
