"""The DALI loader against the torch path and against the intended geometry (DALI's CPU backend;
the GPU test runs where CUDA is present)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from support.orl import coded_dataset, expected_patch, random_pairs

from loaders.dali_loader import DALIBatches, import_dali
from loaders.orl_samples import SampleBuilder
from loaders.orl_torch import ORLDataset
from loaders.sampling import StepBatchSampler
from orl_fast.core.config import load_config
from orl_fast.training.runs import choose_loader

NO_PHOTOMETRIC = ["aug.color_jitter_p=0", "aug.grayscale_p=0", "aug.blur_p=[0,0]",
                  "aug.solarize_p=[0,0]"]


def _config(shards, mined, *overrides):
    return load_config("small", [f"data={shards}", f"pairs={mined}", "aug.crop_size=64",
                                 "orl.patch_size=32", "train.batch_size=4", *overrides])


def _torch_batches(builder, sampler):
    ds = ORLDataset(builder)
    out = []
    for step in range(sampler.start_step, sampler.stop_step):
        items = [ds[i] for i in sampler.batch(step)]
        out.append(tuple(torch.stack(g) for g in zip(*items)))
    return out


def _dali_batches(builder, sampler, workers=0, device_id=None):
    return list(DALIBatches(builder, sampler, device_id, num_threads=1, py_workers=workers,
                            prefetch=2))


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    return coded_dataset(tmp_path_factory.mktemp("coded"))


@pytest.fixture(scope="module")
def coco_pairs(coco_shards, tmp_path_factory) -> str:
    return random_pairs(coco_shards, str(tmp_path_factory.mktemp("mined")))


def test_patches_cut_the_intended_boxes_on_both_paths(coded):
    """Position-coded images: every crop's colours say where it was cut from, flips included."""
    shards, mined = coded
    builder = SampleBuilder(_config(shards, mined, *NO_PHOTOMETRIC))
    sampler = StepBatchSampler(4, 4, 0, 1, 0, 0, 3)
    paths = {"torch": _torch_batches(builder, sampler), "dali": _dali_batches(builder, sampler)}
    blue = {builder.images.key_at(i): b for i, b in enumerate((40, 100, 160, 220))}
    flips = 0
    for step in range(3):
        for i, (epoch, pos) in enumerate(sampler.batch(step)):
            plan = builder.plan(epoch, pos)
            assert plan.has_pair and plan.neighbor != plan.key
            for frame, crop in enumerate(builder.crops):
                size = 64 if crop < 2 else 32
                want = expected_patch(plan.boxes[crop], 256, 192, size, plan.photo.flip[crop])
                src = plan.neighbor if crop == 5 else plan.key
                flips += plan.photo.flip[crop]
                got = {}
                for name, batches in paths.items():
                    group = batches[step][0 if crop < 2 else 1]
                    x = group[i, frame if crop < 2 else frame - 2].double().numpy()
                    err = np.abs(x[:2] - want).mean()
                    assert err < 1.5, (name, step, crop, err)       # the intended region ...
                    assert abs(x[2].mean() - blue[src]) < 2, (name, crop)  # ... of that image
                    got[name] = x
                assert np.abs(got["torch"] - got["dali"]).mean() < 1.0  # the two paths agree
    assert 0 < flips < 3 * 4 * 6


def test_photometric_parity_with_torchvision(coco_shards, coco_pairs):
    """Flip, brightness / contrast / saturation in the drawn order, grayscale, blur and solarise
    on real images match torchvision within uint8 rounding."""
    builder = SampleBuilder(_config(coco_shards, coco_pairs, "aug.color_jitter=[0.4,0.4,0.2,0]",
                                    "aug.color_jitter_p=1", "aug.grayscale_p=0.3",
                                    "aug.blur_p=[1,0.5]", "aug.solarize_p=[0.5,0.5]"))
    sampler = StepBatchSampler(len(builder), 4, 0, 1, 0, 0, 2)
    for t, d in zip(_torch_batches(builder, sampler), _dali_batches(builder, sampler)):
        for gt, gd in zip(t, d):
            assert gt.shape == gd.shape and gd.dtype == torch.uint8
            err = (gt.double() - gd.double()).abs().mean(dim=(2, 3, 4))
            assert err.max() < 2.0, err


