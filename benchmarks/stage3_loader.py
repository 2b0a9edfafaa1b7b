"""Stage 3 loader benchmark: is the GPU ever waiting for ORL samples?

GPU mode (the issue's goal: one H100, ResNet-50, bf16, batch 256; b/a >= 0.95 and b/c >= 3)
prints ORL training images/s, measured by the trainer itself (``orl_fast.training.engine.fit``), with

    (a) synthetic uint8 batches already on the GPU (the ceiling: no loading at all),
    (b) the DALI GPU loader (mixed decoder, GPU crops and augmentations),
    (c) the torch DataLoader + Pillow/torchvision path with the same number of CPU workers,

the ratios b/a and b/c, and, to show where the time goes, loader-only images/s of both paths
(DALI with the neighbour patch from a full decode and from a decoder-side ROI decode) and the
host-side cost of one sample in one process (DALI's Python source: plan + JPEG bytes; the torch
path: plan + decode + crops + augmentations), i.e. what each CPU worker can feed.
CPU mode prints loader-only images/s of DALI's CPU backend and of the torch path, and the same
host-side rates.

Data: generated 640x480 scenes (COCO-sized JPEGs) ingested into shards, with random pair shards
(``tests/support/synthetic_pairs.py``); made once per --images count in --data and reused.

    python benchmarks/stage3_loader.py --mode gpu --workers 8            # on a GPU machine
    python benchmarks/stage3_loader.py --mode cpu --workers 2 --batch 32  # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test scaffolding

from support.synthetic_pairs import random_records, write_pairs

from loaders.ingest import ingest
from loaders.orl_samples import SampleBuilder
from loaders.shards import ShardIndex
from loaders.synthetic import World, write_scenes
from orl_fast.core.config import load_config
from orl_fast.core.defaults import IngestConfig
from orl_fast.core.distributed import init_runtime
from orl_fast.core.models import ORL
from orl_fast.training import runs
from orl_fast.training.engine import RunSpec, Schedule, fit, setup_model


def _scenes(args: tuple[str, int, int]) -> str:
    out, start, n = args
    return write_scenes(os.path.join(out, f"part{start:06d}"), n, seed=start,
                        world=World(640, 480))


def make_data(root: Path, num_images: int, workers: int) -> tuple[str, str]:
    """640x480 scene JPEGs -> shards + random pair shards (cached in ``root``, per count)."""
    root = root / f"{num_images}-images"
    shards, mined = root / "shards", root / "mined"
    if (mined / "pairs" / "index.json").exists():
        return str(shards), str(mined)
    chunk = 64
    jobs = [(str(root / "scenes"), s, min(chunk, num_images - s))
            for s in range(0, num_images, chunk)]
    with Pool(workers) as pool:
        dirs = pool.map(_scenes, jobs)
    listing = root / "list.txt"
    listing.write_text("".join(f"{d}/{name}\n" for d in dirs for name in sorted(os.listdir(d))))
    ingest(str(listing), str(shards), IngestConfig(shard_size=256, workers=workers),
           progress=False)
    write_pairs(str(mined), random_records(ShardIndex(str(shards)), seed=0, min_side=96))
    return str(shards), str(mined)


def config(args, shards: str, mined: str, out: str, *extra: str):
    return load_config("paper", [
        f"data={shards}", f"pairs={mined}", f"out={out}", f"train.batch_size={args.batch}",
        f"train.num_workers={args.workers}", f"train.prefetch_factor={args.prefetch}",
        f"train.device={'cuda' if args.mode == 'gpu' else 'cpu'}",
        "train.log_every_steps=5", "train.ckpt_every_steps=1000000", "train.keep_last=1",
        *extra])


def loader_only(cfg, kind: str, steps: int, warmup: int) -> float:
    """Images/s of a loader alone (batches brought to the device and normalised)."""
    rt = init_runtime(cfg.train.device)
    builder = SampleBuilder(cfg)
    prepare = runs.to_inputs(cfg, builder.crops)
    batches = runs.make_loader_fn(cfg, builder, rt, kind)(0, warmup + steps)
    start = None
    for i, batch in enumerate(batches):
        inputs = prepare(batch, rt.device)
        if i + 1 == warmup:
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
    if rt.device.type == "cuda":
        del inputs
        torch.cuda.synchronize()
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def host_rate(cfg, samples: int) -> dict:
    """Samples/s of each loader's host-side work in one process, no loader around it: what one
    CPU worker can feed. DALI's Python source only plans a sample and reads its JPEG bytes (the
    GPU decodes, cuts and augments); the torch path also decodes, cuts and augments on the CPU."""
    from loaders.dali_loader import ORLSource
    from loaders.orl_torch import ORLDataset
    from loaders.sampling import StepBatchSampler

    builder = SampleBuilder(cfg)
    batch = min(samples, len(builder))
    steps = -(-samples // batch)
    sampler = StepBatchSampler(len(builder), batch, 0, 1, cfg.train.seed, 0, steps + 1)
    items = [item for step in range(1, steps + 1) for item in sampler.batch(step)][:samples]
    source = ORLSource(builder, sampler, roi_decode=False)
    dataset = ORLDataset(builder)
    rates = {}
    for name, fn in (("dali_source", lambda e, p: source.arrays(builder.plan(e, p))),
                     ("torch_sample", lambda e, p: dataset[(e, p)])):
        fn(*sampler.batch(0)[0])  # warm-up
        t0 = time.perf_counter()
        for e, p in items:
            fn(e, p)
        rates[name] = round(samples / (time.perf_counter() - t0), 1)
    return rates


def train(cfg, kind: str, steps: int, warmup: int) -> dict:
    """Training images/s (median of the trainer's 5-step windows after the warm-up)."""
    rt = init_runtime(cfg.train.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    builder = SampleBuilder(cfg)
    model = ORL(cfg.model, cfg.orl.loss_weights)
    prepare = runs.to_inputs(cfg, builder.crops)
    if kind == "synthetic":
        s, p, b = cfg.aug.crop_size, cfg.orl.patch_size, cfg.train.batch_size
        gen = torch.Generator(rt.device).manual_seed(0)
        fixed = (torch.randint(0, 256, (b, 2, 3, s, s), dtype=torch.uint8, device=rt.device,
                               generator=gen),
                 torch.randint(0, 256, (b, 4, 3, p, p), dtype=torch.uint8, device=rt.device,
                               generator=gen))

        def loader_fn(start, stop):
            return (fixed for _ in range(start, stop))
    else:
        loader_fn = runs.make_loader_fn(cfg, builder, rt, kind)
    cfg.train.max_steps = warmup + steps
    model, optimizer = setup_model(cfg, model, rt)
    # a schedule long enough that no epoch boundary (and its checkpoint) falls in the run
    fit(model, optimizer, Schedule(cfg, 10**9), loader_fn, prepare, rt,
        RunSpec.of_stage(cfg, f"bench-{kind}"))
    lines = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    windows = [m for m in lines if m["step"] > warmup]
    return {"img_per_s": statistics.median(m["img_per_s"] for m in windows),
            "data_wait_frac": statistics.median(m["data_wait_frac"] for m in windows)}


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "orl-stage3-bench"))
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8, help="CPU workers of both loaders")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--host-samples", type=int, default=256,
                    help="samples timed for the host-side cost per process")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.mode == "gpu" and not torch.cuda.is_available():
        ap.error("--mode gpu needs CUDA; use --mode cpu")

    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    shards, mined = make_data(root, args.images, max(args.workers, 1))
    print(f"data: {args.images} 640x480 JPEGs in {shards} ({time.time() - t0:.0f} s)")
    results: dict = {"machine": machine(), "args": vars(args)}
    runs = tempfile.mkdtemp(prefix="orl-bench-runs-")

    def measure(name, fn, *a):
        print(f"  {name} ...", end="", flush=True)
        results[name] = fn(*a)
        print(f" {results[name]}")

    def cfg(name: str, *extra: str):
        return config(args, shards, mined, os.path.join(runs, name), *extra)

    measure("host_samples_per_s_one_process", host_rate, cfg("h"), args.host_samples)
    measure("loader_dali", loader_only, cfg("ld"), "dali", args.steps, args.warmup)
    measure("loader_torch", loader_only, cfg("lt"), "torch", args.steps, args.warmup)
    if args.mode == "gpu":
        measure("loader_dali_roi_neighbor", loader_only, cfg("lr", "orl.neighbor_decode=roi"),
                "dali", args.steps, args.warmup)
        measure("train_synthetic", train, cfg("a"), "synthetic", args.steps, args.warmup)
        measure("train_dali", train, cfg("b"), "dali", args.steps, args.warmup)
        measure("train_torch", train, cfg("c"), "torch", args.steps, args.warmup)
        a, b, c = (results[k]["img_per_s"] for k in ("train_synthetic", "train_dali",
                                                    "train_torch"))
        results["b/a"], results["b/c"] = b / a, b / c
        print(f"ORL training images/s: (a) synthetic {a:.0f}  (b) DALI {b:.0f}  "
              f"(c) torch {c:.0f}  b/a {b / a:.3f} (goal >= 0.95)  b/c {b / c:.2f} (goal >= 3)")
    else:
        d, t = results["loader_dali"], results["loader_torch"]
        print(f"loader-only images/s: DALI CPU {d:.1f}  torch {t:.1f}  ratio {d / t:.2f}")
    print(f"machine: {results['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
