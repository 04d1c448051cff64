"""Style transfer quality, judged by a feature network the optimisation never saw.

    python benchmarks/style_transfer_quality.py                       # the test pairs, defaults
    python benchmarks/style_transfer_quality.py --pairs=val           # the pairs tuned on
    python benchmarks/style_transfer_quality.py --set loss.style_weight=1e9 --set image_size=128
    python benchmarks/style_transfer_quality.py --fast_workdir=runs/style_transfer_fast

For each (content, style) pair of bundled images, ``jaxgen.stylize`` with the experiment's
settings (and ``--set`` overrides), then the judge of ``experiments/style_transfer.py``
(``eval.features``: by default the random network with 3x3 filters and another seed): the
Gram-matrix style distance of the result to the style image, beside the content image's own
(``reduction`` = their ratio; the goal is >= 5), the content distance (relative, at the judge's
content layer) and the colour distance to the content image (Frechet distance of RGB Gaussians).
``--preserve`` adds rows with colour preservation. ``--fast_workdir`` judges a trained
feed-forward network on the same pairs' content images (where the pair's style is the one it was
trained for) beside the optimisation, and times it (images/s at 256x256, batches of 1 and 8).
Results are per pair, with their geometric mean over pairs: there is no sampling to give an
interval for (the optimisation is deterministic from the content image).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

from common import parse_overrides  # noqa: E402

#: (content, style) pairs of bundled images. The weights were chosen on "val"; "test" reports.
PAIRS = {
    "val": (("astronaut", "hubble_deep_field"), ("coffee", "gravel")),
    "test": (
        ("chelsea", "immunohistochemistry"),
        ("rocket", "grass"),
        ("chelsea", "brick"),
        ("coffee", "hubble_deep_field"),
    ),
}
COLUMNS = ("style_distance", "style_distance_of_content", "style_reduction", "content_distance")


def judge(content, style, overrides: dict, iterations: int | None):
    """Stylises one pair and judges it; returns (metrics, seconds)."""
    from jaxgen import api
    from jaxgen.config import apply_overrides, load_experiment
    from jaxgen.pipelines.style_transfer import StyleTransferPipeline

    t0 = time.perf_counter()
    result = api.stylize(content, style, iterations=iterations, report_every=0, **overrides)
    seconds = time.perf_counter() - t0
    config = apply_overrides(load_experiment("style_transfer"), overrides)
    config.content, config.style = content, style
    if iterations:
        config.optim.update(dict(iterations=iterations, chunk=iterations))
    pipeline = StyleTransferPipeline(config)
    out = pipeline.judge_images(result, pipeline.content, pipeline.styles, pipeline.blend)
    return out, seconds, result


def judge_fast(workdir: str, content: str, style: str):
    from jaxgen import api

    model = api.load(workdir)
    pipeline = model.pipeline
    if str(model.config.style) != style:
        return None
    from jaxgen.data import style_images
    from jaxgen.pipelines.style_transfer import _load_styles

    image = style_images.fit(style_images.load_image(content), pipeline.eval_size)
    styles, blend = _load_styles(model.config, image)
    result = pipeline.stylize_image(model.state, image)
    return pipeline.judge_images(result, image, styles, blend)


def fast_speed(workdir: str, size: int = 256, batch: int = 1, repeats: int = 10) -> float:
    """Images per second of the trained feed-forward network at ``size x size`` (compiled,
    warm, median of ``repeats`` calls)."""
    import statistics

    import jax
    import jax.numpy as jnp

    from jaxgen import api

    model = api.load(workdir)
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    forward = model.pipeline._forward
    jax.block_until_ready(forward(model.state.params, x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(forward(model.state.params, x))
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", choices=tuple(PAIRS), default="test")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--preserve", action="store_true", help="also colour preservation")
    parser.add_argument("--fast_workdir", default="")
    parser.add_argument("--save_dir", default="", help="write each result as a PNG here")
    parser.add_argument("--json_out", default="")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    variants = {"default": {}}
    if args.preserve:
        variants["luminance"] = {"preserve_colors": "luminance"}
        variants["histogram"] = {"preserve_colors": "histogram"}
    rows = []
    for content, style in PAIRS[args.pairs]:
        for name, extra in variants.items():
            out, seconds, result = judge(content, style, {**overrides, **extra}, args.iterations)
            rows.append(dict(pair=f"{content}/{style}", variant=name, seconds=seconds, **out))
            if args.save_dir:
                from PIL import Image

                Path(args.save_dir).mkdir(parents=True, exist_ok=True)
                Image.fromarray(result).save(Path(args.save_dir) / f"{content}_{style}_{name}.png")
            print(json.dumps(rows[-1]), flush=True)
        if args.fast_workdir:
            out = judge_fast(args.fast_workdir, content, style)
            if out is not None:
                rows.append(dict(pair=f"{content}/{style}", variant="fast", seconds=0.0, **out))
                print(json.dumps(rows[-1]), flush=True)

    header = ["pair", "variant", *COLUMNS, "color_distance_to_content", "seconds"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["pair"], r["variant"]] + [f"{r[c]:.4g}" for c in header[2:]]
        print("| " + " | ".join(cells) + " |")
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vals = [r["style_reduction"] for r in rows if r["variant"] == variant]
        summary[variant] = math.exp(sum(math.log(v) for v in vals) / len(vals))
        print(f"{variant}: geometric mean style reduction {summary[variant]:.3g} over {len(vals)}")
    if args.fast_workdir:
        for batch in (1, 8):
            rate = fast_speed(args.fast_workdir, batch=batch)
            summary[f"fast_images_per_second_256_batch{batch}"] = rate
            print(f"fast variant: {rate:.2f} images/s at 256x256, batch {batch}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return summary


if __name__ == "__main__":
    main()
