"""``orl-fast eval ...``, ``orl-fast export ...`` and ``orl-fast viz attention ...``.

Registered on the main parser by ``orl_fast.cli``; heavy imports happen inside the commands.
Every command takes ``--config`` and dotted ``FIELD=VALUE`` overrides (``eval.*`` holds the
evaluation settings, e.g. ``eval.layers=[res4,res5]`` or ``eval.detection.schedule=0.1``); the
paths ``--ckpt``, ``--data`` and ``--out`` may also be given as fields (``ckpt=``, ...).
Reports go to ``--out``, by default ``orl-fast-eval/<checkpoint>/`` (one folder per checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import re

from orl_fast.core import checkpoint, storage
from orl_fast.core.config import ConfigError, load_config, path_overrides

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
CKPT_HELP = ("orl-fast checkpoint (file or run dir), torchvision / timm ResNet weights file "
             "(model.backbone= names the architecture), or 'random'; or ckpt=PATH")
OUT_HELP = f"report directory (default: {DEFAULT_OUT}/<checkpoint>); or out=DIR"


def _config(args: argparse.Namespace):
    # FIELD=VALUE arguments: those the positional took, plus any the top-level parser collected
    # into ``overrides`` (when it parses with parse_known_args); then the path flags.
    overrides = [*args.settings, *getattr(args, "overrides", [])]
    paths = {name: getattr(args, name, None) for name in ("ckpt", "data", "out")}
    if getattr(args, "engine", None):
        overrides.append(f"eval.detection.engine={args.engine}")
    return load_config(args.config, path_overrides(overrides, **paths))


def report_dir(ckpt: str, root: str = DEFAULT_OUT) -> str:
    """``ROOT/<checkpoint>``, the default report folder: one per checkpoint, so that reports of
    two checkpoints never overwrite each other. A run directory names the checkpoint it resolves
    to (its latest); ``runs/x/stage3`` at step 40 -> ``ROOT/runs-x-stage3-ckpt-00000040``."""
    from evaluation.backbones import RANDOM

    if not ckpt or ckpt == RANDOM:
        return storage.join(root, "random-init")
    fs, fs_path = storage.url_to_fs(ckpt)
    resolved = ckpt if fs.isfile(fs_path) else (checkpoint.resolve(ckpt) or ckpt)
    path = resolved.split("://", 1)[-1].replace(f"/{checkpoint.CKPT_DIR}/", "/")
    if "://" not in resolved:
        path = os.path.abspath(path)
        here = os.getcwd() + os.sep
        path = path[len(here):] if path.startswith(here) else "/".join(path.split("/")[-3:])
    stem = re.sub(r"\.(pt|pth|pkl|bin|safetensors)$", "", path)
    return storage.join(root, re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "weights")


def _out(cfg, task: str = "") -> str:
    """Where a command writes: ``--out`` / ``out=``, else the checkpoint's report folder."""
    out = cfg.out or report_dir(cfg.ckpt)
    return storage.join(out, task) if task and not cfg.out else out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="paper",
                   help="shipped config name (paper, small) or YAML path (default: %(default)s); "
                        "every field: orl-fast config")
    p.add_argument("settings", nargs="*", metavar="FIELD=VALUE",
                   help="dotted overrides, e.g. eval.layers=[res4,res5] eval.device=cpu")
    p.set_defaults(load=_config, required=())


def _tensorboard(args: argparse.Namespace, cfg, rep: dict) -> None:
    """``--tb``: the report's metrics as TensorBoard scalars of the checkpoint's run directory
    (or ``--tb-run RUN``), at the checkpoint's step."""
    if not (args.tb or args.tb_run):
        return
    from evaluation.report import log_tensorboard

    run = args.tb_run or run_dir(cfg.ckpt)
    tags = log_tensorboard(run, rep)
    print(f"TensorBoard: {len(tags)} scalars in {storage.join(run, 'tb')} (eval/{rep['task']}/...)")


def run_dir(ckpt: str) -> str:
    """The run directory of a checkpoint (file, checkpoints/ folder or run directory)."""
    if not ckpt or ckpt == "random":
        raise ConfigError("--tb: the weights have no run directory: give one, --tb-run RUN")
    path = ckpt.rstrip("/")
    if path.endswith(".pt"):
        path = path.rsplit("/", 1)[0]
    if path.endswith(f"/{checkpoint.CKPT_DIR}"):
        path = path[:-len(checkpoint.CKPT_DIR) - 1]
    return path


