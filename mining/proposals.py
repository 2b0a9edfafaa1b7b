"""Proposals (RoI generation): selective search, then the ORL filter, inside the worker.

OpenCV contrib ``createSelectiveSearchSegmentation`` (fast mode by default) runs on the image
resized so that its longer side is at most ``ss_max_side``; boxes are mapped back to original
pixels and filtered as the paper / official code: min(w, h) >= 96, aspect w/h in [1/3, 3], then
greedily in selective-search order (its "objectness" ranking) keep a box only if its IoU with
every kept box is <= 0.5, until 100 are kept. When nothing survives, the whole image is the one
box. Raw proposals are never stored.

OpenCV ranks regions by ``level x rand()`` (libc's generator), so its output order changes from
call to call, and any thread of the process that calls ``rand()`` (Ray's do, about once a
second) shifts it. Each image therefore seeds ``rand()`` from its key, and a unit runs selective
search in a helper process free of other threads (one per worker, kept across units):
proposals are a pure function of (image, key, config) and a redone unit is byte-identical.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from typing import TYPE_CHECKING

import numpy as np

from loaders.images import decode_array
from loaders.shards import iter_shard
from mining.arrays import load_arrays, save_arrays
from mining.summary import FAILED_KEYS_CAP, count_hist
from orl_fast.core.boxes import filter_boxes, scale_boxes
from orl_fast.core.defaults import MineConfig
from orl_fast.core.extras import require_opencv_contrib

if TYPE_CHECKING:
    from mining.manifest import Plan

cv2 = require_opencv_contrib()

try:
    _srand = ctypes.CDLL(None).srand
except (OSError, AttributeError):  # pragma: no cover - no libc symbol table (not Linux/macOS)
    _srand = None


def selective_search(image_bgr: np.ndarray, mode: str = "fast", seed: int = 0) -> np.ndarray:
    """Raw selective-search boxes [R, 4] int32 xywh, in the algorithm's output order."""
    if _srand is not None:
        _srand(seed & 0x7FFFFFFF)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image_bgr)
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    boxes = ss.process()
    return np.asarray(boxes, np.int32).reshape(-1, 4)


def propose(image_rgb: np.ndarray, mine: MineConfig,
            seed: int) -> tuple[np.ndarray, int, bool]:
    """Kept boxes [M >= 1, 4] int32 xywh in original pixels, the raw proposal count, and
    whether the whole image stands in because no box survived."""
    height, width = image_rgb.shape[:2]
    scale = 1.0
    if mine.ss_max_side and max(width, height) > mine.ss_max_side:
        scale = mine.ss_max_side / max(width, height)
    image = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    raw = selective_search(image, mine.ss_mode, seed)
    boxes = scale_boxes(raw, width / image.shape[1], height / image.shape[0], width, height)
    kept = filter_boxes(boxes, mine.min_box_size, mine.aspect_range, mine.max_iou,
                        mine.max_boxes)
    if len(kept) == 0:
        return np.array([[0, 0, width, height]], np.int32), len(raw), True
    return kept, len(raw), False


def propose_shard(url: str, mine: MineConfig) -> dict:
    """Proposals of every image of one input shard (runs in the helper process)."""
    cv2.setNumThreads(1)
    keys, sizes, counts, raw_counts, boxes, failed = [], [], [], [], [], []
    fallback = 0
    for key, data, _ in iter_shard(url):
        try:
            image = decode_array(data)
        except Exception:  # noqa: BLE001 - counted and reported, never fatal
            failed.append(int(key))
            continue
        kept, raw, whole = propose(image, mine, int(key))
        fallback += whole
        keys.append(int(key))
        sizes.append((image.shape[1], image.shape[0]))
        counts.append(len(kept))
        raw_counts.append(raw)
        boxes.append(kept)
    return {"keys": np.array(keys, np.int64), "size": np.array(sizes, np.int32).reshape(-1, 2),
            "counts": np.array(counts, np.int32), "raw_counts": np.array(raw_counts, np.int32),
            "boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32),
            "failed": failed, "fallback": fallback}


