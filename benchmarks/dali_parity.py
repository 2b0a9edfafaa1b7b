"""The DALI loader against the torch path on the same sample plans: per-frame pixel difference.

Both loaders render the same plans (the first ``--images`` coco-mini images, random pair shards,
``--steps`` batches of ``--batch``): the torch path with torchvision's functional ops, the DALI
path with DALI's CPU backend (``device_id=None``; ``--gpu`` runs its GPU graph). For each frame
(views and patches) the mean absolute difference of the uint8 pixels is taken; the script prints
its mean, 95th percentile and maximum over frames, with the paper's augmentation (hue on) and
with the hue off (``aug.color_jitter=[0.4,0.4,0.2,0]``)::

    python benchmarks/dali_parity.py --images 64 --steps 8 --batch 8 --json dali_parity.json
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch
from bench_common import coco_shards, machine
from support.orl import random_pairs

from loaders.dali_loader import DALIBatches
from loaders.orl_samples import SampleBuilder
from loaders.orl_torch import ORLDataset
from loaders.sampling import StepBatchSampler
from orl_fast.core.config import load_config

SETTINGS = {"hue on (paper)": [], "hue off": ["aug.color_jitter=[0.4,0.4,0.2,0]"]}


def frame_differences(builder: SampleBuilder, sampler: StepBatchSampler,
                      device_id: int | None) -> np.ndarray:
    """Mean |torch - DALI| (uint8 levels) of every frame of the sampler's batches."""
    ds = ORLDataset(builder)
    dali = DALIBatches(builder, sampler, device_id, num_threads=2, py_workers=0, prefetch=2)
    out = []
    for step, batch in zip(range(sampler.start_step, sampler.stop_step), dali):
        items = [ds[i] for i in sampler.batch(step)]
        for group, d in zip(zip(*items), batch):
            t = torch.stack(group).double()
            out.append((t - d.cpu().double()).abs().mean(dim=(2, 3, 4)).flatten().numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--gpu", action="store_true", help="DALI's GPU graph (device 0)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    shards = coco_shards(args.images, 32)
    mined = random_pairs(shards, tempfile.mkdtemp(prefix="dali-parity-"))
    result = {**machine(), "images": args.images, "steps": args.steps, "batch": args.batch,
              "crop": args.crop, "patch": args.patch, "backend": "gpu" if args.gpu else "cpu",
              "settings": {}}
    for name, overrides in SETTINGS.items():
        cfg = load_config("paper", [f"data={shards}", f"pairs={mined}",
                                    f"aug.crop_size={args.crop}", f"orl.patch_size={args.patch}",
                                    f"train.batch_size={args.batch}", *overrides])
        builder = SampleBuilder(cfg)
        sampler = StepBatchSampler(len(builder), args.batch, 0, 1, 0, 0, args.steps)
        diff = frame_differences(builder, sampler, 0 if args.gpu else None)
        result["settings"][name] = {
            "frames": len(diff), "mean": float(diff.mean()),
            "p95": float(np.percentile(diff, 95)), "max": float(diff.max())}
    print("| setting | frames | mean abs diff (levels) | p95 | max |\n|---|---|---|---|---|")
    for name, s in result["settings"].items():
        print(f"| {name} | {s['frames']} | {s['mean']:.3f} | {s['p95']:.3f} | {s['max']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
