"""Bytes stored per image: orl-fast's proposal and pair shards vs the official JSON layout.

Mines coco-mini images (or reads --mined), exports the official files from the same run and
compares per image:

    proposals: proposals/props-*.npz (int16 xywh + counts)   vs  selective-search JSON of the
               same kept boxes, and of the raw proposals the official pipeline stores (sized
               from the raw proposal count at the measured JSON bytes per box)
    pairs:     pairs/pairs-*.tar (+ .idx.npy)                 vs  correspondence JSON (official
               keys only, json.dump defaults as mmcv.dump); also the PairRecords alone (tar
               members are 512-byte aligned with a 512-byte header each)

    python benchmarks/mining_bytes.py [--images 128] [--mined DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench_common import OUT, coco_shards, machine, random_stage1

from loaders.pairs import PAIRS_DIR
from mining import official_json, pipeline
from mining.manifest import SUMMARY
from orl_fast.core.config import load_config

OFFICIAL_KEYS = {"knn_image_sim", "knn_bbox_pair_score"}  # ours, dropped for the comparison


def json_size(obj) -> int:
    return len(json.dumps(obj).encode())  # json.dump defaults, as mmcv.dump


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--mined", default=None, help="an existing Stage 2 output to measure")
    ap.add_argument("--min-box-size", type=int, default=67,
                    help="67 = the paper's 96 px at coco-mini's 448 px (COCO: 640 px)")
    args = ap.parse_args()
    mined = args.mined
    if mined is None:
        mined = str(OUT / f"bytes-mined-{args.images}")
        shards = coco_shards(args.images, 64)
        cfg = load_config("small", [
            f"data={shards}", f"ckpt={random_stage1('small', [], 'resnet18')}", f"out={mined}",
            "mine.executor=local", "mine.ss_max_side=448", "mine.roi_size=32",
            "mine.embed_size=64", f"mine.min_box_size={args.min_box_size}",
            "mine.max_boxes=100"])
        pipeline.run(cfg, progress=False)
    with open(os.path.join(mined, SUMMARY)) as f:
        summary = json.load(f)
    records = summary["pairs"]["records"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = official_json.export_official(mined, tmp)
        with open(paths["ss"]) as f:
            ss = json.load(f)
        with open(paths["correspondence"]) as f:
            corr = json.load(f)
    for k in OFFICIAL_KEYS:
        corr["pseudo_annotations"].pop(k, None)
    boxes = summary["proposals"]["boxes"]
    ss_bytes = json_size(ss)
    raw_bytes = ss_bytes / boxes * summary["proposals"]["raw_boxes_per_image"] * records
    ours_props = summary["bytes"]["proposals"]
    ours_pairs = summary["bytes"]["pairs"]
    payload = sum(e["bytes"] for e in json.loads(
        (Path(mined) / PAIRS_DIR / "index.json").read_text())["shards"])  # records alone
    corr_bytes = json_size(corr)
    per = {"ours_proposals": ours_props / records, "official_ss_kept": ss_bytes / records,
           "official_ss_raw": raw_bytes / records, "ours_pairs": ours_pairs / records,
           "ours_pair_records": payload / records, "official_correspondence": corr_bytes / records}
    result = {**machine(), "images": records,
              "boxes_per_image": summary["proposals"]["boxes_per_image"],
              "raw_boxes_per_image": summary["proposals"]["raw_boxes_per_image"],
              "pairs_per_image": summary["pairs"]["pairs_per_record"],
              "bytes_per_image": {k: round(v, 1) for k, v in per.items()},
              "ratio_official_ss_kept_vs_ours": round(ss_bytes / ours_props, 2),
              "ratio_official_ss_raw_vs_ours": round(raw_bytes / ours_props, 2),
              "ratio_official_correspondence_vs_ours": round(corr_bytes / ours_pairs, 2)}
    print(json.dumps(result))
    print(f"\nbytes per image ({records} images, {result['boxes_per_image']} kept boxes, "
          f"{result['raw_boxes_per_image']} raw proposals, {result['pairs_per_image']} pairs):")
    print(f"  proposals  ours {per['ours_proposals']:9.0f}   official JSON, kept boxes "
          f"{per['official_ss_kept']:9.0f} (x{ss_bytes / ours_props:.1f}), raw proposals "
          f"{per['official_ss_raw']:9.0f} (x{raw_bytes / ours_props:.1f})")
    print(f"  pairs      ours {per['ours_pairs']:9.0f}   official correspondence JSON "
          f"{per['official_correspondence']:9.0f} (x{corr_bytes / ours_pairs:.2f})")
    print(f"             of which PairRecord bytes {per['ours_pair_records']:.0f}, tar headers and "
          f"padding + .idx.npy {per['ours_pairs'] - per['ours_pair_records']:.0f}")


if __name__ == "__main__":
    main()
