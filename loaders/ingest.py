"""``orl-fast ingest SRC OUT``: images -> WebDataset shards + key index + report.

The listing is cut into units of ``shard_size`` inputs; input i gets key ``format_key(i)`` and unit
j becomes ``shard-j.tar``. ``shard_size`` 0 (the default) chooses it from the number of inputs and
the workers (:func:`choose_shard_size`), so that ingest and Stage 2, which run one unit per shard
and core, keep every core busy; a rerun keeps the size its output was made with. Units run in parallel processes and are independent, so a rerun skips
every unit whose shard, index rows and report are all in place (each written atomically, the tar
last) and redoes only the rest; the result is byte-identical to an uninterrupted run.

An ingest holds OUT's lock (:mod:`orl_fast.core.locks`) while it runs; its worker processes die
with it (``kill -9`` of the ingest included: no orphan keeps writing). Every entry of the source
that is not ingested is in report.json with its reason: ``ignored`` (not an input: other
extensions, FIFOs, links, tar members that are links or cut short; see
:data:`loaders.sources.IGNORE_REASONS`) and ``skipped`` (an input that did not become an image).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from multiprocessing import get_context

from tqdm import tqdm

from loaders import shards
from loaders.sanitize import sanitize
from loaders.sources import SkipInput, SourceItem, SourceListing, list_sources
from orl_fast.core import storage
from orl_fast.core.defaults import IngestConfig
from orl_fast.core.errors import NotFound, UserError
from orl_fast.core.locks import out_lock

MANIFEST = "ingest.json"
REPORT = "report.json"
# Paths listed per kind in report.json (all of them stay in the per-shard reports).
REPORT_PATHS_CAP = 1000
# ingest.shard_size=0: about this many shards per worker, within these bounds (images per shard).
SHARDS_PER_WORKER = 4
AUTO_SHARD_SIZE = (32, 1000)


class IngestMismatch(UserError):
    """OUT already holds an ingest made from another source or with another config."""


def report_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".report.json"


def choose_shard_size(num_inputs: int, workers: int) -> int:
    """Images per shard for ``ingest.shard_size=0``: about ``SHARDS_PER_WORKER`` shards per
    worker (a shard is one unit of ingest and of each Stage 2 step, run one per core), at least
    32 and at most 1000 images each (O(shards) state stays small at any scale)."""
    lo, hi = AUTO_SHARD_SIZE
    return max(lo, min(hi, math.ceil(num_inputs / (SHARDS_PER_WORKER * max(workers, 1)))))


def _previous_shard_size(out: str, listing_sha1: str) -> int:
    """The shard size of an ingest of the same listing already in ``out`` (0: none)."""
    path = storage.join(out, MANIFEST)
    if not storage.exists(path):
        return 0
    old = storage.read_json(path)
    return int(old.get("config", {}).get("shard_size", 0)) if old.get(
        "listing_sha1") == listing_sha1 else 0


def ingest(src: str, out: str, cfg: IngestConfig, progress: bool = True) -> dict:
    listing = list_sources(src, cfg.extensions)
    if not listing.items:
        reasons = _count_reasons(listing.ignored)
        found = "; ".join(f"{n} {reason}" for reason, n in reasons.items())
        raise NotFound(f"{src}: no images found ({listing.kind}"
                       f"{'; ignored: ' + found if found else ''})")
    storage.check_output_dir(out)
    with out_lock(out, "orl-fast ingest"):
        return _ingest(src, out, cfg, listing, progress)


def _count_reasons(ignored: list[tuple[str, str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason, _ in ignored:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _ingest(src: str, out: str, cfg: IngestConfig, listing: SourceListing,
            progress: bool) -> dict:
    items = listing.items
    workers = cfg.workers or os.cpu_count() or 1
    listing_sha1 = hashlib.sha1("\n".join(i.name for i in items).encode()).hexdigest()
    if not cfg.shard_size:
        cfg = replace(cfg, shard_size=_previous_shard_size(out, listing_sha1)
                      or choose_shard_size(len(items), workers))
    manifest = {
        "source": src,
        "kind": listing.kind,
        "num_inputs": len(items),
        "listing_sha1": listing_sha1,
        "config": {k: v for k, v in asdict(cfg).items() if k != "workers"},
    }
    manifest = json.loads(json.dumps(manifest))  # as it reads back (tuples become lists)
    storage.makedirs(out)
    _check_manifest(out, manifest)
    storage.atomic_write_json(storage.join(out, MANIFEST), manifest)
    storage.remove_stale_temporaries(out)

    units = [(j, j * cfg.shard_size) for j in range((len(items) + cfg.shard_size - 1)
                                                     // cfg.shard_size)]
    done = set(storage.listdir(out))
    todo = [(j, s) for j, s in units if not _unit_done(done, shards.shard_name(j))]
    bar = tqdm(total=len(items), desc="ingest", unit="img", disable=not progress)
    bar.update(len(items) - sum(len(items[s:s + cfg.shard_size]) for _, s in todo))
    for n_inputs in _run_units(out, items, todo, cfg, workers):
        bar.update(n_inputs)
    bar.close()
    report = finalize(out, [shards.shard_name(j) for j, _ in units], listing.ignored)
    return {**report, "shards": len(units), "shard_size": cfg.shard_size}


def _unit_done(names: set[str], shard: str) -> bool:
    return {shard, shards.idx_name(shard), report_name(shard)} <= names


def _check_manifest(out: str, manifest: dict) -> None:
    path = storage.join(out, MANIFEST)
    if not storage.exists(path):
        if shards.list_shards(out):
            raise IngestMismatch(f"{out}: holds shards but no {MANIFEST}; use an empty directory")
        return
    old = storage.read_json(path)
    diff = [k for k in manifest if old.get(k) != manifest[k]]
    if diff:
        raise IngestMismatch(
            f"{out}: already holds an ingest with a different {', '.join(diff)} "
            f"(was {json.dumps({k: old.get(k) for k in diff})[:300]}); "
            "use another output directory or delete this one"
        )


def _run_units(out: str, items: list[SourceItem], todo: list[tuple[int, int]],
               cfg: IngestConfig, workers: int) -> Iterator[int]:
    chunks = [(j, s, items[s:s + cfg.shard_size]) for j, s in todo]
    if workers <= 1 or len(chunks) <= 1:
        for j, s, chunk in chunks:
            yield ingest_unit(out, j, s, chunk, cfg)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        pending = set()
        queue = iter(chunks)
        for j, s, chunk in queue:  # keep the pool busy without submitting everything at once
            pending.add(pool.submit(ingest_unit, out, j, s, chunk, cfg))
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(ingest_unit, out, *nxt[:2], nxt[2], cfg))


# The ingest a pool worker works for (set in the worker by die_with_parent).
_parent_pid: int | None = None
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: the kernel kills this worker when the ingest that started it
    dies (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere, and for a parent already gone,
    the unit loop checks the parent's pid (:func:`_orphaned`)."""
    global _parent_pid
    _parent_pid = parent_pid
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):  # no prctl: the pid check below still applies
            pass
    if _orphaned():
        os._exit(1)


