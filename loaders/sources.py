"""Enumerate ingest inputs: a directory tree, a glob, a text file of paths, or a tar archive.

Every form accepts local paths and fsspec URLs. The order is deterministic (sorted paths for
directories and globs, file order for lists and tars), so keys are stable across runs.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass

from orl_fast.core import storage


@dataclass(frozen=True)
class SourceItem:
    """One input image: a file URL, or a member of a tar (byte range inside ``url``)."""

    url: str
    member: str = ""
    offset: int = -1
    size: int = -1

    @property
    def name(self) -> str:
        return f"{self.url}::{self.member}" if self.member else self.url

    def read(self) -> bytes:
        if not self.member:
            return storage.read_bytes(self.url)
        with storage.open_file(self.url, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class SourceListing:
    items: list[SourceItem]
    # Files present but not considered images (by extension), reported by ingest.
    ignored: list[str]
    kind: str


def list_sources(src: str, extensions: tuple[str, ...]) -> SourceListing:
    exts = tuple(e.lower() for e in extensions)
    if any(c in src for c in "*?["):
        return _from_paths(_glob(src), exts, "glob")
    lower = src.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        raise ValueError(f"ingest source {src!r}: compressed tars cannot be read by byte range; "
                         "decompress it to a plain .tar first")
    if lower.endswith(".tar"):
        return _from_tar(src, exts)
    if lower.endswith((".txt", ".lst", ".list")) and storage.isfile(src):
        return _from_list(src, exts)
    if storage.isdir(src):
        return _from_paths(_walk(src), exts, "directory")
    if storage.isfile(src):
        return _from_paths([src], exts, "file")
    raise FileNotFoundError(f"ingest source {src!r}: no such directory, file, glob match or tar")


def _unstrip(url: str, fs, path: str) -> str:
    """fsspec returns protocol-less paths; put the protocol back for non-local filesystems."""
    if "://" not in url:
        return path
    protocol = url.split("://", 1)[0]
    return f"{protocol}://{path}" if "://" not in path else path


def _walk(url: str) -> list[str]:
    fs, path = storage.url_to_fs(url)
    return sorted(_unstrip(url, fs, p) for p in fs.find(path))


def _glob(url: str) -> list[str]:
    fs, path = storage.url_to_fs(url)
    return sorted(_unstrip(url, fs, p) for p in fs.glob(path) if fs.isfile(p))


def _from_paths(paths: list[str], exts: tuple[str, ...], kind: str) -> SourceListing:
    items, ignored = [], []
    for p in paths:
        base = posixpath.basename(p)
        if base.startswith("."):
            ignored.append(p)
        elif p.lower().endswith(exts):
            items.append(SourceItem(p))
        else:
            ignored.append(p)
    return SourceListing(items, ignored, kind)


def _from_list(url: str, exts: tuple[str, ...]) -> SourceListing:
    base = posixpath.dirname(url) if "://" in url else None
    paths = []
    for line in storage.read_text(url).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" not in line and not line.startswith("/"):
            line = posixpath.join(base, line) if base else _local_join(url, line)
        paths.append(line)
    # A list is taken as given: every entry is an input (its extension is not filtered).
    return SourceListing([SourceItem(p) for p in paths], [], "list")


def _local_join(list_path: str, rel: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(list_path)), rel))


def _from_tar(url: str, exts: tuple[str, ...]) -> SourceListing:
    items, ignored = [], []
    with storage.open_file(url, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            if m.name.lower().endswith(exts):
                items.append(SourceItem(url, m.name, m.offset_data, m.size))
            else:
                ignored.append(f"{url}::{m.name}")
    return SourceListing(items, ignored, "tar")
