"""``orl-fast`` command line: one sub-command per pipeline step.

Every sub-command that takes a config accepts ``--config NAME|PATH`` (shipped: paper, small) and
dotted ``FIELD=VALUE`` overrides, e.g.::

    orl-fast ingest images/ shards/ ingest.shard_size=500
    orl-fast labels shards/ --from instances.json            # optional: labels for OPERA / SCAN
    orl-fast mine --config paper data=shards/ ckpt=runs/stage1 out=mined/
    orl-fast viz pairs mined/ --out viz/
    orl-fast pretrain --config paper data=shards/ out=runs/stage1 train.batch_size=256
    orl-fast train --config paper data=shards/ pairs=mined/ out=runs/stage3
    orl-fast config --config small train.epochs=2      # print the resolved config
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.extras import MissingExtra


def _add_config_args(p: argparse.ArgumentParser, default: str = "paper") -> None:
    p.add_argument("--config", default=default,
                   help=f"shipped config name or YAML path (default: {default}); any further "
                        "FIELD=VALUE arguments are dotted overrides, e.g. train.batch_size=256")
    p.set_defaults(overrides=[])


def cmd_config(args: argparse.Namespace) -> int:
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from loaders.ingest import ingest

    cfg = load_config(args.config, args.overrides)
    report = ingest(args.src, args.out, cfg.ingest, progress=not args.quiet)
    print(json.dumps({k: report[k] for k in ("inputs", "written", "converted_images",
                                              "skipped_images")}))
    for section in ("skipped", "converted"):
        for kind, entry in sorted(report[section].items()):
            print(f"  {section} {kind}: {entry['count']}")
    print(f"shards, index.json and report.json in {args.out}")
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from loaders.labels import LabelError, attach, describe

    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
    try:
        header = attach(args.shards, args.source, args.format, args.out, classes)
    except LabelError as e:
        print(f"orl-fast labels: {e}", file=sys.stderr)
        return 2
    print(describe(header))
    print(f"label store: {args.out or args.shards.rstrip('/') + '/labels.npz'}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from mining import pipeline

    cfg = load_config(args.config, args.overrides)
    if args.address:
        cfg.mine.ray_address = args.address
    summary = pipeline.run(cfg, progress=not args.quiet)
    print(json.dumps({"images": summary["images"], "records": summary["pairs"]["records"],
                      "pairs": summary["pairs"]["pairs"],
                      "boxes_per_image": summary["proposals"]["boxes_per_image"],
                      "decode_failed": summary["decode_failed"]}))
    if args.gt:
        from mining.purity import pair_purity
        from orl_fast.core import storage

        purity = pair_purity(cfg.out, args.gt, cfg.data)
        storage.atomic_write_json(storage.join(cfg.out, "purity.json"), purity)
        print(json.dumps(purity))
    print(f"pair shards, summary.json and manifest.json in {cfg.out}")
    return 0


def cmd_viz_pairs(args: argparse.Namespace) -> int:
    from mining.viz import render_pairs

    result = render_pairs(args.mined, args.out, args.data, top=args.top)
    print(f"{result['pairs']} pairs: {result['html']}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from orl_fast.training import stage1
    from orl_fast.training.launch import launch

    cfg = load_config(args.config, args.overrides)
    path = launch(cfg, stage1.run)
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
    return submit(args.command, address=args.address, working_dir=args.working_dir,
                  pip=args.pip, env_names=args.env, headers=headers, job_id=args.job_id,
                  wait=not args.no_wait, num_cpus=args.num_cpus, num_gpus=args.num_gpus)


def cmd_demo(args: argparse.Namespace) -> int:
    from orl_fast import demo

    demo.run(args.out, num_images=args.images, epochs=args.epochs)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from orl_fast.training import stage3
    from orl_fast.training.launch import launch

    cfg = load_config(args.config, args.overrides)
    path = launch(cfg, stage3.run)
    if path:
        print(f"stage 3 checkpoint: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orl-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    # eval voc07|lowshot|knn|linear|detection and export (evaluation/cli.py)
    from evaluation.cli import add_commands, add_viz_commands
    add_commands(sub)

    p = sub.add_parser("ingest", help="images (dir, glob, list, tar; local or URL) -> shards")
    p.add_argument("src", help="directory, glob, text file of paths, or .tar (local or fsspec URL)")
    p.add_argument("out", help="output directory for shards, index and report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_ingest)

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

    p = sub.add_parser("mine", help="Stage 2: correspondence mining on Ray "
                                    "(data=SHARDS ckpt=STAGE1 out=DIR)")
    p.add_argument("--address", default="",
                   help="join this Ray cluster (auto, host:port, ray://...) instead of a local one")
    p.add_argument("--gt", default="", help="COCO instances.json: also write purity.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("viz", help="visualisations (HTML + PNG)")
    viz = p.add_subparsers(dest="viz", required=True)
    q = viz.add_parser("pairs", help="top-scoring mined inter-RoI pairs (paper Fig. 3)")
    q.add_argument("mined", help="Stage 2 output directory")
    q.add_argument("--out", required=True, help="output directory for index.html + PNGs")
    q.add_argument("--data", default=None, help="image shards (default: the mined run's)")
    q.add_argument("--top", type=int, default=48, help="pairs shown (default: %(default)s)")
    q.set_defaults(func=cmd_viz_pairs)
    add_viz_commands(viz)  # viz attention (evaluation/cli.py)

    p = sub.add_parser("pretrain", help="Stage 1: image-level BYOL (data=SHARDS out=DIR)")
    _add_config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("submit", help="run an orl-fast command as a Ray job: submit -- orl-fast ...")
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
    p.add_argument("--job-id", help="submission id (default: generated)")
    p.add_argument("--num-cpus", type=float, help="CPUs reserved for the entrypoint")
    p.add_argument("--num-gpus", type=float, help="GPUs reserved for the entrypoint")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- orl-fast SUBCOMMAND ...")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("demo", help="the whole pipeline, small, on generated scenes")
    p.add_argument("--out", default="orl-fast-demo", help="output directory (default: %(default)s)")
    p.add_argument("--images", type=int, default=128, help="generated scenes (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="Stage 1 epochs (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="Stage 3: ORL object-level training "
                                     "(data=SHARDS pairs=MINED out=DIR)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)
    return parser


def _split_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
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
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"orl-fast: config error: {e}", file=sys.stderr)
        return 2
    except MissingExtra as e:
        print(f"orl-fast: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
