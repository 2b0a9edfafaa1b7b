"""Stage 2 orchestration: per-shard units on Ray, streamed, resumable (``orl-fast mine``).

Units and where they run::

    proposals(j)  CPU task, one core: selective search + filter of input shard j
    embed(j)      model actor (GPU when the cluster has one): whole-image embeddings of shard j
    knn(J)        model actor, once every embed unit is done: one output per query shard in J
    roi(j)        model actor, after proposals(j): RoI embeddings of shard j
    pairs(j)      CPU task, after knn(j) and roi(j') for j and every shard j' holding one of
                  shard j's neighbours: pair records of shard j

The driver keeps a bounded number of units in flight per lane (CPU tasks, model actors), hands
each the :class:`~mining.manifest.Plan` through the object store once, and receives only small
stats dicts; data goes through storage (``MINED`` must be reachable from every node: a shared
file system or an object store URL). Each unit writes its outputs and then its record, so a task
that dies is retried by Ray (``max_retries``), an actor that dies is restarted with its model and
its task redone, and a killed run resumes where it stopped, with byte-identical output.

``mine.executor=local`` runs the same units one by one in this process (debugging, tiny sets).
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from loaders.labels import open_store, store_path
from loaders.pairs import write_pairs_index
from loaders.shards import read_index
from mining import embed, knn, proposals, roi_embed, roi_pairs
from mining.manifest import MANIFEST, STAGES, SUMMARY, Plan, file_sha256, make_plan, require_mined
from mining.summary import build_summary
from orl_fast.core import storage
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import Config, MineConfig
from orl_fast.core.locks import out_lock
from orl_fast.core.ray_runtime import ray_session

MODEL_STAGES = ("embed", "knn", "roi")
MODEL_INFLIGHT = 2  # queued units per model actor: the next one is ready when one finishes


class UnitFailed(RuntimeError):
    pass


class Miner:
    """A model worker: the Stage 1 encoder on one device, running embed / knn / roi units."""

    def __init__(self, plan: Plan, threads: int):
        self.plan, self.threads = plan, threads
        self.runner = embed.ModelRunner(plan.ckpt, plan.mine, plan.device, threads)

    def embed(self, sid: int) -> dict:
        return embed.embed_unit(self.plan, sid, self.runner)

    def roi(self, sid: int) -> dict:
        return roi_embed.roi_unit(self.plan, sid, self.runner)

    def knn(self, sids: list[int]) -> dict:
        return knn.knn_unit(self.plan, sids, self.plan.device, self.threads)


_CPU_UNITS = {"proposals": proposals.proposals_unit, "pairs": roi_pairs.pairs_unit}


# ----------------------------------------------------------------------------- executors


class LocalExecutor:
    """Runs every unit at submission, in this process."""

    cpu_slots = model_slots = 1

    def __init__(self, plan: Plan):
        import torch

        self.plan = plan
        self._threads = torch.get_num_threads()  # the model worker sets its own: restored
        self._miner: Miner | None = None
        self._results: collections.deque = collections.deque()
        self._next = 0

    def submit(self, stage: str, arg: Any) -> int:
        try:
            if stage in _CPU_UNITS:
                result = _CPU_UNITS[stage](self.plan, arg)
            else:
                if self._miner is None:
                    self._miner = Miner(self.plan, self.plan.mine.actor_cpus)
                result = getattr(self._miner, stage)(arg)
        except Exception as e:
            raise UnitFailed(f"{stage} unit {arg} failed: {type(e).__name__}: {e}") from e
        self._next += 1
        self._results.append((self._next, result))
        return self._next

    def wait(self, pending) -> tuple[int, Any]:
        return self._results.popleft()

    def release_models(self) -> None:
        import torch

        self._miner = None
        torch.set_num_threads(self._threads)

    def close(self) -> None:
        self.release_models()


class RayExecutor:
    """CPU units as Ray tasks (one core each), model units on a pool of ``Miner`` actors."""

    def __init__(self, plan: Plan):
        import ray

        self.ray = ray
        m = plan.mine
        self.plan, self.plan_ref = plan, ray.put(plan)
        resources = ray.cluster_resources()
        self.cpus = int(resources.get("CPU", 1))
        self.cpu_slots = 2 * self.cpus
        # SPREAD: CPU units go round the nodes (they read and write storage, not local data),
        # so every node's cores work from the first unit on.
        self._tasks = {stage: ray.remote(fn).options(
            num_cpus=1, max_retries=m.max_retries, retry_exceptions=True, name=stage,
            scheduling_strategy="SPREAD")
            for stage, fn in _CPU_UNITS.items()}
        if plan.device == "cuda":
            n = int(resources.get("GPU", 0) * m.actors_per_gpu)
            opts = {"num_gpus": 1 / m.actors_per_gpu}
        else:
            n, opts = m.cpu_actors, {}
            if n * m.actor_cpus >= self.cpus:
                raise ConfigError(
                    f"mine.cpu_actors x mine.actor_cpus = {n * m.actor_cpus} must leave at least "
                    f"one of the cluster's {self.cpus} CPUs to the selective-search tasks")
        self._actor_cls = ray.remote(Miner).options(
            num_cpus=m.actor_cpus, max_restarts=m.max_retries, max_task_retries=m.max_retries,
            **opts)
        self._n_actors = max(1, n)
        self._actors: list | None = None
        self._load: dict[int, int] = {}
        self._owner: dict = {}
        self.model_slots = MODEL_INFLIGHT * self._n_actors
        self.threads = m.actor_cpus

    def submit(self, stage: str, arg: Any):
        if stage in self._tasks:
            ref = self._tasks[stage].remote(self.plan_ref, arg)
        else:
            if self._actors is None:
                # The plan by value: a restarted actor must not depend on an object ref.
                self._actors = [self._actor_cls.remote(self.plan, self.threads)
                                for _ in range(self._n_actors)]
                self._load = dict.fromkeys(range(self._n_actors), 0)
            i = min(self._load, key=self._load.get)
            method = getattr(self._actors[i], stage).options(retry_exceptions=True)
            ref = method.remote(arg)
            self._load[i] += 1
            self._owner[ref] = i
        return ref

    def wait(self, pending) -> tuple[Any, Any]:
        [ref], _ = self.ray.wait(list(pending), num_returns=1)
        i = self._owner.pop(ref, None)
        if i is not None:
            self._load[i] -= 1
        try:
            return ref, self.ray.get(ref)
        except Exception as e:
            stage, arg = pending[ref]
            raise UnitFailed(f"{stage} unit {arg} failed after retries: {e}") from e

    def release_models(self) -> None:
        for a in self._actors or []:
            self.ray.kill(a)
        self._actors = None

    def close(self) -> None:
        self.release_models()


# ----------------------------------------------------------------------------- scheduling


class PairGate:
    """When a pairs unit may run: once the RoI embeddings of every shard holding a neighbour of
    its images are done.

    A unit waits for the shards in the range [lo, hi] of its neighbours' shards (itself
    included): a superset of its exact dependencies, held in a few integers per shard instead
    of a set per shard (neighbours of a large set are spread over most shards, so exact sets
    would cost O(shards^2)). The driver's state stays O(shards) at any scale.
    """

    def __init__(self, shard_ids: list[int], roi_done: set[int]):
        self.ids = np.asarray(shard_ids, np.int64)  # increasing
        self.roi_done = np.isin(self.ids, list(roi_done))
        n = len(self.ids)
        self.lo, self.hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.left = np.zeros(n, np.int64)  # RoI units in [lo, hi] not done yet
        self.waiting = np.zeros(n, bool)

    def _pos(self, sid: int) -> int:
        return int(np.searchsorted(self.ids, sid))

    def wait(self, sid: int, lo: int, hi: int) -> bool:
        """Register pairs unit ``sid`` needing RoI shards ``lo..hi``; True when it may run now."""
        i = self._pos(sid)
        a, b = self._pos(lo), int(np.searchsorted(self.ids, hi, side="right")) - 1
        self.lo[i], self.hi[i] = a, b
        self.left[i] = (b - a + 1) - int(self.roi_done[a:b + 1].sum())
        self.waiting[i] = self.left[i] > 0
        return not self.waiting[i]

    def done(self, roi_sid: int) -> list[int]:
        """RoI unit ``roi_sid`` finished: the pairs units that may run now."""
        p = self._pos(roi_sid)
        if self.roi_done[p]:
            return []
        self.roi_done[p] = True
        hit = self.waiting & (self.lo <= p) & (p <= self.hi)
        self.left[hit] -= 1
        ready = hit & (self.left == 0)
        self.waiting[ready] = False
        return self.ids[ready].tolist()


class Scheduler:
    """Dependency-driven dispatch of the units that are not done yet."""

    def __init__(self, plan: Plan, executor, progress: bool = True):
        self.plan, self.ex = plan, executor
        self.done = {stage: plan.done(stage) for stage in STAGES}
        self.todo = {stage: set(plan.shard_ids) - self.done[stage] for stage in STAGES}
        for stage, sids in self.todo.items():
            plan.forget_other_settings(stage, sids)
        self.skipped = {stage: len(self.done[stage]) for stage in STAGES}
        self.ready_cpu: collections.deque = collections.deque()
        self.ready_model: collections.deque = collections.deque()
        self.pending: dict[Any, tuple[str, Any]] = {}
        self.gate = PairGate(plan.shard_ids, self.done["roi"])
        self.knn_submitted = False
        self.progress = Progress(plan, self.done, progress)

    # --- readiness
    def _queue(self, stage: str, arg: Any) -> None:
        (self.ready_model if stage in MODEL_STAGES else self.ready_cpu).append((stage, arg))

    def _start(self) -> None:
        for sid in sorted(self.todo["proposals"]):
            self._queue("proposals", sid)
        for sid in sorted(self.todo["embed"]):
            self._queue("embed", sid)
        for sid in sorted(self.todo["roi"] & self.done["proposals"]):
            self._queue("roi", sid)
        self._maybe_knn()
        for sid in sorted(self.done["knn"]):
            self._knn_done(sid)

    def _maybe_knn(self) -> None:
        if not self.knn_submitted and self.todo["knn"] and not self.todo["embed"]:
            self.knn_submitted = True
            # Query shards in one unit: the bank is loaded once.
            self.ready_model.appendleft(("knn", sorted(self.todo["knn"])))

    def _knn_done(self, sid: int) -> None:
        if sid not in self.todo["pairs"]:
            return
        lo, hi = knn.neighbor_shard_range(self.plan.read_record("knn", sid)["stats"])
        if self.gate.wait(sid, min(lo, sid), max(hi, sid)):
            self._queue("pairs", sid)

    def _finished(self, stage: str, sid: int, stats: dict) -> None:
        self.todo[stage].discard(sid)
        self.done[stage].add(sid)
        self.progress.update(stage, sid, stats)
        if stage == "proposals" and sid in self.todo["roi"]:
            self._queue("roi", sid)
        elif stage == "embed":
            self._maybe_knn()
        elif stage == "knn":
            self._knn_done(sid)
        elif stage == "roi":
            for ready in self.gate.done(sid):
                self._queue("pairs", ready)

    # --- loop
    def _dispatch(self) -> None:
        lanes = ((self.ready_cpu, self.ex.cpu_slots, lambda s: s not in MODEL_STAGES),
                 (self.ready_model, self.ex.model_slots, lambda s: s in MODEL_STAGES))
        for ready, slots, in_lane in lanes:
            busy = sum(in_lane(stage) for stage, _ in self.pending.values())
            while ready and busy < slots:
                stage, arg = ready.popleft()
                self.pending[self.ex.submit(stage, arg)] = (stage, arg)
                busy += 1

    def run(self) -> None:
        self._start()
        while any(self.todo.values()):
            self._dispatch()
            if not self.pending:
                raise RuntimeError(f"mining stalled with units left: "
                                   f"{ {s: sorted(t) for s, t in self.todo.items() if t} }")
            handle, result = self.ex.wait(self.pending)
            stage, arg = self.pending.pop(handle)
            result = result or {}
            for sid in (arg if stage == "knn" else [arg]):
                self._finished(stage, sid, result.get(sid, {}) if stage == "knn" else result)
            if not any(self.todo[s] for s in MODEL_STAGES):
                self.ex.release_models()
        self.progress.close()


class Progress:
    """Mining's progress bar, in images: each step's images done (a unit finishes a shard's) and
    the boxes selective search kept in this run, e.g. ``proposals 384/741 (3.9k boxes) | embed
    741/741 | knn 741/741 | roi 256/741 | pairs 128/741``; the bar is over all five steps."""

    def __init__(self, plan: Plan, done: dict[str, set[int]], enabled: bool):
        self.size = dict(zip(plan.shard_ids, plan.counts or [0] * len(plan.shard_ids)))
        self.total = sum(self.size.values())
        self.images = {stage: sum(self.size[sid] for sid in done[stage]) for stage in STAGES}
        self.boxes = 0
        self.enabled = enabled
        self.bar = tqdm(total=self.total * len(STAGES), initial=sum(self.images.values()),
                        desc="mine", disable=not enabled, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                   "[{elapsed}<{remaining}{postfix}]")
        self._show()

    def update(self, stage: str, sid: int, stats: dict) -> None:
        self.images[stage] += self.size[sid]
        if stage == "proposals":
            self.boxes += int(stats.get("boxes", 0))
        self.bar.update(self.size[sid])
        self._show()

    def _show(self) -> None:
        if not self.enabled:
            return
        boxes = f" ({_short(self.boxes)} boxes)" if self.boxes else ""
        self.bar.set_postfix_str(" | ".join(
            f"{stage} {self.images[stage]}/{self.total}" + (boxes if stage == "proposals" else "")
            for stage in ("proposals", "embed", "knn", "roi", "pairs")), refresh=True)

    def close(self) -> None:
        self.bar.close()


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


# ----------------------------------------------------------------------------- entry points


def _absolute(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def _device(mine: MineConfig) -> str:
    """Where model units run: cuda when asked or available (on the Ray cluster), else cpu."""
    if mine.executor == "ray":
        import ray

        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    else:
        import torch

        has_gpu = torch.cuda.is_available()
    if mine.device == "cuda" and not has_gpu:
        raise ConfigError("mine.device: cuda requested but no GPU is available "
                          f"({'on the Ray cluster' if mine.executor == 'ray' else 'here'})")
    return "cuda" if has_gpu and mine.device != "cpu" else "cpu"


def _write_manifest(plan: Plan, cfg: Config, run: dict | None) -> None:
    """manifest.json: what this directory is mined from and with; one entry per finished run.

    Written when a run starts (status "running") and when it ends ("complete")."""
    url = storage.join(plan.out, MANIFEST)
    runs = storage.read_json(url).get("runs", []) if storage.exists(url) else []
    storage.atomic_write_json(url, {
        "status": "running" if run is None else "complete",
        "config_hash": plan.config_hash, "hashes": plan.hashes, "inputs": plan.inputs,
        "device": plan.device, "config": {"mine": cfg.to_dict()["mine"]},
        "runs": runs if run is None else [*runs, run]})


def finalize(plan: Plan) -> dict:
    """pairs/index.json and summary.json from the unit records (all units done).

    Also removes temporary files that killed workers left (no unit is running any more)."""
    for stage in STAGES:
        storage.remove_stale_temporaries(plan.dir(stage))
    write_pairs_index(plan.out, [plan.read_record("pairs", sid)["stats"]["index"]
                                 for sid in plan.shard_ids], plan.mine.knn_k, plan.mine.topn_frac)
    summary = build_summary(plan)
    storage.atomic_write_json(storage.join(plan.out, SUMMARY), summary)
    return summary


def check_inputs(cfg: Config) -> None:
    """The start-up checks of ``orl-fast mine``, before Ray starts or OUT is touched: the shards'
    index is readable and complete, the checkpoint holds the Stage 1 encoder it describes, the
    label store of ``label.mode=scan`` opens, ``mine.proposals_from`` is a mined directory."""
    cfg.require("data", "ckpt", "out")
    read_index(cfg.data)
    embed.load_encoder(cfg.ckpt)
    label_gate(cfg)
    if cfg.mine.proposals_from:
        require_mined(cfg.mine.proposals_from, "mine.proposals_from")
    storage.check_output_dir(cfg.out)


def label_gate(cfg: Config) -> dict:
    """SCAN's Stage 2 gate of ``label.mode=scan`` (else none), with the label store checked."""
    lab = cfg.label
    if lab.mode != "scan":
        return {}
    data = _absolute(cfg.data)
    open_store(data, lab.source)
    path = store_path(data, lab.source)
    return {"store": path, "store_sha256": file_sha256(path), "jaccard": lab.jaccard,
            "candidates": lab.candidates, "pairs": lab.pair_gate, "box_iou": lab.box_iou}


def run(cfg: Config, progress: bool = True) -> dict:
    """Mine ``cfg.data`` with the Stage 1 model ``cfg.ckpt`` into ``cfg.out``; returns the summary."""
    check_inputs(cfg)
    with out_lock(cfg.out, "orl-fast mine"):
        return _run(cfg, progress)


def _run(cfg: Config, progress: bool) -> dict:
    t0 = time.time()
    mine = cfg.mine
    session = (ray_session(mine.ray_address, mine.ray_num_cpus, mine.ray_object_store_mb,
                           use_gpus=mine.device != "cpu")
               if mine.executor == "ray" else contextlib.nullcontext())
    with session:
        plan = make_plan(_absolute(cfg.out), _absolute(cfg.data), _absolute(cfg.ckpt), mine,
                         _device(mine), label_gate(cfg))
        for stage in STAGES:
            storage.makedirs(plan.dir(stage))
            storage.remove_stale_temporaries(plan.dir(stage))
        adopted = (plan.adopt("proposals", _absolute(mine.proposals_from),
                              "mine.proposals_from") if mine.proposals_from else [])
        _write_manifest(plan, cfg, None)
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        ex = RayExecutor(plan) if mine.executor == "ray" else LocalExecutor(plan)
        sched = Scheduler(plan, ex, progress)
        try:
            sched.run()
        finally:
            ex.close()
    summary = finalize(plan)
    seconds = {stage: round(sum(plan.read_record(stage, sid)["seconds"]
                                for sid in plan.shard_ids), 2) for stage in STAGES}
    _write_manifest(plan, cfg, {
        "started": started, "wall_seconds": round(time.time() - t0, 2), "device": plan.device,
        "executor": mine.executor, "units_skipped": sched.skipped,
        "proposals_adopted": len(adopted),
        "unit_seconds": seconds})
    return summary
