"""Stage 3 test data: pair shards for the shared shard fixtures, position-coded images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from loaders.ingest import ingest
from loaders.pairs import PairRecord
from loaders.shards import ShardIndex
from orl_fast.core.defaults import IngestConfig

from .synthetic_pairs import random_records, write_pairs

TINY_ORL = ["orl.patch_size=16"]  # with common.TINY_OVERRIDES (crop 32)


def random_pairs(shards: str, mined: str, seed: int = 0) -> str:
    """Random pair shards (2 shards) for every image of ``shards``; returns ``mined``."""
    records = random_records(ShardIndex(shards), seed=seed, min_side=24)
    write_pairs(mined, records, shard_size=(len(records) + 1) // 2)
    return mined


def coded_image(width: int, height: int, blue: int) -> np.ndarray:
    """R = x * 255 / (width - 1), G = y * 255 / (height - 1), B = ``blue``: colour says position."""
    img = np.zeros((height, width, 3), np.float64)
    img[..., 0] = np.arange(width)[None, :] * 255 / (width - 1)
    img[..., 1] = np.arange(height)[:, None] * 255 / (height - 1)
    img[..., 2] = blue
    return np.round(img).astype(np.uint8)


def expected_patch(box, width: int, height: int, size: int, flip: bool) -> np.ndarray:
    """The R, G values [2, size, size] a position-coded image gives for ``box`` resized to size."""
    x, y, w, h = (float(v) for v in box)
    xs = x + (np.arange(size) + 0.5) * w / size - 0.5
    ys = y + (np.arange(size) + 0.5) * h / size - 0.5
    if flip:
        xs = xs[::-1]
    r = np.clip(xs, 0, width - 1) * 255 / (width - 1)
    g = np.clip(ys, 0, height - 1) * 255 / (height - 1)
    return np.stack([np.broadcast_to(r[None, :], (size, size)),
                     np.broadcast_to(g[:, None], (size, size))])


def coded_dataset(root, width: int = 256, height: int = 192) -> tuple[str, str]:
    """Four position-coded images (blue 40, 100, 160, 220) in shards, and pair shards in which
    image i's neighbour is image i ^ 1 with one fixed pair and one kept box. Returns (shards,
    mined)."""
    images = root / "images"
    images.mkdir(parents=True)
    for i, blue in enumerate((40, 100, 160, 220)):
        Image.fromarray(coded_image(width, height, blue)).save(
            images / f"coded_{i}.jpg", quality=100, subsampling=0)
    shards = str(root / "shards")
    ingest(str(images), shards, IngestConfig(shard_size=4, workers=1), progress=False)
    index = ShardIndex(shards)
    keys = [index.key_at(i) for i in range(4)]
    records = [PairRecord(
        keys[i], width, height, boxes=[[60 + 10 * i, 40, 100, 90]], neighbors=[keys[i ^ 1]],
        neighbor_sims=[0.9], pair_neighbor=[0], pair_query_box=[[30, 20 + 5 * i, 120, 100]],
        pair_neighbor_box=[[110, 60, 90, 110]], pair_score=[0.8]) for i in range(4)]
    mined = str(root / "mined")
    write_pairs(mined, records)
    return shards, mined


def proposal_records(shards: str, count: int) -> list[PairRecord]:
    """Records of the first ``count`` images of ``shards`` whose kept boxes are Stage 2's real
    proposals (selective search + the ORL filter, paper defaults, ``rand()`` seeded with the
    position), with no neighbour: what the intra-RoI term of Stage 3 sees."""
    from loaders.images import decode_array
    from mining.proposals import propose
    from orl_fast.core.defaults import MineConfig

    index = ShardIndex(shards)
    records = []
    for pos in range(count):
        key, data = index.data_at(pos)
        image = decode_array(data)
        kept, _, _ = propose(image, MineConfig(), pos)
        records.append(PairRecord(key, image.shape[1], image.shape[0], boxes=kept))
    return records


def intra_pair_statistics(builder, positions: range, epochs: int) -> dict[str, float]:
    """The intra-RoI pairs (p, p') a sample builder plans for ``positions`` over ``epochs``
    epochs: the median IoU(p, p'), the fraction with IoU <= 0.5, the fraction of p' touching the
    image border, and the fraction of p' that are a kept box itself (no candidate qualified)."""
    from loaders.pairs import read_record
    from orl_fast.core.boxes import box_iou

    ious, border, fallback = [], [], []
    for pos in positions:
        for epoch in range(epochs):
            plan = builder.plan(epoch, pos)
            p, q = plan.boxes[2], plan.boxes[3]
            ious.append(box_iou(p, q)[0, 0])
            x, y, w, h = (int(v) for v in q)
            border.append(x <= 0 or y <= 0 or x + w >= plan.width or y + h >= plan.height)
            kept = read_record(builder.pairs, plan.key).boxes
            fallback.append(bool((kept == q).all(axis=1).any()))
    ious = np.asarray(ious)
    return {"pairs": len(ious), "median_iou": float(np.median(ious)),
            "frac_iou_le_half": float((ious <= 0.5).mean()),
            "frac_border": float(np.mean(border)), "frac_fallback": float(np.mean(fallback))}
