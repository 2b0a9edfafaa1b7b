"""Object-level probe: crops of ground-truth objects classified by their category.

ORL claims better *object-level* features, so this probe asks the question at the object level:
every ground-truth box of a COCO-format instances file (or of generated scenes) is cut out,
resized to a square at the training resolution and embedded by the frozen backbone (global
average pool of res5); a weighted kNN and a linear probe (``evaluation.probes``) then classify the
test objects by category.

- Split by image: an image's objects are all in the training part or all in the test part (a
  seeded split of the images), so a test object never has a twin from its own scene in training.
- Per-class balanced: each part keeps at most ``per_class`` objects of each category (a seeded
  choice); categories with fewer than ``min_per_class`` objects in either part are left out. The
  metrics are balanced accuracies (mean per-class recall), equal to top-1 accuracy when the
  classes are exactly balanced.
- Deterministic: the same weights, objects and seed give bit-identical numbers (features and
  probes run on one thread: :func:`evaluation.probes.single_thread`).

Also reported: the effective rank of the test features (exp of the entropy of the normalised
singular values of the centred feature matrix), a collapse / richness diagnostic.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from evaluation import probes
from evaluation.backbones import Weights
from evaluation.features import PooledFeatures, resolve_device
from loaders.augment import normalize
from loaders.synthetic import CATEGORIES, DEFAULT_WORLD, World, make_scene, scene_seed
from orl_fast.core import storage
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD, EvalConfig
from orl_fast.core.models import effective_rank


@dataclass(frozen=True)
class Objects:
    crops: torch.Tensor   # uint8 [N, 3, S, S]
    labels: np.ndarray    # int64 [N], index into classes
    images: np.ndarray    # int64 [N], the image each object comes from
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Objects:
        index = np.asarray(index, np.int64)
        return Objects(self.crops[torch.from_numpy(index)], self.labels[index],
                       self.images[index], self.classes)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def cut(image: torch.Tensor, box, size: int, margin: float = 0.0) -> torch.Tensor:
    """The xywh ``box`` (grown by ``margin`` x its size on each side, clipped) of a uint8 CHW
    image, resized to size x size (antialiased bilinear)."""
    _, h, w = image.shape
    x, y, bw, bh = (float(v) for v in box)
    x0, y0 = max(0, round(x - margin * bw)), max(0, round(y - margin * bh))
    x1, y1 = min(w, round(x + bw * (1 + margin))), min(h, round(y + bh * (1 + margin)))
    return TF.resized_crop(image, y0, x0, max(1, y1 - y0), max(1, x1 - x0), [size, size],
                           antialias=True)


def from_coco(instances_json: str, size: int, min_side: int = 16, margin: float = 0.0,
              images_root: str | None = None, image_ids: set[int] | None = None) -> Objects:
    """Every non-crowd box with min(w, h) >= ``min_side`` of a COCO instances file (images read
    relative to the file's folder, or ``images_root``), optionally only of ``image_ids``."""
    coco = storage.read_json(instances_json)
    root = images_root or posixpath.dirname(instances_json)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0) or min(a["bbox"][2], a["bbox"][3]) < min_side:
            continue
        by_image.setdefault(a["image_id"], []).append(a)
    crops, labels, images = [], [], []
    for im in sorted(coco["images"], key=lambda im: im["id"]):
        anns = by_image.get(im["id"])
        if not anns or (image_ids is not None and im["id"] not in image_ids):
            continue
        data = storage.read_bytes(storage.join(root, im["file_name"]))
        image = TF.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
        for a in anns:
            crops.append(cut(image, a["bbox"], size, margin))
            labels.append(column[a["category_id"]])
            images.append(im["id"])
    return _objects(crops, labels, images, tuple(c["name"] for c in cats))


def from_scenes(seed: int, num_scenes: int, size: int, world: World = DEFAULT_WORLD,
                margin: float = 0.0) -> Objects:
    """The objects of ``num_scenes`` generated scenes of ``world`` (:mod:`loaders.synthetic`),
    rendered in memory: scene i of ``seed`` is image i."""

    crops, labels, images = [], [], []
    for i in range(num_scenes):
        scene, objects = make_scene(scene_seed(seed, i), world)
        image = TF.pil_to_tensor(scene)
        for obj in objects:
            crops.append(cut(image, obj.box, size, margin))
            labels.append(CATEGORIES.index(obj.category))
            images.append(i)
    return _objects(crops, labels, images, CATEGORIES)


def _objects(crops: list[torch.Tensor], labels: list[int], images: list[int],
             classes: tuple[str, ...]) -> Objects:
    if not crops:
        raise ValueError("no ground-truth objects to probe")
    return Objects(torch.stack(crops), np.array(labels, np.int64), np.array(images, np.int64),
                   classes)


