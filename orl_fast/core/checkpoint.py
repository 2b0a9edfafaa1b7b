"""Checkpoints: atomic, keep-last-k, full resume state, loaded with ``weights_only=True``.

``OUT/checkpoints/ckpt-00001234.pt`` holds::

    format, stage, step, epoch, total_steps, config (plain dict), config_hash,
    model (state dict: see orl_fast.core.models), optimizer, rng (torch / cuda / numpy / python)

``OUT/checkpoints/latest.json`` names the newest one; it is written after the checkpoint itself,
so it never points at a partial file. Any path that takes a checkpoint accepts the file, the run
directory or its ``checkpoints`` directory.
"""

from __future__ import annotations

import io
import random
import re

import numpy as np
import torch

from orl_fast.core import storage

FORMAT = "orl-fast/1"
CKPT_DIR = "checkpoints"
LATEST = "latest.json"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def ckpt_dir(out: str) -> str:
    return storage.join(out, CKPT_DIR)


def save(out: str, step: int, payload: dict, keep_last: int) -> str:
    """Write ckpt-{step}.pt atomically, point latest.json at it, keep the newest ``keep_last``."""
    directory = ckpt_dir(out)
    name = f"ckpt-{step:08d}.pt"
    path = storage.join(directory, name)
    with storage.atomic_local_file(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    storage.atomic_write_json(storage.join(directory, LATEST), {"step": step, "file": name})
    names = sorted(n for n in storage.listdir(directory) if _NAME.match(n))
    for old in names[:-keep_last]:
        storage.remove(storage.join(directory, old))
    return path


def resolve(path: str) -> str | None:
    """A checkpoint file from a file, a run directory or a checkpoints directory (None if none)."""
    if path.endswith(".pt"):
        return path if storage.exists(path) else None
    for directory in (path, storage.join(path, CKPT_DIR)):
        latest = storage.join(directory, LATEST)
        if storage.exists(latest):
            return storage.join(directory, storage.read_json(latest)["file"])
    return None


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    resolved = resolve(path)
    if resolved is None:
        raise FileNotFoundError(f"no checkpoint at {path!r} (expected a .pt file or a run directory)")
    with storage.open_file(resolved, "rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location=map_location, weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{resolved}: not an orl-fast checkpoint (format {state.get('format')!r})")
    return state


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def backbone_state_dict(state: dict, branch: str = "online") -> dict[str, torch.Tensor]:
    """The torchvision ResNet weights (``fc`` excluded) of a checkpoint's online or target branch."""
    prefix = f"{branch}.backbone."
    sd = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not sd:
        raise KeyError(f"checkpoint has no {prefix}* weights")
    return sd
