"""Device mesh and the placement of batches and state on it."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(config=None) -> Mesh:
    """A mesh over all devices (of all processes) on one ``data`` axis."""
    del config  # A second (parameter-sharding) axis is a config option to come.
    devices = np.asarray(jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; the rest replicated."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


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
