"""Enumerate ingest inputs: a directory tree, a glob, a text file of paths, or a tar archive.

Every form accepts local paths and fsspec URLs. The order is deterministic (sorted paths for
directories and globs, file order for lists and tars), so keys are stable across runs.

Whatever is found but not taken as an input is listed with its reason (:data:`IGNORE_REASONS`):
hidden files, other extensions, and what is not a regular file (a FIFO would block a reader
forever, a link to ``/dev/zero`` never ends): such entries are never opened. Links to regular
files are followed; links to directories are not (no loops). A tar that is cut short gives the
members before the cut, and the rest is reported; link and device members are reported, not
extracted. Reading an input (:meth:`SourceItem.read`) is bounded by ``ingest.max_bytes`` and
opens a local path without blocking, checking that it is still a regular file.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass

from orl_fast.core import storage
from orl_fast.core.errors import InputError, NotFound

# Why an entry of the source is not an input (report.json "ignored" kinds).
IGNORE_REASONS = (
    "hidden", "not_an_image_extension", "not_a_regular_file", "symlink_loop", "broken_link",
    "link_to_directory", "link_member", "special_member", "truncated_member", "unreadable_rest",
    "unreadable",
)


class SkipInput(Exception):
    """An input that cannot be read as it is listed: ``reason`` (a skip kind of report.json)
    and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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

    def read(self, max_bytes: int) -> bytes:
        """The input's bytes; SkipInput when it is not a regular file or has more than
        ``max_bytes`` (never reads more than that)."""
        if self.member:
            _check_size(self.size, max_bytes)
            with storage.open_file(self.url, "rb") as f:
                f.seek(self.offset)
                return f.read(self.size)
        if _is_local(self.url):
            return _read_local(storage.url_to_fs(self.url)[1], max_bytes)
        with storage.open_file(self.url, "rb") as f:
            size = getattr(f, "size", None)
            if isinstance(size, int):
                _check_size(size, max_bytes)
            data = f.read(max_bytes + 1)
        _check_size(len(data), max_bytes)
        return data


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise SkipInput("too_large", f"{size}+ bytes, more than ingest.max_bytes={max_bytes}")


