"""Shared set-up of the benchmarks: the shared data sets, coco-mini shards, a Stage 1 checkpoint,
the machine."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test scaffolding: tests/support (not shipped)

from loaders.ingest import ingest
from orl_fast.core import checkpoint
from orl_fast.core.config import load_config
from orl_fast.core.defaults import IngestConfig
from orl_fast.core.models import BYOL

OUT = ROOT / "benchmarks" / "out"
# ../shared/data beside the checkout, or ORL_FAST_SHARED_DATA
SHARED_DATA = Path(os.environ.get("ORL_FAST_SHARED_DATA", ROOT.parent / "shared" / "data"))
COCO_MINI = SHARED_DATA / "coco-mini"


def cache_dir(name: str, source: Path) -> Path:
    """``OUT/name-<digest of source>``: data made from another copy of a set goes elsewhere (an
    ingest refuses to mix sources in one directory)."""
    return OUT / f"{name}-{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:8]}"


def coco_shards(images: int, shard_size: int) -> str:
    """The first ``images`` coco-mini images in shards of ``shard_size`` (made once, reused)."""
    src = COCO_MINI / "images"
    if not src.is_dir():
        sys.exit(f"no data: {src} not found")
    out = cache_dir(f"coco-mini-{images}-{shard_size}", src)
    if not (out / "shards" / "index.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(os.listdir(src))[:images]
        (out / "list.txt").write_text("".join(f"{src / n}\n" for n in names))
        ingest(str(out / "list.txt"), str(out / "shards"),
               IngestConfig(shard_size=shard_size, workers=1), progress=False)
    return str(out / "shards")


def random_stage1(config: str, overrides: list[str], name: str) -> str:
    """A randomly initialised Stage 1 checkpoint (what mining reads) of ``config``'s model."""
    out = OUT / f"stage1-{name}"
    if not (out / "checkpoints" / "latest.json").exists():
        cfg = load_config(config, overrides)
        torch.manual_seed(0)
        checkpoint.save(str(out), 0, {"stage": "stage1", "config": cfg.to_dict(),
                                      "model": BYOL(cfg.model).state_dict()}, keep_last=1)
    return str(out)


def machine() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {"date": datetime.date.today().isoformat(),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {gpu}",
            "torch": torch.__version__}


def proposal_rate(ray, unit, shards: str, ckpt: str, mine, out: Path, slots: int,
                  units: int | None = None, repeat: int = 1) -> float:
    """Images/s of the proposal units of ``shards`` (the first ``units``, default all; each
    ``repeat`` times) run as the Ray task ``unit``, ``slots`` in flight (fresh output ``out``;
    a repeated unit rewrites the same file atomically)."""
    import shutil
    import time

    from mining.manifest import make_plan

    shutil.rmtree(out, ignore_errors=True)
    plan = make_plan(str(out), shards, ckpt, mine, "cpu")
    ref, todo, pending, images = ray.put(plan), list(plan.shard_ids)[:units] * repeat, [], 0
    t0 = time.perf_counter()
    while todo or pending:
        while todo and len(pending) < slots:
            pending.append(unit.remote(ref, todo.pop(0)))
        [done], pending = ray.wait(pending, num_returns=1)
        images += ray.get(done)["images"]
    return images / (time.perf_counter() - t0)


def propose_all(plan, workers: int) -> None:
    """Selective search for every unit of ``plan`` in ``workers`` processes (set-up only)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from mining.proposals import proposals_unit

    os.makedirs(plan.dir("proposals"), exist_ok=True)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(proposals_unit, [plan] * len(plan.shard_ids), plan.shard_ids))