def _hue_shift(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Saturation-weighted mean HSV hue change (in turns) from ``reference`` to ``image``."""
    def hsv(x):
        return np.asarray(Image.fromarray(x.permute(1, 2, 0).numpy()).convert("HSV"), np.float64)

    a, r = hsv(image), hsv(reference)
    dh = ((a[..., 0] - r[..., 0]) / 256 + 0.5) % 1 - 0.5
    w = r[..., 1] * r[..., 2]
    return float((dh * w).sum() / w.sum())


def test_hue_shift_agrees_with_torchvision(coco_shards, coco_pairs):
    """DALI's hue shift rotates about the grey axis keeping luma, torchvision's shifts the HSV
    hue keeping the max channel: the pixels differ, the hue moves the same way by about as much."""
    hue_only = ["aug.grayscale_p=0", "aug.blur_p=[0,0]", "aug.solarize_p=[0,0]"]
    sampler = StepBatchSampler(64, 4, 0, 1, 0, 0, 2)
    builder = SampleBuilder(_config(coco_shards, coco_pairs, *hue_only, "aug.color_jitter_p=1",
                                    "aug.color_jitter=[0,0,0,0.1]"))
    plain = _torch_batches(SampleBuilder(_config(coco_shards, coco_pairs, *hue_only,
                                                 "aug.color_jitter_p=0")), sampler)
    torch_hue, dali_hue = _torch_batches(builder, sampler), _dali_batches(builder, sampler)
    checked = 0
    for step in range(2):
        for i, item in enumerate(sampler.batch(step)):
            plan = builder.plan(*item)
            for frame, crop in enumerate(builder.crops):
                g, f = (0, frame) if crop < 2 else (1, frame - 2)
                h = float(plan.photo.factors[crop, 3])
                ref = plain[step][g][i, f]
                tv = _hue_shift(torch_hue[step][g][i, f], ref)
                dl = _hue_shift(dali_hue[step][g][i, f], ref)
                assert tv == pytest.approx(h, abs=0.01)
                if abs(h) > 0.02:
                    assert 0.5 * abs(tv) < abs(dl) < 1.5 * abs(tv) and dl * tv > 0, (h, tv, dl)
                    checked += 1
    assert checked > 20


def test_batches_are_a_pure_function_of_the_step(coco_shards, coco_pairs):
    """Resuming at step s gives the batches an uninterrupted run sees (parallel workers too)."""
    builder = SampleBuilder(_config(coco_shards, coco_pairs))
    full = _dali_batches(builder, StepBatchSampler(len(builder), 4, 0, 1, 0, 0, 4))
    resumed = _dali_batches(builder, StepBatchSampler(len(builder), 4, 0, 1, 0, 2, 4), workers=1)
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(full[0][0], full[1][0])


@pytest.mark.parametrize("weights, frames", [("[1,1,0]", 2), ("[1,0,1]", 2), ("[1,0,0]", 0)])
def test_terms_off_drop_their_patches(coco_shards, coco_pairs, weights, frames):
    builder = SampleBuilder(_config(coco_shards, coco_pairs, f"orl.loss_weights={weights}"))
    batch = _dali_batches(builder, StepBatchSampler(len(builder), 4, 0, 1, 0, 0, 1))[0]
    torch_batch = _torch_batches(builder, StepBatchSampler(len(builder), 4, 0, 1, 0, 0, 1))[0]
    assert batch[0].shape == (4, 2, 3, 64, 64)
    assert torch_batch[1].shape == (4, frames, 3, 32, 32)
    assert len(batch) == (2 if frames else 1)
    if frames:
        assert batch[1].shape == (4, frames, 3, 32, 32)


def test_neighbor_roi_decode_equals_full_decode(coded):
    shards, mined = coded
    sampler = StepBatchSampler(4, 4, 0, 1, 0, 0, 2)
    full = _dali_batches(SampleBuilder(_config(shards, mined, *NO_PHOTOMETRIC)), sampler)
    roi = _dali_batches(SampleBuilder(_config(shards, mined, *NO_PHOTOMETRIC,
                                              "orl.neighbor_decode=roi")), sampler)
    for a, b in zip(full, roi):
        assert all(torch.equal(x, y) for x, y in zip(a[:1] + (a[1][:, :3],), b[:1] + (b[1][:, :3],)))
        assert (a[1][:, 3].double() - b[1][:, 3].double()).abs().mean() < 1.0


def test_missing_dali_names_the_extra_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match=r"orl-fast\[dali\]"):
        import_dali()
    cuda = torch.device("cuda", 0)
    assert choose_loader(load_config("small", ["orl.loader=auto"]), cuda) == "torch"
    with pytest.raises(ImportError, match="orl.loader=torch"):
        choose_loader(load_config("small", ["orl.loader=dali"]), cuda)


def test_auto_loader_choice_with_dali_installed():
    assert choose_loader(load_config("small"), torch.device("cpu")) == "torch"
    assert choose_loader(load_config("small", ["orl.loader=dali"]), torch.device("cpu")) == "dali"
    assert choose_loader(load_config("small"), torch.device("cuda", 0)) == "dali"


@pytest.mark.gpu
def test_gpu_pipeline_matches_the_cpu_backend(coco_shards, coco_pairs):
    """Mixed decoder + GPU ops give (nearly) the CPU backend's batches, as CUDA tensors."""
    builder = SampleBuilder(_config(coco_shards, coco_pairs))
    sampler = StepBatchSampler(len(builder), 4, 0, 1, 0, 0, 2)
    cpu = _dali_batches(builder, sampler)
    gpu = _dali_batches(builder, sampler, workers=1, device_id=0)
    for a, b in zip(cpu, gpu):
        for x, y in zip(a, b):
            assert y.is_cuda and y.dtype == torch.uint8 and x.shape == y.shape
            assert (x.double() - y.cpu().double()).abs().mean() < 2.0
