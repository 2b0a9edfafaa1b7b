"""COCO-format instances for the detection transfer: reading, image selection, the seeded held-out
split, and the torch Dataset (images as float CHW in [0, 1], targets for torchvision)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from evaluation.datasets import parent
from loaders.images import decode_rgb
from loaders.sampling import sample_seed
from orl_fast.core import storage
from orl_fast.core.errors import InputError
from orl_fast.core.extras import require

require("pycocotools", "eval", "the detection transfer (COCO masks and metrics)")
from pycocotools.coco import COCO  # (after the check that names the extra)


def read_coco(json_path: str) -> dict:
    with storage.open_file(json_path, "rb") as f:
        return json.load(f)


def _has_masks(anns: list[dict]) -> bool:
    return all(a.get("segmentation") for a in anns)


def select_images(coco: dict, masks: bool, train: bool) -> list[int]:
    """Image ids to use: with masks, only images whose every object has a mask (pycocotools
    cannot rasterise an empty ``segmentation``); for training, only images with a non-crowd
    object (detectron2 FILTER_EMPTY_ANNOTATIONS)."""
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    keep = []
    for img_id, anns in sorted(by_image.items()):
        if masks and not _has_masks(anns):
            continue
        if train and not any(not a.get("iscrowd", 0) for a in anns):
            continue
        keep.append(img_id)
    return keep


def subset(coco: dict, image_ids: list[int]) -> dict:
    ids = set(image_ids)
    return {**coco, "images": [im for im in coco["images"] if im["id"] in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def coco_api(coco: dict) -> COCO:
    api = COCO()
    api.dataset = copy.deepcopy(coco)
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class CocoInstances(Dataset):
    """COCO-format instances -> (float image CHW in [0, 1], target) for torchvision detectors.

    Training items are (epoch, position) from :class:`StepBatchSampler`; the flip of each sample is
    seeded by (seed, epoch, position). Evaluation items are positions."""

    def __init__(self, coco: dict, images_root: str, masks: bool, train: bool, seed: int = 0):
        self.api = coco_api(coco)
        self.ids = sorted(self.api.imgs)
        self.root, self.masks, self.train, self.seed = images_root, masks, train, seed
        cats = sorted(self.api.cats)
        self.label_of = {c: i + 1 for i, c in enumerate(cats)}  # 0 is background
        self.category_of = {i: c for c, i in self.label_of.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item):
        epoch, pos = item if self.train else (0, item)
        img_id = self.ids[pos]
        info = self.api.imgs[img_id]
        data = storage.read_bytes(storage.join(self.root, info["file_name"]))
        image = decode_rgb(data).float() / 255
        if not self.train:
            return image, {"image_id": img_id}
        anns = [a for a in self.api.imgToAnns[img_id] if not a.get("iscrowd", 0)
                and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "image_id": img_id,
                  "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                         dtype=torch.int64)}
        if self.masks:
            h, w = image.shape[1:]
            target["masks"] = torch.from_numpy(np.stack(
                [self.api.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8))
        rng = np.random.default_rng(sample_seed(self.seed, epoch, pos))
        if rng.random() < 0.5:
            image = image.flip(-1)
            width = image.shape[-1]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                           boxes[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(batch):
    return tuple(zip(*batch))


@dataclass
class DetectionData:
    train: dict
    val: dict
    train_root: str
    val_root: str
    split: str  # how train / val were made, for the report

    @property
    def num_classes(self) -> int:
        return len(self.train["categories"])


def load_data(train_json: str, val_json: str | None, masks: bool, holdout_frac: float,
              seed: int, train_images: str | None = None,
              val_images: str | None = None) -> DetectionData:
    train = read_coco(train_json)
    train_root = train_images or parent(train_json)
    if val_json:
        val = read_coco(val_json)
        val_root = val_images or parent(val_json)
        split = f"train {train_json}, validation {val_json}"
    else:
        ids = sorted(im["id"] for im in train["images"])
        perm = np.random.default_rng(seed).permutation(len(ids))
        n_val = round(holdout_frac * len(ids))
        val = subset(train, [ids[i] for i in perm[:n_val]])
        train = subset(train, [ids[i] for i in perm[n_val:]])
        val_root = train_root
        split = (f"one annotation file given: seeded held-out protocol, {n_val} of {len(ids)} "
                 f"images of {train_json} (fraction {holdout_frac}, seed {seed}) are the "
                 "validation set, the rest the training set")
    train = subset(train, select_images(train, masks, train=True))
    val = subset(val, select_images(val, masks, train=False))
    if [c["id"] for c in sorted(train["categories"], key=lambda c: c["id"])] != [
            c["id"] for c in sorted(val["categories"], key=lambda c: c["id"])]:
        raise InputError("--val-json: the train and validation files have different categories")
    if not train["images"] or not val["images"]:
        raise InputError(f"--train-json: no usable images ({len(train['images'])} train, "
                         f"{len(val['images'])} validation)")
    return DetectionData(train, val, train_root, val_root, split)