def _read_local(path: str, max_bytes: int) -> bytes:
    """Open without blocking (a FIFO would wait for a writer), then read only a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        reason, detail = _stat_problem(path, e)
        raise SkipInput(reason, detail) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SkipInput("not_a_regular_file", _file_kind(mode))
        _check_size(os.fstat(fd).st_size, max_bytes)
        data = f.read(max_bytes + 1)
    _check_size(len(data), max_bytes)
    return data


@dataclass
class SourceListing:
    items: list[SourceItem]
    # Entries found but not taken as inputs: (path, reason in IGNORE_REASONS, detail).
    ignored: list[tuple[str, str, str]]
    kind: str


def list_sources(src: str, extensions: tuple[str, ...]) -> SourceListing:
    exts = tuple(e.lower() for e in extensions)
    if any(c in src for c in "*?["):
        return _from_entries(_glob(src), exts, "glob")
    lower = src.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        raise InputError(f"{src}: compressed tars cannot be read by byte range; decompress it to "
                         "a plain .tar first")
    if lower.endswith(".tar") and storage.isfile(src):
        return _from_tar(src, exts)
    if lower.endswith((".txt", ".lst", ".list")) and storage.isfile(src):
        return _from_list(src, exts)
    if storage.isdir(src):
        return _from_entries(_walk(src), exts, "directory")
    if storage.isfile(src):
        return _from_entries([(src, "file")], exts, "file")
    raise NotFound(f"{src}: no such directory, file, glob match or tar")


def _unstrip(url: str, path: str) -> str:
    """fsspec returns protocol-less paths; put the protocol back for non-local filesystems."""
    if "://" not in url:
        return path
    protocol = url.split("://", 1)[0]
    return f"{protocol}://{path}" if "://" not in path else path


def _walk(url: str) -> list[tuple[str, str]]:
    """(path, fsspec type) of every entry below ``url`` (links not followed into)."""
    fs, path = storage.url_to_fs(url)
    return sorted((_unstrip(url, p), info.get("type", "")) for p, info in
                  fs.find(path, detail=True).items())


def _glob(url: str) -> list[tuple[str, str]]:
    fs, path = storage.url_to_fs(url)
    return sorted((_unstrip(url, p), info.get("type", "")) for p, info in
                  fs.glob(path, detail=True).items() if info.get("type") != "directory")


def _from_entries(entries: list[tuple[str, str]], exts: tuple[str, ...],
                  kind: str) -> SourceListing:
    items, ignored = [], []
    for p, ftype in entries:
        problem = None if ftype == "file" else _not_regular(p)
        if problem is not None:
            ignored.append((p, *problem))
        elif posixpath.basename(p).startswith("."):
            ignored.append((p, "hidden", "name starts with a dot"))
        elif not p.lower().endswith(exts):
            ignored.append((p, "not_an_image_extension", "extension not in ingest.extensions"))
        else:
            items.append(SourceItem(p))
    return SourceListing(items, ignored, kind)


def _not_regular(p: str) -> tuple[str, str] | None:
    """Why ``p`` (an entry fsspec did not call a plain file) is not an input; None when it is a
    link to a regular file after all."""
    if not _is_local(p):
        return "not_a_regular_file", "not a file on its filesystem"
    path = storage.url_to_fs(p)[1]
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return _stat_problem(path, e)
    if stat.S_ISDIR(mode):
        return "link_to_directory", "links to directories are not followed"
    if not stat.S_ISREG(mode):
        return "not_a_regular_file", _file_kind(mode)
    return None


def _stat_problem(path: str, e: OSError) -> tuple[str, str]:
    if e.errno == errno.ELOOP:
        return "symlink_loop", "too many levels of symbolic links"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return "broken_link", f"points to {os.readlink(path)}, which does not exist"
    return "unreadable", e.strerror or str(e)


def _file_kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


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
    # A list is taken as given: every entry is an input (its extension is not filtered; what
    # cannot be read is skipped, with its reason, when it is read).
    return SourceListing([SourceItem(p) for p in paths], [], "list")


def _local_join(list_path: str, rel: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(list_path)), rel))


def _from_tar(url: str, exts: tuple[str, ...]) -> SourceListing:
    """The members of a plain tar; a tar cut short gives the members before the cut and reports
    the rest (``unreadable_rest``); link and special members are reported."""
    items, ignored = [], []
    fs, path = storage.url_to_fs(url)
    size = fs.size(path)
    with storage.open_file(url, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - iterated by hand below
        except tarfile.TarError as e:
            raise InputError(f"{url}: not a readable tar archive ({e})") from None
        members = iter(tar)
        while True:
            try:
                m = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, EOFError, OSError) as e:
                if tar.offset < size:  # (past the end: the member cut short, reported below)
                    ignored.append((f"{url}::@{tar.offset}", "unreadable_rest",
                                    f"{type(e).__name__}: {e} (bytes {tar.offset}-{size})"))
                break
            name = f"{url}::{m.name}"
            if m.isdir():
                continue
            if m.issym() or m.islnk():
                link = "symbolic" if m.issym() else "hard"
                ignored.append((name, "link_member", f"{link} link to {m.linkname}"))
            elif not m.isfile():
                kind = ("a character device" if m.ischr() else "a block device" if m.isblk()
                        else "a FIFO" if m.isfifo() else f"of tar type {m.type!r}")
                ignored.append((name, "special_member", f"{kind}, not a file"))
            elif m.offset_data + m.size > size:
                short = m.offset_data + m.size - size
                ignored.append((name, "truncated_member",
                                f"{m.size} bytes declared, the archive ends {short} bytes short"))
            elif m.name.lower().endswith(exts):
                items.append(SourceItem(url, m.name, m.offset_data, m.size))
            else:
                ignored.append((name, "not_an_image_extension",
                                "extension not in ingest.extensions"))
        tail = _unread_tail(f, tar.offset, size)
        if tail and not (ignored and ignored[-1][1] == "unreadable_rest"):
            ignored.append((f"{url}::@{tar.offset}", "unreadable_rest", tail))
    return SourceListing(items, ignored, "tar")


def _unread_tail(f, offset: int, size: int) -> str:
    """What is wrong with the bytes after the last member tarfile read ("" when they are the end
    of archive marker, or nothing): tarfile stops silently at a header cut short."""
    if offset >= size:
        return ""
    f.seek(offset)
    block = f.read(min(size - offset, 1024))
    if not block.strip(b"\0"):
        return ""
    return f"{size - offset} bytes after the last complete member are not a tar header"
