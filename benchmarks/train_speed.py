"""Training throughput of any experiment: images/s, step time and achieved FLOP rate.

    python benchmarks/train_speed.py [--config=experiments/clip.py --config=...] [--steps=10]
        [--set=train.batch_size=64 ...] [--json_out=FILE]

For each config (``path[:variant]``) this builds the pipeline, the loop's initial state and batch
iterator, compiles the loop's jitted train step (state donated), and times ``--steps`` steps with
real batches after a warmup step. The step's FLOPs (XLA cost analysis) over its median time are
compared with a jitted 2048x2048 float32 matmul measured in the same run. ``--set key=value``
changes that value in every config before the measurement (an unknown key is an error). Pretrained
weights a config would load (``warm_start``, e.g. a CLIP text tower, or a run it names such as
DALL-E's tokenizer) are freshly initialised instead: they do not change the cost of a step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from common import MATMUL_N, Matmul, fresh_pipeline, load_config, train_throughput  # noqa: E402

_CONFIGS = flags.DEFINE_multi_string(
    "config",
    ["experiments/clip.py", "experiments/gan_int_cls.py"],
    "Experiment config path[:variant]; repeat the flag for several.",
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per config.")
_SET = flags.DEFINE_multi_string("set", [], "Config override key=value (repeatable).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")


def measure(spec: str, steps: int, overrides: list[str]) -> dict:
    config = load_config(spec, overrides)
    label = " ".join([spec, *overrides])
    # Built with the runs it refers to ("pretrain:clip", a tokenizer) freshly initialised.
    return train_throughput(config, label, steps, pipeline=fresh_pipeline(config))


def main(argv):
    del argv
    print(f"# {os.cpu_count()} CPU cores, jax {jax.__version__}, {jax.default_backend()}")
    rows = [measure(spec, _STEPS.value, _SET.value) for spec in _CONFIGS.value]
    matmul = Matmul()
    matmul.run()
    print(f"{'config':<40} {'params':>8} {'batch':>5} {'img/s':>8} {'step':>8} {'GFLOP/s':>8}")
    for r in rows:
        print(
            f"{r['config']:<40} {r['parameters'] / 1e6:7.2f}M {r['batch_size']:>5} "
            f"{r['images_per_second']:8.1f} {r['step_seconds']:7.3f}s "
            f"{r['achieved_gflop_per_s']:8.1f}"
        )
    print(f"jitted {MATMUL_N}x{MATMUL_N} float32 matmul, same run: {matmul.gflops:.1f} GFLOP/s")
    if _JSON_OUT.value:
        out = {"rows": rows, "matmul_gflop_per_s": matmul.gflops}
        Path(_JSON_OUT.value).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    app.run(main)
