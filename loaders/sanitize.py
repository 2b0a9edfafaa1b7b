"""Turn arbitrary input bytes into a clean 8-bit RGB JPEG, or a reason why not.

Kept as they are: baseline RGB JPEGs that decode completely, carry no EXIF rotation and fit the
size limits (their original bytes are stored). Converted (and counted): other formats, CMYK,
grayscale, palette, alpha, 16-bit, EXIF-rotated and oversized images. Skipped (and counted):
empty, non-image, corrupt, truncated, too small and decompression-bomb-sized inputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

# Skip reasons and conversion kinds, as they appear in report.json.
SKIP_REASONS = (
    "empty", "not_an_image", "corrupt", "truncated", "too_small", "decompression_bomb",
    "unreadable",
)
CONVERSIONS = (
    "reencoded", "cmyk", "grayscale", "palette", "alpha", "16bit", "other_mode", "exif_rotated",
    "downscaled",
)

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose).
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


@dataclass
class Sanitized:
    data: bytes | None             # JPEG bytes to store, None when skipped
    width: int = 0
    height: int = 0
    orig_width: int = 0
    orig_height: int = 0
    format: str = ""
    skipped: str = ""              # one of SKIP_REASONS when data is None
    detail: str = ""
    conversions: list[str] = field(default_factory=list)


def sanitize(raw: bytes, *, min_side: int = 32, max_pixels: int = 178_956_970,
             max_side: int = 0, jpeg_quality: int = 95) -> Sanitized:
    if not raw:
        return Sanitized(None, skipped="empty", detail="zero bytes")
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # max_pixels below is the limit, checked before decoding
    try:
        img = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        return Sanitized(None, skipped="not_an_image", detail="not a recognised image format")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason, not a crash
        return Sanitized(None, skipped="corrupt", detail=f"{type(e).__name__}: {e}")

    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    fmt = img.format or ""
    w, h = img.size
    deep = _has_16bit_samples(img)
    out = Sanitized(None, orig_width=w, orig_height=h, format=fmt)
    if w * h > max_pixels:
        out.skipped, out.detail = "decompression_bomb", f"{w}x{h} > {max_pixels} pixels"
        return out
    if min(w, h) < min_side:
        out.skipped, out.detail = "too_small", f"{w}x{h}, shorter side < {min_side}"
        return out
    try:
        if fmt == "JPEG" and max_side and max(w, h) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))   # decode at a reduced DCT scale
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        msg = f"{type(e).__name__}: {e}"
        out.skipped = "truncated" if "truncat" in str(e).lower() else "corrupt"
        out.detail = msg
        return out
    except Exception as e:  # noqa: BLE001
        out.skipped, out.detail = "unreadable", f"{type(e).__name__}: {e}"
        return out

    conv = out.conversions
    if fmt != "JPEG":
        conv.append("reencoded")
    orientation = _orientation(img)
    rgb = _to_rgb(img, conv)
    if deep and "16bit" not in conv:
        conv.append("16bit")  # 16-bit-per-channel colour: Pillow keeps the high byte
    if orientation in _UNDO_ORIENTATION:
        rgb = rgb.transpose(_UNDO_ORIENTATION[orientation])
        conv.append("exif_rotated")
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        conv.append("downscaled")
    out.width, out.height = rgb.size
    if not conv:
        out.data = raw
        return out
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=jpeg_quality)
    out.data = buf.getvalue()
    return out


def _has_16bit_samples(img: Image.Image) -> bool:
    try:
        return any(";16" in str(t[3]) for t in img.tile)
    except Exception:  # noqa: BLE001
        return False


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - malformed EXIF: treat as unrotated
        return None


def _to_rgb(img: Image.Image, conv: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "CMYK":
        conv.append("cmyk")
        return img.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        conv.append("16bit")
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        conv.append("palette")
        if "transparency" in img.info:
            return _flatten(img.convert("RGBA"), conv)
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _flatten(img.convert("RGBA"), conv)
    if mode in ("L", "1"):
        conv.append("grayscale")
        return img.convert("RGB")
    conv.append("other_mode")
    return img.convert("RGB")


def _flatten(rgba: Image.Image, conv: list[str]) -> Image.Image:
    """Composite on white (transparent pixels of web images are usually meant as background)."""
    conv.append("alpha")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
