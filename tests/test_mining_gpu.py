"""Stage 2 on CUDA: nvjpeg decoding, the model worker and the kNN agree with the CPU paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from support.mining import make_ckpt, mine_config

from loaders.images import decode_array
from mining import pipeline
from mining.embed import ModelRunner, _decode_cuda
from mining.knn import KnnIndex
from orl_fast.core.defaults import MineConfig

pytestmark = pytest.mark.gpu


def test_nvjpeg_decode_matches_pillow(coco_mini):
    names = sorted(os.listdir(coco_mini / "images"))[:8]
    datas = [(coco_mini / "images" / n).read_bytes() for n in names]
    gpu = _decode_cuda([*datas, b"not a jpeg"], torch.device("cuda"))
    assert gpu[-1] is None
    for data, img in zip(datas, gpu):
        ref = torch.from_numpy(decode_array(data)).permute(2, 0, 1)
        assert img.shape == ref.shape
        assert (img.cpu().float() - ref.float()).abs().mean() < 2.0  # IDCT differences only


def test_model_runner_cuda_matches_cpu(tmp_path):
    ckpt = make_ckpt(str(tmp_path))
    x = torch.randn(16, 3, 64, 64)
    cpu = ModelRunner(ckpt, MineConfig(), "cpu").embed(x, project=False).astype(np.float32)
    fp32 = ModelRunner(ckpt, MineConfig(precision="fp32"), "cuda").embed(
        x, project=False).astype(np.float32)
    bf16 = ModelRunner(ckpt, MineConfig(), "cuda").embed(x, project=True).astype(np.float32)
    assert np.abs(cpu - fp32).max() < 2e-3
    ref = ModelRunner(ckpt, MineConfig(), "cpu").embed(x, project=True).astype(np.float32)
    assert ((ref * bf16).sum(1) > 0.98).all()  # cosine to the fp32 CPU result


def test_knn_on_cuda_matches_cpu():
    bank = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    cpu = KnnIndex(bank, "torch", "cpu").search(0, 5000, 10)
    gpu = KnnIndex(bank, "torch", "cuda", block=1024).search(0, 5000, 10)
    assert np.array_equal(np.sort(cpu[0], 1), np.sort(gpu[0], 1))
    assert np.allclose(cpu[1], gpu[1], atol=1e-4)


def test_pipeline_on_cuda(scene_shards, tmp_path):
    ckpt = make_ckpt(str(tmp_path / "stage1"))
    out = str(tmp_path / "mined")
    cfg = mine_config(scene_shards[0], ckpt, out, "mine.executor=local", "mine.device=cuda",
                      "mine.min_box_size=24", "mine.ss_max_side=0")
    summary = pipeline.run(cfg, progress=False)
    assert summary["pairs"]["records"] == 48 and summary["decode_failed"]["embed"] == 0
    with open(os.path.join(out, "manifest.json")) as f:
        assert '"device": "cuda"' in f.read()
