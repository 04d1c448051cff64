"""How fast can the GAN generator learn to draw a `shapes` scene when told exactly what it is?

Trains the GAN pipeline's generator (``GANINTCLSPipeline.G``, built from the GAN config and the
flags) as a plain supervised renderer: its text input is the scene spelled out (``scene_vector``:
per object slot, present, colour, shape and size one-hot and the box), z is zero, and the loss is
the pixel error against the real image (``--loss``: l2 or l1), with Adam, at the config's image
size. Every ``--every`` steps the judge scores its renderings of 512 test-split scenes; ``--grid``
saves the last renderings of the first 16 beside the real images. This is the easiest form of the
GAN generator's task: nothing is left to guess from z or the caption, and no discriminator stands
between G and the exact target.

    python benchmarks/g_draw_probe.py --steps=2000 --every=250 --lr=1e-3
    python benchmarks/g_draw_probe.py --steps=800 --every=250 --grid=g_draw_800.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.config import load_experiment
from jaxgen.data import shapes
from jaxgen.evaluation import shapes_judge
from jaxgen.models.gan import G_NORMS
from jaxgen.pipelines import build_pipeline
from jaxgen.pipelines.ddpm import to_model_space, to_uint8
from jaxgen.training.images import make_grid, save_png

MAX_OBJECTS = 2
SLOT = 1 + len(shapes.COLOUR_NAMES) + len(shapes.SHAPES) + len(shapes.SIZES) + 4


def scene_vector(truth: dict, image_size: int) -> np.ndarray:
    """A ``shapes`` ground truth as a float32 vector ``[MAX_OBJECTS * SLOT]``: per object slot,
    in the truth's order, 1 if present, the colour, shape and size one-hot, and the box
    ``(x0, y0, x1, y1)`` scaled from ``[0, image_size]`` to ``[-1, 1]``; zeros for an empty slot."""
    out = np.zeros((MAX_OBJECTS, SLOT), np.float32)
    for slot, obj in enumerate(truth["objects"]):
        c = 1 + shapes.COLOUR_NAMES.index(obj["colour"])
        s = 1 + len(shapes.COLOUR_NAMES) + shapes.SHAPES.index(obj["shape"])
        z = 1 + len(shapes.COLOUR_NAMES) + len(shapes.SHAPES) + shapes.SIZES.index(obj["size"])
        out[slot, [0, c, s, z]] = 1.0
        out[slot, -4:] = np.asarray(obj["box"], np.float32) / image_size * 2.0 - 1.0
    return out.reshape(-1)


def _batch(source: shapes.ShapesSource, indices) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    examples = [source.example(int(i)) for i in indices]
    vectors = np.stack([scene_vector(e, source.image_size) for e in examples])
    images = to_model_space(np.stack([e["image"] for e in examples]))
    return vectors, images, examples


def probe(config, steps: int, every: int, batch_size: int, lr: float, loss: str, seed: int):
    """Trains one renderer; yields (step, seconds, loss, judge accuracies, renderings of the
    test scenes) every ``every`` steps."""
    g = build_pipeline(config).G
    size = int(config.data.image_size)
    train = shapes.ShapesSource("train", size)
    test_vectors, _, test_truths = _batch(shapes.ShapesSource("test", size), range(512))
    z_dim = int(config.model.z_dim)
    params = g.init(jax.random.key(seed), jnp.zeros((1, z_dim)), test_vectors[:1])["params"]
    tx = optax.adam(lr, 0.5, 0.999)
    opt_state = tx.init(params)

    def render(params, vectors):
        return g.apply({"params": params}, jnp.zeros((len(vectors), z_dim)), vectors)

    @jax.jit
    def step(params, opt_state, vectors, images):
        def loss_fn(p):
            err = render(p, vectors) - images
            return jnp.mean(jnp.abs(err)) if loss == "l1" else jnp.mean(jnp.square(err))

        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    render_jit = jax.jit(render)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        vectors, images, _ = _batch(train, rng.integers(0, len(train), batch_size))
        params, opt_state, value = step(params, opt_state, vectors, images)
        if i % every == 0 or i == steps:
            renderings = np.asarray(render_jit(params, test_vectors))
            judged = shapes_judge.judge_batch(renderings, test_truths)
            yield i, time.perf_counter() - start, float(value), judged, renderings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", default="l2", choices=("l2", "l1"))
    parser.add_argument("--ch", type=int, help="G's width (model.g_ch; default the GAN's)")
    parser.add_argument("--norm", choices=G_NORMS, help="model.g_norm (default the GAN's)")
    parser.add_argument("--coords", action="store_true", help="model.g_coords")
    parser.add_argument("--conditional", action="store_true", help="model.g_conditional")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", help="PNG path: real test scenes over the last renderings")
    args = parser.parse_args()
    config = load_experiment("gan_int_cls")
    model_config = config.model
    model_config.g_ch = args.ch or model_config.g_ch
    model_config.g_norm = args.norm or model_config.g_norm
    model_config.g_coords = args.coords
    model_config.g_conditional = args.conditional
    print(
        f"{jax.devices()[0].device_kind}; G ch {model_config.g_ch}, norm {model_config.g_norm}, "
        f"coords {model_config.g_coords}, conditional {model_config.g_conditional}; {args.loss}, "
        f"Adam {args.lr:g}, batch {args.batch_size}; judge on 512 test-split scenes"
    )
    fields = ("colour", "shape", "size", "relation")
    print("| step | s | loss | " + " | ".join(fields) + " |")
    print("|---:|---:|---:|" + "---:|" * len(fields))
    rows = probe(config, args.steps, args.every, args.batch_size, args.lr, args.loss, args.seed)
    for i, seconds, value, judged, renderings in rows:
        cells = " | ".join(f"{judged[k]:.3f}" for k in fields)
        print(f"| {i} | {seconds:.0f} | {value:.4f} | {cells} |", flush=True)
        last = renderings
    if args.grid:
        drawn = np.asarray(to_uint8(last[:16]))
        test = shapes.ShapesSource("test", int(config.data.image_size))
        real = np.stack([test.example(j)["image"] for j in range(16)])
        save_png(make_grid(np.concatenate([real, drawn]), ncols=16), args.grid, scale=4)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
