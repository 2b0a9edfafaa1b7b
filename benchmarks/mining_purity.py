"""Pair purity on coco-mini's COCO ground truth: mined pairs vs random pairs of kept boxes.

Trains a short Stage 1 (BYOL, the ``small`` config) on coco-mini unless --ckpt is given, mines
all 741 images with it and reports (mining.purity) the fraction of mined pairs whose two boxes
match ground-truth objects (IoU >= 0.5) of one category, the same for as many random pairs of
kept boxes between the same images, and the fraction of kept boxes matching any object. A
randomly initialised network is measured too, as the floor of "image-level priors".

    python benchmarks/mining_purity.py [--epochs 8] [--ckpt RUN] [--images 741]
"""

from __future__ import annotations

import argparse
import json

from bench_common import COCO_MINI, OUT, coco_shards, machine, random_stage1

from mining import pipeline
from mining.purity import pair_purity
from orl_fast.core import checkpoint
from orl_fast.core.config import load_config
from orl_fast.training import stage1

MINE = ["mine.ss_max_side=448", "mine.min_box_size=67", "mine.roi_size=96",
        "mine.embed_size=128"]  # 67 px = the paper's 96 px at 448 / 640 of COCO's size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=741)
    ap.add_argument("--epochs", type=int, default=8, help="Stage 1 epochs when no --ckpt")
    ap.add_argument("--ckpt", default=None, help="a Stage 1 run or checkpoint to mine with")
    args = ap.parse_args()
    shards = coco_shards(args.images, 128)
    ckpt = args.ckpt
    if ckpt is None:
        run = OUT / f"purity-stage1-{args.images}-{args.epochs}"
        if checkpoint.resolve(str(run)) is None:
            stage1.run(load_config("small", [
                f"data={shards}", f"out={run}", f"train.epochs={args.epochs}",
                "train.batch_size=32", "aug.crop_size=96", "train.ckpt_every_steps=100000"]))
        ckpt = str(run)
    results = {}
    mined = str(OUT / f"purity-mined-{args.images}")
    for name, model in (("stage1", ckpt), ("random_init",
                                           random_stage1("small", [], "resnet18"))):
        # One directory: the second model redoes the model stages, the proposals are kept.
        summary = pipeline.run(load_config("small", [f"data={shards}", f"ckpt={model}",
                                                     f"out={mined}", *MINE]))
        results[name] = {**pair_purity(mined, str(COCO_MINI / "instances.json"), shards),
                         "boxes_per_image": summary["proposals"]["boxes_per_image"],
                         "pairs_per_image": summary["pairs"]["pairs_per_record"]}
    print(json.dumps({**machine(), "images": args.images, "stage1": ckpt, "mine": MINE,
                      **results}))
    print(f"\npair purity on coco-mini ({args.images} images, IoU >= 0.5, same category):")
    for name, r in results.items():
        print(f"  {name:11s}: mined {r['pair_purity']:.3f}  random pairs "
              f"{r['random_pair_purity']:.3f}  (x{r['pair_purity'] / max(r['random_pair_purity'], 1e-9):.2f})"
              f"   both boxes objects {r['pair_objects']:.3f} vs {r['random_pair_objects']:.3f}"
              f"   kept boxes on objects {r['box_gt_match']:.3f}")


if __name__ == "__main__":
    main()
