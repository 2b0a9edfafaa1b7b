"""c. Selective search and the ORL box filter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from loaders.images import decode_array
from loaders.shards import iter_shard
from mining.proposals import propose, propose_shard_isolated
from orl_fast.core.boxes import box_iou, filter_boxes, scale_boxes
from orl_fast.core.defaults import MineConfig

PAPER = {"min_size": 96, "aspect_range": (1 / 3, 3.0), "max_iou": 0.5, "max_boxes": 100}


def test_box_iou_xywh():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [10, 10, 5, 5], [0, 0, 20, 20]])
    assert box_iou(a, b)[0] == pytest.approx([1.0, 50 / 150, 0.0, 0.25])


def test_filter_size_and_aspect():
    boxes = np.array([
        [0, 0, 95, 200],     # w < 96
        [0, 0, 200, 95],     # h < 96
        [0, 0, 96, 96],      # kept: exactly the minimum
        [300, 0, 100, 300],  # kept: w/h = 1/3 exactly
        [0, 300, 300, 100],  # overlaps nothing kept; w/h = 3 exactly: kept
        [600, 0, 99, 300],   # w/h < 1/3
        [0, 600, 301, 100],  # w/h > 3
    ])
    kept = filter_boxes(boxes, **PAPER)
    assert kept.tolist() == [[0, 0, 96, 96], [300, 0, 100, 300], [0, 300, 300, 100]]


def test_filter_greedy_iou_in_ranking_order():
    boxes = np.array([
        [0, 0, 100, 100],
        [10, 0, 100, 100],    # IoU with the first 0.82: dropped
        [50, 0, 100, 100],    # IoU 1/3 with the first: kept
        [100, 0, 100, 100],   # IoU 0 with the first, 1/3 with the third: kept
        [40, 0, 100, 100],    # IoU 0.43 with first, 0.82 with third: dropped
    ])
    assert filter_boxes(boxes, **PAPER).tolist() == [
        [0, 0, 100, 100], [50, 0, 100, 100], [100, 0, 100, 100]]
    # The order decides: the same boxes ranked otherwise keep others.
    assert filter_boxes(boxes[[1, 0, 2, 3, 4]], **PAPER)[:1].tolist() == [[10, 0, 100, 100]]
    # max_iou=1 keeps everything that passes size and aspect.
    assert len(filter_boxes(boxes, **{**PAPER, "max_iou": 1.0})) == 5


def test_filter_top_k_and_empty():
    grid = np.array([[x * 100, y * 100, 100, 100] for y in range(15) for x in range(15)])
    kept = filter_boxes(grid, **PAPER)
    assert len(kept) == 100 and kept.tolist() == grid[:100].tolist()
    assert filter_boxes(np.zeros((0, 4)), **PAPER).shape == (0, 4)
    assert filter_boxes(np.array([[0, 0, 10, 10]]), **PAPER).shape == (0, 4)


def test_scale_boxes_to_original_pixels():
    boxes = np.array([[10, 5, 20, 30], [0, 0, 50, 40]])
    out = scale_boxes(boxes, 2.0, 2.0, 100, 80)
    assert out.tolist() == [[20, 10, 40, 60], [0, 0, 100, 80]]
    # Clipped to the image.
    assert scale_boxes(np.array([[45, 35, 10, 10]]), 2.0, 2.0, 100, 80).tolist() == [
        [90, 70, 10, 10]]


def test_whole_image_fallback():
    flat = np.full((120, 160, 3), 127, np.uint8)
    boxes, _raw, whole = propose(flat, MineConfig(min_box_size=500), seed=0)
    assert whole and boxes.tolist() == [[0, 0, 160, 120]]


@pytest.fixture(scope="module")
def coco_image(coco_mini):
    name = sorted(os.listdir(coco_mini / "images"))[3]
    return decode_array((coco_mini / "images" / name).read_bytes())


@pytest.mark.parametrize("ss_max_side", [0, 200])
def test_selective_search_on_a_real_image(coco_image, ss_max_side):
    mine = MineConfig(ss_max_side=ss_max_side, min_box_size=48)
    boxes, raw, whole = propose(coco_image, mine, seed=7)
    h, w = coco_image.shape[:2]
    assert not whole and raw > len(boxes) >= 5 and len(boxes) <= 100
    x, y, bw, bh = boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + bw <= w).all() and (y + bh <= h).all()
    assert (np.minimum(bw, bh) >= 48).all()
    assert (bw <= 3 * bh).all() and (bh <= 3 * bw).all()
    iou = box_iou(boxes, boxes)
    assert iou[np.triu_indices(len(boxes), 1)].max() <= 0.5
    # A pure function of (image, seed): OpenCV's rand()-based ranking is seeded per image.
    again, _, _ = propose(coco_image, mine, seed=7)
    assert np.array_equal(boxes, again)


def test_shard_proposals_in_the_helper_process(scene_shards):
    shards, _ = scene_shards
    mine = MineConfig(min_box_size=24, ss_max_side=0)
    url = os.path.join(shards, "shard-000000.tar")
    r = propose_shard_isolated(url, mine)
    assert len(r["keys"]) == 24 and r["failed"] == []
    assert r["counts"].sum() == len(r["boxes"]) and (r["counts"] >= 1).all()
    assert (r["size"] == [160, 120]).all()
    # The helper computes what this process computes for the same (image, key).
    key, data, _ = next(iter_shard(url))
    here, raw, _ = propose(decode_array(data), mine, int(key))
    assert np.array_equal(r["boxes"][:r["counts"][0]], here) and r["raw_counts"][0] == raw


def test_helper_errors_are_raised_and_a_dead_helper_is_replaced(scene_shards, tmp_path):
    from mining import proposals

    mine = MineConfig(min_box_size=24, ss_max_side=64)
    with pytest.raises(RuntimeError, match="FileNotFoundError"):
        propose_shard_isolated(str(tmp_path / "missing.tar"), mine)
    proposals._helper.kill()
    proposals._helper.wait()
    r = propose_shard_isolated(os.path.join(scene_shards[0], "shard-000001.tar"), mine)
    assert len(r["keys"]) == 24
