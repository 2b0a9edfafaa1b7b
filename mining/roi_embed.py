"""RoI embedding: every kept box cropped, resized to ``roi_size`` and embedded once.

The Stage 1 online backbone's pooled feature (2048-d on ResNet-50, as the official code) is
L2-normalised and stored float16 in ``roi_embed/roi-{shard}.npy``, one row per kept box in the
order of ``proposals/props-{shard}.npz``. Rows are streamed to disk as batches finish, so a unit
never holds its shard's features; the pairs step reads any image's rows with one range read.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from mining.arrays import NpyRows, NpyWriter, file_size, load_arrays
from mining.embed import ModelRunner, forward_batched, iter_decoded
from mining.manifest import Plan
from mining.summary import FAILED_KEYS_CAP
from orl_fast.core import storage


def roi_unit(plan: Plan, sid: int, runner: ModelRunner) -> dict:
    """Embed the kept boxes of every image of input shard ``sid``."""
    t0 = time.time()
    props = load_arrays(plan.path("proposals", sid))
    offsets = np.concatenate([[0], np.cumsum(props["counts"])]).astype(np.int64)
    row_of = {int(k): i for i, k in enumerate(props["keys"])}
    boxes = props["boxes"].astype(np.float32)
    size = plan.mine.roi_size
    failed: list[int] = []

    def crops():
        for key, img in iter_decoded(plan.data_shard(sid), runner.device):
            i = row_of.get(key)
            if i is None:  # no proposals: the image did not decode at that step either
                continue
            b = boxes[offsets[i]:offsets[i + 1]]
            if img is None:  # decoded before, not now (I/O error): rows of zeros, counted
                failed.append(key)
                yield torch.zeros(len(b), 3, size, size)
            else:
                yield runner.crops(img, b, size)

    url = plan.path("roi", sid)
    with (storage.atomic_local_file(url) as tmp,
          NpyWriter(tmp, int(offsets[-1]), runner.feat_dim, "<f2") as writer):
        for block in forward_batched(crops(), lambda x: runner.embed(x, project=False),
                                     plan.mine.batch_size):
            writer.write(block)
    stats = {"images": len(row_of), "rois": int(offsets[-1]), "decode_failed": len(failed),
             "failed_keys": failed[:FAILED_KEYS_CAP], "bytes": file_size(url)}
    plan.write_record("roi", sid, stats, time.time() - t0)
    return stats


class RoiStore:
    """Rows of any shard's RoI embeddings by range (LRU of ``cache`` open files)."""

    def __init__(self, plan: Plan, cache: int = 64):
        # Evicted readers are closed when garbage-collected.
        self._file = functools.lru_cache(maxsize=cache)(
            lambda sid: NpyRows(plan.path("roi", sid)))

    def rows(self, sid: int, start: int, count: int) -> np.ndarray:
        return self._file(sid).rows(start, start + count).astype(np.float32)

    def close(self) -> None:
        self._file.cache_clear()
