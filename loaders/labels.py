"""Labels as data: ``orl-fast labels SHARDS --from FILE`` and the label store it writes.

Sources (``--format auto`` tells them apart):

- ``imagefolder``: a directory with one folder per class (``ROOT/<class>/.../<image>``);
- ``coco``: a COCO instances file: image-level tags (every category the image has an object
  of) and box labels (the non-crowd boxes with their category);
- ``voc``: a VOC ``labels.csv``: ``id`` then one column per class, 1 present, 0 present only as
  difficult objects (the class's presence counts as unknown), -1 absent (an optional ``split``
  column is ignored);
- ``csv``: ``path,label[,label...]`` rows (a first row starting with ``path`` is a header; no
  label: an image known to have none of the classes).

Each labelled image is matched to its shard record by the path the ingest read it from (the
``source`` of the shards' per-image JSON; the archive member for a tar): a file's relative path
matches the source that ends with it (VOC ids: the source whose file name without extension is
the id), a CSV path may also be a shard key. A labelled image that matches no record, or more than
one, and a class outside the vocabulary are errors naming the line; images without a label stay
in the set, unlabelled.

The store (``SHARDS/labels.npz`` unless ``--out`` says otherwise) holds the vocabulary, the keys
of the labelled images in increasing order, their tags and unknown classes (CSR arrays), their
boxes (xywh in the pixels of the stored image, with a class each) and a JSON header naming the
source and the shards it was made for (their index digest).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from loaders.shards import INDEX_FILE, ShardIndex
from orl_fast.core import storage
from orl_fast.core.boxes import label_boxes
from orl_fast.core.config import ConfigError
from orl_fast.core.errors import InputError

STORE = "labels.npz"
FORMATS = ("auto", "imagefolder", "coco", "voc", "csv")
STORE_FORMAT = "orl-fast-labels/1"
VOC_VALUES = {"1": 1, "0": 0, "-1": -1}
# Popcount of every byte: Jaccard overlaps of bit-packed tag sets without numpy 2's bitwise_count.
_POPCOUNT = np.array([i.bit_count() for i in range(256)], np.int32)


class LabelError(InputError):
    """A label file that cannot be attached: the message names the file, the line and why."""


@dataclass
class Entry:
    """One labelled image as its file gives it, before matching."""

    name: str                      # relative path, VOC id or shard key, as written
    where: str                     # "FILE line N" / "FILE: image id N", for errors
    tags: set[int] = field(default_factory=set)
    unknown: set[int] = field(default_factory=set)
    boxes: list[tuple[float, float, float, float, int]] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) the boxes are in (COCO)


# ----------------------------------------------------------------------------- sources


def detect_format(path: str) -> str:
    """imagefolder for a directory, coco for .json, voc for a CSV whose header starts with
    ``id``, csv for other CSVs."""
    if storage.isdir(path):
        return "imagefolder"
    if path.lower().endswith(".json"):
        return "coco"
    if path.lower().endswith((".csv", ".txt")):
        first = next(csv.reader(io.StringIO(storage.read_text(path))), [""])
        return "voc" if first and first[0].strip().lower() == "id" else "csv"
    raise LabelError(f"{path}: cannot tell the label format (a directory, .json or .csv); "
                     "pass --format")


def read_source(path: str, fmt: str = "auto",
                classes: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[Entry], str]:
    """(vocabulary, entries, how entries match: "path" or "stem") of a label file.

    ``classes`` fixes the vocabulary of ``imagefolder`` and ``csv`` (default: the sorted names
    found); a label outside it is an error."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "imagefolder":
        return (*_imagefolder(path, classes), "path")
    if fmt == "coco":
        return (*_coco(path), "path")
    if fmt == "voc":
        return (*_voc(path), "stem")
    if fmt == "csv":
        return (*_csv(path, classes), "path")
    raise LabelError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")


