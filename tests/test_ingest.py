"""Ingest: real images, every kind of bad input, sources, stability, kill -9 and resume."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import tarfile
import time

import numpy as np
import pytest
from PIL import Image
from support.common import orl_fast_cmd, subprocess_env

from loaders.ingest import IngestMismatch, ingest
from loaders.shards import ShardIndex, iter_shard
from orl_fast.core.defaults import IngestConfig


def digest_dir(path) -> dict[str, str]:
    return {n: hashlib.sha1((path / n).read_bytes()).hexdigest()
            for n in sorted(os.listdir(path)) if n != "ingest.json"}


def test_coco_mini_all_images_stable_keys_exact_bytes(coco_mini, tmp_path):
    cfg = IngestConfig(shard_size=200, workers=2)
    report = ingest(str(coco_mini / "images"), str(tmp_path / "a"), cfg, progress=False)
    n = len((coco_mini / "images.txt").read_text().split())
    assert report["inputs"] == report["written"] == n == 741
    assert report["skipped_images"] == 0 and report["converted_images"] == 0
    ix = ShardIndex(str(tmp_path / "a"))
    assert len(ix) == n and ix.counts.tolist() == [200, 200, 200, 141]
    names = sorted(os.listdir(coco_mini / "images"))
    for key in (0, 1, 377, 740):  # keys follow the sorted listing; bytes are the originals
        meta = ix.meta(key)
        assert os.path.basename(meta["source"]) == names[key]
        assert ix.data(key) == (coco_mini / "images" / names[key]).read_bytes()
        with Image.open(io.BytesIO(ix.data(key))) as im:
            assert im.size == (meta["width"], meta["height"])
    # a second run elsewhere gives identical keys and bytes
    ingest(str(coco_mini / "images"), str(tmp_path / "b"), IngestConfig(shard_size=200, workers=1),
           progress=False)
    assert digest_dir(tmp_path / "a") == digest_dir(tmp_path / "b")


def test_bad_inputs_are_counted_converted_or_skipped(bad_corpus, tmp_path):
    src, expected = bad_corpus
    report = ingest(str(src), str(tmp_path / "out"), IngestConfig(shard_size=5, workers=2),
                    progress=False)
    assert report["written"] == expected["written"]
    assert {k: v["count"] for k, v in report["skipped"].items()} == expected["skipped"]
    assert {k: v["count"] for k, v in report["converted"].items()} == expected["converted"]
    assert report["ignored_files"] == expected["ignored"]
    assert report["skipped"]["truncated"]["paths"][0][0].endswith("truncated.jpg")
    assert report["skipped"]["decompression_bomb"]["paths"][0][0].endswith("bomb.png")
    assert report["inputs"] == report["written"] + report["skipped_images"]
    # every stored image is an RGB JPEG whose size matches its metadata
    ix = ShardIndex(str(tmp_path / "out"))
    assert len(ix) == expected["written"]
    by_name = {}
    for pos in range(len(ix)):
        key, data = ix.data_at(pos)
        meta = ix.meta(key)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (meta["width"], meta["height"])
        by_name[os.path.basename(meta["source"])] = (data, meta)
    # unchanged JPEGs keep their bytes; rotated ones are transposed
    assert by_name["ok.jpg"][0] == (src / "ok.jpg").read_bytes()
    rot = by_name["exif_rotated.jpg"][1]
    assert (rot["width"], rot["height"]) == (96, 128) and rot["conversions"] == ["exif_rotated"]


def test_downscale_and_too_small_limits(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (1000, 400), (10, 20, 30)).save(src / "wide.jpg")
    Image.new("RGB", (40, 20), (10, 20, 30)).save(src / "small.jpg")
    report = ingest(str(src), str(tmp_path / "out"),
                    IngestConfig(max_side=500, min_side=32, workers=1), progress=False)
    assert report["converted"]["downscaled"]["count"] == 1
    assert report["skipped"]["too_small"]["count"] == 1
    meta = ShardIndex(str(tmp_path / "out")).meta(1)
    assert (meta["width"], meta["height"], meta["orig_width"]) == (500, 200, 1000)


def test_sources_glob_list_tar_and_fsspec(coco_mini, tmp_path):
    names = sorted(os.listdir(coco_mini / "images"))[:6]
    cfg = IngestConfig(workers=1)
    ref = ingest(str(coco_mini / "images" / "00000000*.jpg"), str(tmp_path / "glob"), cfg,
                 progress=False)
    assert ref["written"] == len([n for n in os.listdir(coco_mini / "images")
                                  if n.startswith("00000000")])
    (tmp_path / "list.txt").write_text("# a comment\n" + "".join(
        f"{os.path.relpath(coco_mini / 'images' / n, tmp_path)}\n" for n in names))
    assert ingest(str(tmp_path / "list.txt"), str(tmp_path / "l"), cfg,
                  progress=False)["written"] == 6
    with tarfile.open(tmp_path / "imgs.tar", "w") as tar:
        for n in names:
            tar.add(coco_mini / "images" / n, arcname=f"sub/{n}")
        tar.add(tmp_path / "list.txt", arcname="sub/list.txt")
    rep = ingest(str(tmp_path / "imgs.tar"), str(tmp_path / "t"), cfg, progress=False)
    assert rep["written"] == 6 and rep["ignored_files"] == 1
    assert ShardIndex(str(tmp_path / "t")).data(3) == (coco_mini / "images" / names[3]).read_bytes()
    # fsspec URLs in and out (in-memory filesystem)
    import fsspec

    mem = fsspec.filesystem("memory")
    for n in names:
        mem.pipe(f"/src/{n}", (coco_mini / "images" / n).read_bytes())
    rep = ingest("memory://src", "memory://out", cfg, progress=False)
    assert rep["written"] == 6
    assert ShardIndex("memory://out").data(5) == (coco_mini / "images" / names[5]).read_bytes()


def test_rerun_with_another_config_is_refused(coco_shards, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 64)).save(src / "a.jpg")
    ingest(str(src), str(tmp_path / "out"), IngestConfig(shard_size=10, workers=1), progress=False)
    with pytest.raises(IngestMismatch, match="config"):
        ingest(str(src), str(tmp_path / "out"), IngestConfig(shard_size=20, workers=1),
               progress=False)


def test_kill_9_mid_ingest_then_rerun_gives_identical_shards(coco_mini, tmp_path):
    src = str(coco_mini / "images")
    args = ["ingest", src, None, "--quiet", "ingest.shard_size=8", "ingest.workers=1"]
    ref = tmp_path / "ref"
    subprocess.run(orl_fast_cmd(*[a if a else str(ref) for a in args]), check=True,
                   env=subprocess_env(), capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(orl_fast_cmd(*[a if a else str(out) for a in args]),
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "shard-000003.tar").exists():
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "shard-000003.tar").exists(), "ingest did not start in time"
    assert not (out / "index.json").exists(), "ingest finished before the kill: test inconclusive"
    # whatever is under a final name is complete
    for name in os.listdir(out):
        if name.startswith("shard-") and name.endswith(".tar"):
            assert (out / name.replace(".tar", ".idx.npy")).exists()
            assert len(list(iter_shard(str(out / name)))) == 8
    subprocess.run(orl_fast_cmd(*[a if a else str(out) for a in args]), check=True,
                   env=subprocess_env(), capture_output=True)
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    assert digest_dir(out) == digest_dir(ref)


def test_stored_pixels_match_the_source(coco_mini, tmp_path):
    name = min(os.listdir(coco_mini / "images"))
    ingest(str(coco_mini / "images" / name), str(tmp_path / "o"), IngestConfig(workers=1),
           progress=False)
    stored = np.asarray(Image.open(io.BytesIO(ShardIndex(str(tmp_path / "o")).data(0))))
    assert np.array_equal(stored, np.asarray(Image.open(coco_mini / "images" / name)))


def test_shard_size_chosen_from_inputs_and_workers(tmp_path):
    from loaders.ingest import choose_shard_size

    assert choose_shard_size(741, 2) == 93  # 8 shards: four per worker
    assert choose_shard_size(741, 64) == 32  # never below 32 images
    assert choose_shard_size(10_000_000, 64) == 1000  # nor above 1000
    src = tmp_path / "src"
    src.mkdir()
    for i in range(100):
        Image.new("RGB", (40, 40), (i, 0, 0)).save(src / f"{i:03d}.png")
    rep = ingest(str(src), str(tmp_path / "out"), IngestConfig(workers=1), progress=False)
    assert (rep["shard_size"], rep["shards"]) == (32, 4)
    # A rerun with other workers keeps the shard size its output was made with.
    rep = ingest(str(src), str(tmp_path / "out"), IngestConfig(workers=4), progress=False)
    assert (rep["shard_size"], rep["shards"]) == (32, 4)
