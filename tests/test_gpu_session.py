"""The GPU checks as one command (benchmarks/gpu_session.py): caps, budget, results."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_session", REPO / "benchmarks" /
                                                  "gpu_session.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up there)
    spec.loader.exec_module(mod)
    return mod


gs = _load()


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_checks_run_in_order_with_results_caps_and_budget(tmp_path):
    pidfile = tmp_path / "child.pid"
    checks = [
        gs.Check("ok", 4, 30, _py("print('warming up'); print('{\"rate\": 12.5}'); print('done')")),
        gs.Check("writes", 5, 30, _py("import sys; open(sys.argv[1], 'w').write('{\"b/a\": 0.97}')")
                 + ["{out}/w.json"], json_file="w.json"),
        gs.Check("fails", 4, 30, _py("import sys; print('boom'); sys.exit(3)")),
        # a check past its cap is killed with its whole process group (here: a child it started)
        gs.Check("hangs", 4, 2, _py(
            "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(p.pid)); "
            "time.sleep(60)") + [str(pidfile)]),
        gs.Check("no_data", 4, 30, _py("print(1)"), needs=("no-such-set",)),
        gs.Check("no_time", 4, 10_000, _py("print(1)")),
    ]
    t0 = time.monotonic()
    results = gs.run_session(checks, budget=40, out=tmp_path / "s", rehearse=False, site=None)
    assert time.monotonic() - t0 < 30
    by = {r["name"]: r for r in results}
    assert [r["name"] for r in results] == [c.name for c in checks]
    assert by["ok"]["status"] == "passed" and by["ok"]["last_line"] == "done"
    assert json.loads((tmp_path / "s" / by["ok"]["json"]).read_text()) == {"rate": 12.5}
    assert by["writes"]["status"] == "passed" and by["writes"]["json"] == "w.json"
    assert by["fails"]["status"] == "failed" and by["fails"]["rc"] == 3
    assert "boom" in (tmp_path / "s" / "fails.log").read_text()
    assert by["hangs"]["status"] == "timed out" and by["hangs"]["seconds"] < 10
    child = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
    assert by["no_data"]["status"] == "skipped" and "no-such-set" in by["no_data"]["reason"]
    # 40 s budget, ~35 s left: less than this check's cap and than MIN_SECONDS (60 s)
    assert by["no_time"]["status"] == "skipped" and "budget" in by["no_time"]["reason"]
    saved = json.loads((tmp_path / "s" / "session.json").read_text())
    assert saved["budget_s"] == 40 and [r["status"] for r in saved["checks"]] == [
        r["status"] for r in results]


def test_a_check_is_capped_by_what_is_left_of_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(gs, "MIN_SECONDS", 1)
    slow = gs.Check("slow", 4, 600, _py("import time; time.sleep(60)"))
    t0 = time.monotonic()
    [r] = gs.run_session([slow], budget=3, out=tmp_path, rehearse=False, site=None)
    assert r["status"] == "timed out" and 2.5 < time.monotonic() - t0 < 10


def test_rehearsal_uses_the_cpu_form_where_there_is_one(tmp_path):
    checks = [gs.Check("both", 4, 30, _py("print('{\"form\": \"gpu\"}')"),
                       _py("print('{\"form\": \"cpu\"}')")),
              gs.Check("same", 4, 30, _py("print('{\"form\": \"any\"}')"))]
    results = gs.run_session(checks, budget=100, out=tmp_path, rehearse=True, site=None)
    assert [r["status"] for r in results] == ["passed", "passed"]
    assert json.loads((tmp_path / "both.json").read_text()) == {"form": "cpu"}
    assert json.loads((tmp_path / "same.json").read_text()) == {"form": "any"}


def test_environment_puts_the_wheels_checkout_and_carried_data_in_place(monkeypatch, tmp_path):
    site, data = tmp_path / "site", tmp_path / "gpudata"
    site.mkdir()
    data.mkdir()
    monkeypatch.setattr(gs, "DATA", data)
    monkeypatch.setenv("PYTHONPATH", "/x")
    env = gs.environment(site)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(site), str(REPO), "/x"]
    assert env["ORL_FAST_SHARED_DATA"] == str(data)
    # no wheels installed (or none asked for): this machine's own packages
    for none in (tmp_path / "absent", None):
        assert gs.environment(none)["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/x"]


def test_the_session_checks_are_well_formed():
    names = [c.name for c in gs.CHECKS]
    assert len(set(names)) == len(names) and names[0] == "machine"
    # the Stage 3 loader check runs first after the machine's description
    assert names[1] == "stage3_loader"
    for c in gs.CHECKS:
        for argv in (c.argv, c.rehearsal or c.argv):
            scripts = [a for a in argv if a.endswith(".py")]
            assert all(Path(s).is_file() for s in scripts), c.name
        if c.json_file:
            assert any("{out}" in a for a in c.argv), c.name


@pytest.mark.slow
def test_every_flag_of_every_check_is_one_its_script_accepts():
    """The GPU forms cannot run here; their flags are checked against each script's --help."""
    for c in gs.CHECKS:
        scripts = [a for a in c.argv if a.endswith(".py") and "benchmarks" in a]
        if not scripts:
            continue
        helptext = subprocess.run([sys.executable, scripts[0], "--help"], cwd=REPO,
                                  capture_output=True, text=True, check=True).stdout
        accepted = set(re.findall(r"--[a-z][a-z0-9-]*", helptext))
        for argv in filter(None, (c.argv, c.rehearsal)):
            used = {a for a in argv if a.startswith("--")}
            assert used <= accepted, (c.name, used - accepted)


def test_machine_prints_versions():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_session.py"), "machine"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["cpus"] == os.cpu_count() and info["versions"]["torch"]
