"""The DALI loader of both stages: one decode per image, its crops cut from it (the two views of
Stage 1, the six crops of Stage 3), BYOL augmentations on the GPU.

Per sample, a Python external source (parallel worker processes) hands DALI the JPEG bytes of
image x and of its neighbour (read by key through the shard index) and the sample's plan
(:mod:`loaders.orl_samples`) as small arrays. The pipeline then

1. decodes x once (``fn.decoders.image``, ``mixed`` backend: nvJPEG / the hardware decoder);
2. cuts the two global views and the patches of x with ``fn.resize`` over per-sample regions of
   interest (crop and resize in one pass; a horizontal flip is the same region with its x
   coordinates swapped, so it costs nothing);
3. cuts the neighbour's inter-RoI patch from a full decode of the neighbour or, with
   ``orl.neighbor_decode=roi``, from ``fn.decoders.image_slice`` (decoder-side ROI decoding of that
   one region);
4. stacks the views (and the patches) of a sample as frames and applies the photometric
   augmentation with per-frame arguments: ColorJitter in the drawn order, as torchvision
   computes it (four slots, each one arithmetic blend for brightness, contrast or saturation
   and torchvision's HSV hue shift written in DALI arithmetic, the operations a slot does not
   hold at identity), then the grayscale conversion (torchvision's luma weights), Gaussian
   blur (per-frame sigma; window 1 = off) and solarise (``x ^ 255`` above the threshold);
5. hands uint8 tensors ``[B, F, 3, H, W]`` (channels-last strides) to torch through
   ``DALIGenericIterator``.

A label-aware mode adds the sample's targets (passed through as they are) and SCAN its third
view (the label neighbour's JPEG decoded and cut like the views, appended as frame 2).

All randomness comes from the plan, so batches are a pure function of (seed, step), as on the
torch path: resuming a run reproduces its samples. ``device_id=None`` runs the same graph on DALI's
CPU backend (tests, machines without a GPU). All of this matches the torch path
(:mod:`loaders.orl_torch`, torchvision) within uint8 rounding, the hue shift and the grey levels
included (DALI's own ``fn.hsv`` rotates the hue about the grey axis and its grey conversion
weighs the channels 0.299 / 0.587 / 0.114, not as torchvision: neither is used).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from loaders.augment import blur_kernel
from loaders.images import image_size
from loaders.orl_samples import SampleBuilder, SamplePlan
from loaders.sampling import StepBatchSampler
from orl_fast.core.extras import require


def import_dali():
    """The ``nvidia.dali`` module, or a MissingExtra that says how to install it."""
    return require("nvidia.dali", "dali", "orl.loader=dali (NVIDIA DALI)",
                   hint="(nvidia-dali-cuda130), or set orl.loader=torch (or auto)")


def dali_available() -> bool:
    try:
        import_dali()
    except ImportError:
        return False
    return True


class ORLSource:
    """Per-sample callable for ``fn.external_source``: sample ``i`` of iteration ``t`` is the
    ``i``-th sample of this rank's batch at step ``start_step + t``. Picklable (spawned workers)."""

    def __init__(self, builder: SampleBuilder, sampler: StepBatchSampler, roi_decode: bool):
        self.builder = builder
        self.sampler = sampler
        self.roi_decode = roi_decode and builder.uses_neighbor
        self.patch_crops = builder.crops[2:]
        self.names = ["jpeg", "view_roi", *self._photo_names("view")]
        if self.patch_crops:
            self.names += ["patch_roi", *self._photo_names("patch")]
        if builder.uses_neighbor:
            self.names += ["neighbor_jpeg"] + ["neighbor_window"] * self.roi_decode
        if builder.scan:
            self.names += ["scan_jpeg", "scan_roi", *self._photo_names("scan")]
        self.target_names = [] if builder.labels is None else sorted(
            builder.targets(builder.plan(0, 0)))
        self.names += self.target_names
        self.kernel = blur_kernel(builder.cfg.aug)
        self._cached: tuple[int, list] = (-1, [])

    @staticmethod
    def _photo_names(group: str) -> list[str]:
        return [f"{group}_{n}" for n in ("blend", "hue", "gray", "sigma", "window", "solar")]

    def batch(self, step: int) -> list[tuple[int, int]]:
        if self._cached[0] != step:
            self._cached = (step, self.sampler.batch(step))
        return self._cached[1]

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        epoch, position = self.batch(self.sampler.start_step + info.iteration)[info.idx_in_batch]
        _, arrays = self.builder.sample(epoch, position, self.arrays)
        return tuple(arrays[n] for n in self.names)

    def _jpeg(self, key: int) -> np.ndarray:
        """The bytes of ``key`` as DALI's decoder input, checked first (header and size against the
        index: a wrong or damaged member fails here, under the loaders' decode-failure policy)."""
        data = self.builder.images.data(key)
        size = image_size(data)
        if size != self.builder.size_of(key):
            raise ValueError(f"image {key} is {size}, the index says {self.builder.size_of(key)}")
        return np.frombuffer(data, dtype=np.uint8)

    def arrays(self, plan: SamplePlan) -> dict[str, np.ndarray]:
        out = {"jpeg": self._jpeg(plan.key)}
        groups = [("view", (0, 1))] + [("patch", self.patch_crops)] * bool(self.patch_crops)
        for group, crops in groups:
            out[f"{group}_roi"] = np.stack([self._roi(plan, c) for c in crops])
            out.update(self._photometric(plan, crops, group))
        if self.builder.uses_neighbor:
            out["neighbor_jpeg"] = self._jpeg(plan.neighbor)
            if self.roi_decode:
                out["neighbor_window"] = plan.boxes[5].astype(np.int32)
        if self.builder.scan:
            out.update(self._scan_arrays(plan))
        if self.target_names:
            out.update(self.builder.targets(plan))
        return out

    def _scan_arrays(self, plan: SamplePlan) -> dict[str, np.ndarray]:
        """SCAN's view: the label neighbour's bytes (x's without one), its region and its
        augmentation, as a one-crop plan."""
        src = plan.scan_neighbor if plan.scan_neighbor >= 0 else plan.key
        view = dataclasses.replace(plan, boxes=plan.scan_box[None], photo=plan.scan_photo)
        return {"scan_jpeg": self._jpeg(src), "scan_roi": self._roi(view, 0)[None],
                **self._photometric(view, (0,), "scan")}

    def _roi(self, plan: SamplePlan, crop: int) -> np.ndarray:
        """(y0, x0, y1, x1) for fn.resize; x swapped when flipped. The ROI-decoded neighbour patch
        is the whole decoded slice, in relative coordinates."""
        x, y, w, h = (float(v) for v in plan.boxes[crop])
        if crop == 5 and self.roi_decode:
            x, y, w, h = 0.0, 0.0, 1.0, 1.0
        x0, x1 = (x + w, x) if plan.photo.flip[crop] else (x, x + w)
        return np.array([y, x0, y + h, x1], dtype=np.float32)

    def _photometric(self, plan: SamplePlan, crops: tuple[int, ...],
                     group: str) -> dict[str, np.ndarray]:
        p, idx = plan.photo, list(crops)
        # Slot k of frame f applies operation order[f, k]: blend[k, :, f] = (a, b, c) of that
        # blend (see build_pipeline), identity (1, 0, 0) for the hue slot and without jitter;
        # hue[k, :, f] = (shift in turns, 1) in the hue slot, (0, 0) elsewhere.
        blend = np.zeros((4, 3, len(idx), 1, 1, 1), dtype=np.float32)
        blend[:, 0] = 1.0
        hue = np.zeros((4, 2, len(idx), 1, 1, 1), dtype=np.float32)
        for f, c in enumerate(idx):
            if not p.jitter[c]:
                continue
            for k, op in enumerate(p.order[c]):
                factor = float(p.factors[c, op])
                if op == 3:
                    hue[k, 0, f], hue[k, 1, f] = factor, 1.0
                else:
                    blend[k, 0, f] = factor
                if op == 1:    # contrast: towards the mean grey level
                    blend[k, 2, f] = 1.0 - factor
                elif op == 2:  # saturation: towards the grey image
                    blend[k, 1, f] = 1.0 - factor
        sigma = p.sigma[idx].astype(np.float32)
        return {
            f"{group}_blend": blend,
            f"{group}_hue": hue,
            f"{group}_gray": p.gray[idx].astype(np.float32).reshape(-1, 1, 1, 1),
            f"{group}_sigma": sigma,
            f"{group}_window": np.where(sigma > 0, self.kernel, 1).astype(np.int32),
            f"{group}_solar": (p.solarize[idx] * 255).astype(np.uint8).reshape(-1, 1, 1, 1),
        }


