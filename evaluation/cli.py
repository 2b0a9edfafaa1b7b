"""``orl-fast eval ...``, ``orl-fast export ...`` and ``orl-fast viz attention ...``.

Registered on the main parser by ``orl_fast.cli``; heavy imports happen inside the commands.
Every command takes ``--config`` and dotted ``FIELD=VALUE`` overrides (``eval.*`` holds the
evaluation settings, e.g. ``eval.layers=[res4,res5]`` or ``eval.detection.schedule=0.1``).
"""

from __future__ import annotations

import argparse
import json
import os

from orl_fast.core import storage
from orl_fast.core.config import ConfigError, load_config

CLASSIFICATION = {
    "voc07": "VOC07 linear SVMs (cost by cross-validation): AP per class and mAP (area under "
             "the PR curve; 11-point beside it)",
    "lowshot": "VOC07 low-shot SVMs: n positives per class, seeded samples, mean/std mAP",
    "knn": "weighted kNN on frozen features: per-class AP, mAP (top-1 on single-label sets)",
    "linear": "linear probe on frozen features: per-class AP, mAP (top-1 on single-label sets)",
}
# Trained on augmented images on the one training loop (evaluation.finetune).
FINETUNE = {
    "semisup": "semi-supervised fine-tuning of all layers on 1% and 10% of the labels (paper "
               "Table 3): top-1 / top-5 (mAP on multi-label sets)",
    "linear-official": "the official linear protocol: frozen backbone, a linear head per layer, "
                       "trained on augmented images: top-1 / top-5 (mAP) per layer",
}
DEFAULT_OUT = "orl-fast-eval"


def _config(args: argparse.Namespace):
    # FIELD=VALUE arguments: those the positional took, plus any the top-level parser collected
    # into ``overrides`` (when it parses with parse_known_args).
    overrides = [*args.settings, *getattr(args, "overrides", [])]
    if getattr(args, "ckpt", None):
        overrides.append(f"ckpt={args.ckpt}")
    if getattr(args, "engine", None):
        overrides.append(f"eval.detection.engine={args.engine}")
    return load_config(args.config, overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="paper",
                   help="shipped config name or YAML path (default: %(default)s)")
    p.add_argument("settings", nargs="*", metavar="FIELD=VALUE",
                   help="dotted overrides, e.g. eval.layers=[res4,res5] eval.device=cpu")


