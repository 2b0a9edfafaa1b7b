"""Mining again with another model: the whole of Stage 2 vs taking the proposals of an earlier
mining (``mine.proposals_from``), the same images, settings and model, in one run.

Generated scenes (the learning protocol's world and mining settings: ResNet-18, 64 px embeddings
and RoIs, proposals of at least 21 px on the full-size 160 x 120 scenes) are mined twice with a
random-init Stage 1: into A from nothing, then into B taking A's proposals. Prints both wall
times, the ratio, and whether B's outputs are byte-identical to A's.

    python benchmarks/mining_reuse.py [--images 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time

from bench_common import OUT, machine, random_stage1

from loaders.ingest import ingest
from loaders.synthetic import write_scenes
from mining import pipeline
from orl_fast.core.config import load_config

MODEL = ["model.backbone=resnet18", "aug.crop_size=64"]
MINE = ["mine.embed_size=64", "mine.roi_size=64", "mine.batch_size=256", "mine.ss_max_side=0",
        "mine.min_box_size=21"]
OUTPUTS = ("embeddings", "knn", "proposals", "roi_embed", "pairs")


def digests(mined) -> dict[str, str]:
    return {str(p.relative_to(mined)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in OUTPUTS for p in sorted((mined / d).iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    root = OUT / f"mining-reuse-{args.images}"
    shards = root / "shards"
    if not (shards / "index.json").exists():
        src = write_scenes(str(root / "scenes"), args.images, seed=0)
        ingest(src, str(shards), load_config("small", [
            f"ingest.shard_size={max(64, args.images // 8)}"]).ingest, progress=False)
    ckpt = random_stage1("small", MODEL, "resnet18-64")
    seconds = {}
    for name, extra in (("A", []), ("B", [f"mine.proposals_from={root / 'A'}"])):
        shutil.rmtree(root / name, ignore_errors=True)
        cfg = load_config("small", [*MODEL, *MINE, f"data={shards}", f"ckpt={ckpt}",
                                    f"out={root / name}", *extra])
        t = time.time()
        pipeline.run(cfg, progress=False)
        seconds[name] = time.time() - t
        print(f"[reuse] {name}: {seconds[name]:.1f} s", flush=True)
    same = digests(root / "A") == digests(root / "B")
    m = machine()
    result = {**m, "images": args.images, "seconds": seconds, "identical_outputs": same}
    (root / "result.json").write_text(json.dumps(result, indent=1))
    print(f"{m['date']}, {m['machine']}, torch {m['torch']}; {args.images} scenes")
    print(f"whole mining {seconds['A']:.1f} s; taking the proposals {seconds['B']:.1f} s: "
          f"{seconds['A'] / seconds['B']:.2f}x faster; outputs identical: {same}")


if __name__ == "__main__":
    main()
