"""DALL-E's dVAE (Ramesh et al. 2021).

Settings and variants: experiments/autoencoders.py
(``--config=experiments/dvae.py[:digits][,smoke]``).
"""

from pathlib import Path

from jaxgen.config import load_experiment


def get_config(arg: str | None = None):
    variant = ",".join(["dvae", *([arg] if arg else [])])
    return load_experiment(str(Path(__file__).with_name("autoencoders.py")), variant)