def _vocabulary(found: Iterable[str], classes: tuple[str, ...] | None) -> dict[str, int]:
    return {c: i for i, c in enumerate(classes if classes is not None else sorted(set(found)))}


def _class_of(vocab: dict[str, int], name: str, where: str) -> int:
    if name not in vocab:
        raise LabelError(f"{where}: class {name!r} is not in the vocabulary "
                         f"({', '.join(list(vocab)[:8])}{', ...' if len(vocab) > 8 else ''})")
    return vocab[name]


def _imagefolder(root: str, classes):
    fs, base = storage.url_to_fs(root)
    files = sorted(p for p in fs.find(base) if fs.isfile(p))
    rel = [posixpath.relpath(p, base) for p in files]
    rel = [r for r in rel if "/" in r and not posixpath.basename(r).startswith(".")]
    vocab = _vocabulary((r.split("/", 1)[0] for r in rel), classes)
    entries = [Entry(r, f"{root}: {r}", {_class_of(vocab, r.split("/", 1)[0], f"{root}: {r}")})
               for r in rel]
    return tuple(vocab), entries


def _coco(path: str):
    coco = storage.read_json(path)
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(cats)}
    images = {}
    for im in coco.get("images", []):
        images[im["id"]] = Entry(im["file_name"], f"{path}: image id {im['id']}",
                                 size=(int(im["width"]), int(im["height"])))
    for a in coco.get("annotations", []):
        where = f"{path}: annotation id {a.get('id')}"
        entry = images.get(a["image_id"])
        if entry is None:
            raise LabelError(f"{where}: image id {a['image_id']} is not in the images")
        if a["category_id"] not in column:
            raise LabelError(f"{where}: category id {a['category_id']} is not in the categories")
        c = column[a["category_id"]]
        entry.tags.add(c)
        if not a.get("iscrowd", 0):
            entry.boxes.append((*map(float, a["bbox"]), c))
    return tuple(c["name"] for c in cats), list(images.values())


def _rows(path: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(storage.read_text(path)))
    return [(n, [c.strip() for c in row]) for n, row in enumerate(reader, 1)
            if any(c.strip() for c in row)]


def _voc(path: str):
    rows = _rows(path)
    if not rows or rows[0][1][0].lower() != "id":
        raise LabelError(f"{path} line 1: a VOC labels.csv starts with id,<class>,...")
    header = rows[0][1]
    columns = [i for i, c in enumerate(header) if i > 0 and c.lower() != "split"]
    classes = tuple(header[i] for i in columns)
    entries = []
    for n, row in rows[1:]:
        where = f"{path} line {n}"
        if len(row) != len(header):
            raise LabelError(f"{where}: {len(row)} columns, the header has {len(header)}")
        e = Entry(row[0], where)
        for c, i in enumerate(columns):
            if row[i] not in VOC_VALUES:
                raise LabelError(f"{where}: {header[i]}={row[i]!r}, expected 1, 0 or -1")
            v = VOC_VALUES[row[i]]
            (e.tags if v == 1 else e.unknown if v == 0 else set()).add(c)
        entries.append(e)
    return classes, entries


def _csv(path: str, classes):
    rows = _rows(path)
    if rows and rows[0][1][0].lower() == "path":
        rows = rows[1:]
    vocab = _vocabulary((c for _, row in rows for c in row[1:] if c), classes)
    entries = []
    for n, row in rows:
        where = f"{path} line {n}"
        entries.append(Entry(row[0], where, {_class_of(vocab, c, where) for c in row[1:] if c}))
    return tuple(vocab), entries


# ----------------------------------------------------------------------------- matching


def _norm(path: str) -> str:
    path = path.rsplit("::", 1)[-1].replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


