"""Stage 3 sample builder: box jitter, crops, pair / neighbour choice, fallbacks, ablation
sources, augmentation draws, and that a plan is a pure function of (seed, epoch, position)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.orl import intra_pair_statistics, proposal_records, random_pairs
from support.synthetic_pairs import write_pairs

from loaders.orl_samples import SampleBuilder, draw_photometric, local_crops
from loaders.pairs import PairRecord
from loaders.shards import ShardIndex
from orl_fast.core.boxes import box_iou, jitter_box, random_resized_crop
from orl_fast.core.config import ConfigError, load_config

PAPER = load_config("paper")


def _jitter_many(box, width, height, n, min_iou=0.5, seed=0, outside="reject"):
    o = PAPER.orl
    rng = np.random.default_rng(seed)
    return np.stack([jitter_box(rng, box, width, height, o.jitter_shift, o.jitter_area,
                                o.jitter_aspect, min_iou, o.jitter_tries, outside)
                     for _ in range(n)])


def test_jitter_ranges_and_iou_away_from_borders():
    box = np.array([4000, 3000, 200, 100])  # far from the borders: nothing is clipped
    out = _jitter_many(box, 10_000, 8_000, 3000).astype(float)
    x, y, w, h = box.astype(float)
    shift_x = (out[:, 0] + out[:, 2] / 2 - (x + w / 2)) / w
    shift_y = (out[:, 1] + out[:, 3] / 2 - (y + h / 2)) / h
    area = out[:, 2] * out[:, 3] / (w * h)
    aspect = out[:, 2] / out[:, 3]
    tol = 0.015  # rounding to whole pixels
    assert np.abs(shift_x).max() <= 0.5 + tol and np.abs(shift_y).max() <= 0.5 + tol
    assert area.min() >= 0.5 - tol and area.max() <= 2.0 + tol
    assert aspect.min() >= 0.5 - tol and aspect.max() <= 2.0 + tol
    assert (box_iou(out, box) > 0.5).all()
    assert len({tuple(b) for b in out}) > 2900  # real jitter, not the original box


def test_jitter_without_iou_spans_the_ranges():
    """With the IoU test off, the draws cover shift +-50%, area 0.5-2x, aspect 1/2-2 (log-uniform)."""
    box = np.array([4000, 3000, 200, 200])
    out = _jitter_many(box, 10_000, 8_000, 4000, min_iou=0.0).astype(float)
    shift_x = (out[:, 0] + out[:, 2] / 2 - 4100) / 200
    area = out[:, 2] * out[:, 3] / 200**2
    log_aspect = np.log(out[:, 2] / out[:, 3])
    assert -0.51 < shift_x.min() < -0.48 and 0.48 < shift_x.max() < 0.51
    assert 0.49 < area.min() < 0.52 and 1.95 < area.max() < 2.03
    assert np.log(0.49) < log_aspect.min() < np.log(0.52)
    assert np.log(1.95) < log_aspect.max() < np.log(2.03)
    # log-uniform aspect: as many boxes wider than 1.41:1 as narrower than 1:1.41
    wide, narrow = (log_aspect > np.log(2) / 2).mean(), (log_aspect < -np.log(2) / 2).mean()
    assert wide == pytest.approx(0.25, abs=0.03) and narrow == pytest.approx(0.25, abs=0.03)


def test_jitter_near_borders_rejects_candidates_outside_the_image():
    """Official ``aug_bbox`` (Jiahao000/ORL openselfsup/datasets/orl.py:59-67): a candidate is
    kept only if it lies inside the image (x >= 0, y >= 0, x + w <= W, y + h <= H) and has IoU >
    0.5 with the box; after 200 failed tries the box itself comes back."""
    box = np.array([0, 0, 60, 40])  # in the corner of a 64 x 48 image: most draws leave it
    out = _jitter_many(box, 64, 48, 2000)
    assert (out[:, :2] >= 0).all() and (out[:, 0] + out[:, 2] <= 64).all()
    assert (out[:, 1] + out[:, 3] <= 48).all() and (out[:, 2:] >= 1).all()
    assert (box_iou(out, box) > 0.5).all()
    moved = ~(out == box).all(1)
    assert moved.mean() > 0.9  # rejected candidates are drawn again, not given up on
    # every kept candidate is a whole draw: none was cut at the border (clipping would leave the
    # far corner of many at exactly 64 / 48 while moving the near one)
    assert len({tuple(b) for b in out[moved]}) > 100
    # no candidate can reach IoU > 0.99: the original box comes back
    impossible = _jitter_many(box, 64, 48, 20, min_iou=0.99)
    assert (impossible == box).all()
    with pytest.raises(ValueError, match="outside"):
        _jitter_many(box, 64, 48, 1, outside="wrap")


def test_jitter_clip_variant_clips_to_the_image():
    box = np.array([0, 0, 60, 40])
    out = _jitter_many(box, 64, 48, 2000, outside="clip")
    assert (out[:, :2] >= 0).all() and (out[:, 0] + out[:, 2] <= 64).all()
    assert (out[:, 1] + out[:, 3] <= 48).all() and (out[:, 2:] >= 1).all()
    assert (box_iou(out, box) > 0.5).all()
    touching = (out[:, 0] == 0) | (out[:, 1] == 0) | (out[:, 0] + out[:, 2] == 64) | (
        out[:, 1] + out[:, 3] == 48)
    rejected = _jitter_many(box, 64, 48, 2000)
    touching_rejected = (rejected[:, 0] == 0) | (rejected[:, 1] == 0) | (
        rejected[:, 0] + rejected[:, 2] == 64) | (rejected[:, 1] + rejected[:, 3] == 48)
    assert touching.mean() > touching_rejected.mean()


def test_random_resized_crop_is_torchvision_like():
    rng = np.random.default_rng(0)
    crops = np.stack([random_resized_crop(rng, 640, 480, (0.08, 1.0), (3 / 4, 4 / 3))
                      for _ in range(3000)]).astype(float)
    assert (crops[:, :2] >= 0).all() and (crops[:, 0] + crops[:, 2] <= 640).all()
    assert (crops[:, 1] + crops[:, 3] <= 480).all()
    area = crops[:, 2] * crops[:, 3] / (640 * 480)
    assert area.min() >= 0.075 and area.max() <= 1.0
    assert area.min() < 0.1 and area.max() > 0.9
    assert (crops[:, 2] / crops[:, 3]).min() >= 0.74 and (crops[:, 2] / crops[:, 3]).max() <= 1.35
    # an impossible ratio falls back to the central crop with the ratio clamped
    assert list(random_resized_crop(rng, 100, 10, (0.9, 1.0), (1.0, 1.0))) == [45, 0, 10, 10]


def test_augmentation_rates_match_the_config():
    rng = np.random.default_rng(0)
    aug = PAPER.aug
    draws = [draw_photometric(rng, aug) for _ in range(3000)]  # 6 crops each, views 0,1,0,1,0,1

    def rate(name, view=None):
        v = np.stack([getattr(d, name) for d in draws])
        return (v[:, view::2] if view is not None else v).mean()

    def close(value, p, n):  # 5 standard deviations of a binomial proportion
        return abs(value - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12

    n = 3000 * 6
    assert close(rate("flip"), 0.5, n) and close(rate("jitter"), 0.8, n)
    assert close(rate("gray"), 0.2, n)
    sigma = np.stack([d.sigma for d in draws])
    assert (sigma[:, 0::2] > 0).all()                        # blur p 1.0 on view 1
    assert close((sigma[:, 1::2] > 0).mean(), 0.1, n // 2)   # 0.1 on view 2
    assert sigma[sigma > 0].min() >= 0.1 and sigma.max() <= 2.0
    assert rate("solarize", 0) == 0 and close(rate("solarize", 1), 0.2, n // 2)
    factors = np.concatenate([d.factors[d.jitter] for d in draws])
    lo, hi = factors.min(axis=0), factors.max(axis=0)
    assert np.allclose(lo, [0.6, 0.6, 0.8, -0.1], atol=0.01)
    assert np.allclose(hi, [1.4, 1.4, 1.2, 0.1], atol=0.01)
    off = np.concatenate([d.factors[~d.jitter] for d in draws])
    assert (off == [1, 1, 1, 0]).all()
    orders = np.concatenate([d.order for d in draws])
    assert (np.sort(orders, axis=1) == [0, 1, 2, 3]).all()  # permutations ...
    assert close((orders[:, 0] == 2).mean(), 0.25, n)      # ... in random order


@pytest.fixture(scope="module")
def coco_pairs(coco_shards, tmp_path_factory) -> str:
    return random_pairs(coco_shards, str(tmp_path_factory.mktemp("mined")))


def _builder(shards, mined, *overrides):
    return SampleBuilder(load_config("small", [f"data={shards}", f"pairs={mined}", *overrides]))


def test_plans_are_pure_functions_of_seed_epoch_position(coco_shards, coco_pairs):
    a = _builder(coco_shards, coco_pairs)
    b = _builder(coco_shards, coco_pairs)
    for epoch, pos in [(0, 0), (0, 5), (3, 5), (1, 63)]:
        pa, pb = a.plan(epoch, pos), b.plan(epoch, pos)
        assert np.array_equal(pa.boxes, pb.boxes) and pa.neighbor == pb.neighbor
        assert np.array_equal(pa.photo.factors, pb.photo.factors)
    assert not np.array_equal(a.plan(0, 5).boxes, a.plan(1, 5).boxes)
    other_seed = _builder(coco_shards, coco_pairs, "train.seed=1")
    assert not np.array_equal(a.plan(0, 5).boxes, other_seed.plan(0, 5).boxes)


def test_inter_pair_comes_from_the_record_and_boxes_fit_the_images(coco_shards, coco_pairs):
    from loaders.pairs import open_pairs, read_record

    builder = _builder(coco_shards, coco_pairs)
    pairs = open_pairs(coco_pairs)
    for pos in range(0, 64, 3):
        plan = builder.plan(2, pos)
        rec = read_record(pairs, plan.key)
        assert plan.has_pair and plan.has_box and plan.neighbor != plan.key
        slot = list(rec.neighbors).index(plan.neighbor)
        j = [i for i in rec.pairs_of(slot)
             if (rec.pair_query_box[i] == plan.boxes[4]).all()
             and (rec.pair_neighbor_box[i] == plan.boxes[5]).all()]
        assert j, "the inter-RoI boxes are a mined pair of that neighbour"
        nw, nh = builder.size_of(plan.neighbor)
        for c, (w, h) in enumerate([(plan.width, plan.height)] * 5 + [(nw, nh)]):
            x0, y0, bw, bh = plan.boxes[c]
            assert x0 >= 0 and y0 >= 0 and bw >= 1 and bh >= 1
            assert x0 + bw <= w and y0 + bh <= h
        # the intra boxes are jitters of one kept box (IoU > 0.5 with it)
        ious = box_iou(rec.boxes, plan.boxes[2]), box_iou(rec.boxes, plan.boxes[3])
        assert ((ious[0] > 0.5) & (ious[1] > 0.5)).any()


def _record(key, neighbors, slots, scores, boxes=10):
    n = len(slots)
    return PairRecord(key, 100, 100, boxes=[[0, 0, 50, 50]] * boxes, neighbors=neighbors,
                      neighbor_sims=np.linspace(1, 0.5, len(neighbors)), pair_neighbor=slots,
                      pair_query_box=[[i, 0, 10, 10] for i in range(n)],
                      pair_neighbor_box=[[0, i, 10, 10] for i in range(n)], pair_score=scores)


def test_k_and_n_from_the_mined_pairs(scene_shards, tmp_path):
    """K: the neighbour is among the first K; N: the pair among the top max(1, int(N x boxes)).
    Both are what the pairs were mined with (recorded with them), unless ``orl.knn_k`` /
    ``orl.topn_frac`` ask for less; more than was mined is a ConfigError naming the field."""
    shards, _ = scene_shards
    keys = [ShardIndex(shards).key_at(i) for i in range(4)]
    records = [_record(keys[0], keys[1:4], [0, 0, 0, 1, 1, 2, 2, 2],
                       [0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.6], boxes=20)]

    def chosen(mined, *overrides):
        b = _builder(shards, mined, *overrides)
        out = set()
        for epoch in range(300):
            plan = b.plan(epoch, 0)
            out.add((plan.neighbor, int(plan.boxes[4][0])))
        return out

    # Mined with K=10 (>= 3 neighbours), N=10%: N x 20 boxes = 2 pairs per neighbour, the best 2
    k10 = str(tmp_path / "k10")
    write_pairs(k10, records, knn_k=10, topn_frac=0.1)
    assert chosen(k10) == {(keys[1], 1), (keys[1], 2), (keys[2], 3), (keys[2], 4),
                           (keys[3], 6), (keys[3], 7)}
    assert chosen(k10, "orl.knn_k=1", "orl.topn_frac=0.05") == {(keys[1], 1)}
    # the mining section of the training config plays no part (it describes a mining run)
    assert chosen(k10, "mine.knn_k=1", "mine.topn_frac=0.05") == chosen(k10)
    # Mined with K=2, N=100%: all pairs of the first two neighbours
    k2 = str(tmp_path / "k2")
    write_pairs(k2, records, knn_k=2, topn_frac=1.0)
    assert {n for n, _ in chosen(k2)} == {keys[1], keys[2]} and len(chosen(k2)) == 5
    assert len(chosen(k2, "orl.knn_k=2", "orl.topn_frac=1.0")) == 5
    with pytest.raises(ConfigError, match=r"^orl.knn_k: 3 is more than .* \(mine.knn_k=2\)"):
        _builder(shards, k2, "orl.knn_k=3")
    with pytest.raises(ConfigError, match=r"^orl.topn_frac: 0.5 is more than .* \(mine.topn_frac=0.1\)"):
        _builder(shards, k10, "orl.topn_frac=0.5")


def test_fallbacks_to_whole_image_boxes(scene_shards, tmp_path):
    shards, _ = scene_shards
    k0, k1 = ShardIndex(shards).key_at(0), ShardIndex(shards).key_at(1)
    write_pairs(str(tmp_path), [
        PairRecord(k0, 160, 120),                                      # no box, no neighbour
        _record(k1, [999_999_999], [0], [0.5]),                        # neighbour not in data
    ])
    b = _builder(shards, str(tmp_path))
    for pos in (0, 1, 2):                                              # pos 2: no record at all
        plan = b.plan(0, pos)
        assert not plan.has_pair and plan.neighbor == plan.key
        whole = [0, 0, plan.width, plan.height]
        assert (plan.boxes[4] == whole).all() and (plan.boxes[5] == whole).all()
        if pos != 1:
            assert not plan.has_box
            for c in (2, 3):  # the whole-image box jittered (IoU > 0.5) or itself
                assert box_iou(plan.boxes[c], whole)[0] > 0.5


def test_gt_boxes_ablation(scene_shards, tmp_path):
    shards, instances = scene_shards
    coco = json.loads(Path(instances).read_text())
    # records without boxes or pairs: the intra boxes must come from the annotations
    index = ShardIndex(shards)
    write_pairs(str(tmp_path), [PairRecord(index.key_at(i), 160, 120) for i in range(48)])
    b = _builder(shards, str(tmp_path), "orl.boxes=gt", f"orl.gt_instances={instances}",
                 "mine.min_box_size=1", "orl.jitter_both=false")
    by_name = {im["file_name"].split("/")[-1]: im["id"] for im in coco["images"]}
    for pos in range(0, 48, 5):
        plan = b.plan(0, pos)
        name = b.images.meta(plan.key)["source"].split("/")[-1]
        gt = [a["bbox"] for a in coco["annotations"] if a["image_id"] == by_name[name]]
        assert plan.has_box and list(plan.boxes[2]) in gt  # jitter_both=false: p is the box
    with pytest.raises(ConfigError, match="orl.gt_instances"):
        load_config("small", ["orl.boxes=gt"])


def test_multicrop_ablation_and_terms_off(coco_shards):
    """patches=random needs no mined pairs: four random resized crops of x; a zero loss weight
    drops that term's patches (and the need for neighbours)."""
    cfg = load_config("small", [f"data={coco_shards}", "orl.patches=random"])
    b = SampleBuilder(cfg)
    assert b.pairs is None and not b.uses_neighbor and b.crops == (0, 1, 2, 3, 4, 5)
    plan = b.plan(0, 7)
    assert plan.neighbor == plan.key and not plan.has_pair
    assert len({tuple(x) for x in plan.boxes}) == 6
    area = plan.boxes[2:, 2] * plan.boxes[2:, 3] / (plan.width * plan.height)
    assert (area > 0.07).all() and (area <= 1).all()
    assert local_crops(load_config("small", ["orl.loss_weights=[1,1,0]"]).orl.loss_weights) == (2, 3)
    assert local_crops(load_config("small", ["orl.loss_weights=[1,0,1]"]).orl.loss_weights) == (4, 5)
    with pytest.raises(ConfigError, match="^pairs"):
        SampleBuilder(load_config("small", [f"data={coco_shards}"]))


