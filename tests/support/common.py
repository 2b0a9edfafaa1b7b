"""Helpers of the tests: paths, subprocess commands, tiny run settings, hand-made images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ORL_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))

def subprocess_env() -> dict[str, str]:
    """Environment for `python -m orl_fast ...` subprocesses: import this checkout first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def orl_fast_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orl_fast", *args]


# The tiny model of every test: ResNet-18 with small MLPs.
TINY_MODEL = ["model.backbone=resnet18", "model.proj_hidden_dim=64", "model.proj_dim=32",
              "model.pred_hidden_dim=64"]
TINY_OVERRIDES = [
    *TINY_MODEL, "aug.crop_size=32", "train.batch_size=8", "train.epochs=1",
    "train.num_workers=0", "train.precision=fp32", "train.log_every_steps=1",
    "train.ckpt_every_steps=2", "train.device=cpu", "optim.warmup_epochs=0",
]


def encode(img, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB, nor lie about the size)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b""))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb, never decoded)."""
    return png(width, height, 8, 0, b"\x00" * 64)


def png_48bit(width: int, height: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = b"".join(b"\x00" + rng.integers(0, 65535, width * 3, dtype=np.uint16).astype(
        ">u2").tobytes() for _ in range(height))
    return png(width, height, 16, 2, rows)


def require_full_ray(*modules: str) -> None:
    """Skip, with the reason, where Ray is installed without what the `ray` extra adds
    (ray[default]: the dashboard and job API; ray[train]), as with a minimal Ray install."""
    pytest.importorskip("ray", reason="needs the ray extra")
    from orl_fast.core.extras import MissingExtra, require
    from orl_fast.core.ray_runtime import require_dashboard

    try:
        require_dashboard("this test")
        for module in modules:
            require(module, "ray", "this test")
    except MissingExtra as e:
        pytest.skip(f"needs the ray extra in full (ray[default,train]): {e}")
