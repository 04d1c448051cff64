"""make_batch_iterator: determinism, per-epoch shuffling, process sharding, resumable state."""

import json

import numpy as np
import pytest

from jaxgen.data.pipeline import DataError, encode_caption, make_batch_iterator


class _RangeSource:
    """Element i is {"index": i, "image": a [2, 2, 3] block of value i % 256}."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": np.int32(i), "image": np.full((2, 2, 3), i % 256, np.uint8)}


class _FailingSource(_RangeSource):
    def __getitem__(self, i):
        if i == 3:
            raise KeyError("boom")
        return super().__getitem__(i)


def _take(it, k):
    return [next(it)["index"] for _ in range(k)]


def test_batches_shapes_and_epoch_coverage():
    it = make_batch_iterator(_RangeSource(12), batch_size=4, seed=0)
    batch = next(it)
    assert batch["index"].shape == (4,) and batch["image"].shape == (4, 2, 2, 3)
    assert batch["image"].dtype == np.uint8
    epoch1 = np.concatenate([batch["index"]] + _take(it, 2))
    epoch2 = np.concatenate(_take(it, 3))
    # Every epoch is a permutation of the source, and a different one.
    assert sorted(epoch1) == sorted(epoch2) == list(range(12))
    assert not np.array_equal(epoch1, epoch2)


def test_same_seed_same_stream_other_seed_differs():
    a = _take(make_batch_iterator(_RangeSource(50), batch_size=5, seed=7), 4)
    b = _take(make_batch_iterator(_RangeSource(50), batch_size=5, seed=7), 4)
    c = _take(make_batch_iterator(_RangeSource(50), batch_size=5, seed=8), 4)
    assert np.array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))


def test_process_shards_concatenate_to_global_batch():
    src = _RangeSource(37)
    whole = _take(make_batch_iterator(src, batch_size=8, seed=3), 10)
    shards = [
        _take(make_batch_iterator(src, batch_size=8, seed=3, process_index=p, process_count=2), 10)
        for p in range(2)
    ]
    for g in range(10):
        assert shards[0][g].shape == (4,)
        np.testing.assert_array_equal(np.concatenate([shards[0][g], shards[1][g]]), whole[g])


def test_resume_from_state_gives_the_same_batches():
    src = _RangeSource(23)
    it = make_batch_iterator(src, batch_size=4, seed=11)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = _take(it, 3)
    resumed = make_batch_iterator(src, batch_size=4, seed=11)
    resumed.set_state(state)
    np.testing.assert_array_equal(np.stack(_take(resumed, 3)), np.stack(expected))
    # The state counts global batches, so it also resumes a 2-process run.
    shard = make_batch_iterator(src, batch_size=4, seed=11, process_index=1, process_count=2)
    shard.set_state(state)
    np.testing.assert_array_equal(next(shard)["index"], expected[0][2:])


def test_state_from_another_configuration_is_rejected():
    it = make_batch_iterator(_RangeSource(20), batch_size=4, seed=1)
    state = it.get_state()
    other = make_batch_iterator(_RangeSource(20), batch_size=4, seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_finite_epochs_unshuffled_drop_partial_global_batch():
    it = make_batch_iterator(_RangeSource(10), batch_size=4, seed=0, shuffle=False, num_epochs=1)
    assert [b["index"].tolist() for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    shards = [
        list(
            make_batch_iterator(
                _RangeSource(10),
                batch_size=4,
                seed=0,
                num_epochs=1,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 2


def test_argument_errors():
    with pytest.raises(ValueError, match="divisible"):
        make_batch_iterator(_RangeSource(10), batch_size=5, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        make_batch_iterator(
            _RangeSource(10), batch_size=4, seed=0, process_index=2, process_count=2
        )
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_batch_iterator(_RangeSource(3), batch_size=4, seed=0)


def test_source_errors_become_data_errors_with_index():
    it = make_batch_iterator(_FailingSource(8), batch_size=8, seed=0, shuffle=False)
    with pytest.raises(DataError, match=r"_FailingSource\[3\].*KeyError"):
        next(it)


def test_encode_caption_truncates():
    tokens = encode_caption("abcdefgh", 6)
    assert tokens.shape == (6,) and tokens.dtype == np.int32
    assert tokens.tolist() == [1, ord("a") + 3, ord("b") + 3, ord("c") + 3, ord("d") + 3, 2]
