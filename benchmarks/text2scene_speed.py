"""Speed of Text2Scene: training scenes/s (the loop's jitted step with real batches, and its XLA
FLOPs) and decoding scenes/s for greedy decoding, sampling and beam search, each a compiled call
on one batch of validation descriptions timed after a compiling call.

    python benchmarks/text2scene_speed.py [--config=experiments/text2scene.py] [--workdir=W]
        [--steps=10] [--repeats=3] [--beam=4]

With ``--workdir`` the decoders use that run's trained parameters (decoding stops early for no
one: every call runs all steps, so the timing does not depend on the parameters much); without,
a fresh initialisation. Medians of ``--repeats`` rounds.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import jax  # noqa: E402
from common import parse_overrides, train_throughput  # noqa: E402

from jaxgen import api  # noqa: E402
from jaxgen.config import apply_overrides, load_experiment  # noqa: E402
from jaxgen.data import scenes  # noqa: E402
from jaxgen.training import workdir as workdir_lib  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/text2scene.py")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam", type=int, default=4)
    args = parser.parse_args()
    try:
        if args.workdir:
            model = api.load(args.workdir, parse_overrides(args.set))
            config, pipe, state = model.config, model.pipeline, model.state
        else:
            config = apply_overrides(load_experiment(args.config), parse_overrides(args.set))
            pipe = workdir_lib.build_pipeline(config)
            state = None
    except (NoCheckpointError, ValueError) as e:  # not a workdir, or a bad --set key
        raise SystemExit(f"error: {e}") from None
    if config.pipeline != "text2scene":
        raise SystemExit(f"{args.config or args.workdir} is a {config.pipeline!r} config.")
    train = train_throughput(config, "text2scene", args.steps)
    if state is None:
        item = scenes.ScenesSource("train", int(config.data.image_size))[0]
        state = pipe.init(jax.random.key(0), {k: v[None] for k, v in item.items()})
    batch = int(config.sample.batch_size)
    source = scenes.ScenesSource("val", int(config.data.image_size))
    prompts = [source.truth(i)["caption"] for i in range(batch)]
    decodings = {
        "greedy": {"decoding": "greedy"},
        "sample": {"decoding": "sample"},
        f"beam {args.beam}": {"decoding": "beam", "beam_size": args.beam},
    }
    speeds = {name: [] for name in decodings}
    for name, options in decodings.items():
        pipe.compose(state, prompts, jax.random.key(0), **options)  # compiles
        for r in range(args.repeats):
            start = time.perf_counter()
            pipe.compose(state, prompts, jax.random.key(r), **options)
            speeds[name].append(batch / (time.perf_counter() - start))
    print(f"\ntext2scene ({args.workdir or args.config}), jax {jax.__version__}\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| training scenes/s (batch {train['batch_size']}) | {train['images_per_second']:.1f} |")
    print(f"| training step GFLOP | {train['step_gflop']:.1f} |")
    print(f"| training GFLOP/s | {train['achieved_gflop_per_s']:.1f} |")
    print(f"| parameters | {train['parameters']:,} |")
    for name, values in speeds.items():
        print(f"| decoding scenes/s, {name} (batch {batch}) | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
