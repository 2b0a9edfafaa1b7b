"""Labelled image sets for the classification evaluations (VOC07 SVM, low-shot, kNN, linear).

Labels are an (images x classes) int8 matrix in VOC's own encoding: 1 present, 0 present only as
difficult objects (ignored by training and AP), -1 absent. Layouts read:

- VOCdevkit: ``ROOT`` (or ``ROOT/VOC2007``, ``ROOT/VOCdevkit/VOC2007``) with ``JPEGImages/`` and
  ``ImageSets/Main/<class>_<split>.txt`` (``<id> <1|0|-1>`` per line).
- labels.csv: ``ROOT/labels.csv`` (``id``, one column per class, optional ``split`` column) and
  ``ROOT/images/<id>.jpg`` (the layout of ``../shared/data/voc07``). Without a ``split``
  column the file is one split, named by whoever reads it.
- COCO instances JSON (a ``.json`` path given as the split): an image is positive for every
  category it has an object of; images are found relative to the JSON's folder.
- ImageFolder (torchvision's layout, single-label): ``ROOT/<split>/<class>/*.jpg`` (e.g.
  ``--train train --test val``), or ``ROOT/<class>/*.jpg`` as one split named by whoever reads
  it; classes are the folder names, sorted.

Every root and file may be a local path or an fsspec URL (``s3://bucket/voc07``, ...): files are
read through :mod:`orl_fast.core.storage`, and image paths are built under the same root.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from dataclasses import dataclass

import numpy as np

from orl_fast.core import storage
from orl_fast.core.errors import InputError, NotFound

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class LabelledImages:
    ids: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray  # (N, C) int8: 1 present, 0 difficult only (ignored), -1 absent
    classes: tuple[str, ...]
    source: str  # where and which split, for reports

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray, source: str) -> LabelledImages:
        index = np.asarray(index)
        return LabelledImages(tuple(self.ids[i] for i in index),
                              tuple(self.paths[i] for i in index), self.labels[index],
                              self.classes, source)

    @property
    def single_label(self) -> bool:
        """Every image has exactly one present class (top-1 accuracy is defined)."""
        return bool(len(self) and ((self.labels == 1).sum(1) == 1).all())

    def summary(self) -> dict:
        return {"source": self.source, "images": len(self), "classes": list(self.classes),
                "positives": {c: int(n) for c, n in zip(self.classes, (self.labels == 1).sum(0))},
                "difficult_only": int((self.labels == 0).sum())}


def load(data: str, split: str) -> LabelledImages:
    """One split: a COCO ``.json`` path, or a split name of the VOCdevkit / labels.csv ``data``."""
    if split.endswith(".json"):
        return load_coco(split)
    if not data:
        raise InputError(f"split {split!r} needs a dataset root (--data)")
    devkit = _find_devkit(data)
    if devkit:
        return load_vocdevkit(devkit, split)
    if storage.exists(storage.join(data, "labels.csv")):
        return load_labels_csv(data, split)
    folder = _find_image_folder(data, split)
    if folder:
        return load_image_folder(folder, split)
    raise NotFound(f"{data}: neither a VOCdevkit (JPEGImages + ImageSets/Main), a "
                   "labels.csv + images/ folder, nor an ImageFolder (a folder of "
                   "images per class)")


def train_test(data: str, train: str, test: str | None, holdout_frac: float,
               seed: int) -> tuple[LabelledImages, LabelledImages, str]:
    """The train and test sets, and how they were made (for the report).

    With no test split, a seeded ``holdout_frac`` of the train split is the test set."""
    full = load(data, train)
    if test:
        return full, load(data, test), f"train on {full.source}, test on split {test!r}"
    n_test = round(holdout_frac * len(full))
    if not 0 < n_test < len(full):
        raise InputError(f"{full.source}: {len(full)} images cannot be split {holdout_frac}")
    perm = np.random.default_rng(seed).permutation(len(full))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    how = (f"one split given: seeded held-out protocol, {n_test} of {len(full)} images of "
           f"{full.source} (fraction {holdout_frac}, seed {seed}) are the test set, the other "
           f"{len(full) - n_test} the training set")
    return (full.subset(train_idx, f"{full.source} (held-out protocol: train part)"),
            full.subset(test_idx, f"{full.source} (held-out protocol: test part)"), how)


def parent(path: str) -> str:
    """The folder of a file: its absolute local directory, or the URL less its last part."""
    if "://" in path:
        return posixpath.dirname(path.rstrip("/"))
    return os.path.dirname(os.path.abspath(path))


def _find_devkit(root: str) -> str | None:
    for d in (root, storage.join(root, "VOC2007"), storage.join(root, "VOCdevkit", "VOC2007")):
        if storage.isdir(storage.join(d, "ImageSets", "Main")) and storage.isdir(
                storage.join(d, "JPEGImages")):
            return d
    return None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def _class_folders(root: str) -> dict[str, list[str]]:
    """{class: image names} of the sub-folders of ``root`` that hold images (``{}``: none)."""
    if not storage.isdir(root):
        return {}
    classes = {}
    for name in sorted(storage.listdir(root)):
        sub = storage.join(root, name)
        if name.startswith(".") or not storage.isdir(sub):
            continue
        images = sorted(n for n in storage.listdir(sub) if n.lower().endswith(IMAGE_EXTENSIONS))
        if images:
            classes[name] = images
    return classes


def _find_image_folder(root: str, split: str) -> str | None:
    """``ROOT/<split>`` when it holds class folders (two or more), else ``ROOT`` when it does."""
    for d in (storage.join(root, split), root):
        if len(_class_folders(d)) >= 2:
            return d
    return None


def load_image_folder(root: str, split: str) -> LabelledImages:
    """A folder per class (torchvision ImageFolder); one class per image."""
    classes = _class_folders(root)
    names = tuple(classes)
    ids, paths, rows = [], [], []
    for c, cls in enumerate(names):
        for image in classes[cls]:
            ids.append(f"{cls}/{image}")
            paths.append(storage.join(root, cls, image))
            row = np.full(len(names), -1, np.int8)
            row[c] = 1
            rows.append(row)
    return LabelledImages(tuple(ids), tuple(paths), np.stack(rows), names,
                          f"ImageFolder {root} (split {split!r})")


def load_vocdevkit(root: str, split: str) -> LabelledImages:
    main = storage.join(root, "ImageSets", "Main")
    columns: list[dict[str, int]] = []
    for cls in VOC_CLASSES:
        path = storage.join(main, f"{cls}_{split}.txt")
        if not storage.exists(path):
            raise NotFound(f"{path}: no such split file (split {split!r})")
        lines = storage.read_text(path).splitlines()
        columns.append({img: int(lab) for img, lab in (ln.split() for ln in lines if ln.strip())})
    ids = sorted(columns[0])
    labels = np.array([[col[i] for col in columns] for i in ids], dtype=np.int8)
    paths = tuple(storage.join(root, "JPEGImages", f"{i}.jpg") for i in ids)
    return LabelledImages(tuple(ids), paths, labels, VOC_CLASSES,
                          f"VOCdevkit {root} split {split!r}")


def load_labels_csv(root: str, split: str) -> LabelledImages:
    path = storage.join(root, "labels.csv")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))
    if not rows:
        raise InputError(f"{path}: empty")
    classes = tuple(c for c in rows[0] if c not in ("id", "split"))
    if "split" in rows[0]:
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise InputError(f"{path}: no rows with split {split!r}")
        source = f"{path} split {split!r}"
    else:
        source = f"{path} (one split, named {split!r})"
    ids = tuple(r["id"] for r in rows)
    labels = np.array([[int(r[c]) for c in classes] for r in rows], dtype=np.int8)
    paths = tuple(storage.join(root, "images", f"{i}.jpg") for i in ids)
    return LabelledImages(ids, paths, labels, classes, source)


def load_coco(json_path: str, images_root: str | None = None) -> LabelledImages:
    coco = json.loads(storage.read_bytes(json_path))
    root = images_root or parent(json_path)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    col = {c["id"]: j for j, c in enumerate(cats)}
    images = sorted(coco["images"], key=lambda im: im["id"])
    row = {im["id"]: i for i, im in enumerate(images)}
    labels = np.full((len(images), len(cats)), -1, dtype=np.int8)
    for a in coco["annotations"]:
        labels[row[a["image_id"]], col[a["category_id"]]] = 1
    return LabelledImages(tuple(str(im["id"]) for im in images),
                          tuple(storage.join(root, im["file_name"]) for im in images),
                          labels, tuple(c["name"] for c in cats), f"COCO {json_path}")
