"""Pair shards, the data format between Stage 2 and Stage 3: per image its kept boxes,
neighbours and RoI pairs.

One record per query image, stored as ``{key}.pairs`` members of WebDataset tars
(``MINED/pairs/pairs-000000.tar`` ...) with the same ``index.json`` + ``.idx.npy`` layout as the
image shards, so :class:`loaders.shards.ShardIndex` fetches a record by key with one byte-range
read. Boxes are xywh in original image pixels. ``pairs/index.json`` also records what the pairs
were mined with (``"mined": {"knn_k": K, "topn_frac": N}``): the largest K and N Stage 3 may use.
Every writer (the mining pairs units, the import of official ORL files, test data) writes through
:func:`write_pair_shards`.

Binary layout of a record (little-endian)::

    b"ORLP" | version u8 | header length u32 | header JSON | array bytes (C order, in header order)

The header holds ``key``, ``width``, ``height`` and, per array, its dtype and shape. Arrays:

    boxes              int32   [M, 4]  kept selective-search boxes, objectness order (intra-RoI)
    neighbors          int64   [K]     neighbour image keys, most similar first
    neighbor_sims      float32 [K]     cosine similarity of the image embeddings
    pair_neighbor      int16   [P]     which neighbour (index into ``neighbors``) a pair belongs to
    pair_query_box     int32   [P, 4]  box in the query image
    pair_neighbor_box  int32   [P, 4]  box in the neighbour image
    pair_score         float32 [P]     RoI cosine similarity
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from loaders.shards import (
    INDEX_FILE,
    ShardIndex,
    format_key,
    idx_name,
    shard_summary,
    write_idx,
    write_index,
    write_shard,
)
from orl_fast.core import storage
from orl_fast.core.config import ConfigError
from orl_fast.core.errors import InputError

MAGIC = b"ORLP"
VERSION = 1
EXT = "pairs"
PAIRS_DIR = "pairs"

_ARRAYS = {  # name -> (dtype, trailing shape)
    "boxes": ("<i4", (4,)),
    "neighbors": ("<i8", ()),
    "neighbor_sims": ("<f4", ()),
    "pair_neighbor": ("<i2", ()),
    "pair_query_box": ("<i4", (4,)),
    "pair_neighbor_box": ("<i4", (4,)),
    "pair_score": ("<f4", ()),
}


def _empty(name: str) -> np.ndarray:
    dtype, tail = _ARRAYS[name]
    return np.zeros((0, *tail), dtype=dtype)


@dataclass
class PairRecord:
    key: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: _empty("boxes"))
    neighbors: np.ndarray = field(default_factory=lambda: _empty("neighbors"))
    neighbor_sims: np.ndarray = field(default_factory=lambda: _empty("neighbor_sims"))
    pair_neighbor: np.ndarray = field(default_factory=lambda: _empty("pair_neighbor"))
    pair_query_box: np.ndarray = field(default_factory=lambda: _empty("pair_query_box"))
    pair_neighbor_box: np.ndarray = field(default_factory=lambda: _empty("pair_neighbor_box"))
    pair_score: np.ndarray = field(default_factory=lambda: _empty("pair_score"))

    def __post_init__(self) -> None:
        for name, (dtype, tail) in _ARRAYS.items():
            arr = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            if arr.size == 0:
                arr = arr.reshape(0, *tail)
            if arr.shape[1:] != tail:
                raise ValueError(f"{name}: expected shape [N, {', '.join(map(str, tail))}], "
                                 f"got {arr.shape}")
            setattr(self, name, arr)
        n = len(self.pair_neighbor)
        if not (len(self.pair_query_box) == len(self.pair_neighbor_box) == len(self.pair_score)
                == n):
            raise ValueError("pair arrays must have the same length")
        if len(self.neighbor_sims) != len(self.neighbors):
            raise ValueError("neighbors and neighbor_sims must have the same length")
        if n and (self.pair_neighbor.min() < 0 or self.pair_neighbor.max() >= len(self.neighbors)):
            raise ValueError("pair_neighbor indexes outside neighbors")

    def pairs_of(self, slot: int) -> np.ndarray:
        """Indices of the pairs mined between this image and ``neighbors[slot]``."""
        return np.flatnonzero(self.pair_neighbor == slot)

    def encode(self) -> bytes:
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        header = json.dumps({
            "key": int(self.key), "width": int(self.width), "height": int(self.height),
            "arrays": {n: list(a.shape) for n, a in arrays.items()},
        }, separators=(",", ":")).encode()
        return b"".join([MAGIC, struct.pack("<BI", VERSION, len(header)), header,
                         *(a.tobytes() for a in arrays.values())])

    @classmethod
    def decode(cls, data: bytes) -> PairRecord:
        if data[:4] != MAGIC:
            raise ValueError("not a pair record (bad magic)")
        version, hlen = struct.unpack_from("<BI", data, 4)
        if version != VERSION:
            raise ValueError(f"unsupported pair record version {version}")
        start = 4 + 5
        header = json.loads(data[start:start + hlen])
        offset = start + hlen
        arrays = {}
        for name, shape in header["arrays"].items():
            dtype = np.dtype(_ARRAYS[name][0])
            count = int(np.prod(shape))
            arrays[name] = np.frombuffer(data, dtype, count, offset).reshape(shape)
            offset += count * dtype.itemsize
        return cls(header["key"], header["width"], header["height"], **arrays)


def pair_shard_name(shard_id: int) -> str:
    return f"pairs-{shard_id:06d}.tar"


def write_pair_shards(mined: str, shards: Iterable[tuple[int, Iterable[PairRecord]]],
                      knn_k: int | None = None, topn_frac: float | None = None) -> list[dict]:
    """Write ``MINED/pairs/pairs-{id}.tar`` + ``.idx.npy`` for each (shard id, records in
    increasing key order); returns their ``index.json`` entries. With ``knn_k`` and
    ``topn_frac`` (what the pairs were mined with) the shards are the whole set: ``index.json``
    is written too (else see :func:`write_pairs_index`)."""
    root = storage.join(mined, PAIRS_DIR)
    storage.makedirs(root)
    entries = []
    for shard_id, records in shards:
        name = pair_shard_name(shard_id)
        rows = write_shard(storage.join(root, name),
                           ((format_key(r.key), r.encode(), None) for r in records), ext=EXT)
        write_idx(storage.join(root, idx_name(name)), rows)
        entries.append(shard_summary(name, rows))
    if knn_k is not None and topn_frac is not None:
        write_pairs_index(mined, entries, knn_k, topn_frac)
    return entries


def write_pairs_index(mined: str, entries: list[dict], knn_k: int, topn_frac: float) -> dict:
    """``MINED/pairs/index.json`` of pair shards (entries in shard order) mined with K, N."""
    return write_index(storage.join(mined, PAIRS_DIR), entries,
                       mined={"knn_k": int(knn_k), "topn_frac": float(topn_frac)})


def mined_with(mined: str) -> dict:
    """``{"knn_k", "topn_frac"}`` the pairs of ``mined`` were mined with: from pairs/index.json,
    else (an output of an earlier version) from the mining run's manifest.json."""
    info = storage.read_json(storage.join(mined, PAIRS_DIR, INDEX_FILE)).get("mined")
    if info is None:
        manifest = storage.join(mined, "manifest.json")  # mining.manifest.MANIFEST
        if not storage.exists(manifest):
            raise ConfigError(f"pairs: {mined} does not say what K and N it was mined with "
                              "(no pairs/index.json 'mined' entry, no manifest.json)")
        info = storage.read_json(manifest)["config"]["mine"]
    return {"knn_k": int(info["knn_k"]), "topn_frac": float(info["topn_frac"])}


