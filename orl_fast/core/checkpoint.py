"""Checkpoints: atomic, keep-last-k, full resume state, loaded with ``weights_only=True``.

``OUT/checkpoints/ckpt-00001234.pt`` holds::

    format, stage, step, epoch, total_steps, config (plain dict), config_hash,
    model (state dict: see orl_fast.core.models), optimizer, rng (torch / cuda / numpy / python)

``OUT/checkpoints/latest.json`` names the newest one; it is written after the checkpoint itself,
so it never points at a partial file; a ``latest.json`` naming anything but a checkpoint file of
its own directory (``"../../x.pt"``) is refused. Any path that takes a checkpoint accepts the
file, the run directory or its ``checkpoints`` directory. A file that is not a checkpoint, or
one a weights-only load refuses, is an InputError naming it (never torch's advice to load it
with ``weights_only=False``, which would run code from the file).
"""

from __future__ import annotations

import io
import pickle
import random
import re
import zipfile
from typing import Any

import numpy as np
import torch

from orl_fast.core import storage
from orl_fast.core.errors import InputError, NotFound

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
            entry = storage.read_json(latest)
            name = entry.get("file") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not _NAME.match(name):
                raise InputError(f"{latest}: names {name!r}, not a checkpoint file of its own "
                                 "directory (ckpt-NNNNNNNN.pt); refusing to follow it")
            return storage.join(directory, name)
    return None


def read_torch(url: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of the file at ``url`` (local or any URL); InputError
    naming the file when it cannot be read or is not a weights-only loadable torch file."""
    try:
        with storage.open_file(url, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{url}: cannot be read ({e.strerror or e})") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
            AttributeError, KeyError, TypeError, IndexError) as e:
        raise InputError(f"{url}: not a checkpoint this can load ({_load_problem(e)})") from None


def _load_problem(e: Exception) -> str:
    """What torch says is wrong with a file, in its first sentence, without its advice on
    loading it unsafely or allow-listing its objects."""
    text = " ".join(str(e).split())
    marker = "WeightsUnpickler error:"
    if marker in text:  # a weights-only refusal: the unpickler's own reason
        reason = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
        return ("not a tensor file, or one holding objects other than tensors and plain "
                f"containers: {_first_sentence(reason)}")
    return f"{type(e).__name__}: {_first_sentence(text)}" if text else type(e).__name__


def _first_sentence(text: str) -> str:
    text = text.strip()
    end = text.find(". ")
    return text[:end + 1] if end >= 0 else text


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    resolved = resolve(path)
    if resolved is None:
        raise NotFound(f"{path}: no checkpoint here (expected a .pt file or a run directory "
                         "with checkpoints/latest.json)")
    state = read_torch(resolved, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise InputError(f"{resolved}: not an orl-fast checkpoint (format {found!r})")
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
        raise InputError(f"ckpt: the checkpoint has no {prefix}* weights (not a Stage 1 or "
                         "Stage 3 model)")
    return sd
