"""Fixtures (helpers are in support/): the real data sets in ../shared/data, tiny shard sets and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support.common import SHARED_DATA, TINY_OVERRIDES, encode, png_48bit, png_header_only

# Tests run CPU-only and small: keep torch from oversubscribing the 2 cores of CI.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
    from orl_fast.core.defaults import IngestConfig

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
    from orl_fast.core.defaults import IngestConfig

    root = tmp_path_factory.mktemp("scenes")
    images = write_scenes(str(root / "scenes"), 48, seed=1)
    out = str(root / "shards")
    ingest(images, out, IngestConfig(shard_size=24, workers=1), progress=False)
    return out, str(root / "scenes" / "instances.json")


@pytest.fixture
def tiny_config():
    """A Config factory: tiny ResNet-18 run on CPU, plus any extra overrides."""
    from orl_fast.core.config import load_config

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
    jpeg = encode(rgb, "JPEG", quality=90)
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    palette = rgb.convert("P")
    files = {
        "ok.jpg": jpeg,
        "ok_progressive.jpg": encode(rgb, "JPEG", progressive=True),
        "zero.jpg": b"",
        "text.jpg": b"this is not an image\n" * 10,
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + rng.bytes(400),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "gray.jpg": encode(rgb.convert("L"), "JPEG"),
        "gray16.png": encode(Image.fromarray(
            rng.integers(0, 65535, (96, 128)).astype(np.uint16)), "PNG"),
        "rgb48.png": png_48bit(128, 96),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "palette_transparent.gif": encode(palette, "GIF", transparency=0),
        "exif_rotated.jpg": encode(rgb, "JPEG", exif=exif.tobytes()),
        "one_pixel.png": encode(Image.new("RGB", (1, 1)), "PNG"),
        "bomb.png": png_header_only(40_000, 40_000),
        "photo.webp": encode(rgb, "WEBP"),
        "photo.bmp": encode(rgb, "BMP"),
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


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1; AWS_ENDPOINT_URL points every client at it."""
    pytest.importorskip("moto.server", reason="needs the dev extra (moto[server])")
    pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs)")
    from support.s3 import start_server

    yield from start_server()
