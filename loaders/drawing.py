"""Drawing for the figures people read (mined pairs, attention maps): a scalable font, labels
on a backdrop, box outlines, short file names, images laid out on a white sheet.

The font is Pillow's own (``ImageFont.load_default(size=...)``, Pillow >= 10.1: a scalable
FreeType font shipped with Pillow, no font file needed).
"""

from __future__ import annotations

import functools

from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (its fixed 11 px bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int,
          fill: Colour = (255, 255, 255), backdrop: Colour | None = (0, 0, 0)) -> None:
    """``text`` with its top-left corner at ``xy``, on a filled box when ``backdrop`` is given
    (readable over any image)."""
    f = font(size)
    if backdrop is not None:
        x0, y0, x1, y1 = draw.textbbox(xy, text, font=f)
        draw.rectangle([x0 - 2, y0 - 1, x1 + 2, y1 + 1], fill=backdrop)
    draw.text(xy, text, font=f, fill=fill)


def outline(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], colour: Colour,
            width: int) -> None:
    """An xywh box outlined ``width`` pixels thick, outside the box."""
    x, y, w, h = box
    for i in range(width):
        draw.rectangle([x - i, y - i, x + w + i, y + h + i], outline=colour)


def short_name(name: str, limit: int = 40) -> str:
    """The file's base name, cut in the middle to ``limit`` characters."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if len(base) <= limit:
        return base
    keep = (limit - 1) // 2
    return f"{base[:keep]}…{base[-(limit - 1 - keep):]}"


def sheet(tiles: list[list[Image.Image]], column: int, gap: int = 8,
          header: Image.Image | None = None) -> Image.Image:
    """Rows of tiles on white, each tile centred in its ``column``-pixel-wide column and its row
    (as tall as its tallest tile), so columns stay aligned whatever the tiles' sizes; ``header``
    above the rows."""
    cols = max((len(r) for r in tiles), default=1)
    heights = [max(t.height for t in row) for row in tiles]
    top = header.height + gap if header is not None else 0
    out = Image.new("RGB", (cols * column + (cols + 1) * gap,
                            top + sum(heights) + (len(tiles) + 1) * gap), "white")
    if header is not None:
        out.paste(header, (gap, gap // 2))
    y = top + gap
    for row, height in zip(tiles, heights):
        for c, tile in enumerate(row):
            out.paste(tile, (gap + c * (column + gap) + (column - tile.width) // 2,
                             y + (height - tile.height) // 2))
        y += height + gap
    return out


def text_block(lines: list[tuple[str, Colour]], size: int, width: int,
               centre: bool = False) -> Image.Image:
    """Lines of text (each with its colour) on white, ``width`` wide, wrapped at spaces; each
    line centred with ``centre``."""
    f = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped: list[tuple[str, Colour]] = []
    for text, colour in lines:
        line = ""
        for word in text.split(" "):
            if line and probe.textlength(f"{line} {word}", font=f) > width:
                wrapped.append((line, colour))
                line = word
            else:
                line = f"{line} {word}" if line else word
        wrapped.append((line, colour))
    step = int(size * 1.35)
    out = Image.new("RGB", (width, step * len(wrapped) + 4), "white")
    draw = ImageDraw.Draw(out)
    for i, (text, colour) in enumerate(wrapped):
        x = max(0, (width - draw.textlength(text, font=f)) / 2) if centre else 0
        draw.text((x, 2 + i * step), text, font=f, fill=colour)
    return out
