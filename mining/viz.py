"""``orl-fast viz pairs``: mined inter-RoI pairs as a person reads them (paper Fig. 3), HTML + PNG.

Candidates are the best-scoring RoI pair of each image pair ((a, b) and (b, a) count once), the
``CANDIDATES x top`` highest of the run, found in one streaming pass with a bounded heap. The
pairs shown come from several categories rather than the top scores of one: with ground truth
(``gt``, COCO instances) round-robin over the category of the query box (pairs on no object
last), without it round-robin over groups of similar images (k-means of the Stage 1 image
embeddings); each group's best first, no image twice while others are left.

Each pair is drawn as the query and the neighbour image side by side with the two boxes outlined
in one colour, under them the image file names and the score; with ground truth also every
ground-truth box (thin, labelled with its category), the category each pair box matches, and on
every page the run's pair purity against random pairs of the same boxes, with a plain warning
when it is no better. Pages of ``per_page`` pairs become ``pairs-NN.png``; ``index.html`` shows
them with a table of the pairs. ``out_dir`` may be a local path or any fsspec URL.
"""

from __future__ import annotations

import heapq
import html
import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from loaders.drawing import font, label, outline, sheet, short_name, text_block
from loaders.images import decode_array
from loaders.shards import ShardIndex
from mining.arrays import load_arrays
from mining.manifest import DIRS, FILES, data_of, iter_records, shard_id
from mining.purity import GroundTruth, pair_purity, summary_line, warning
from orl_fast.core import storage

TILE = 200          # image height in a pair cell
CELL = (2 * 280 + 8, TILE + 72)  # cell: two images of up to 1.4:1 side by side, captions under
COLS = 2
CANDIDATES = 8      # candidate image pairs per pair shown
GROUPS = 8          # k-means groups of images without ground truth
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (0, 170, 170), (240, 50, 230), (128, 128, 0)]
GT_COLOUR = (255, 255, 255)
NO_OBJECT = "no object"


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


def spread(pairs: list[TopPair], groups: list[str], top: int) -> list[tuple[TopPair, str]]:
    """``top`` of ``pairs`` (best first) taken round-robin over their ``groups``, the groups in
    order of their best pair (``NO_OBJECT`` last); a pair whose images were shown already waits
    until no other is left."""
    by_group: dict[str, list[TopPair]] = defaultdict(list)
    for p, g in sorted(zip(pairs, groups), key=lambda x: x[0], reverse=True):
        by_group[g].append(p)
    order = sorted(by_group, key=lambda g: (g == NO_OBJECT, -by_group[g][0].score))
    chosen: list[tuple[TopPair, str]] = []
    shown: set[int] = set()
    for allow_repeats in (False, True):
        progress = True
        while len(chosen) < top and progress:
            progress = False
            for g in order:
                queue = by_group[g]
                for i, p in enumerate(queue):
                    if allow_repeats or not ({p.query, p.neighbor} & shown):
                        chosen.append((queue.pop(i), g))
                        shown |= {p.query, p.neighbor}
                        progress = True
                        break
                if len(chosen) == top:
                    break
    return chosen


def _gt_groups(pairs: list[TopPair], gt: GroundTruth) -> list[str]:
    """The ground-truth category the query box of each pair matches (``NO_OBJECT`` if none)."""
    return [gt.category_of(p.query, p.query_box) or NO_OBJECT for p in pairs]


def _embedding_groups(pairs: list[TopPair], mined: str, index: ShardIndex) -> list[str]:
    """Groups of similar query images: k-means (cosine, seeded) of their Stage 1 embeddings;
    one group when the run has no embeddings (e.g. imported official pairs)."""
    keys = sorted({p.query for p in pairs})
    sids = {k: shard_id(index.shard_names[index.find(k)[0]]) for k in keys}
    emb: dict[int, np.ndarray] = {}
    for sid in sorted(set(sids.values())):
        url = storage.join(mined, DIRS["embed"], FILES["embed"].format(sid))
        if not storage.exists(url):
            return ["all"] * len(pairs)
        arrays = load_arrays(url)
        row = {int(k): i for i, k in enumerate(arrays["keys"])}
        for k in keys:
            if sids[k] == sid and k in row:
                emb[k] = arrays["emb"][row[k]].astype(np.float32)
    if len(emb) < 2:
        return ["all"] * len(pairs)
    names = sorted(emb)
    x = np.stack([emb[k] for k in names])
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    assign = kmeans(x, min(GROUPS, len(names)))
    group = {k: f"group {a + 1}" for k, a in zip(names, assign)}
    return [group.get(p.query, "all") for p in pairs]


def kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """Spherical k-means of the rows of ``x`` (unit vectors), farthest-point initialisation."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        centres.append(x[int(np.argmin(np.max(x @ np.stack(centres).T, axis=1)))])
    c = np.stack(centres)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0) / (np.linalg.norm(members.mean(0)) + 1e-12)
    return np.argmax(x @ c.T, axis=1)


class _Images:
    """Decoded images and their file names, from the shards."""

    def __init__(self, data: str):
        self.index = ShardIndex(data)

    def pixels(self, key: int) -> np.ndarray:
        return decode_array(self.index.data(key))

    def name(self, key: int) -> str:
        return short_name(str(self.index.meta(key).get("source", key)), 34)

    def close(self) -> None:
        self.index.close()


def _tile(image: np.ndarray, box: tuple[int, int, int, int], colour,
          gt: list[tuple[tuple, str]]) -> Image.Image:
    img = Image.fromarray(image)
    scale = TILE / img.height
    width = min(CELL[0] // 2 - 4, max(1, round(img.width * scale)))
    img = img.resize((width, TILE), Image.BILINEAR)
    sx, sy = width / image.shape[1], scale
    draw = ImageDraw.Draw(img)
    for (x, y, w, h), name in gt:  # ground truth: thin, labelled
        outline(draw, (x * sx, y * sy, w * sx, h * sy), (0, 0, 0), 1)
        outline(draw, (x * sx - 1, y * sy - 1, w * sx + 2, h * sy + 2), GT_COLOUR, 1)
        label(draw, (x * sx + 2, y * sy + 1), name, 11, fill=(0, 0, 0), backdrop=GT_COLOUR)
    x, y, w, h = box
    outline(draw, (x * sx, y * sy, w * sx, h * sy), colour, 3)
    return img


def _cell(images: _Images, pair: TopPair, rank: int, group: str,
          gt: GroundTruth | None) -> Image.Image:
    colour = COLOURS[rank % len(COLOURS)]
    gt_q = gt.named_boxes(pair.query) if gt else []
    gt_n = gt.named_boxes(pair.neighbor) if gt else []
    left = _tile(images.pixels(pair.query), pair.query_box, colour, gt_q)
    right = _tile(images.pixels(pair.neighbor), pair.neighbor_box, colour, gt_n)
    cell = Image.new("RGB", CELL, "white")
    half = CELL[0] // 2
    cell.paste(left, (half - 4 - left.width, 0))
    cell.paste(right, (half + 4, 0))
    draw = ImageDraw.Draw(cell)
    draw.rectangle([0, TILE + 4, 6, TILE + 20], fill=colour)
    draw.text((12, TILE + 3), f"#{rank + 1}   score {pair.score:.3f}   {group}", font=font(15),
              fill=(0, 0, 0))
    draw.text((12, TILE + 24), f"{images.name(pair.query)}  <->  {images.name(pair.neighbor)}",
              font=font(13), fill=(60, 60, 60))
    if gt is not None:
        a = gt.category_of(pair.query, pair.query_box) or NO_OBJECT
        b = gt.category_of(pair.neighbor, pair.neighbor_box) or NO_OBJECT
        same = a == b and a != NO_OBJECT
        draw.text((12, TILE + 44), f"boxes on: {a} / {b}" + ("  (same category)" if same
                                                              else "  (not one category)"),
                  font=font(13), fill=(0, 120, 0) if same else (170, 0, 0))
    return cell


def render_pairs(mined: str, out_dir: str, data: str | None = None, top: int = 48,
                 per_page: int = 16, gt: str | None = None) -> dict:
    """Write ``pairs-NN.png`` pages and ``index.html`` under ``out_dir`` (a path or URL); with
    ``gt`` (COCO instances json) also ground-truth boxes and the pair purity. Returns the
    files written, the pairs shown and the purity (or None)."""
    data = data or data_of(mined)
    candidates = top_pairs(mined, CANDIDATES * top)
    truth = GroundTruth(gt, data) if gt else None
    purity = pair_purity(mined, gt, data) if gt else None
    images = _Images(data)
    if truth is not None:
        groups = _gt_groups(candidates, truth)
        by = "the ground-truth category of the query box"
    else:
        groups = _embedding_groups(candidates, mined, images.index)
        by = "groups of similar images (k-means of the Stage 1 image embeddings)"
    shown = spread(candidates, groups, top)
    storage.makedirs(out_dir)
    header = _header(mined, purity, len(shown), by)
    pngs = []
    pages = max(1, -(-len(shown) // per_page)) if shown else 0
    for page, start in enumerate(range(0, len(shown), per_page)):
        cells = [_cell(images, p, start + i, g, truth)
                 for i, (p, g) in enumerate(shown[start:start + per_page])]
        rows = [cells[i:i + COLS] for i in range(0, len(cells), COLS)]
        title = [(f"page {page + 1} of {pages}", (90, 90, 90))]
        page_header = text_block(header + title, 16, COLS * (CELL[0] + 8))
        name = f"pairs-{page:02d}.png"
        buf = io.BytesIO()
        sheet(rows, CELL[0], header=page_header).save(buf, format="PNG")
        storage.atomic_write(storage.join(out_dir, name), buf.getvalue())
        pngs.append(name)
    rows_html = "\n".join(
        f"<tr><td>{i + 1}</td><td>{p.score:.4f}</td><td>{html.escape(g)}</td>"
        f"<td>{html.escape(images.name(p.query))}</td><td>{p.query_box}</td>"
        f"<td>{html.escape(images.name(p.neighbor))}</td><td>{p.neighbor_box}</td></tr>"
        for i, (p, g) in enumerate(shown))
    images.close()
    lines = "".join(f"<p{' class=warn' if c == WARN else ''}>{html.escape(t)}</p>"
                    for t, c in header)
    page_html = (
        "<!doctype html><meta charset='utf-8'><title>ORL mined pairs</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px}"
        ".warn{color:#a00;font-weight:bold}</style>"
        f"<h1>{len(shown)} mined inter-RoI pairs</h1>{lines}"
        "<p>Each pair: the query image (left) and its neighbour (right), the mined RoI pair "
        "outlined in one colour; boxes are xywh in original pixels"
        + ("; thin white boxes: ground truth, labelled with their category" if gt else "")
        + ".</p>" + "".join(f"<p><img src='{n}'></p>" for n in pngs)
        + "<table><tr><th>#</th><th>score</th><th>group</th><th>query</th><th>query box</th>"
          f"<th>neighbour</th><th>neighbour box</th></tr>{rows_html}</table>")
    storage.atomic_write(storage.join(out_dir, "index.html"), page_html.encode())
    return {"html": storage.join(out_dir, "index.html"),
            "pngs": [storage.join(out_dir, n) for n in pngs], "pairs": len(shown),
            "purity": purity}


WARN = (170, 0, 0)


def _header(mined: str, purity: dict | None, shown: int, by: str) -> list[tuple[str, tuple]]:
    """The lines above every page: what is shown, and the purity (a warning when it is no
    better than random pairs)."""
    what = (f"{mined}: {shown} image pairs, their best-scoring RoI pair each, round-robin over "
            f"{by}")
    lines = [(what, (0, 0, 0))]
    if purity is not None:
        lines.append((summary_line(purity, with_warning=False), (0, 0, 0)))
        if warning(purity):
            lines.append((warning(purity), WARN))
    return lines
