"""CLIP-style contrastive text-image pre-training (Radford et al. 2021).

Variants (``--config=experiments/clip.py:<arg>``, comma-separated):
  (none) / shapes   the embedded ``shapes`` dataset at 32x32 (CPU, ~10 min)
  digits            scikit-learn's handwritten digits at 16x16
  joint             the image tower convolves the three colours together (``image_colour``):
                    the CLIP whose text tower DDPM conditions on (``experiments/ddpm.py``)
  parse             (shapes) the text tower also learns to parse each caption into its
                    content (``model.parse_weight``, ``shapes.PARSE_FIELDS``)
  eval              the evaluation CLIP that scores every family's samples: another seed (so
                    another initialisation and data order) and a fixed 600 steps, so it is the
                    same run on every machine; other experiments train it once into a shared
                    folder ("shared:clip:eval", jaxgen.training.pretrain)
  smoke             a tiny version of any of them that runs in under a minute on a CPU

The text tower has the DDPM text encoder's shape (width 128, depth 2, 4 heads), so a trained
CLIP run can initialise DDPM's text encoder (``--config.model.text_init=runs/clip``); DDPM and
GAN-INT-CLS train one of their own first by default (``config.pretrain``).
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, options = split_variant(
        arg, "clip.py", ("shapes", "digits"), ("joint", "parse", "eval")
    )
    smoke, joint, parse = "smoke" in options, "joint" in options, "parse" in options
    if parse and dataset != "shapes":
        raise ValueError(f"clip.py variant {arg!r}: 'parse' needs the shapes dataset.")
    config = base_config("clip", dataset)

    # Each training caption's content as class labels ("parse"), for model.parse_weight.
    config.data.parse_labels = parse

    config.model.embed_dim = 128
    # causal=True lifted test text->image recall@1 but cut held-out zero-shot shape
    # (docs/results/clip.md), probably by learning colour-shape conjunctions, which do not
    # carry over to held-out pairs; the parse variant below needs it.
    config.model.text = ml_collections.ConfigDict(
        dict(width=128, depth=2, num_heads=4, causal=parse)
    )
    config.model.image_widths = (32, 64, 128)
    config.model.image_dim = 256
    # 2x2 patches folded into channels: the tower runs at 16, 8, 4 (lossless for these images).
    config.model.image_patch_size = 2
    # "joint" or "factorised" (ImageEncoder.colour). Measured on shapes in 10 minutes:
    # factorised reaches held-out text->image recall@1 0.87 and zero-shot shape 0.99, against
    # 0.61 and 0.65 for joint, at 1.0 s per step against 0.72 s for joint.
    config.model.image_colour = "joint" if joint or dataset == "digits" else "factorised"
    config.model.init_temperature = 0.07
    # > 0: linear heads on the text encoder's pooled state predict each caption's content in
    # spatial order (shapes.parse_labels), and their cross-entropy, times this weight, joins
    # the contrastive loss. The contrastive loss alone leaves the relation's direction and
    # which colour goes with which shape out of the text states. With causal attention and
    # weight 10 the text tower parses 99% of the test captions (docs/results/clip.md).
    config.model.parse_weight = 10.0 if parse else 0.0

    # The factorised tower runs ~1.0 s/step at batch 128 on 2 cores (measured), so the 10-minute
    # cap ends the run near step 600, before the cosine schedule's end.
    config.train.update(
        dict(steps=850, batch_size=128, weight_decay=0.05, ema_decay=0.99, max_minutes=10.0)
    )

    config.sample.num = 16  # prompts in the retrieval grid written during training
    config.sample.gallery_size = 512  # real test images that `generate` retrieves from

    config.eval.num_samples = 1000  # retrieval gallery and zero-shot images per split
    config.eval.batch_size = 250
    config.eval.every_steps = 425

    if dataset == "digits":
        config.data.image_size = 16  # grey images: the joint tower (per-plane stages cost 3x)
        config.model.image_patch_size = 1
        config.train.update(dict(steps=600, max_minutes=5.0))
        config.eval.num_samples = 297  # the whole test split
        config.sample.gallery_size = 297

    if "eval" in options:
        config.seed = 1
        config.train.update(dict(steps=600 if dataset == "shapes" else 400, max_minutes=0.0))

    if smoke:
        make_smoke(config, steps=12, batch_size=16, log_every=4)
        config.model.update(dict(embed_dim=32, image_widths=(8, 16), image_dim=32))
        config.model.image_patch_size = 1
        config.model.text.update(dict(width=32, depth=1, num_heads=2))
        config.train.warmup_steps = 2
        config.sample.gallery_size = 32
        config.eval.num_samples = 64
        config.eval.batch_size = 64
    return config
