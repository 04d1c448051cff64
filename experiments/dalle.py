"""DALL-E (Ramesh et al. 2021): a transformer over caption bytes and dVAE image tokens.

Variants (``--config=experiments/dalle.py:<arg>``, comma-separated):
  (none) / shapes   the embedded ``shapes`` dataset at 32x32: 8x8 tokens of a dVAE trained
                    first into <workdir>/pretrain/tokenizer (experiments/dvae.py:cell)
  digits            scikit-learn's handwritten digits with captions
  maskgit           MaskGIT (Chang et al. 2022): bidirectional over masked image tokens,
                    decoded in sample.maskgit_steps parallel steps
  vqgan             the VQGAN tokenizer (experiments/vqgan.py) instead of the dVAE
  smoke             a tiny version that runs in under a minute on a CPU

The numbers behind the settings are in docs/results/dalle.md.
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, options = split_variant(arg, "dalle.py", ("shapes", "digits"), ("maskgit", "vqgan"))
    smoke = "smoke" in options
    config = base_config("dalle", dataset)

    # Stage 1: the tokenizer, trained first into <workdir>/pretrain/tokenizer (a path reuses a
    # trained dvae/vqgan/vqvae workdir).
    # Its encoder reads each token's own cell of pixels alone (``:cell``), so that one black
    # background is one code; see docs/results/dalle.md.
    tokenizer = "vqgan" if "vqgan" in options else "dvae"
    config.pretrain.tokenizer = tokenizer + (":digits,cell" if dataset == "digits" else ":cell")
    if dataset == "digits":
        config.data.image_size = 16  # the 8x8 originals, as the digits tokenizers read them
    config.model.tokenizer = "pretrain:tokenizer"

    # Stage 2: the transformer over [caption bytes (data.max_text_len) ; grid x grid tokens].
    config.model.causal = "maskgit" not in options
    config.model.transformer = ml_collections.ConfigDict(
        dict(width=256, depth=4, num_heads=4, mlp_ratio=4, dropout=0.0)
    )
    config.dalle = ml_collections.ConfigDict(
        dict(
            text_loss_weight=1.0 / 8.0,  # the paper's 1/8 text, 7/8 image (autoregressive)
            cond_drop_prob=0.1,  # captions dropped to all-PAD, for guidance
        )
    )
    # Batch 64, 100 warmup steps and a checkpoint every 500 steps are the base config's.
    config.train.update(
        dict(
            # 1.7 s per step alone on a 2-core CPU: 1,400 steps fill the 40 minutes and the
            # cosine ends with them; max_minutes caps a slower machine.
            steps=1400,
            learning_rate=5e-4,
            weight_decay=0.01,
            max_minutes=40.0,
        )
    )

    config.sample.update(
        dict(
            temperature=1.0,  # 0: greedy
            top_k=0,  # 0: off
            top_p=1.0,  # 1: off
            # 1: off. On val (256 prompts, the default run): shape 0.808 at 2 against 0.744 at 3,
            # relation 0.577 against 0.446, count 0.824 against 0.719; 1 and 1.5 lose colour.
            guidance_scale=2.0,
            maskgit_steps=8,
            batch_size=64,
            every_steps=500,
        )
    )
    # Best of k by the run's own CLIP (the DDPM's), beside the single-sample numbers.
    config.pretrain.clip = "clip:joint,parse" if dataset == "shapes" else "clip:digits"
    config.sample.rerank = 4
    config.sample.rerank_clip = "pretrain:clip"
    config.eval.clip_workdir = (
        "shared:clip:eval" if dataset == "shapes" else "shared:clip:digits,eval"
    )
    config.eval.val_num_samples = 64
    config.eval.every_minutes = 20.0

    if smoke:
        config.model.transformer.update(dict(width=32, depth=1, num_heads=2))
        make_smoke(config, steps=8, batch_size=8, log_every=4)
        config.sample.update(dict(rerank=1, rerank_clip="", batch_size=8))
        config.eval.update(dict(clip_workdir="", num_samples=8, val_num_samples=8))
        del config.pretrain["clip"]
    return config
