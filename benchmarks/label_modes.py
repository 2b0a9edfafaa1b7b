"""Do labels help, and do they damage transfer to unseen classes? ORL vs ORL+OPERA vs ORL+SCAN vs
a supervised baseline, on the generated world of benchmarks/learning.py.

One seed, the learning protocol's helpers (its world, Stage 1, mining, Stage 3, object probe):

    Stage 1   BYOL for E1 epochs (shared by the ORL arms)                stage1/
    Stage 2   mining with the Stage 1 model; per label set, the same with SCAN's label gate
              (embeddings, proposals, RoI embeddings kept; kNN and pairs redone)
    arms      Stage 3 for E3 epochs from Stage 1, loss weights (1, 1, 1):
              orl (no labels), opera (label.mode=opera), scan (label.mode=scan, gated pairs);
              supervised: Stage 1's data path from scratch for E1 + E3 epochs with the class loss
              alone (label.mode=opera, label.self_weight=0)

Label sets, from the world's COCO instances (scene tags, box labels): ``all`` (every image),
``20%`` (a seeded fifth of the images; the others unlabelled), ``held-out`` (every image, the
annotations of two of the eight categories removed: six-class vocabulary). Every final
checkpoint is probed with the object-level probe on all eight categories and on the two held-out
ones alone (a two-way probe: what the labels never named).

    python benchmarks/label_modes.py --out benchmarks/out/label-modes     # CPU, small
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import machine
from learning import (
    DATA_SEED,
    TEST_SEED,
    Recipe,
    checkpoints,
    mine,
    train_stage1,
    train_stage3,
    world_data,
    world_probe,
)

from evaluation import backbones, objects
from loaders.labels import attach
from orl_fast.core.config import load_config

HELD_OUT = ("star", "hexagon")
LABEL_SETS = ("all", "20%", "held-out")


@dataclasses.dataclass
class GatedRecipe(Recipe):
    """A recipe whose mining also applies SCAN's label gate (more overrides for Stage 2)."""

    mine_extra: list[str] = dataclasses.field(default_factory=list)

    def mine_overrides(self) -> list[str]:
        return [*super().mine_overrides(), *self.mine_extra]


def label_files(instances: str, out: Path, seed: int) -> dict[str, str]:
    """The three COCO files of the label sets."""
    coco = json.loads(Path(instances).read_text())
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [im["id"] for im in coco["images"]]
    keep = set(rng.permutation(ids)[:round(0.2 * len(ids))].tolist())
    held = {c["id"] for c in coco["categories"] if c["name"] in HELD_OUT}
    sets = {
        "all": coco,
        "20%": {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]},
        "held-out": {**coco, "categories": [c for c in coco["categories"] if c["id"] not in held],
                     "annotations": [a for a in coco["annotations"]
                                     if a["category_id"] not in held]},
    }
    paths = {}
    for name, data in sets.items():
        path = out / f"instances-{name.replace('%', 'pct')}.json"
        path.write_text(json.dumps(data))
        paths[name] = str(path)
    return paths


def held_out_part(objs: objects.Objects) -> objects.Objects:
    """The objects of the held-out categories, relabelled 0..1."""
    cols = [objs.classes.index(c) for c in HELD_OUT]
    index = np.flatnonzero(np.isin(objs.labels, cols))
    sub = objs.subset(index)
    remap = {c: i for i, c in enumerate(cols)}
    return objects.Objects(sub.crops, np.array([remap[int(y)] for y in sub.labels]),
                           sub.images, HELD_OUT)


