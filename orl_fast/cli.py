"""``orl-fast`` command line: one sub-command per pipeline step, listed in pipeline order.

Paths are flags (``--data``, ``--out``, ``--ckpt``, ``--pairs``) or, the same, config fields
(``data=``, ``out=``, ...); every other setting is a dotted ``FIELD=VALUE`` override of the
config chosen with ``--config NAME|PATH`` (shipped: paper, small; ``orl-fast config`` prints every
field), validated at start-up::

    orl-fast scenes runs/world --images 256                     # generated scenes + instances.json
    orl-fast ingest runs/world/images runs/world/shards         # images -> shards
    orl-fast labels runs/world/shards --from runs/world/instances.json   # optional: OPERA / SCAN
    orl-fast pretrain --config small --data shards/ --out runs/stage1 train.epochs=4
    orl-fast mine --config small --data shards/ --ckpt runs/stage1 --out mined/
    orl-fast viz pairs --pairs mined/ --out viz/
    orl-fast train --config small --data shards/ --pairs mined/ --out runs/stage3
    orl-fast eval knn --ckpt runs/stage3 --train runs/world/instances.json
    orl-fast config --config small train.epochs=2              # print the resolved config
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import traceback

from orl_fast import __version__
from orl_fast.core.config import ConfigError, load_config, path_overrides
from orl_fast.core.errors import DEBUG_ENV, UserError, debug_requested, one_line

# What each path flag holds, for the help texts.
PATHS = {"data": ("SHARDS", "image shards (the output of orl-fast ingest)"),
         "out": ("DIR", "output directory (local path or fsspec URL)"),
         "ckpt": ("CKPT", "checkpoint: a .pt file or a run directory (its latest)"),
         "pairs": ("MINED", "the output directory of orl-fast mine")}
# Tools of ``orl-fast mine``: ``orl-fast mine TOOL ...`` (the parser named "mine TOOL").
MINE_TOOLS = ("import-official", "export-official", "purity")


class _Parser(argparse.ArgumentParser):
    """The top-level parser: ``orl-fast mine TOOL ...`` selects the command ``mine TOOL``, while
    ``orl-fast mine FIELD=VALUE ...`` mines."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if len(args) >= 2 and args[0] == "mine" and args[1] in MINE_TOOLS:
            args = [f"mine {args[1]}", *args[2:]]
        return super().parse_known_args(args, namespace)


def _settings_help(required: tuple[str, ...] = (), example: str = "train.epochs=10",
                   also: str = "") -> str:
    """The epilog of a command that takes a config: its required paths and the FIELD=VALUE
    mechanism."""
    lines = []
    if required:
        flags = ", ".join(f"--{n} {PATHS[n][0]}" for n in required)
        fields = " ".join(f"{n}={PATHS[n][0]}" for n in required)
        lines.append(f"required: {flags}{also} (or as fields: {fields})")
    lines.append(f"settings: any config field as FIELD=VALUE (dotted; checked at start-up), "
                 f"e.g. {example}")
    lines.append("all fields and their values: orl-fast config --config small (or paper, or a "
                 "YAML file)")
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser, default: str = "paper",
                     paths: tuple[str, ...] = (), required: tuple[str, ...] = (),
                     path_help: dict[str, str] | None = None, settings: bool = True) -> None:
    """``--config``, a flag per path field in ``paths`` (the same as ``FIELD=PATH``) and the
    ``FIELD=VALUE`` overrides (a positional, plus any :func:`main` collects; ``settings=False``
    where other positionals come first); ``required`` is checked by the step."""
    p.add_argument("--config", default=default,
                   help=f"shipped config name (paper, small) or YAML path (default: {default})")
    if settings:
        p.add_argument("settings", nargs="*", metavar="FIELD=VALUE",
                       help="dotted config overrides, e.g. train.epochs=10")
    for name in paths:
        metavar, text = PATHS[name]
        p.add_argument(f"--{name}", dest=f"path_{name}", metavar=metavar,
                       help=(path_help or {}).get(name, text)
                       + (" (required)" if name in required else "") + f"; or {name}={metavar}")
    p.set_defaults(overrides=[], settings=[], paths=paths, required=required, load=_load)


def _load(args: argparse.Namespace):
    """The command's config: ``--config``, then the overrides with its path flags."""
    _field_positionals(args, *getattr(args, "field_positionals", ()))
    flags = {name: getattr(args, f"path_{name}") for name in args.paths}
    return load_config(args.config, path_overrides([*args.settings, *args.overrides], **flags))