def _serve() -> None:
    """The helper process: answer (url, mine) requests on stdin until it closes."""
    parent = os.getppid()
    try:  # die with the worker that started us (Linux: PR_SET_PDEATHSIG = 1)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        return
    while True:
        try:
            url, mine = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            reply = (True, propose_shard(url, mine))
        except Exception:  # noqa: BLE001 - sent back, raised in the worker
            reply = (False, traceback.format_exc())
        pickle.dump(reply, sys.stdout.buffer)
        sys.stdout.buffer.flush()


_helper: subprocess.Popen | None = None  # this process's selective-search helper


def propose_shard_isolated(url: str, mine: MineConfig) -> dict:
    """:func:`propose_shard` in this process's helper: a single-threaded Python child kept
    across units (one per Ray worker), so only its own calls draw from its ``rand()``."""
    global _helper
    if _helper is None or _helper.poll() is not None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        _helper = subprocess.Popen(
            [sys.executable, "-c", "from mining.proposals import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        pickle.dump((url, mine), _helper.stdin)
        _helper.stdin.flush()
        ok, payload = pickle.load(_helper.stdout)
    except (EOFError, OSError, pickle.UnpicklingError) as e:
        _helper.kill()
        _helper = None
        raise RuntimeError(f"selective-search helper died on {url}: {e}") from e
    if not ok:
        raise RuntimeError(f"selective search of {url} failed in the helper:\n{payload}")
    return payload


def proposals_unit(plan: Plan, sid: int) -> dict:
    """Selective search + filter for every image of input shard ``sid`` (one CPU core)."""
    t0 = time.time()
    r = propose_shard_isolated(plan.data_shard(sid), plan.mine)
    small = r["boxes"].size == 0 or r["boxes"].max() < np.iinfo(np.int16).max
    nbytes = save_arrays(plan.path("proposals", sid), keys=r["keys"], size=r["size"],
                         counts=r["counts"], raw_counts=r["raw_counts"],
                         boxes=r["boxes"].astype(np.int16 if small else np.int32))
    failed = r["failed"]
    stats = {"images": len(r["keys"]) + len(failed), "with_boxes": len(r["keys"]),
             "decode_failed": len(failed), "failed_keys": failed[:FAILED_KEYS_CAP],
             "boxes": int(r["counts"].sum()), "raw_boxes": int(r["raw_counts"].sum()),
             "fallback_whole_image": r["fallback"],
             "boxes_per_image_hist": count_hist(r["counts"]), "bytes": nbytes}
    plan.write_record("proposals", sid, stats, time.time() - t0)
    return stats


class ProposalStore:
    """Kept boxes of any key, from the per-shard proposal files (LRU of ``cache`` shards)."""

    def __init__(self, plan: Plan, cache: int = 64):
        self.plan = plan
        self.shard = functools.lru_cache(maxsize=cache)(self._read)

    def _read(self, sid: int) -> dict[str, np.ndarray]:
        s = load_arrays(self.plan.path("proposals", sid))
        s["boxes"] = s["boxes"].astype(np.int32)
        s["offsets"] = np.concatenate([[0], np.cumsum(s["counts"])]).astype(np.int64)
        return s

    def locate(self, key: int) -> tuple[int, int, int, int, int] | None:
        """(shard, first row, box count, width, height) of ``key``; None without proposals."""
        sid = self.plan.shard_of(key)
        s = self.shard(sid)
        i = int(np.searchsorted(s["keys"], key))
        if i == len(s["keys"]) or s["keys"][i] != key:
            return None
        return (sid, int(s["offsets"][i]), int(s["counts"][i]), int(s["size"][i, 0]),
                int(s["size"][i, 1]))

    def boxes(self, sid: int, start: int, count: int) -> np.ndarray:
        return self.shard(sid)["boxes"][start:start + count]
