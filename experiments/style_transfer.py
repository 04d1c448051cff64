"""Neural style transfer: Gatys et al. (2016) by optimising the image; Johnson et al. (2016)'s
feed-forward network with ``:fast``.

  python -m jaxgen.main --config=experiments/style_transfer.py \\
      --config.content=photo.jpg --config.style=painting.jpg[,other.jpg]

Variants (``--config=experiments/style_transfer.py:<arg>``, comma-separated):
  (none)   optimise the image (L-BFGS, 300 iterations at 256 pixels on the longer side)
  fast     train Johnson et al.'s transformation network for the style, then stylise any image
           in one pass (``--mode=sample --prompt=photo.jpg``)
  vgg      Gatys et al.'s own setting on VGG-19: needs its weights on disk,
           ``--config.features=vgg19.npz`` (.npz, .safetensors, torchvision .pth, Keras .h5)
  smoke    a tiny version that runs in under a minute on a CPU

Content and style are image paths or the sample images inside scikit-image's wheel (content:
astronaut, chelsea, coffee, rocket; style: hubble_deep_field, immunohistochemistry, brick,
gravel, grass), so the defaults run offline. With no VGG weights (``features="random"``), the
features are a fixed random multi-scale network (Ustyuzhaninov et al. 2017,
``jaxgen.models.feature_nets``): the run says so. The numbers behind the settings are in
docs/results/style_transfer.md.
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, options = split_variant(arg, "style_transfer.py", ("gatys", "fast"), ("vgg",))
    smoke, vgg = "smoke" in options, "vgg" in options
    fast = variant == "fast"
    config = base_config("fast_style_transfer" if fast else "style_transfer", "content_crops")
    config.content = "chelsea"  # a path or a bundled image
    config.style = "immunohistochemistry"  # comma-separated for several
    config.style_blend_weights = ""  # comma-separated; "": equal
    config.style_scale = 1.0  # the style images' size relative to the content's
    config.image_size = 256  # the result's longer side (the content's aspect ratio is kept)
    config.init = "content"  # "noise", "style"
    config.preserve_colors = "none"  # "luminance", "histogram"
    config.mask = ""  # a picture: style only where it is white
    # "random": the random multi-scale network (random3: 3x3 filters); or a VGG weight file.
    config.features = "random"
    config.features_seed = 0
    # Weights of Gatys et al.'s sums (the content term grows with the number of pixels, the
    # style term does not): chosen on the val pairs at 256 pixels with the random network
    # (docs/results/style_transfer.md); 4x fewer pixels want a 4x smaller style weight.
    config.loss = ml_collections.ConfigDict(
        dict(
            content_weight=1.0,
            style_weight=4e9,
            tv_weight=0.01,
            content_layers=(),  # (): the network's default (VGG: conv4_2; random: scale4)
            style_layers=(),  # (): VGG conv1_1..conv5_1; random: every scale
            style_layer_weights=(),  # (): equal
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            optimizer="lbfgs",  # the paper's; or "adam"
            iterations=300,
            chunk=25,  # iterations per compiled step: progress and checkpoints between steps
            memory=10,  # L-BFGS history
            max_linesearch_steps=20,
            learning_rate=0.05,  # Adam's, in [-1, 1] pixel units
            scales=(1.0,),  # coarse-to-fine, e.g. (0.25, 0.5, 1.0)
            coarse_iterations=100,
        )
    )
    # One step is `chunk` iterations.
    config.train.steps = config.optim.get_ref("iterations") // config.optim.get_ref("chunk")
    config.train.update(dict(log_every=1, checkpoint_every=4, warmup_steps=0, batch_size=1))
    config.sample.update(dict(num=1, every_steps=1000000))
    # Judged by another network than the one optimised: the random network with 3x3 filters
    # and another seed.
    config.eval.features = "random3"
    config.eval.features_seed = 1
    config.eval.splits = ("test",)

    if vgg:
        # Gatys et al.'s network and layers; their alpha / beta = 1e-3 on the paper's sums.
        config.features = ""  # must be given: --config.features=PATH
        config.loss.update(dict(style_weight=1e3, tv_weight=1e-3))

    if fast:
        config.data.image_size = 128  # training crops: a quarter of 256's pixels ...
        config.loss.style_weight = 1e9  # ... and a quarter of its style weight
        config.model.network = ml_collections.ConfigDict(dict(width=16, num_residual=5))
        config.train.update(
            dict(
                steps=1000,
                batch_size=4,
                learning_rate=1e-3,
                warmup_steps=50,
                lr_schedule="constant",
                log_every=25,
                checkpoint_every=250,
                max_minutes=30.0,
            )
        )
        config.sample.update(dict(num=1, every_steps=250))

    if smoke:
        config.image_size = 48
        if fast:
            make_smoke(config, steps=6, batch_size=2, log_every=2)
            config.data.image_size = 32
            config.model.network.update(dict(width=4, num_residual=1))
        else:
            config.optim.update(dict(iterations=6, chunk=3))
            config.train.checkpoint_every = 1
    return config
