"""Deterministic array files for Stage 2's intermediate outputs (local paths or fsspec URLs).

- :func:`save_arrays` / :func:`load_arrays`: several named arrays in one uncompressed ``.npz``
  whose bytes depend only on the arrays (zip entries carry a fixed date), so a unit redone after a
  kill writes the same bytes as the first time.
- :class:`NpyWriter`: a 2-D ``.npy`` written row block by row block (the row count is known up
  front), so a unit never holds all its RoI embeddings.
- :class:`NpyRows`: rows ``[a, b)`` of a 2-D ``.npy`` with one byte-range read, on any fsspec URL.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Self

import numpy as np

from orl_fast.core import storage

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def save_arrays(url: str, **arrays: np.ndarray) -> int:
    """Write ``arrays`` as an uncompressed .npz atomically; returns the file size."""
    with storage.atomic_local_file(url) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                zf.writestr(info, buf.getvalue())
        return os.path.getsize(tmp)


def file_size(url: str) -> int:
    fs, path = storage.url_to_fs(url)
    return int(fs.size(path))


def load_arrays(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


class NpyWriter:
    """Stream a [rows, cols] array of ``dtype`` into a local .npy path, block by block.

    Use as a context manager; leaving it without an error checks that every row was written.
    """

    def __init__(self, path: str, rows: int, cols: int, dtype: str):
        self.dtype = np.dtype(dtype)
        self.rows, self.cols, self.written = rows, cols, 0
        self._f = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        np.lib.format.write_array_header_1_0(self._f, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": (rows, cols)})

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.cols:
            raise ValueError(f"expected [n, {self.cols}] rows, got {block.shape}")
        if self.written + len(block) > self.rows:
            raise ValueError(f"more than the {self.rows} declared rows")
        self._f.write(block.tobytes())
        self.written += len(block)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        self._f.close()
        if kind is None and self.written != self.rows:
            raise ValueError(f"wrote {self.written} rows of the {self.rows} declared")


class NpyRows:
    """Random access to the rows of a 2-D C-order .npy file (local or fsspec URL)."""

    def __init__(self, url: str):
        self._f = storage.open_file(url, "rb")
        version = np.lib.format.read_magic(self._f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(self._f)
        if fortran or len(shape) != 2:
            raise ValueError(f"{url}: expected a 2-D C-order array, got {shape}")
        self.shape, self.dtype = shape, dtype
        self._offset = self._f.tell()
        self._row_bytes = shape[1] * dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.shape[0]:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.shape[0]})")
        self._f.seek(self._offset + start * self._row_bytes)
        data = self._f.read((stop - start) * self._row_bytes)
        return np.frombuffer(data, self.dtype).reshape(stop - start, self.shape[1])

    def close(self) -> None:
        self._f.close()