def cmd_classification(args: argparse.Namespace) -> int:
    from evaluation import classification

    cfg = _config(args)
    if not (cfg.data or args.train.endswith(".json")):
        raise ConfigError("--data: required unless --train is a COCO .json file")
    rep = classification.run(args.task, cfg, cfg.data, args.train, args.test, _out(cfg),
                             progress=not args.quiet)
    print(storage.read_text(rep["files"]["markdown"]))
    print(f"report: {rep['files']['json']}")
    _tensorboard(args, cfg, rep)
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
    rep = detection.run(cfg, args.train_json, args.val_json, _out(cfg, "detection"),
                        args.train_images, args.val_images, progress=not args.quiet)
    if rep:
        print(storage.read_text(rep["files"]["markdown"]))
        print(f"report: {rep['files']['json']}")
        _tensorboard(args, cfg, rep)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evaluation import backbones, export

    cfg = _config(args)
    cfg.require("ckpt", "out")  # --ckpt PATH (or random), --out FILE
    w = backbones.resolve(cfg.ckpt, cfg.model.backbone, cfg.eval.seed)
    files = export.export(w, args.format, cfg.out, cfg.eval.detection)
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
    result = attention.write(models, images, cfg.out or "orl-fast-viz", cfg.eval.viz_size,
                             cfg.eval.device)
    print(json.dumps({k: result[k] for k in ("grid", "html", "models")}, indent=1))
    return 0


def _label(w) -> str:
    """"BYOL, step 40 (RUN)" / "ORL, step 40 (RUN)", RUN the run directory's name."""
    path = w.source.split("/checkpoints/")[0] if "/checkpoints/" in w.source else w.source
    name = {"stage1": "BYOL", "stage3": "ORL"}.get(w.stage)
    if not name:
        return os.path.basename(path)
    step = f", step {w.step}" if w.step is not None else ""
    return f"{name}{step} ({os.path.basename(path)})"


def _add_tb(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tb", action="store_true",
                   help="also log the metrics to TensorBoard beside training: eval/<task>/... "
                        "scalars at the checkpoint's step in the checkpoint's run, RUN/tb")
    p.add_argument("--tb-run", metavar="RUN", help="log them into this run instead (implies --tb)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``eval`` (with one sub-command per protocol) and ``export``."""
    p = sub.add_parser("eval", help="evaluate a checkpoint (and the random-init baseline)")
    tasks = p.add_subparsers(dest="task", required=True)
    for task, help_text in {**CLASSIFICATION, **FINETUNE}.items():
        t = tasks.add_parser(task, help=help_text, description=help_text)
        t.add_argument("--ckpt", help=CKPT_HELP)
        t.add_argument("--data", help="dataset root: VOCdevkit, labels.csv + images/, or an "
                                      "ImageFolder (a folder per class, or ROOT/SPLIT/CLASS/); "
                                      "not needed for COCO .json splits; or data=ROOT")
        t.add_argument("--train", required=True,
                       help="training split name (e.g. trainval) or a COCO instances .json")
        t.add_argument("--test", help="test split name or .json (default: a seeded held-out "
                                      "part of the training split, eval.holdout_frac)")
        t.add_argument("--out", help=OUT_HELP)
        _add_tb(t)
        t.add_argument("--quiet", action="store_true", help="no progress output")
        _add_common(t)
        t.set_defaults(func=cmd_finetune if task in FINETUNE else cmd_classification)

    text = ("Mask R-CNN R-FPN transfer on the checkpoint's ResNet (the paper: R50-FPN), "
            "fine-tuned from the checkpoint and from random initialisation (COCO-format data)")
    t = tasks.add_parser("detection", help=text, description=text)
    t.add_argument("--ckpt", help=CKPT_HELP)
    t.add_argument("--train-json", required=True, help="COCO instances file for training")
    t.add_argument("--val-json", help="COCO instances file for validation (default: a seeded "
                                      "held-out part of the training file)")
    t.add_argument("--train-images", help="image root of --train-json (default: its folder)")
    t.add_argument("--val-images", help="image root of --val-json (default: its folder)")
    t.add_argument("--out", help="run and report directory (default: "
                                 f"{DEFAULT_OUT}/<checkpoint>/detection); or out=DIR")
    t.add_argument("--engine", choices=["torchvision", "detectron2"],
                   help="trainer: torchvision (this package's Mask R-CNN) or detectron2 (built "
                        "by scripts/install-detectron2.sh) (default: eval.detection.engine, "
                        "torchvision)")
    _add_tb(t)
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _add_common(t)
    t.set_defaults(func=cmd_detection)

    p = sub.add_parser("export", help="backbone weights for torchvision, timm or detectron2")
    p.add_argument("--format", required=True, choices=["torchvision", "timm", "detectron2"])
    p.add_argument("--ckpt", help="orl-fast checkpoint (file or run dir) or 'random'; or ckpt=")
    p.add_argument("--out", help="output file (.pth; .pkl for detectron2, with a .yaml config "
                                 "beside it), required; or out=FILE")
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
    p.add_argument("--out", help="output directory or URL (default: orl-fast-viz); or out=DIR")
    _add_common(p)
    p.set_defaults(func=cmd_attention)
