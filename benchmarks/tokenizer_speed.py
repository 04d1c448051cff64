"""Speed of the autoencoder family: training images/s of each default config, and the
tokenizers' encode and decode throughput.

    python benchmarks/tokenizer_speed.py [--kinds=vae,dvae:cell] [--steps=8] [--batch=256] \
        [--smoke] [--json_out=FILE]

Training is the loop's jitted, donated train step with real batches (``common.Trainer``); VQGAN is
measured twice, before its discriminator starts and with it on (``gan.start_step=0``). Encode and
decode are the jitted tokenizer functions on ``--batch`` images; speed does not depend on the
weights, so freshly initialised ones are used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import log, median, timed, train_throughput  # noqa: E402

from jaxgen.config import load_experiment  # noqa: E402
from jaxgen.pipelines import build_pipeline  # noqa: E402

KINDS = ("vae", "vqvae", "vqgan", "dvae")


def codec_throughput(config, batch: int, reps: int) -> dict:
    """Images/s of jitted encode and decode (and the token grid) of one config."""
    pipe = build_pipeline(config)
    size = pipe.size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    state = pipe.init(
        jax.random.key(0), {"image": images[:2], "tokens": np.zeros((2, 8), np.int32)}
    )
    encode = jax.jit(pipe.encode)
    decode = jax.jit(pipe.decode)
    images = jnp.asarray(images)
    codes = jax.block_until_ready(encode(state.params, images))
    jax.block_until_ready(decode(state.params, codes))
    enc = median([timed(lambda: encode(state.params, images)) for _ in range(reps)])
    dec = median([timed(lambda: decode(state.params, codes)) for _ in range(reps)])
    return {
        "encode_images_per_second": batch / enc,
        "decode_images_per_second": batch / dec,
        "grid": list(codes.shape[1:3]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed train steps per config")
    parser.add_argument("--batch", type=int, default=256, help="images per encode/decode call")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="the tiny :smoke configs (tests)")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated experiments, each a kind with an optional :variant (dvae:cell)",
    )
    parser.add_argument("--json_out", type=Path)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPU cores, jax {jax.__version__}, {jax.default_backend()}")
    rows = []
    for spec in args.kinds.split(","):
        kind, _, variant = spec.partition(":")
        variant = ",".join(v for v in (variant, "smoke" if args.smoke else "") if v) or None
        config = load_experiment(kind, variant)
        log(f"{spec}: training step")
        row = {"kind": spec, **train_throughput(config, f"experiments/{spec}.py", args.steps)}
        if kind == "vqgan":
            config.gan.start_step = 0
            on = train_throughput(config, "vqgan, discriminator on", args.steps)
            row["images_per_second_with_discriminator"] = on["images_per_second"]
        log(f"{spec}: encode/decode")
        row.update(codec_throughput(load_experiment(kind, variant), args.batch, args.reps))
        rows.append(row)
    print("\n| model | params | train img/s (batch) | encode img/s | decode img/s | tokens |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        train = f"{r['images_per_second']:.1f} ({r['batch_size']})"
        if "images_per_second_with_discriminator" in r:
            train += f"; {r['images_per_second_with_discriminator']:.1f} with D"
        grid = "x".join(map(str, r["grid"]))
        kind = "continuous" if r["kind"] == "vae" else "discrete"
        print(
            f"| {r['kind']} | {r['parameters'] / 1e6:.2f}M | {train} | "
            f"{r['encode_images_per_second']:.0f} | {r['decode_images_per_second']:.0f} | "
            f"{grid} {kind} |"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
