"""Evaluation suite (paper Section 4): VOC07 SVM and low-shot, kNN / linear probes, Mask R-CNN
transfer, weight exports and attention maps; every number beside a random-init baseline.

Modules: ``backbones`` (weights: checkpoint / state dict / random init), ``datasets`` (VOCdevkit,
labels.csv, COCO image labels), ``features`` (cached frozen features), ``metrics`` (VOC AP),
``voc07``, ``lowshot``, ``probes`` (kNN, linear), ``classification`` (those end to end),
``detection`` (Mask R-CNN), ``export``, ``attention``, ``report``, ``cli``.
"""

from __future__ import annotations


def demo_step(ckpt: str, instances_json: str, out: str, progress: bool = True) -> dict:
    """The demo's last step: kNN and linear-probe classification of the generated scenes
    (image-level labels from their COCO ground truth, seeded half held out) with the Stage 1
    checkpoint and with random initialisation. Small inputs (resize 128, crop 112), CPU-friendly.

    Returns ``{"knn": report, "linear": report}`` (also written to ``OUT/knn|linear.json|md``).
    """
    from evaluation import classification
    from orl_fast.config import load_config

    cfg = load_config("paper", [f"ckpt={ckpt}", "eval.resize=128", "eval.crop=112",
                                "eval.num_workers=0", "eval.knn.k=20", "eval.linear.epochs=100"])
    return {task: classification.run(task, cfg, "", instances_json, None, out, progress)
            for task in ("knn", "linear")}