@pytest.fixture(scope="module")
def coco_proposal_pairs(coco_shards, tmp_path_factory) -> str:
    """Pair shards whose kept boxes are the real proposals of the first 8 coco-mini images."""
    pytest.importorskip("cv2.ximgproc", reason="needs OpenCV contrib (the mine extra)")
    mined = str(tmp_path_factory.mktemp("proposals"))
    write_pairs(mined, proposal_records(coco_shards, 8))
    return mined


def test_intra_pairs_follow_the_official_distribution(coco_shards, coco_proposal_pairs):
    """The intra-RoI pairs of the default (paper) config have the distribution of the official
    code on real selective-search boxes: p a kept box itself (orl.py:112, ``ibox1 =
    random.choice(intra_box)``), p' its jitter (orl.py:113, ``ibox2 = aug_bbox(...)``),
    candidates outside the image rejected (orl.py:59) and the box itself after 200 tries
    (orl.py:67).

    Reference figures: the official ``get_iou`` / ``aug_bbox`` (Jiahao000/ORL@2ad64f7
    openselfsup/datasets/orl.py:19-67, run unchanged) on the same kept boxes (these 8 images,
    20,000 draws): median IoU(p, p') 0.5665, no pair at IoU <= 0.5, 4.98% of p' touching the
    border, 1.79% the box itself. Tolerances: about 3 standard errors of the 1,600 draws here
    (standard errors: 0.55 points for a proportion near 5%, 0.33 near 2%, about 0.003 for the
    median IoU; tolerances 2 points, 1 point and 0.01). The variant
    of both jittered and clipped candidates (orl.jitter_both=true, orl.jitter_outside=clip)
    gives the figures measured on the earlier default: about 46% of the pairs at IoU <= 0.5 and
    about 62% of p' touching the border (official: none and 5%).
    """
    positions, epochs = range(8), 200

    def stats(*overrides):
        return intra_pair_statistics(
            _builder(coco_shards, coco_proposal_pairs, "orl.loss_weights=[1,1,0]", *overrides),
            positions, epochs)

    official = stats()
    assert official["pairs"] == 1600
    assert official["frac_iou_le_half"] == 0.0
    assert official["median_iou"] == pytest.approx(0.5665, abs=0.01)
    assert official["frac_border"] == pytest.approx(0.0498, abs=0.02)
    assert official["frac_fallback"] == pytest.approx(0.0179, abs=0.01)
    variant = stats("orl.jitter_both=true", "orl.jitter_outside=clip")
    assert 0.40 <= variant["frac_iou_le_half"] <= 0.52
    assert 0.50 <= variant["frac_border"] <= 0.72
    assert variant["median_iou"] < official["median_iou"] - 0.03