def gated_mining(recipe: Recipe, shards: str, stage1: Path, plain: Path, out: Path,
                 store: str, gt: str) -> dict:
    """SCAN's Stage 2 with ``store``: a copy of the plain mining (its model-independent and
    model units are reused: same hashes), then the gated kNN and pairs."""
    if not (out / "summary.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(plain, out, ignore=shutil.ignore_patterns("summary.json"))
    gated = GatedRecipe(**vars(recipe), mine_extra=["label.mode=scan",
                                                    f"label.source={store}"])
    return mine(gated, shards, str(stage1), out, gt)


def markdown(header: str, rows: dict, purity: dict) -> str:
    head = ("| weights | kNN, 8 classes (%) | linear, 8 classes (%) | kNN, 2 held-out (%) | "
            "linear, 2 held-out (%) |")
    lines = [header, "", head, "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['all']['knn']:.1f} | {r['all']['linear']:.1f} | "
                     f"{r['held-out']['knn']:.1f} | {r['held-out']['linear']:.1f} |")
    lines += ["", "| mining | pair purity | kept boxes on objects |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['pair_purity']:.3f} | {v['box_gt_match']:.3f} |"
              for k, v in purity.items()]
    return "\n".join(lines) + "\n"


def final(run: Path) -> str:
    return checkpoints(run)[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--probe-scenes", type=int, default=300)
    ap.add_argument("--e1", type=int, default=12)
    ap.add_argument("--e3", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--class-weight", type=float, default=0.5)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    recipe = Recipe(e1=args.e1, e3=args.e3, batch=args.batch, workers=args.workers,
                    device=args.device, ckpt_every=10_000, extra=["train.keep_last=1"])
    ec = load_config("paper", [f"eval.device={args.device}", "eval.knn.k=20",
                               "eval.linear.epochs=100", "eval.batch_size=256"]).eval
    shards, instances = world_data(out, args.images)
    files = label_files(instances, out / "labels", args.seed)
    stores = {}
    for name, path in files.items():
        stores[name] = str(out / "labels" / f"store-{name.replace('%', 'pct')}.npz")
        header = attach(shards, path, out=stores[name])
        print(f"[labels] {name}: {header['labelled']} of {header['images']} images, "
              f"{len(header['classes'])} classes", flush=True)
    train, test = world_probe(TEST_SEED, args.probe_scenes, recipe.crop)
    probes = {"all": (train, test), "held-out": (held_out_part(train), held_out_part(test))}

    def score(weights) -> dict:
        return {name: objects.evaluate(weights, *objs, ec) for name, objs in probes.items()}

    seconds: dict[str, float] = {}
    rows: dict[str, dict] = {}
    t = time.time()
    s1 = out / "stage1"
    train_stage1(recipe, shards, s1, args.seed)
    seconds["stage1"] = time.time() - t
    rows["random init"] = score(backbones.random_init(recipe.backbone, args.seed, recipe.stem,
                                                      recipe.init))
    rows["BYOL (Stage 1)"] = score(backbones.load(final(s1)))
    t = time.time()
    mined = out / "mined"
    purity = {"plain": mine(recipe, shards, str(s1), mined, instances)}
    for name in LABEL_SETS:
        purity[name] = gated_mining(recipe, shards, s1, mined, out / f"mined-scan-{name}",
                                    stores[name], instances)
    seconds["mining"] = time.time() - t

    def arm(label: str, run: Path, extra: list[str], mined_dir: Path, supervised: bool = False):
        t = time.time()
        r = dataclasses.replace(recipe, extra=[*recipe.extra, *extra])
        if supervised:
            train_stage1(dataclasses.replace(r, e1=recipe.e1 + recipe.e3), shards, run,
                         args.seed)
        else:
            train_stage3(r, shards, str(mined_dir), s1, run, args.seed, "[1,1,1]")
        seconds[label] = time.time() - t
        rows[label] = score(backbones.load(final(run)))
        print(f"[label-modes] {label}: {json.dumps({k: round(v['knn'], 1) for k, v in rows[label].items()})}"
              f" ({seconds[label]:.0f} s)", flush=True)

    arm("ORL", out / "orl", [], mined)
    for name in LABEL_SETS:
        tag = name.replace("%", "pct")
        source = [f"label.source={stores[name]}", f"label.class_weight={args.class_weight}"]
        arm(f"ORL+OPERA, labels {name}", out / f"opera-{tag}", ["label.mode=opera", *source],
            mined)
        arm(f"ORL+SCAN, labels {name}", out / f"scan-{tag}", ["label.mode=scan", *source],
            out / f"mined-scan-{name}")
        arm(f"supervised, labels {name}", out / f"supervised-{tag}",
            ["label.mode=opera", "label.self_weight=0", "label.class_weight=1",
             f"label.source={stores[name]}"], mined, supervised=True)

    m = machine()
    header = (f"generated world, {args.images} scenes (seed {DATA_SEED}), probe scenes "
              f"{args.probe_scenes} (seed {TEST_SEED}); {m['date']}, {m['machine']}, torch "
              f"{m['torch']}; resnet18, {recipe.crop} px views / {recipe.patch} px patches, batch "
              f"{recipe.batch}, E1 {recipe.e1}, E3 {recipe.e3}, seed {args.seed}; held-out "
              f"categories {', '.join(HELD_OUT)}; {time.time() - t0:.0f} s in all")
    md = markdown(header, rows, purity)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({**m, "args": vars(args), "rows": rows,
                                                  "purity": purity, "seconds": seconds},
                                                 indent=1, default=float))
    print(md)


if __name__ == "__main__":
    main()
