"""The intra-RoI pairs (p, p') Stage 3 plans, on real proposals of coco-mini, in each jitter mode.

Selective search + the ORL filter (paper defaults) on the first ``--images`` coco-mini images
give the kept boxes; the sample builder plans ``--epochs`` samples per image with the intra-RoI
term on, and the statistics of its pairs are printed for the four combinations of
``orl.jitter_both`` and ``orl.jitter_outside``: median IoU(p, p'), the fraction of pairs at IoU
<= 0.5, the fraction of p' touching the image border, the fraction of p' that are a kept box
itself (no candidate qualified)::

    python benchmarks/jitter_stats.py --images 100 --epochs 100 --json jitter.json

``--official-orl FILE`` (``openselfsup/datasets/orl.py`` of a checkout of the official ORL code)
also runs that file's own ``get_iou`` and ``aug_bbox``, unchanged, on the same kept boxes (p a
uniform kept box, p' = ``aug_bbox(p)``, Python's ``random`` seeded with 0), for a like-for-like
reference. Only those two functions are loaded from the file (by its syntax tree), so the rest
of the official package need not be installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import time

import numpy as np
from bench_common import OUT, coco_shards, machine
from support.orl import intra_pair_statistics, proposal_records
from support.synthetic_pairs import write_pairs

from loaders.orl_samples import SampleBuilder
from orl_fast.core.config import load_config

MODES = {
    "official (p kept, p' jittered, outside rejected)": [],
    "both jittered, outside rejected": ["orl.jitter_both=true"],
    "p kept, outside clipped": ["orl.jitter_outside=clip"],
    "both jittered, outside clipped": ["orl.jitter_both=true", "orl.jitter_outside=clip"],
}


def official_statistics(path: str, records, draws: int) -> dict:
    """The official ``aug_bbox`` on the records' kept boxes, ``draws`` pairs per image."""
    namespace = {"math": math, "random": random}
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("get_iou", "aug_bbox"):
            # the reference measurement runs the official functions themselves, on request
            exec(compile(ast.Module([node], []), path, "exec"), namespace)  # noqa: S102

    class Image:  # what aug_bbox reads of a PIL image
        def __init__(self, w, h):
            self.size = (w, h)

    random.seed(0)
    ious, border, fallback = [], [], []
    for r in records:
        boxes, img = [list(map(int, b)) for b in r.boxes], Image(r.width, r.height)
        for _ in range(draws):
            p = random.choice(boxes)
            q = namespace["aug_bbox"](img, p, (-0.5, 0.5), (0.5, 2.0), (0.5, 2.0), 0.5, 200)
            ious.append(namespace["get_iou"](p, q))
            border.append(q[0] <= 0 or q[1] <= 0 or q[0] + q[2] >= r.width
                          or q[1] + q[3] >= r.height)
            fallback.append(q is p)
    ious = np.asarray(ious)
    return {"pairs": len(ious), "median_iou": float(np.median(ious)),
            "frac_iou_le_half": float((ious <= 0.5).mean()),
            "frac_border": float(np.mean(border)), "frac_fallback": float(np.mean(fallback))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=100, help="pairs planned per image")
    ap.add_argument("--official-orl", help="openselfsup/datasets/orl.py of the official code")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    shards = coco_shards(args.images, 32)
    t0 = time.perf_counter()
    records = proposal_records(shards, args.images)
    seconds = time.perf_counter() - t0
    mined = OUT / f"jitter-proposals-{args.images}"
    write_pairs(str(mined), records)
    result = {**machine(), "images": args.images, "kept_boxes": int(sum(len(r.boxes)
                                                                      for r in records)),
              "proposal_seconds": round(seconds, 1), "modes": {}}
    for name, overrides in MODES.items():
        cfg = load_config("paper", [f"data={shards}", f"pairs={mined}",
                                    "orl.loss_weights=[1,1,0]", *overrides])
        stats = intra_pair_statistics(SampleBuilder(cfg), range(args.images), args.epochs)
        result["modes"][name] = stats
    if args.official_orl:
        result["modes"]["official code (aug_bbox, run unchanged)"] = official_statistics(
            args.official_orl, records, args.epochs)
    print(f"{result['images']} images, {result['kept_boxes']} kept boxes "
          f"({result['proposal_seconds']} s of selective search)")
    print("| mode | pairs | median IoU(p, p') | IoU <= 0.5 | p' touching the border | "
          "p' = the kept box |\n|---|---|---|---|---|---|")
    for name, s in result["modes"].items():
        print(f"| {name} | {s['pairs']} | {s['median_iou']:.3f} | "
              f"{100 * s['frac_iou_le_half']:.1f}% | {100 * s['frac_border']:.1f}% | "
              f"{100 * s['frac_fallback']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
