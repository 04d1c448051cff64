"""Speed of Text2Scene: training scenes/s (the loop's jitted step with real batches, and its XLA
FLOPs) and decoding scenes/s for greedy decoding, sampling and beam search, each a compiled call
on one batch of validation descriptions timed after a compiling call; with ``--peers``, the
images/s of ``generate`` (layouts decoded and drawn) beside other families' ``generate`` on the
same ``shapes`` prompts, in the same process.

    python benchmarks/text2scene_speed.py [--config=experiments/text2scene.py] [--workdir=W]
        [--steps=10] [--repeats=3] [--beam=4] [--peers=ddpm,dalle --peer_batch=16]

With ``--workdir`` the decoders use that run's trained parameters (decoding stops early for no
one: every call runs all steps, so the timing does not depend on the parameters much); without,
a fresh initialisation. Peers are experiments (``ddpm``, ``dalle``, ``experiments/x.py:variant``)
freshly initialised with the runs they build on (their speed does not depend on the weights),
sampled with their configs' default settings, one image per prompt, rounds interleaved with the
layouts'. Medians of ``--repeats`` rounds.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jaxgen from the checkout

import jax  # noqa: E402
from common import (  # noqa: E402
    example_batch,
    fresh_run,
    median,
    parse_overrides,
    timed,
    train_throughput,
)

from jaxgen import api  # noqa: E402
from jaxgen import data as data_lib  # noqa: E402
from jaxgen.config import apply_overrides, load_experiment  # noqa: E402
from jaxgen.training import workdir as workdir_lib  # noqa: E402
from jaxgen.training.checkpoint import NoCheckpointError  # noqa: E402


def peer_speeds(pipe, state, config, peers, batch, repeats) -> dict[str, float]:
    """Images/s of ``generate`` for the layouts and each peer experiment, on the same ``batch``
    ``shapes`` validation prompts, rounds interleaved."""
    source = data_lib.build_source(config.data, "val")
    prompts = [source.truth(i)["caption"] for i in range(batch)]
    runs = {"text2scene layouts": (pipe, state)}
    for spec in peers:
        run = fresh_run(load_experiment(spec))
        if run.config.data.name != "shapes":
            raise SystemExit(f"peer {spec} is trained on {run.config.data.name!r}, not shapes.")
        runs[spec] = (run.pipeline, run.state)
    seconds = {name: [] for name in runs}
    for r in range(repeats + 1):  # round 0 compiles
        for name, (p, st) in runs.items():
            s = timed(lambda p=p, st=st, r=r: p.generate(st, prompts, jax.random.key(r)))
            seconds[name] += [s] if r else []
    return {name: batch / median(v) for name, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/text2scene.py")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--peers", default="", help="experiments to time beside the layouts")
    parser.add_argument("--peer_batch", type=int, default=16, help="prompts per generate call")
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
    peers = [p for p in args.peers.split(",") if p]
    if peers and config.data.name != "shapes_layouts":
        raise SystemExit("--peers times layouts of shapes: use experiments/text2scene.py:shapes.")
    train = train_throughput(config, "text2scene", args.steps)
    if state is None:
        state = pipe.init(jax.random.key(0), example_batch(config, 1))
    batch = int(config.sample.batch_size)
    source = data_lib.build_source(config.data, "val")
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
            s = timed(lambda r=r, o=options: pipe.compose(state, prompts, jax.random.key(r), **o))
            speeds[name].append(batch / s)
    print(f"\ntext2scene ({args.workdir or args.config}), jax {jax.__version__}\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| training scenes/s (batch {train['batch_size']}) | {train['images_per_second']:.1f} |")
    print(f"| training step GFLOP | {train['step_gflop']:.1f} |")
    print(f"| training GFLOP/s | {train['achieved_gflop_per_s']:.1f} |")
    print(f"| parameters | {train['parameters']:,} |")
    for name, values in speeds.items():
        print(f"| decoding scenes/s, {name} (batch {batch}) | {median(values):.1f} |")
    if peers:
        speeds = peer_speeds(pipe, state, config, peers, args.peer_batch, args.repeats)
        ours = speeds["text2scene layouts"]
        for name, value in speeds.items():
            print(f"| generate images/s, {name} (batch {args.peer_batch}) | {value:.2f} |")
        for name in peers:
            print(f"| text2scene layouts / {name} | {ours / speeds[name]:.2f} |")


if __name__ == "__main__":
    main()
