"""A missing optional dependency stops a step at start-up with one line naming the extra."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from support.common import REPO

from mining.knn import KnnIndex
from orl_fast.cli import main
from orl_fast.core import storage
from orl_fast.core.config import load_config
from orl_fast.core.extras import MissingExtra, require, require_opencv_contrib
from orl_fast.core.ray_runtime import ray_session
from orl_fast.training import launch, stage1


def _without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of ``modules`` fails."""
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run([sys.executable, "-c", block + code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


def test_require_names_the_extra():
    assert require("json", "none", "x").dumps([1]) == "[1]"
    with pytest.raises(MissingExtra, match=r"the `mining` extra .*pip install 'orl-fast\[mining\]'"):
        require("no_such_module_xyz", "mining", "selective search")


def test_mine_without_opencv_is_one_line_naming_the_mining_extra(tmp_path):
    r = _without(["cv2"], "from orl_fast.cli import main; sys.exit(main(["
                          f"'mine', '--config', 'small', 'data={tmp_path}', 'out={tmp_path}']))")
    assert r.returncode == 2, r.stderr
    assert "selective search needs the `mining` extra" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_opencv_without_contrib_is_reported_as_such(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))  # plain OpenCV: no ximgproc
    with pytest.raises(MissingExtra, match=r"contrib modules \(cv2.ximgproc\).*uninstall "
                                           r"opencv-python"):
        require_opencv_contrib()


@pytest.mark.parametrize("module, blocked, extra", [
    ("evaluation.voc07", "sklearn", "eval"),
    ("evaluation.detection.data", "pycocotools", "eval"),
    ("evaluation.detection.evaluate", "pycocotools", "eval"),
])
def test_evaluations_name_the_eval_extra(module, blocked, extra):
    r = _without([blocked], f"import {module}")
    assert r.returncode == 1
    assert "MissingExtra: " in r.stderr and f"pip install 'orl-fast[{extra}]'" in r.stderr


def test_ray_session_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"the `ray` extra"), ray_session():
        pass


def test_ray_train_launcher_without_ray_train(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.train", None)
    with pytest.raises(MissingExtra, match=r"train.launcher=ray needs the `ray` extra"):
        launch.ray_train(load_config("small"), stage1.run)


def test_submit_without_ray_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    assert main(["submit", "--no-wait", "--", "orl-fast", "config"]) == 2
    err = capsys.readouterr().err
    assert "orl-fast submit needs the `ray` extra" in err and len(err.strip().splitlines()) == 1


def test_faiss_backend_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    bank = np.eye(4, dtype=np.float32)
    with pytest.raises(MissingExtra, match=r"mine.knn_backend=faiss needs the `mining` extra"):
        KnnIndex(bank, backend="faiss")


def test_s3_urls_without_s3fs(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(MissingExtra, match=r"s3:// needs .*pip install 'orl-fast\[s3\]'"):
        storage.url_to_fs("s3://bucket/shards")


def test_dashboard_without_its_dependencies(monkeypatch):
    """A minimal Ray (no ray[default]) cannot run the dashboard that Ray Train and jobs need."""
    from ray._private import utils

    from orl_fast.core.ray_runtime import require_dashboard

    monkeypatch.setattr(utils, "get_dashboard_dependency_error", lambda: "No module named 'x'",
                        raising=False)
    with pytest.raises(MissingExtra, match=r"dashboard, whose dependencies \(ray\[default\]\) "
                                           r"are missing \(No module named 'x'\).*orl-fast\[ray\]"):
        require_dashboard("train.launcher=ray")
    monkeypatch.setattr(utils, "get_dashboard_dependency_error", lambda: None, raising=False)
    require_dashboard("train.launcher=ray")  # complete: no error


def test_detectron2_engine_without_detectron2_is_one_line_saying_how_to_install_it(tmp_path):
    """detectron2 has no wheels: the message names the script that builds it."""
    r = _without(["detectron2"], "from orl_fast.cli import main; sys.exit(main(["
                                 "'eval', 'detection', '--engine', 'detectron2', '--ckpt', "
                                 f"'random', '--train-json', '{tmp_path}/x.json', "
                                 f"'--out', '{tmp_path}/out']))")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("orl-fast: eval.detection.engine=detectron2 needs `detectron2`")
    assert "scripts/install-detectron2.sh" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # stopped at start-up