def cmd_classification(args: argparse.Namespace) -> int:
    from evaluation import classification

    cfg = _config(args)
    if not (args.data or args.train.endswith(".json")):
        raise ConfigError("--data: required unless --train is a COCO .json file")
    rep = classification.run(args.task, cfg, args.data, args.train, args.test, args.out,
                             progress=not args.quiet)
    print(storage.read_text(rep["files"]["markdown"]))
    print(f"report: {rep['files']['json']}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from evaluation import finetune

    cfg = _config(args)
    if not (args.data or args.train.endswith(".json")):
        raise ConfigError("--data: required unless --train is a COCO .json file")
    rep = finetune.run(args.task, cfg, args.data, args.train, args.test, args.out,
                       progress=not args.quiet)
    if rep:
        print(storage.read_text(rep["files"]["markdown"]))
        print(f"report: {rep['files']['json']}")
    return 0


def cmd_detection(args: argparse.Namespace) -> int:
    from evaluation.detection import evaluate as detection

    cfg = _config(args)
    rep = detection.run(cfg, args.train_json, args.val_json, args.out, args.train_images,
                        args.val_images, progress=not args.quiet)
    if rep:
        print(storage.read_text(rep["files"]["markdown"]))
        print(f"report: {rep['files']['json']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evaluation import backbones, export

    cfg = _config(args)
    cfg.require("ckpt")  # --ckpt PATH, or random
    w = backbones.resolve(cfg.ckpt, cfg.model.backbone, cfg.eval.seed)
    files = export.export(w, args.format, args.out, cfg.eval.detection)
    print(json.dumps({"format": args.format, "arch": w.arch, "source": w.source,
                      "files": files}, indent=1))
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from evaluation import attention, backbones

    cfg = _config(args)
    paths = args.ckpt_list or ([cfg.ckpt] if cfg.ckpt else [])
    if not paths:
        raise ConfigError("--ckpt: at least one checkpoint (e.g. --ckpt BYOL --ckpt ORL)")
    if args.label and len(args.label) != len(paths):
        raise ConfigError(f"--label: {len(args.label)} labels for {len(paths)} checkpoints")
    models = []
    for i, path in enumerate(paths):
        w = backbones.load(path, cfg.model.backbone)
        models.append((args.label[i] if args.label else _label(w), w))
    models.append(("random init", backbones.random_init(models[0][1].arch, cfg.eval.seed)))
    images = attention.list_images(args.images, args.limit)
    result = attention.write(models, images, args.out, cfg.eval.viz_size, cfg.eval.device)
    print(json.dumps({k: result[k] for k in ("grid", "html", "models")}, indent=1))
    return 0


def _label(w) -> str:
    """"BYOL (stage 1): RUN" / "ORL (stage 3): RUN", RUN the run directory's name."""
    path = w.source.split("/checkpoints/")[0] if "/checkpoints/" in w.source else w.source
    name = {"stage1": "BYOL (stage 1)", "stage3": "ORL (stage 3)"}.get(w.stage)
    return f"{name}: {os.path.basename(path)}" if name else os.path.basename(path)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``eval`` (with one sub-command per protocol) and ``export``."""
    p = sub.add_parser("eval", help="evaluate a checkpoint (and the random-init baseline)")
    tasks = p.add_subparsers(dest="task", required=True)
    for task, help_text in {**CLASSIFICATION, **FINETUNE}.items():
        t = tasks.add_parser(task, help=help_text, description=help_text)
        t.add_argument("--ckpt", help="orl-fast checkpoint (file or run dir), torchvision state "
                                      "dict, or 'random' (default: config ckpt)")
        t.add_argument("--data", default="", help="dataset root: VOCdevkit or labels.csv + "
                                                  "images/ (not needed for COCO .json splits)")
        t.add_argument("--train", required=True,
                       help="training split name (e.g. trainval) or a COCO instances .json")
        t.add_argument("--test", help="test split name or .json (default: a seeded held-out "
                                      "part of the training split, eval.holdout_frac)")
        t.add_argument("--out", default=DEFAULT_OUT, help="report directory (default: %(default)s)")
        t.add_argument("--quiet", action="store_true", help="no progress output")
        _add_common(t)
        t.set_defaults(func=cmd_finetune if task in FINETUNE else cmd_classification)

    t = tasks.add_parser("detection", help="Mask R-CNN R50-FPN transfer (COCO-format data)")
    t.add_argument("--ckpt", help="orl-fast checkpoint, torchvision state dict, or 'random'")
    t.add_argument("--train-json", required=True, help="COCO instances file for training")
    t.add_argument("--val-json", help="COCO instances file for validation (default: a seeded "
                                      "held-out part of the training file)")
    t.add_argument("--train-images", help="image root of --train-json (default: its folder)")
    t.add_argument("--val-images", help="image root of --val-json (default: its folder)")
    t.add_argument("--out", default=f"{DEFAULT_OUT}/detection",
                   help="run and report directory (default: %(default)s)")
    t.add_argument("--engine", choices=["torchvision", "detectron2"],
                   help="trainer: torchvision (this package's Mask R-CNN) or detectron2 (built "
                        "by scripts/install-detectron2.sh) (default: eval.detection.engine, "
                        "torchvision)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _add_common(t)
    t.set_defaults(func=cmd_detection)

    p = sub.add_parser("export", help="backbone weights for torchvision, timm or detectron2")
    p.add_argument("--format", required=True, choices=["torchvision", "timm", "detectron2"])
    p.add_argument("--ckpt", help="orl-fast checkpoint (file or run dir) or 'random'")
    p.add_argument("--out", required=True,
                   help="output file (.pth; .pkl for detectron2, which reads no other name, "
                        "with a .yaml config beside it)")
    _add_common(p)
    p.set_defaults(func=cmd_export)


def add_viz_commands(viz: argparse._SubParsersAction) -> None:
    """``viz attention``."""
    p = viz.add_parser("attention", help="attention maps of checkpoints side by side (Fig. 4)")
    p.add_argument("--ckpt", dest="ckpt_list", action="append",
                   help="checkpoint; repeat for side-by-side columns (e.g. BYOL then ORL)")
    p.add_argument("--label", action="append", help="column label per --ckpt (default: stage)")
    p.add_argument("--images", required=True, help="image directory or text file of paths")
    p.add_argument("--limit", type=int, default=8, help="images to show (default: %(default)s)")
    p.add_argument("--out", default="orl-fast-viz", help="output directory (default: %(default)s)")
    _add_common(p)
    p.set_defaults(func=cmd_attention)
