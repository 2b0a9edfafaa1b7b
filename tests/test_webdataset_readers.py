"""Ingested shards are what WebDataset users expect: the `webdataset` package and DALI's
``fn.readers.webdataset`` (with the index DALI's ``wds2idx`` makes) read them as they are."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from loaders.shards import ShardIndex, iter_shard, shard_name


def _expected(shards: str, shard: int = 0) -> list[tuple[str, bytes, dict]]:
    """(key, JPEG bytes, metadata) of one shard, by key through the index."""
    index = ShardIndex(shards)
    rows = index.shard_rows(shard)
    return [(f"{int(r['key']):09d}", index.data(int(r["key"])), index.meta(int(r["key"])))
            for r in rows]


def test_webdataset_reads_an_ingested_shard(coco_shards):
    expected = _expected(coco_shards)
    url = f"{coco_shards}/{shard_name(0)}"
    raw = list(wds.WebDataset(url, shardshuffle=False))
    assert [(s["__key__"], s["jpg"], json.loads(s["json"])) for s in raw] == expected
    decoded = list(wds.WebDataset(url, shardshuffle=False).decode("rgb8").to_tuple(
        "__key__", "jpg", "json"))
    assert len(decoded) == len(expected) == 32
    for (key, img, meta), (k, data, m) in zip(decoded, expected):
        assert key == k and meta == m
        assert img.dtype == np.uint8 and img.shape == (m["height"], m["width"], 3)
        assert np.array_equal(img, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    # the project's streaming reader (WebDataset's tar iteration over the storage layer)
    assert list(iter_shard(url)) == expected


def test_dali_webdataset_reader_with_wds2idx_index(coco_shards, tmp_path):
    pytest.importorskip("nvidia.dali", reason="needs the dali extra")
    from nvidia.dali import fn, pipeline_def, types

    tool = shutil.which("wds2idx")
    if tool is None:
        pytest.skip("DALI's wds2idx tool is not on PATH")
    tar = f"{coco_shards}/{shard_name(0)}"
    idx = str(tmp_path / "shard-000000.idx")
    subprocess.run([tool, tar, idx], check=True, capture_output=True)
    expected = _expected(coco_shards)

    @pipeline_def(batch_size=8, num_threads=1, device_id=None, seed=0)
    def pipe():
        jpg, meta = fn.readers.webdataset(paths=[tar], index_paths=[idx], ext=["jpg", "json"],
                                          missing_component_behavior="error",
                                          random_shuffle=False, name="reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), meta

    p = pipe()
    p.build()
    got = []
    for _ in range(len(expected) // 8):
        images, metas = p.run()
        for i in range(len(images)):
            got.append((np.array(images.at(i)), json.loads(np.array(metas.at(i)).tobytes())))
    assert len(got) == len(expected)
    for (img, meta), (_, data, m) in zip(got, expected):
        assert meta == m and img.shape == (m["height"], m["width"], 3)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
        assert np.abs(img.astype(np.int16) - ref).mean() < 2  # libjpeg-turbo vs Pillow's IDCT
