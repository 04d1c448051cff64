"""Device mesh and the placement of batches and state on it.

The mesh has two axes: ``data`` (data parallelism) and ``fsdp`` (parameter sharding, of size
``config.mesh.fsdp``, default 1). Batches are split over both axes, so every device sees its own
rows. With ``fsdp == 1`` the state is replicated; with ``fsdp > 1`` every large enough array of
the state (parameters, optimizer moments, EMA) is split along one of its axes over ``fsdp``
(ZeRO-3 / FSDP style) and XLA inserts the all-gathers and reduce-scatters the step needs. The
arithmetic is the same either way, so the result changes only by float reassociation.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # The batch's leading axis is split over every device.


DEFAULT_FSDP_MIN_SIZE = 2**14


def fsdp_min_size(config) -> int:
    """Arrays with fewer elements than ``config.mesh.fsdp_min_size`` stay replicated."""
    mesh_config = config.get("mesh") if config is not None else None
    if mesh_config is None:
        return DEFAULT_FSDP_MIN_SIZE
    return int(mesh_config.get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE))


def fsdp_size(config) -> int:
    """The size of the ``fsdp`` axis asked for by ``config.mesh.fsdp`` (1 when absent)."""
    mesh_config = config.get("mesh") if config is not None else None
    size = int(mesh_config.get("fsdp", 1)) if mesh_config is not None else 1
    if size < 1:
        raise ValueError(f"mesh.fsdp must be a positive integer, got {size}.")
    return size


def make_mesh(config=None, devices=None) -> Mesh:
    """A ``(data, fsdp)`` mesh over all devices (of all processes).

    Args:
      config: the experiment config; ``config.mesh.fsdp`` sets the size of the ``fsdp`` axis.
      devices: the devices to use (default: ``jax.devices()``).

    Raises:
      ValueError: if the device count is not divisible by ``mesh.fsdp``.
    """
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    fsdp = fsdp_size(config)
    if devices.size % fsdp:
        raise ValueError(
            f"mesh.fsdp={fsdp} does not divide the {devices.size} devices; "
            f"choose a divisor of {devices.size}."
        )
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), AXES)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_sharding(
    shape: tuple[int, ...], mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_SIZE
) -> NamedSharding:
    """Where one array of the state lives: split over ``fsdp`` along its largest divisible axis.

    Arrays smaller than ``min_size`` elements (biases, norms, scalars), and arrays with no axis
    divisible by the ``fsdp`` size, stay replicated: splitting them saves little memory and costs
    a collective each.
    """
    n = mesh.shape["fsdp"]
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return replicated(mesh)
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def state_sharding(state, mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_SIZE):
    """A pytree of shardings for a state (or its abstract shapes), per ``param_sharding``."""
    return jax.tree.map(lambda x: param_sharding(tuple(x.shape), mesh, min_size), state)


def describe_sharding(shardings) -> str:
    """A one-line summary: how many arrays of the state are split over ``fsdp``."""
    leaves = jax.tree.leaves(shardings)
    split = sum("fsdp" in jax.tree.leaves(tuple(s.spec)) for s in leaves)
    return f"{split} of {len(leaves)} state arrays sharded over fsdp"


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises a clear error when the global batch does not split evenly over devices."""
    n = mesh.devices.size
    if global_batch_size % n or global_batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={global_batch_size} is not divisible by the {n} devices of the mesh "
            f"({jax.process_count()} process(es)); choose a multiple of {n}."
        )


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Builds global arrays from this process's rows of the batch (multi-host safe)."""
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
