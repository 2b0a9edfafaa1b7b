"""The README's commands: its ``bash`` blocks read line by line (continuation lines joined,
comments dropped), each command with the section it is in. The README test parses every
``orl-fast`` command with the CLI's own parser and config loader; ``benchmarks/readme_example.py``
runs and times the worked example."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .common import REPO

README = REPO / "README.md"
WORKED_EXAMPLE = "A worked example"  # the section whose commands run from the repository alone


@dataclass(frozen=True)
class Command:
    section: str  # the "## ..." heading above the block
    argv: tuple[str, ...]
    text: str  # the command as written

    @property
    def orl_fast_args(self) -> list[str] | None:
        """The arguments after ``orl-fast`` / ``python -m orl_fast`` / ``torchrun ... -m orl_fast``,
        or None for another program."""
        argv = list(self.argv)
        if argv[:1] == ["orl-fast"]:
            return argv[1:]
        if "-m" in argv and argv.index("-m") + 1 < len(argv) and \
                argv[argv.index("-m") + 1] == "orl_fast":
            return argv[argv.index("-m") + 2:]
        return None


def commands(path: Path = README, variables: dict[str, str] | None = None) -> list[Command]:
    """Every command of the bash blocks of ``path``, in order; ``NAME=value`` lines set shell
    variables that later ``$NAME`` expand to (``variables`` are set first)."""
    env = dict(variables or {})
    out: list[Command] = []
    section, block, pending = "", False, ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("```"):
            block = line.strip() == "```bash" and not block
            continue
        if not block:
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        argv = shlex.split(pending, comments=True)
        text, pending = " ".join(argv), ""
        if not argv:
            continue
        assignment = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", text)
        if assignment and len(argv) == 1:
            env.setdefault(assignment[1], assignment[2])
            continue
        argv = [re.sub(r"\$(\w+)", lambda m: env.get(m[1], m[0]), a) for a in argv]
        out.append(Command(section, tuple(argv), text))
    return out


def worked_example(path: Path = README) -> list[Command]:
    return [c for c in commands(path) if c.section.startswith(WORKED_EXAMPLE)]
