"""Forms of a 3x3 convolution on this backend: XLA's native convolution against im2col.

    python benchmarks/conv_forms.py [--reps=20] [--json_out=FILE] [--shapes=B,S,CIN,COUT,STRIDE ...]

For each shape (default: the package's, from the DDPM UNet, the autoencoders and the GAN), times
jitted forward, and forward + backward (input and kernel gradients of a sum of squares), of:

- ``xla``: ``jax.lax.conv_general_dilated`` with padding 1, what ``layers.Conv3x3`` computes;
- ``im2col``: a pad, nine strided slices concatenated on the channels and one matmul (the form
  ``layers.Conv3x3`` used on CPUs until jax 0.10.2's native convolution measured faster);

and, at stride 1, the kernel gradient alone computed by XLA's autodiff against nine shifted
matmuls (one ``einsum`` over batch and space per kernel tap). Each time is the median of
``--reps`` calls; the contenders of a shape run one after the other in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from common import median, timed  # noqa: E402

SHAPES = (
    (32, 16, 64, 64, 1),
    (32, 16, 128, 64, 1),
    (32, 8, 128, 128, 1),
    (32, 8, 256, 128, 1),
    (32, 4, 128, 128, 1),
    (32, 4, 256, 128, 1),
    (32, 16, 12, 64, 1),
    (32, 16, 64, 12, 1),
    (64, 32, 32, 32, 1),
    (64, 16, 64, 32, 1),
    (64, 8, 128, 64, 1),
    (32, 32, 64, 64, 1),
    (32, 16, 64, 64, 2),
    (32, 8, 128, 128, 2),
    (64, 32, 32, 32, 2),
    (64, 16, 64, 64, 2),
)


def conv_xla(x, k, s):
    return jax.lax.conv_general_dilated(
        x, k, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_im2col(x, k, s):
    b, h, w, c = x.shape
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [
        xp[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
        for i in range(3)
        for j in range(3)
    ]
    return jnp.dot(jnp.concatenate(taps, axis=-1), k.reshape(9 * c, k.shape[-1]))


def kernel_grad_shifted(x, g):
    """dL/dk of a stride-1 conv as nine matmuls over batch and space, one per kernel tap."""
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [
        jnp.stack([jnp.einsum("bhwc,bhwd->cd", xp[:, i : i + h, j : j + w], g) for j in range(3)])
        for i in range(3)
    ]
    return jnp.stack(rows)


def time_fn(fn, args, reps: int) -> float:
    fn = jax.jit(fn)
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    return median([timed(lambda: fn(*args)) for _ in range(reps)])


def measure(shape, reps: int) -> dict:
    b, side, cin, cout, s = shape
    x = jax.random.normal(jax.random.key(0), (b, side, side, cin))
    k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * (9 * cin) ** -0.5
    row = {"shape": list(shape)}
    ref = conv_xla(x, k, s)
    row["im2col_error"] = float(jnp.abs(conv_im2col(x, k, s) - ref).max() / jnp.abs(ref).max())
    for name, conv in (("xla", conv_xla), ("im2col", conv_im2col)):

        def loss(x, k, conv=conv):
            return jnp.sum(jnp.square(conv(x, k, s)))

        row[f"{name}_forward_ms"] = 1e3 * time_fn(lambda x, k, c=conv: c(x, k, s), (x, k), reps)
        row[f"{name}_train_ms"] = 1e3 * time_fn(jax.grad(loss, argnums=(0, 1)), (x, k), reps)
    if s == 1:
        g = jax.random.normal(jax.random.key(2), (b, side, side, cout))
        auto = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv_xla(x, k, 1), k)[1](g)[0])
        error = jnp.abs(kernel_grad_shifted(x, g) - auto(x, k, g)).max()
        row["kernel_grad_error"] = float(error / jnp.abs(auto(x, k, g)).max())
        row["kernel_grad_xla_ms"] = 1e3 * time_fn(auto, (x, k, g), reps)
        row["kernel_grad_shifted_ms"] = 1e3 * time_fn(kernel_grad_shifted, (x, g), reps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--shapes", nargs="*", help="B,SIDE,CIN,COUT,STRIDE (default: the set)")
    parser.add_argument("--json_out", type=Path)
    args = parser.parse_args()
    try:
        shapes = [tuple(int(v) for v in t.split(",")) for t in args.shapes or []] or SHAPES
    except ValueError:
        raise SystemExit("error: --shapes takes B,SIDE,CIN,COUT,STRIDE (integers)") from None
    if any(len(t) != 5 or t[4] not in (1, 2) for t in shapes):
        raise SystemExit("error: --shapes takes B,SIDE,CIN,COUT,STRIDE with stride 1 or 2")
    print(f"# jax {jax.__version__}, {jax.default_backend()} x{jax.device_count()}")
    print(
        "\n| batch, side, in, out, stride | forward im2col / XLA ms | train im2col / XLA ms "
        "| train im2col / XLA | kernel grad shifted / XLA ms |\n|---|---|---|---:|---|"
    )
    rows = []
    for shape in shapes:
        r = measure(shape, args.reps)
        rows.append(r)
        kg = (
            f"{r['kernel_grad_shifted_ms']:.2f} / {r['kernel_grad_xla_ms']:.2f}"
            if "kernel_grad_xla_ms" in r
            else ""
        )
        print(
            f"| {', '.join(map(str, shape))} | {r['im2col_forward_ms']:.2f} / "
            f"{r['xla_forward_ms']:.2f} | {r['im2col_train_ms']:.2f} / {r['xla_train_ms']:.2f} "
            f"| {r['im2col_train_ms'] / r['xla_train_ms']:.2f} | {kg} |",
            flush=True,
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
