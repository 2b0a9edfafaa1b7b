"""e. Top-N pair selection, and the array files the units write."""

from __future__ import annotations

import numpy as np
import pytest

from mining.arrays import NpyRows, NpyWriter, load_arrays, save_arrays
from mining.embed import crop_resize, forward_batched, view_box
from mining.roi_pairs import top_pairs


def test_top_pairs_hand_made_matrix():
    sim = np.array([
        [0.1, 0.9, 0.2],
        [0.8, 0.3, 0.95],
        [0.0, 0.5, 0.4],
        [0.7, 0.1, 0.1],
    ], np.float32)
    # 4 query boxes x 0.5 -> 2 pairs: the two highest entries of the whole matrix.
    qi, ki, score = top_pairs(sim, 0.5)
    assert list(zip(qi, ki)) == [(1, 2), (0, 1)]
    assert score.tolist() == pytest.approx([0.95, 0.9])
    # A query box may pair with several neighbour boxes (topk over the flattened matrix).
    qi, ki, _ = top_pairs(sim, 0.75)
    assert list(zip(qi, ki)) == [(1, 2), (0, 1), (1, 0)]


def test_top_pairs_at_least_one_and_official_rounding():
    sim = np.random.default_rng(0).random((9, 5)).astype(np.float32)
    assert len(top_pairs(sim, 0.1)[0]) == 1          # int(0.9) = 0 -> at least 1
    assert len(top_pairs(np.random.default_rng(1).random((100, 100)), 0.1)[0]) == 10
    assert len(top_pairs(np.random.default_rng(2).random((57, 3)), 0.1)[0]) == 5
    assert len(top_pairs(np.ones((30, 1)), 1.0)[0]) == 30  # capped by the matrix size
    assert len(top_pairs(np.zeros((0, 4)), 0.1)[0]) == 0


def test_top_pairs_ties_lower_index_first():
    sim = np.array([[0.5, 0.9], [0.9, 0.9]], np.float32)
    qi, ki, _ = top_pairs(sim, 1.0)
    assert list(zip(qi, ki)) == [(0, 1), (1, 0)]


def test_save_arrays_is_deterministic(tmp_path):
    a = {"keys": np.arange(5, dtype=np.int64), "boxes": np.ones((5, 4), np.int16)}
    save_arrays(str(tmp_path / "a.npz"), **a)
    save_arrays(str(tmp_path / "b.npz"), **a)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = load_arrays(str(tmp_path / "a.npz"))
    assert back["boxes"].dtype == np.int16 and np.array_equal(back["keys"], a["keys"])


def test_npy_streamed_rows(tmp_path):
    data = np.random.default_rng(0).random((10, 6)).astype(np.float16)
    path = str(tmp_path / "r.npy")
    with NpyWriter(path, 10, 6, "<f2") as w:
        w.write(data[:3])
        w.write(data[3:])
    assert np.array_equal(np.load(path), data)
    rows = NpyRows(path)
    assert np.array_equal(rows.rows(4, 7), data[4:7]) and rows.rows(2, 2).shape == (0, 6)
    with pytest.raises(IndexError):
        rows.rows(8, 11)
    rows.close()
    with pytest.raises(ValueError, match="9 rows of the 10"), NpyWriter(path, 10, 6, "<f2") as w:
        w.write(data[:9])


def test_crops_and_batching():
    import torch

    img = torch.arange(3 * 40 * 60, dtype=torch.float32).reshape(3, 40, 60) % 251
    img = img.to(torch.uint8)
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1) / 255.0
    # A box at the crop size is an exact copy of the region (aligned roi_align, 1 sample).
    crop = crop_resize(img, np.array([[10, 5, 16, 16]]), 16, mean, std)
    assert torch.allclose(crop[0], img[:, 5:21, 10:26].float(), atol=1e-3)
    assert view_box(60, 40, "center_crop").tolist() == [[12.5, 2.5, 35.0, 35.0]]
    assert view_box(60, 40, "resize").tolist() == [[0, 0, 60, 40]]
    chunks = [torch.full((n, 1), float(i)) for i, n in enumerate([3, 0, 5, 1])]
    out = list(forward_batched(chunks, lambda x: x.numpy().ravel(), 4))
    assert [len(o) for o in out] == [4, 4, 1]
    assert np.concatenate(out).tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3]


def test_pair_gate_waits_for_every_roi_shard_in_the_neighbour_range():
    from mining.pipeline import PairGate

    ids = [0, 1, 2, 4, 7]  # input shards (3, 5 and 6 held no image)
    gate = PairGate(ids, roi_done={4})
    assert gate.wait(1, lo=0, hi=2) is False      # needs 0, 1, 2
    assert gate.wait(4, lo=4, hi=4) is True       # its only shard is done already
    assert gate.wait(7, lo=2, hi=7) is False      # needs 2, 4 (done), 7
    assert gate.done(2) == []                     # 1 still waits for 0, 1; 7 for 7
    assert gate.done(2) == []                     # a repeated completion changes nothing
    assert gate.done(7) == [7]
    assert gate.done(0) == []
    assert gate.done(1) == [1]
    assert not gate.waiting.any()
    # State is a few integers per shard, whatever the number of neighbours.
    assert sum(a.nbytes for a in (gate.ids, gate.lo, gate.hi, gate.left)) == 4 * 8 * len(ids)
