"""Ray for orl-fast (Stage 2 mining, Ray Train): a private local instance on 127.0.0.1, or a cluster.

A local instance (empty ``address``, no ``RAY_ADDRESS``) is started with ``address="local"``
(never attaching to somebody else's ``ray start``), a bounded object store, and every Ray
server on the loopback interface: Ray binds the node's IP, which it takes from the loopback
interface only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine mode). Mining
runs it without a dashboard (no HTTP UI at all); Ray Train, whose controller polls the state
API, with the dashboard on 127.0.0.1. Workers import this checkout (its root is put first on
their PYTHONPATH).

An ``address`` ("auto", "host:port", "ray://...") joins a running cluster whose nodes have
orl-fast installed (a 127.0.0.1 / localhost address: a loopback-only cluster on this machine,
e.g. the test scaffolding's ``tests/support/loopback.py``, which this driver then joins on the loopback interface too). Without
it, ``RAY_ADDRESS`` is honoured as Ray does: a Ray job (``orl-fast submit -- orl-fast mine ...``)
runs on its own cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from orl_fast.core.extras import MissingExtra, require

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# Ray (>= 2.5x) logs a warning at every start of a local instance that it enabled token
# authentication: the default, not a problem. It stays enabled; only the notice is dropped.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def _loopback_only() -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by raylet and agents
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a private run
    from ray._private import ray_constants  # read at import time: patch this process too

    ray_constants.ENABLE_RAY_CLUSTER = False


def require_dashboard(purpose: str) -> None:
    """Ray's dashboard (job submission, Ray Train's controller) needs ``ray[default]``, which a
    minimal Ray lacks: say so at start-up, not as Ray's traceback from its head."""
    from ray._private import utils

    check = getattr(utils, "get_dashboard_dependency_error", None)  # private: may move
    error = check() if check else None
    if error:
        raise MissingExtra(f"{purpose} needs Ray's dashboard, whose dependencies (ray[default]) "
                           f"are missing ({error}): pip install 'orl-fast[ray]'")


def worker_pythonpath() -> str:
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([PACKAGE_ROOT, *[p for p in rest if p != PACKAGE_ROOT]])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_loopback(address: str) -> bool:
    return address.split("://")[-1].split(":")[0] in LOOPBACK_HOSTS


@contextlib.contextmanager
def ray_session(address: str = "", num_cpus: int = 0, object_store_mb: int = 256,
                use_gpus: bool = True, dashboard: bool = False) -> Iterator[None]:
    """Start (or join) Ray for the block; a session that already exists is used and kept.

    ``num_cpus`` (0: every core), ``object_store_mb``, ``use_gpus`` (False: a local instance
    without GPUs) and ``dashboard`` apply to a local instance only; a cluster has its own. The
    dashboard (Ray's state API, which Ray Train's controller polls) listens on 127.0.0.1 at a
    free port.
    """
    ray = require("ray", "ray", "Ray (Stage 2 mining, train.launcher=ray)")

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if dashboard and not address:
        require_dashboard("a local Ray with its dashboard (train.launcher=ray)")
    if address:
        if is_loopback(address):
            _loopback_only()  # a cluster on this machine's loopback: be a loopback node too
        ray.init(address=address, log_to_driver=True)
    else:
        _loopback_only()
        with _quiet(TOKEN_NOTICE_LOGGER):
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                num_gpus=None if use_gpus else 0,
                object_store_memory=object_store_mb << 20,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                dashboard_port=free_port() if dashboard else None,
                log_to_driver=True,
                runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}},
            )
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Warnings of one logger dropped for the block (errors still shown)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