def _field_positionals(args: argparse.Namespace, *names: str) -> None:
    """Optional positionals (``ingest SRC OUT``, ``viz pairs MINED``) that took a FIELD=VALUE
    override (argparse gives them the first ones) hand it back to the overrides."""
    for name in names:
        value = getattr(args, name)
        if value and re.match(r"^[A-Za-z_][\w.]*=", value) and not os.path.exists(value):
            args.overrides = [value, *args.overrides]
            setattr(args, name, None)


def _text(text: str, block: str = "") -> str:
    """A command's description: ``text`` wrapped, then ``block`` as it is."""
    return textwrap.fill(text, 92) + (f"\n\n{block}" if block else "")


def cmd_config(args: argparse.Namespace) -> int:
    print(args.load(args).to_yaml(), end="")
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    from loaders.synthetic import CATEGORIES, World, write_scenes

    out = args.out_dir or args.out
    if not out:
        raise ConfigError("out: required (the output directory: OUT or --out OUT)")
    world = World(args.width, args.height, args.min_objects, args.max_objects,
                  tuple(args.object_size), args.colours, args.background,
                  args.categories_per_scene)
    images = write_scenes(out, args.images, seed=args.seed, world=world)
    print(f"{args.images} scenes ({args.width}x{args.height}, categories "
          f"{', '.join(CATEGORIES)}): images in {images}, ground truth in "
          f"{os.path.join(out, 'instances.json')}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from loaders.ingest import ingest

    cfg = args.load(args)
    src, out = args.src or args.src_flag, args.out_dir or cfg.out
    if not src or not out:
        raise ConfigError(f"{'src' if not src else 'out'}: required (orl-fast ingest SRC OUT)")
    report = ingest(src, out, cfg.ingest, progress=not args.quiet)
    print(json.dumps({k: report[k] for k in ("inputs", "written", "converted_images",
                                              "skipped_images", "ignored_files", "shards",
                                              "shard_size")}))
    for section in ("skipped", "ignored", "converted"):
        for kind, entry in sorted(report[section].items()):
            print(f"  {section} {kind}: {entry['count']}")
    print(f"shards, index.json and report.json in {out}")
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from loaders.labels import attach, describe

    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
    header = attach(args.shards, args.source, args.format, args.out, classes)
    print(describe(header))
    print(f"label store: {args.out or args.shards.rstrip('/') + '/labels.npz'}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from mining import pipeline

    cfg = args.load(args)
    if args.address:
        cfg.mine.ray_address = args.address
    summary = pipeline.run(cfg, progress=not args.quiet)
    print(json.dumps({"images": summary["images"], "records": summary["pairs"]["records"],
                      "pairs": summary["pairs"]["pairs"],
                      "boxes_per_image": summary["proposals"]["boxes_per_image"],
                      "decode_failed": summary["decode_failed"]}))
    if args.gt:
        _purity(cfg.out, args.gt, cfg.data)
    print(f"pair shards, summary.json and manifest.json in {cfg.out}")
    return 0


def _purity(mined: str, gt: str, data: str | None, iou: float = 0.5) -> dict:
    """Pair purity of ``mined`` against COCO ground truth: ``MINED/purity.json``, one line."""
    from mining.purity import pair_purity, summary_line
    from orl_fast.core import storage

    purity = pair_purity(mined, gt, data or None, iou)
    storage.atomic_write_json(storage.join(mined, "purity.json"), purity)
    print(summary_line(purity))
    return purity


def cmd_mine_purity(args: argparse.Namespace) -> int:
    cfg = args.load(args)
    cfg.require("pairs")
    print(json.dumps(_purity(cfg.pairs, args.gt, cfg.data, args.iou), indent=1))
    return 0


def cmd_mine_export(args: argparse.Namespace) -> int:
    from mining.official_json import export_official

    cfg = args.load(args)
    cfg.require("pairs", "out")
    for what, path in export_official(cfg.pairs, cfg.out, cfg.data or None).items():
        print(f"{what}: {path}")
    return 0


def cmd_mine_import(args: argparse.Namespace) -> int:
    from loaders.pairs import PAIRS_DIR
    from mining.official_json import import_official
    from orl_fast.core import storage

    cfg = args.load(args)
    cfg.require("data", "out")
    index = import_official(args.correspondence, cfg.data, cfg.out, args.knn)
    print(f"{index['num_images']} records in {index['num_shards']} pair shards under "
          f"{storage.join(cfg.out, PAIRS_DIR)} (Stage 3 reads them: --pairs {cfg.out})")
    return 0


def cmd_viz_pairs(args: argparse.Namespace) -> int:
    from mining.viz import render_pairs

    cfg = args.load(args)
    mined = args.mined or cfg.pairs
    if not mined:
        raise ConfigError("pairs: required (the output directory of orl-fast mine: --pairs MINED)")
    cfg.require("out")
    result = render_pairs(mined, cfg.out, cfg.data or None, top=args.top, gt=args.gt or None)
    print(f"{result['pairs']} pairs: {result['html']}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from orl_fast.training import stage1
    from orl_fast.training.launch import launch

    cfg = args.load(args)
    path = launch(cfg, stage1.run, stage1.prepare)
    if path:
        print(f"stage 1 checkpoint: {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster.submit import submit

    headers = {}
    for item in args.header:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise SystemExit(f"orl-fast submit: --header {item!r}: expected NAME=VALUE")
        headers[name.strip()] = value
    for item in args.header_env:
        name, eq, var = item.partition("=")
        if not eq or not name.strip() or not var:
            raise SystemExit(f"orl-fast submit: --header-env {item!r}: expected NAME=VAR")
        name = name.strip()
        if var not in os.environ:
            raise SystemExit(f"orl-fast submit: --header-env {item}: ${var} is not set")
        headers[name] = os.environ[var]
    check_job(args.command, args.working_dir)
    return submit(args.command, address=args.address, working_dir=args.working_dir,
                  pip=args.pip, env_names=args.env, headers=headers, job_id=args.job_id,
                  wait=not args.no_wait, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                  insecure=args.insecure)


def check_job(command: list[str], working_dir: str | None = None) -> None:
    """An ``orl-fast`` job command parsed, and its config loaded and checked, here, as the job
    would at its start: a bad flag or field is refused (argparse's usage error, or a
    ConfigError naming the field) before anything is submitted. Other commands pass unchecked.

    A ``--config`` YAML path is read from ``working_dir`` (the checkout the job runs) when it is
    relative; one that is not here (e.g. on the cluster's disk) leaves the overrides checked
    against the defaults only."""
    if command[:1] == ["orl-fast"]:
        argv = command[1:]
    elif command[:3] == ["python", "-m", "orl_fast"]:
        argv = command[3:]
    else:
        return
    parser = build_parser()
    parser.prog = "orl-fast submit: the job's command: orl-fast"
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad or (extra and not hasattr(args, "load")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if not hasattr(args, "load"):
        return
    args.overrides = extra
    config = args.config
    if config and os.path.splitext(config)[1] in (".yaml", ".yml"):
        if working_dir and not os.path.isabs(config):
            config = os.path.join(working_dir, config)
        if not os.path.exists(config):
            print(f"orl-fast submit: --config {args.config} is not here: only the overrides are "
                  "checked (against the defaults)", file=sys.stderr)
            config = None
    args.config = config
    cfg = args.load(args)
    cfg.require(*args.required)


def cmd_demo(args: argparse.Namespace) -> int:
    from orl_fast import demo

    demo.run(args.out, num_images=args.images, epochs=args.epochs)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from orl_fast.training import stage3
    from orl_fast.training.launch import launch

    cfg = args.load(args)
    path = launch(cfg, stage3.run, stage3.prepare)
    if path:
        print(f"stage 3 checkpoint: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orl-fast", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"orl-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=argparse.ArgumentParser)
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter}

    p = sub.add_parser("demo", help="the whole pipeline, small, on generated scenes (minutes)")
    p.add_argument("--out", default="orl-fast-demo", help="output directory (default: %(default)s)")
    p.add_argument("--images", type=int, default=256, help="generated scenes (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=8,
                   help="epochs of Stage 1 and of Stage 3 (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    text = ("Generated scenes with known objects: 2-5 objects per image in 8 categories, each a "
            "shape with its own texture in random colours, on a cluttered (or plain) background; "
            "OUT/images/*.jpg and the ground truth OUT/instances.json (COCO format). A scene is "
            "a pure function of (seed, index, size).")
    p = sub.add_parser("scenes", help="generate scene images + COCO instances.json (no download)",
                       description=_text(text))
    p.add_argument("out_dir", nargs="?", metavar="OUT", help="output directory")
    p.add_argument("--out", help="the same as OUT")
    p.add_argument("--images", type=int, default=256, help="scenes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    p.add_argument("--width", type=int, default=160, help="pixels (default: %(default)s)")
    p.add_argument("--height", type=int, default=120, help="pixels (default: %(default)s)")
    p.add_argument("--min-objects", type=int, default=2, help="per scene (default: %(default)s)")
    p.add_argument("--max-objects", type=int, default=5, help="per scene (default: %(default)s)")
    p.add_argument("--object-size", type=float, nargs=2, default=[0.2, 0.5], metavar=("LOW", "HIGH"),
                   help="an object's side as a fraction of the scene's shorter side (default: "
                        "0.2 0.5)")
    p.add_argument("--colours", default="scene",
                   help="scene: one hue per scene (default), object: one per object, pair: two "
                        "random hues per object (colour never tells the category)")
    p.add_argument("--background", default="clutter",
                   help="clutter: colour field, polygons and lines (default); plain: mid-grey "
                        "with pixel noise")
    p.add_argument("--categories-per-scene", type=int, default=0, metavar="K",
                   help="0: each object of any category (default); K: a scene's objects of K "
                        "categories drawn for it")
    p.set_defaults(func=cmd_scenes)

    text = ("Images (a directory, a glob, a text file of paths, or a .tar; local or fsspec URL) "
            "-> WebDataset shards, index.json, report.json (every input converted or skipped, "
            "and why). Resumable: run it again after a kill.")
    p = sub.add_parser("ingest", help="images (dir, glob, list, tar; local or URL) -> shards",
                       description=_text(text), epilog=_settings_help(
                           example="ingest.shard_size=500 ingest.max_side=1024"), **raw)
    p.add_argument("src", nargs="?", metavar="SRC",
                   help="directory, glob, text file of paths, or .tar (local or fsspec URL)")
    p.add_argument("out_dir", nargs="?", metavar="OUT",
                   help="output directory for shards, index and report")
    p.add_argument("--src", dest="src_flag", metavar="SRC", help="the same as SRC")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, paths=("out",), path_help={"out": "the same as OUT"}, settings=False)
    p.set_defaults(func=cmd_ingest, field_positionals=("src", "out_dir"))

    p = sub.add_parser("labels", help="attach labels to shards (for label.mode=opera|scan)")
    p.add_argument("shards", help="the image shards of orl-fast ingest")
    p.add_argument("--from", dest="source", required=True,
                   help="ImageFolder directory, COCO instances .json, VOC labels.csv or a CSV of "
                        "path,label[,label...]")
    p.add_argument("--format", default="auto", choices=["auto", "imagefolder", "coco", "voc",
                                                        "csv"],
                   help="label file format (default: %(default)s, from the path and header)")
    p.add_argument("--classes", default="",
                   help="imagefolder / csv: the vocabulary, comma-separated (default: the "
                        "sorted class names found)")
    p.add_argument("--out", default="",
                   help="label store to write (default: SHARDS/labels.npz; then label.source "
                        "may stay empty)")
    p.set_defaults(func=cmd_labels)

    text = "Stage 1: image-level BYOL on the shards; checkpoints, config.yaml, metrics and tb/ in OUT."
    p = sub.add_parser("pretrain", help="Stage 1: image-level BYOL (--data SHARDS --out DIR)",
                       description=_text(text), epilog=_settings_help(
                           ("data", "out"), "train.epochs=10 train.batch_size=64"), **raw)
    _add_config_args(p, paths=("data", "out"), required=("data", "out"))
    p.set_defaults(func=cmd_pretrain)

    text = ("Stage 2: correspondence mining on Ray (image kNN with the Stage 1 model, selective "
            "search, RoI embeddings, top-ranked RoI pairs) -> pair shards in OUT. Resumable.")
    tools = ("tools (each with its --help):\n"
             "  orl-fast mine purity --pairs MINED --gt INSTANCES.json       pair purity\n"
             "  orl-fast mine export-official --pairs MINED --out DIR        official ORL JSON\n"
             "  orl-fast mine import-official CORR.json --data SHARDS --out MINED")
    p = sub.add_parser("mine", help="Stage 2: correspondence mining on Ray "
                                    "(--data SHARDS --ckpt STAGE1 --out DIR); tools: "
                                    + ", ".join(MINE_TOOLS),
                       description=_text(text, tools), epilog=_settings_help(
                           ("data", "ckpt", "out"), "mine.knn_k=20 mine.min_box_size=32"), **raw)
    p.add_argument("--address", default="",
                   help="join this Ray cluster (auto, host:port, ray://...) instead of a local one")
    p.add_argument("--gt", default="", metavar="INSTANCES.json",
                   help="COCO ground truth of the images: also write purity.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, paths=("data", "ckpt", "out"), required=("data", "ckpt", "out"),
                     path_help={"ckpt": "the Stage 1 checkpoint or run directory"})
    p.set_defaults(func=cmd_mine)
    _add_mine_tools(sub, raw)

    text = ("Stage 3: ORL (image, intra-RoI and inter-RoI losses) on the shards and the mined "
            "pairs; orl.init=stage1 with --ckpt STAGE1 starts from Stage 1's weights.")
    p = sub.add_parser("train", help="Stage 3: ORL object-level training "
                                     "(--data SHARDS --pairs MINED --out DIR)",
                       description=_text(text), epilog=_settings_help(
                           ("data", "pairs", "out"), "orl.init=stage1 train.epochs=10",
                           also=" (and --ckpt STAGE1 with orl.init=stage1)"), **raw)
    _add_config_args(p, paths=("data", "pairs", "out", "ckpt"),
                     required=("data", "pairs", "out"),
                     path_help={"ckpt": "the Stage 1 checkpoint (with orl.init=stage1)"})
    p.set_defaults(func=cmd_train)

    # eval voc07|lowshot|knn|linear|detection and export (evaluation/cli.py)
    from evaluation.cli import add_commands, add_viz_commands
    add_commands(sub)

    p = sub.add_parser("viz", help="visualisations: mined pairs, attention maps (HTML + PNG)")
    viz = p.add_subparsers(dest="viz", required=True)
    text = ("The best mined inter-RoI pair of image pairs from several categories (paper Fig. "
            "3): PNG pages and index.html with image names, boxes and scores; with --gt the "
            "ground-truth boxes, the category of each box and the pair purity.")
    q = viz.add_parser("pairs", help="mined inter-RoI pairs (paper Fig. 3)", description=_text(text),
                       epilog=_settings_help(("pairs", "out"), "data=SHARDS"), **raw)
    q.add_argument("mined", nargs="?", metavar="MINED", help="the same as --pairs MINED")
    q.add_argument("--gt", default="", metavar="INSTANCES.json",
                   help="COCO ground truth: ground-truth boxes, categories and pair purity")
    q.add_argument("--top", type=int, default=48, help="pairs shown (default: %(default)s)")
    _add_config_args(q, paths=("pairs", "out", "data"), required=("pairs", "out"),
                     path_help={"data": "image shards (default: the mined run's)",
                                "out": "output directory or URL for index.html + PNGs"},
                     settings=False)
    q.set_defaults(func=cmd_viz_pairs, field_positionals=("mined",))
    add_viz_commands(viz)  # viz attention (evaluation/cli.py)

    p = sub.add_parser("submit", help="run an orl-fast command as a Ray job: submit -- orl-fast ...",
                       description="Run a command as a Ray job. An orl-fast command is parsed "
                                   "and its config checked here first: a bad field is refused "
                                   "before anything is submitted.")
    p.add_argument("--address", help="Ray dashboard URL (default: $RAY_ADDRESS, else "
                                     "http://127.0.0.1:8265)")
    p.add_argument("--working-dir", help="upload this checkout and run it (python -m orl_fast)")
    p.add_argument("--pip", action="append", default=[], help="pip requirement for the job")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="copy environment variable NAME into the job (credentials)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="HTTP header for an authenticating proxy")
    p.add_argument("--header-env", action="append", default=[], metavar="NAME=VAR",
                   help="HTTP header whose value is read from environment variable VAR")
    p.add_argument("--submission-id", "--job-id", dest="job_id", metavar="ID",
                   help="the job's submission id (default: generated); --job-id is the same")
    p.add_argument("--num-cpus", type=float, help="CPUs reserved for the entrypoint")
    p.add_argument("--num-gpus", type=float, help="GPUs reserved for the entrypoint")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--insecure", action="store_true",
                   help="send the Ray token, --env values and headers over plain http to a "
                        "non-loopback address (refused without it)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- orl-fast SUBCOMMAND ...")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("config", help="print the resolved configuration (every field) as YAML",
                       epilog=_settings_help(example="train.epochs=2"), **raw)
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def _add_mine_tools(sub: argparse._SubParsersAction, raw: dict) -> None:
    """``orl-fast mine purity | export-official | import-official`` (commands ``mine TOOL``,
    unlisted at the top level: ``orl-fast mine --help`` lists them)."""
    p = sub.add_parser("mine purity", description="Pair purity of mined pairs against COCO "
                       "ground truth (and the same for random pairs of kept boxes); also "
                       "written to MINED/purity.json.",
                       epilog=_settings_help(("pairs",), also=", --gt INSTANCES.json",
                                             example="data=SHARDS"), **raw)
    p.add_argument("--gt", required=True, metavar="INSTANCES.json",
                   help="COCO ground truth of the mined images")
    p.add_argument("--iou", type=float, default=0.5, help="box match IoU (default: %(default)s)")
    _add_config_args(p, paths=("pairs", "data"), required=("pairs",),
                     path_help={"data": "image shards (default: the mined run's)"})
    p.set_defaults(func=cmd_mine_purity)

    p = sub.add_parser("mine export-official", description="A mined directory as the official "
                       "ORL Stage 2 files: knn_instance.json, selective_search_proposal.json, "
                       "correspondence.json in OUT.",
                       epilog=_settings_help(("pairs", "out"), example="data=SHARDS"), **raw)
    _add_config_args(p, paths=("pairs", "out", "data"), required=("pairs", "out"),
                     path_help={"data": "image shards (default: the mined run's)"})
    p.set_defaults(func=cmd_mine_export)

    p = sub.add_parser("mine import-official", description="An official ORL correspondence "
                       "JSON (images matched by file name) -> pair shards in OUT, which "
                       "orl-fast train reads (--pairs OUT).",
                       epilog=_settings_help(("data", "out"), example="data=SHARDS"), **raw)
    p.add_argument("correspondence", metavar="CORRESPONDENCE.json",
                   help="the official correspondence file")
    p.add_argument("--knn", default=None, help="the official knn json (neighbour similarities)")
    _add_config_args(p, paths=("data", "out"), required=("data", "out"),
                     path_help={"data": "image shards holding the same images"})
    p.set_defaults(func=cmd_mine_import)


def _split_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, show its traceback too (also {DEBUG_ENV}=1)")
    parser.add_argument("--resume-anyway", action="store_true",
                        help="pretrain / train: resume OUT's checkpoint even though the config "
                             "differs from the one it was trained with (train.resume_anyway)")
    argv = sys.argv[1:] if argv is None else argv
    # The flags of main, anywhere before a "--" (after it: a submitted job's own command).
    end = argv.index("--") if "--" in argv else len(argv)
    flags = {"--debug", "--resume-anyway"}
    given = flags.intersection(argv[:end])
    argv = [a for a in argv[:end] if a not in flags] + argv[end:]
    debug = "--debug" in given or debug_requested()
    if argv[:1] == ["submit"]:  # everything after "--" is the job's command, verbatim
        head, tail = _split_dashes(argv)
        args = parser.parse_args(head)
        args.command = tail
    else:
        args, extra = parser.parse_known_args(argv)
        bad = [a for a in extra if "=" not in a or a.startswith("-")]
        if bad or (extra and not hasattr(args, "config")):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = extra
    if "--resume-anyway" in given:
        if args.func not in (cmd_pretrain, cmd_train):
            parser.error("--resume-anyway: only pretrain and train resume a run")
        args.overrides.append("train.resume_anyway=true")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("orl-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line (the traceback: --debug)
        return _report(e, debug)


def _report(error: Exception, debug: bool) -> int:
    """Print ``error`` as one line; 2 for a bad input (the user's to fix), 1 for anything else."""
    if debug:
        traceback.print_exc()
    cause = getattr(error, "cause", None)  # an error raised in a Ray worker: the original one
    if isinstance(cause, Exception) and isinstance(error, type(cause)):
        error = cause
    if isinstance(error, (UserError, OSError)):
        kind = "config error: " if isinstance(error, ConfigError) else ""
        print(f"orl-fast: {kind}{one_line(error)}", file=sys.stderr)
        return 2
    hint = "" if debug else f"; --debug or {DEBUG_ENV}=1 shows the traceback"
    print(f"orl-fast: internal error: {type(error).__name__}: {one_line(error)}{hint}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
