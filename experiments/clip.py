"""CLIP-style contrastive text-image pre-training (Radford et al. 2021).

Variants (``--config=experiments/clip.py:<arg>``, comma-separated):
  (none) / shapes   the embedded ``shapes`` dataset at 32x32 (CPU, ~10 min)
  digits            scikit-learn's handwritten digits at 16x16
  joint             the image tower convolves the three colours together (``image_colour``):
                    the CLIP whose text tower DDPM conditions on (``experiments/ddpm.py``)
  parse             (shapes) the text tower also learns to parse each caption into its
                    content (``model.parse_weight``, ``shapes.PARSE_FIELDS``)
  smoke             a tiny version of any of them that runs in under a minute on a CPU

The text tower has the DDPM text encoder's shape (width 128, depth 2, 4 heads), so a trained
CLIP run can initialise DDPM's text encoder (``--config.model.text_init=runs/clip``); DDPM and
GAN-INT-CLS train one of their own first by default (``config.pretrain``).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = set((arg or "shapes").split(","))
    smoke, joint, parse = "smoke" in args, "joint" in args, "parse" in args
    args -= {"smoke", "joint", "parse"}
    dataset = args.pop() if args else "shapes"
    if args or dataset not in ("shapes", "digits") or (parse and dataset != "shapes"):
        raise ValueError(
            f"Unknown clip.py variant {arg!r}; valid: shapes, digits, each with ',joint' "
            "and/or ',smoke'; shapes also with ',parse'."
        )

    config = ml_collections.ConfigDict()
    config.pipeline = "clip"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = dataset
    config.data.image_size = 32
    config.data.max_text_len = 64
    config.data.seed = 0
    config.data.tfds_name = ""
    config.data.data_dir = ""
    # One caption per example that differs in one attribute (shapes only), as an extra negative
    # in the image->text softmax (NegCLIP). Off: measured at 425 steps with the default towers,
    # held-out recall and zero-shot accuracies moved by less than their noise (relation stayed
    # at 0.50), and the extra text pass costs ~70% more per step (README, CLIP section).
    config.data.hard_negatives = False
    # Which changes those captions draw from (shapes.HARD_NEGATIVE_KINDS); empty for the five
    # of the default draw. ("reverse", "swap") asks for the relation's direction alone; measured
    # in 500 steps, zero-shot relation stayed at 0.5 all the same (README).
    config.data.hard_negative_kinds = ()
    # Each training caption's content as class labels ("parse"), for model.parse_weight.
    config.data.parse_labels = parse

    config.model = ml_collections.ConfigDict()
    config.model.dtype = "float32"
    config.model.embed_dim = 128
    # causal=True (with hard negatives) lifted test text->image recall@1 from 0.80 to 0.88 at
    # 425 steps but cut held-out zero-shot shape from 0.51 to 0.35 (README), probably by
    # learning colour-shape conjunctions, which do not carry over to held-out pairs.
    config.model.text = ml_collections.ConfigDict(
        dict(width=128, depth=2, num_heads=4, causal=False)
    )
    config.model.image_widths = (32, 64, 128)
    config.model.image_dim = 256
    # 2x2 patches folded into channels: the tower runs at 16, 8, 4 (lossless for these images).
    config.model.image_patch_size = 2
    # "flatten" or "moments" (ImageEncoder.pool). Measured on shapes: moments raised held-out
    # zero-shot shape at step 425 (0.58 against 0.51) but not at the end (0.66 against 0.65).
    config.model.image_pool = "flatten"
    # "joint", "planes" or "factorised" (ImageEncoder.colour). Measured on shapes in 10 minutes
    # (README): factorised reaches held-out text->image recall@1 0.87 and zero-shot shape 0.99,
    # against 0.61 and 0.65 for joint and 0.78 and 0.66 for planes, at 1.0 s per step against
    # 0.72 s for joint.
    config.model.image_colour = "joint" if joint else "factorised"
    config.model.init_temperature = 0.07
    # > 0: linear heads on the text encoder's pooled state predict each caption's content in
    # spatial order (shapes.parse_labels), and their cross-entropy, times this weight, joins
    # the contrastive loss. The contrastive loss alone leaves the relation's direction and
    # which colour goes with which shape out of the text states. Measured with the joint tower
    # in 850 steps (README): with weight 1 neither attention learned to parse two-object
    # captions (half the captions right: the one-object ones); causal attention with weight 3
    # parsed 95% of the test captions, with weight 10 99%, and then zero-shot relation 0.998.
    config.model.parse_weight = 10.0 if parse else 0.0

    config.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14))

    config.train = ml_collections.ConfigDict()
    # The factorised tower runs ~1.0 s/step at batch 128 on 2 cores (measured), so the 10-minute
    # cap ends the run near step 600, before the cosine schedule's end.
    config.train.steps = 850
    config.train.batch_size = 128
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 100
    config.train.lr_schedule = "cosine"
    config.train.final_lr_fraction = 0.05
    config.train.grad_clip = 1.0
    config.train.weight_decay = 0.05
    config.train.ema_decay = 0.99
    config.train.max_minutes = 10.0
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 2
    config.train.skip_nonfinite_updates = False

    config.sample = ml_collections.ConfigDict()
    config.sample.num = 16  # prompts in the retrieval grid written during training
    config.sample.every_steps = 500
    config.sample.gallery_size = 512  # real test images that `generate` retrieves from

    config.eval = ml_collections.ConfigDict()
    config.eval.splits = ("test", "heldout")
    config.eval.num_samples = 1000  # retrieval gallery and zero-shot images per split
    config.eval.batch_size = 250
    config.eval.every_minutes = 0.0
    config.eval.every_steps = 425

    if dataset == "digits":
        config.model.image_colour = "joint"  # grey images: three planes would cost 3x for nothing
        config.data.image_size = 16
        config.model.image_patch_size = 1
        config.train.steps = 600
        config.train.max_minutes = 5.0
        config.eval.splits = ("test",)
        config.eval.num_samples = 297  # the whole test split
        config.sample.gallery_size = 297

    if smoke:
        config.model.embed_dim = 32
        config.model.text = ml_collections.ConfigDict(
            dict(width=32, depth=1, num_heads=2, causal=False)
        )
        config.model.image_widths = (8, 16)
        config.model.image_dim = 32
        config.model.image_patch_size = 1
        config.data.image_size = 16
        config.train.steps = 12
        config.train.batch_size = 16
        config.train.warmup_steps = 2
        config.train.max_minutes = 0.0
        config.train.log_every = 4
        config.train.checkpoint_every = 6
        config.sample.every_steps = 6
        config.sample.num = 4
        config.sample.gallery_size = 32
        config.eval.num_samples = 64
        config.eval.batch_size = 64
        config.eval.every_steps = 0
    if parse:
        config.model.text.causal = True  # see parse_weight
    return config
