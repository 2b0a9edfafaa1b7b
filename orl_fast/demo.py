"""``orl-fast demo``: the whole pipeline, small, on generated scenes (no downloads, CPU, minutes).

The scenes come from the project's generated world (:mod:`loaders.synthetic`): cluttered
multi-object scenes in which an object's category is its shape and texture, never its colour.
The demo generates them, ingests them into shards, trains Stage 1 (BYOL), mines RoI pairs with
it on a local Ray (scored against the scenes' ground truth), trains Stage 3 (ORL: image +
intra-RoI + inter-RoI) from the Stage 1 weights, and probes the backbones of random
initialisation, Stage 1 and Stage 3 with the object-level probe (:mod:`evaluation.objects`: crops
of the objects of other, unseen scenes, classified by category). It keeps only the last
checkpoint of each stage.

The recipe is the CPU recipe of the learning protocol (``benchmarks/learning.py``, results in
``benchmarks/RESULTS.md``) at a fraction of its compute; what its numbers can and cannot say is
printed with them.
"""

from __future__ import annotations

import os
import time

from evaluation import backbones, objects
from loaders.ingest import ingest
from loaders.synthetic import write_scenes
from mining import pipeline
from mining.purity import pair_purity
from orl_fast.core.config import load_config
from orl_fast.training import stage1, stage3

# The learning protocol's CPU recipe (benchmarks/learning.py): ResNet-18, 64 px views and 32 px
# patches of 160 x 120 scenes; crops of at least a quarter of the scene and strong colour
# jitter, so two views share objects rather than only the scene's colours.
RECIPE = [
    "model.backbone=resnet18", "aug.crop_size=64", "orl.patch_size=32",
    "aug.crop_scale=[0.25,1.0]", "aug.color_jitter=[0.8,0.8,0.8,0.2]", "train.batch_size=64",
    "train.precision=bf16", "train.num_workers=2", "train.keep_last=1",
    "train.ckpt_every_steps=100000", "train.log_every_steps=10",
]
MINE = ["mine.embed_size=64", "mine.roi_size=64", "mine.ss_max_side=0", "mine.min_box_size=21"]
PROBE_SEED, PROBE_SCENES = 1, 300  # the probe's scenes: another seed than the training scenes


