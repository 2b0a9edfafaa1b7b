"""``orl-fast viz pairs``: the top-scoring mined inter-RoI pairs (paper Fig. 3), HTML + PNG.

One pair per image pair (its best-scoring RoI pair; (a, b) and (b, a) count once), the ``top``
highest over the whole run, found in one streaming pass with a bounded heap. Each pair is drawn
as the query image and the neighbour image side by side with the two boxes outlined; pages of
``per_page`` pairs become ``pairs-NN.png`` and ``index.html`` lists them with keys, boxes and
scores.
"""

from __future__ import annotations

import heapq
import html
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from loaders.images import decode_array
from loaders.shards import ShardIndex
from mining.manifest import data_of, iter_records

TILE = 176          # image height in a pair cell
CELL_W = 2 * 236    # cell width: two images of up to 4:3 side by side
COLS = 2
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60)]


@dataclass(order=True)
class TopPair:
    score: float
    query: int
    neighbor: int
    query_box: tuple[int, int, int, int]
    neighbor_box: tuple[int, int, int, int]


def top_pairs(mined: str, top: int) -> list[TopPair]:
    """The ``top`` best image pairs by their best RoI pair score, highest first."""
    heap: list[TopPair] = []
    seen: set[tuple[int, int]] = set()
    for rec in iter_records(mined):
        for slot, nkey in enumerate(rec.neighbors):
            p = rec.pairs_of(slot)
            pair_id = (min(rec.key, int(nkey)), max(rec.key, int(nkey)))
            if len(p) == 0 or pair_id in seen:
                continue
            best = p[int(np.argmax(rec.pair_score[p]))]
            item = TopPair(float(rec.pair_score[best]), rec.key, int(nkey),
                           tuple(map(int, rec.pair_query_box[best])),
                           tuple(map(int, rec.pair_neighbor_box[best])))
            if len(heap) < top:
                heapq.heappush(heap, item)
                seen.add(pair_id)
            elif item > heap[0]:
                old = heapq.heapreplace(heap, item)
                seen.discard((min(old.query, old.neighbor), max(old.query, old.neighbor)))
                seen.add(pair_id)
    return sorted(heap, reverse=True)


def _tile(image: np.ndarray, box: tuple[int, int, int, int], colour) -> Image.Image:
    img = Image.fromarray(image)
    scale = TILE / img.height
    img = img.resize((max(1, round(img.width * scale)), TILE), Image.BILINEAR)
    x, y, w, h = (v * scale for v in box)
    draw = ImageDraw.Draw(img)
    for i in range(3):
        draw.rectangle([x - i, y - i, x + w + i, y + h + i], outline=colour)
    return img


def _cell(index: ShardIndex, pair: TopPair, rank: int) -> Image.Image:
    colour = COLOURS[rank % len(COLOURS)]
    left = _tile(decode_array(index.data(pair.query)), pair.query_box, colour)
    right = _tile(decode_array(index.data(pair.neighbor)), pair.neighbor_box, colour)
    cell = Image.new("RGB", (CELL_W, TILE + 20), (255, 255, 255))
    half = CELL_W // 2
    cell.paste(left.crop((0, 0, min(left.width, half - 4), TILE)), (0, 0))
    cell.paste(right.crop((0, 0, min(right.width, half - 4), TILE)), (half, 0))
    ImageDraw.Draw(cell).text(
        (4, TILE + 4), f"#{rank + 1}  {pair.query} - {pair.neighbor}  score {pair.score:.3f}",
        fill=(0, 0, 0))
    return cell


def render_pairs(mined: str, out_dir: str, data: str | None = None, top: int = 48,
                 per_page: int = 16) -> dict:
    """Write ``pairs-NN.png`` pages and ``index.html`` under ``out_dir``; returns their paths."""
    pairs = top_pairs(mined, top)
    index = ShardIndex(data or data_of(mined))
    os.makedirs(out_dir, exist_ok=True)
    pngs = []
    for page, start in enumerate(range(0, len(pairs), per_page)):
        cells = [_cell(index, p, start + i) for i, p in enumerate(pairs[start:start + per_page])]
        rows = (len(cells) + COLS - 1) // COLS
        sheet = Image.new("RGB", (COLS * (CELL_W + 8), rows * (TILE + 28)), (255, 255, 255))
        for i, c in enumerate(cells):
            sheet.paste(c, ((i % COLS) * (CELL_W + 8), (i // COLS) * (TILE + 28)))
        name = f"pairs-{page:02d}.png"
        sheet.save(os.path.join(out_dir, name))
        pngs.append(name)
    index.close()
    rows_html = "\n".join(
        f"<tr><td>{i + 1}</td><td>{p.score:.4f}</td><td>{p.query}</td><td>{p.query_box}</td>"
        f"<td>{p.neighbor}</td><td>{p.neighbor_box}</td></tr>" for i, p in enumerate(pairs))
    page_html = (
        "<!doctype html><meta charset='utf-8'><title>ORL mined pairs</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px}</style>"
        f"<h1>Top {len(pairs)} mined inter-RoI pairs</h1>"
        f"<p>{html.escape(mined)}: the best-scoring RoI pair of each image pair, boxes (xywh, "
        "original pixels) outlined in the query (left) and neighbour (right).</p>"
        + "".join(f"<p><img src='{n}'></p>" for n in pngs)
        + "<table><tr><th>#</th><th>score</th><th>query</th><th>query box</th>"
          f"<th>neighbour</th><th>neighbour box</th></tr>{rows_html}</table>")
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(page_html)
    return {"html": os.path.join(out_dir, "index.html"),
            "pngs": [os.path.join(out_dir, n) for n in pngs], "pairs": len(pairs)}
