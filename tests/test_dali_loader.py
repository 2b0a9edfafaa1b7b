"""The DALI loader against the torch path and against the intended geometry (DALI's CPU backend;
the GPU test runs where CUDA is present)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
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
    """The paper's augmentation, hue included, on real images: flip, ColorJitter (brightness,
    contrast, saturation, hue) in the drawn order, grayscale, blur and solarise, within one grey
    level per frame of torchvision's (mean absolute difference).

    Measured on coco-mini (benchmarks/dali_parity.py, 224 / 96 px, 192 frames): the hue done by
    DALI's ``fn.hsv`` after the blends (and its grey conversion) gave 3.36 levels per frame on
    average, p95 10.9, max 27.1; torchvision's hue in its slot of the drawn order (and
    torchvision's grey levels) gives 0.23, p95 0.44, max 0.63 (0.22 with the hue off; the crops
    alone differ by 0.20: DALI's and torchvision's antialiased resize)."""
    builder = SampleBuilder(_config(coco_shards, coco_pairs, "aug.color_jitter_p=1",
                                    "aug.grayscale_p=0.3", "aug.blur_p=[1,0.5]",
                                    "aug.solarize_p=[0.5,0.5]"))
    assert builder.cfg.aug.color_jitter == (0.4, 0.4, 0.2, 0.1)  # the paper's, hue 0.1
    sampler = StepBatchSampler(len(builder), 4, 0, 1, 0, 0, 2)
    errs = []
    for t, d in zip(_torch_batches(builder, sampler), _dali_batches(builder, sampler)):
        for gt, gd in zip(t, d):
            assert gt.shape == gd.shape and gd.dtype == torch.uint8
            errs.append((gt.double() - gd.double()).abs().mean(dim=(2, 3, 4)).flatten())
    errs = torch.cat(errs)
    assert len(errs) == 2 * 4 * 6 and errs.max() < 1.0, errs


def test_adjust_hue_equals_torchvision():
    """DALI's hue node is torchvision's ``adjust_hue`` (torchvision/transforms/v2/functional/
    _color.py ``adjust_hue_image``, ``_rgb_to_hsv``, ``_hsv_to_rgb``) pixel for pixel: random
    and grey pixels, shifts over the whole range [-0.5, 0.5]; a frame switched off is unchanged."""
    import torchvision.transforms.v2.functional as F

    from loaders.dali_loader import adjust_hue

    dali = import_dali()
    from nvidia.dali import fn

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 4, 32, 40, 3), dtype=np.uint8)
    frames[0, 0, :8] = 77  # grey pixels (no hue)
    frames[1, 1, :, :10] = frames[1, 1, :, :10, :1]
    shifts = rng.uniform(-0.5, 0.5, (2, 4)).astype(np.float32)
    shifts[0, 1], shifts[1, 2] = 0.5, -0.5
    on = np.ones((2, 4, 1, 1, 1), np.float32)
    on[1, 3] = 0

    @dali.pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=[list(frames)], layout="FHWC", cycle=True)
        shift = fn.external_source(source=[list(shifts.reshape(2, 4, 1, 1))], cycle=True)
        switch = fn.external_source(source=[list(on)], cycle=True)
        return adjust_hue(x, shift, switch)

    p = pipe()
    p.build()
    (out,) = p.run()
    for s in range(2):
        got = np.array(out[s])
        for f in range(4):
            want = frames[s, f] if not on[s, f] else F.adjust_hue(
                torch.from_numpy(frames[s, f]).permute(2, 0, 1), float(shifts[s, f])
            ).permute(1, 2, 0).numpy()
            assert np.array_equal(got[f], want), (s, f)


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
