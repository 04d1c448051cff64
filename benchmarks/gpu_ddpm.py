"""DDPM on one accelerator: the cifar10 config (35.7M-parameter UNet) trained in bfloat16.

    python benchmarks/gpu_ddpm.py [--batch=256] [--steps=50] [--sample_batch=512] [--json_out=F]
    python benchmarks/gpu_ddpm.py --smoke     # a tiny run of the same code path, for CPU tests

Prints one table: training images/s, step time, the step's FLOPs (XLA cost analysis) over the
measured rate of a large bfloat16 matmul on the same device (model FLOPs utilisation against
what this chip really does, not its datasheet), peak device memory, and DDIM-100 sampling
throughput with classifier-free guidance. Goals (issue 3): >= 4,000 training images/s on one
H100, >= 2,000 samples/minute with DDIM-100.

The batch is random images and captions: the benchmark measures the model, not TFDS (the real
run, `python -m jaxgen.main --config=experiments/ddpm.py:cifar10`, needs a prepared `cifar10`).
The whole run should take 2-4 minutes on one H100, most of it compiling.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # Run from a checkout without installing jaxgen.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jaxgen.data import tokenizer  # noqa: E402
from jaxgen.pipelines import build_pipeline  # noqa: E402
from jaxgen.training import mesh as mesh_lib  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 256, "Global training batch.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed training steps (after 3 warmup steps).")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 512, "Prompts per DDIM call.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 100, "DDIM steps.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_SMOKE = flags.DEFINE_bool("smoke", False, "A tiny model and batch (for tests on a CPU).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")


def load_config(smoke: bool):
    from jaxgen.config import load_experiment

    return load_experiment("ddpm", "cifar10,smoke" if smoke else "cifar10")


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = [cost] if isinstance(cost, dict) else (cost or [])
    return float(sum((c or {}).get("flops", 0.0) for c in cost))


def best_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_rate(dtype, n: int) -> float:
    """FLOP/s of a jitted n x n matmul in ``dtype`` on the default device (best of 10)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))
    return 2 * n**3 / best_time(lambda: f(a, b), 10)


def peak_memory_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def main(argv):
    del argv
    smoke = _SMOKE.value
    config = load_config(smoke)
    config.model.dtype = _DTYPE.value
    batch = 8 if smoke else _BATCH.value
    steps = 2 if smoke else _STEPS.value
    sample_batch = 4 if smoke else _SAMPLE_BATCH.value
    sample_steps = 4 if smoke else _SAMPLE_STEPS.value
    config.train.batch_size = batch
    size = int(config.data.image_size)
    dev = jax.devices()[0]
    print(f"# {dev.device_kind} x{jax.device_count()}, jax {jax.__version__}, {_DTYPE.value}")

    pipeline = build_pipeline(config)
    mesh = mesh_lib.make_mesh(config)
    mesh_lib.check_batch_size(batch, mesh)
    captions = [f"a photo of a {c}" for c in ("cat", "dog", "ship", "truck", "frog", "horse")]
    tokens = tokenizer.encode_batch(
        [captions[i % 6] for i in range(batch)], config.data.max_text_len
    )
    images = np.asarray(jax.random.randint(jax.random.key(0), (batch, size, size, 3), 0, 256))
    host_batch = {"image": images.astype(np.uint8), "tokens": tokens}
    batch_arrays = mesh_lib.to_global(host_batch, mesh)

    init = jax.jit(pipeline.init, out_shardings=mesh_lib.replicated(mesh))
    state = init(jax.random.key(0), host_batch)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    t0 = time.perf_counter()
    step = (
        jax.jit(pipeline.train_step, donate_argnums=(0,))
        .lower(state, batch_arrays, jax.random.key(1))
        .compile()
    )
    compile_s = time.perf_counter() - t0
    flops = flops_of(step)
    for i in range(3):
        state, metrics = step(state, batch_arrays, jax.random.key(i))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, batch_arrays, jax.random.key(100 + i))
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
    loss = float(metrics["loss"])

    mm_dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
    mm_rate = matmul_rate(mm_dtype, 512 if smoke else 8192)

    sample_tokens = jnp.asarray(tokens[np.arange(sample_batch) % batch])
    sc = config.sample

    def sample():
        return pipeline._sample(
            state.ema_params["unet"],
            sample_tokens,
            jax.random.key(2),
            "ddim",
            sample_steps,
            float(sc.guidance_scale),
            0.0,
        )

    t0 = time.perf_counter()
    jax.block_until_ready(sample())
    sample_compile_s = time.perf_counter() - t0
    sample_s = best_time(sample, 1 if smoke else 3)

    results = {
        "device": dev.device_kind,
        "dtype": _DTYPE.value,
        "params": int(params),
        "batch": batch,
        "compile_s": compile_s,
        "step_ms": 1e3 * step_s,
        "train_images_per_s": batch / step_s,
        "step_tflop": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "matmul_tflops": mm_rate / 1e12,
        "mfu_vs_matmul": flops / step_s / mm_rate,
        "peak_memory_gib": peak_memory_gib(),
        "final_loss": loss,
        "sample_batch": sample_batch,
        "sample_steps": sample_steps,
        "guidance_scale": float(sc.guidance_scale),
        "sample_compile_s": sample_compile_s,
        "sample_s": sample_s,
        "samples_per_minute": 60 * sample_batch / sample_s,
    }
    rows = [
        ("parameters", f"{params:,}", ""),
        (f"training images/s (batch {batch})", f"{results['train_images_per_s']:,.0f}", ">= 4,000"),
        ("step time", f"{results['step_ms']:.1f} ms", ""),
        ("step FLOPs (XLA cost analysis)", f"{results['step_tflop']:.3f} TFLOP", ""),
        (
            "achieved / matmul rate",
            f"{results['achieved_tflops']:.1f} / "
            f"{results['matmul_tflops']:.1f} TFLOP/s = {results['mfu_vs_matmul']:.2f}",
            "",
        ),
        (
            "peak device memory",
            "n/a"
            if results["peak_memory_gib"] is None
            else f"{results['peak_memory_gib']:.1f} GiB",
            "",
        ),
        (
            f"DDIM-{sample_steps} samples/minute (batch {sample_batch}, guidance)",
            f"{results['samples_per_minute']:,.0f}",
            ">= 2,000",
        ),
        ("compile: train step / sampler", f"{compile_s:.0f} s / {sample_compile_s:.0f} s", ""),
    ]
    for name, value, goal in rows:
        print(f"  {name:<52} {value:>36}  {goal}")
    if not np.isfinite(loss):
        raise SystemExit(f"non-finite loss {loss}")
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
