"""The parts of a trained CLIP run that other pipelines build on (DDPM's and the GAN's text
encoders), read from a loaded run (``Pipeline.load_run``) with checks that name what differs.

Shared by the families, so it lives beside ``base`` rather than in the CLIP pipeline: no
pipeline module imports another.
"""

from __future__ import annotations

import jax
import numpy as np


def shapes_match(like, params) -> bool:
    """Whether ``params`` has the tree structure and array shapes of ``like`` (None: any)."""
    return like is None or jax.tree.map(np.shape, like) == jax.tree.map(np.shape, params)


def clip_params(run, what: str = "CLIP weights", causal: bool | None = None) -> dict:
    """The (EMA) parameters of a trained CLIP run, as numpy arrays.

    Args:
      run: a loaded run (``config``, ``state``, ``workdir``) of ``experiments/clip.py``.
      what: what the caller loads, for the error when the run is another pipeline's.
      causal: the attention the loading model's text encoder uses (``model.text.causal``); it
        must be the CLIP's, which the parameter shapes cannot show (ValueError otherwise).
        None skips the check.
    """
    config = run.config
    if config.pipeline != "clip":
        raise ValueError(
            f"{run.workdir} holds a {config.pipeline!r} run; {what} can only be loaded from "
            "a CLIP run (experiments/clip.py)."
        )
    trained_causal = bool(config.model.text.get("causal", False))
    if causal is not None and bool(causal) != trained_causal:
        raise ValueError(
            f"The CLIP text encoder in {run.workdir} was trained with model.text.causal="
            f"{trained_causal}, but this model's model.text.causal={bool(causal)}: the same "
            "weights would compute other features. Set model.text.causal to the CLIP run's."
        )
    return jax.device_get(run.state.ema_params["clip"])


def text_encoder_params(run, like=None, causal: bool | None = None) -> dict:
    """The (EMA) ``TextEncoder`` parameters of a trained CLIP run, as numpy arrays.

    Args:
      run: a loaded CLIP run.
      like: optional parameter tree the result must match (structure and shapes), e.g. the
        text encoder of a DDPM UNet; a mismatch is a ValueError naming the CLIP's settings.
      causal: checked against the CLIP's ``model.text.causal`` (``clip_params``).
    """
    params = clip_params(run, "a text encoder", causal)["text"]["encoder"]
    if not shapes_match(like, params):
        config = run.config
        raise ValueError(
            f"The text encoder of {run.workdir} (model.text={config.model.text.to_dict()}, "
            f"data.max_text_len={config.data.max_text_len}) does not have the shape this "
            "model's model.text and data.max_text_len ask for; train CLIP with the same text "
            "settings."
        )
    return params
