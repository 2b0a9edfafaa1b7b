"""WebDataset image shards and the key index.

Layout of an ingested dataset directory (local path or fsspec URL)::

    shard-000000.tar        WebDataset tar: {key}.jpg (JPEG bytes) + {key}.json (metadata)
    shard-000000.idx.npy    one row per image: key, byte offset and size of the .jpg and .json
                            members inside the tar, width, height (numpy structured array)
    ...
    index.json              per shard: name, count, first/last key, bytes; totals
    report.json             what ingest converted or skipped, with reasons and paths

Keys are 9-digit decimal strings ("000000042"). ``ShardIndex`` resolves a key or a global position
to (shard, offset, size) with O(number of shards) resident state: the per-shard rows are loaded on
demand into a small LRU cache, so a lookup reads one ``.idx.npy`` at most and then one byte range
of the tar, without scanning.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from webdataset import tariterators as wds_tar

from orl_fast.core import storage
from orl_fast.core.errors import InputError, NotFound

INDEX_FILE = "index.json"
INDEX_VERSION = 1
KEY_DIGITS = 9

IDX_DTYPE = np.dtype([
    ("key", "<i8"),
    ("offset", "<i8"),       # byte offset of the image data inside the tar
    ("size", "<i8"),         # image size in bytes
    ("meta_offset", "<i8"),  # byte offset of the .json data inside the tar
    ("meta_size", "<i8"),
    ("width", "<i4"),
    ("height", "<i4"),
])


def format_key(i: int) -> str:
    return f"{i:0{KEY_DIGITS}d}"


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.tar"


def idx_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".idx.npy"


# ----------------------------------------------------------------------------- writing


def write_tar(path: str, samples: Iterable[tuple[str, bytes, dict | None]],
              ext: str = "jpg") -> np.ndarray:
    """Write a deterministic WebDataset tar to a local path; return its index rows.

    ``samples`` yields (key, data, metadata or None) in increasing key order. Members are
    ``{key}.{ext}`` then, when there is metadata, ``{key}.json`` (its ``width``/``height``, if
    any, go into the index rows). Headers carry no time, owner or mode variation, so identical
    input gives identical bytes. Not atomic by itself: see :func:`write_shard`.
    """
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data, meta in samples:
            _add_member(tar, f"{key}.{ext}", data)
            if meta is not None:
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    return _index_rows(path, ext)


def write_shard(url: str, samples: Iterable[tuple[str, bytes, dict | None]],
                ext: str = "jpg") -> np.ndarray:
    """:func:`write_tar` to any URL, atomically."""
    with storage.atomic_local_file(url) as tmp:
        return write_tar(tmp, samples, ext)


def write_idx(url: str, rows: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, rows.astype(IDX_DTYPE), allow_pickle=False)
    storage.atomic_write(url, buf.getvalue())


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _index_rows(tar_path: str, ext: str) -> np.ndarray:
    """Read the member offsets back from a finished tar (exact, whatever the header layout)."""
    entries: dict[str, dict] = {}
    with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
            key, _, member_ext = m.name.partition(".")
            e = entries.setdefault(key, {"json": (0, 0), "wh": (0, 0)})
            e[member_ext] = (m.offset_data, m.size)
            if member_ext == "json":
                meta = json.loads(tar.extractfile(m).read())
                e["wh"] = (meta.get("width", 0), meta.get("height", 0))
    rows = np.zeros(len(entries), dtype=IDX_DTYPE)
    for i, (key, e) in enumerate(entries.items()):
        rows[i] = (int(key), *e[ext], *e["json"], *e["wh"])
    return rows


def read_idx(url: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)


def shard_summary(name: str, rows: np.ndarray) -> dict:
    """The index.json entry of one shard (keys in a shard are increasing)."""
    return {
        "name": name,
        "count": len(rows),
        "first_key": int(rows["key"][0]) if len(rows) else -1,
        "last_key": int(rows["key"][-1]) if len(rows) else -1,
        "bytes": int(rows["size"].sum()) if len(rows) else 0,
    }


def write_index(root: str, shards: list[dict], **extra) -> dict:
    """Write index.json from :func:`shard_summary` entries (in shard order), plus ``extra`` keys."""
    index = {
        "version": INDEX_VERSION,
        "num_images": int(sum(s["count"] for s in shards)),
        "num_shards": len(shards),
        "shards": shards,
        **extra,
    }
    storage.atomic_write_json(storage.join(root, INDEX_FILE), index)
    return index


# ----------------------------------------------------------------------------- reading

IMAGE_SHARDS = "the image shards of `orl-fast ingest`"
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_index(root: str, field: str = "data", what: str = IMAGE_SHARDS,
               check_files: bool = True) -> tuple[dict, bytes]:
    """The ``index.json`` of a shard directory, parsed and as bytes, checked before any work
    starts: the file exists and is an index of this version, every shard it lists with images
    has its tar and ``.idx.npy`` beside it (``check_files=False``: the index alone). InputError
    naming ``field``, the path and what is wrong otherwise (``what``: what the directory should
    be, for the message)."""
    root = root.rstrip("/")
    url = storage.join(root, INDEX_FILE)
    if not storage.exists(url):
        raise NotFound(f"{field}: {root}: {_no_index(root)} (expected {what})")
    raw = storage.read_bytes(url)
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{field}: {url}: not valid JSON ({e})") from None
    shards = info.get("shards") if isinstance(info, dict) else None
    if not isinstance(shards, list) or info.get("version") != INDEX_VERSION or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str)
            and isinstance(s.get("count"), int) and isinstance(s.get("first_key"), int)
            for s in shards):
        version = info.get("version") if isinstance(info, dict) else None
        raise InputError(f"{field}: {url}: not a shard index this version reads (version "
                         f"{version!r}, expected {INDEX_VERSION} with a list of shards)")
    if not check_files:
        return info, raw
    present = set(storage.listdir(root))
    for s in shards:
        for name in (s["name"], idx_name(s["name"])):
            if s["count"] and name not in present:
                raise NotFound(f"{field}: {root}: {INDEX_FILE} lists {name}, which is missing")
    return info, raw


def _no_index(root: str) -> str:
    if not storage.exists(root):
        return "no such directory"
    if not storage.isdir(root):
        return "a file, not a directory"
    names = storage.listdir(root)
    if any(n.lower().endswith(_IMAGE_EXTS) for n in names):
        return (f"a folder of images, not shards (no {INDEX_FILE}); make shards with "
                f"`orl-fast ingest {root} SHARDS`")
    return f"no {INDEX_FILE} here"


@dataclass(frozen=True)
class Location:
    shard: str       # shard file name inside the dataset root
    offset: int
    size: int
    width: int
    height: int


class ShardIndex:
    """Random access by key or by global position to a directory of shards with an index.json.

    Serves image shards (``data`` = JPEG bytes) and any other record shards written with
    :func:`write_shard` (Stage 2's pair shards: ``data`` = an encoded record). The index is
    checked when opened (:func:`read_index`; ``field`` and ``what`` name it in the messages);
    ``digest`` is the SHA-256 of its ``index.json``.

    Resident state is O(shards): the shard table plus an LRU of ``cache_shards`` per-shard row
    arrays. Safe to use in DataLoader workers (file handles are reopened after fork).
    """

    def __init__(self, root: str, cache_shards: int = 64, field: str = "data",
                 what: str = IMAGE_SHARDS):
        self.root = root.rstrip("/")
        info, raw = read_index(self.root, field, what)
        # Identifies the shard set (mining records it; Stage 3 and resumes compare it).
        self.digest = hashlib.sha256(raw).hexdigest()
        shards = [s for s in info["shards"] if s["count"] > 0]
        self.shard_names = [s["name"] for s in shards]
        self.counts = np.array([s["count"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.first_keys = [s["first_key"] for s in shards]
        self.num_images = int(self.starts[-1])
        self._cache_size = cache_shards
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.num_images

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_rows"] = OrderedDict()
        state["_files"] = {}
        return state

    # --- rows
    def shard_rows(self, shard_id: int) -> np.ndarray:
        rows = self._rows.get(shard_id)
        if rows is None:
            rows = read_idx(storage.join(self.root, idx_name(self.shard_names[shard_id])))
            self._rows[shard_id] = rows
            if len(self._rows) > self._cache_size:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(shard_id)
        return rows

    def position(self, pos: int) -> tuple[int, np.void]:
        """Global position (0..N-1, in shard order) -> (shard id, row)."""
        if not 0 <= pos < self.num_images:
            raise IndexError(f"position {pos} outside [0, {self.num_images})")
        shard_id = int(np.searchsorted(self.starts, pos, side="right")) - 1
        return shard_id, self.shard_rows(shard_id)[pos - self.starts[shard_id]]

    def key_at(self, pos: int) -> int:
        return int(self.position(pos)[1]["key"])

    def find(self, key: int | str) -> tuple[int, np.void]:
        """Key -> (shard id, row); KeyError when absent."""
        k = int(key)
        shard_id = bisect.bisect_right(self.first_keys, k) - 1
        if shard_id >= 0:
            rows = self.shard_rows(shard_id)
            i = int(np.searchsorted(rows["key"], k))
            if i < len(rows) and rows["key"][i] == k:
                return shard_id, rows[i]
        raise KeyError(f"key {key} is not in {self.root}")

    def locate(self, key: int | str) -> Location:
        shard_id, row = self.find(key)
        return Location(self.shard_names[shard_id], int(row["offset"]), int(row["size"]),
                        int(row["width"]), int(row["height"]))

    # --- bytes
    def _read(self, shard_id: int, offset: int, size: int) -> bytes:
        if os.getpid() != self._pid:
            self._files, self._pid = {}, os.getpid()
        name = self.shard_names[shard_id]
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = storage.open_file(storage.join(self.root, name), "rb")
        f.seek(offset)
        return f.read(size)

    def data(self, key: int | str) -> bytes:
        """The primary member of ``key`` (the JPEG bytes of an image shard)."""
        shard_id, row = self.find(key)
        return self._read(shard_id, int(row["offset"]), int(row["size"]))

    def meta(self, key: int | str) -> dict:
        shard_id, row = self.find(key)
        return json.loads(self._read(shard_id, int(row["meta_offset"]), int(row["meta_size"])))

    def data_at(self, pos: int) -> tuple[int, bytes]:
        """(key, primary member) at a global position."""
        shard_id, row = self.position(pos)
        return int(row["key"]), self._read(shard_id, int(row["offset"]), int(row["size"]))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def iter_shard(url: str, ext: str = "jpg") -> Iterator[tuple[str, bytes, dict]]:
    """Stream one shard in order: (key, data, metadata or {}); works on any fsspec URL.

    WebDataset's own tar iteration and grouping of members into samples, over a file of the
    storage layer (one sequential read of the tar, local or on an object store)."""
    with storage.open_file(url, "rb") as f:
        members = ({**m, "__url__": url} for m in wds_tar.tar_file_iterator(f))
        for sample in wds_tar.group_by_keys(members):
            yield sample["__key__"], sample[ext], json.loads(sample.get("json", b"{}"))


def list_shards(root: str, prefix: str = "shard-") -> list[str]:
    return [n for n in storage.listdir(root) if n.startswith(prefix) and n.endswith(".tar")]
