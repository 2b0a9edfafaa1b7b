"""Helpers shared by the Stage 2 tests: a tiny Stage 1 checkpoint, mining configs, tree bytes."""

from __future__ import annotations

import hashlib
import os

import torch

from orl_fast.core import checkpoint
from orl_fast.core.config import load_config
from orl_fast.core.models import BYOL

from .common import TINY_MODEL

# The tests' tiny ResNet-18, embedding 32 px crops; few boxes per image.
MODEL = TINY_MODEL
MINE = ["mine.embed_size=32", "mine.roi_size=32", "mine.max_boxes=20", "mine.batch_size=64",
        "mine.ray_num_cpus=2"]
# Outputs compared byte for byte between runs (units/ and manifest.json hold timings).
OUTPUT_DIRS = ("embeddings", "knn", "proposals", "roi_embed", "pairs")


def make_ckpt(out: str, seed: int = 0) -> str:
    """A Stage 1 checkpoint of the tiny model, randomly initialised (what mining reads)."""
    cfg = load_config("small", MODEL)
    torch.manual_seed(seed)
    model = BYOL(cfg.model)
    return checkpoint.save(out, 0, {"stage": "stage1", "config": cfg.to_dict(),
                                    "model": model.state_dict()}, keep_last=1)


def mine_config(data: str, ckpt: str, out: str, *overrides: str):
    return load_config("small", [*MODEL, *MINE, f"data={data}", f"ckpt={ckpt}", f"out={out}",
                                 *overrides])


def output_digests(mined: str) -> dict[str, str]:
    """sha256 of every final output file of a mining run (relative path -> digest)."""
    out = {}
    for d in OUTPUT_DIRS:
        for name in sorted(os.listdir(os.path.join(mined, d))):
            path = os.path.join(mined, d, name)
            with open(path, "rb") as f:
                out[f"{d}/{name}"] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(mined, "summary.json"), "rb") as f:
        out["summary.json"] = hashlib.sha256(f.read()).hexdigest()
    return out
