"""Joining a multi-process run (``jax.distributed``) before any JAX computation.

Every process runs the same command; they find each other through a coordinator:

- explicitly, with ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or the
  environment variables ``JAXGEN_COORDINATOR_ADDRESS``, ``JAXGEN_NUM_PROCESSES`` and
  ``JAXGEN_PROCESS_ID``), e.g. several processes on one CPU machine or GPU hosts by hand;
- automatically, with ``--distributed`` alone, where JAX detects the cluster itself (Cloud TPU
  pod slices, SLURM, Open MPI).

On the CPU backend the processes exchange gradients through gloo collectives.
"""

from __future__ import annotations

import os
import socket

import jax
from absl import logging

ENV_PREFIX = "JAXGEN_"


def _from_env(name: str, value):
    if value not in (None, "", -1):
        return value
    return os.environ.get(ENV_PREFIX + name.upper()) or None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
    """Initialises ``jax.distributed`` when asked to; returns whether it did.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: the number of processes in the run.
      process_id: this process's index in ``[0, num_processes)``.
      auto: initialise with JAX's cluster auto-detection (TPU pod slices, SLURM, Open MPI).

    Raises:
      ValueError: when only some of the three explicit settings are given, or they are invalid.
    """
    address = _from_env("coordinator_address", coordinator_address)
    count = _from_env("num_processes", num_processes)
    index = _from_env("process_id", process_id)
    given = [v is not None for v in (address, count, index)]
    if not any(given):
        if auto:
            jax.distributed.initialize()
            return True
        return False
    if not all(given):
        raise ValueError(
            "A multi-process run needs all of coordinator_address, num_processes and process_id "
            f"(flags or {ENV_PREFIX}* environment variables); got address={address!r}, "
            f"num_processes={count!r}, process_id={index!r}."
        )
    count, index = int(count), int(index)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_id={index} is not in [0, num_processes={count}).")
    # CPU devices of different processes talk through gloo; GPU and TPU backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("Joining a %d-process run at %s as process %d.", count, address, index)
    jax.distributed.initialize(address, num_processes=count, process_id=index)
    return True


def use_cpu_cores(requested: int, batch_size: int) -> int:
    """Makes the CPU one JAX device per core, before the backend starts, so that a run on a CPU
    is data-parallel over its cores (the loop splits each batch over the devices).

    XLA's CPU runtime leaves the cores of a 2-core machine idle about 40% of a training step when
    one device runs it; one device per core fills them (the DDPM default step: +19% images/s; per
    family in docs/benchmarks.md). Work that runs on one device (sampling) runs slower
    then (the DDPM's sampler: 1.33x slower), so the command line does this for training only.
    GPU and TPU runs are unaffected: their devices are the accelerators. Nothing changes when the
    device count is already set (``XLA_FLAGS`` with ``--xla_force_host_platform_device_count``,
    or ``jax_num_cpu_devices``).

    Args:
      requested: devices wanted; 0 for one per core available to this process, reduced to the
        largest count that divides ``batch_size``; 1 for a single device.
      batch_size: the global batch the devices share.

    Returns:
      The CPU device count set (0 if it was left alone).
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    if int(jax.config.jax_num_cpu_devices) > 0:
        return 0
    if requested < 0:
        raise ValueError(f"cpu_devices must be >= 0, got {requested}.")
    count = requested or len(os.sched_getaffinity(0))
    if not requested:
        count = max(d for d in range(1, count + 1) if batch_size % d == 0)
    jax.config.update("jax_num_cpu_devices", count)
    return count


def free_port() -> int:
    """A TCP port on localhost that is free now (for a local coordinator in tests/benchmarks)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