class SourceMatcher:
    """Shard records by the path they were ingested from (file name index; suffix match)."""

    def __init__(self, images: ShardIndex):
        self.by_name: dict[str, list[tuple[int, str]]] = {}
        self.by_stem: dict[str, list[tuple[int, str]]] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        for pos in range(len(images)):
            row = images.position(pos)[1]
            key = int(row["key"])
            source = _norm(images.meta(key).get("source", ""))
            name = posixpath.basename(source)
            self.by_name.setdefault(name, []).append((key, source))
            self.by_stem.setdefault(posixpath.splitext(name)[0], []).append((key, source))
            self.sizes[key] = (int(row["width"]), int(row["height"]))

    def match(self, entry: Entry, how: str) -> int:
        name = _norm(entry.name)
        if how == "stem":
            found = [k for k, _ in self.by_stem.get(name, [])]
        else:
            found = [k for k, src in self.by_name.get(posixpath.basename(name), [])
                     if src == name or src.endswith("/" + name)]
            if not found and name.isdigit() and int(name) in self.sizes:
                found = [int(name)]  # a shard key
        if len(found) != 1:
            what = ("matches no image of the shards" if not found else
                    f"matches {len(found)} images of the shards ({', '.join(map(str, found[:3]))})")
            raise LabelError(f"{entry.where}: {entry.name!r} {what}")
        return found[0]


# ----------------------------------------------------------------------------- the store


