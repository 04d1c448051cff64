"""jaxgen: classic text-to-image models in JAX/Flax."""

__version__ = "0.1.0"


def load(workdir, overrides=None):
    """Loads a trained workdir; see ``jaxgen.api.load``."""
    from jaxgen.api import load as _load

    return _load(workdir, overrides)


def train(config, workdir):
    """Trains a config into a workdir; see ``jaxgen.api.train``."""
    from jaxgen.api import train as _train

    return _train(config, workdir)


def load_tokenizer(workdir):
    """Loads a trained image tokenizer; see ``jaxgen.api.load_tokenizer``."""
    from jaxgen.api import load_tokenizer as _load_tokenizer

    return _load_tokenizer(workdir)


def stylize(content, styles, **options):
    """Gatys et al.'s neural style transfer of one image; see ``jaxgen.api.stylize``."""
    from jaxgen.api import stylize as _stylize

    return _stylize(content, styles, **options)
