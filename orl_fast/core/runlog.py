"""Scalars of a run: ``OUT/metrics.jsonl`` and TensorBoard ``OUT/tb``, on local disk or any URL."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from torch.utils.tensorboard import SummaryWriter

from orl_fast.core import storage

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


class RunLog:
    """The scalars of a run: one JSON line per logged step in ``OUT/metrics.jsonl`` and, with a
    ``tb_prefix``, TensorBoard scalars ``{tb_prefix}/{name}`` in ``OUT/tb``.

    A local OUT gets both in place as they are written. A remote OUT (s3://, gs://, any fsspec
    URL) gets them from a local staging directory: :meth:`sync` (after every checkpoint, and in
    :meth:`close`) uploads the staged ``metrics.jsonl`` and every TensorBoard event file that grew,
    each whole in one atomic write, so OUT holds a complete, readable log at any time.

    A resumed run (``resumed_at`` = the checkpoint's step; 0 for a run started afresh in an OUT
    a killed run logged into), local or remote, starts from ``metrics.jsonl`` cut at that step:
    lines a killed run logged after its last checkpoint are dropped, as those steps are trained
    and logged again; TensorBoard hides them too (``purge_step``). The event files of earlier
    runs stay in OUT/tb beside the new one.

    ``enabled=False`` (ranks other than the main one) logs nothing; ``jsonl=False`` writes
    TensorBoard only (scalars added to a run afterwards, e.g. its evaluations).
    """

    def __init__(self, out: str, key: str = "step", tb_prefix: str | None = None,
                 resumed_at: int = 0, enabled: bool = True, jsonl: bool = True):
        self.out, self.key, self.tb_prefix = out, key, tb_prefix
        self.enabled, self.jsonl = enabled, jsonl
        self.remote = enabled and not storage.is_local(out)
        self.writer: SummaryWriter | None = None
        self._staging: str | None = None
        self._uploaded: dict[str, int] = {}  # staged event file -> size at its last upload
        self._dirty = False
        if not enabled:
            return
        url = storage.join(out, METRICS_FILE)
        kept = self._kept(url, resumed_at) if jsonl else []
        if self.remote:
            self._staging = tempfile.mkdtemp(prefix="orl-fast-log-")
            self.metrics_path = os.path.join(self._staging, METRICS_FILE)
            self.tb_dir = os.path.join(self._staging, TB_DIR)
            if jsonl:
                with open(self.metrics_path, "w") as f:
                    f.writelines(kept)
        else:
            self.metrics_path = url
            self.tb_dir = storage.join(out, TB_DIR)
            if jsonl and storage.exists(url):
                storage.atomic_write(url, "".join(kept).encode())
        if tb_prefix is not None:
            # a run's own resume hides what a killed run logged after its checkpoint; scalars
            # added to a run afterwards (jsonl=False) hide nothing
            earlier = jsonl and (resumed_at or storage.listdir(storage.join(out, TB_DIR)))
            self.writer = SummaryWriter(self.tb_dir,
                                        purge_step=resumed_at + 1 if earlier else None)

    def _kept(self, url: str, resumed_at: int) -> list[str]:
        """The lines of the metrics.jsonl at ``url`` up to step ``resumed_at`` (a line cut short
        by a kill is dropped)."""
        if not storage.exists(url):
            return []
        kept = []
        for line in storage.read_text(url).splitlines():
            try:
                step = json.loads(line).get(self.key, 0)
            except (ValueError, AttributeError):
                continue
            if step <= resumed_at:
                kept.append(line + "\n")
        return kept

    def log(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{self.tb_prefix}/{k}", v, step)
        self._dirty = True
        if not self.jsonl:
            return
        line = json.dumps({self.key: step, **{k: round(v, 6) for k, v in scalars.items()}})
        if not self.remote:
            os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")

    def sync(self) -> None:
        """Remote OUT: upload what was logged since the last sync (a local OUT is always current)."""
        if not (self.remote and self._dirty):
            return
        if self.jsonl:
            with open(self.metrics_path, "rb") as f:
                storage.atomic_write(storage.join(self.out, METRICS_FILE), f.read())
        if self.writer is not None:
            self.writer.flush()
            for root, _, names in os.walk(self.tb_dir):
                for name in sorted(names):
                    src = os.path.join(root, name)
                    size = os.path.getsize(src)
                    if self._uploaded.get(src) == size:
                        continue
                    rel = os.path.relpath(src, self.tb_dir).replace(os.sep, "/")
                    # A snapshot: the writer's thread may append to the file meanwhile.
                    with storage.atomic_local_file(storage.join(self.out, TB_DIR, rel)) as tmp:
                        shutil.copyfile(src, tmp)
                    self._uploaded[src] = size
        self._dirty = False

    def close(self) -> None:
        """Flush and close TensorBoard, upload (remote OUT) and remove the staging directory."""
        if not self.enabled:
            return
        try:
            if self.writer is not None:
                self.writer.close()
            self.sync()
        finally:
            if self._staging:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None
