"""How fast can the GAN discriminator's image path learn what a `shapes` image shows?

Trains the downsampler of ``models.gan.Discriminator`` with its auxiliary heads as a plain
supervised classifier of real images' content (``shapes.parse_labels``: each object's colour,
shape and size, in spatial order, and the axis), with Adam at the GAN's settings, and prints each
field's accuracy on 512 test-split images every ``--every`` steps. A generator can only learn
what its discriminator can tell apart, so this bounds how fast the GAN can learn each attribute.

Inputs (``--inputs``, comma-separated): ``rgb`` (D as it is), ``rgb+silhouette`` (D with
``silhouette=True``: a second stream on each pixel's brightest channel) and ``silhouette`` (the
plain D fed that brightest channel alone, repeated over RGB: colour-blind).

    python benchmarks/d_content_probe.py --steps=600
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.config import load_experiment
from jaxgen.data import build_source
from jaxgen.data.pipeline import make_batch_iterator
from jaxgen.data.shapes import PARSE_CLASSES, PARSE_FIELDS, ShapesSource
from jaxgen.models.gan import Discriminator, silhouette
from jaxgen.pipelines.clip import parse_loss
from jaxgen.pipelines.ddpm import to_model_space

INPUTS = ("rgb", "rgb+silhouette", "silhouette")


def _images(kind: str, uint8_images) -> jax.Array:
    x = to_model_space(jnp.asarray(uint8_images))
    if kind == "silhouette":
        return jnp.repeat(silhouette(x), 3, axis=-1)
    return x


def _no_text(n: int) -> jax.Array:
    """A placeholder text embedding: the auxiliary heads read the image alone."""
    return jnp.zeros((n, 8))


def probe(kind: str, data_config, steps: int, every: int, batch_size: int, lr: float, ch: int):
    """Trains one classifier; returns [(step, seconds, per-field accuracies)]."""
    size = int(data_config.image_size)
    d = Discriminator(size, ch, aux_classes=PARSE_CLASSES, silhouette=kind == "rgb+silhouette")
    train = make_batch_iterator(
        build_source(data_config, "train"), batch_size=batch_size, seed=0, num_threads=0
    )
    test_source = ShapesSource(
        split="test", image_size=size, seed=int(data_config.seed), parse_labels=True
    )
    test = next(make_batch_iterator(test_source, batch_size=512, seed=1, num_threads=0))
    first = next(train)
    params = d.init(jax.random.key(0), _images(kind, first["image"]), _no_text(batch_size))
    params = params["params"]
    tx = optax.adam(lr, 0.5, 0.999)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            _, aux = d.apply({"params": p}, _images(kind, images), _no_text(len(images)))
            return parse_loss(aux, labels)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, images, labels):
        _, aux = d.apply({"params": params}, _images(kind, images), _no_text(len(images)))
        return jnp.stack([jnp.mean(jnp.argmax(a, -1) == labels[:, i]) for i, a in enumerate(aux)])

    rows, start = [], time.perf_counter()
    for i in range(1, steps + 1):
        batch = next(train)
        params, opt_state, _ = step(params, opt_state, batch["image"], batch["parse"])
        if i % every == 0 or i == steps:
            acc = np.asarray(accuracy(params, test["image"], test["parse"]))
            rows.append((i, time.perf_counter() - start, acc))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ch", type=int, default=32, help="D's width (model.d_ch)")
    parser.add_argument("--inputs", default=",".join(INPUTS))
    args = parser.parse_args()
    kinds = args.inputs.split(",")
    if unknown := set(kinds) - set(INPUTS):
        parser.error(f"unknown --inputs {sorted(unknown)}; valid: {', '.join(INPUTS)}")
    data_config = load_experiment("gan_int_cls", "aux").data
    fields = [name for name, _ in PARSE_FIELDS]
    print(f"{jax.devices()[0].device_kind}; test-split accuracy of 512 images per field")
    print("| inputs | step | s | " + " | ".join(fields) + " |")
    print("|---|---:|---:|" + "---:|" * len(fields))
    for kind in kinds:
        rows = probe(kind, data_config, args.steps, args.every, args.batch_size, args.lr, args.ch)
        for i, seconds, acc in rows:
            cells = " | ".join(f"{a:.3f}" for a in acc)
            print(f"| {kind} | {i} | {seconds:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
