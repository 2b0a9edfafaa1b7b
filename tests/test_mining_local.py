"""The whole Stage 2 on generated scenes, units run in-process (``mine.executor=local``).

Checks the outputs against each other (records vs proposals, kNN and RoI embeddings), resume and
per-stage invalidation, undecodable images, the official JSON round trip, purity and viz.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from support.mining import MINE, MODEL, make_ckpt, mine_config, output_digests

from loaders.pairs import PairRecord, mined_with, open_pairs, read_record, write_pair_shards
from loaders.shards import iter_shard, shard_summary, write_idx, write_index, write_shard
from mining import official_json, pipeline
from mining.arrays import NpyRows, load_arrays
from mining.purity import pair_purity
from orl_fast import cli
from orl_fast.core.defaults import MineConfig

SCENES = ["mine.executor=local", "mine.min_box_size=24", "mine.ss_max_side=0"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(str(tmp_path_factory.mktemp("stage1")))


@pytest.fixture(scope="module")
def mined(scene_shards, ckpt, tmp_path_factory):
    shards, _ = scene_shards
    out = str(tmp_path_factory.mktemp("mined") / "m")
    summary = pipeline.run(mine_config(shards, ckpt, out, *SCENES), progress=False)
    return out, summary


def test_outputs_are_consistent(mined, scene_shards):
    out, summary = mined
    assert summary["images"] == 48 and summary["shards"] == 2
    assert summary["decode_failed"] == {"embed": 0, "proposals": 0, "roi": 0}
    assert summary["knn"]["k"] == 10 and summary["pairs"]["records"] == 48
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == summary
    index = open_pairs(out)
    assert len(index) == 48
    pairs_total = 0
    for sid in (0, 1):
        props = load_arrays(f"{out}/proposals/props-{sid:06d}.npz")
        knn = load_arrays(f"{out}/knn/knn-{sid:06d}.npz")
        rows = NpyRows(f"{out}/roi_embed/roi-{sid:06d}.npy")
        offsets = np.concatenate([[0], np.cumsum(props["counts"])])
        assert rows.shape == (offsets[-1], 512)  # resnet18 pooled features
        assert np.array_equal(props["keys"], knn["keys"])
        for i, key in enumerate(props["keys"]):
            rec = read_record(index, int(key))
            boxes = props["boxes"][offsets[i]:offsets[i + 1]].astype(np.int32)
            assert np.array_equal(rec.boxes, boxes) and (rec.width, rec.height) == (160, 120)
            assert np.array_equal(rec.neighbors, knn["neighbors"][i])
            assert np.allclose(rec.neighbor_sims, knn["sims"][i])
            assert int(key) not in rec.neighbors.tolist()
            q_emb = rows.rows(offsets[i], offsets[i + 1]).astype(np.float32)
            for slot, nkey in enumerate(rec.neighbors):
                p = rec.pairs_of(slot)
                other = read_record(index, int(nkey))
                expected = min(max(1, int(0.1 * len(boxes))), len(boxes) * len(other.boxes))
                assert len(p) == expected
                assert (np.diff(rec.pair_score[p]) <= 0).all()
                qi = [np.flatnonzero((boxes == b).all(1))[0] for b in rec.pair_query_box[p]]
                ni = [np.flatnonzero((other.boxes == b).all(1))[0]
                      for b in rec.pair_neighbor_box[p]]
                nsid = 0 if nkey < 24 else 1
                nprops = load_arrays(f"{out}/proposals/props-{nsid:06d}.npz")
                j = int(np.searchsorted(nprops["keys"], nkey))
                start = int(np.concatenate([[0], np.cumsum(nprops["counts"])])[j])
                n_emb = NpyRows(f"{out}/roi_embed/roi-{nsid:06d}.npy").rows(
                    start, start + len(other.boxes)).astype(np.float32)
                cos = (q_emb[qi] * n_emb[ni]).sum(1)
                assert np.allclose(rec.pair_score[p], cos, atol=1e-5)
                # The top entries of the whole similarity matrix.
                assert rec.pair_score[p][-1] >= np.sort((q_emb @ n_emb.T).ravel())[-len(p)] - 1e-6
            pairs_total += len(rec.pair_score)
    assert pairs_total == summary["pairs"]["pairs"]


def test_rerun_skips_finished_units_and_is_identical(mined, scene_shards, ckpt):
    out, _ = mined
    before = output_digests(out)
    pipeline.run(mine_config(scene_shards[0], ckpt, out, *SCENES), progress=False)
    with open(os.path.join(out, "manifest.json")) as f:
        runs = json.load(f)["runs"]
    assert runs[-1]["units_skipped"] == dict.fromkeys(
        ["embed", "proposals", "knn", "roi", "pairs"], 2)
    assert output_digests(out) == before


def test_changing_topn_redoes_only_the_pairs(mined, scene_shards, ckpt, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(mined[0], out)
    before = output_digests(out)
    summary = pipeline.run(mine_config(scene_shards[0], ckpt, out, *SCENES,
                                       "mine.topn_frac=0.3"), progress=False)
    with open(os.path.join(out, "manifest.json")) as f:
        skipped = json.load(f)["runs"][-1]["units_skipped"]
    assert skipped == {"embed": 2, "proposals": 2, "knn": 2, "roi": 2, "pairs": 0}
    after = output_digests(out)
    changed = {k for k in after if after[k] != before[k]}
    assert changed and all(k.startswith("pairs/") or k == "summary.json" for k in changed)
    assert summary["pairs"]["pairs"] > mined[1]["pairs"]["pairs"]


def test_back_to_an_earlier_setting_redoes_its_units(mined, scene_shards, ckpt, tmp_path):
    """top-n 0.3, then the original setting again in the same out: the outputs are the original
    setting's, not the last run's (the records of a setting whose outputs were since overwritten
    do not count as done)."""
    out = str(tmp_path / "copy")
    shutil.copytree(mined[0], out)
    before = output_digests(out)
    pipeline.run(mine_config(scene_shards[0], ckpt, out, *SCENES,
                             "mine.topn_frac=0.3"), progress=False)
    assert output_digests(out) != before
    pipeline.run(mine_config(scene_shards[0], ckpt, out, *SCENES), progress=False)
    with open(os.path.join(out, "manifest.json")) as f:
        skipped = json.load(f)["runs"][-1]["units_skipped"]
    assert skipped == {"embed": 2, "proposals": 2, "knn": 2, "roi": 2, "pairs": 0}
    assert output_digests(out) == before


def test_a_new_model_takes_the_proposals_of_another_mined_directory(mined, scene_shards, ckpt,
                                                                   tmp_path):
    """mine.proposals_from: a second Stage 1 model mined into its own directory takes the first
    run's selective search (same images, same settings) instead of recomputing it, and ends with
    the outputs of a run that computed everything itself."""
    other = make_ckpt(str(tmp_path / "stage1-b"), seed=1)
    alone, taken = str(tmp_path / "alone"), str(tmp_path / "taken")
    pipeline.run(mine_config(scene_shards[0], other, alone, *SCENES), progress=False)
    pipeline.run(mine_config(scene_shards[0], other, taken, *SCENES,
                             f"mine.proposals_from={mined[0]}"), progress=False)
    with open(os.path.join(taken, "manifest.json")) as f:
        run = json.load(f)["runs"][-1]
    assert run["proposals_adopted"] == 2 and run["units_skipped"]["proposals"] == 2
    assert run["units_skipped"]["roi"] == 0  # the new model's RoI embeddings are its own
    records = list((tmp_path / "taken" / "units" / "proposals").iterdir())
    assert len(records) == 2
    assert all(json.loads(r.read_text())["adopted_from"] == mined[0] for r in records)
    assert output_digests(taken) == output_digests(alone)
    assert output_digests(taken) != output_digests(mined[0])  # another model: other pairs


def test_proposals_from_a_directory_that_cannot_give_them_is_one_line_naming_the_field(
        mined, scene_shards, ckpt, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()

    def mine(out: str, *overrides: str) -> int:
        return cli.main(["mine", "--config", "small", *MODEL, *MINE, *SCENES,
                         f"data={scene_shards[0]}", f"ckpt={ckpt}", f"out={out}", *overrides])

    rc = mine(str(tmp_path / "a"), f"mine.proposals_from={empty}")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "mine.proposals_from" in err and "not a mined directory" in err
    assert not (tmp_path / "a").exists()  # refused before OUT is touched
    rc = mine(str(tmp_path / "b"), "mine.min_box_size=32", f"mine.proposals_from={mined[0]}")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "mine.proposals_from" in err and "no proposals of these images with these" in err


def test_undecodable_images_are_counted_not_fatal(scene_shards, ckpt, tmp_path):
    """One bad image in shard 0, shard 1 entirely bad: counted, no records, nothing crashes."""
    shards = str(tmp_path / "shards")
    samples = list(itertools.islice(iter_shard(f"{scene_shards[0]}/shard-000000.tar"), 8))
    garbage = b"\xff\xd8\xff\xe0 truncated garbage"
    bad_key = samples[2][0]
    samples[2] = (bad_key, garbage, samples[2][2])
    entries = []
    for sid, part in ((0, samples[:6]), (1, [(k, garbage, m) for k, _, m in samples[6:]])):
        name = f"shard-{sid:06d}.tar"
        rows = write_shard(f"{shards}/{name}", part)
        write_idx(f"{shards}/shard-{sid:06d}.idx.npy", rows)
        entries.append(shard_summary(name, rows))
    write_index(shards, entries)
    out = str(tmp_path / "mined")
    summary = pipeline.run(mine_config(shards, ckpt, out, *SCENES), progress=False)
    assert summary["images"] == 8
    assert summary["decode_failed"] == {"embed": 3, "proposals": 3, "roi": 0}
    assert summary["failed_keys"] == sorted(int(k) for k in (bad_key, samples[6][0],
                                                             samples[7][0]))
    assert summary["pairs"]["records"] == 5 and summary["knn"]["k"] == 4  # K honoured: N - 1
    index = open_pairs(out)
    assert len(index) == 5
    assert read_record(index, bad_key) is None  # Stage 3 falls back to the whole image
    for key, *_ in samples[:6]:
        if key != bad_key:
            assert int(bad_key) not in read_record(index, key).neighbors.tolist()


def test_official_json_round_trip(mined, scene_shards, tmp_path):
    out, _summary = mined
    paths = official_json.export_official(out, str(tmp_path / "official"))
    with open(paths["correspondence"]) as f:
        corr = json.load(f)
    pa = corr["pseudo_annotations"]
    assert len(corr["images"]["file_name"]) == len(pa["bbox"]) == len(pa["knn_bbox_pair"]) == 48
    assert corr["images"]["file_name"][0] == "scene_000000.jpg"
    assert np.array(pa["knn_image_id"]).shape == (48, 10)
    assert corr["info"]["knn_bbox_pair_ratio"] == 0.1
    assert all(len(pair) == 8 for slots in pa["knn_bbox_pair"] for slot in slots
               for pair in slot)
    _names, knn_pos, sims = official_json.read_knn_json(paths["knn"])
    assert knn_pos.shape == (48, 10) and sims.shape == (48, 10)
    # Selective-search file: refiltering the kept boxes keeps them all.
    mine = MineConfig(min_box_size=24, max_boxes=20)
    ss = official_json.read_ss_json(paths["ss"], mine)
    assert [b.tolist() for b in ss] == pa["bbox"]

    back = str(tmp_path / "imported")
    index = official_json.import_official(paths["correspondence"], scene_shards[0], back)
    assert index["num_images"] == 48 and index["num_shards"] == 2
    assert index["mined"] == {"knn_k": 10, "topn_frac": 0.1}  # Stage 3's K and N, as mined
    assert mined_with(back) == mined_with(out) == index["mined"]
    a, b = open_pairs(out), open_pairs(back)
    for key in range(48):
        ra, rb = read_record(a, key), read_record(b, key)
        for field in ("boxes", "neighbors", "neighbor_sims", "pair_neighbor", "pair_query_box",
                      "pair_neighbor_box", "pair_score"):
            assert np.array_equal(getattr(ra, field), getattr(rb, field)), (key, field)
        assert (ra.width, ra.height) == (rb.width, rb.height)


def test_purity_on_hand_made_records(scene_shards, tmp_path):
    shards, instances = scene_shards
    with open(instances) as f:
        coco = json.load(f)
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"] - 1, []).append((a["category_id"], a["bbox"]))
    # Two images sharing a category: pair their GT boxes of it, and a GT box with background.
    (qa, na), cat = next(((q, n), c) for q in anns for n in anns if q < n
                         for c in {c for c, _ in anns[q]} & {c for c, _ in anns[n]})
    qbox = next(b for c, b in anns[qa] if c == cat)
    nbox = next(b for c, b in anns[na] if c == cat)
    far = [0, 0, 2, 2]  # matches nothing
    recs = [PairRecord(qa, 160, 120, boxes=[qbox, far], neighbors=[na], neighbor_sims=[0.5],
                       pair_neighbor=[0, 0], pair_query_box=[qbox, far],
                       pair_neighbor_box=[nbox, nbox], pair_score=[0.9, 0.8]),
            PairRecord(na, 160, 120, boxes=[nbox], neighbors=[qa], neighbor_sims=[0.5])]
    write_pair_shards(str(tmp_path / "m"), [(0, recs)], knn_k=1, topn_frac=1.0)
    p = pair_purity(str(tmp_path / "m"), instances, shards)
    assert p["images_with_gt"] == 2 and p["pairs"] == 2
    assert p["pair_purity"] == 0.5 and p["pair_objects"] == 0.5
    assert p["box_gt_match"] == pytest.approx(2 / 3, abs=1e-4)


def test_purity_and_viz_on_the_mined_scenes(mined, scene_shards, tmp_path):
    out, _ = mined
    p = pair_purity(out, scene_shards[1])
    assert p["images_with_gt"] == 48 and p["pairs"] > 0
    for k in ("pair_purity", "random_pair_purity", "box_gt_match", "pair_objects"):
        assert 0.0 <= p[k] <= 1.0
    assert cli.main(["viz", "pairs", out, "--out", str(tmp_path / "viz"), "--top", "5"]) == 0
    html = (tmp_path / "viz" / "index.html").read_text()
    assert html.count("<tr>") == 6 and "pairs-00.png" in html
    with Image.open(tmp_path / "viz" / "pairs-00.png") as img:
        assert img.width > 600 and img.height > 3 * 176


def test_progress_counts_images_and_boxes(capsys):
    from types import SimpleNamespace

    plan = SimpleNamespace(shard_ids=[0, 1, 2], counts=[100, 100, 41])
    done = {stage: set() for stage in pipeline.STAGES}
    done["embed"] = {0}  # finished by an earlier run
    progress = pipeline.Progress(plan, done, enabled=True)
    progress.update("proposals", 2, {"boxes": 12_345})
    progress.update("embed", 1, {})
    assert progress.images["embed"] == 200 and progress.images["proposals"] == 41
    assert progress.bar.n == 241 and progress.bar.total == 5 * 241
    shown = progress.bar.postfix
    assert "proposals 41/241 (12.3k boxes)" in shown and "embed 200/241" in shown
    assert "pairs 0/241" in shown
    progress.close()


def test_mine_tools_in_the_cli(mined, scene_shards, tmp_path, capsys):
    out, _ = mined
    shards, instances = scene_shards
    assert cli.main(["mine", "purity", "--pairs", out, "--gt", instances]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == pair_purity(out, instances)
    assert os.path.exists(os.path.join(out, "purity.json"))
    assert cli.main(["mine", "export-official", f"pairs={out}", "--out",
                     str(tmp_path / "official")]) == 0
    corr = tmp_path / "official" / "correspondence.json"
    assert corr.exists()
    assert cli.main(["mine", "import-official", str(corr), "--data", shards, "--out",
                     str(tmp_path / "back")]) == 0
    assert "48 records" in capsys.readouterr().out
    assert len(open_pairs(str(tmp_path / "back"))) == 48


def test_viz_pairs_writes_to_a_url_with_ground_truth(mined, scene_shards):
    import fsspec

    from mining import viz

    out, _ = mined
    _, instances = scene_shards
    assert cli.main(["viz", "pairs", "--pairs", out, "--out", "memory://viz-gt", "--gt",
                     instances, "--top", "6"]) == 0
    assert not os.path.exists("memory:") and not os.path.exists("memory:/viz-gt")
    mem = fsspec.filesystem("memory")
    page = mem.cat("/viz-gt/index.html").decode()
    assert "pair purity" in page and "scene_0000" in page  # file names, not keys
    with Image.open(mem.open("/viz-gt/pairs-00.png")) as img:
        assert img.width == viz.COLS * viz.CELL[0] + (viz.COLS + 1) * 8
    shown = viz.render_pairs(out, "memory://viz-gt2", top=6, gt=instances)
    assert shown["purity"] == pair_purity(out, instances)


def test_pairs_shown_come_from_several_groups():
    from mining.viz import NO_OBJECT, TopPair, spread

    pairs = [TopPair(1 - i / 100, i, 100 + i, (0, 0, 1, 1), (0, 0, 1, 1)) for i in range(12)]
    groups = ["disc"] * 8 + ["star"] * 2 + [NO_OBJECT, "ring"]
    chosen = spread(pairs, groups, 6)
    assert [g for _, g in chosen] == ["disc", "star", "ring", NO_OBJECT, "disc", "star"]
    assert [p.score for p, g in chosen if g == "disc"] == [1.0, 0.99]  # each group's best first
    # An image already shown waits while pairs of other images are left.
    pairs = [TopPair(0.9, 1, 2, (0, 0, 1, 1), (0, 0, 1, 1)),
             TopPair(0.8, 1, 3, (0, 0, 1, 1), (0, 0, 1, 1)),
             TopPair(0.7, 4, 5, (0, 0, 1, 1), (0, 0, 1, 1))]
    assert [p.score for p, _ in spread(pairs, ["a"] * 3, 3)] == [0.9, 0.7, 0.8]


def test_purity_no_better_than_random_is_a_plain_warning():
    from mining.purity import summary_line, warning

    good = {"pairs": 10, "pair_purity": 0.4, "random_pair_purity": 0.1, "box_gt_match": 0.5}
    bad = {**good, "pair_purity": 0.1}
    assert warning(good) == "" and "WARNING" not in summary_line(good)
    assert "no better than random pairs" in summary_line(bad)
