"""Interop with the official ORL Stage 2 files (Jiahao000/ORL), so runs can be compared.

Official layouts (positions index ``images.file_name``; boxes xywh in original pixels)::

    knn json            {"info": {"knn_image_num": K},
                         "images": {"file_name": [...], "id": [...]},
                         "pseudo_annotations": {"image_id": [...], "knn_image_id": N x K}}
    selective search    {"bbox": N x B x 4}            (raw proposals in the official pipeline)
    correspondence      {"info": {"bbox_min_size", "bbox_max_aspect_ratio", "bbox_max_iou",
                                  "intra_bbox_num", "knn_image_num", "knn_bbox_pair_ratio"},
                         "images": {...},
                         "pseudo_annotations": {"image_id", "bbox": N x B x 4 (kept boxes),
                                                "knn_image_id": N x K,
                                                "knn_bbox_pair": N x K x k x 8}}

Exports add what the official files lack as extra keys its readers ignore:
``knn_image_sim`` (N x K) in both knn and correspondence files, ``knn_bbox_pair_score``
(N x K x k). ``file_name`` is each image's ingest source relative to the sources' common folder
(the official loaders join it to a root); ``id`` is the orl-fast key. On import, file names are
matched exactly, else by unique base name.

``orl-fast mine export-official --pairs MINED --out DIR [--data SHARDS]`` and ``orl-fast mine
import-official CORRESPONDENCE.json --data SHARDS --out MINED [--knn KNN.json]`` (the latter
writes pair shards Stage 3 reads).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from loaders.pairs import PAIRS_DIR, PairRecord, write_pair_shards
from loaders.shards import ShardIndex
from mining.manifest import MANIFEST, data_of, iter_records, shard_id
from orl_fast.core import storage
from orl_fast.core.boxes import filter_boxes
from orl_fast.core.config import from_dict
from orl_fast.core.defaults import MineConfig

KNN_FILE = "knn_instance.json"
SS_FILE = "selective_search_proposal.json"
CORRESPONDENCE_FILE = "correspondence.json"


# ----------------------------------------------------------------------------- names


def source_names(data: str) -> dict[int, str]:
    """key -> ingest source relative to the common folder of all sources (official file_name)."""
    index = ShardIndex(data)
    sources = {}
    for sid in range(len(index.shard_names)):
        for row in index.shard_rows(sid):
            sources[int(row["key"])] = index.meta(int(row["key"]))["source"]
    index.close()
    paths = list(sources.values())
    root = posixpath.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
    if root in paths:  # a single image, or one source is a prefix of all
        root = posixpath.dirname(root)
    return {k: posixpath.relpath(p, root) if root else p for k, p in sources.items()}


def keys_for(file_names: list[str], data: str) -> list[int]:
    """Keys of ``data`` for official file names (exact relative name, else unique base name)."""
    names = source_names(data)
    exact = {n: k for k, n in names.items()}
    base: dict[str, list[int]] = {}
    for k, n in names.items():
        base.setdefault(posixpath.basename(n), []).append(k)
    keys = []
    for fn in file_names:
        if fn in exact:
            keys.append(exact[fn])
        elif len(base.get(posixpath.basename(fn), [])) == 1:
            keys.append(base[posixpath.basename(fn)][0])
        else:
            raise KeyError(f"official image {fn!r} is not (uniquely) in {data}")
    return keys


# ----------------------------------------------------------------------------- export


def _write_json(url: str, tree: dict) -> None:
    """Write a JSON object whose leaves may be callables returning iterables (streamed lists)."""
    def emit(f, node):
        if isinstance(node, dict):
            f.write("{")
            for i, (k, v) in enumerate(node.items()):
                f.write(("," if i else "") + json.dumps(k) + ":")
                emit(f, v)
            f.write("}")
        elif callable(node):
            f.write("[")
            for i, item in enumerate(node()):
                f.write(("," if i else "") + json.dumps(item, separators=(",", ":")))
            f.write("]")
        else:
            f.write(json.dumps(node, separators=(",", ":")))

    with storage.atomic_local_file(url) as tmp, open(tmp, "w") as f:
        emit(f, tree)


def _column(mined: str, fn: Callable[[PairRecord], object]) -> Callable[[], Iterable]:
    return lambda: (fn(r) for r in iter_records(mined))


def _slots(r: PairRecord, fn: Callable[[np.ndarray], list]) -> list:
    return [fn(r.pairs_of(k)) for k in range(len(r.neighbors))]


def export_official(mined: str, out_dir: str, data: str | None = None) -> dict[str, str]:
    """Write the knn, selective-search and correspondence JSON files of a mined directory."""
    data = data or data_of(mined)
    names = source_names(data)
    keys = np.array([r.key for r in iter_records(mined)], np.int64)  # sorted: shard order
    position = {int(k): i for i, k in enumerate(keys)}
    mine = from_dict(storage.read_json(storage.join(mined, MANIFEST))["config"]).mine
    k_max = max((len(r.neighbors) for r in iter_records(mined)), default=0)
    images = {"file_name": [names[int(k)] for k in keys], "id": keys.tolist()}
    # -1: a neighbour without a record (it decoded for the embedding, not for proposals).
    knn_ids = _column(mined, lambda r: [position.get(int(n), -1) for n in r.neighbors])
    knn_sims = _column(mined, lambda r: r.neighbor_sims.tolist())
    boxes = _column(mined, lambda r: r.boxes.tolist())
    storage.makedirs(out_dir)
    paths = {"knn": storage.join(out_dir, KNN_FILE), "ss": storage.join(out_dir, SS_FILE),
             "correspondence": storage.join(out_dir, CORRESPONDENCE_FILE)}
    _write_json(paths["knn"], {
        "info": {"knn_image_num": k_max}, "images": images,
        "pseudo_annotations": {"image_id": keys.tolist(), "knn_image_id": knn_ids,
                               "knn_image_sim": knn_sims}})
    _write_json(paths["ss"], {"bbox": boxes})
    _write_json(paths["correspondence"], {
        "info": {"bbox_min_size": mine.min_box_size,
                 "bbox_max_aspect_ratio": mine.aspect_range[1], "bbox_max_iou": mine.max_iou,
                 "intra_bbox_num": mine.max_boxes, "knn_image_num": k_max,
                 "knn_bbox_pair_ratio": mine.topn_frac},
        "images": images,
        "pseudo_annotations": {
            "image_id": keys.tolist(), "bbox": boxes, "knn_image_id": knn_ids,
            "knn_image_sim": knn_sims,
            "knn_bbox_pair": _column(mined, lambda r: _slots(r, lambda p: np.concatenate(
                [r.pair_query_box[p], r.pair_neighbor_box[p]], 1).tolist())),
            "knn_bbox_pair_score": _column(
                mined, lambda r: _slots(r, lambda p: r.pair_score[p].tolist())),
        }})
    return paths


# ----------------------------------------------------------------------------- import


def read_knn_json(path: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(file names, neighbour positions [N, K], similarities [N, K] or None)."""
    d = storage.read_json(path)
    sims = d["pseudo_annotations"].get("knn_image_sim")
    return (d["images"]["file_name"], np.array(d["pseudo_annotations"]["knn_image_id"], np.int64),
            None if sims is None else np.array(sims, np.float32))


