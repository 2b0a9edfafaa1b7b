"""The command line: config printing, errors naming the field, ingest, and the demo."""

from __future__ import annotations

import os

import pytest
import yaml
from PIL import Image

from orl_fast.cli import PATHS, main
from orl_fast.core import checkpoint
from orl_fast.core.config import load_config


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "--config", "small", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["model"]["backbone"] == "resnet18"
    assert load_config("small", ["train.epochs=3"]).to_dict() == printed


def test_config_errors_exit_2_and_name_the_field(capsys):
    assert main(["config", "train.batch_size=-4"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "> 0" in err
    assert main(["pretrain", "--config", "small"]) == 2  # data and out are required
    assert "data: required" in capsys.readouterr().err


def test_unknown_arguments_are_rejected():
    with pytest.raises(SystemExit) as e:
        main(["config", "--no-such-flag"])
    assert e.value.code == 2


def test_ingest_command(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (64 + i, 48), (i, 2 * i, 3 * i)).save(src / f"{i}.png")
    assert main(["ingest", str(src), str(tmp_path / "out"), "--quiet",
                 "ingest.shard_size=2"]) == 0
    out = capsys.readouterr().out
    assert '"written": 3' in out and "converted reencoded: 3" in out
    assert sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".tar")) == [
        "shard-000000.tar", "shard-000001.tar"]


def test_demo_runs_the_pipeline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", "64", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    state = checkpoint.load(str(tmp_path / "stage1"))
    assert state["step"] == 1  # 64 images, batch 64, 1 epoch
    assert state["config"]["aug"]["crop_size"] == 64
    assert (tmp_path / "scenes" / "instances.json").exists()
    assert (tmp_path / "shards" / "index.json").exists()
    from loaders.pairs import open_pairs
    assert len(open_pairs(str(tmp_path / "mined"))) == 64  # one pair record per image
    assert "pairs of the same category" in out
    orl = checkpoint.load(str(tmp_path / "stage3"))
    assert orl["stage"] == "stage3" and orl["step"] == 1
    assert "inter_predictor.0.weight" in orl["model"]
    # only the last checkpoint of each stage is kept
    for stage in ("stage1", "stage3"):
        assert len([n for n in os.listdir(tmp_path / stage / "checkpoints")
                    if n.endswith(".pt")]) == 1
    for name in ("random init", "BYOL (stage 1)", "ORL (stage 3)"):
        assert f"{name:15s} kNN" in out
    assert "what these numbers mean" in out


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command, required", [
    ("pretrain", ("data", "out")), ("mine", ("data", "ckpt", "out")),
    ("train", ("data", "pairs", "out")),
])
def test_help_lists_the_required_fields_and_the_settings(capsys, command, required):
    text = " ".join(_help(capsys, command).split())
    for name in required:
        assert f"--{name} " in text and f"{name}=" in text
    assert "required: " + ", ".join(f"--{n} {PATHS[n][0]}" for n in required) in text
    assert "FIELD=VALUE" in text and "orl-fast config" in text


def test_version_and_commands_in_pipeline_order(capsys):
    from orl_fast import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"orl-fast {__version__}"
    listing = _help(capsys)
    order = ["demo", "scenes", "ingest", "pretrain", "mine", "train", "eval", "export", "viz",
             "submit", "config"]
    positions = [listing.index(f"\n    {name} ") for name in order]
    assert positions == sorted(positions)
    assert "mine purity" not in listing  # a tool of mine: listed by `orl-fast mine --help`
    assert "orl-fast mine purity" in _help(capsys, "mine")


def test_paths_as_flags_or_fields(capsys):
    assert main(["config", "data=a", "out=b"]) == 0
    by_field = yaml.safe_load(capsys.readouterr().out)
    from orl_fast.cli import build_parser

    args = build_parser().parse_args(["pretrain", "--data", "a", "--out", "b"])
    cfg = args.load(args)
    assert (cfg.data, cfg.out) == (by_field["data"], by_field["out"]) == ("a", "b")
    args = build_parser().parse_args(["train", "--data", "a", "pairs=m", "train.epochs=2"])
    cfg = args.load(args)
    assert (cfg.data, cfg.pairs, cfg.train.epochs) == ("a", "m", 2)
    args = build_parser().parse_args(["pretrain", "--data", "yes", "--out", "..."])
    assert (args.load(args).data, args.load(args).out) == ("yes", "...")  # paths as written
    assert main(["pretrain", "--data", "a", "data=b", "out=c"]) == 2
    assert "data: given twice" in capsys.readouterr().err


def test_scenes_then_ingest_with_a_chosen_shard_size(tmp_path, capsys):
    assert main(["scenes", str(tmp_path / "w"), "--images", "40"]) == 0
    assert (tmp_path / "w" / "instances.json").exists()
    assert len(os.listdir(tmp_path / "w" / "images")) == 40
    capsys.readouterr()
    assert main(["ingest", "--src", str(tmp_path / "w" / "images"), "--quiet",
                 f"out={tmp_path / 's'}", "ingest.workers=2"]) == 0
    printed = capsys.readouterr().out
    assert '"shard_size": 32' in printed and '"shards": 2' in printed  # 40 images, 2 workers
    # a world that cannot exist: one line naming the field, exit 2, nothing written
    assert main(["scenes", str(tmp_path / "bad"), "--max-objects", "1"]) == 2
    assert "min_objects, max_objects: need 1 <= min_objects <= max_objects, got 2, 1" in (
        capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_scenes_take_the_colour_model_the_background_and_the_categories_per_scene(tmp_path, capsys):
    from loaders.synthetic import World, write_scenes

    assert main(["scenes", str(tmp_path / "cli"), "--images", "2", "--colours", "object"]) == 0
    write_scenes(str(tmp_path / "object"), 2, world=World(colours="object"))
    write_scenes(str(tmp_path / "scene"), 2)
    name = min(os.listdir(tmp_path / "cli" / "images"))

    def read(world: str) -> bytes:
        return (tmp_path / world / "images" / name).read_bytes()

    assert read("cli") == read("object") != read("scene")
    # an unknown colour model: one line naming the field, exit 2
    assert main(["scenes", str(tmp_path / "bad"), "--colours", "rainbow"]) == 2
    assert "colours: one of scene, object, pair, got 'rainbow'" in capsys.readouterr().err
    assert main(["scenes", str(tmp_path / "plain"), "--images", "2", "--background", "plain"]) == 0
    write_scenes(str(tmp_path / "plain-api"), 2, world=World(background="plain"))
    assert read("plain") == read("plain-api") != read("scene")
    assert main(["scenes", str(tmp_path / "bad"), "--background", "wallpaper"]) == 2
    assert "background: one of clutter, plain, got 'wallpaper'" in capsys.readouterr().err
    assert main(["scenes", str(tmp_path / "one"), "--images", "2",
                 "--categories-per-scene", "1"]) == 0
    write_scenes(str(tmp_path / "one-api"), 2, world=World(categories_per_scene=1))
    assert read("one") == read("one-api")
    assert main(["scenes", str(tmp_path / "bad"), "--categories-per-scene", "9"]) == 2
    assert "categories_per_scene: 0 (any) to 8, got 9" in capsys.readouterr().err
