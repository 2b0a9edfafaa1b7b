"""The commands of the README (and of docs/EVALUATION.md): every ``orl-fast`` command parses with
the CLI's own parser (every flag exists) and its config loads (every field exists and every value
is valid), as a run would at start-up; the cheap steps of the worked example run as written."""

from __future__ import annotations

import json
import os

import pytest
from support.common import REPO
from support.readme import README, commands, worked_example

from orl_fast.cli import check_job
from orl_fast.core.config import ConfigError

VARIABLES = {"IMAGES": "/images", "LABELLED": "/labelled"}


DOCUMENTS = (README, REPO / "docs" / "EVALUATION.md")


def orl_fast_commands() -> list:
    return [c for doc in DOCUMENTS for c in commands(doc, VARIABLES)
            if c.orl_fast_args is not None]


def test_the_readme_has_a_worked_example_from_the_repository_alone():
    steps = [c.orl_fast_args[0] for c in worked_example()]
    for step in ("scenes", "ingest", "pretrain", "mine", "train", "eval", "viz", "export"):
        assert step in steps
    assert not any("shared" in c.text for c in worked_example())  # no data from outside


@pytest.mark.parametrize("command", orl_fast_commands(), ids=lambda c: c.text[:80])
def test_every_readme_command_parses_and_its_config_loads(command):
    try:
        check_job(["orl-fast", *command.orl_fast_args])
    except SystemExit as e:  # argparse: an unknown flag or a missing argument
        pytest.fail(f"{command.text}: does not parse (exit {e.code})")
    except ConfigError as e:
        pytest.fail(f"{command.text}: {e}")


@pytest.mark.slow
def test_the_cheap_steps_of_the_worked_example_run_as_written(tmp_path, monkeypatch, capsys):
    from orl_fast.cli import main

    monkeypatch.chdir(tmp_path)
    steps = {c.orl_fast_args[0]: c for c in worked_example()}
    for step in ("scenes", "ingest"):
        assert main(steps[step].orl_fast_args) == 0, steps[step].text
    printed = capsys.readouterr().out
    report = json.loads(next(ln for ln in printed.splitlines() if ln.startswith("{")))
    assert report["written"] == 256 and report["shards"] >= 2  # several units, chosen
    assert os.path.exists("runs/world/instances.json")
    assert os.path.exists("runs/world/shards/index.json")
