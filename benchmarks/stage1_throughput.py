"""Stage 1 (BYOL) training images/s: synthetic in-memory batches vs the real shard loader.

Both measurements use the same model, optimiser and training step (orl_fast.training.engine.train_step),
in the same run; the ratio says how much of the model's speed the data path keeps. A third,
loader-only figure shows the loader's own ceiling.

    python benchmarks/stage1_throughput.py                       # CPU: small config
    python benchmarks/stage1_throughput.py --device cuda         # GPU: paper config, ResNet-50,
                                                                 # batch 256, bf16, channels_last
Data: coco-mini from ../shared/data (ingested once into benchmarks/out/), or --data SHARDS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import COCO_MINI, cache_dir

from loaders.ingest import ingest
from loaders.orl_samples import SampleBuilder
from orl_fast.core.config import load_config
from orl_fast.core.distributed import init_runtime
from orl_fast.core.models import IMAGE_ONLY, ORL
from orl_fast.training import runs
from orl_fast.training.engine import autocast_for, make_optimizer, train_step


def default_shards() -> str:
    src = COCO_MINI / "images"
    if not src.is_dir():
        sys.exit(f"no data: pass --data SHARDS (looked for {src})")
    shards = cache_dir("coco-mini-shards", src)
    cfg = load_config("paper").ingest
    ingest(str(src), str(shards), cfg, progress=False)
    return str(shards)


def timed(step_fn, batches, warmup: int, steps: int, device: torch.device) -> float:
    """images/s over ``steps`` steps after ``warmup`` steps (CUDA-synchronised)."""
    it = iter(batches)
    for _ in range(warmup):
        step_fn(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        n += step_fn(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default=None, help="default: paper on cuda, small on cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on cuda, 32 on cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30 / 4)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10 / 2)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: cores)")
    ap.add_argument("--data", default=None, help="ingested shards (default: coco-mini)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; the best of each is kept (shared machines)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. aug.crop_size=96")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (256 if gpu else 32)
    steps = args.steps or (30 if gpu else 4)
    warmup = args.warmup or (10 if gpu else 2)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 2)
    shards = args.data or default_shards()
    cfg = load_config(args.config or ("paper" if gpu else "small"),
                      [f"data={shards}", f"train.batch_size={batch}",
                       f"train.num_workers={workers}", f"train.device={device.type}",
                       *args.overrides])
    rt = init_runtime(cfg.train.device)
    builder = SampleBuilder(cfg, IMAGE_ONLY)
    kind = runs.choose_loader(cfg, device)  # orl.loader: auto = DALI on a GPU, else torch

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = ORL(cfg.model, IMAGE_ONLY).to(device)
    if gpu and cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = make_optimizer(model, cfg.optim)
    autocast = autocast_for(cfg.train.precision, device)
    prepare = runs.to_inputs(cfg, builder.crops)

    def step(batch_views) -> int:
        train_step(model, model, opt, prepare(batch_views, device), 0.01, 0.99, autocast)
        return batch

    s = cfg.aug.crop_size
    synthetic = (torch.randint(0, 256, (batch, 2, 3, s, s), dtype=torch.uint8, device=device),)

    def loader():
        return runs.make_loader_fn(cfg, builder, rt, kind)(0, warmup + steps)

    # Interleaved rounds, best of each: a burst of other load hits one round, not one mode.
    syn_ips = real_ips = loader_ips = 0.0
    for _ in range(args.rounds):
        syn_ips = max(syn_ips, timed(step, iter(lambda: synthetic, None), warmup, steps, device))
        real_ips = max(real_ips, timed(step, loader(), warmup, steps, device))
        loader_ips = max(loader_ips, timed(lambda b: batch, loader(), warmup, steps, device))

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if gpu else ""),
        "torch": torch.__version__, "device": device.type, "backbone": cfg.model.backbone,
        "crop": s, "batch": batch, "precision": cfg.train.precision if gpu else "fp32",
        "workers": workers, "loader": kind, "images": len(builder), "rounds": args.rounds,
        "synthetic_img_s": round(syn_ips, 1), "loader_img_s": round(real_ips, 1),
        "loader_only_img_s": round(loader_ips, 1), "ratio_loader_vs_synthetic":
            round(real_ips / syn_ips, 3),
    }
    print(json.dumps(result))
    print(f"\nStage 1 BYOL, {cfg.model.backbone} {s}px batch {batch} on {device.type}:")
    print(f"  synthetic in-memory batches : {syn_ips:9.1f} img/s  (ceiling)")
    print(f"  real shard loader ({kind}, {workers} workers): {real_ips:9.1f} img/s")
    print(f"  loader alone                : {loader_ips:9.1f} img/s")
    print(f"  ratio loader / synthetic    : {real_ips / syn_ips:9.3f}")


if __name__ == "__main__":
    main()
