"""Shard writing and the key index; the O(1)-memory permutation and the step batch sampler."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import webdataset as wds

from loaders import shards
from loaders.sampling import StepBatchSampler, permute, sample_seed


def _samples(n: int, start: int = 0):
    rng = np.random.default_rng(start)
    return [(shards.format_key(i), rng.bytes(int(rng.integers(10, 3000))),
             {"width": 10 + i, "height": 20 + i}) for i in range(start, start + n)]


def _write(root, name, samples):
    rows = shards.write_shard(str(root / name), samples)
    shards.write_idx(str(root / shards.idx_name(name)), rows)
    return rows


def test_write_shard_is_deterministic_and_rows_point_at_the_data(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    s = _samples(20)
    rows = _write(tmp_path / "a", "shard-000000.tar", s)
    _write(tmp_path / "b", "shard-000000.tar", s)
    a, b = (tmp_path / d / "shard-000000.tar" for d in "ab")
    assert hashlib.sha1(a.read_bytes()).digest() == hashlib.sha1(b.read_bytes()).digest()
    blob = a.read_bytes()
    for (key, data, meta), row in zip(s, rows):
        assert row["key"] == int(key)
        assert blob[row["offset"]:row["offset"] + row["size"]] == data
        assert (row["width"], row["height"]) == (meta["width"], meta["height"])


@pytest.fixture
def dataset(tmp_path):
    # three shards with a gap in the keys (as skipped inputs leave) and an empty shard
    parts = [_samples(7, 0), _samples(0, 7), _samples(5, 12)]
    summaries = []
    for j, part in enumerate(parts):
        name = shards.shard_name(j)
        summaries.append(shards.shard_summary(name, _write(tmp_path, name, part)))
    shards.write_index(str(tmp_path), summaries)
    return tmp_path, [s for part in parts for s in part]


def test_index_lookup_by_key_and_position(dataset):
    root, samples = dataset
    ix = shards.ShardIndex(str(root), cache_shards=1)
    assert len(ix) == 12
    for pos, (key, data, meta) in enumerate(samples):
        assert ix.data(key) == data
        assert ix.data_at(pos) == (int(key), data)
        assert ix.meta(key) == meta
        loc = ix.locate(int(key))
        assert (loc.width, loc.height) == (meta["width"], meta["height"])
    assert len(ix._rows) == 1  # the LRU stays bounded
    with pytest.raises(KeyError):
        ix.data(9)  # in the gap
    with pytest.raises(KeyError):
        ix.data(10_000)
    with pytest.raises(IndexError):
        ix.data_at(12)


def test_index_pickles_without_open_files(dataset):
    root, samples = dataset
    ix = shards.ShardIndex(str(root))
    ix.data(samples[0][0])
    clone = pickle.loads(pickle.dumps(ix))
    assert clone._files == {} and clone.data(samples[-1][0]) == samples[-1][1]


def test_webdataset_and_iter_shard_read_our_shards(dataset):
    root, samples = dataset
    url = str(root / shards.shard_name(0))
    got = [(s["__key__"], s["jpg"]) for s in wds.WebDataset(url, shardshuffle=False)]
    assert got == [(k, d) for k, d, _ in samples[:7]]
    streamed = list(shards.iter_shard(url))
    assert [(k, d, m) for k, d, m in streamed] == samples[:7]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 741, 4097])
def test_permute_is_a_bijection(n):
    for seed in (0, 1, 12345):
        p = permute(np.arange(n), n, seed)
        assert sorted(p.tolist()) == list(range(n))


def test_permute_depends_on_seed_and_shuffles():
    n = 10_000
    a, b = permute(np.arange(n), n, 1), permute(np.arange(n), n, 2)
    assert (a != b).mean() > 0.99
    assert abs(np.corrcoef(a, np.arange(n))[0, 1]) < 0.05
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 1, 3)


def test_step_sampler_ranks_partition_each_epoch():
    n, g = 103, 16
    ranks = [StepBatchSampler(n, g, r, 2, seed=5, start_step=0, stop_step=12) for r in range(2)]
    steps_per_epoch = n // g
    for epoch in range(2):
        seen = []
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            for s in ranks:
                batch = s.batch(step)
                assert len(batch) == 8 and {e for e, _ in batch} == {epoch}
                seen += [p for _, p in batch]
        assert len(seen) == len(set(seen)) == steps_per_epoch * g  # no repeats in an epoch


def test_step_sampler_resume_and_world_size_invariance():
    full = list(StepBatchSampler(50, 8, 0, 1, seed=3, start_step=0, stop_step=10))
    resumed = list(StepBatchSampler(50, 8, 0, 1, seed=3, start_step=4, stop_step=10))
    assert resumed == full[4:]
    halves = [StepBatchSampler(50, 8, r, 2, 3, 0, 10) for r in range(2)]
    for step, batch in enumerate(full):  # the global batch is the same whatever the world size
        assert halves[0].batch(step) + halves[1].batch(step) == batch
    with pytest.raises(ValueError, match="train.batch_size"):
        StepBatchSampler(5, 8, 0, 1, 0, 0, 1)
