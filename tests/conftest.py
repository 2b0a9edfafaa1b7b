"""Shared fixtures: the real data sets in ../shared/data, tiny shard sets and tiny configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ORL_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))

# Tests run CPU-only and small: keep torch from oversubscribing the 2 cores of CI.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def subprocess_env() -> dict[str, str]:
    """Environment for `python -m orl_fast ...` subprocesses: import this checkout first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def orl_fast_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orl_fast", *args]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set ORL_FAST_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco_mini(shared_data: Path) -> Path:
    return shared_data / "coco-mini"


@pytest.fixture(scope="session")
def coco_shards(coco_mini: Path, tmp_path_factory) -> str:
    """The first 64 coco-mini images ingested into 2 shards (session-wide, read-only)."""
    from loaders.ingest import ingest
    from orl_fast.config import IngestConfig

    root = tmp_path_factory.mktemp("coco_shards")
    names = sorted(os.listdir(coco_mini / "images"))[:64]
    listing = root / "list.txt"
    listing.write_text("".join(f"{coco_mini / 'images' / n}\n" for n in names))
    out = str(root / "shards")
    ingest(str(listing), out, IngestConfig(shard_size=32, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def scene_shards(tmp_path_factory) -> tuple[str, str]:
    """48 generated scenes (160x120) in 2 shards; returns (shards dir, COCO instances.json)."""
    from loaders.ingest import ingest
    from loaders.synthetic import write_scenes
    from orl_fast.config import IngestConfig

    root = tmp_path_factory.mktemp("scenes")
    images = write_scenes(str(root / "scenes"), 48, seed=1, width=160, height=120)
    out = str(root / "shards")
    ingest(images, out, IngestConfig(shard_size=24, workers=1), progress=False)
    return out, str(root / "scenes" / "instances.json")


TINY_OVERRIDES = [
    "model.backbone=resnet18", "model.proj_hidden_dim=64", "model.proj_dim=32",
    "model.pred_hidden_dim=64", "aug.crop_size=32", "train.batch_size=8", "train.epochs=1",
    "train.num_workers=0", "train.precision=fp32", "train.log_every_steps=1",
    "train.ckpt_every_steps=2", "train.device=cpu", "optim.warmup_epochs=0",
]


@pytest.fixture
def tiny_config():
    """A Config factory: tiny ResNet-18 run on CPU, plus any extra overrides."""
    from orl_fast.config import load_config

    def make(*overrides: str):
        return load_config("small", [*TINY_OVERRIDES, *overrides])

    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``@pytest.mark.gpu`` skip, with the reason, where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _encode(img, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB, nor lie about the size)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b""))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb, never decoded)."""
    return _png(width, height, 8, 0, b"\x00" * 64)


def _png_48bit(width: int, height: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = b"".join(b"\x00" + rng.integers(0, 65535, width * 3, dtype=np.uint16).astype(
        ">u2").tobytes() for _ in range(height))
    return _png(width, height, 16, 2, rows)


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory):
    """A directory with one file per kind of bad input; returns (dir, expected report counts).

    Expected: ``skipped`` and ``converted`` counts per kind, ``written`` and ``ignored``.
    """
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("bad_corpus")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    jpeg = _encode(rgb, "JPEG", quality=90)
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    palette = rgb.convert("P")
    files = {
        "ok.jpg": jpeg,
        "ok_progressive.jpg": _encode(rgb, "JPEG", progressive=True),
        "zero.jpg": b"",
        "text.jpg": b"this is not an image\n" * 10,
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + rng.bytes(400),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "gray.jpg": _encode(rgb.convert("L"), "JPEG"),
        "gray16.png": _encode(Image.fromarray(
            rng.integers(0, 65535, (96, 128)).astype(np.uint16)), "PNG"),
        "rgb48.png": _png_48bit(128, 96),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "palette_transparent.gif": _encode(palette, "GIF", transparency=0),
        "exif_rotated.jpg": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "one_pixel.png": _encode(Image.new("RGB", (1, 1)), "PNG"),
        "bomb.png": _png_header_only(40_000, 40_000),
        "photo.webp": _encode(rgb, "WEBP"),
        "photo.bmp": _encode(rgb, "BMP"),
        "README.txt": b"not an image extension: listed as ignored\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    expected = {
        "written": 11,
        "skipped": {"empty": 1, "not_an_image": 1, "corrupt": 1, "truncated": 1, "too_small": 1,
                    "decompression_bomb": 1},
        "converted": {"cmyk": 1, "grayscale": 1, "16bit": 2, "alpha": 2, "palette": 1,
                      "exif_rotated": 1, "reencoded": 6},
        "ignored": 1,
    }
    return root, expected


def require_full_ray(*modules: str) -> None:
    """Skip, with the reason, where Ray is installed without what the `ray` extra adds
    (ray[default]: the dashboard and job API; ray[train]), as on the GPU machine's minimal Ray."""
    pytest.importorskip("ray", reason="needs the ray extra")
    from cluster.runtime import require_dashboard
    from orl_fast.extras import MissingExtra, require

    try:
        require_dashboard("this test")
        for module in modules:
            require(module, "ray", "this test")
    except MissingExtra as e:
        pytest.skip(f"needs the ray extra in full (ray[default,train]): {e}")


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1; AWS_ENDPOINT_URL points every client at it."""
    pytest.importorskip("moto.server", reason="needs the dev extra (moto[server])")
    pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs)")
    from s3_support import start_server

    yield from start_server()
