"""Notebook-friendly API: load a trained workdir and generate from it, or train one.

model = jaxgen.load("runs/ddpm")
images = model.generate(["a large red circle"], seed=0)   # uint8 [1, 32, 32, 3]
"""

from pathlib import Path

from jaxgen.training.loop import train_and_evaluate
from jaxgen.training.workdir import TrainedModel, load

__all__ = ["TrainedModel", "load", "load_tokenizer", "train"]


def train(config, workdir: str | Path) -> dict:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final evaluation."""
    return train_and_evaluate(config, workdir)


def load_tokenizer(workdir: str | Path):
    """The image tokenizer trained in ``workdir`` (experiments/vqvae.py, vqgan.py or dvae.py):
    ``encode(images) -> int32 [B, h, w]`` and ``decode(tokens) -> uint8 images``, both
    jittable (``jaxgen.pipelines.autoencoder.Tokenizer``)."""
    model = load(workdir)
    if not hasattr(model.pipeline, "tokenizer"):
        raise ValueError(
            f"{workdir} holds a {model.config.pipeline!r} model, not a discrete tokenizer "
            "(vqvae, vqgan, dvae)."
        )
    return model.pipeline.tokenizer(model.state)
