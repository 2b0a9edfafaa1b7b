"""One writer per output directory: every writing stage holds ``OUT/.orl-fast.lock`` while it runs.

A second run into the same OUT (a second ``orl-fast ingest``, a ``pretrain`` started twice) stops
at start-up with one line saying who holds it, instead of deleting the other's temporary files or
interleaving checkpoints. The lock is released (and its file removed) when the run ends; an OUT
the lock had to create is removed again if the run wrote nothing into it (a run that fails its
start-up checks leaves no trace).

Local OUT: an exclusive ``flock`` on the lock file, which holds the holder's command, host, pid and
start time. The kernel releases it when the holder exits, however it exits (kill -9 included), so
a local lock is never stale: a lock file left on disk by a killed run is simply taken over.

Object-store OUT (s3://, gs://, ...): a lease object with the same fields plus an owner id and an
expiry, renewed every ``LEASE_SECONDS / 4`` by a thread while the run lives. A run that finds an
unexpired lease of another owner stops; one that finds an expired lease (its holder was killed)
takes it over, saying so. Object stores have no atomic create-if-absent through fsspec, so a new
holder writes its lease, waits ``LEASE_SETTLE_SECONDS`` and reads it back: of two runs started in
the same instant, the one whose lease was overwritten backs off. After a kill the next run waits
at most ``LEASE_SECONDS``, or deletes the lease object by hand if the holder is known to be dead.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from orl_fast.core import storage
from orl_fast.core.errors import OutputLocked

LOCK_NAME = ".orl-fast.lock"
LEASE_SECONDS = 120.0
LEASE_SETTLE_SECONDS = 1.0

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _owner(command: str) -> dict:
    return {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
            "started": _now(), "id": uuid.uuid4().hex}


def _held_message(out: str, holder: dict | None) -> str:
    if holder:
        who = (f"{holder.get('command', '?')}, pid {holder.get('pid', '?')} on "
               f"{holder.get('host', '?')}, since {holder.get('started', '?')}")
    else:
        who = "holder unknown"
    return (f"out: {out} is in use by another run ({who}); wait for it to end or use another "
            "output directory")


@contextlib.contextmanager
def out_lock(out: str, command: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock of output directory ``out`` for the block (made if absent).

    OutputLocked, naming the holder, when another run holds it. ``command`` is what the holder
    is shown as (default: this process's command line)."""
    owner = _owner(command or " ".join(["orl-fast", *sys.argv[1:3]]))
    storage.check_output_dir(out)
    if not storage.is_local(out):
        with _lease(storage.join(out, LOCK_NAME), out, owner):
            yield
        return
    path = os.path.abspath(storage.url_to_fs(out)[1])
    made = []  # the directories this makes: removed again if the run leaves them empty
    parent = path
    while not os.path.exists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(path, exist_ok=True)
    try:
        with _flock(os.path.join(path, LOCK_NAME), out, owner):
            yield
    finally:
        for directory in made:  # deepest first
            try:
                os.rmdir(directory)
            except OSError:
                break


# ----------------------------------------------------------------------------- local


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 1 << 16) or b"null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _flock(path: str, out: str, owner: dict) -> Iterator[None]:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputLocked(_held_message(out, holder)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: whoever opened it meanwhile retries
        os.close(fd)


# ----------------------------------------------------------------------------- object stores


def _read_lease(url: str) -> dict | None:
    try:
        return storage.read_json(url) if storage.exists(url) else None
    except Exception:  # noqa: BLE001 - a lease being rewritten or garbled: treated as absent
        return None


@contextlib.contextmanager
def _lease(url: str, out: str, owner: dict) -> Iterator[None]:
    held = _read_lease(url)
    if held and held.get("id") != owner["id"]:
        if held.get("expires", 0) > time.time():
            raise OutputLocked(_held_message(out, held))
        log.warning("out: %s: taking over the expired lease of %s (pid %s on %s)", out,
                    held.get("command"), held.get("pid"), held.get("host"))

    def write() -> None:
        storage.atomic_write_json(url, {**owner, "expires": time.time() + LEASE_SECONDS})

    write()
    if not url.startswith("memory://"):  # an in-process filesystem has no concurrent writer
        time.sleep(LEASE_SETTLE_SECONDS)
    now = _read_lease(url)
    if not now or now.get("id") != owner["id"]:
        raise OutputLocked(_held_message(out, now))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 4):
            current = _read_lease(url)
            if current and current.get("id") != owner["id"]:
                log.warning("out: %s: the lease was taken over by %s (pid %s on %s)", out,
                            current.get("command"), current.get("pid"), current.get("host"))
                return
            write()

    thread = threading.Thread(target=renew, name="orl-fast-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        current = _read_lease(url)
        if current and current.get("id") == owner["id"]:
            storage.remove(url)