def _orphaned() -> bool:
    return _parent_pid is not None and os.getppid() != _parent_pid


def ingest_unit(out: str, shard_id: int, start: int, items: list[SourceItem],
                cfg: IngestConfig) -> int:
    """Sanitize one unit of inputs and write its shard, index rows and report; returns #inputs."""
    name = shards.shard_name(shard_id)
    report: dict = {"shard": name, "inputs": len(items), "written": 0, "converted_images": 0,
                    "skipped": {}, "converted": {}}

    def samples() -> Iterator[tuple[str, bytes, dict | None]]:
        for i, item in enumerate(items, start):
            if _orphaned():  # the ingest is gone: stop writing (its temporary tar is dropped)
                os._exit(1)
            try:
                raw = item.read(cfg.max_bytes)
            except SkipInput as e:  # not a regular file, too large: reported, never read
                report["skipped"].setdefault(e.reason, []).append([item.name, e.detail])
                continue
            except Exception as e:  # noqa: BLE001 - unreadable input is reported, not fatal
                report["skipped"].setdefault("unreadable", []).append(
                    [item.name, f"{type(e).__name__}: {e}"])
                continue
            r = sanitize(raw, min_side=cfg.min_side, max_pixels=cfg.max_pixels,
                         max_side=cfg.max_side, jpeg_quality=cfg.jpeg_quality)
            if r.data is None:
                report["skipped"].setdefault(r.skipped, []).append([item.name, r.detail])
                continue
            for kind in r.conversions:
                report["converted"].setdefault(kind, []).append(item.name)
            report["converted_images"] += bool(r.conversions)
            report["written"] += 1
            key = shards.format_key(i)
            yield key, r.data, {
                "key": key,
                "source": item.name,
                "width": r.width,
                "height": r.height,
                "orig_width": r.orig_width,
                "orig_height": r.orig_height,
                "format": r.format,
                "conversions": r.conversions,
                "source_sha1": hashlib.sha1(raw).hexdigest(),
                "sha1": hashlib.sha1(r.data).hexdigest(),
            }

    tar_url = storage.join(out, name)
    # The tar goes to a temporary name first; index rows and report are renamed into place
    # before the tar itself, so "tar present" implies the unit is complete.
    with storage.atomic_local_file(tar_url) as tmp_tar:
        rows = shards.write_tar(tmp_tar, samples())
        shards.write_idx(storage.join(out, shards.idx_name(name)), rows)
        storage.atomic_write_json(storage.join(out, report_name(name)), report)
    return len(items)


def finalize(out: str, shard_names: list[str], ignored: list[tuple[str, str, str]]) -> dict:
    """Write index.json and the aggregated report.json from the per-shard files.

    Reads one shard's rows and report at a time: memory stays O(shards), not O(images).
    ``ignored``: the (path, reason, detail) of the listing's entries that are not inputs.
    """
    summaries = []
    total: dict = {"inputs": 0, "written": 0, "converted_images": 0, "skipped_images": 0,
                   "ignored_files": len(ignored), "skipped": {}, "converted": {}, "ignored": {}}
    for path, reason, detail in ignored:
        agg = total["ignored"].setdefault(reason, {"count": 0, "paths": []})
        agg["count"] += 1
        if len(agg["paths"]) < REPORT_PATHS_CAP:
            agg["paths"].append([path, detail])
        else:
            agg["paths_truncated"] = True
    for name in shard_names:
        summaries.append(shards.shard_summary(
            name, shards.read_idx(storage.join(out, shards.idx_name(name)))))
        rep = storage.read_json(storage.join(out, report_name(name)))
        for field in ("inputs", "written", "converted_images"):
            total[field] += rep[field]
        for section in ("skipped", "converted"):
            for kind, entries in rep[section].items():
                agg = total[section].setdefault(kind, {"count": 0, "paths": []})
                agg["count"] += len(entries)
                room = REPORT_PATHS_CAP - len(agg["paths"])
                agg["paths"].extend(entries[:max(room, 0)])
                if len(entries) > room:
                    agg["paths_truncated"] = True
    total["skipped_images"] = sum(v["count"] for v in total["skipped"].values())
    shards.write_index(out, summaries)
    storage.atomic_write_json(storage.join(out, REPORT), total)
    return total
