"""The command line: config printing, errors naming the field, ingest, and the demo."""

from __future__ import annotations

import os

import pytest
import yaml
from PIL import Image

from orl_fast.cli import main
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
    assert main(["demo", "--out", str(tmp_path), "--images", "32", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "stage 1 checkpoint" in out
    state = checkpoint.load(str(tmp_path / "stage1"))
    assert state["step"] == 2  # 32 images, batch 16, 1 epoch
    assert (tmp_path / "scenes" / "instances.json").exists()
    assert (tmp_path / "shards" / "index.json").exists()
    from loaders.pairs import open_pairs
    assert len(open_pairs(str(tmp_path / "mined"))) == 32  # one pair record per image
    assert "pair purity" in out
    orl = checkpoint.load(str(tmp_path / "stage3"))
    assert orl["stage"] == "stage3" and orl["step"] == 2
    assert "inter_predictor.0.weight" in orl["model"]
    for name in ("BYOL", "ORL"):
        assert (tmp_path / "eval" / name / "knn.json").exists()
        assert (tmp_path / "eval" / name / "linear.md").exists()
    assert "ORL (stage 3)   kNN mAP" in out