def grey_level(x):
    """torchvision's grey level of uint8 FHWC frames (float, [F, H, W, 1]): 0.2989 R + 0.587 G +
    0.114 B, in DALI arithmetic (a graph node; call inside a DALI pipeline definition)."""
    return (x[:, :, :, 0:1] * 0.2989 + x[:, :, :, 1:2] * 0.587) + x[:, :, :, 2:3] * 0.114


def adjust_hue(x, shift, on):
    """torchvision's ``adjust_hue`` of uint8 FHWC frames (its v2 kernel: x / 255 -> HSV, the hue
    shifted by ``shift`` turns modulo 1, -> RGB, x 255.999 truncated) in DALI arithmetic where
    ``on`` is 1 (``shift``: [F, 1, 1], ``on``: [F, 1, 1, 1]), the frame itself where it is 0. The
    same float32 steps in the same order: torchvision's output but for rare rounding ties (a
    graph node; call inside a DALI pipeline definition)."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    f = x * (1.0 / 255.0)
    r, g, b = f[:, :, :, 0], f[:, :, :, 1], f[:, :, :, 2]
    v = dmath.max(dmath.max(r, g), b)
    chroma = v - dmath.min(dmath.min(r, g), b)
    flat = fn.cast(chroma == 0.0, dtype=types.FLOAT)  # a grey pixel: torchvision divides by 1
    sat = chroma / (v + flat * (1.0 - v))
    divisor = chroma + flat * (1.0 - chroma)
    rc, gc, bc = (v - r) / divisor, (v - g) / divisor, (v - b) / divisor
    at_r = fn.cast(v == r, dtype=types.FLOAT)
    at_g = fn.cast(v == g, dtype=types.FLOAT) * (1.0 - at_r)
    at_b = (1.0 - at_r) * (1.0 - at_g)
    h = ((bc - gc) * at_r + ((rc + 2.0) - bc) * at_g + ((gc + 4.0) - rc) * at_b) * (
        1.0 / 6.0) + 1.0
    h = h - dmath.floor(h) + shift
    h6 = (h - dmath.floor(h)) * 6.0
    sector = dmath.floor(h6)
    frac = h6 - sector
    sector = sector - 6.0 * fn.cast(sector >= 6.0, dtype=types.FLOAT)
    one_minus_s = 1.0 - sat
    q = dmath.clamp((1.0 - sat * frac) * v, 0.0, 1.0)
    t = dmath.clamp((sat * frac + one_minus_s) * v, 0.0, 1.0)
    p = dmath.clamp(one_minus_s * v, 0.0, 1.0)
    at = [fn.cast(sector == float(k), dtype=types.FLOAT) for k in range(6)]
    rgb = fn.stack(v * (at[0] + at[5]) + q * at[1] + p * (at[2] + at[3]) + t * at[4],
                   t * at[0] + v * (at[1] + at[2]) + q * at[3] + p * (at[4] + at[5]),
                   p * (at[0] + at[1]) + t * at[2] + v * (at[3] + at[4]) + q * at[5],
                   axis=3)
    return fn.cast(x + on * (dmath.floor(rgb * 255.999) - x), dtype=types.UINT8)


def build_pipeline(source: ORLSource, batch_size: int, device_id: int | None, num_threads: int,
                   py_workers: int, prefetch: int, seed: int = 0):
    """The DALI pipeline of :class:`ORLSource` samples (``device_id=None``: CPU backend)."""
    dali = import_dali()
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    cfg = source.builder.cfg
    gpu = device_id is not None
    interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}[cfg.aug.interpolation]
    threshold = cfg.aug.solarize_threshold

    def resize(image, roi, size: int, relative: bool = False):
        return fn.resize(image, roi_start=roi[0:2], roi_end=roi[2:4], roi_relative=relative,
                         size=(size, size), interp_type=interp, antialias=True)

    def blend_slot(x, blend):
        """One ColorJitter slot, as torchvision blends: y = a x + b grey(x) + c mean(grey(x))
        (brightness: a = factor; contrast: a = factor, c = 1 - factor; saturation: a = factor,
        b = 1 - factor; hue or nothing: a = 1), truncated to uint8 like torchvision (a
        saturating cast of y - 0.5)."""
        grey = grey_level(x)
        mean = fn.reductions.mean(grey, axis_names="HWC", keep_dims=True, dtype=types.FLOAT)
        y = blend[0] * x + (blend[1] * grey + (blend[2] * mean - 0.5))
        return fn.cast(y, dtype=types.UINT8)

    def augment(frames, d: dict, group: str):
        blend, hue = d[f"{group}_blend"], d[f"{group}_hue"]
        for k in range(4):
            # the shift broadcasts over (frame, y, x) planes, the switch over FHWC frames
            frames = adjust_hue(blend_slot(frames, blend[k]), hue[k, 0, :, :, :, 0], hue[k, 1])
        gray = d[f"{group}_gray"]  # 1: the frame turns grey (torchvision truncates the level)
        frames = fn.cast(frames + gray * (dmath.floor(grey_level(frames)) - frames),
                         dtype=types.UINT8)
        frames = fn.gaussian_blur(frames, sigma=fn.per_frame(d[f"{group}_sigma"]),
                                  window_size=fn.per_frame(d[f"{group}_window"]))
        return frames ^ (fn.cast(frames >= threshold, dtype=types.UINT8) * d[f"{group}_solar"])

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                       seed=seed, prefetch_queue_depth=prefetch, py_num_workers=max(py_workers, 1),
                       py_start_method="spawn")
    def pipeline():
        parallel = {"parallel": True, "prefetch_queue_depth": prefetch} if py_workers > 0 else {}
        nodes = fn.external_source(source=source, num_outputs=len(source.names), batch=False,
                                   **parallel)
        d = dict(zip(source.names, nodes))
        decode_args = {"device": "mixed" if gpu else "cpu", "output_type": types.RGB,
                       "adjust_orientation": False}
        image = fn.decoders.image(d["jpeg"], **decode_args)
        views = [resize(image, d["view_roi"][i], cfg.aug.crop_size) for i in range(2)]
        outputs = [augment(fn.stack(*views, axis=0, axis_name="F"), d, "view")]
        if source.builder.scan:
            scan = fn.decoders.image(d["scan_jpeg"], **decode_args)
            scan = augment(fn.stack(resize(scan, d["scan_roi"][0], cfg.aug.crop_size), axis=0,
                                    axis_name="F"), d, "scan")
            outputs[0] = fn.cat(outputs[0], scan, axis_name="F")
        n = len(source.patch_crops)
        if n:
            from_x = n - 1 if source.builder.uses_neighbor else n
            patches = [resize(image, d["patch_roi"][i], cfg.orl.patch_size) for i in range(from_x)]
            if source.builder.uses_neighbor:
                if source.roi_decode:
                    window = d["neighbor_window"]
                    neighbor = fn.decoders.image_slice(
                        d["neighbor_jpeg"], start=window[0:2], shape=window[2:4], axis_names="WH",
                        **decode_args)
                else:
                    neighbor = fn.decoders.image(d["neighbor_jpeg"], **decode_args)
                patches.append(resize(neighbor, d["patch_roi"][n - 1], cfg.orl.patch_size,
                                      relative=source.roi_decode))
            outputs.append(augment(fn.stack(*patches, axis=0, axis_name="F"), d, "patch"))
        return (*outputs, *(d[n] for n in source.target_names))

    return pipeline()


class DALIBatches:
    """Batches of steps [start, stop) of one rank as torch uint8 tensors ``[B, F, 3, H, W]``:
    (views, patches), or (views,) when the run trains on no patch."""

    def __init__(self, builder: SampleBuilder, sampler: StepBatchSampler, device_id: int | None,
                 num_threads: int, py_workers: int, prefetch: int):
        self.steps = len(sampler)
        self.batch_size = sampler.local_batch
        self.source = ORLSource(builder, sampler, builder.cfg.orl.neighbor_decode == "roi")
        self.pipeline_args = (self.batch_size, device_id, max(num_threads, 1), py_workers,
                              max(prefetch, 1), builder.cfg.train.seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.steps == 0:
            return
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pipe = build_pipeline(self.source, *self.pipeline_args)
        names = ["views", "patches"][:1 + bool(self.source.patch_crops)]
        targets = self.source.target_names
        with warnings.catch_warnings():  # "set reader_name": an external source has no reader
            warnings.simplefilter("ignore")
            it = DALIGenericIterator([pipe], names + targets, size=self.steps * self.batch_size,
                                     auto_reset=False)
        try:
            for out in it:
                frames = tuple(out[0][n].permute(0, 1, 4, 2, 3) for n in names)
                yield (*frames, {n: out[0][n] for n in targets}) if targets else frames
        finally:
            del it, pipe
