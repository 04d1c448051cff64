"""Grain input pipeline: shuffled, repeated, process-sharded global batches with resumable state.

A *source* is random access: `len(source)`, `source[i]` -> dict of numpy arrays, e.g.
`{"image": uint8 [S, S, 3], "tokens": int32 [T]}`. `make_batch_iterator` turns it into the stream
of global batches every process agrees on, and hands each process its own contiguous slice of
each global batch:

    global element stream   e_0 e_1 e_2 ...      (seeded shuffle, reshuffled every epoch)
    global batch g          e_{gB} ... e_{gB+B-1}
    process p, batch g      e_{gB + pL} ... e_{gB + pL + L - 1},   L = B / process_count

so concatenating the process batches in process order gives the one-process global batch, and the
iterator state (the number of global batches consumed) means the same thing on every process and
for every process count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from jaxgen.data import tokenizer

_STATE_VERSION = 1


class DataError(ValueError):
    """A data example that cannot be read or decoded; the message names the example."""


def encode_caption(caption: str, max_len: int) -> np.ndarray:
    """Encodes a dataset caption, truncating it to fit instead of failing.

    User prompts are rejected when too long (`tokenizer.encode` raises); dataset captions are
    truncated, because one long caption in a folder of thousands should not stop training.

    Args:
      caption: the caption text.
      max_len: token length, BOS and EOS included.

    Returns:
      int32 array [max_len].
    """
    data = caption.encode("utf-8")[: max(max_len - 2, 0)]
    # Cutting bytes can split a multi-byte character; drop the partial tail.
    return tokenizer.encode(data.decode("utf-8", errors="ignore"), max_len)


def check_index(i: int, length: int, what: str) -> int:
    """Returns ``i`` as a non-negative index into ``length`` items, or raises IndexError."""
    if not -length <= i < length:
        raise IndexError(f"{what} index {i} out of range [0, {length})")
    return int(i) % length


class _CheckedSource:
    """Wraps a source so that any failure in `__getitem__` becomes a DataError naming the index."""

    def __init__(self, source: Any):
        self._source = source
        self._name = type(source).__name__

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        try:
            example = self._source[index]
        except DataError:
            raise
        except Exception as e:  # any reader failure must name its example
            raise DataError(
                f"{self._name}[{index}] could not be read: {type(e).__name__}: {e}"
            ) from e
        return {k: np.asarray(v) for k, v in example.items()}


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """This process's batches of the global batch stream, with a checkpointable position.

    Attributes:
      local_batch_size: rows per batch on this process (global batch size / process count).
      global_batch_size: rows per global batch, summed over processes.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        global_batch_size: int,
        local_batch_size: int,
        seed: int,
        shuffle: bool,
        num_threads: int,
        prefetch_batches: int,
    ):
        self._dataset = dataset
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self._seed = seed
        self._shuffle = shuffle
        read_options = grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=prefetch_batches
        )
        self._iter = iter(dataset.to_iter_dataset(read_options))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def __len__(self) -> int:
        """The number of batches in the whole stream (huge when it repeats forever)."""
        return len(self._dataset)

    def get_state(self) -> dict[str, Any]:
        """Returns the position in the stream as a JSON-serialisable dict.

        Returns:
          {"version", "next_batch", "seed", "global_batch_size", "shuffle"}; `next_batch` counts
          global batches already returned, so the same state resumes any process count.
        """
        inner = self._iter.get_state()
        return {
            "version": _STATE_VERSION,
            "next_batch": int(inner["next_index"]),
            "seed": self._seed,
            "global_batch_size": self.global_batch_size,
            "shuffle": self._shuffle,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Moves to the position saved by `get_state`.

        Args:
          state: a dict from `get_state` (possibly after a JSON round trip).

        Raises:
          ValueError: if the state was saved by a stream with another seed, global batch size or
            shuffle setting, which would silently yield different batches.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown data iterator state version in {dict(state)}")
        for key, mine in (
            ("seed", self._seed),
            ("global_batch_size", self.global_batch_size),
            ("shuffle", self._shuffle),
        ):
            if state[key] != mine:
                raise ValueError(
                    f"data iterator state was saved with {key}={state[key]!r} but this iterator "
                    f"has {key}={mine!r}; resuming would not reproduce the same batches"
                )
        self._iter.set_state({"next_index": int(state["next_batch"])})


def make_batch_iterator(
    source: Any,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_threads: int = 1,
    prefetch_batches: int = 2,
) -> BatchIterator:
    """Builds this process's iterator over shuffled, repeated global batches of `source`.

    Trailing elements that do not fill a global batch are dropped (every step has the same
    shape, which `jax.jit` needs); with `num_epochs=None` batches run across epoch boundaries and
    the stream never ends. Each epoch uses a fresh permutation derived from `seed`.

    Args:
      source: random-access source; `source[i]` is a dict of numpy arrays.
      batch_size: the GLOBAL batch size, summed over processes.
      seed: shuffle seed, 0 <= seed < 2**32; the same on every process.
      process_index: this process, in [0, process_count) (`jax.process_index()`).
      process_count: number of processes (`jax.process_count()`).
      shuffle: permute the elements (per epoch); False keeps source order.
      num_epochs: passes over the source, or None to repeat forever.
      num_threads: reader threads (0 reads in the calling thread); few, the data is small.
      prefetch_batches: batches read ahead of the consumer.

    Returns:
      A `BatchIterator` yielding dicts of numpy arrays with a leading axis of
      `batch_size // process_count`, e.g. {"image": uint8 [L, S, S, 3], "tokens": int32 [L, T]}.

    Raises:
      ValueError: if the batch size does not divide by the process count, the process index is
        out of range, or the source is smaller than one global batch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
    if batch_size % process_count:
        raise ValueError(
            f"global batch_size={batch_size} is not divisible by process_count={process_count}; "
            f"choose a multiple of {process_count}"
        )
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    n = len(source)
    if n < batch_size:
        raise ValueError(f"source has {n} examples, fewer than one global batch of {batch_size}")
    local_batch_size = batch_size // process_count

    ds = grain.MapDataset.source(_CheckedSource(source))
    if shuffle:
        # Shuffle before repeat: grain's shuffle draws a new permutation per epoch (seed + epoch).
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    # Batches of L consecutive elements: global batch g is local batches g*P .. g*P + P - 1, so
    # process p takes every P-th local batch starting at p.
    ds = ds.batch(local_batch_size, drop_remainder=True)
    if num_epochs is not None:
        # Keep whole global batches only, so every process sees the same number of steps.
        ds = ds[: (len(ds) // process_count) * process_count]
    ds = ds[process_index::process_count]
    return BatchIterator(
        ds,
        global_batch_size=batch_size,
        local_batch_size=local_batch_size,
        seed=seed,
        shuffle=shuffle,
        num_threads=num_threads,
        prefetch_batches=prefetch_batches,
    )
