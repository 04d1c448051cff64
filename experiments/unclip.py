"""DALL-E 2 / unCLIP (Ramesh et al. 2022): a diffusion prior from the caption to a CLIP image
embedding, a diffusion decoder from it, and a diffusion upsampler.

Variants (``--config=experiments/unclip.py:<arg>``, comma-separated):
  (none) / shapes   the embedded ``shapes`` dataset: decoded at 16x16, upsampled to 32x32; the
                    CLIP trained first into <workdir>/pretrain/clip (experiments/clip.py)
  direct            no upsampler: the decoder at the full size, with 2x2 pixel folding (the
                    DDPM's levels), for the comparison in the log
  smoke             a tiny version that runs in under a minute on a CPU

The numbers behind the settings are in docs/results/unclip.md.
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant


def unet(ch, attn, cross, patch=1):
    return ml_collections.ConfigDict(
        dict(
            ch=ch,
            ch_mults=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=attn,
            cross_attn_resolutions=cross,
            num_heads=4,
            dropout=0.0,
            film=True,
            patch_size=patch,
        )
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, options = split_variant(arg, "unclip.py", ("shapes",), ("direct",))
    smoke = "smoke" in options
    config = base_config("unclip", dataset)

    # The frozen CLIP: the DDPM's (its text tower also parses the captions), trained first.
    config.pretrain.clip = "clip:joint,parse"
    config.model.clip = "pretrain:clip"

    config.model.prior = ml_collections.ConfigDict(
        dict(width=128, depth=4, num_heads=4, mlp_ratio=4)
    )
    # The decoder at the base size has the DDPM UNet's levels (16, 8, 4 at 32x32 with 2x2
    # patches there; here at 16x16 without); four extra context tokens carry the embedding.
    config.model.decoder = unet(64, attn=(8, 4), cross=(16, 8))
    config.model.decoder.cond_tokens = 4
    # The upsampler sees the low-resolution image: a quarter of the channels, no attention,
    # 2x2 patches (its levels also run at 16, 8, 4).
    config.model.upsampler = unet(32, attn=(), cross=(), patch=2)

    if "direct" in options:
        config.model.decoder.patch_size = 2
    config.unclip = ml_collections.ConfigDict(
        dict(
            base_size=config.data.image_size // (1 if "direct" in options else 2),
            prior_drop_prob=0.1,  # the paper's: captions dropped for 10% of the prior's steps
            embed_drop_prob=0.1,  # the decoder's CLIP embedding dropped 10% (paper) ...
            caption_drop_prob=0.5,  # ... and its caption 50% (paper)
            blur_sigma_max=1.0,  # the upsampler's conditioning blurred by sigma ~ U(0, 1)
        )
    )
    config.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            num_timesteps=1000,
            prediction_type="v",  # the decoder's and upsampler's (the prior predicts x0)
            # The decoder's timesteps, as the DDPM's on shapes (its log: test shape 0.694
            # against 0.591 with uniform ones); the prior and upsampler draw them uniformly.
            timestep_sampling="logit_normal",
            timestep_logit_mean=0.5,
        )
    )
    # 1.36 s per step alone on a 2-core CPU (benchmarks/train_speed.py): 2,000 steps in about
    # 45 minutes, which with the CLIP's 12 make the hour; max_minutes caps a slower machine.
    config.train.update(dict(steps=2000, batch_size=32, max_minutes=48.0, keep_checkpoints=3))

    config.sample.update(
        dict(
            embedding="prior",  # "text" / "none": the paper's baselines
            prior_steps=64,  # the paper's
            prior_guidance_scale=1.0,
            prior_candidates=2,  # the paper's: the better of 2 by dot product with the text
            num_steps=25,
            guidance_scale=5.0,
            upsampler_steps=10,
            eta=0.0,
            variation_eta=0.5,
            batch_size=64,
        )
    )
    config.eval.val_num_samples = 64
    config.eval.every_minutes = 20.0
    config.eval.clip_workdir = "shared:clip:eval"

    if smoke:
        make_smoke(config, steps=8, batch_size=8, log_every=4)
        config.unclip.base_size = 8
        config.model.prior.update(dict(width=32, depth=1, num_heads=2))
        for net in (config.model.decoder, config.model.upsampler):
            net.update(dict(ch=16, ch_mults=(1, 2), num_heads=1, patch_size=1))
        config.model.decoder.update(dict(attn_resolutions=(4,), cross_attn_resolutions=(4,)))
        if "direct" in options:
            config.unclip.base_size = 16
        config.sample.update(dict(prior_steps=4, num_steps=4, upsampler_steps=2, batch_size=8))
        config.eval.update(dict(clip_workdir="", num_samples=8, val_num_samples=8))
    return config
