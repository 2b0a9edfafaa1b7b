"""Ingest and Stage 2 mining on an S3-compatible object store (moto on loopback).

Every byte written to the bucket must equal what the same run writes to local disk, Ray workers
must reach the store through the standard AWS variables alone, and a rerun against the bucket
must skip every finished unit.
"""

from __future__ import annotations

import hashlib
import json
import os

import fsspec
import pytest
from support.mining import make_ckpt, mine_config, output_digests
from support.s3 import download_tree

from loaders.ingest import ingest
from loaders.shards import ShardIndex
from mining import pipeline
from orl_fast.core.defaults import IngestConfig

pytestmark = pytest.mark.slow

SCENES = ["mine.min_box_size=24", "mine.ss_max_side=0"]


def tree_digests(root: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            rel = os.path.relpath(path, root)
            if not rel.startswith(skip):
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_ingest_to_s3_equals_local(coco_mini, s3_server, tmp_path):
    names = sorted(os.listdir(coco_mini / "images"))[:20]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{coco_mini / 'images' / n}\n" for n in names))
    cfg = IngestConfig(shard_size=8, workers=2)  # worker processes reach the store too
    local = str(tmp_path / "local")
    ingest(str(listing), local, cfg, progress=False)
    remote = s3_server.make_bucket() + "/data/shards"
    report = ingest(str(listing), remote, cfg, progress=False)
    assert report["written"] == 20
    fetched = str(tmp_path / "fetched")
    download_tree(remote, fetched)
    expected = tree_digests(local)
    assert len(expected) == 3 * 3 + 3  # 3 shards x (tar, idx, report) + index, report, ingest
    assert tree_digests(fetched) == expected
    # Random access by key straight from the bucket (byte-range reads).
    index, mirror = ShardIndex(remote), ShardIndex(local)
    for pos in (0, 9, 19):
        assert index.data_at(pos) == mirror.data_at(pos)
    # A rerun finds every shard complete and rewrites nothing.
    fs, path = fsspec.core.url_to_fs(remote)
    before = {p: fs.info(p)["ETag"] for p in fs.find(path) if p.endswith(".tar")}
    ingest(str(listing), remote, cfg, progress=False)
    assert {p: fs.info(p)["ETag"] for p in fs.find(path) if p.endswith(".tar")} == before


def test_mining_on_s3_with_ray_equals_local(scene_shards, s3_server, tmp_path):
    """Shards, Stage 1 checkpoint and output all on S3; units run on Ray workers."""
    shards, _ = scene_shards
    ckpt = make_ckpt(str(tmp_path / "stage1"))
    local = str(tmp_path / "local")
    pipeline.run(mine_config(shards, ckpt, local, *SCENES, "mine.executor=local"),
                 progress=False)

    bucket = s3_server.make_bucket()
    fs = fsspec.filesystem("s3")
    fs.put(shards, f"{bucket[5:]}/shards", recursive=True)
    fs.put(str(tmp_path / "stage1"), f"{bucket[5:]}/stage1", recursive=True)
    remote = f"{bucket}/mined"
    cfg = mine_config(f"{bucket}/shards", f"{bucket}/stage1", remote, *SCENES)
    summary = pipeline.run(cfg, progress=False)
    assert summary["images"] == 48 and summary["pairs"]["records"] == 48
    fetched = str(tmp_path / "fetched")
    download_tree(remote, fetched)
    assert output_digests(fetched) == output_digests(local)
    assert not [n for n in os.listdir(os.path.join(fetched, "pairs")) if ".tmp-" in n]

    pipeline.run(cfg, progress=False)  # rerun on the bucket: everything is skipped
    with fs.open(f"{remote[5:]}/manifest.json") as f:
        runs = json.load(f)["runs"]
    assert runs[-1]["executor"] == "ray"
    assert runs[-1]["units_skipped"] == dict.fromkeys(
        ["embed", "proposals", "knn", "roi", "pairs"], 2)


def test_ingest_sources_on_s3(coco_mini, s3_server, tmp_path):
    """A directory tree and a tar on the store are listed and read like local ones."""
    import tarfile

    names = sorted(os.listdir(coco_mini / "images"))[:6]
    bucket = s3_server.make_bucket()
    fs = fsspec.filesystem("s3")
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        for n in names:
            fs.put_file(str(coco_mini / "images" / n), f"{bucket[5:]}/images/sub/{n}")
            tar.add(coco_mini / "images" / n, arcname=n)
    fs.put_file(str(tar_path), f"{bucket[5:]}/images.tar")
    cfg = IngestConfig(shard_size=4, workers=1)
    expected = [(coco_mini / "images" / n).read_bytes() for n in names]
    for src in (f"{bucket}/images", f"{bucket}/images.tar"):
        out = str(tmp_path / ("shards-" + src.rsplit("/", 1)[-1]))
        report = ingest(src, out, cfg, progress=False)
        assert report["written"] == 6 and report["skipped_images"] == 0
        index = ShardIndex(out)
        assert [index.data_at(i)[1] for i in range(6)] == expected  # JPEGs stored as they are
        assert index.meta(index.key_at(0))["source"].startswith(src)