def split_images(ids: np.ndarray, test_frac: float = 0.5,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, test ids): a seeded split of distinct image ids."""
    ids = np.unique(ids)
    test = np.sort(np.random.default_rng(seed).permutation(ids)[:round(test_frac * len(ids))])
    return np.setdiff1d(ids, test), test


def split(objects: Objects, test_frac: float = 0.5, per_class: int = 100,
          min_per_class: int = 5, seed: int = 0,
          test_images: np.ndarray | None = None) -> tuple[Objects, Objects]:
    """(train, test): a seeded split of the images (or the given ``test_images`` ids), then at
    most ``per_class`` objects per category in each part; categories under ``min_per_class`` in
    either part are dropped and the class list shrinks to those kept (labels re-indexed)."""
    rng = np.random.default_rng(seed)
    test_ids = (split_images(objects.images, test_frac, seed)[1] if test_images is None
                else np.asarray(test_images))
    in_test = np.isin(objects.images, test_ids)
    parts = []
    for mask in (~in_test, in_test):
        chosen = {}
        for c in range(len(objects.classes)):
            idx = np.flatnonzero(mask & (objects.labels == c))
            chosen[c] = np.sort(rng.permutation(idx)[:per_class])
        parts.append(chosen)
    keep = [c for c in range(len(objects.classes))
            if min(len(parts[0][c]), len(parts[1][c])) >= min_per_class]
    if len(keep) < 2:
        raise ValueError(f"fewer than 2 categories with >= {min_per_class} objects in each part")
    remap = np.full(len(objects.classes), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    classes = tuple(objects.classes[c] for c in keep)
    out = []
    for chosen in parts:
        index = np.sort(np.concatenate([chosen[c] for c in keep]))
        sub = objects.subset(index)
        out.append(Objects(sub.crops, remap[sub.labels], sub.images, classes))
    return out[0], out[1]


@torch.no_grad()
def embed(weights: Weights, crops: torch.Tensor, batch_size: int = 256,
          device: str = "auto") -> np.ndarray:
    """Global-average-pooled res5 features (float32 [N, D]) of uint8 crops, backbone in eval mode."""
    dev = resolve_device(device)
    model = PooledFeatures(weights.build(), ("res5",), "global").to(dev).eval()
    out = []
    for start in range(0, len(crops), batch_size):
        x = normalize(crops[start:start + batch_size].to(dev), IMAGENET_MEAN, IMAGENET_STD)
        out.append(model(x)["res5"].cpu())
    return torch.cat(out).numpy()


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over classes of the fraction of that class's objects whose top score is its own."""
    pred = np.asarray(scores).argmax(1)
    recalls = [(pred[labels == c] == c).mean() for c in range(num_classes) if (labels == c).any()]
    return float(np.mean(recalls) * 100)


def evaluate(weights: Weights, train: Objects, test: Objects, cfg: EvalConfig,
             relabelled: dict[str, tuple[Objects, Objects]] | None = None) -> dict:
    """kNN and linear-probe balanced accuracy (%) of ``weights`` on the objects, and the
    effective rank of the test features. ``relabelled``: further (train, test) labellings of the
    same crops (another attribute of the same objects), scored on the same features under their
    name."""
    with probes.single_thread():
        ftr = embed(weights, train.crops, cfg.batch_size, cfg.device)
        fte = embed(weights, test.crops, cfg.batch_size, cfg.device)
        report = _scores(ftr, fte, train, test, cfg)
        for name, (rtrain, rtest) in (relabelled or {}).items():
            same = torch.equal(rtrain.crops, train.crops) and torch.equal(rtest.crops, test.crops)
            if not same:
                raise ValueError(f"relabelled[{name!r}]: not the same crops as the probe's")
            report[name] = _scores(ftr, fte, rtrain, rtest, cfg)
    return {**report, "effective_rank": float(effective_rank(torch.from_numpy(fte))),
            "feature_dim": int(ftr.shape[1]), "train_objects": len(train),
            "test_objects": len(test), "classes": len(train.classes)}


def _scores(ftr: np.ndarray, fte: np.ndarray, train: Objects, test: Objects,
            cfg: EvalConfig) -> dict:
    n = len(train.classes)
    onehot = np.where(np.eye(n, dtype=bool)[train.labels], 1, -1).astype(np.int8)
    knn = probes.knn_scores(ftr, onehot, fte, cfg.knn.k, cfg.knn.temperature,
                            resolve_device(cfg.device))
    linear = probes.linear_probe_scores(ftr, onehot, fte, cfg)
    return {"knn": balanced_accuracy(knn, test.labels, n),
            "linear": balanced_accuracy(linear, test.labels, n)}
