"""Paths that may be local or fsspec URLs (s3://, gs://, memory://, ...), and atomic writes.

Every stage writes its outputs through :func:`atomic_write` / :func:`atomic_local_file`: the bytes go
to a temporary name beside the target and are renamed when complete, so a killed run never leaves a
partial file under a final name. On object stores a single PUT is already atomic, so the object is
written directly under its final name once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from orl_fast.core.errors import InputError
from orl_fast.core.extras import MissingExtra

TMP_MARK = ".tmp-"


def _file_mode() -> int:
    """0o666 minus the umask: what open() would give (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``url``. Remote filesystems are opened without a listings
    cache: other processes (ingest workers, Ray tasks on other nodes) write into the directories
    this one lists, and a stale listing would hide their files."""
    if "://" not in url or url.startswith("file://"):
        return fsspec.core.url_to_fs(url)
    try:
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except ImportError as e:  # fsspec knows the protocol, its package is not installed
        protocol = url.split("://", 1)[0]
        hint = "pip install 'orl-fast[s3]'" if protocol in ("s3", "s3a") else "install it"
        raise MissingExtra(f"{protocol}:// needs the fsspec backend of {protocol} ({e}): "
                           f"{hint}") from e


def is_local(url: str) -> bool:
    return isinstance(url_to_fs(url)[0], LocalFileSystem)


def join(base: str, *parts: str) -> str:
    if "://" in base:
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = url_to_fs(url)
    fs.makedirs(path, exist_ok=True)


def open_file(url: str, mode: str = "rb"):
    fs, path = url_to_fs(url)
    return fs.open(path, mode)


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    """The JSON document at ``url``; InputError naming the file when it is not valid JSON."""
    data = read_bytes(url)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{url}: not valid JSON ({e})") from None


def check_output_dir(url: str, field: str = "out") -> None:
    """``url`` can take a step's outputs: a directory, or a place one can be made (local: the
    nearest existing parent is a writable directory). InputError naming ``field`` otherwise."""
    fs, path = url_to_fs(url)
    if fs.exists(path) and not fs.isdir(path):
        raise InputError(f"{field}: {url}: is a file, not a directory")
    if not isinstance(fs, LocalFileSystem):
        return
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{field}: {url}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{field}: {url}: {parent} is not writable")


def isdir(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.isdir(path)


def isfile(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.isfile(path)


def listdir(url: str) -> list[str]:
    """Names (not paths) of the entries of a directory; empty when it does not exist."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str) -> None:
    fs, path = url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def atomic_write(url: str, data: bytes) -> None:
    with atomic_local_file(url) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(url: str, obj: Any, indent: int | None = 1) -> None:
    atomic_write(url, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_local_file(url: str) -> Iterator[str]:
    """Yield a local temporary path; when the block succeeds its content becomes ``url`` atomically.

    Local targets: temp file in the same directory, fsync, ``os.replace``. Remote targets: a local
    temp file uploaded in one PUT. On error the temporary file is removed.
    """
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TMP_MARK, dir=directory)
        os.close(fd)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _file_mode())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fd, tmp = tempfile.mkstemp(prefix="orl-fast-upload-")
        os.close(fd)
        try:
            yield tmp
            fs.put_file(tmp, path)
        finally:
            os.remove(tmp)


def remove_stale_temporaries(url: str) -> int:
    """Delete temporary files a killed run left in a local directory; returns how many."""
    if not is_local(url) or not os.path.isdir(url):
        return 0
    n = 0
    for name in os.listdir(url):
        if name.startswith(".") and TMP_MARK in name:
            p = os.path.join(url, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            n += 1
    return n
