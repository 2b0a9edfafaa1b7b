"""One direction of imports: the import-linter contract of pyproject.toml holds, with no
exception listed, and the light modules stay light (no OpenCV, no pycocotools, nothing above the
ground floor)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from support.common import REPO, subprocess_env

PROJECT = ("orl_fast", "loaders", "mining", "evaluation", "cluster")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    r = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
                       cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(r.stdout.split())


def test_import_contract_is_kept_with_no_exceptions():
    pytest.importorskip("importlinter", reason="needs the dev extra (import-linter)")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == set(PROJECT)
    kinds = [c["type"] for c in config["contracts"]]
    assert "layers" in kinds
    for contract in config["contracts"]:
        assert not contract.get("ignore_imports"), contract["name"]
        assert not contract.get("unmatched_ignore_imports_alerting"), contract["name"]
    lint = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    r = subprocess.run([sys.executable, "-c", lint, "--no-cache"], cwd=REPO, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"Contracts: {len(kinds)} kept, 0 broken." in r.stdout


def test_ground_floor_imports_nothing_else_of_the_project():
    core = ("config", "defaults", "storage", "extras", "checkpoint", "distributed", "runlog",
            "ray_runtime", "boxes", "models", "losses")
    loaded = _modules_after("".join(f"import orl_fast.core.{m}\n" for m in core)
                            + "from orl_fast.core.config import load_config\n"
                            "load_config('small')\n")
    above = sorted(m for m in loaded if m.split(".")[0] in PROJECT and m != "orl_fast"
                   and not m.startswith("orl_fast.core"))
    assert above == []


@pytest.mark.parametrize("module, heavy", [
    ("evaluation.export", "pycocotools"),
    ("evaluation.detection.schedule", "pycocotools"),
    ("mining.viz", "cv2"),
    ("mining.purity", "cv2"),
    ("mining.embed", "cv2"),
    ("mining.official_json", "cv2"),
])
def test_light_modules_do_not_import_heavy_extras(module, heavy):
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    assert not {m for m in loaded if m == heavy or m.startswith(heavy + ".")}
