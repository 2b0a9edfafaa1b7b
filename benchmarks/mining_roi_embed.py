"""RoI embedding RoIs/s: the full unit (read, decode, crop, embed, write) vs the model alone.

(a) ``mining.roi_embed.roi_unit`` on the shards of coco-mini, one after the other (one model
    actor's work; selective search made beforehand in parallel): JPEGs read from the shard,
    decoded (nvjpeg on GPU, Pillow on CPU), every kept box cut and resized by one roi_align
    per image, the Stage 1 backbone in batches, float16 rows streamed to disk;
(b) the same ``ModelRunner.embed`` on synthetic crops already on the device, as many RoIs.
The ratio (a)/(b) is how much of the model's speed the data path keeps. Goal on one H100,
ResNet-50, 224 px, bf16: (a) >= 10,000 RoIs/s (several model actors per GPU multiply (a) when
the data path, not the GPU, is the limit: ``mine.actors_per_gpu``).

    python benchmarks/mining_roi_embed.py                    # CPU: ResNet-18, 64 px RoIs
    python benchmarks/mining_roi_embed.py --device cuda      # GPU: paper model, 224 px, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch
from bench_common import OUT, coco_shards, machine, propose_all, random_stage1

from mining.embed import ModelRunner
from mining.manifest import make_plan
from mining.roi_embed import roi_unit
from orl_fast.core.defaults import MineConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=None, help="default 256 on cuda, 16 on cpu")
    ap.add_argument("--roi-size", type=int, default=None, help="default 224 on cuda, 64 on cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 512 on cuda, 64 on cpu")
    ap.add_argument("--model", choices=["paper", "small"], default=None,
                    help="paper: ResNet-50 (default on cuda); small: ResNet-18 (default on cpu)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    ap.add_argument("--rounds", type=int, default=3,
                    help="(a) and (b) measured this many times, interleaved; the best is kept")
    ap.add_argument("--min-box-size", type=int, default=67,
                    help="67 = the paper's 96 px at coco-mini's 448 px (COCO: 640 px)")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    images = args.images or (256 if gpu else 16)
    size = args.roi_size or (224 if gpu else 64)
    batch = args.batch or (512 if gpu else 64)
    shards = coco_shards(images, min(images, 64))
    config = args.model or ("paper" if gpu else "small")
    backbone = {"paper": "resnet50", "small": "resnet18"}[config]
    ckpt = random_stage1(config, [], backbone)
    mine = MineConfig(roi_size=size, batch_size=batch, precision=args.precision,
                      compile=args.compile, min_box_size=args.min_box_size, ss_max_side=448)
    out = OUT / f"roi-bench-{args.device}"
    shutil.rmtree(out, ignore_errors=True)
    plan = make_plan(str(out), shards, ckpt, mine, args.device)
    os.makedirs(plan.dir("roi"), exist_ok=True)
    propose_all(plan, os.cpu_count() or 1)
    runner = ModelRunner(ckpt, mine, args.device, threads=torch.get_num_threads())

    def sync():
        if gpu:
            torch.cuda.synchronize()

    crops = torch.randn(batch, 3, size, size, device=args.device)

    def unit() -> tuple[int, float]:
        sync()
        t0 = time.perf_counter()
        rois = sum(roi_unit(plan, sid, runner)["rois"] for sid in plan.shard_ids)
        sync()
        return rois, rois / (time.perf_counter() - t0)

    def model_only(rois: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(0, rois, batch):
            runner.embed(crops, project=False)
        sync()
        return -(-rois // batch) * batch / (time.perf_counter() - t0)

    rois, _ = unit()  # warm-up: cudnn / oneDNN kernels, compile, page cache
    model_only(batch)
    full = model = 0.0
    for _ in range(args.rounds):
        full = max(full, unit()[1])
        model = max(model, model_only(rois))
    result = {**machine(), "device": args.device,
              "backbone": backbone, "roi_size": size, "batch": batch,
              "precision": args.precision if gpu else "fp32", "images": images, "rois": rois,
              "full_rois_s": round(full, 1), "model_rois_s": round(model, 1),
              "ratio_full_vs_model": round(full / model, 3)}
    print(json.dumps(result))
    print(f"\nRoI embedding on {args.device}, {size} px, batch {batch}, {rois} RoIs of "
          f"{images} images:")
    print(f"  full unit (read, decode, crop, embed, write): {full:10.1f} RoIs/s")
    print(f"  model alone on synthetic crops             : {model:10.1f} RoIs/s")
    print(f"  ratio                                      : {full / model:10.3f}")


if __name__ == "__main__":
    main()
