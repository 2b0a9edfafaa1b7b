"""The CPU path of both stages: sample plans rendered with Pillow + torchvision v2 in a DataLoader.

The reference implementation of a plan (:mod:`loaders.orl_samples`): crops are
``resized_crop`` (antialiased, ``aug.interpolation``), and the photometric decisions are applied
with torchvision's functional ops, in ColorJitter's drawn order, exactly as torchvision's random
transforms would with the same draws. Items are (epoch, position) from ``StepBatchSampler``; a
batch is ``(views, patches)``: uint8 ``[B, 2, 3, S, S]`` and ``[B, n, 3, P, P]``, n the number of
patches the run trains on (:func:`loaders.orl_samples.local_crops`; none in Stage 1). An image that
does not decode is handled by :meth:`loaders.orl_samples.SampleBuilder.sample`. A label-aware
mode adds a third item, the sample's :meth:`~loaders.orl_samples.SampleBuilder.targets` (tensors),
and SCAN a third view (its label neighbour's).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import Dataset

from loaders.augment import INTERPOLATION, blur_kernel
from loaders.images import decode_rgb
from loaders.orl_samples import Photometric, SampleBuilder, SamplePlan
from orl_fast.core.defaults import AugmentConfig

# Indexed like loaders.orl_samples.JITTER_OPS.
_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def cut(image: torch.Tensor, box, size: int, interpolation: str) -> torch.Tensor:
    """The xywh ``box`` of a uint8 CHW image, resized to size x size."""
    x, y, w, h = (int(v) for v in box)
    return F.resized_crop(image, y, x, h, w, [size, size],
                          interpolation=INTERPOLATION[interpolation], antialias=True)


def augment(patch: torch.Tensor, photo: Photometric, crop: int,
            aug: AugmentConfig) -> torch.Tensor:
    """Flip, colour jitter, grayscale, blur and solarise of ``crop`` as they were drawn."""
    p = photo
    if p.flip[crop]:
        patch = F.horizontal_flip(patch)
    if p.jitter[crop]:
        for op in p.order[crop]:
            patch = _JITTER[op](patch, float(p.factors[crop, op]))
    if p.gray[crop]:
        patch = F.rgb_to_grayscale(patch, num_output_channels=3)
    if p.sigma[crop] > 0:
        k = blur_kernel(aug)
        patch = F.gaussian_blur(patch, [k, k], [float(p.sigma[crop])] * 2)
    if p.solarize[crop]:
        patch = F.solarize(patch, aug.solarize_threshold)
    return patch


def render(plan: SamplePlan, image: torch.Tensor, neighbor: torch.Tensor,
           crops: tuple[int, ...], crop_size: int, patch_size: int,
           aug: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(views [2, 3, S, S], patches [n, 3, P, P]) of a plan; crop 5 is cut from ``neighbor``."""
    out = []
    for c in crops:
        src = neighbor if c == 5 else image
        size = crop_size if c < 2 else patch_size
        out.append(augment(cut(src, plan.boxes[c], size, aug.interpolation), plan.photo, c, aug))
    patches = out[2:]
    return torch.stack(out[:2]), (torch.stack(patches) if patches else
                                  torch.zeros(0, 3, patch_size, patch_size, dtype=torch.uint8))


class ORLDataset(Dataset):
    """Items are (epoch, position); returns the rendered (views, patches) of that sample."""

    def __init__(self, builder: SampleBuilder):
        self.builder = builder
        cfg = builder.cfg
        self.args = (builder.crops, cfg.aug.crop_size, cfg.orl.patch_size, cfg.aug)

    def __len__(self) -> int:
        return len(self.builder)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        plan, (image, neighbor, scan) = self.builder.sample(*item, self.decode)
        views, patches = render(plan, image, neighbor, *self.args)
        if self.builder.labels is None:
            return views, patches
        if self.builder.scan:
            aug = self.builder.cfg.aug
            view = augment(cut(scan, plan.scan_box, aug.crop_size, aug.interpolation),
                           plan.scan_photo, 0, aug)
            views = torch.cat([views, view[None]])
        targets = {k: torch.from_numpy(v) for k, v in self.builder.targets(plan).items()}
        return views, patches, targets

    def decode(self, plan: SamplePlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image x, the neighbour its crop 5 is cut from (x itself when there is none) and the
        image of SCAN's view (x itself in other modes)."""
        images = self.builder.images
        image = decode_rgb(images.data(plan.key))
        neighbor = image
        if self.builder.uses_neighbor and plan.neighbor != plan.key:
            neighbor = decode_rgb(images.data(plan.neighbor))
        scan = image
        if plan.scan_neighbor >= 0:
            scan = (neighbor if plan.scan_neighbor == plan.neighbor
                    else decode_rgb(images.data(plan.scan_neighbor)))
        return image, neighbor, scan
