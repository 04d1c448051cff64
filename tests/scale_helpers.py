"""Runs shared by the scaling and fault tests: one short smoke training, several ways."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from helpers import REPO_ROOT, SMOKE_CONFIG, TEST_XLA_FLAGS, cli_env, read_jsonl

import jaxgen

STEPS = 24
# A short smoke run with a checkpoint every 4 steps and metrics at every step, and no sample
# grids, so that runs are quick and a signal can land between checkpoints.
RUN_ARGS = (
    f"--config.train.steps={STEPS}",
    "--config.train.checkpoint_every=4",
    "--config.train.log_every=1",
    "--config.sample.every_steps=0",
)
FOUR_DEVICES = {"XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=4"}


def state_of(workdir: Path):
    """The trained state of a workdir, on this process's devices."""
    return jaxgen.load(workdir).state


def assert_bit_identical(a, b) -> None:
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def start_cli(*args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Starts ``python -m jaxgen.main ARGS`` without waiting; stdout+stderr go to ``log``."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "jaxgen.main", *args],
        cwd=REPO_ROOT,
        env={**cli_env(), **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_for_step(workdir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> int:
    """Polls ``metrics.jsonl`` until it records ``step`` or later; returns the step seen."""
    deadline = time.monotonic() + timeout
    path = workdir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run exited (rc={proc.returncode}) before step {step}")
        if path.exists():
            steps = [r["step"] for r in read_jsonl(path) if "loss" in r]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.kill(proc.pid, sig)


def smoke_args(workdir: Path, *extra: str) -> tuple[str, ...]:
    return (SMOKE_CONFIG, f"--workdir={workdir}", *RUN_ARGS, *extra)