def check_mined_from(mined: str, pairs: ShardIndex, images: ShardIndex, data: str) -> None:
    """InputError unless the pairs of ``mined`` were mined from the image shards ``images``
    (opened from ``data``): the mining manifest's digest of the shards' index.json, else (pairs
    imported from the official files) every pair shard's first key present in ``images``."""
    manifest = storage.join(mined, "manifest.json")  # mining.manifest.MANIFEST
    if storage.exists(manifest):
        inputs = storage.read_json(manifest).get("inputs", {})
        digest = inputs.get("data_index_sha256")
        if digest and digest != images.digest:
            raise InputError(f"pairs: {mined} was mined from other shards ({inputs.get('data')}, "
                             f"index.json sha256 {digest[:12]}), not from data={data} "
                             f"({images.digest[:12]}): mine these shards, or train on those")
        return
    for shard_id, key in enumerate(pairs.first_keys):
        try:
            images.find(key)
        except KeyError:
            raise InputError(f"pairs: {mined}: {pairs.shard_names[shard_id]} holds image key "
                             f"{key}, which data={data} lacks: pairs of other shards") from None


def open_pairs(mined: str) -> ShardIndex:
    """Random access to the records of a Stage 2 output directory (``MINED/pairs``)."""
    return ShardIndex(storage.join(mined, PAIRS_DIR), field="pairs",
                      what="the pair shards of `orl-fast mine`")


def read_record(index: ShardIndex, key: int | str) -> PairRecord | None:
    """The record of ``key``; None when the image has none (Stage 3 then uses the whole image)."""
    try:
        return PairRecord.decode(index.data(key))
    except KeyError:
        return None
