"""Evaluation reports: ``OUT/<name>.json`` (every number and the protocol used) and
``OUT/<name>.md`` (a short Markdown table), both written atomically."""

from __future__ import annotations

import datetime
import json
import math
import platform

import torch

from orl_fast.core import storage


def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(out: str, name: str, report: dict, markdown: str) -> tuple[str, str]:
    """Write ``OUT/<name>.json`` and ``OUT/<name>.md``; returns their paths."""
    storage.makedirs(out)
    json_path, md_path = storage.join(out, f"{name}.json"), storage.join(out, f"{name}.md")
    storage.atomic_write(json_path, (json.dumps(_finite(report), indent=1) + "\n").encode())
    storage.atomic_write(md_path, markdown.encode())
    return json_path, md_path


def _finite(x):
    """JSON has no NaN: write null instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
