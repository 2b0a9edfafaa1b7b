"""Training outputs and evaluation on object storage: Stage 1 with ``data=`` and ``out=`` on S3
(checkpoints, resume, keep-last-k, config.yaml, metrics.jsonl and TensorBoard uploaded), and every
evaluation path (checkpoints, VOC07 layouts, COCO json + images, reports, feature cache,
detection runs, exports, attention maps) as ``s3://`` URLs on an S3-compatible server on loopback
(moto, ``s3_server`` in conftest). Each result is compared with the same run on local paths.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch
import yaml
from support.common import orl_fast_cmd, subprocess_env
from support.evaluation import TINY_DETECTION, make_checkpoint, pennfudan_subsets

from evaluation import attention, backbones, classification, datasets, export
from evaluation.detection import evaluate as det_eval
from orl_fast.core import checkpoint, storage
from orl_fast.core.config import load_config
from orl_fast.core.runlog import RunLog
from orl_fast.training import stage1

FAST_EVAL = ["eval.resize=64", "eval.crop=56", "eval.pooling=global", "eval.num_workers=0",
             "eval.device=cpu", "eval.jobs=1"]
CLASSES = ("person", "car", "dog")


def upload(local: str, url: str) -> None:
    """Every file under the local directory ``local`` to the same relative names under ``url``."""
    fs, root = storage.url_to_fs(url)
    for dirpath, _, names in os.walk(local):
        for name in names:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            fs.put_file(src, f"{root.rstrip('/')}/{rel}")


def read_text(url: str) -> str:
    return storage.read_bytes(url).decode()


def jsonl(url: str) -> list[dict]:
    return [json.loads(line) for line in read_text(url).splitlines()]


def numbers(rep: dict) -> dict:
    """Every number of a classification report, without timings and file locations."""
    return {name: {layer: {k: v for k, v in r.items() if k != "seconds"}
                   for layer, r in res["layers"].items()} for name, res in rep["results"].items()}


def _voc_rows(shared_data) -> dict[str, dict[str, int]]:
    with open(shared_data / "voc07" / "labels.csv", newline="") as f:
        return {r["id"]: {c: int(v) for c, v in r.items() if c != "id"} for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def site(shared_data, s3_server, tmp_path_factory):
    """The same small inputs on disk (``local``) and in a bucket (``remote``), same names:

    run/ (a tiny ResNet-18 checkpoint), voc/ (labels.csv with a split column + images/: 6 images
    per class of CLASSES and 6 with none, 2 of each 6 in the test split), VOCdevkit/VOC2007
    (12 of those images: trainval 8, test 4, all 20 classes), att/images (2 images)."""
    local = tmp_path_factory.mktemp("site")
    make_checkpoint(str(local / "run"))
    rows = _voc_rows(shared_data)
    groups: list[list[str]] = [[] for _ in range(len(CLASSES) + 1)]
    for img, labels in sorted(rows.items()):
        present = [c for c in CLASSES if labels[c] != -1]
        g = CLASSES.index(present[0]) if len(present) == 1 and labels[present[0]] == 1 else (
            len(CLASSES) if not present else None)
        if g is not None and len(groups[g]) < 6:
            groups[g].append(img)
    assert all(len(g) == 6 for g in groups)
    (local / "voc" / "images").mkdir(parents=True)
    with open(local / "voc" / "labels.csv", "w") as f:
        f.write("id,split," + ",".join(CLASSES) + "\n")
        for g in groups:
            for k, img in enumerate(g):
                split = "test" if k % 3 == 2 else "train"
                f.write(f"{img},{split}," + ",".join(str(rows[img][c]) for c in CLASSES) + "\n")
                shutil.copyfile(shared_data / "voc07" / "images" / f"{img}.jpg",
                                local / "voc" / "images" / f"{img}.jpg")
    voc = local / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ids = sorted(g[k] for g in groups for k in range(3))
    splits = {"trainval": ids[:8], "test": ids[8:]}
    for img in ids:
        shutil.copyfile(local / "voc" / "images" / f"{img}.jpg", voc / "JPEGImages" / f"{img}.jpg")
    for cls in datasets.VOC_CLASSES:
        for split, members in splits.items():
            with open(voc / "ImageSets" / "Main" / f"{cls}_{split}.txt", "w") as f:
                f.writelines(f"{img} {rows[img][cls]:2d}\n" for img in members)
    (local / "att" / "images").mkdir(parents=True)
    for img in ids[:2]:
        shutil.copyfile(local / "voc" / "images" / f"{img}.jpg",
                        local / "att" / "images" / f"{img}.jpg")
    remote = s3_server.make_bucket("site")
    upload(str(local), remote)
    return str(local), remote


# ----------------------------------------------------------------------------- training


def test_run_log_stages_remote_logs_and_uploads_them_whole(tmp_path):
    out = f"memory://orl-fast-test-{uuid.uuid4().hex[:8]}/run"
    log = RunLog(out, key="step", tb_prefix="stage1")
    assert log.remote and not storage.exists(storage.join(out, "metrics.jsonl"))
    for step in (1, 2):
        log.log(step, {"loss": 1.0 / step})
    log.sync()
    assert [m["step"] for m in jsonl(storage.join(out, "metrics.jsonl"))] == [1, 2]
    tb = storage.listdir(storage.join(out, "tb"))
    assert len(tb) == 1 and tb[0].startswith("events.out.tfevents")
    log.log(3, {"loss": 0.3})
    assert len(jsonl(storage.join(out, "metrics.jsonl"))) == 2  # uploaded at sync / close only
    staging = log._staging
    log.close()
    assert [m["step"] for m in jsonl(storage.join(out, "metrics.jsonl"))] == [1, 2, 3]
    assert not os.path.exists(staging)
    # Resumed from a checkpoint at step 2: step 3 (logged after it) is logged again, once.
    again = RunLog(out, key="step", tb_prefix="stage1", resumed_at=2)
    again.log(3, {"loss": 0.25})
    again.close()
    assert jsonl(storage.join(out, "metrics.jsonl")) == [
        {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}]
    assert len(storage.listdir(storage.join(out, "tb"))) == 2
    # A local OUT is written in place, as it always was; nothing logged on other ranks.
    local = RunLog(str(tmp_path), key="iter")
    assert not local.remote and local.writer is None
    local.log(1, {"loss": 2.0})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iter": 1, "loss": 2.0}\n'
    local.close()
    RunLog(str(tmp_path / "rank1"), enabled=False, tb_prefix="x").log(1, {"loss": 1.0})
    assert not (tmp_path / "rank1").exists()


def _scalar_steps(tb_dir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_stage1_on_s3_checkpoints_resumes_and_uploads_logs(coco_shards, tiny_config, s3_server,
                                                           tmp_path, capsys):
    from support.s3 import download_tree

    bucket = s3_server.make_bucket("stage1")
    upload(coco_shards, f"{bucket}/shards")
    run = f"{bucket}/run"
    ckpts = f"{run}/checkpoints"
    first = tiny_config(f"data={bucket}/shards", f"out={run}", "train.max_steps=2",
                        "train.ckpt_every_steps=1", "train.keep_last=1")
    path = stage1.run(first)
    assert path == f"{ckpts}/ckpt-00000002.pt"
    assert storage.listdir(ckpts) == ["ckpt-00000002.pt", "latest.json"]  # keep-last 1
    assert read_text(f"{run}/config.yaml") == first.to_yaml()
    assert [m["step"] for m in jsonl(f"{run}/metrics.jsonl")] == [1, 2]
    assert len(storage.listdir(f"{run}/tb")) == 1
    # As if a run had logged step 3 and died before checkpointing it.
    storage.atomic_write(f"{run}/metrics.jsonl", storage.read_bytes(f"{run}/metrics.jsonl")
                         + b'{"step": 3, "loss": 1000000.0}\n')
    capsys.readouterr()

    second = tiny_config(f"data={bucket}/shards", f"out={run}", "train.max_steps=3",
                         "train.ckpt_every_steps=1", "train.keep_last=1")
    assert stage1.run(second) == f"{ckpts}/ckpt-00000003.pt"
    assert f"resumed from {ckpts}/ckpt-00000002.pt at step 2/3" in capsys.readouterr().out
    assert storage.listdir(ckpts) == ["ckpt-00000003.pt", "latest.json"]
    state = checkpoint.load(run)
    assert state["step"] == 3 and state["stage"] == "stage1"
    logged = jsonl(f"{run}/metrics.jsonl")
    assert [m["step"] for m in logged] == [1, 2, 3] and logged[-1]["loss"] < 100
    assert len(storage.listdir(f"{run}/tb")) == 2  # one event file per run
    download_tree(f"{run}/tb", str(tmp_path / "tb"))
    assert _scalar_steps(str(tmp_path / "tb"), "stage1/loss") == [1, 2, 3]

    # The same 3 steps in one local run: the same weights and losses.
    ref = stage1.run(tiny_config(f"data={coco_shards}", f"out={tmp_path / 'local'}",
                                 "train.max_steps=3"))
    local = checkpoint.load(ref)
    for k, v in local["model"].items():
        assert torch.allclose(v.float(), state["model"][k].float(), rtol=1e-5, atol=1e-6), k
    local_logged = [json.loads(line) for line in
                    (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in local_logged] == pytest.approx([m["loss"] for m in logged],
                                                              abs=1e-5)
    assert set(local_logged[0]) == set(logged[0])


# ----------------------------------------------------------------------------- evaluation


def test_datasets_on_s3_equal_local(site, shared_data):
    local, remote = site
    for root, split in (("voc", "train"), ("voc", "test"), ("VOCdevkit", "trainval"),
                        ("VOCdevkit/VOC2007", "test")):
        a = datasets.load(os.path.join(local, root), split)
        b = datasets.load(f"{remote}/{root}", split)
        assert a.ids == b.ids and a.classes == b.classes and np.array_equal(a.labels, b.labels)
        assert b.paths == tuple(p.replace(local, remote) for p in a.paths)
        assert all(storage.exists(p) for p in b.paths[:2])
    assert datasets.parent(f"{remote}/x/instances.json") == f"{remote}/x"
    with pytest.raises(FileNotFoundError, match="val"):
        datasets.load(f"{remote}/VOCdevkit", "val")
    with pytest.raises(FileNotFoundError, match="neither a VOCdevkit"):
        datasets.load(f"{remote}/att", "train")


def test_voc07_svm_with_everything_on_s3_equals_local(site):
    local, remote = site
    reps = {}
    for root in (local, remote):
        cfg = load_config("paper", [f"ckpt={storage.join(root, 'run')}", *FAST_EVAL,
                                    "eval.svm.costs=[0.1,1.0]"])
        np.random.seed(0)  # liblinear's shuffling seed comes from numpy's global RNG
        reps[root] = classification.run("voc07", cfg, storage.join(root, "voc"), "train", "test",
                                        storage.join(root, "out"), progress=False)
    a, b = reps[local], reps[remote]
    assert b["files"] == {"json": f"{remote}/out/voc07.json",
                          "markdown": f"{remote}/out/voc07.md"}
    saved_a = storage.read_json(a["files"]["json"])
    saved_b = storage.read_json(b["files"]["json"])
    assert numbers(saved_b) == numbers(saved_a)
    assert saved_b["results"]["checkpoint"]["weights"]["source"] == (
        f"{remote}/run/checkpoints/ckpt-00000007.pt")
    assert saved_b["results"]["checkpoint"]["weights"]["digest"] == (
        saved_a["results"]["checkpoint"]["weights"]["digest"])
    assert read_text(b["files"]["markdown"]) == (
        read_text(a["files"]["markdown"]).replace(local, remote))
    # The feature cache is on S3, under the same names (same weights and images: same key).
    for name in ("checkpoint", "random init"):
        for part in ("train", "test"):
            ca, cb = a["results"][name]["features"][part], b["results"][name]["features"][part]
            assert cb["cache"].startswith(f"{remote}/out/feature-cache/") and not cb["cached"]
            assert os.path.basename(cb["cache"]) == os.path.basename(ca["cache"])
            assert storage.exists(cb["cache"])
    # A rerun on S3 reads the cached features.
    cfg = load_config("paper", [f"ckpt={remote}/run", *FAST_EVAL, "eval.svm.costs=[0.1,1.0]"])
    np.random.seed(0)
    again = classification.run("voc07", cfg, f"{remote}/voc", "train", "test", f"{remote}/out",
                               progress=False)
    assert all(r["features"][p]["cached"] for r in again["results"].values()
               for p in ("train", "test"))
    assert numbers(again) == numbers(b)


def test_cli_eval_knn_on_a_vocdevkit_on_s3_equals_local(site, s3_server):
    local, remote = site
    settings = [*FAST_EVAL, "eval.knn.k=3"]
    proc = subprocess.run(orl_fast_cmd(
        "eval", "knn", "--ckpt", f"{remote}/run", "--data", f"{remote}/VOCdevkit",
        "--train", "trainval", "--test", "test", "--out", f"{remote}/knn", "--quiet", *settings),
        env={**subprocess_env(), **s3_server.env()}, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| checkpoint | res5 |" in proc.stdout and f"report: {remote}/knn/knn.json" in proc.stdout
    cfg = load_config("paper", [f"ckpt={local}/run", *settings])
    rep = classification.run("knn", cfg, f"{local}/VOCdevkit", "trainval", "test",
                             f"{local}/knn", progress=False)
    saved_local = storage.read_json(rep["files"]["json"])
    saved_remote = storage.read_json(f"{remote}/knn/knn.json")
    assert saved_remote["dataset"]["train"]["images"] == 8
    assert numbers(saved_remote) == numbers(saved_local)
    md = read_text(rep["files"]["markdown"]).replace(local, remote)
    assert md in proc.stdout and read_text(f"{remote}/knn/knn.md") == md


def test_linear_probe_on_a_coco_json_on_s3_equals_local(scene_shards, site, s3_server):
    local, remote = site
    _, instances = scene_shards
    bucket = s3_server.make_bucket("scenes")
    upload(os.path.dirname(instances), f"{bucket}/scenes")
    reps = []
    for ckpt, split, out in ((f"{local}/run", instances, f"{local}/linear"),
                             (f"{remote}/run", f"{bucket}/scenes/instances.json",
                              f"{bucket}/linear")):
        cfg = load_config("paper", [f"ckpt={ckpt}", *FAST_EVAL, "eval.linear.epochs=5"])
        reps.append(classification.run("linear", cfg, "", split, None, out, progress=False))
    a, b = reps
    assert b["dataset"]["train"]["images"] + b["dataset"]["test"]["images"] == 48
    assert numbers(storage.read_json(b["files"]["json"])) == numbers(
        storage.read_json(a["files"]["json"]))


def test_export_to_s3_writes_the_same_bytes(site, s3_server, tmp_path):
    local, remote = site
    w_local, w_remote = backbones.load(f"{local}/run"), backbones.load(f"{remote}/run")
    assert w_remote.digest == w_local.digest and w_remote.arch == "resnet18"
    assert w_remote.source == f"{remote}/run/checkpoints/ckpt-00000007.pt"
    out = f"{remote}/export"
    for fmt, name in (("torchvision", "tv.pth"), ("detectron2", "d2.pkl")):
        files_local = export.export(w_remote, fmt, str(tmp_path / name))
        files_remote = export.export(w_remote, fmt, f"{out}/{name}")
        assert files_remote == [f.replace(str(tmp_path), out) for f in files_local]
        assert storage.read_bytes(files_remote[0]) == storage.read_bytes(files_local[0])
    assert read_text(f"{out}/d2.yaml") == (tmp_path / "d2.yaml").read_text().replace(
        str(tmp_path / "d2.pkl"), f"{out}/d2.pkl")
    sd = torch.load(storage.open_file(f"{out}/tv.pth"), weights_only=True)
    assert torch.equal(sd["layer1.0.conv1.weight"], w_local.state_dict["layer1.0.conv1.weight"])

    proc = subprocess.run(orl_fast_cmd("export", "--format", "detectron2", "--ckpt",
                                       f"{remote}/run", "--out", f"{out}/cli/d2.pkl",
                                       "eval.detection.schedule=0.5"),
                          env={**subprocess_env(), **s3_server.env()}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == [f"{out}/cli/d2.pkl", f"{out}/cli/d2.yaml"]
    assert storage.read_bytes(f"{out}/cli/d2.pkl") == storage.read_bytes(f"{out}/d2.pkl")
    config = yaml.safe_load(read_text(f"{out}/cli/d2.yaml"))
    assert config["SOLVER"]["MAX_ITER"] == 45000 and config["MODEL"]["WEIGHTS"] == (
        f"{out}/cli/d2.pkl")


def test_cli_viz_attention_with_images_and_out_on_s3_equals_local(site, s3_server):
    local, remote = site
    proc = subprocess.run(orl_fast_cmd(
        "viz", "attention", "--ckpt", f"{remote}/run", "--images", f"{remote}/att/images",
        "--out", f"{remote}/viz", "eval.viz_size=48", "eval.device=cpu"),
        env={**subprocess_env(), **s3_server.env()}, capture_output=True, text=True, timeout=120,
        check=False)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["grid"] == f"{remote}/viz/attention/grid.png"
    assert [m["label"] for m in printed["models"]] == ["BYOL, step 7 (run)", "random init"]
    # The same maps from local paths.
    seed = load_config("paper").eval.seed
    models = [("BYOL, step 7 (run)", backbones.load(f"{local}/run")),
              ("random init", backbones.random_init("resnet18", seed))]
    images = attention.list_images(f"{local}/att/images", 8)
    assert attention.list_images(f"{remote}/att/images", 8) == [
        p.replace(local, remote) for p in images]
    mine = attention.write(models, images, f"{local}/viz", 48, "cpu")
    assert storage.listdir(f"{remote}/viz/attention") == ["0000.png", "0001.png", "grid.png",
                                                          "index.html"]
    for path in (*mine["rows"], mine["grid"]):
        assert storage.read_bytes(path.replace(local, remote)) == storage.read_bytes(path)
    assert read_text(f"{remote}/viz/attention/index.html") == read_text(mine["html"]).replace(
        local, remote)
    # A list file of image URLs, itself on S3.
    storage.atomic_write(f"{remote}/att/list.txt",
                         "".join(p.replace(local, remote) + "\n" for p in images).encode())
    assert attention.list_images(f"{remote}/att/list.txt", 1) == [images[0].replace(local,
                                                                                    remote)]


@pytest.mark.slow
def test_detection_with_data_and_runs_on_s3_equals_local(shared_data, site, s3_server, tmp_path):
    local, remote = site
    root = str(shared_data / "pennfudan")
    train_json, val_json = pennfudan_subsets(root, str(tmp_path), n_train=4, n_val=3)
    # The images of both files and the files themselves under one prefix: the image root
    # defaults to the folder of the JSON.
    bucket = s3_server.make_bucket("det")
    fs, _ = storage.url_to_fs(bucket)
    for path in (train_json, val_json):
        for im in storage.read_json(path)["images"]:
            fs.put_file(os.path.join(root, im["file_name"]),
                        f"{bucket[5:]}/pennfudan/{im['file_name']}")
        fs.put_file(path, f"{bucket[5:]}/pennfudan/{os.path.basename(path)}")

    # The detector heads are initialised from eval.seed: both runs start from the same weights.
    cfg_local = load_config("paper", [f"ckpt={local}/run", *TINY_DETECTION])
    torch.manual_seed(123)  # the global RNG state does not matter
    a = det_eval.run(cfg_local, train_json, val_json, str(tmp_path / "det"), root, root,
                      progress=False)
    cfg_remote = load_config("paper", [f"ckpt={remote}/run", *TINY_DETECTION])
    out = f"{bucket}/det"
    b = det_eval.run(cfg_remote, f"{bucket}/pennfudan/train.json",
                      f"{bucket}/pennfudan/val.json", out, progress=False)
    assert b["files"]["json"] == f"{out}/detection.json"
    assert storage.read_json(f"{out}/detection.json")["dataset"]["train_images"] == 4
    for name in ("checkpoint", "random init"):
        run_dir = f"{out}/{name.replace(' ', '-')}"
        assert b["results"][name]["run_dir"] == run_dir
        assert storage.listdir(f"{run_dir}/checkpoints") == ["ckpt-00000002.pt", "latest.json"]
        logged = jsonl(f"{run_dir}/metrics.jsonl")
        local_logged = jsonl(os.path.join(a["results"][name]["run_dir"], "metrics.jsonl"))
        assert [m["iter"] for m in logged] == [1, 2]
        assert [m["loss"] for m in logged] == pytest.approx([m["loss"] for m in local_logged])
        for iou_type in ("bbox", "segm"):
            ma, mb = a["results"][name]["metrics"][iou_type], b["results"][name]["metrics"][
                iou_type]
            for k in ("AP", "AP50", "AP75"):
                assert mb[k] == pytest.approx(ma[k], abs=1e-6), (name, iou_type, k)
    assert "| checkpoint |" in read_text(f"{out}/detection.md")
    # A rerun resumes from the checkpoints on S3: no training, nothing logged twice.
    again = det_eval.run(cfg_remote, f"{bucket}/pennfudan/train.json",
                          f"{bucket}/pennfudan/val.json", out, progress=False)
    for name, res in again["results"].items():
        assert len(jsonl(f"{res['run_dir']}/metrics.jsonl")) == 2
        assert res["metrics"]["bbox"]["AP"] == b["results"][name]["metrics"]["bbox"]["AP"]
