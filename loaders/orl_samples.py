"""The sample plans of both stages: which regions of which images make one sample, and their
augmentation (Stage 1: the two global views; Stage 3: the six crops of ORL).

A :class:`SamplePlan` is a pure function of (seed, epoch, position): every random choice (the
neighbour, the mined pair, the kept box and its jitter, the global crops, and every photometric
decision and factor) is drawn here from a generator seeded with ``sample_seed``, a fixed number of
draws each, so the torch path (:mod:`loaders.orl_torch`) and the DALI path
(:mod:`loaders.dali_loader`) cut and augment the same regions the same way, on any worker, and a
resumed run sees the samples an uninterrupted one would.

The six crops of a plan (rows of ``boxes``, xywh integers in the pixels of their source image):

    0, 1  global views v, v'     random resized crop of x (BYOL)          -> crop_size
    2, 3  intra-RoI p, p'        a kept box of x and its jitter            -> patch_size
    4     inter-RoI p1           the mined pair's box in x                 -> patch_size
    5     inter-RoI p2           the mined pair's box in the neighbour     -> patch_size

Crops 0, 2, 4 use the view-1 augmentation probabilities and 1, 3, 5 the view-2 ones (the official
``patch_pipeline1`` / ``patch_pipeline2``). Fallbacks (the paper): an image without a kept box
uses the whole-image box; without a mined pair, p1 and p2 are both the whole image x. In the multi-crop
ablation (``orl.patches=random``) crops 2-5 are random resized crops of x. As the official code,
p is the kept box itself and p' a jitter of it that stays inside the image (``orl.jitter_both``
and ``orl.jitter_outside=clip`` are the variants: both jittered, candidates clipped).

Label-aware modes (``label.mode``, labels from :mod:`loaders.labels`): a plan also carries the
box label of each crop (OPERA's RoI extension) and, for SCAN, one more global view: a random
resized crop of a label neighbour drawn with probability softmax(cos / tau_w), with view 2's
augmentation probabilities (cut from x itself, and marked invalid, when x has no label
neighbour). Their draws come after every other draw, so the six crops are those of mode none.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from loaders.labels import neighbor_weights, open_store
from loaders.pairs import PairRecord, check_mined_from, mined_with, open_pairs, read_record
from loaders.sampling import sample_seed
from loaders.shards import ShardIndex
from orl_fast.core import storage
from orl_fast.core.boxes import clip_box, jitter_box, random_resized_crop, whole_image
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import AugmentConfig, Config

log = logging.getLogger(__name__)
T = TypeVar("T")

VIEW_OF_CROP = np.array([0, 1, 0, 1, 0, 1])
# A sample that does not decode is replaced by the next position; this many in a row: the data
# set is broken.
MAX_CONSECUTIVE_FAILURES = 16
# Colour-jitter operations, in the index order of Photometric.factors / .order.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
JITTER_IDENTITY = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32)


# ----------------------------------------------------------------------------- photometric


@dataclass
class Photometric:
    """Per-crop BYOL augmentation decisions (arrays over crops), in torchvision's order:
    flip -> colour jitter (``order``, with ``factors``) -> grayscale -> blur -> solarise."""

    flip: np.ndarray      # bool [n]
    jitter: np.ndarray    # bool [n]: colour jitter applied
    order: np.ndarray     # int  [n, 4]: permutation of JITTER_OPS (torchvision's random order)
    factors: np.ndarray   # float32 [n, 4]: brightness, contrast, saturation, hue (identity if off)
    gray: np.ndarray      # bool [n]
    sigma: np.ndarray     # float32 [n]: Gaussian blur sigma in pixels, 0 = no blur
    solarize: np.ndarray  # bool [n]


def draw_photometric(rng: np.random.Generator, aug: AugmentConfig,
                     views: np.ndarray = VIEW_OF_CROP) -> Photometric:
    """Draw the augmentation of len(views) crops; crop i uses the probabilities of view views[i]."""
    n = len(views)
    u = rng.random((n, 6))
    order = np.argsort(rng.random((n, 4)), axis=1)
    f = rng.random((n, 4))
    b, c, s, h = aug.color_jitter
    lo = np.array([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
    hi = np.array([1 + b, 1 + c, 1 + s, h])
    jitter = u[:, 1] < aug.color_jitter_p
    factors = np.where(jitter[:, None], lo + f * (hi - lo), JITTER_IDENTITY).astype(np.float32)
    blur = u[:, 3] < np.asarray(aug.blur_p)[views]
    lo_sigma, hi_sigma = aug.blur_sigma_px
    sigma = lo_sigma + u[:, 4] * (hi_sigma - lo_sigma)
    return Photometric(
        flip=u[:, 0] < aug.hflip_p, jitter=jitter, order=order, factors=factors,
        gray=u[:, 2] < aug.grayscale_p, sigma=np.where(blur, sigma, 0.0).astype(np.float32),
        solarize=u[:, 5] < np.asarray(aug.solarize_p)[views],
    )


# ----------------------------------------------------------------------------- plans


@dataclass
class SamplePlan:
    key: int
    neighbor: int         # the image crop 5 is cut from (== key when the sample has no pair)
    width: int            # size of image x
    height: int
    boxes: np.ndarray     # int32 [6, 4] xywh, the six crops of the module docstring
    photo: Photometric    # over the 6 crops
    has_pair: bool
    has_box: bool
    # Label-aware modes: the box label of each crop (-1: none; OPERA's RoI extension); SCAN's
    # view: its label neighbour (-1: none, the view is cut from x), box (xywh in that image)
    # and augmentation (one crop, view 2's probabilities).
    roi_labels: np.ndarray | None = None
    scan_neighbor: int = -1
    scan_box: np.ndarray | None = None
    scan_photo: Photometric | None = None


class GroundTruthBoxes:
    """Intra-RoI boxes from a COCO instances file (Table 5d), matched to images by file name.

    Crowd boxes and boxes whose shorter side (at the stored image size) is under ``min_size`` are
    left out, as Stage 2 leaves out small proposals.
    """

    def __init__(self, path: str, min_size: int):
        coco = storage.read_json(path)
        sizes = {im["id"]: (im["file_name"], im["width"], im["height"]) for im in coco["images"]}
        boxes: dict[int, list] = {}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0):
                boxes.setdefault(a["image_id"], []).append(a["bbox"])
        self.by_name = {
            posixpath.basename(name): (np.array(boxes.get(i, []), np.float64).reshape(-1, 4), w, h)
            for i, (name, w, h) in sizes.items()}
        self.min_size = min_size

    def boxes(self, source: str, width: int, height: int) -> np.ndarray:
        """Boxes (xywh, int32, at width x height) of the image ingested from ``source``."""
        entry = self.by_name.get(posixpath.basename(source.rsplit("::", 1)[-1]))
        if entry is None:
            return np.zeros((0, 4), np.int32)
        b, w, h = entry
        b = b * np.array([width / w, height / h, width / w, height / h])
        b = b[np.minimum(b[:, 2], b[:, 3]) >= self.min_size]
        return np.array([clip_box(x, width, height) for x in b], np.int32).reshape(-1, 4)


def local_crops(loss_weights: tuple[float, float, float]) -> tuple[int, ...]:
    """The patch crops a run trains on: the intra pair and / or the inter pair (weight > 0)."""
    _, w_intra, w_inter = loss_weights
    return (2, 3) * (w_intra > 0) + (4, 5) * (w_inter > 0)


class SampleBuilder:
    """Plans of the samples of an image shard set (``cfg.data``) with Stage 2's pairs (``cfg.pairs``).

    ``loss_weights`` (default ``orl.loss_weights``) say which crops a run trains on: Stage 1 is
    (1, 0, 0), the two global views only, with no pairs read.
    """

    def __init__(self, cfg: Config, loss_weights: tuple[float, float, float] | None = None):
        self.cfg = cfg
        self.images = ShardIndex(cfg.data)
        o = cfg.orl
        self.mined = o.patches == "mined"
        self.crops = (0, 1, *local_crops(loss_weights or o.loss_weights))
        self.failures = 0  # samples replaced because an image did not decode (this process)
        self.uses_neighbor = self.mined and 5 in self.crops
        needs_records = self.mined and (self.uses_neighbor or (o.boxes == "mined" and 2 in self.crops))
        if needs_records:
            cfg.require("pairs")
        self.pairs = open_pairs(cfg.pairs) if needs_records else None
        if self.pairs is not None:
            check_mined_from(cfg.pairs, self.pairs, self.images, cfg.data)
        self.knn_k, self.topn_frac = (_as_mined(cfg, mined_with(cfg.pairs)) if self.uses_neighbor
                                      else (0, 0.0))
        self.gt = (GroundTruthBoxes(o.gt_instances, cfg.mine.min_box_size)
                   if self.mined and o.boxes == "gt" and 2 in self.crops else None)
        self._init_labels(cfg)

    def _init_labels(self, cfg: Config) -> None:
        """The label store of a label-aware mode (checked: ConfigError naming label.source) and,
        for SCAN, the mined neighbours its view is drawn from."""
        lab = cfg.label
        self.labels = open_store(cfg.data, lab.source) if lab.mode != "none" else None
        self.roi_labels = lab.mode == "opera" and lab.roi_head and len(self.crops) > 2
        self.scan = lab.mode == "scan"
        self.scan_k = 0
        if self.scan:
            cfg.require("pairs")
            self.pairs = self.pairs if self.pairs is not None else open_pairs(cfg.pairs)
            self.scan_k = _as_mined(cfg, mined_with(cfg.pairs))[0]

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes if self.labels is not None else 0

    def __len__(self) -> int:
        return len(self.images)

    def size_of(self, key: int) -> tuple[int, int]:
        row = self.images.find(key)[1]
        return int(row["width"]), int(row["height"])

    def plan(self, epoch: int, position: int) -> SamplePlan:
        cfg, o = self.cfg, self.cfg.orl
        rng = np.random.default_rng(sample_seed(cfg.train.seed, epoch, position))
        row = self.images.position(position)[1]
        key, width, height = int(row["key"]), int(row["width"]), int(row["height"])
        boxes = np.zeros((6, 4), dtype=np.int32)
        for i in (0, 1):
            boxes[i] = random_resized_crop(rng, width, height, cfg.aug.crop_scale, cfg.aug.crop_ratio)
        u_neighbor, u_pair, u_box = rng.random(3)
        random_crops = [random_resized_crop(rng, width, height, o.random_scale, cfg.aug.crop_ratio)
                        for _ in range(4)]
        photo = draw_photometric(rng, cfg.aug)
        # (the box jitter below draws last: every other draw is the same in every mode)

        neighbor, has_pair, has_box = key, False, False
        if len(self.crops) == 2:
            pass  # image views only (Stage 1): no patch to plan
        elif not self.mined:
            boxes[2:6] = random_crops
        else:
            record = read_record(self.pairs, key) if self.pairs is not None else None
            pair = self._pair(record, u_neighbor, u_pair) if self.uses_neighbor else None
            if pair is not None:
                neighbor, box_x, box_n = pair
                boxes[4] = clip_box(box_x, width, height)
                boxes[5] = clip_box(box_n, *self.size_of(neighbor))
                has_pair = True
            else:
                boxes[4] = boxes[5] = whole_image(width, height)
            kept = self._kept_boxes(key, record, width, height)
            has_box = len(kept) > 0
            box = (clip_box(kept[_pick(u_box, len(kept))], width, height)
                   if has_box else whole_image(width, height))
            jitter = [jitter_box(rng, box, width, height, o.jitter_shift, o.jitter_area,
                                 o.jitter_aspect, o.jitter_min_iou, o.jitter_tries,
                                 o.jitter_outside)
                      for _ in range(2)]  # both drawn in every mode: the same draws follow
            boxes[2] = jitter[0] if o.jitter_both else box
            boxes[3] = jitter[1]
        plan = SamplePlan(key, neighbor, width, height, boxes, photo, has_pair, has_box)
        if self.labels is not None:
            self._label_plan(plan, rng)  # draws last: the six crops are those of mode none
        return plan

    def _label_plan(self, plan: SamplePlan, rng: np.random.Generator) -> None:
        cfg = self.cfg
        if self.roi_labels:
            plan.roi_labels = np.full(6, -1, np.int64)
            for c in self.crops[2:]:
                src = plan.neighbor if c == 5 else plan.key
                plan.roi_labels[c] = self.labels.box_labels(src, plan.boxes[c:c + 1],
                                                            cfg.label.box_iou)[0]
        if self.scan:
            plan.scan_neighbor = self._scan_neighbor(plan.key, rng.random())
            src = plan.scan_neighbor if plan.scan_neighbor >= 0 else plan.key
            plan.scan_box = random_resized_crop(rng, *self.size_of(src), cfg.aug.crop_scale,
                                                cfg.aug.crop_ratio)
            plan.scan_photo = draw_photometric(rng, cfg.aug, np.array([1]))

    def _scan_neighbor(self, key: int, u: float) -> int:
        """SCAN's label neighbour of ``key`` [reconstructed]: among its first K mined neighbours
        (in the data set), those that are label neighbours (label.jaccard), one drawn with
        probability softmax(cos / label.tau_w); -1 when there is none."""
        record = read_record(self.pairs, key)
        if record is None or not len(record.neighbors):
            return -1
        nbrs, sims = record.neighbors[:self.scan_k], record.neighbor_sims[:self.scan_k]
        ok = self.labels.same_label(np.array([key]), nbrs[None], self.cfg.label.jaccard)[0]
        ok &= np.array([self._has_image(int(n)) for n in nbrs], bool)
        if not ok.any():
            return -1
        w = neighbor_weights(sims[ok], self.cfg.label.tau_w)
        return int(nbrs[ok][_pick_weighted(u, w)])

    def targets(self, plan: SamplePlan) -> dict[str, np.ndarray]:
        """What a label-aware mode feeds the model besides pixels: ``tags`` and ``known``
        (float32 [C]), ``roi`` (int64 [6], the crops' box labels) and ``scan_valid`` (bool [1])
        where the mode has them."""
        tags, known = self.labels.targets(plan.key)
        out = {"tags": tags, "known": known}
        if plan.roi_labels is not None:
            out["roi"] = plan.roi_labels
        if self.scan:
            out["scan_valid"] = np.array([plan.scan_neighbor >= 0])
        return out

    def sample(self, epoch: int, position: int,
               load: Callable[[SamplePlan], T]) -> tuple[SamplePlan, T]:
        """The plan of sample (epoch, position) and ``load(plan)`` (its decoded pixels or checked
        bytes), under the one decode-failure policy of both stages and both loaders: a sample
        whose image does not decode is replaced by the next position (the same replacement in
        every run), logged and counted; MAX_CONSECUTIVE_FAILURES in a row stop the run."""
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            p = (position + attempt) % len(self)
            plan = self.plan(epoch, p)
            try:
                return plan, load(plan)
            except Exception as e:  # noqa: BLE001 - a bad image must not stop a long run
                self.failures += 1
                log.warning("image %s (sample %d of epoch %d) does not decode, replaced by the "
                            "next position (%d so far in this process): %s", plan.key, p, epoch,
                            self.failures, e)
        raise RuntimeError(f"{MAX_CONSECUTIVE_FAILURES} samples in a row from position {position} "
                           f"(epoch {epoch}) do not decode: {self.cfg.data} looks broken")

    def _kept_boxes(self, key: int, record: PairRecord | None, width: int,
                    height: int) -> np.ndarray:
        if self.gt is not None:
            return self.gt.boxes(self.images.meta(key).get("source", ""), width, height)
        return record.boxes if record is not None else np.zeros((0, 4), np.int32)

    def _pair(self, record: PairRecord | None, u_neighbor: float,
              u_pair: float) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(neighbour key, box in x, box in the neighbour): a uniform neighbour among the first K
        that have pairs (and are in the data set), then a uniform pair among its top
        max(1, int(N x boxes)) by score."""
        if record is None or len(record.pair_neighbor) == 0:
            return None
        k = min(self.knn_k, len(record.neighbors))
        slots = [s for s in range(k) if (record.pair_neighbor == s).any()
                 and self._has_image(int(record.neighbors[s]))]
        if not slots:
            return None
        slot = slots[_pick(u_neighbor, len(slots))]
        pairs = record.pairs_of(slot)
        pairs = pairs[np.argsort(-record.pair_score[pairs], kind="stable")]
        pairs = pairs[:max(1, int(self.topn_frac * len(record.boxes)))]
        j = pairs[_pick(u_pair, len(pairs))]
        return int(record.neighbors[slot]), record.pair_query_box[j], record.pair_neighbor_box[j]

    def _has_image(self, key: int) -> bool:
        try:
            self.images.find(key)
        except KeyError:
            return False
        return True


def _as_mined(cfg: Config, mined: dict) -> tuple[int, float]:
    """Stage 3's K and N: ``orl.knn_k`` / ``orl.topn_frac``, 0 meaning what the pairs were mined
    with; a value above that is a ConfigError (those neighbours and pairs were never mined)."""
    out = []
    for name in ("knn_k", "topn_frac"):
        asked, have = getattr(cfg.orl, name), mined[name]
        if asked > have:
            raise ConfigError(f"orl.{name}: {asked} is more than the pairs in {cfg.pairs} were "
                              f"mined with (mine.{name}={have}): mine again with a larger value, "
                              f"or set orl.{name} <= {have} (0: as mined)")
        out.append(asked or have)
    return int(out[0]), float(out[1])


def _pick_weighted(u: float, weights: np.ndarray) -> int:
    """An index drawn with probabilities ``weights`` (summing to 1) from a uniform draw u."""
    return min(int(np.searchsorted(np.cumsum(weights), u, side="right")), len(weights) - 1)


def _pick(u: float, n: int) -> int:
    """A uniform index in [0, n) from a uniform draw u in [0, 1)."""
    return min(int(u * n), n - 1)
