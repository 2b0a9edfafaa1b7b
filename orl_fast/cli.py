"""``orl-fast`` command line: one sub-command per pipeline step.

Every sub-command that takes a config accepts ``--config NAME|PATH`` (shipped: paper, small) and
dotted ``FIELD=VALUE`` overrides, e.g.::

    orl-fast ingest images/ shards/ ingest.shard_size=500
    orl-fast pretrain --config paper data=shards/ out=runs/stage1 train.batch_size=256
    orl-fast config --config small train.epochs=2      # print the resolved config
"""

from __future__ import annotations

import argparse
import json
import sys

from orl_fast.config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser, default: str = "paper") -> None:
    p.add_argument("--config", default=default,
                   help=f"shipped config name or YAML path (default: {default})")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="dotted overrides, e.g. train.batch_size=256 data=shards/ out=runs/x")


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


def cmd_pretrain(args: argparse.Namespace) -> int:
    from orl_fast import stage1

    cfg = load_config(args.config, args.overrides)
    path = stage1.run(cfg)
    if path:
        print(f"stage 1 checkpoint: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orl_fast import demo

    demo.run(args.out, num_images=args.images, epochs=args.epochs)
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

    p = sub.add_parser("viz", help="visualisations (HTML + PNG)")
    viz = p.add_subparsers(dest="viz", required=True)
    add_viz_commands(viz)  # viz attention (evaluation/cli.py)

    p = sub.add_parser("pretrain", help="Stage 1: image-level BYOL (data=SHARDS out=DIR)")
    _add_config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("demo", help="the whole pipeline, small, on generated scenes")
    p.add_argument("--out", default="orl-fast-demo", help="output directory (default: %(default)s)")
    p.add_argument("--images", type=int, default=128, help="generated scenes (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="Stage 1 epochs (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"orl-fast: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
