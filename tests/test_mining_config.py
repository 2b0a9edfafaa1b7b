"""Stage 2 config: the paper's defaults, validation naming the field, stage hashes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from loaders.shards import write_index
from mining.manifest import make_plan
from orl_fast.core import checkpoint
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import MineConfig


def test_paper_defaults():
    m = MineConfig()
    assert m.knn_k == 10                              # K = 10 nearest neighbours
    assert m.topn_frac == 0.1                         # top N = 10% RoI pairs
    assert m.min_box_size == 96                       # minimal scale 96 px
    assert m.aspect_range == pytest.approx((1 / 3, 3.0))
    assert m.max_iou == 0.5
    assert m.max_boxes == 100                         # top 100 proposals
    assert m.roi_size == 224                          # RoIs resized to 224 x 224
    assert (m.ss_mode, m.ss_max_side) == ("fast", 0)  # official: fast mode, full resolution
    assert (m.embed_size, m.embed_view) == (224, "center_crop")  # Resize 256 + CenterCrop 224
    paper = load_config("paper").mine
    got, want = dataclasses.asdict(paper), dataclasses.asdict(m)
    assert got.keys() == want.keys()
    for k, v in want.items():  # floats (and tuples of them) approximately, the rest exactly
        numeric = isinstance(v, float) or (isinstance(v, tuple) and all(
            isinstance(x, float) for x in v))
        assert got[k] == (pytest.approx(v) if numeric else v), k


@pytest.mark.parametrize("override, field", [
    ("mine.knn_k=0", "mine.knn_k"),
    ("mine.topn_frac=0", "mine.topn_frac"),
    ("mine.topn_frac=1.5", "mine.topn_frac"),
    ("mine.max_iou=2", "mine.max_iou"),
    ("mine.aspect_range=[3, 1]", "mine.aspect_range"),
    ("mine.ss_max_side=8", "mine.ss_max_side"),
    ("mine.knn_backend=annoy", "mine.knn_backend"),
    ("mine.ss_mode=slow", "mine.ss_mode"),
    ("mine.executor=dask", "mine.executor"),
    ("mine.actor_cpus=0", "mine.actor_cpus"),
    ("mine.faiss_index=' '", "mine.faiss_index"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("paper", [override])


def test_stage_hashes_follow_what_each_stage_reads(tmp_path):
    write_index(str(tmp_path / "data"), [{"name": "shard-000000.tar", "count": 1,
                                          "first_key": 0, "last_key": 0, "bytes": 1}])
    ckpt = checkpoint.save(str(tmp_path / "run"), 0, {"model": {}}, keep_last=1)
    base = make_plan("out", str(tmp_path / "data"), ckpt, MineConfig(), "cpu").hashes

    def changed(device="cpu", **fields):
        h = make_plan("out", str(tmp_path / "data"), ckpt,
                      dataclasses.replace(MineConfig(), **fields), device).hashes
        return {s for s in h if h[s] != base[s]}

    assert changed(topn_frac=0.2) == {"pairs"}
    assert changed(knn_k=5) == {"knn", "pairs"}
    assert changed(min_box_size=64) == {"proposals", "roi", "pairs"}
    assert changed(roi_size=112) == {"roi", "pairs"}
    assert changed(embed_size=112) == {"embed", "knn", "pairs"}
    assert changed(batch_size=8, ray_num_cpus=7, cpu_actors=3, executor="local",
                   proposals_from="elsewhere") == set()
    assert changed(device="cuda") == {"embed", "knn", "roi", "pairs"}
    assert changed(precision="fp32") == set()  # precision applies on CUDA only


def test_keys_map_to_their_shards(tmp_path):
    write_index(str(tmp_path / "data"), [
        {"name": "shard-000000.tar", "count": 3, "first_key": 0, "last_key": 4, "bytes": 1},
        {"name": "shard-000001.tar", "count": 0, "first_key": -1, "last_key": -1, "bytes": 0},
        {"name": "shard-000002.tar", "count": 2, "first_key": 10, "last_key": 12, "bytes": 1}])
    ckpt = checkpoint.save(str(tmp_path / "run"), 0, {"model": {}}, keep_last=1)
    plan = make_plan("out", str(tmp_path / "data"), ckpt, MineConfig(), "cpu")
    assert plan.shard_ids == [0, 2]  # empty shards have no units
    assert [plan.shard_of(k) for k in (0, 4, 7, 10, 12)] == [0, 0, 0, 2, 2]
    assert plan.shards_of(np.array([12, 0, 10])).tolist() == [2, 0, 2]
    assert plan.path("pairs", 2).endswith("pairs/pairs-000002.tar")
