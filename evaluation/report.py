"""Evaluation reports: ``OUT/<name>.json`` (every number and the protocol used) and
``OUT/<name>.md`` (a short Markdown table), both written atomically; and their metrics as
TensorBoard scalars beside a training run's (:func:`log_tensorboard`)."""

from __future__ import annotations

import datetime
import json
import math
import platform

import torch

from orl_fast.core import storage
from orl_fast.core.runlog import RunLog


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


def scalars(rep: dict, weights: str = "checkpoint") -> dict[str, float]:
    """The headline metrics of a report for ``weights``: ``<layer>/mAP`` (and ``top1``),
    ``<layer>/n<shots>_mAP`` (low-shot), ``<bbox|segm>/AP`` ... (detection)."""
    res = rep["results"].get(weights)
    if res is None:
        return {}
    out = {}
    if "metrics" in res:  # detection
        for kind, metrics in res["metrics"].items():
            out |= {f"{kind}/{k}": metrics[k] for k in ("AP", "AP50", "AP75") if k in metrics}
    for layer, r in res.get("layers", {}).items():
        if "shots" in r:
            out |= {f"{layer}/n{n}_mAP": v["mAP_mean"] for n, v in r["shots"].items()}
        else:
            out |= {f"{layer}/{k}": r[k] for k in ("mAP", "top1") if k in r}
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def log_tensorboard(run: str, rep: dict) -> list[str]:
    """The checkpoint's metrics of a report as TensorBoard scalars ``eval/<task>/...`` in
    ``RUN/tb``, at the checkpoint's step (0 for weights without one); returns the tags."""
    values = scalars(rep)
    step = rep["results"].get("checkpoint", {}).get("weights", {}).get("step") or 0
    log = RunLog(run, tb_prefix=f"eval/{rep['task']}", jsonl=False)
    try:
        log.log(int(step), values)
    finally:
        log.close()
    return [f"eval/{rep['task']}/{k}" for k in values]
