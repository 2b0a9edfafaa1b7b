"""Bad input as a hostile user gives it: one line and exit 2 for each, checks before any work,
resumes that check what they resume, ingest that never hangs, one writer per output directory,
no orphan workers, logs cut at the resumed step, and latest.json kept inside its run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from support import hostile
from support.common import TINY_OVERRIDES, orl_fast_cmd, subprocess_env
from support.loopback import _stat, descendants
from support.mining import make_ckpt
from support.orl import TINY_ORL, random_pairs
from support.synthetic_pairs import random_records, write_pairs

from loaders.ingest import ingest
from loaders.pairs import PairRecord, write_pair_shards
from loaders.shards import ShardIndex
from orl_fast.cli import main
from orl_fast.core import checkpoint, locks, storage
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import IngestConfig
from orl_fast.core.errors import InputError, OutputLocked
from orl_fast.training import stage1, stage3

TINY = ["--config", "small", *TINY_OVERRIDES]


def fail(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with one line on stderr and no traceback: that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "weights_only" not in err, err
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what "nothing written" compares)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def shards_copy(coco_shards, tmp_path) -> Path:
    """A private copy of the 64-image shard set, to damage."""
    return Path(shutil.copytree(coco_shards, tmp_path / "shards"))


# --- 1. one line naming the field or path, exit 2 ------------------------------------------

def test_every_bad_input_is_one_line_and_exit_2(coco_shards, shards_copy, tmp_path, capsys):
    images = hostile.source_tree(tmp_path / "images")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.yaml").write_text("train: [1\n")
    (tmp_path / "garbage.pt").write_bytes(b"garbage\n")
    (shards_copy / "index.json").write_text('{"version": 1, "shards": [')
    out = str(tmp_path / "out")
    cases = [
        (["ingest", "/nonexistent/dir", out], "/nonexistent/dir: no such directory"),
        (["pretrain", *TINY, "data=/nonexistent", f"out={out}"],
         "data: /nonexistent: no such directory"),
        (["pretrain", *TINY, f"data={images}", f"out={out}"], "a folder of images, not shards"),
        (["ingest", str(images), str(tmp_path / "a_file")], "is a file, not a directory"),
        (["pretrain", *TINY, f"data={coco_shards}", f"out={tmp_path / 'a_file'}"],
         "out: "),
        (["pretrain", *TINY, f"data={shards_copy}", f"out={out}"],
         "index.json: not valid JSON"),
        (["config", "--config", str(tmp_path / "bad.yaml")], "not valid YAML (line 2"),
        (["config", "train.epochs=[1"], "override 'train.epochs=[1': the value is not valid"),
        (["pretrain", *TINY, f"data={coco_shards}", f"out={out}", "train.batch_size=128"],
         "train.batch_size: 128 is larger than the data set (64 images"),
        (["export", "--format", "torchvision", "--ckpt", str(tmp_path / "garbage.pt"), "--out",
          str(tmp_path / "x.pth")], "garbage.pt: not a checkpoint this can load"),
        (["mine", "--config", "small", f"data={coco_shards}", f"ckpt={tmp_path / 'none.pt'}",
          f"out={out}"], "none.pt: no checkpoint here"),
    ]
    for argv, expected in cases:
        assert expected in fail(argv, capsys), argv
    assert not os.path.exists(out)  # no failed step left an output behind


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    (tmp_path / "garbage.pt").write_bytes(b"garbage\n")
    argv = ["export", "--format", "torchvision", "--ckpt", str(tmp_path / "garbage.pt"),
            "--out", str(tmp_path / "x.pth")]
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("plain containers: Unsupported operand "
                                                       "103)")
    monkeypatch.setenv("ORL_FAST_DEBUG", "1")
    assert main(argv) == 2 and "Traceback" in capsys.readouterr().err


def test_the_real_command_prints_one_line(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"garbage\n")
    r = subprocess.run(orl_fast_cmd("export", "--format", "timm", "--ckpt",
                                    str(tmp_path / "garbage.pt"), "--out", str(tmp_path / "x")),
                       env=subprocess_env(), capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "weights_only" not in r.stderr, r.stderr


# --- 2. start-up checks; nothing written to OUT ---------------------------------------------

def test_mine_checks_its_checkpoint_before_any_work(coco_shards, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
    out = tmp_path / "mined"
    t = time.monotonic()
    line = fail(["mine", "--config", "small", f"data={coco_shards}",
                 f"ckpt={tmp_path / 'garbage.pt'}", f"out={out}", "mine.executor=local"], capsys)
    assert "garbage.pt: not a checkpoint" in line and time.monotonic() - t < 30
    assert not out.exists()
    # a checkpoint whose weights are not the encoder its config describes
    ckpt = make_ckpt(str(tmp_path / "stage1"))
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"]["proj_dim"] = 64  # the weights have 32
    torch.save(state, ckpt)
    line = fail(["mine", "--config", "small", f"data={coco_shards}", f"ckpt={ckpt}",
                 f"out={out}", "mine.executor=local"], capsys)
    assert line.startswith(f"orl-fast: ckpt: {ckpt}: does not hold the Stage 1 encoder")
    assert not out.exists()


def test_shard_index_is_checked_whole(shards_copy, tmp_path, capsys):
    (shards_copy / "shard-000001.tar").unlink()
    out = tmp_path / "run"
    line = fail(["pretrain", *TINY, f"data={shards_copy}", f"out={out}"], capsys)
    assert "lists shard-000001.tar, which is missing" in line
    assert not out.exists()


def test_train_checks_pairs_and_stage1_checkpoint_first(coco_shards, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, *TINY_ORL, f"data={coco_shards}", f"out={out}"]
    line = fail([*args, f"pairs={tmp_path / 'nothing'}"], capsys)
    assert line.startswith(f"orl-fast: pairs: {tmp_path / 'nothing' / 'pairs'}: no such directory")
    pairs = random_pairs(coco_shards, str(tmp_path / "mined"))
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    line = fail([*args, f"pairs={pairs}", "orl.init=stage1", f"ckpt={tmp_path / 'garbage.pt'}"],
                capsys)
    assert "garbage.pt: not a checkpoint" in line
    assert not out.exists()


# --- 3. a resume checks what it resumes; 10. logs cut at the resumed step --------------------

def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tb_steps(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars("stage1/loss")]


def test_resume_refuses_another_config_and_cuts_the_logs(coco_shards, scene_shards, tmp_path,
                                                         capsys):
    run = tmp_path / "run"
    base = [*TINY, f"out={run}", "train.max_steps=2"]
    assert main(["pretrain", *base, f"data={coco_shards}"]) == 0
    before = tree(run)
    capsys.readouterr()
    # another batch size, other data, another backbone: refused, naming them; OUT untouched
    for extra, named in [(["train.batch_size=16"], "differs in train.batch_size"),
                         ([f"data={scene_shards[0]}"], "differs in data ("),
                         (["model.backbone=resnet34"], "differs in model.backbone"),
                         (["model.backbone=resnet34", "train.batch_size=4"],
                          "differs in model.backbone, train.batch_size")]:
        line = fail(["pretrain", *base, f"data={coco_shards}", *extra], capsys)
        assert named in line and "--resume-anyway" in line, line
        assert tree(run) == before
    # a checkpoint of an earlier version (no identity): compared by its config
    path = checkpoint.resolve(str(run))
    state = torch.load(path, weights_only=True)
    del state["identity"]
    torch.save(state, path)
    assert "train.batch_size" in fail(["pretrain", *base, f"data={coco_shards}",
                                       "train.batch_size=16"], capsys)
    # anyway: a checkpoint that does not fit the model is still refused
    line = fail(["pretrain", *base, f"data={coco_shards}", "model.backbone=resnet34",
                 "--resume-anyway"], capsys)
    assert "does not fit this model" in line

    # a killed run had logged step 3 after its last checkpoint (step 2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1000000.0}\n{"step": 4, "lo')
    # what may change (max_steps, cadence, workers): resumed; the log is cut at step 2
    assert main(["pretrain", *base, f"data={coco_shards}", "train.max_steps=3",
                 "train.log_every_steps=1", "train.num_workers=1"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert _steps(run) == [1, 2, 3] and json.loads(
        (run / "metrics.jsonl").read_text().splitlines()[-1])["loss"] < 100
    assert len(os.listdir(run / "tb")) == 2 and _tb_steps(run) == [1, 2, 3]
    # --resume-anyway continues a run with another batch size
    assert main(["pretrain", *base, f"data={coco_shards}", "train.max_steps=4",
                 "train.batch_size=4", "--resume-anyway"]) == 0
    assert checkpoint.load(str(run))["step"] == 4
    assert "batch_size: 4" in (run / "config.yaml").read_text()


def test_stage3_resume_compares_pairs_and_init(coco_shards, tmp_path):
    pairs_a = random_pairs(coco_shards, str(tmp_path / "a"), seed=0)
    pairs_b = str(tmp_path / "b")  # other pairs: one shard (pairs are told apart by their index)
    write_pairs(pairs_b, random_records(ShardIndex(coco_shards), seed=1, min_side=24),
                shard_size=64)
    run = tmp_path / "run"

    def cfg(pairs, *extra):
        return load_config("small", [*TINY_OVERRIDES, *TINY_ORL, f"data={coco_shards}",
                                     f"pairs={pairs}", f"out={run}", *extra])

    stage3.run(cfg(pairs_a, "train.max_steps=1"))
    with pytest.raises(ConfigError, match=r"differs in pairs \("):
        stage3.prepare(cfg(pairs_b, "train.max_steps=2"))
    moved = shutil.copytree(pairs_a, tmp_path / "moved")  # the same pairs elsewhere: fine
    assert stage3.prepare(cfg(str(moved), "train.max_steps=2")).resume["step"] == 1
    ckpt = make_ckpt(str(tmp_path / "s1"))
    with pytest.raises(ConfigError, match="differs in .*orl.init"):
        stage3.prepare(cfg(pairs_a, "orl.init=stage1", f"ckpt={ckpt}"))


# --- 4. Stage 3 refuses pairs mined from other shards --------------------------------------

def test_stage3_refuses_pairs_of_other_shards(coco_shards, scene_shards, tmp_path, capsys):
    mined = random_pairs(scene_shards[0], str(tmp_path / "mined"))
    other = ShardIndex(scene_shards[0])
    (Path(mined) / "manifest.json").write_text(json.dumps(
        {"inputs": {"data": scene_shards[0], "data_index_sha256": other.digest}}))
    line = fail(["train", *TINY, *TINY_ORL, f"data={coco_shards}", f"pairs={mined}",
                 f"out={tmp_path / 'run'}"], capsys)
    assert f"pairs: {mined} was mined from other shards ({scene_shards[0]}" in line
    assert not (tmp_path / "run").exists()
    # pairs without a mining manifest (imported): their keys must be images of the data
    imported = str(tmp_path / "imported")
    write_pair_shards(imported, [(0, [PairRecord(10_000, 64, 64)])], knn_k=1, topn_frac=0.1)
    with pytest.raises(InputError, match="holds image key 10000, which data=.* lacks"):
        stage3.prepare(load_config("small", [*TINY_OVERRIDES, *TINY_ORL, f"data={coco_shards}",
                                             f"pairs={imported}", f"out={tmp_path / 'r'}"]))


# --- 5. / 7. ingest never hangs nor reads without bound; every input not ingested has a reason -

def test_fifo_dev_zero_and_links_are_reported_not_read(tmp_path):
    src = hostile.source_tree(tmp_path / "src")
    r = subprocess.run(orl_fast_cmd("ingest", str(src), str(tmp_path / "out"), "--quiet",
                                    "ingest.workers=1"),
                       env=subprocess_env(), capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[0])
    assert summary["written"] == 4 and summary["ignored_files"] == 7
    for reason, n in hostile.SOURCE_TREE_IGNORED.items():
        assert f"  ignored {reason}: {n}" in r.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {k: v["count"] for k, v in report["ignored"].items()} == hostile.SOURCE_TREE_IGNORED
    fifo = [p for p in report["ignored"]["not_a_regular_file"]["paths"]
            if p[0].endswith("fifo.jpg")]
    assert fifo == [[str(src / "fifo.jpg"), "a FIFO"]]


def test_list_entries_are_read_safely_and_bounded(tmp_path):
    src = hostile.source_tree(tmp_path / "src")
    (src / "big.jpg").write_bytes(hostile.jpeg(7) + b"\0" * 30_000)
    (tmp_path / "list.txt").write_text("".join(f"{src / n}\n" for n in (
        "img0.jpg", "fifo.jpg", "zero.jpg", "loop_a.jpg", "big.jpg", "gone.jpg")))
    report = ingest(str(tmp_path / "list.txt"), str(tmp_path / "out"),
                    IngestConfig(workers=1, max_bytes=20_000), progress=False)
    assert report["written"] == 1
    assert {k: v["count"] for k, v in report["skipped"].items()} == {
        "not_a_regular_file": 2, "symlink_loop": 1, "too_large": 1, "unreadable": 1}
    assert report["inputs"] == report["written"] + report["skipped_images"]


def _peak_rss_kb(path: Path, max_side: int) -> tuple[int, list[str]]:
    r = subprocess.run([sys.executable, "-c", hostile.PEAK_RSS_SCRIPT, str(path), str(max_side)],
                       env=subprocess_env(), capture_output=True, text=True, timeout=300,
                       check=True)
    base, peak, *rest = r.stdout.split()
    return int(peak) - int(base), rest


def test_large_images_decode_in_bounded_memory(tmp_path):
    png = tmp_path / "huge.png"  # 13000 x 13000 in 164 KB
    png.write_bytes(hostile.png_blank(13000, 13000))
    grew, (w, h, status) = _peak_rss_kb(png, 2048)
    assert (w, h, status) == ("2048", "2048", "ok")
    assert grew < 260_000, grew  # the 8-bit decode (169 MB) and the small image, no RGB copy
    jpg = tmp_path / "large.jpg"  # kept as it is: checked at 1/8 scale, not decoded whole
    jpg.write_bytes(hostile.jpeg_large(6000, 6000))
    grew, (w, h, status) = _peak_rss_kb(jpg, 0)
    assert (w, h, status) == ("6000", "6000", "ok") and grew < 40_000, grew


# --- 6. tar sources: what is readable is ingested, the rest reported --------------------------

def test_tar_sources_cut_or_not_tar_or_with_links(tmp_path, capsys):
    cases = {"cut.tar": (hostile.truncated_tar, 2, {"truncated_member": 1}),
             "cut_header.tar": (hostile.tar_cut_in_a_header, 2, {"unreadable_rest": 1}),
             "links.tar": (hostile.tar_with_links, 2, {"link_member": 2, "special_member": 2})}
    for name, (make, written, ignored) in cases.items():
        src = make(tmp_path / name)
        assert main(["ingest", str(src), str(tmp_path / f"out-{name}"), "--quiet"]) == 0
        summary = json.loads(capsys.readouterr().out.splitlines()[0])
        assert summary["written"] == written and summary["ignored_files"] == sum(ignored.values())
        report = json.loads((tmp_path / f"out-{name}" / "report.json").read_text())
        assert {k: v["count"] for k, v in report["ignored"].items()} == ignored, name
    assert len(ShardIndex(str(tmp_path / "out-cut.tar"))) == 2
    line = fail(["ingest", str(hostile.not_a_tar(tmp_path / "fake.tar")), str(tmp_path / "o")],
                capsys)
    assert "fake.tar: not a readable tar archive" in line and not (tmp_path / "o").exists()


def test_bad_corpus_ignored_files_have_reasons(bad_corpus, tmp_path, capsys):
    src, expected = bad_corpus
    assert main(["ingest", str(src), str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["ignored_files"] == expected["ignored"]
    assert "  ignored not_an_image_extension: 1" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ignored"]["not_an_image_extension"]["paths"] == [
        [str(src / "README.txt"), "extension not in ingest.extensions"]]


# --- 8. one writer per output directory ------------------------------------------------------

def test_lock_names_its_holder_and_is_released(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    held = rf"out: {out} is in use by another run \(orl-fast ingest, pid {os.getpid()} on "
    with locks.out_lock(out, "orl-fast ingest"):
        with pytest.raises(OutputLocked, match=held), locks.out_lock(out, "orl-fast pretrain"):
            pass
        assert os.path.exists(os.path.join(out, locks.LOCK_NAME))
    assert os.listdir(out) == []  # released, its file removed
    with locks.out_lock(str(tmp_path / "new" / "dir")):
        pass
    assert not (tmp_path / "new").exists()  # made for the lock, left empty: removed again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    script = ("import time; from orl_fast.core.locks import out_lock\n"
              f"with out_lock({str(out)!r}, 'holder'):\n"
              " print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=f"holder, pid {holder.pid}"), \
                locks.out_lock(str(out)):
            pass
    finally:
        holder.kill()
        holder.wait()
    with locks.out_lock(str(out)):  # the kernel released it with the process
        pass


def test_object_store_lease(monkeypatch):
    out = "memory://lease-test/out"
    with locks.out_lock(out, "orl-fast mine"):
        held = storage.read_json(f"{out}/{locks.LOCK_NAME}")
        assert held["command"] == "orl-fast mine" and held["expires"] > time.time()
        with pytest.raises(OutputLocked, match="orl-fast mine, pid"), locks.out_lock(out):
            pass
    assert not storage.exists(f"{out}/{locks.LOCK_NAME}")
    storage.atomic_write_json(f"{out}/{locks.LOCK_NAME}", {**held, "id": "dead",
                                                           "expires": time.time() - 1})
    with locks.out_lock(out, "second"):  # an expired lease (its holder was killed): taken over
        assert storage.read_json(f"{out}/{locks.LOCK_NAME}")["command"] == "second"


def test_two_ingests_into_one_out(coco_mini, tmp_path):
    names = sorted(os.listdir(coco_mini / "images"))[:320]
    (tmp_path / "list.txt").write_text("".join(f"{coco_mini / 'images' / n}\n" for n in names))
    args = ["ingest", str(tmp_path / "list.txt"), None, "--quiet", "ingest.shard_size=8",
            "ingest.workers=1"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(orl_fast_cmd(*[a or str(ref) for a in args]), env=subprocess_env(),
                   check=True, capture_output=True, timeout=600)
    both = [subprocess.Popen(orl_fast_cmd(*[a or str(out) for a in args]), env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # started together: one gets OUT, the other stops at start-up
    done = {p.pid: (p.wait(timeout=600), p.stderr.read()) for p in both}
    codes = sorted(code for code, _ in done.values())
    assert codes == [0, 2], done
    winner = next(pid for pid, (code, _) in done.items() if code == 0)
    loser_err = next(err for code, err in done.values() if code == 2)
    assert f"is in use by another run (orl-fast ingest, pid {winner} on " in loser_err
    assert tree(out) == tree(ref)  # the winner ran to the end, undisturbed


# --- 9. ingest workers die with the ingest ------------------------------------------------------

def test_kill_9_of_ingest_leaves_no_worker(coco_mini, tmp_path):
    names = sorted(os.listdir(coco_mini / "images"))
    (tmp_path / "list.txt").write_text("".join(f"{coco_mini / 'images' / n}\n" for n in names))
    out = tmp_path / "out"
    proc = subprocess.Popen(orl_fast_cmd("ingest", str(tmp_path / "list.txt"), str(out),
                                         "--quiet", "ingest.shard_size=4", "ingest.workers=2"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out.exists() and any(
                n.endswith(".tar") for n in os.listdir(out))):
            time.sleep(0.01)
        workers = descendants(proc.pid) - {proc.pid}
        assert len(workers) >= 2, "the pool did not start in time"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)]
        tars = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
        time.sleep(2)
        assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == tars
    finally:
        with _suppress():
            os.killpg(proc.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] != "Z"


def _suppress():
    import contextlib

    return contextlib.suppress(ProcessLookupError, PermissionError)


# --- 11. latest.json stays inside its run ---------------------------------------------------------

def test_latest_json_pointing_outside_the_run_is_refused(tmp_path, capsys):
    ckpt = make_ckpt(str(tmp_path / "run"))
    shutil.copy(ckpt, tmp_path / "x.pt")
    for name in ("../../x.pt", "/etc/passwd", "ckpt-1.pt/../../x.pt", 7):
        (tmp_path / "run" / "checkpoints" / "latest.json").write_text(json.dumps({"file": name}))
        with pytest.raises(InputError, match="not a checkpoint file of its own directory"):
            checkpoint.resolve(str(tmp_path / "run"))
    line = fail(["export", "--format", "torchvision", "--ckpt", str(tmp_path / "run"), "--out",
                 str(tmp_path / "w.pth")], capsys)
    assert "latest.json: names 7, not a checkpoint file" in line


def test_stage1_prepare_writes_nothing(coco_shards, tmp_path):
    cfg = load_config("small", [*TINY_OVERRIDES, f"data={coco_shards}", f"out={tmp_path / 'o'}"])
    p = stage1.prepare(cfg)
    assert p.resume is None and p.schedule.steps_per_epoch == 8 and not (tmp_path / "o").exists()
    assert tarfile.is_tarfile(os.path.join(coco_shards, "shard-000000.tar"))
