"""Sampling speed, the reason to want a GAN: images/s of the default GAN (``experiments/gan.py``,
one generator pass) against the default DDPM sampler (``experiments/ddpm.py``: DDIM-25 with
classifier-free guidance, two UNet passes per step), on the same prompts and batch, in one run.

    python benchmarks/gan_speed.py [--batch=64] [--repeats=5] [--gan_workdir=runs/gan]
        [--ddpm_workdir=runs/ddpm] [--smoke] [--json_out=FILE]

Without workdirs both networks are freshly initialised from their default configs (speed does
not depend on the weights; the CLIPs they would load are not needed). Each call is compiled
first, then the two are timed alternately ``--repeats`` times; the median is reported.
``--smoke`` uses the ``:smoke`` configs (for the tests).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen import data as data_lib  # noqa: E402
from jaxgen.config import load_experiment  # noqa: E402
from jaxgen.training.workdir import build_pipeline  # noqa: E402


def sampler(name: str, workdir: str | None, smoke: bool):
    """``(description, generate(prompts, seed))`` of a trained workdir or a fresh default."""
    if workdir:
        model = api.load(workdir)
        pipe, state = model.pipeline, model.state
    else:
        config = load_experiment(name, "smoke" if smoke else None)
        pipe = build_pipeline(config)
        source = data_lib.build_source(config.data, "train")
        example = {k: np.stack([source[i][k] for i in range(2)]) for k in ("image", "tokens")}
        state = jax.jit(pipe.init)(jax.random.key(0), example)
    sc = pipe.config.sample
    if name == "gan":
        what = f"{pipe.config.model.generator} generator, one pass"
    else:
        what = f"{sc.sampler}-{sc.num_steps}, guidance {sc.guidance_scale}"

    def generate(prompts, seed):
        return pipe.generate(state, prompts, jax.random.key(seed))

    return what, generate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gan_workdir", default="")
    parser.add_argument("--ddpm_workdir", default="")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json_out", default="")
    args = parser.parse_args()
    prompts = [
        "a large red circle left of a small blue square",
        "a small green triangle",
        "a yellow diamond above a cyan circle",
        "a large magenta square",
    ] * (args.batch // 4 + 1)
    prompts = prompts[: args.batch]
    runs = {
        "gan": sampler("gan", args.gan_workdir, args.smoke),
        "ddpm": sampler("ddpm", args.ddpm_workdir, args.smoke),
    }
    times = {name: [] for name in runs}
    for _, generate in runs.values():  # compile
        generate(prompts, 0)
    for r in range(args.repeats):
        for name, (_, generate) in runs.items():
            start = time.perf_counter()
            out = generate(prompts, r + 1)
            times[name].append(time.perf_counter() - start)
            assert out.shape[0] == args.batch
    print(f"backend {jax.default_backend()}, {len(jax.devices())} device(s); batch {args.batch}")
    print("| sampler | what | seconds per batch (median) | images/s |")
    print("|---|---|---:|---:|")
    rate = {}
    for name, (what, _) in runs.items():
        t = statistics.median(times[name])
        rate[name] = args.batch / t
        print(f"| {name} | {what} | {t:.3f} | {rate[name]:.1f} |")
    print(f"GAN / DDPM images per second: {rate['gan'] / rate['ddpm']:.0f}x")
    if args.json_out:
        result = {"batch": args.batch, "images_per_second": rate}
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
