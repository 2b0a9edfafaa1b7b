"""Quality of mined correspondence against COCO-format ground truth (boxes + categories).

- ``pair_purity``: fraction of mined pairs whose two boxes each match a ground-truth box
  (IoU >= 0.5) of one same category.
- ``random_pair_purity``: the same for random pairs of kept boxes between the same two images,
  as many per image pair as were mined (seeded): what the ranking adds over chance.
- ``box_gt_match``: fraction of kept boxes that match any ground-truth object.
- ``pair_objects`` / ``random_pair_objects``: both boxes of the pair match some object.

Only images with ground truth count (an image listed with no objects counts, with none); crowd
regions are ignored. Images are matched to the ground truth by the base name of their ingest
source. ``orl-fast mine purity --pairs MINED --gt INSTANCES.json`` (or ``orl-fast mine --gt``).
"""

from __future__ import annotations

import posixpath

import numpy as np

from loaders.pairs import open_pairs, read_record
from mining.manifest import data_of, iter_records
from mining.official_json import source_names
from orl_fast.core import storage
from orl_fast.core.boxes import box_iou


class GroundTruth:
    """Per-key ground truth: boxes [G, 4] xywh and a one-hot category matrix [G, C]."""

    def __init__(self, instances_json: str, data: str):
        coco = storage.read_json(instances_json)
        cats = sorted(c["id"] for c in coco["categories"])
        column = {c: i for i, c in enumerate(cats)}
        by_image: dict[int, list] = {img["id"]: [] for img in coco["images"]}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0) and a["image_id"] in by_image:
                by_image[a["image_id"]].append((a["bbox"], column[a["category_id"]]))
        by_name = {posixpath.basename(img["file_name"]): by_image[img["id"]]
                   for img in coco["images"]}
        self.num_categories = len(cats)
        names = {c["id"]: c.get("name", str(c["id"])) for c in coco["categories"]}
        self.names = [names[c] for c in cats]
        self._gt: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for key, name in source_names(data).items():
            anns = by_name.get(posixpath.basename(name))
            if anns is None:
                continue
            boxes = np.array([b for b, _ in anns], np.float64).reshape(-1, 4)
            onehot = np.zeros((len(anns), len(cats)), bool)
            onehot[np.arange(len(anns)), [c for _, c in anns]] = True
            self._gt[key] = (boxes, onehot)

    def __contains__(self, key: int) -> bool:
        return int(key) in self._gt

    def __len__(self) -> int:
        return len(self._gt)

    def named_boxes(self, key: int) -> list[tuple[tuple[float, ...], str]]:
        """The ground-truth boxes (xywh) of an image with their category names."""
        if int(key) not in self._gt:
            return []
        boxes, onehot = self._gt[int(key)]
        return [(tuple(b), self.names[int(np.argmax(o))]) for b, o in zip(boxes, onehot)]

    def category_of(self, key: int, box: tuple[int, ...], iou: float = 0.5) -> str | None:
        """The category of the ground-truth box ``box`` matches best (IoU >= iou), or None."""
        if int(key) not in self._gt or not len(self._gt[int(key)][0]):
            return None
        boxes, onehot = self._gt[int(key)]
        overlap = box_iou(np.asarray([box], np.float64), boxes)[0]
        best = int(np.argmax(overlap))
        return self.names[int(np.argmax(onehot[best]))] if overlap[best] >= iou else None

    def categories(self, key: int, boxes: np.ndarray, iou: float) -> np.ndarray:
        """[B, C] bool: the categories of the ground-truth boxes each box matches (IoU >= iou)."""
        gt_boxes, onehot = self._gt[int(key)]
        if len(gt_boxes) == 0 or len(boxes) == 0:
            return np.zeros((len(boxes), self.num_categories), bool)
        match = box_iou(boxes, gt_boxes) >= iou
        return (match.astype(np.int32) @ onehot.astype(np.int32)) > 0


def pair_purity(mined: str, instances_json: str, data: str | None = None, iou: float = 0.5,
                seed: int = 0) -> dict:
    data = data or data_of(mined)
    gt = GroundTruth(instances_json, data)
    pairs_index = open_pairs(mined)
    n = {"pairs": 0, "pure": 0, "objects": 0, "random_pure": 0, "random_objects": 0,
         "boxes": 0, "boxes_matched": 0, "images": 0}
    for rec in iter_records(mined):
        if rec.key not in gt:
            continue
        n["images"] += 1
        q_cats = gt.categories(rec.key, rec.boxes, iou)
        n["boxes"] += len(rec.boxes)
        n["boxes_matched"] += int(q_cats.any(1).sum())
        for slot, nkey in enumerate(rec.neighbors):
            p = rec.pairs_of(slot)
            if len(p) == 0 or nkey not in gt:
                continue
            a = gt.categories(rec.key, rec.pair_query_box[p], iou)
            b = gt.categories(nkey, rec.pair_neighbor_box[p], iou)
            n["pairs"] += len(p)
            n["pure"] += int((a & b).any(1).sum())
            n["objects"] += int((a.any(1) & b.any(1)).sum())
            # Chance level: as many random (query box, neighbour box) pairs.
            other = read_record(pairs_index, int(nkey))
            rng = np.random.default_rng([seed, int(rec.key), slot])
            qi = rng.integers(len(rec.boxes), size=len(p))
            ni = rng.integers(len(other.boxes), size=len(p))
            ra, rb = q_cats[qi], gt.categories(nkey, other.boxes[ni], iou)
            n["random_pure"] += int((ra & rb).any(1).sum())
            n["random_objects"] += int((ra.any(1) & rb.any(1)).sum())
    pairs_index.close()

    def frac(a: str, b: str) -> float:
        return round(n[a] / n[b], 4) if n[b] else 0.0

    return {
        "images_with_gt": n["images"], "pairs": n["pairs"], "iou": iou,
        "pair_purity": frac("pure", "pairs"), "random_pair_purity": frac("random_pure", "pairs"),
        "pair_objects": frac("objects", "pairs"),
        "random_pair_objects": frac("random_objects", "pairs"),
        "boxes": n["boxes"], "box_gt_match": frac("boxes_matched", "boxes"),
    }


def better_than_random(purity: dict) -> bool:
    """Whether the mined pairs are purer than random pairs of the same kept boxes."""
    return purity["pairs"] > 0 and purity["pair_purity"] > purity["random_pair_purity"]


def warning(purity: dict) -> str:
    """A plain warning when the mined pairs are no better than chance, else ""."""
    if better_than_random(purity):
        return ""
    return ("WARNING: the mined pairs are no better than random pairs of the same boxes: the "
            "Stage 1 model does not yet tell the objects apart (train it longer), or few kept "
            "boxes lie on objects (see mine.min_box_size)")


def summary_line(purity: dict, with_warning: bool = True) -> str:
    """The purity in one line for people: the mined pairs, chance level, boxes on objects."""
    line = (f"pair purity {purity['pair_purity']:.3f} over {purity['pairs']} pairs (random "
            f"pairs of the kept boxes: {purity['random_pair_purity']:.3f}); kept boxes on an "
            f"object: {purity['box_gt_match']:.3f}")
    return f"{line}. {warning(purity)}" if with_warning and warning(purity) else line