def run(out: str, num_images: int = 256, epochs: int = 8) -> dict[str, str]:
    t0 = time.time()
    out = os.path.abspath(out)
    print(f"[demo] generating {num_images} scenes (160 x 120, 2-5 objects each, 8 categories "
          "told apart by shape and texture, one random hue per scene)")
    images = write_scenes(os.path.join(out, "scenes"), num_images)
    instances = os.path.join(out, "scenes", "instances.json")
    shards = os.path.join(out, "shards")
    report = ingest(images, shards, load_config("small", [
        f"ingest.shard_size={max(32, num_images // 4)}"]).ingest, progress=False)
    print(f"[demo] ingest: {report['written']} images in shards, "
          f"{report['skipped_images']} skipped")

    print(f"[demo] stage 1: BYOL, {epochs} epochs")
    s1 = os.path.join(out, "stage1")
    ckpt = stage1.run(load_config("small", [*RECIPE, f"data={shards}", f"out={s1}",
                                            f"train.epochs={epochs}"]))
    print("[demo] stage 2: correspondence mining (image kNN, selective search, RoI pairs)")
    mined = mine(shards, ckpt, os.path.join(out, "mined"))
    p = pair_purity(mined, instances, shards)
    print(f"[demo]   pairs of the same category: {p['pair_purity']:.3f} of mined pairs vs "
          f"{p['random_pair_purity']:.3f} of random pairs of kept boxes; kept boxes on an "
          f"object: {p['box_gt_match']:.3f}")
    print(f"[demo] stage 3: ORL (image + intra-RoI + inter-RoI) from Stage 1, {epochs} epochs")
    orl_ckpt = train_stage3(shards, mined, os.path.join(out, "stage3"), stage1_ckpt=ckpt,
                            overrides=(f"train.epochs={epochs}",))

    print(f"[demo] object-level probe: objects of {PROBE_SCENES} unseen scenes, kNN and "
          "linear classification by category (balanced accuracy, chance 12.5%)")
    scores = evaluate({"random init": "random", "BYOL (stage 1)": ckpt, "ORL (stage 3)": orl_ckpt})
    for name, r in scores.items():
        print(f"[demo]   {name:15s} kNN {r['knn']:5.1f}%   linear {r['linear']:5.1f}%")
    print(f"[demo] what these numbers mean: {2 * epochs} epochs on {num_images} scenes are "
          "minutes of CPU. They show that every stage runs and where training moved the "
          "features, not that training helps: at CPU scale trained features score below random "
          "initialisation on this probe (a random ResNet with its initial BatchNorm "
          "statistics is a strong baseline for shapes and textures, and minutes of training "
          "first lower it). Trained for ~1,300 steps on this world's object crops, BYOL does "
          "beat random initialisation; on whole scenes at CPU scale it does not (measured over "
          "seeds by "
          "benchmarks/learning.py, see benchmarks/RESULTS.md, 'Does training learn?'). "
          "ORL here has also trained twice as many steps as Stage 1, so ORL vs BYOL in this "
          "table is not a comparison at equal compute; the protocol makes that one.")
    outputs = {
        "scenes (images + COCO instances.json)": os.path.dirname(images),
        "shards (index.json, report.json)": shards,
        "stage 1 run (config, checkpoint, TensorBoard, metrics.jsonl)": s1,
        "stage 2 mined pairs (pairs/, summary.json, manifest.json)": mined,
        "stage 2 top pairs": f"orl-fast viz pairs {mined} --out {out}/viz",
        "stage 3 checkpoint": orl_ckpt,
        "attention maps": f"orl-fast viz attention --ckpt {ckpt} --ckpt {orl_ckpt} "
                          f"--images {images} --out {out}/viz-attention",
    }
    print(f"[demo] done in {time.time() - t0:.0f} s. Outputs:")
    for what, where in outputs.items():
        print(f"  {what}: {where}")
    print(f"  TensorBoard: tensorboard --logdir {out}")
    return outputs


def mine(shards: str, ckpt: str, out: str, overrides: list[str] | None = None) -> str:
    """Stage 2 of the demo: mine the demo's shards with its Stage 1 model; returns out."""
    cfg = load_config("small", [*MINE, f"data={shards}", f"ckpt={ckpt}", f"out={out}",
                                *(overrides or [])])
    summary = pipeline.run(cfg, progress=False)
    print(f"[demo]   {summary['pairs']['pairs']} RoI pairs for {summary['pairs']['records']} "
          f"images ({summary['proposals']['boxes_per_image']:.1f} boxes/image)")
    return out


def train_stage3(shards: str, mined: str, out: str, stage1_ckpt: str = "",
                 overrides: tuple[str, ...] = ()) -> str:
    """Stage 3 of the demo (after Stage 1 and mining); returns the checkpoint."""
    init = ["orl.init=stage1", f"ckpt={stage1_ckpt}"] if stage1_ckpt else []
    cfg = load_config("small", [*RECIPE, f"data={shards}", f"pairs={mined}", f"out={out}",
                                *init, "train.epochs=1", *overrides])
    return stage3.run(cfg)


def evaluate(checkpoints: dict[str, str], size: int = 64, scenes: int = PROBE_SCENES,
             seed: int = 0) -> dict[str, dict]:
    """The object-level probe of each checkpoint ("random": random initialisation of the first
    checkpoint's architecture), on the objects of ``scenes`` generated scenes of PROBE_SEED."""
    train, test = objects.split(objects.from_scenes(PROBE_SEED, scenes, size), per_class=60,
                                seed=seed)
    ec = load_config("small", ["eval.device=cpu", "eval.knn.k=20",
                               "eval.linear.epochs=100"]).eval
    first = next(p for p in checkpoints.values() if p != backbones.RANDOM)
    arch = backbones.load(first)
    return {name: objects.evaluate(
        backbones.random_init(arch.arch, seed, arch.stem) if path == backbones.RANDOM
        else backbones.load(path), train, test, ec) for name, path in checkpoints.items()}
