"""Text2Scene (Tan, Feng, Ordonez 2019): compose a scene object by object from its description.

Variants (``--config=experiments/text2scene.py:<arg>``, comma-separated):
  (none) / scenes   the embedded clip-art ``scenes`` dataset at 64x64, a 16x16 location grid
  shapes            layouts of ``shapes`` captions (each object's shape, colour, size and cell
                    of a 16x16 grid), drawn by the shapes renderer at 32x32 and judged like
                    every text-to-image family (dataset ``shapes_layouts``)
  smoke             a tiny version that runs in under a minute on a CPU

The numbers behind the settings are in docs/results/text2scene.md.
"""

import ml_collections

from jaxgen.config import base_config, make_smoke, split_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, options = split_variant(arg, "text2scene.py", ("scenes", "shapes"))
    smoke = "smoke" in options
    config = base_config("text2scene", "scenes" if dataset == "scenes" else "shapes_layouts")
    config.data.image_size = 64 if dataset == "scenes" else 32
    # Words: the longest scenes description has 86 (scenes.MAX_WORDS), a shapes caption 14.
    config.data.max_text_len = 86 if dataset == "scenes" else 24

    config.model.network = ml_collections.ConfigDict(
        dict(
            width=32,  # canvas state channels (the conv GRU's); 64 costs 4x the FLOPs
            hidden=64,  # GRU units per direction: word features are 128 wide
            embed_dim=64,  # learned word and object embeddings
            text_encoder="gru",  # the paper's bidirectional GRU; "transformer" the option
            canvas=True,  # False: the ablation blind to what it drew
            spatial_attention=True,  # False: the what decoder average-pools the canvas
            # False: that decoder averages the words instead of attending (paper's ablations)
            what_attention=True,
            where_attention=True,
            # The where head's 3x3 layers and their dilations: (1, 2, 4, 8) reads the whole
            # grid from every cell, (1, 1) a cell's 5x5 neighbourhood: val relation of layouts
            # 0.95 against 0.74, scenes' coord 0.84 against 0.81.
            where_dilations=(1, 2, 4, 8),
        )
    )
    # Pretrained word vectors in GloVe's text format (a path; the paper uses GloVe-300 with
    # embed_dim=300); "": learned from scratch, the offline default.
    config.model.word_vectors = ""
    # The paper's weights: object 5, attributes (and location) 2; the attention loss
    # sum_w (1 - sum_t alpha_{t,w})^2 of both decoders.
    config.loss = ml_collections.ConfigDict(
        dict(object_weight=5.0, location_weight=2.0, attribute_weight=2.0, attention_weight=1.0)
    )
    # 80 scenes/s alone on a 2-core CPU (benchmarks/text2scene_speed.py): 3,000 steps take
    # ~20 minutes; max_minutes caps a slower machine at the 40 the issue allows.
    config.train.update(dict(steps=3000, batch_size=32, learning_rate=1e-3, max_minutes=40.0))

    config.sample.decoding = "greedy"  # or "sample", "beam"
    config.sample.temperature = 1.0  # of "sample"
    config.sample.beam_size = 4  # of "beam"
    config.sample.batch_size = 64
    config.eval.every_minutes = 10.0
    config.eval.val_num_samples = 128

    if dataset == "shapes":
        # Two objects a scene and a 32x32 canvas: a step costs a fraction of the scenes' one.
        config.train.update(dict(steps=2000, max_minutes=20.0))

    if smoke:
        make_smoke(config, steps=20, batch_size=8, log_every=5)
        config.data.image_size = 32  # the scenes sprites need 32 pixels
        config.model.network.update(dict(width=16, hidden=16, embed_dim=16))
        config.train.warmup_steps = 5
        config.sample.batch_size = 8
        config.eval.update(dict(num_samples=8, val_num_samples=8))
    return config
