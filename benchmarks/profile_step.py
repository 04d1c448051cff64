"""Where the time of a compiled training step goes: op time by kind and the cores' idle share.

    python benchmarks/profile_step.py [--config=experiments/ddpm.py[:variant]] [--steps=3]
        [--set=key=value ...] [--top=12] [--json_out=FILE]

Builds the loop's jitted, donated train step of any experiment (freshly initialised weights, real
batches), runs it a few times, then records ``--steps`` steps with ``jax.profiler`` and reads the
trace back (``jax.profiler.ProfileData``). Every op the XLA CPU runtime executed is attributed to
its HLO instruction in the compiled module and sorted into a kind:

- ``conv/dot``: a convolution or matmul, alone or fused with what surrounds it;
- ``reduce``: a fusion around a reduction (normalisation statistics, sums of the loss);
- ``collective``: the all-reduce of gradients between devices (with several CPU devices);
- ``concatenate``, ``pad/slice``, ``transpose/copy``: layout traffic that moves data without
  computing on it (fusions of those ops only);
- ``elementwise``: everything else (activations, adds, the optimizer's update, ...).

It prints the op time (summed over the threads that ran ops, per step) of each kind and of each
layer (the innermost named module an op comes from, forward or backward), the largest single ops,
and the idle share of the cores: ``1 - op thread-time / (step wall time x
cores)``. Work an op hands to the intra-op thread pool is not counted as busy (the pool's spans
include its spinning), so the idle share is an upper bound. On an accelerator the host-side view
this reads is not the device's: the script is for CPU runs.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from common import Trainer, fresh_pipeline, load_config  # noqa: E402

from jaxgen.training import distributed  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "experiments/ddpm.py", "Experiment config path[:variant].")
_STEPS = flags.DEFINE_integer("steps", 3, "Profiled steps (after two untimed ones).")
_SET = flags.DEFINE_multi_string("set", [], "Config override key=value (repeatable).")
_TOP = flags.DEFINE_integer("top", 12, "How many of the largest single ops to list.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "On a CPU, devices as the CLI makes them (0: one per core; 1: one device)."
)

KINDS = (
    "conv/dot",
    "reduce",
    "collective",
    "concatenate",
    "pad/slice",
    "transpose/copy",
    "elementwise",
)
_LAYOUT = {
    "concatenate": "concatenate",
    "pad": "pad/slice",
    "slice": "pad/slice",
    "dynamic-slice": "pad/slice",
    "dynamic-update-slice": "pad/slice",
    "transpose": "transpose/copy",
    "copy": "transpose/copy",
}
# Ops that neither compute nor decide a layout kind on their own.
_NEUTRAL = {
    "parameter",
    "constant",
    "bitcast",
    "reshape",
    "broadcast",
    "tuple",
    "get-tuple-element",
}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z\-]*)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")


def parse_hlo(text: str):
    """The compiled module's text -> (computation -> (its opcodes, computations it calls),
    instruction -> (opcode, computations it calls), instruction -> its source op name)."""
    computations: dict[str, tuple[set[str], list[str]]] = {}
    instructions: dict[str, tuple[str, list[str]]] = {}
    sources: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            current = head.group(1)
            computations[current] = (set(), [])
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, opcode, rest = m.groups()
            called = _CALLS.findall(rest)
            computations[current][0].add(opcode)
            computations[current][1].extend(called)
            instructions[name] = (opcode, called)
            where = _OP_NAME.search(rest)
            if where:
                sources[name] = where.group(1)
    return computations, instructions, sources


def layer_of(source: str) -> str:
    """``jit(train_step)/transpose(jvp(UNet))/down_1_res_0/norm1/mul`` -> ``backward: norm``:
    the innermost named module of an op, its digits and indices dropped, and the pass."""
    scopes = [s for s in source.split("/")[1:] if s and "(" not in s]
    modules = [s for s in scopes[:-1] if not s.startswith(("jvp", "transpose"))]
    if not source:
        return "(no source: a library fusion)"
    if not modules:
        return "(outside modules: loss, optimizer)"
    # "down_1_0_xattn" -> "xattn", "up_1_us" -> "us", "conv1" -> "conv", "mid_res_0" -> "res".
    layer = re.sub(r"^(down|up|mid)(_\d+)*_", "", modules[-1])
    layer = re.sub(r"(_?\d+)+$", "", layer)
    pass_ = "backward" if "transpose(" in source else "forward"
    return f"{pass_}: {layer}"


def opcodes_of(name: str, computations, instructions) -> set[str]:
    """Every opcode an instruction runs, through the computations it calls."""
    opcode, called = instructions.get(name, (name.rsplit(".", 1)[0], []))
    ops, todo, seen = {opcode}, list(called), set()
    while todo:
        comp = todo.pop()
        if comp in seen or comp not in computations:
            continue
        seen.add(comp)
        ops |= computations[comp][0]
        todo += computations[comp][1]
    return ops


def kind_of(opcodes: set[str], op_name: str) -> str:
    """One of KINDS for an op that runs these opcodes (its name breaks ties for library
    fusions, e.g. XNNPACK's, whose bodies the HLO text does not spell out)."""
    if opcodes & {"convolution", "dot"} or re.search(r"conv|dot|gemm|matmul", op_name):
        return "conv/dot"
    if opcodes & {"all-reduce", "all-gather", "reduce-scatter", "all-to-all"}:
        return "collective"
    if opcodes & {"reduce", "reduce-window"}:
        return "reduce"
    layout = {_LAYOUT[o] for o in opcodes if o in _LAYOUT}
    compute = opcodes - set(_LAYOUT) - _NEUTRAL - {"fusion"}
    if layout and not compute:
        for kind in ("concatenate", "pad/slice", "transpose/copy"):
            if kind in layout:
                return kind
    return "elementwise"


def read_trace(directory: str, module_prefix: str):
    """Op events ``(name, start ns, duration ns)`` of the profiled module."""
    path = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    if not path:
        raise SystemExit("error: the profiler wrote no trace (is the profiler plugin missing?)")
    data = jax.profiler.ProfileData.from_file(path[0])
    ops = []
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for e in line.events:
                stats = dict(e.stats)
                if "hlo_op" in stats and str(stats.get("hlo_module", "")).startswith(module_prefix):
                    ops.append((str(stats["hlo_op"]), e.start_ns, e.duration_ns))
    return ops


def main(argv):
    del argv
    config = load_config(_CONFIG.value, _SET.value)
    distributed.use_cpu_cores(_CPU_DEVICES.value, int(config.train.batch_size))
    # The runs a config names (DALL-E's tokenizer, unCLIP's CLIP) freshly initialised.
    trainer = Trainer.for_config(config, fresh_pipeline(config))
    hlo = trainer.step_fn.as_text()
    computations, instructions, sources = parse_hlo(hlo)
    module = hlo.split("\n", 1)[0].split()[1].split(",")[0]
    trainer.warmup(2)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            trainer.run(_STEPS.value, with_data=False)
        ops = read_trace(tmp, module.split(".")[0])
    if not ops:
        raise SystemExit(f"error: no op of module {module} in the trace")
    steps = _STEPS.value
    step_s = sum(trainer.times["fixed"][-steps:]) / steps
    cores = os.cpu_count() or 1
    by_kind = collections.Counter()
    by_op = collections.Counter()
    for name, _, dur in ops:
        by_op[name] += dur
    by_layer = collections.Counter()
    for name, dur in by_op.items():
        by_kind[kind_of(opcodes_of(name, computations, instructions), name)] += dur
        by_layer[layer_of(sources.get(name, ""))] += dur
    op_ms = sum(dur for _, _, dur in ops) / 1e6 / steps  # every op's time, however sorted
    idle = max(0.0, 1.0 - op_ms / (step_s * 1e3 * cores))
    print(f"# {_CONFIG.value} {' '.join(_SET.value)}")
    print(
        f"# {cores} CPU cores, jax {jax.__version__}, {jax.default_backend()} x"
        f"{jax.device_count()}, {steps} steps"
    )
    print(
        f"step {step_s * 1e3:.1f} ms ({trainer.batch_size / step_s:.1f} images/s); op time "
        f"{op_ms:.1f} thread-ms per step; cores idle {idle:.0%} of {cores} x {step_s * 1e3:.1f} ms"
    )
    print("\n| kind | ms per step | share of op time |\n|---|---:|---:|")
    for kind in KINDS:
        ms = by_kind[kind] / 1e6 / steps
        print(f"| {kind} | {ms:.1f} | {ms / op_ms:.0%} |")
    print("\n| layer | ms per step | share of op time |\n|---|---:|---:|")
    for layer, dur in by_layer.most_common(_TOP.value):
        print(f"| {layer} | {dur / 1e6 / steps:.1f} | {dur / 1e6 / steps / op_ms:.0%} |")
    print("\n| largest ops | kind | layer | ms per step |\n|---|---|---|---:|")
    for name, dur in by_op.most_common(_TOP.value):
        kind = kind_of(opcodes_of(name, computations, instructions), name)
        print(f"| {name} | {kind} | {layer_of(sources.get(name, ''))} | {dur / 1e6 / steps:.2f} |")
    if _JSON_OUT.value:
        out = {
            "config": _CONFIG.value,
            "overrides": _SET.value,
            "step_ms": step_s * 1e3,
            "images_per_second": trainer.batch_size / step_s,
            "op_ms": op_ms,
            "idle_share": idle,
            "cores": cores,
            "kinds_ms": {k: by_kind[k] / 1e6 / steps for k in KINDS},
            "layers_ms": {k: v / 1e6 / steps for k, v in by_layer.most_common()},
            "num_ops": len(by_op),
        }
        Path(_JSON_OUT.value).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    app.run(main)