def read_ss_json(path: str, mine: MineConfig | None = None) -> list[np.ndarray]:
    """Per-image boxes [B, 4] int32 xywh; with ``mine``, filtered as this pipeline does (the
    official file holds raw proposals)."""
    out = []
    for boxes in storage.read_json(path)["bbox"]:
        b = np.array(boxes, np.int32).reshape(-1, 4)
        if mine is not None:
            b = filter_boxes(b, mine.min_box_size, mine.aspect_range, mine.max_iou,
                             mine.max_boxes)
        out.append(b)
    return out


def records_from_official(corr: dict, keys: list[int], sizes: dict[int, tuple[int, int]],
                          sims: np.ndarray | None = None) -> Iterator[PairRecord]:
    """PairRecords of an official correspondence dict (positions already mapped to ``keys``)."""
    pa = corr["pseudo_annotations"]
    sims = pa.get("knn_image_sim", sims)
    scores = pa.get("knn_bbox_pair_score")
    for i, key in enumerate(keys):
        neighbors = [keys[p] for p in pa["knn_image_id"][i]]
        slot, qbox, nbox, score = [], [], [], []
        for k, pairs in enumerate(pa["knn_bbox_pair"][i]):
            p = np.array(pairs, np.int32).reshape(-1, 8)
            slot += [k] * len(p)
            qbox.append(p[:, :4])
            nbox.append(p[:, 4:])
            score += scores[i][k] if scores is not None else [np.nan] * len(p)
        yield PairRecord(
            key, *sizes[key], boxes=np.array(pa["bbox"][i], np.int32).reshape(-1, 4),
            neighbors=neighbors,
            neighbor_sims=(np.full(len(neighbors), np.nan) if sims is None else sims[i]),
            pair_neighbor=slot, pair_query_box=np.concatenate(qbox) if qbox else [],
            pair_neighbor_box=np.concatenate(nbox) if nbox else [], pair_score=score)


def import_official(corr_json: str, data: str, out: str, knn_json: str | None = None) -> dict:
    """Pair shards (``OUT/pairs``, Stage 3's input) from an official correspondence file.

    Records are grouped by the input shard of their key (pairs-{j} for shard-{j}). Pair scores
    and neighbour similarities are NaN unless the files carry this package's extra keys.
    """
    corr = storage.read_json(corr_json)
    keys = keys_for(corr["images"]["file_name"], data)
    sims = read_knn_json(knn_json)[2] if knn_json else None
    index = ShardIndex(data)
    sizes = {}
    for sid in range(len(index.shard_names)):
        for row in index.shard_rows(sid):
            sizes[int(row["key"])] = (int(row["width"]), int(row["height"]))
    by_shard: dict[int, list[PairRecord]] = {}
    for rec in records_from_official(corr, keys, sizes, sims):
        sid = shard_id(index.shard_names[index.find(rec.key)[0]])
        by_shard.setdefault(sid, []).append(rec)
    info = corr.get("info", {})
    k = int(info.get("knn_image_num", max((len(n) for n in corr["pseudo_annotations"]
                                           ["knn_image_id"]), default=0)))
    write_pair_shards(out, ((sid, sorted(by_shard[sid], key=lambda r: r.key))
                            for sid in sorted(by_shard)),
                      knn_k=k, topn_frac=float(info.get("knn_bbox_pair_ratio", 1.0)))
    return storage.read_json(storage.join(out, PAIRS_DIR, "index.json"))
