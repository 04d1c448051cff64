"""The generic training state shared by every pipeline.

Each pipeline keeps one subtree per network (``{"unet": ...}``, ``{"G": ..., "D": ...}``) in
``params``, ``opt_state`` and ``ema_params``; the loop only ever sees the whole pytree.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """A pytree holding everything a training run needs to continue.

    Attributes:
      step: scalar int32, the number of updates applied so far.
      params: dict network name -> parameters.
      opt_state: dict network name -> optax state.
      ema_params: dict network name -> exponential moving average of the parameters (or None).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any = None


def ema_decay_at(step: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
    """EMA decay at a step; with warmup, ``min(decay, (1 + step) / (10 + step))``.

    The warmup lets short runs benefit from the average: a fixed 0.9999 would average in the
    random initialisation for the first ~10k steps.
    """
    step = jnp.asarray(step, jnp.float32)
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def make_learning_rate(train_config) -> optax.Schedule:
    """Learning-rate schedule from ``config.train``: linear warmup then constant or cosine."""
    lr = float(train_config.learning_rate)
    warmup = int(train_config.get("warmup_steps", 0))
    kind = train_config.get("lr_schedule", "constant")
    total = int(train_config.steps)
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        final = float(train_config.get("final_lr_fraction", 0.0))
        main = optax.cosine_decay_schedule(lr, max(total - warmup, 1), alpha=final)
    else:
        raise ValueError(f"Unknown train.lr_schedule {kind!r}; valid: 'constant', 'cosine'.")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(train_config) -> optax.GradientTransformation:
    """AdamW with optional global-norm clipping, from ``config.train``."""
    schedule = make_learning_rate(train_config)
    chain = []
    clip = float(train_config.get("grad_clip", 0.0))
    if clip > 0:
        chain.append(optax.clip_by_global_norm(clip))
    chain.append(
        optax.adamw(
            schedule,
            b1=float(train_config.get("b1", 0.9)),
            b2=float(train_config.get("b2", 0.999)),
            weight_decay=float(train_config.get("weight_decay", 0.0)),
        )
    )
    return optax.chain(*chain)


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(model_config) -> jnp.dtype:
    """The activation dtype asked for by ``config.model.dtype`` (parameters stay float32).

    ``"bfloat16"`` is mixed precision: matmuls, convolutions and activations in bfloat16, with
    float32 parameters, optimizer state, EMA, normalisation statistics, softmax and loss.
    """
    name = str(model_config.get("dtype", "float32"))
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"model.dtype={name!r} is not supported; valid: {', '.join(COMPUTE_DTYPES)}"
        )
    return jnp.dtype(name)
