"""Notebook-friendly API: load a trained workdir and generate from it, or train one.

model = jaxgen.load("runs/ddpm")
images = model.generate(["a large red circle"], seed=0)   # uint8 [1, 32, 32, 3]
"""

from pathlib import Path

from jaxgen.training.loop import train_and_evaluate
from jaxgen.training.workdir import TrainedModel, load

__all__ = ["TrainedModel", "load", "load_tokenizer", "stylize", "train"]


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


def stylize(
    content,
    styles,
    *,
    iterations: int | None = None,
    report_every: int = 50,
    seed: int = 0,
    variant: str | None = None,
    return_state: bool = False,
    **options,
):
    """Gatys et al.'s style transfer of ``content`` in the style of ``styles``, the whole
    optimisation one compiled program.

    Args:
      content: a path, a bundled image name (``jaxgen.data.style_images.BUNDLED``) or a uint8
        ``[H, W, 3]`` array (grey and RGBA are converted).
      styles: one such image or a list of them.
      iterations: optimisation iterations (default ``optim.iterations``, 300).
      report_every: the loss and an ETA are printed every that many iterations (0: silent).
      seed: the noise of ``init="noise"``.
      variant: ``experiments/style_transfer.py``'s variant, e.g. ``"vgg"``.
      return_state: also return the final optimisation state (with its per-iteration losses).
      **options: settings of ``experiments/style_transfer.py`` by their key, dotted for nested
        ones: ``image_size=512, style_blend_weights="2,1", preserve_colors="luminance",
        init="noise", features="vgg19.npz", **{"loss.style_weight": 1e4, "optim.scales":
        (0.5, 1.0)}``.

    Returns:
      uint8 ``[H, W, 3]``: the content's aspect ratio, its longer side ``image_size``.
    """
    import jax

    from jaxgen.config import apply_overrides, load_experiment
    from jaxgen.pipelines.style_transfer import StyleTransferPipeline

    config = load_experiment("style_transfer", variant)
    with config.ignore_type():  # arrays as well as paths and names
        config.content = content
        config.style = list(styles) if isinstance(styles, (list, tuple)) else [styles]
        if "mask" in options:
            config.mask = options.pop("mask")
    if iterations is not None:
        options["optim.iterations"] = int(iterations)
        options.setdefault("optim.chunk", int(iterations))
    apply_overrides(config, options)
    config.seed = seed
    pipeline = StyleTransferPipeline(config)
    state = jax.jit(pipeline.init)(jax.random.PRNGKey(seed), None)
    state = pipeline.optimise(state, report_every=report_every)
    result = pipeline.result(state)
    return (result, state) if return_state else result
