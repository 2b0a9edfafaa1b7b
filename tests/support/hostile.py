"""Hostile inputs, made on the spot: what a careless or malicious user hands the pipeline.

Shared by tests/test_reliability.py and benchmarks/hostile_inputs.py. Nothing here is stored in
the repository: every file is generated (FIFOs, links to devices, cut tars, tars with link and
device members, a tiny PNG of a huge image).
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(seed: int, width: int = 96, height: int = 72) -> bytes:
    """A small random RGB JPEG (kept as it is by ingest)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90)
    return buf.getvalue()


def source_tree(root: Path, images: int = 4) -> Path:
    """A directory of ``images`` good JPEGs and one of each entry ingest must not read: a FIFO
    named like an image, a link to /dev/zero, a symlink loop, a broken link, a link to a
    directory, a text file. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        (root / f"img{i}.jpg").write_bytes(jpeg(i))
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    os.symlink("missing.jpg", root / "broken.jpg")
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "up")
    (root / "notes.txt").write_text("not an image\n")
    return root


# Reasons source_tree's entries are reported with (report.json "ignored").
SOURCE_TREE_IGNORED = {"not_a_regular_file": 2, "symlink_loop": 2, "broken_link": 1,
                       "link_to_directory": 1, "not_an_image_extension": 1}


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def image_tar(path: Path, images: int = 4) -> Path:
    path.write_bytes(_tar_bytes([_file(f"img{i}.jpg", jpeg(i)) for i in range(images)]))
    return path


def truncated_tar(path: Path, images: int = 4, keep: int = 2) -> Path:
    """A tar of ``images`` JPEGs cut in the middle of member ``keep``'s data: the first ``keep``
    members are complete."""
    data = _tar_bytes([_file(f"img{i}.jpg", jpeg(i)) for i in range(images)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmembers()[keep]
    path.write_bytes(data[:cut.offset_data + cut.size // 2])
    return path


def tar_cut_in_a_header(path: Path, images: int = 4, keep: int = 2) -> Path:
    """A tar cut 100 bytes into the header of member ``keep`` (tarfile stops there silently)."""
    data = _tar_bytes([_file(f"img{i}.jpg", jpeg(i)) for i in range(images)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmembers()[keep]
    path.write_bytes(data[:cut.offset + 100])
    return path


def not_a_tar(path: Path) -> Path:
    path.write_bytes(b"this is not a tar archive\n" * 40)
    return path


def tar_with_links(path: Path, images: int = 2) -> Path:
    """``images`` JPEGs plus a symbolic link, a hard link, a character device and a FIFO member,
    each named like an image."""
    members = [_file(f"img{i}.jpg", jpeg(i)) for i in range(images)]
    for name, kind, target in (("sym.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                               ("hard.jpg", tarfile.LNKTYPE, "img0.jpg"),
                               ("dev.jpg", tarfile.CHRTYPE, ""),
                               ("fifo.jpg", tarfile.FIFOTYPE, "")):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        members.append((info, None))
    path.write_bytes(_tar_bytes(members))
    return path


def png_blank(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of a black width x height image, written row by row (a few
    hundred KB for 13000 x 13000; no full-size buffer is ever made)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def jpeg_large(width: int, height: int) -> bytes:
    """A baseline RGB JPEG of width x height (flat colour: small, kept as it is by ingest)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


# Measures the peak memory of sanitising one file, in a fresh interpreter:
# python -c PEAK_RSS_SCRIPT FILE MAX_SIDE -> prints "baseline_kb peak_kb width height".
PEAK_RSS_SCRIPT = """
import resource, sys
from loaders.sanitize import sanitize
raw = open(sys.argv[1], 'rb').read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = sanitize(raw, max_side=int(sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak, r.width, r.height, r.skipped or 'ok')
"""
