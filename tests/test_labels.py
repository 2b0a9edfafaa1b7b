"""Labels as data: the label step on every source format (matching by ingest source, partial
labelling, errors), the store, SCAN's label gate and neighbour draw, the plans and batches of
the label-aware modes on both loaders, mode none bit for bit, exports without the class head."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from support.common import TINY_OVERRIDES, orl_fast_cmd, subprocess_env
from support.orl import TINY_ORL, coded_dataset, expected_patch, random_pairs
from support.synthetic_pairs import write_pairs

from evaluation import backbones, export
from loaders.ingest import ingest
from loaders.labels import STORE, LabelError, LabelStore, attach, gate_neighbors, open_store
from loaders.orl_samples import SampleBuilder
from loaders.orl_torch import ORLDataset
from loaders.pairs import PairRecord
from loaders.sampling import StepBatchSampler
from loaders.shards import ShardIndex
from mining.knn import KnnIndex
from orl_fast.core import checkpoint
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import IngestConfig
from orl_fast.core.losses import regression_loss
from orl_fast.training import runs
from orl_fast.training.engine import cast


def _image(path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), colour).save(path, quality=95)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """all/{cat,dog,misc}/*.jpg ingested (keys in sorted path order) and a label tree
    labels/{cat,dog}/ naming the cat and dog images by the same relative paths."""
    root = tmp_path_factory.mktemp("tree")
    names = ["cat/a.jpg", "cat/b.jpg", "dog/c.jpg", "dog/d.jpg", "misc/e.jpg", "misc/f.jpg"]
    for i, name in enumerate(names):
        _image(root / "all" / name, (40 * i, 100, 200))
        if not name.startswith("misc"):
            _image(root / "labels" / name, (0, 0, 0))
    shards = str(root / "shards")
    ingest(str(root / "all"), shards, IngestConfig(shard_size=4, workers=1), progress=False)
    return root, shards, names


def _store(path) -> LabelStore:
    return LabelStore.read(str(path))


def test_imagefolder_labels_by_relative_path_and_partial(tree):
    root, shards, _ = tree
    header = attach(shards, str(root / "labels"))
    assert header["source_format"] == "imagefolder" and header["classes"] == ["cat", "dog"]
    assert (header["labelled"], header["images"], header["multi_label"]) == (4, 6, False)
    store = _store(os.path.join(shards, STORE))
    assert store.keys.tolist() == [0, 1, 2, 3]  # misc/ stays in the set, unlabelled
    assert [store.tags(k).tolist() for k in range(6)] == [[0], [0], [1], [1], [], []]
    tags, known = store.targets(4)
    assert not known.any() and not tags.any()
    tags, known = store.targets(2)
    assert tags.tolist() == [0, 1] and known.tolist() == [1, 1]
    # a vocabulary without dog: an unknown class is a one-line error naming it
    with pytest.raises(LabelError, match=r"class 'dog' is not in the vocabulary \(cat\)"):
        attach(shards, str(root / "labels"), classes=("cat",), out=str(root / "x.npz"))
    # a folder of images that are not in the shards
    _image(root / "other" / "cat" / "zzz.jpg", (1, 2, 3))
    with pytest.raises(LabelError, match="'cat/zzz.jpg' matches no image of the shards"):
        attach(shards, str(root / "other"), out=str(root / "x.npz"))


def test_csv_labels_paths_keys_multi_label_and_errors(tree, tmp_path):
    _, shards, _ = tree
    path = tmp_path / "labels.csv"
    path.write_text("path,label\ncat/a.jpg,cat\nall/dog/c.jpg,dog,cat\n000000004,misc\n"
                    "misc/f.jpg\n")
    out = str(tmp_path / "store.npz")
    header = attach(shards, str(path), out=out)
    assert header["source_format"] == "csv" and header["classes"] == ["cat", "dog", "misc"]
    assert header["multi_label"] and header["labelled"] == 4 and header["with_tags"] == 3
    store = _store(out)
    assert store.tags(0).tolist() == [0] and store.tags(2).tolist() == [0, 1]
    assert store.tags(4).tolist() == [2]                    # by shard key
    assert store.row(5) >= 0 and store.tags(5).tolist() == []  # labelled with no class
    assert store.row(1) == -1                               # not in the file: unlabelled
    for text, message in [("x/cat/a.jpg,cat\n", "line 1: 'x/cat/a.jpg' matches no image"),
                          ("a.jpg,cat\nb.jpg,dog\n", None),
                          ("cat/a.jpg,cat\nall/cat/a.jpg,cat\n", "line 2: .* is the image of"),
                          ("cat/a.jpg,bird\n", "line 1: class 'bird' is not in the vocabulary")]:
        path.write_text(text)
        if message is None:  # basenames alone match when they are unique
            assert attach(shards, str(path), out=out)["labelled"] == 2
            continue
        with pytest.raises(LabelError, match=message):
            attach(shards, str(path), out=out, classes=("cat", "dog"))


def test_voc_labels_csv_difficult_is_unknown(shared_data, tmp_path):
    voc = shared_data / "voc07"
    with open(voc / "labels.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:6]
    images = tmp_path / "images"
    images.mkdir()
    for row in body + rows[6:8]:
        (images / f"{row[0]}.jpg").write_bytes((voc / "images" / f"{row[0]}.jpg").read_bytes())
    shards = str(tmp_path / "shards")
    ingest(str(images), shards, IngestConfig(shard_size=8, workers=1), progress=False)
    body[0][1:4] = ["0", "1", "-1"]  # aeroplane difficult only, bicycle present
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    h = attach(shards, str(labels), out=str(tmp_path / "voc.npz"))
    assert h["source_format"] == "voc" and h["classes"][:2] == ["aeroplane", "bicycle"]
    assert (h["labelled"], h["images"]) == (5, 7)
    store = _store(tmp_path / "voc.npz")
    index = ShardIndex(shards)
    key = next(k for k in (index.key_at(i) for i in range(7))
               if index.meta(k)["source"].endswith(f"{body[0][0]}.jpg"))
    tags, known = store.targets(key)
    assert known[0] == 0 and tags[0] == 0          # difficult: presence unknown
    assert tags[1] == 1 and known[1] == 1 and known[2] == 1 and tags[2] == 0
    for row in body[1:]:
        k = next(k for k in (index.key_at(i) for i in range(7))
                 if index.meta(k)["source"].endswith(f"{row[0]}.jpg"))
        assert store.tags(k).tolist() == [i - 1 for i, v in enumerate(row) if v == "1"]
    with open(labels, "a") as f:
        f.write("999999," + ",".join(["-1"] * 20) + "\n")
    with pytest.raises(LabelError, match="'999999' matches no image"):
        attach(shards, str(labels), out=str(tmp_path / "voc.npz"))


def test_coco_tags_and_box_labels(scene_shards, tmp_path):
    shards, instances = scene_shards
    import json

    with open(instances) as f:
        coco = json.load(f)
    out = str(tmp_path / "coco.npz")
    h = attach(shards, instances, out=out)
    assert (h["labelled"], h["images"], h["boxes"]) == (48, 48, len(coco["annotations"]))
    store = _store(out)
    index = ShardIndex(shards)
    im = coco["images"][3]
    key = next(index.key_at(i) for i in range(48)
               if index.meta(index.key_at(i))["source"].endswith(im["file_name"]))
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    assert store.tags(key).tolist() == sorted({a["category_id"] - 1 for a in anns})
    boxes, _ = store.boxes_of(key)
    assert boxes.tolist() == [a["bbox"] for a in anns]  # scenes are stored at their size
    # a RoI takes the class of the box it overlaps with IoU >= 0.5, else -1
    b = np.array(anns[0]["bbox"], np.float64)
    probe = np.array([b, b + [0, 0, b[2], b[3]], [0, 0, 1, 1]])  # IoU 1, 0.25, 0
    assert store.box_labels(key, probe, 0.5).tolist() == [anns[0]["category_id"] - 1, -1, -1]
    assert store.box_labels(key, probe, 0.2).tolist()[:2] == [anns[0]["category_id"] - 1] * 2
    # unknown category / image in the instances file: errors naming the annotation
    bad = {**coco, "annotations": [{**coco["annotations"][0], "category_id": 99}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LabelError, match="annotation id 1: category id 99"):
        attach(shards, str(tmp_path / "bad.json"), out=out)


def test_store_is_checked_at_start_up(tree, scene_shards, tmp_path):
    _, shards, _ = tree
    with pytest.raises(ConfigError, match=r"^label.source: no label store"):
        open_store(shards, str(tmp_path / "none.npz"))
    scenes, instances = scene_shards
    attach(scenes, instances, out=str(tmp_path / "scenes.npz"))
    with pytest.raises(ConfigError, match=r"^label.source: .* was made for other shards"):
        open_store(shards, str(tmp_path / "scenes.npz"))
    done = subprocess.run(orl_fast_cmd("pretrain", "--config", "small", *TINY_OVERRIDES,
                                       f"data={shards}", f"out={tmp_path / 'run'}",
                                       "label.mode=opera", f"label.source={tmp_path}/none.npz"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "label.source: no label store" in done.stderr
    for bad, field in [("label.mode=supervised", "label.mode"), ("label.jaccard=0", "label.jaccard"),
                       ("label.beta=2", "label.beta"), ("label.class_loss=focal", "label.class_loss")]:
        with pytest.raises(ConfigError) as e:
            load_config("paper", [bad])
        assert str(e.value).startswith(field)
    with pytest.raises(ConfigError, match="^label.mode: scan .* model.method=byol"):
        load_config("paper", ["label.mode=scan", "model.method=mocov3"])


def test_labels_command(tree, tmp_path):
    root, shards, _ = tree
    env = subprocess_env()
    done = subprocess.run(orl_fast_cmd("labels", shards, "--from", str(root / "labels"),
                                       "--out", str(tmp_path / "l.npz")),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "4 of 6 images labelled" in done.stdout and "2 classes" in done.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("nowhere.jpg,cat\n")
    done = subprocess.run(orl_fast_cmd("labels", shards, "--from", str(bad), "--format", "csv",
                                       "--out", str(tmp_path / "l.npz")),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "line 1: 'nowhere.jpg' matches no image" in done.stderr


# ----------------------------------------------------------------------------- SCAN's gate


@pytest.fixture(scope="module")
def gate_world(tmp_path_factory):
    """Eight images: keys 0-2 class a, 3-5 class b, 6 class c (alone), 7 unlabelled; 2-D
    embeddings on a circle so that cosine neighbours cross the classes."""
    root = tmp_path_factory.mktemp("gate")
    for i in range(8):
        _image(root / "images" / f"im{i}.jpg", (30 * i, 50, 90))
    shards = str(root / "shards")
    ingest(str(root / "images"), shards, IngestConfig(shard_size=8, workers=1), progress=False)
    (root / "labels.csv").write_text("".join(f"im{i}.jpg,{c}\n" for i, c in
                                             enumerate("aaabbbc")))
    attach(shards, str(root / "labels.csv"))
    angles = np.array([0.0, 0.3, 1.2, 0.15, 0.45, 2.0, 0.05, 0.2])
    emb = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    return shards, emb


def test_scan_gate_expected_neighbour_lists(gate_world):
    shards, emb = gate_world
    store = open_store(shards)
    idx, sims = KnnIndex(emb).search(0, 8, 7)   # candidates: every other image by cosine
    keys = np.arange(8)
    got, got_sims = gate_neighbors(store, keys, keys[idx], sims, 2, jaccard=1.0)
    assert got.tolist() == [[1, 2], [0, 2], [1, 0], [4, 5], [3, 5], [4, 3],
                            [-1, -1],                # class c has one image: no neighbour
                            keys[idx[7, :2]].tolist()]  # unlabelled: its plain neighbours
    assert np.allclose(got_sims[0], emb[[1, 2]] @ emb[0]) and (got_sims[6] == 0).all()
    # unlabelled queries, unlabelled or missing (-1) candidates are never label neighbours
    ok = store.same_label(np.array([0, 0, 7]), np.array([[1, 3], [6, -1], [0, 1]]), 0.5)
    assert ok.tolist() == [[True, False], [False, False], [False, False]]


def test_scan_neighbour_draw_and_fallback(gate_world, tmp_path):
    shards, emb = gate_world
    keys = np.arange(8)
    idx, sims = KnnIndex(emb).search(0, 8, 7)
    records = [PairRecord(int(k), 48, 40, neighbors=keys[idx[k]], neighbor_sims=sims[k])
               for k in keys]
    mined = str(tmp_path / "mined")
    write_pairs(mined, records)
    cfg = load_config("small", [*TINY_OVERRIDES, f"data={shards}", f"pairs={mined}",
                                "label.mode=scan", "label.jaccard=1", "label.tau_w=1"])
    builder = SampleBuilder(cfg, (1.0, 0.0, 0.0))
    draws = {k: [] for k in range(8)}
    for epoch in range(300):
        for pos in range(8):
            plan = builder.plan(epoch, pos)
            draws[plan.key].append(plan.scan_neighbor)
            assert builder.targets(plan)["scan_valid"].item() == (plan.scan_neighbor >= 0)
    assert set(draws[6]) == {-1} and set(draws[7]) == {-1}  # fallback: the instance term
    for k in range(6):
        same = [j for j in range(6) if j // 3 == k // 3 and j != k]
        assert set(draws[k]) == set(same)
        w = np.exp(emb[same] @ emb[k] / 1.0)
        w /= w.sum()
        freq = np.array([draws[k].count(j) for j in same]) / 300
        assert np.abs(freq - w).max() < 0.1, (k, freq, w)


# ----------------------------------------------------------------------------- plans, batches


def _batch(builder, step=0):
    ds = ORLDataset(builder)
    items = [ds[i] for i in StepBatchSampler(len(builder), 4, 0, 1, 0, step, step + 1).batch(step)]
    return torch.utils.data.default_collate(items)


def test_mode_none_is_todays_loss_bit_for_bit(scene_shards, tmp_path):
    shards, instances = scene_shards
    mined = random_pairs(shards, str(tmp_path / "mined"))
    base = [*TINY_OVERRIDES, *TINY_ORL, f"data={shards}", f"pairs={mined}", "train.batch_size=4",
            "train.precision=fp64"]
    plain = load_config("small", base)
    none = load_config("small", [*base, "label.mode=none", "label.source=/nowhere.npz",
                                 "label.class_loss=bce", "label.roi_head=true", "label.beta=0.9"])
    attach(shards, instances)
    losses = []
    for cfg in (plain, none):
        builder = SampleBuilder(cfg)
        batch = _batch(builder)
        assert len(batch) == 2  # no targets in mode none
        torch.manual_seed(0)
        model = runs.label_model(cfg, builder, cfg.orl.loss_weights).double()
        inputs = cast(runs.to_inputs(cfg, builder.crops)(batch, torch.device("cpu")),
                           torch.float64)
        torch.manual_seed(1)
        losses.append(model(**inputs)[0])
        # today's formula, written out: sum of weight x (L(q(v1), z'(v2)) + L(q(v2), z'(v1)))
        torch.manual_seed(1)
        ref = 0.0
        for (name, attr), w in zip(model.TERMS, model.loss_weights):
            a, b = (inputs["v1"], inputs["v2"]) if name == "image" else inputs[name]
            pred = getattr(model, attr)
            p1 = pred(model.online.projector(model.online.backbone(a)))
            p2 = pred(model.online.projector(model.online.backbone(b)))
            with torch.no_grad():
                t1, t2 = model.target(a), model.target(b)
            ref = ref + w * (regression_loss(p1, t2) + regression_loss(p2, t1))
        assert torch.equal(losses[-1], ref)
    assert torch.equal(losses[0], losses[1])
    # the label-aware plans keep the six crops of mode none (their draws come last)
    modes = {m: SampleBuilder(load_config("small", [*base, f"label.mode={m}",
                                                    "label.roi_head=true"]))
             for m in ("none", "opera", "scan")}
    for pos in range(6):
        ref = modes["none"].plan(1, pos)
        for m in ("opera", "scan"):
            plan = modes[m].plan(1, pos)
            assert np.array_equal(plan.boxes, ref.boxes) and plan.neighbor == ref.neighbor
            assert all(np.array_equal(getattr(plan.photo, f), getattr(ref.photo, f))
                       for f in ("flip", "jitter", "order", "factors", "gray", "sigma",
                                 "solarize"))
        assert modes["opera"].plan(1, pos).roi_labels is not None


def test_opera_batches_carry_targets_and_box_labels(scene_shards, tmp_path):
    shards, instances = scene_shards
    attach(shards, instances)
    cfg = load_config("small", [*TINY_OVERRIDES, *TINY_ORL, f"data={shards}",
                                "train.batch_size=4", "label.mode=opera", "label.roi_head=true",
                                "orl.boxes=gt", f"orl.gt_instances={instances}",
                                "orl.loss_weights=[1,1,0]", "mine.min_box_size=8"])
    builder = SampleBuilder(cfg)
    views, patches, targets = _batch(builder)
    store = open_store(shards)
    keys = [builder.plan(e, p).key for e, p in StepBatchSampler(48, 4, 0, 1, 0, 0, 1).batch(0)]
    assert torch.equal(targets["tags"], torch.stack([torch.from_numpy(store.targets(k)[0])
                                                     for k in keys]))
    roi = targets["roi"][:, 2:4]   # jittered ground-truth boxes (IoU >= 0.5) mostly keep a class
    assert (roi >= 0).float().mean() > 0.3 and (targets["roi"][:, [0, 1, 4, 5]] == -1).all()
    inputs = runs.to_inputs(cfg, builder.crops)((views, patches, targets), torch.device("cpu"))
    assert set(inputs) == {"v1", "v2", "intra", "labels"}
    assert inputs["labels"]["roi_intra"].shape == (4, 2)
    torch.manual_seed(0)
    model = runs.label_model(cfg, builder, cfg.orl.loss_weights)
    loss, metrics = model(**inputs)
    assert torch.isfinite(loss) and metrics["loss_roi_class"] > 0
    assert model.class_head[-1].weight.shape[0] == 8 == model.roi_class_head[-1].weight.shape[0]


def test_scan_view_on_both_loaders(tmp_path):
    """Position-coded images: SCAN's third view is the intended region of the label neighbour
    (image i's neighbour is i ^ 1, the same class), on the torch path and on DALI's CPU backend."""
    pytest.importorskip("nvidia.dali")
    from loaders.dali_loader import DALIBatches

    shards, mined = coded_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("".join(f"coded_{i}.jpg,{'ab'[i // 2]}\n"
                                                 for i in range(4)))
    attach(shards, str(tmp_path / "labels.csv"))
    cfg = load_config("small", [f"data={shards}", f"pairs={mined}", "aug.crop_size=64",
                                "orl.patch_size=32", "train.batch_size=4", "label.mode=scan",
                                "aug.color_jitter_p=0", "aug.grayscale_p=0", "aug.blur_p=[0,0]",
                                "aug.solarize_p=[0,0]"])
    builder = SampleBuilder(cfg, (1.0, 0.0, 0.0))
    sampler = StepBatchSampler(4, 4, 0, 1, 0, 0, 2)
    torch_batches = [_batch(builder, step) for step in range(2)]
    dali_batches = list(DALIBatches(builder, sampler, None, 1, 0, 2))
    blue = {builder.images.key_at(i): b for i, b in enumerate((40, 100, 160, 220))}
    for step in range(2):
        views_t, _, targets_t = torch_batches[step]
        views_d, targets_d = dali_batches[step]
        assert views_t.shape[1] == views_d.shape[1] == 3
        assert torch.equal(targets_t["scan_valid"], targets_d["scan_valid"].cpu())
        for i, (epoch, pos) in enumerate(sampler.batch(step)):
            plan = builder.plan(epoch, pos)
            assert plan.scan_neighbor == builder.images.key_at(pos ^ 1)
            want = expected_patch(plan.scan_box, 256, 192, 64, plan.scan_photo.flip[0])
            for views in (views_t, views_d):
                x = views[i, 2].double().cpu().numpy()
                assert np.abs(x[:2] - want).mean() < 1.5
                assert abs(x[2].mean() - blue[plan.scan_neighbor]) < 2


def test_exports_never_contain_the_class_head(scene_shards, tmp_path):
    shards, instances = scene_shards
    attach(shards, instances)
    cfg = load_config("small", [*TINY_OVERRIDES, *TINY_ORL, f"data={shards}",
                                "label.mode=opera", "label.roi_head=true",
                                "orl.patches=random", f"out={tmp_path / 'run'}"])
    builder = SampleBuilder(cfg)
    model = runs.label_model(cfg, builder, cfg.orl.loss_weights)
    assert model.class_head is not None and model.roi_class_head is not None
    checkpoint.save(str(tmp_path / "run"), 1, {"stage": "stage3", "config": cfg.to_dict(),
                                               "model": model.state_dict()}, keep_last=1)
    weights = backbones.load(str(tmp_path / "run"))
    backbone_keys = set(model.online.backbone.state_dict())
    assert set(weights.state_dict) == backbone_keys
    head_shapes = {tuple(v.shape) for k, v in model.state_dict().items()
                   if "class_head" in k and v.ndim == 2}
    for fmt in export.FORMATS:
        path = str(tmp_path / f"export-{fmt}.{'pkl' if fmt == 'detectron2' else 'pth'}")
        export.export(weights, fmt, path)
        if fmt == "detectron2":
            with open(path, "rb") as f:
                state = pickle.load(f)["model"]
        else:
            state = torch.load(path, weights_only=True)
        assert not any("class_head" in k or "predictor" in k or "projector" in k for k in state)
        assert len(state) <= len(backbone_keys)
        assert not any(tuple(np.shape(v)) in head_shapes for v in state.values())


def test_stage2_label_gate(scene_shards, tmp_path):
    """orl-fast mine with label.mode=scan: labelled images keep label neighbours only, kept
    pairs never join boxes of different box labels; only the kNN and pairs hashes change."""
    from support.mining import make_ckpt, mine_config

    from loaders.pairs import open_pairs, read_record
    from mining import pipeline
    from mining.manifest import make_plan

    shards, instances = scene_shards
    attach(shards, instances)
    ckpt = make_ckpt(str(tmp_path / "stage1"))
    scenes = ["mine.executor=local", "mine.min_box_size=24", "mine.ss_max_side=0"]
    gated = mine_config(shards, ckpt, str(tmp_path / "m"), *scenes, "label.mode=scan",
                        "label.jaccard=0.5", "label.box_iou=0.3")
    plain = mine_config(shards, ckpt, str(tmp_path / "m"), *scenes)
    hashes = [make_plan(c.out, c.data, c.ckpt, c.mine, "cpu", pipeline.label_gate(c)).hashes
              for c in (plain, gated)]
    assert [s for s in hashes[0] if hashes[0][s] != hashes[1][s]] == ["knn", "pairs"]
    summary = pipeline.run(gated, progress=False)
    store = open_store(shards)
    index = open_pairs(gated.out)
    checked = 0
    for i in range(48):
        key = ShardIndex(shards).key_at(i)
        record = read_record(index, key)
        if record is None:
            continue
        assert store.same_label(np.array([key]), record.neighbors[None], 0.5).all()
        for slot, qbox, nbox in zip(record.pair_neighbor, record.pair_query_box,
                                    record.pair_neighbor_box):
            a = store.box_labels(key, qbox[None], 0.3)[0]
            b = store.box_labels(int(record.neighbors[slot]), nbox[None], 0.3)[0]
            assert a < 0 or b < 0 or a == b
            checked += a >= 0 and b >= 0
    assert checked > 0 and summary["pairs"]["records"] > 0


def test_class_head_of_another_vocabulary_is_a_config_error(tmp_path):
    from orl_fast.core.defaults import LabelConfig, ModelConfig
    from orl_fast.core.models import ORL

    cfg = ModelConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
    label = LabelConfig(mode="opera", head_hidden_dim=4)
    path = checkpoint.save(str(tmp_path), 1, {"stage": "stage1", "model": ORL(
        cfg, (1.0, 0.0, 0.0), label, 8).state_dict()}, keep_last=1)
    runs.check_class_head(ORL(cfg, (1.0, 0.0, 0.0), label, 8), path, "ckpt")  # same size: fine
    with pytest.raises(ConfigError, match=r"^ckpt: .* class head of 8 classes, .* vocabulary 6"):
        runs.check_class_head(ORL(cfg, (1.0, 0.0, 0.0), label, 6), path, "ckpt")
