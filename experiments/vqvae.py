"""VQ-VAE (van den Oord et al. 2017).

Settings and variants: experiments/autoencoders.py
(``--config=experiments/vqvae.py[:digits][,smoke]``).
"""

from pathlib import Path

from jaxgen.config import load_experiment


def get_config(arg: str | None = None):
    variant = ",".join(["vqvae", *([arg] if arg else [])])
    return load_experiment(str(Path(__file__).with_name("autoencoders.py")), variant)
