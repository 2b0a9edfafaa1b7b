"""``orl-fast demo``: the pipeline, small, on generated scenes (no downloads, CPU, minutes).

Generates scenes with known objects (loaders.synthetic), ingests them into shards, runs a short
Stage 1 with the ``small`` config, mines RoI pairs with it (Stage 2, on a local Ray), scores them
against the scenes' ground truth, runs a short Stage 3 from the Stage 1 weights, and evaluates
both checkpoints and random initialisation with kNN and linear probes; prints where every output
is. At this size (minutes on a CPU) the numbers show that every stage runs, not what ORL gains.
"""

from __future__ import annotations

import os
import time

from evaluation import classification
from loaders.ingest import ingest
from loaders.synthetic import write_scenes
from mining import pipeline
from mining.purity import pair_purity
from orl_fast.core.config import load_config
from orl_fast.training import stage1, stage3


def run(out: str, num_images: int = 128, epochs: int = 5) -> dict[str, str]:
    t0 = time.time()
    out = os.path.abspath(out)
    print(f"[demo] generating {num_images} scenes")
    images = write_scenes(os.path.join(out, "scenes"), num_images)
    shards = os.path.join(out, "shards")
    cfg = load_config("small", [
        f"data={shards}", f"out={os.path.join(out, 'stage1')}",
        "aug.crop_size=64", "train.batch_size=16", f"train.epochs={epochs}",
        "train.num_workers=2", "train.ckpt_every_steps=1000", "ingest.shard_size=64",
    ])
    print("[demo] ingest")
    report = ingest(images, shards, cfg.ingest)
    print(f"[demo] {report['written']} images in shards, {report['skipped_images']} skipped")
    print("[demo] stage 1: BYOL")
    ckpt = stage1.run(cfg)
    print("[demo] stage 2: correspondence mining")
    mined = mine(shards, ckpt, os.path.join(out, "mined"))
    instances = os.path.join(out, "scenes", "instances.json")
    p = pair_purity(mined, instances, shards)
    print(f"[demo] pair purity {p['pair_purity']:.3f} (random pairs of kept boxes: "
          f"{p['random_pair_purity']:.3f}); kept boxes matching an object: {p['box_gt_match']:.3f}")
    print("[demo] stage 3: ORL (image + intra-RoI + inter-RoI), initialised from Stage 1")
    orl_ckpt = train_stage3(shards, mined, os.path.join(out, "stage3"), stage1_ckpt=ckpt,
                            overrides=(f"train.epochs={epochs}",))
    print("[demo] evaluation: kNN and linear probes on the scenes' object categories")
    scores = {}
    for name, path in (("BYOL (stage 1)", ckpt), ("ORL (stage 3)", orl_ckpt)):
        reports = evaluate(path, instances, os.path.join(out, "eval", name.split()[0]),
                           progress=False)
        for task, report in reports.items():
            scores[(name, task)] = _map(report, "checkpoint")
            scores[("random init", task)] = _map(report, "random init")
    for name in ("random init", "BYOL (stage 1)", "ORL (stage 3)"):
        print(f"[demo]   {name:15s} kNN mAP {scores[(name, 'knn')]:5.1f}   "
              f"linear mAP {scores[(name, 'linear')]:5.1f}")
    outputs = {
        "scenes (images + COCO instances.json)": os.path.dirname(images),
        "shards (index.json, report.json)": shards,
        "stage 1 run (config, checkpoints, TensorBoard, metrics.jsonl)": cfg.out,
        "stage 1 checkpoint": ckpt,
        "stage 2 mined pairs (pairs/, summary.json, manifest.json)": mined,
        "stage 2 top pairs": f"orl-fast viz pairs {mined} --out {out}/viz",
        "stage 3 checkpoint": orl_ckpt,
        "evaluation reports (JSON + Markdown)": os.path.join(out, "eval"),
        "attention maps": f"orl-fast viz attention --ckpt {ckpt} --ckpt {orl_ckpt} "
                          f"--images {images} --out {out}/viz-attention",
    }
    print(f"[demo] done in {time.time() - t0:.0f} s. Outputs:")
    for what, where in outputs.items():
        print(f"  {what}: {where}")
    print(f"  TensorBoard: tensorboard --logdir {out}")
    return outputs


def _map(report: dict, weights: str) -> float:
    """mAP of the res5 features of ``weights`` ("checkpoint" or "random init") in a report."""
    return float(report["results"][weights]["layers"]["res5"]["mAP"])


def mine(shards: str, ckpt: str, out: str, overrides: list[str] | None = None) -> str:
    """Stage 2 of the demo: mine the demo's shards with its Stage 1 model; returns out."""
    cfg = load_config("small", [f"data={shards}", f"ckpt={ckpt}", f"out={out}",
                                *(overrides or [])])
    summary = pipeline.run(cfg)
    print(f"[demo] mined {summary['pairs']['pairs']} RoI pairs for "
          f"{summary['pairs']['records']} images ({summary['proposals']['boxes_per_image']:.1f} "
          f"boxes/image, {summary['decode_failed']['embed']} undecodable)")
    return out


def train_stage3(shards: str, mined: str, out: str, stage1_ckpt: str = "",
                 overrides: tuple[str, ...] = ()) -> str:
    """A short Stage 3 of the demo (after Stage 1 and mining); returns the checkpoint."""
    init = ["orl.init=stage1", f"ckpt={stage1_ckpt}"] if stage1_ckpt else []
    cfg = load_config("small", [
        f"data={shards}", f"pairs={mined}", f"out={out}", *init,
        "aug.crop_size=64", "orl.patch_size=32", "train.batch_size=16", "train.epochs=1",
        "train.num_workers=2", "train.ckpt_every_steps=1000", *overrides,
    ])
    return stage3.run(cfg)


def evaluate(ckpt: str, instances_json: str, out: str, progress: bool = True) -> dict:
    """The demo's last step: kNN and linear-probe classification of the generated scenes
    (image-level labels from their COCO ground truth, seeded half held out) with a checkpoint
    and with random initialisation. Small inputs (resize 128, squashed to 112 x 112, res5
    global pooling: the Goyal pooling needs 224 px inputs), CPU-friendly.

    Returns ``{"knn": report, "linear": report}`` (also written to ``OUT/knn|linear.json|md``).
    """
    cfg = load_config("paper", [f"ckpt={ckpt}", "eval.resize=128", "eval.crop=112",
                                "eval.pooling=global", "eval.num_workers=0", "eval.knn.k=20",
                                "eval.linear.epochs=100"])
    return {task: classification.run(task, cfg, "", instances_json, None, out, progress)
            for task in ("knn", "linear")}
