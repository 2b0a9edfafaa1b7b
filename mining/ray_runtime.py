"""Ray for Stage 2: a private local instance on 127.0.0.1, or an existing cluster.

A local instance (``mine.ray_address`` empty) is started with ``address="local"`` (never
attaching to somebody else's ``ray start``), no dashboard, a bounded object store, and every Ray
server on the loopback interface: Ray binds the node's IP, which it takes from the loopback
interface only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine mode); without
a dashboard Ray serves no HTTP UI. Workers import this checkout (its root is put first on their
PYTHONPATH).

``mine.ray_address`` ("auto", "host:port", "ray://...") joins a running cluster whose nodes
have orl-fast installed (a 127.0.0.1 / localhost address: a loopback-only cluster on this
machine, which this driver then joins on the loopback interface too). Without it,
``RAY_ADDRESS`` is honoured as Ray does: a Ray job (``orl-fast submit -- orl-fast mine ...``)
mines on its own cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from orl_fast.config import MineConfig

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def _loopback_only() -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by raylet and agents
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a private run
    from ray._private import ray_constants  # read at import time: patch this process too

    ray_constants.ENABLE_RAY_CLUSTER = False


def worker_pythonpath() -> str:
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([PACKAGE_ROOT, *[p for p in rest if p != PACKAGE_ROOT]])


@contextlib.contextmanager
def ray_session(mine: MineConfig) -> Iterator[None]:
    """Start (or join) Ray for the block; a session that already exists is used and kept."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = mine.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        if address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
            _loopback_only()  # a cluster on this machine's loopback: be a loopback node too
        ray.init(address=address, log_to_driver=True)
    else:
        _loopback_only()
        ray.init(
            address="local",
            num_cpus=mine.ray_num_cpus or os.cpu_count() or 1,
            num_gpus=0 if mine.device == "cpu" else None,
            object_store_memory=mine.ray_object_store_mb << 20,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}},
        )
    try:
        yield
    finally:
        ray.shutdown()
