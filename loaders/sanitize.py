"""Turn arbitrary input bytes into a clean 8-bit RGB JPEG, or a reason why not.

Kept as they are: baseline RGB JPEGs that decode completely, carry no EXIF rotation and fit the
size limits (their original bytes are stored). Converted (and counted): other formats, CMYK,
grayscale, palette, alpha, 16-bit, EXIF-rotated and oversized images. Skipped (and counted):
empty, non-image, corrupt, truncated, too small and decompression-bomb-sized inputs.

Memory per image stays bounded: a JPEG kept as it is is checked by a decode at 1/8 scale (the
whole entropy-coded stream is still read, so a truncated or corrupt one is caught); with
``max_side`` a large JPEG is decoded at a reduced DCT scale (draft mode) and an 8-bit RGB or
grayscale image of another format is reduced before its colour conversion. Without ``max_side``
(the default: the paper's selective search runs on full-resolution images) a converted image
needs its decoded pixels plus their RGB copy, and ``max_pixels`` bounds both.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

# Skip reasons and conversion kinds, as they appear in report.json.
SKIP_REASONS = (
    "empty", "not_an_image", "corrupt", "truncated", "too_small", "decompression_bomb",
    "unreadable", "too_large", "not_a_regular_file", "symlink_loop", "broken_link",
)
# JPEGs kept as they are with more pixels than this are checked by a decode at 1/8 scale.
VERIFY_AT_SCALE_PIXELS = 4_000_000
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
    orientation = _orientation(img)
    downscale = bool(max_side) and max(w, h) > max_side
    kept_as_is = (fmt == "JPEG" and img.mode == "RGB" and not deep and not downscale
                  and orientation not in _UNDO_ORIENTATION)
    try:
        if kept_as_is and w * h > VERIFY_AT_SCALE_PIXELS:
            img.draft("RGB", (-(-w // 8), -(-h // 8)))  # the check only: the raw bytes are kept
        elif fmt == "JPEG" and downscale and max(w, h) > 2 * max_side:
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
    if kept_as_is:
        out.width, out.height = w, h
        out.data = raw
        return out
    if fmt != "JPEG":
        conv.append("reencoded")
    if downscale and img.mode in ("RGB", "L"):  # reduced before the colour conversion
        img = _downscale(img, max_side)
        conv.append("downscaled")
    rgb = _to_rgb(img, conv)
    del img
    if deep and "16bit" not in conv:
        conv.append("16bit")  # 16-bit-per-channel colour: Pillow keeps the high byte
    if orientation in _UNDO_ORIENTATION:
        rgb = rgb.transpose(_UNDO_ORIENTATION[orientation])
        conv.append("exif_rotated")
    if max_side and max(rgb.size) > max_side:
        rgb = _downscale(rgb, max_side)
        conv.append("downscaled")
    out.width, out.height = rgb.size
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=jpeg_quality)
    out.data = buf.getvalue()
    return out


def _downscale(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` resized so that its longer side is ``max_side`` (bicubic, reducing first)."""
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


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
        arr = np.asarray(img)
        if arr.max(initial=0) > 255:  # round(x / 257): in integers for 16-bit (4 B / pixel)
            arr = ((arr.astype(np.uint32) + 128) // 257 if arr.dtype.kind == "u"
                   else np.rint(arr.astype(np.float32) / np.float32(257.0)))
        arr = np.clip(arr, 0, 255).astype(np.uint8)
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
