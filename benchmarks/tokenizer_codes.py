"""How a trained tokenizer writes the background: distinct codes on all-black cells.

    python benchmarks/tokenizer_codes.py WORKDIR [WORKDIR ...] [--images=64] [--split=val]

For each tokenizer workdir (experiments/vqvae.py, vqgan.py, dvae.py, with or without ``:cell``),
encodes ``--images`` images of the split it was trained on and reports, over the token cells
whose pixels are all black: how many there are, how many distinct codes write them, the most
frequent code's share and the entropy of their codes (bits); and over all cells, the distinct
codes used and their entropy. A transformer over the tokens has to learn every way one
background is written; DALL-E's tokenizer (``:cell``) writes it one way by construction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxgen  # noqa: E402
from jaxgen import data as data_lib  # noqa: E402


def entropy_bits(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(np.sum(p * np.log2(1.0 / p)))


def black_cell_codes(images: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Codes of the cells of ``images`` ([N, S, S, 3] uint8) that are all black, given the
    token grid ``codes`` ([N, g, g])."""
    n, size = images.shape[:2]
    grid = codes.shape[1]
    cell = size // grid
    cells = images.reshape(n, grid, cell, grid, cell, 3).max(axis=(2, 4, 5))
    return codes[cells == 0]


def measure(workdir: str, num_images: int, split: str) -> dict:
    model = jaxgen.load(workdir)
    tokenizer = model.pipeline.tokenizer(model.state)
    source = data_lib.build_source(model.config.data, split)
    images = np.stack([source[i]["image"] for i in range(num_images)])
    codes = np.asarray(jax.jit(tokenizer.encode)(images))
    black = black_cell_codes(images, codes)
    values, counts = np.unique(black, return_counts=True)
    return {
        "workdir": workdir,
        "encoder": str(model.config.model.get("encoder", "conv")),
        "codes": int(model.pipeline.num_codes),
        "black_cells": int(black.size),
        "black_distinct_codes": int(values.size),
        "black_top_share": float(counts.max() / counts.sum()) if black.size else 0.0,
        "black_entropy_bits": entropy_bits(black) if black.size else 0.0,
        "all_distinct_codes": int(np.unique(codes).size),
        "all_entropy_bits": entropy_bits(codes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--split", default="val")
    parser.add_argument("--json_out", default="")
    args = parser.parse_args()
    rows = [measure(w, args.images, args.split) for w in args.workdirs]
    for row in rows:
        print(json.dumps(row))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
