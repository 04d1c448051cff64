"""Costs of the platform itself: the distributed path and checkpointing.

    python benchmarks/platform_bench.py [--what=scaling,checkpoint,async] [--steps=20]
        [--json_out=F]

scaling     the default DDPM config trained by the CLI on 1 device, on 2 fake CPU devices
            (``--xla_force_host_platform_device_count=2``) and as 2 processes on localhost
            (``jax.distributed``, gloo), same global batch; images/s of each (median over log
            windows after the first, which holds the compile) and the ratios to 1 device. On a
            2-core CPU the devices share the same cores, so the ratio is the overhead of the
            sharded/distributed path, not a speed-up.
checkpoint  save time (until on disk), size and restore time of the full training state of the
            default and the cifar10 configs.
async       the step time of the default config with async (and blocking) saves over the step
            time without, side by side in one process (goal: <= 1.05): with a save every 8
            steps (worst case) and at the config's checkpoint interval.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path.insert(0, str(_ROOT))  # Run from a checkout without installing jaxgen.

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

_WHAT = flags.DEFINE_list("what", ["scaling", "checkpoint", "async"], "Which measurements.")
_CONFIG = flags.DEFINE_string("config", "experiments/ddpm.py", "Config for the scaling runs.")
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps per scaling run.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")


def _env(extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    return {**env, **(extra or {})}


def _images_per_second(workdir: Path) -> float:
    rates = [
        r["images_per_second"]
        for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
        if "images_per_second" in r
    ]
    if len(rates) < 2:
        raise RuntimeError(f"too few log windows in {workdir}: raise --steps")
    return statistics.median(rates[1:])  # The first window includes compilation.


def scaling_run(kind: str, steps: int, root: Path) -> float:
    """Trains ``steps`` steps one way and returns its images/s."""
    from jaxgen.training.distributed import free_port

    workdir = root / kind
    args = [
        sys.executable, "-m", "jaxgen.main", f"--config={_CONFIG.value}", f"--workdir={workdir}",
        f"--config.train.steps={steps}", "--config.train.log_every=4",
        "--config.train.checkpoint_every=100000", "--config.sample.every_steps=0",
        "--config.eval.every_minutes=0", "--config.train.max_minutes=0",
        # No CLIP pretraining: a frozen text encoder costs the same whether trained or not.
        "--config.model.text_init=", "--config.eval.clip_workdir=",
    ]  # fmt: skip
    if kind == "2 processes":
        port = free_port()
        cmds = [
            args + [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                    f"--process_id={i}"]
            for i in range(2)
        ]  # fmt: skip
        env = _env()
    else:
        cmds = [args]
        n = 2 if kind == "2 devices" else 1
        env = _env({"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
    procs = [
        subprocess.Popen(c, cwd=_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in cmds
    ]
    # Stop at the last step with SIGTERM (a clean, checkpointed exit) so that the final
    # evaluation, which is not what is measured here, does not run.
    metrics = workdir / "metrics.jsonl"
    while True:
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"{kind} run failed:\n{procs[0].stderr.read().decode()[-3000:]}")
        if metrics.exists() and f'"step": {steps},' in metrics.read_text():
            break
        time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.communicate(timeout=600)
    return _images_per_second(workdir)


def scaling(steps: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("1 device", "2 devices", "2 processes"):
            results[kind] = scaling_run(kind, steps, Path(tmp))
            print(f"  {kind:<12} {results[kind]:7.1f} images/s", flush=True)
    base = results["1 device"]
    for kind in ("2 devices", "2 processes"):
        print(f"  {kind} / 1 device: {results[kind] / base:.2f}")
    return results


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _experiment(arg: str):
    from jaxgen.config import load_experiment

    return load_experiment("ddpm", arg)


def checkpoint_cost() -> dict:
    from jaxgen import data as data_lib
    from jaxgen.pipelines import build_pipeline
    from jaxgen.training import checkpoint as ckpt_lib
    from jaxgen.training import mesh as mesh_lib
    from jaxgen.training import workdir as workdir_lib

    results = {}
    for name in ("shapes", "cifar10"):
        config = _experiment(name)
        pipeline = build_pipeline(config)
        mesh = mesh_lib.make_mesh(config)
        # cifar10's source is TFDS; an example batch of the same shapes is all init needs.
        source = data_lib.build_source(_experiment("shapes").data, "train")
        state = workdir_lib.init_state(pipeline, config, mesh, source)
        with tempfile.TemporaryDirectory() as tmp:
            ck = ckpt_lib.Checkpointer(Path(tmp) / "ck", async_save=False)
            t0 = time.perf_counter()
            ck.save(1, state, {"data": None})
            ck.wait()
            save_s = time.perf_counter() - t0
            size = _dir_size(Path(tmp) / "ck" / "1")
            abstract = workdir_lib.abstract_state(pipeline, config, mesh, source)
            t0 = time.perf_counter()
            restored, _, _ = ck.restore(abstract)
            jax.block_until_ready(restored)
            restore_s = time.perf_counter() - t0
            ck.close()
        params = sum(x.size for x in jax.tree.leaves(state.params))
        results[name] = dict(params=params, save_s=save_s, restore_s=restore_s, mib=size / 2**20)
        print(
            f"  {name:<8} {params / 1e6:5.1f}M params  state {size / 2**20:7.1f} MiB  "
            f"save {save_s:5.2f} s  restore {restore_s:5.2f} s",
            flush=True,
        )
    return results


def async_overhead(rounds: int = 3, steps: int = 8) -> dict:
    """What a checkpoint save costs the training steps around it, async and blocking.

    Blocks of ``steps`` training steps of the default config run interleaved in one process:
    without a save, with one asynchronous save at the block's start (waited for at its end, so
    its whole cost lands inside the block) and with one blocking save. The extra seconds per save
    are the median block time minus the plain one. Reported: the step-time ratio with a save
    every ``steps`` steps (a worst case), and the ratio at the config's ``checkpoint_every``.
    """
    from jaxgen import data as data_lib
    from jaxgen.pipelines import build_pipeline
    from jaxgen.training import checkpoint as ckpt_lib
    from jaxgen.training import mesh as mesh_lib
    from jaxgen.training import workdir as workdir_lib

    config = _experiment("shapes")
    pipeline = build_pipeline(config)
    mesh = mesh_lib.make_mesh(config)
    source = data_lib.build_source(config.data, "train")
    state = workdir_lib.init_state(pipeline, config, mesh, source)
    batch = mesh_lib.to_global(
        workdir_lib.example_batch(source, int(config.train.batch_size)), mesh
    )
    step = jax.jit(pipeline.train_step, donate_argnums=(0,))
    state, _ = step(state, batch, jax.random.key(0))
    times = {"plain": [], "async": [], "blocking": []}
    with tempfile.TemporaryDirectory() as tmp:
        savers = {
            "async": ckpt_lib.Checkpointer(Path(tmp) / "a", max_to_keep=2, async_save=True),
            "blocking": ckpt_lib.Checkpointer(Path(tmp) / "b", max_to_keep=2, async_save=False),
        }
        n = 0
        for _ in range(rounds):  # Interleaved, so a passing load hits every mode alike.
            for mode in times:
                t0 = time.perf_counter()
                for i in range(steps):
                    n += 1
                    state, metrics = step(state, batch, jax.random.key(n))
                    if i == 0 and mode in savers:
                        savers[mode].save(n, state, {"data": None})
                    jax.block_until_ready(metrics)
                if mode in savers:
                    savers[mode].wait()
                times[mode].append(time.perf_counter() - t0)
        for saver in savers.values():
            saver.close()
    plain = statistics.median(times["plain"])
    step_s = plain / steps
    every = int(config.train.checkpoint_every)
    out = {"step_seconds": step_s, "checkpoint_every": every}
    for mode in savers:
        extra = max(statistics.median(times[mode]) - plain, 0.0)
        out[f"{mode}_extra_seconds_per_save"] = extra
        out[f"{mode}_ratio_every_{steps}_steps"] = 1.0 + extra / plain
        out[f"{mode}_ratio_at_checkpoint_every"] = 1.0 + extra / (every * step_s)
    extra_a, extra_b = (out[f"{m}_extra_seconds_per_save"] for m in savers)
    print(f"  step {step_s:.2f} s; extra per save: async {extra_a:.2f} s, blocking {extra_b:.2f} s")
    for mode in savers:
        print(
            f"  step time with {mode} saves / without: every {steps} steps "
            f"{out[f'{mode}_ratio_every_{steps}_steps']:.3f}, every {every} steps (config) "
            f"{out[f'{mode}_ratio_at_checkpoint_every']:.4f} (goal <= 1.05)"
        )
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    print(f"# {os.cpu_count()} CPU cores, jax {jax.__version__}", flush=True)
    results = {}
    if "scaling" in _WHAT.value:
        print("scaling (default DDPM config, same global batch):", flush=True)
        results["scaling"] = scaling(_STEPS.value)
    if "checkpoint" in _WHAT.value:
        print("checkpoint cost (full training state: params, Adam moments, EMA):", flush=True)
        results["checkpoint"] = checkpoint_cost()
    if "async" in _WHAT.value:
        print("checkpoint saves during training (default DDPM config):", flush=True)
        results["async_overhead"] = async_overhead()
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
