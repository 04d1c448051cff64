"""Pixel conversions between the datasets' uint8 images and the models' [-1, 1] floats."""

import jax
import jax.numpy as jnp


def to_model_space(images: jax.Array) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> float32 in [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float in [-1, 1] -> uint8 ``[B, H, W, 3]`` (rounded, clipped)."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