@dataclass
class LabelStore:
    """The labels of a shard set, loaded (picklable: the loaders' workers get it)."""

    classes: tuple[str, ...]
    keys: np.ndarray           # int64 [M], increasing: the labelled images
    tag_offsets: np.ndarray    # int64 [M + 1] into tag_classes
    tag_classes: np.ndarray    # int32
    unknown_offsets: np.ndarray
    unknown_classes: np.ndarray
    box_offsets: np.ndarray    # int64 [M + 1] into boxes
    boxes: np.ndarray          # float32 [B, 4] xywh, stored-image pixels
    box_classes: np.ndarray    # int32 [B]
    header: dict

    def __post_init__(self):
        c = len(self.classes)
        bits = np.zeros((len(self.keys), max(c, 1)), bool)
        rows = np.repeat(np.arange(len(self.keys)), np.diff(self.tag_offsets))
        bits[rows, self.tag_classes] = True
        self._bits = np.packbits(bits, axis=1)  # [M, ceil(C / 8)] uint8

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def row(self, key: int) -> int:
        """The store row of ``key``, -1 when the image is unlabelled."""
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and self.keys[i] == key else -1

    def rows(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        i = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = (len(self.keys) > 0) & (self.keys[i] == keys) if len(self.keys) else np.zeros(
            keys.shape, bool)
        return np.where(found, i, -1)

    def tags(self, key: int) -> np.ndarray:
        r = self.row(key)
        return (self.tag_classes[self.tag_offsets[r]:self.tag_offsets[r + 1]] if r >= 0
                else np.zeros(0, np.int32))

    def targets(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(tags, known), float32 [C] each: 1 where a class is present / its presence is known
        (an unlabelled image: all 0)."""
        c = self.num_classes
        tags, known = np.zeros(c, np.float32), np.zeros(c, np.float32)
        r = self.row(key)
        if r >= 0:
            tags[self.tag_classes[self.tag_offsets[r]:self.tag_offsets[r + 1]]] = 1
            known[:] = 1
            known[self.unknown_classes[self.unknown_offsets[r]:self.unknown_offsets[r + 1]]] = 0
        return tags, known

    def boxes_of(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [n, 4] xywh, classes [n]) of ``key`` (none when it has no box labels)."""
        r = self.row(key)
        if r < 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
        s = slice(self.box_offsets[r], self.box_offsets[r + 1])
        return self.boxes[s], self.box_classes[s]

    def box_labels(self, key: int, boxes: np.ndarray, min_iou: float) -> np.ndarray:
        """int64 [len(boxes)]: the class of the labelled box each box overlaps most with IoU >=
        ``min_iou``, else -1."""
        return label_boxes(boxes, *self.boxes_of(key), min_iou)

    def same_label(self, query_keys: np.ndarray, candidate_keys: np.ndarray,
                   jaccard: float) -> np.ndarray:
        """bool [n, k]: candidate j of query i is a label neighbour of it: both have tags and
        |tags_i & tags_j| / |tags_i | tags_j| >= ``jaccard`` (single-label data: the same
        class). A candidate key < 0 (no neighbour) never is."""
        q = self.rows(np.asarray(query_keys).reshape(-1))
        cand = np.asarray(candidate_keys)
        c = self.rows(np.where(cand >= 0, cand, 0).reshape(-1)).reshape(cand.shape)
        c = np.where(cand >= 0, c, -1)
        a = self._bits[np.maximum(q, 0)][:, None, :]
        b = self._bits[np.maximum(c, 0)]
        inter = _POPCOUNT[a & b].sum(-1)
        union = _POPCOUNT[a | b].sum(-1)
        ok = (union > 0) & (inter >= jaccard * union - 1e-9) & (inter > 0)
        return ok & (q >= 0)[:, None] & (c >= 0)

    @staticmethod
    def read(path: str) -> LabelStore:
        with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        header = json.loads(str(a.pop("header")))
        return LabelStore(classes=tuple(header["classes"]), header=header, **a)


@functools.lru_cache(maxsize=2)
def cached_store(path: str, sha256: str) -> LabelStore:
    """:meth:`LabelStore.read`, once per process for a given file content (the mining units)."""
    return LabelStore.read(path)


def store_path(data: str, source: str = "") -> str:
    """The label store of ``label.source`` (a file, or a directory holding labels.npz; "": the
    one beside the shards ``data``)."""
    if not source:
        return storage.join(data, STORE)
    return storage.join(source, STORE) if storage.isdir(source) else source


def index_digest(data: str) -> str:
    return hashlib.sha256(storage.read_bytes(storage.join(data, INDEX_FILE))).hexdigest()


def open_store(data: str, source: str = "", field_name: str = "label.source") -> LabelStore:
    """The label store for the shards ``data``, checked: it exists, was made for these shards and
    labels at least one image (ConfigError naming ``field_name`` otherwise)."""
    path = store_path(data, source)
    if not storage.exists(path):
        raise ConfigError(f"{field_name}: no label store at {path} (write one with "
                          f"`orl-fast labels {data} --from FILE`, or set {field_name}=PATH)")
    store = LabelStore.read(path)
    if store.header.get("data_index_sha256") != index_digest(data):
        raise ConfigError(f"{field_name}: {path} was made for other shards "
                          f"({store.header.get('data')}), not {data}: run orl-fast labels again")
    if len(store.keys) == 0:
        raise ConfigError(f"{field_name}: {path} labels no image")
    return store


def attach(data: str, label_file: str, fmt: str = "auto", out: str = "",
           classes: tuple[str, ...] | None = None) -> dict:
    """Match the labels of ``label_file`` to the shards ``data`` and write the store (atomically)
    to ``out`` (default: labels.npz in ``data``); returns its header."""
    if not storage.exists(label_file):
        raise LabelError(f"--from {label_file}: no such file or directory")
    if not storage.exists(storage.join(data, INDEX_FILE)):
        raise LabelError(f"{data}: not image shards (no {INDEX_FILE}; run orl-fast ingest first)")
    vocab, entries, how = read_source(label_file, fmt, classes)
    images = ShardIndex(data)
    matcher = SourceMatcher(images)
    by_key: dict[int, Entry] = {}
    for e in entries:
        key = matcher.match(e, how)
        if key in by_key:
            raise LabelError(f"{e.where}: {e.name!r} is the image of {by_key[key].where} too "
                             f"(key {key})")
        by_key[key] = e
    keys = np.array(sorted(by_key), np.int64)
    tags, unknown, boxes, box_classes = [], [], [], []
    for key in keys:
        e = by_key[int(key)]
        tags.append(sorted(e.tags))
        unknown.append(sorted(e.unknown - e.tags))
        b = np.array([x[:4] for x in e.boxes], np.float64).reshape(-1, 4)
        if len(b) and e.size is not None:
            w, h = matcher.sizes[int(key)]
            b = b * np.array([w / e.size[0], h / e.size[1]] * 2)
        boxes.append(b)
        box_classes.append([x[4] for x in e.boxes])
    header = {
        "format": STORE_FORMAT, "source": label_file, "source_format": fmt if fmt != "auto"
        else detect_format(label_file), "classes": list(vocab), "data": data,
        "data_index_sha256": index_digest(data), "images": len(images), "labelled": len(keys),
        "with_tags": int(sum(bool(t) for t in tags)), "tags": int(sum(map(len, tags))),
        "boxes": int(sum(map(len, box_classes))),
        "multi_label": bool(any(len(t) > 1 for t in tags)),
    }
    buf = io.BytesIO()
    np.savez(buf, header=np.array(json.dumps(header)), keys=keys,
             **_csr("tag", tags), **_csr("unknown", unknown),
             box_offsets=np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64),
             boxes=(np.concatenate(boxes) if boxes else np.zeros((0, 4))).astype(np.float32),
             box_classes=np.array([c for cs in box_classes for c in cs], np.int32))
    target = out or storage.join(data, STORE)
    storage.atomic_write(storage.join(target, STORE) if storage.isdir(target) else target,
                         buf.getvalue())
    return header


def _csr(name: str, rows: list[list[int]]) -> dict[str, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return {f"{name}_offsets": offsets,
            f"{name}_classes": np.array([c for r in rows for c in r], np.int32)}


def gate_neighbors(store: LabelStore, query_keys: np.ndarray, neighbors: np.ndarray,
                   sims: np.ndarray, k: int, jaccard: float) -> tuple[np.ndarray, np.ndarray]:
    """SCAN's label gate on kNN candidates [reconstructed]: per query with tags, the first
    ``k`` candidates that are its label neighbours (:meth:`LabelStore.same_label`), padded with
    key -1 / similarity 0; a query without tags keeps its first ``k`` candidates."""
    query_keys = np.asarray(query_keys, np.int64)
    ok = store.same_label(query_keys, neighbors, jaccard)
    labelled = np.array([len(store.tags(int(q))) > 0 for q in query_keys], bool)
    keep = np.where(labelled[:, None], ok, neighbors >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    n_keep = np.take_along_axis(keep, order, 1)
    out_n = np.where(n_keep, np.take_along_axis(neighbors, order, 1), -1)
    out_s = np.where(n_keep, np.take_along_axis(sims, order, 1), 0).astype(sims.dtype)
    if out_n.shape[1] < k:
        pad = k - out_n.shape[1]
        out_n = np.pad(out_n, ((0, 0), (0, pad)), constant_values=-1)
        out_s = np.pad(out_s, ((0, 0), (0, pad)))
    return out_n, out_s


def neighbor_weights(sims: np.ndarray, tau: float) -> np.ndarray:
    """softmax(sims / tau) [reconstructed: SCAN's similarity-based weights]."""
    s = np.asarray(sims, np.float64) / tau
    w = np.exp(s - s.max()) if len(s) else s
    return w / w.sum() if len(s) else w


def describe(header: dict) -> str:
    """One line about a store, for the command line."""
    return (f"{header['labelled']} of {header['images']} images labelled "
            f"({header['with_tags']} with tags, {header['tags']} tags, {header['boxes']} boxes), "
            f"{len(header['classes'])} classes, "
            f"{'multi' if header['multi_label'] else 'single'}-label, from "
            f"{os.path.basename(header['source'].rstrip('/'))} ({header['source_format']})")
