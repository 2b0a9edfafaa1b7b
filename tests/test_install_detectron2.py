"""scripts/install-detectron2.sh: one-line failures, and nothing to do when detectron2 is there.
(The build itself runs in CI, from the vendored source archive, before the tests.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest
from support.common import REPO

SCRIPT = REPO / "scripts" / "install-detectron2.sh"


def _run(*args: str, python: str = sys.executable, env: dict | None = None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, **(env or {}), "PYTHON": python})


@pytest.fixture
def without_detectron2(tmp_path) -> dict:
    """An environment whose Python cannot import detectron2 (a failing package shadows it)."""
    fake = tmp_path / "shadow" / "detectron2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('shadowed by the test')\n")
    return {"PYTHONPATH": str(tmp_path / "shadow")}


def test_without_torch_it_fails_with_one_line(tmp_path):
    python = tmp_path / "python-without-site-packages"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    python.chmod(0o755)
    r = _run(python=str(python))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        (f"install-detectron2: torch is not installed for {python}; install orl-fast first "
         "(pip install -c constraints.txt -e .)")]


def test_a_source_that_is_none_fails_with_one_line(tmp_path, without_detectron2):
    r = _run(str(tmp_path / "nowhere"), env=without_detectron2)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        (f"install-detectron2: {tmp_path / 'nowhere'}: no such file or directory (expected a "
         "git URL, a source archive or a directory)")]
    (tmp_path / "notes.txt").write_text("x")
    r = _run(str(tmp_path / "notes.txt"), env=without_detectron2)
    assert r.returncode == 1 and "not a source archive" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_archive_without_setup_py_fails_with_one_line(tmp_path, without_detectron2):
    (tmp_path / "src" / "detectron2").mkdir(parents=True)
    (tmp_path / "src" / "detectron2" / "README.md").write_text("no setup.py here")
    archive = tmp_path / "d2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "detectron2", arcname="detectron2")
    r = _run(str(archive), env=without_detectron2)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"install-detectron2: no setup.py in {archive}"]


def test_with_detectron2_installed_there_is_nothing_to_do():
    pytest.importorskip("detectron2._C", reason="detectron2 is not installed")
    r = _run("/a/source/that/is/never/read")
    assert r.returncode == 0, r.stderr
    assert "its compiled ops load: nothing to do (FORCE=1 rebuilds)" in r.stdout
