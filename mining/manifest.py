"""Stage 2 bookkeeping: output layout, per-stage hashes and the manifest of finished units.

A unit is one stage applied to one input shard (the kNN stage is one unit per query shard too).
Every unit writes its output atomically, then its record ``units/<stage>/<shard>.<hash>.json``
(stats + seconds). A unit is done when that record exists for the current hash, so a rerun after
kill -9 redoes only what had not finished, and its outputs are byte-identical to the first try.

Each stage's hash covers what its output depends on and nothing else: the input shards' index,
the Stage 1 checkpoint bytes (model stages), the :class:`MineConfig` fields the stage reads, the
numerics (device kind, precision) and the hashes of the stages it reads. Changing ``topn_frac``
redoes only the pairs; a new checkpoint keeps the selective-search proposals, and another
directory takes them with ``mine.proposals_from`` (:meth:`Plan.adopt`: units of the same hash are
the same bytes).

Layout of ``MINED``::

    manifest.json                 config, hashes, inputs, one entry per run (timings)
    embeddings/emb-NNNNNN.npz     keys [n] int64, emb [n, D] float16 (L2-normalised projector out)
    knn/knn-NNNNNN.npz            keys [n], neighbors [n, K] int64 keys, sims [n, K] float32
    proposals/props-NNNNNN.npz    keys [n], size [n, 2] (w, h), counts [n], raw_counts [n],
                                  boxes [sum(counts), 4] int16/int32 xywh (kept boxes only)
    roi_embed/roi-NNNNNN.npy      [sum(counts), F] float16, L2-normalised pooled backbone features
    pairs/pairs-NNNNNN.tar        {key}.pairs = loaders.pairs.PairRecord, + .idx.npy, index.json
    summary.json                  counts and histograms (deterministic)
    units/<stage>/NNNNNN.<hash>.json  stats, seconds, where it ran (host, pid, Ray node)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from loaders.pairs import EXT, PAIRS_DIR, PairRecord
from loaders.shards import INDEX_FILE, iter_shard, read_index
from orl_fast.core import checkpoint, storage
from orl_fast.core.defaults import MineConfig
from orl_fast.core.errors import InputError, NotFound

FORMAT = "orl-fast-mine/1"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
UNITS_DIR = "units"

STAGES = ("embed", "proposals", "knn", "roi", "pairs")
DIRS = {"embed": "embeddings", "knn": "knn", "proposals": "proposals", "roi": "roi_embed",
        "pairs": PAIRS_DIR}
FILES = {"embed": "emb-{:06d}.npz", "knn": "knn-{:06d}.npz", "proposals": "props-{:06d}.npz",
         "roi": "roi-{:06d}.npy", "pairs": "pairs-{:06d}.tar"}
# MineConfig fields each stage's output depends on; the others only change how it runs.
STAGE_FIELDS = {
    "embed": ("embed_size", "embed_view"),
    "proposals": ("ss_mode", "ss_max_side", "min_box_size", "aspect_range", "max_iou",
                  "max_boxes"),
    "knn": ("knn_k", "knn_backend", "faiss_index", "faiss_nprobe"),
    "roi": ("roi_size",),
    "pairs": ("topn_frac",),
}
_SHARD_ID = re.compile(r"(\d+)\.tar$")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(url: str) -> str:
    h = hashlib.sha256()
    with storage.open_file(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Plan:
    """Everything a unit needs to know (picklable: sent to Ray workers)."""

    out: str
    data: str
    ckpt: str                       # resolved checkpoint file
    mine: MineConfig
    device: str                     # "cuda" or "cpu": where the model stages run
    shard_ids: list[int]            # input shards with images, in order
    shard_names: list[str]
    first_keys: list[int]
    hashes: dict[str, str]
    inputs: dict[str, str]
    counts: list[int] = field(default_factory=list)  # images per shard (index.json)
    # SCAN's label gate (label.mode=scan; empty: none): the label store and its sha256, the
    # Jaccard threshold, the candidates factor, the pair gate and its IoU.
    label_gate: dict = field(default_factory=dict)

    # --- paths
    def dir(self, stage: str) -> str:
        return storage.join(self.out, DIRS[stage])

    def path(self, stage: str, sid: int) -> str:
        return storage.join(self.dir(stage), FILES[stage].format(sid))

    def data_shard(self, sid: int) -> str:
        return storage.join(self.data, self.shard_names[self.shard_ids.index(sid)])

    def _record_name(self, stage: str, sid: int) -> str:
        return f"{sid:06d}.{self.hashes[stage]}.json"

    def record_url(self, stage: str, sid: int) -> str:
        return storage.join(self.out, UNITS_DIR, stage, self._record_name(stage, sid))

    # --- units
    def write_record(self, stage: str, sid: int, stats: dict, seconds: float) -> None:
        storage.atomic_write_json(self.record_url(stage, sid), {
            "stage": stage, "shard": sid, "hash": self.hashes[stage], "stats": stats,
            "seconds": round(seconds, 3), "worker": where()})

    def read_record(self, stage: str, sid: int) -> dict:
        return storage.read_json(self.record_url(stage, sid))

    def forget_other_settings(self, stage: str, sids: set[int]) -> None:
        """Remove the records of other hashes of these shards' ``stage`` units: they are about to
        be redone, and the output they described will be overwritten (else going back to that
        setting would count the other setting's output as its own)."""
        url = storage.join(self.out, UNITS_DIR, stage)
        mine = {self._record_name(stage, sid) for sid in sids}
        prefixes = tuple(f"{sid:06d}." for sid in sids)
        for name in storage.listdir(url):
            if name.startswith(prefixes) and name not in mine:
                storage.remove(storage.join(url, name))

    def done(self, stage: str) -> set[int]:
        """Shards whose ``stage`` unit finished with the current hash (record and output exist)."""
        records = set(storage.listdir(storage.join(self.out, UNITS_DIR, stage)))
        outputs = set(storage.listdir(self.dir(stage)))
        return {sid for sid in self.shard_ids
                if self._record_name(stage, sid) in records
                and FILES[stage].format(sid) in outputs}

    def adopt(self, stage: str, src: str, field: str) -> list[int]:
        """Take from the mined directory ``src`` the finished ``stage`` units of this run's hash
        (the same images and settings: the same bytes) for the shards not done here; their
        output and record are copied, not recomputed. Returns the shards taken. ``field`` names
        the setting in errors: ``src`` must be a mined directory that finished at least one unit
        of this hash, unless nothing is left to take."""
        todo = sorted(set(self.shard_ids) - self.done(stage))
        if not todo:
            return []
        require_mined(src, field)
        records = set(storage.listdir(storage.join(src, UNITS_DIR, stage)))
        outputs = set(storage.listdir(storage.join(src, DIRS[stage])))
        taken = [sid for sid in todo if self._record_name(stage, sid) in records
                 and FILES[stage].format(sid) in outputs]
        if not taken and not set(self.shard_ids) & self.done(stage):
            hashes = sorted({name.split(".")[1] for name in records if name.count(".") == 2})
            raise InputError(f"{field}: {src}: no {stage} of these images with these settings "
                             f"(its {stage} hash: {', '.join(hashes) or 'none finished'}; "
                             f"this run's: {self.hashes[stage]})")
        for sid in taken:  # output first, then its record: a unit is done when both exist
            name = FILES[stage].format(sid)
            storage.atomic_write(self.path(stage, sid),
                                 storage.read_bytes(storage.join(src, DIRS[stage], name)))
            record = storage.read_json(storage.join(src, UNITS_DIR, stage,
                                                    self._record_name(stage, sid)))
            storage.atomic_write_json(self.record_url(stage, sid), {**record, "adopted_from": src})
        return taken

    # --- keys
    def shards_of(self, keys: np.ndarray) -> np.ndarray:
        """The input shards holding ``keys`` (shards hold increasing, disjoint key ranges)."""
        i = np.searchsorted(np.asarray(self.first_keys), np.asarray(keys), side="right") - 1
        if (i < 0).any():
            raise KeyError(f"keys precede every shard of {self.data}")
        return np.asarray(self.shard_ids)[i]

    def shard_of(self, key: int) -> int:
        return int(self.shards_of(np.array([key]))[0])

    @property
    def config_hash(self) -> str:
        return _digest([self.hashes[s] for s in STAGES])


def where() -> dict:
    """Where a unit ran: host, process and, inside a Ray worker, the Ray node id."""
    node = None
    if "ray" in sys.modules:  # only a process that imported Ray can be a Ray worker
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    return {"host": socket.gethostname(), "pid": os.getpid(), "ray_node": node}


def require_mined(url: str, field: str) -> None:
    """``url`` is a mined directory (it has a manifest), else one line naming ``field``."""
    if not storage.exists(storage.join(url, MANIFEST)):
        raise NotFound(f"{field}: {url}: not a mined directory (no {MANIFEST})")


def data_of(mined: str) -> str:
    """The image shards a mined directory was made from (its manifest)."""
    return storage.read_json(storage.join(mined, MANIFEST))["inputs"]["data"]


def iter_records(mined: str) -> Iterator[PairRecord]:
    """Every pair record of a mined directory, in key order (streaming, shard by shard)."""
    root = storage.join(mined, PAIRS_DIR)
    for entry in storage.read_json(storage.join(root, INDEX_FILE))["shards"]:
        for _, data, _ in iter_shard(storage.join(root, entry["name"]), ext=EXT):
            yield PairRecord.decode(data)


def shard_id(name: str) -> int:
    m = _SHARD_ID.search(name)
    if not m:
        raise ValueError(f"shard name {name!r} does not end in a number + .tar")
    return int(m.group(1))


def make_plan(out: str, data: str, ckpt: str, mine: MineConfig, device: str,
              label_gate: dict | None = None) -> Plan:
    """Resolve the inputs and compute the stage hashes (reads index.json and the checkpoint).
    ``label_gate`` (SCAN) enters the hashes of the kNN and pairs stages, and only then."""
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    index, index_bytes = read_index(data, check_files=False)  # the files: check_inputs
    shards = [s for s in index["shards"] if s["count"] > 0]
    ckpt_file = checkpoint.resolve(ckpt)
    if ckpt_file is None:
        raise NotFound(f"ckpt: {ckpt}: no checkpoint here (expected a .pt file or a run dir)")
    inputs = {"data": data, "data_index_sha256": hashlib.sha256(index_bytes).hexdigest(),
              "ckpt": ckpt_file, "ckpt_sha256": file_sha256(ckpt_file)}
    fields = dataclasses.asdict(mine)
    numerics = {"device": device,
                "precision": mine.precision if device == "cuda" else "fp32",
                "compile": mine.compile and device == "cuda"}

    def stage_hash(stage: str, *upstream, model: bool = False) -> str:
        return _digest({"format": FORMAT, "stage": stage,
                        "fields": {f: fields[f] for f in STAGE_FIELDS[stage]},
                        "upstream": list(upstream),
                        "model": [inputs["ckpt_sha256"], numerics] if model else None})

    hashes = {"embed": stage_hash("embed", inputs["data_index_sha256"], model=True),
              "proposals": stage_hash("proposals", inputs["data_index_sha256"])}
    gate = label_gate or {}
    hashes["knn"] = stage_hash("knn", hashes["embed"], *([gate] if gate else []))
    hashes["roi"] = stage_hash("roi", hashes["proposals"], model=True)
    hashes["pairs"] = stage_hash("pairs", hashes["knn"], hashes["roi"],
                                 *([gate] if gate.get("pairs") else []))
    return Plan(out=out, data=data, ckpt=ckpt_file, mine=mine, device=device,
                shard_ids=[shard_id(s["name"]) for s in shards],
                shard_names=[s["name"] for s in shards],
                first_keys=[s["first_key"] for s in shards], hashes=hashes, inputs=inputs,
                counts=[s["count"] for s in shards], label_gate=gate)
