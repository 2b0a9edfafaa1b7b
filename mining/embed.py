"""Image kNN, part 1, the image embeddings: the Stage 1 online network's projector output, L2-normalised.

Also the pieces the RoI embedding step shares: decoding (nvjpeg on GPU, Pillow on CPU, with a
reader thread ahead of the model), crops (``torchvision.ops.roi_align`` with ``aligned=True`` and
adaptive sampling: one batched kernel that cuts and resizes every box of an image, averaging
``ceil(box / size)`` samples per output pixel when it shrinks), and :class:`ModelRunner`.

A whole image is embedded through the same crop: ``center_crop`` is the official Resize(256) +
CenterCrop(224) expressed as a box in original pixels (side = 0.875 x the shorter side).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from loaders.images import decode_rgb
from loaders.shards import iter_shard
from mining.arrays import save_arrays
from mining.manifest import Plan
from mining.summary import FAILED_KEYS_CAP
from orl_fast.core import checkpoint
from orl_fast.core.config import from_dict
from orl_fast.core.defaults import Config, MineConfig
from orl_fast.core.errors import InputError
from orl_fast.core.models import Encoder

log = logging.getLogger(__name__)

CENTER_CROP = 224 / 256
DECODE_CHUNK = 32  # images decoded together (one nvjpeg batch on GPU)


# ----------------------------------------------------------------------------- images


def _decode_cpu(data: bytes) -> torch.Tensor | None:
    try:
        return decode_rgb(data)
    except Exception as e:  # noqa: BLE001 - a bad image is counted by the caller, never fatal
        log.warning("image does not decode: %s", e)
        return None


def _decode_cuda(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """nvjpeg batch decode; images it rejects fall back to Pillow, then to None."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.from_numpy(np.frombuffer(d, np.uint8).copy()) for d in datas]
    try:
        return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
    except Exception:  # noqa: BLE001 - one bad image fails the batch: redo one by one
        out = []
        for d, r in zip(datas, raw):
            try:
                out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001
                img = _decode_cpu(d)
                out.append(None if img is None else img.to(device))
        return out


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` ahead (exceptions are re-raised)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def iter_decoded(url: str, device: torch.device) -> Iterator[tuple[int, torch.Tensor | None]]:
    """(key, CHW uint8 image on ``device`` or None when it does not decode), in shard order.

    A thread reads the shard (and decodes it, on CPU) ahead of the caller; on CUDA the chunks are
    decoded by nvjpeg in the caller's thread.
    """
    def chunks():
        chunk = []
        for key, data, _ in iter_shard(url):
            chunk.append((int(key), data if device.type == "cuda" else _decode_cpu(data)))
            if len(chunk) == DECODE_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    for chunk in prefetch(chunks()):
        if device.type == "cuda":
            images = _decode_cuda([d for _, d in chunk], device)
        else:
            images = [img for _, img in chunk]
        yield from zip((k for k, _ in chunk), images)


def view_box(width: int, height: int, view: str) -> np.ndarray:
    """The region of a whole image that is embedded, xywh (floats) in its pixels."""
    if view == "resize":
        return np.array([[0.0, 0.0, width, height]])
    side = min(width, height) * CENTER_CROP
    return np.array([[(width - side) / 2, (height - side) / 2, side, side]])


def crop_resize(image: torch.Tensor, boxes_xywh: np.ndarray, size: int,
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised crops [M, 3, size, size] (float32, on the image's device) of xywh boxes."""
    x = image.float().div_(255.0).sub_(mean).div_(std).unsqueeze(0)
    b = torch.as_tensor(np.asarray(boxes_xywh, dtype=np.float32), device=image.device)
    rois = torch.cat([torch.zeros(len(b), 1, device=b.device), b[:, :2], b[:, :2] + b[:, 2:]], 1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


def forward_batched(crops: Iterable[torch.Tensor], fn: Callable[[torch.Tensor], np.ndarray],
                    batch: int) -> Iterator[np.ndarray]:
    """Regroup a stream of crop tensors into batches of exactly ``batch`` (last one smaller).

    Batch boundaries depend only on the stream, so a unit redone gives the same bytes.
    """
    buf: list[torch.Tensor] = []
    n = 0
    for c in crops:
        if len(c) == 0:
            continue
        buf.append(c)
        n += len(c)
        while n >= batch:
            x = torch.cat(buf) if len(buf) > 1 else buf[0]
            yield fn(x[:batch])
            rest = x[batch:]
            buf, n = ([rest], len(rest)) if len(rest) else ([], 0)
    if n:
        yield fn(torch.cat(buf))


# ----------------------------------------------------------------------------- model


def load_encoder(ckpt: str) -> tuple[Encoder, Config]:
    """The online encoder (backbone + projector) of a Stage 1 checkpoint, on the CPU, and the
    config it was trained with (its model and aug sections); InputError naming ``ckpt`` when the
    checkpoint does not hold the encoder its config describes."""
    state = checkpoint.load(ckpt)
    saved = from_dict({k: v for k, v in (state.get("config") or {}).items()
                       if k in ("model", "aug")})
    encoder = Encoder(saved.model)
    prefix = "online."
    weights = {k[len(prefix):]: v for k, v in state.get("model", {}).items()
               if k.startswith(prefix)}
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise InputError(f"ckpt: {ckpt}: does not hold the Stage 1 encoder its config describes "
                         f"({first})") from None
    return encoder, saved


class ModelRunner:
    """The Stage 1 online encoder (backbone + projector) in eval mode, on one device.

    The model and normalisation come from the checkpoint's own config, so mining never rebuilds
    a different network than the one trained.
    """

    def __init__(self, ckpt: str, mine: MineConfig, device: str, threads: int = 1):
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        else:
            torch.backends.cudnn.benchmark = False       # same kernels every run: same bytes
            torch.backends.cudnn.deterministic = True
        self.encoder, saved = load_encoder(ckpt)
        self.encoder.eval().requires_grad_(False).to(self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.encoder.to(memory_format=torch.channels_last)
        self.backbone = self.encoder.backbone
        # A compiled backbone sees one shape: short batches are padded to the batch size.
        self.pad_to = mine.batch_size if mine.compile and self.cuda else 0
        if self.pad_to:
            self.backbone = torch.compile(self.backbone, dynamic=False)
        self.autocast = self.cuda and mine.precision == "bf16"
        self.feat_dim = self.encoder.feat_dim
        self.proj_dim = saved.model.proj_dim
        self.mean = torch.tensor(saved.aug.mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(saved.aug.std, device=self.device).view(3, 1, 1)

    @torch.inference_mode()
    def embed(self, x: torch.Tensor, project: bool) -> np.ndarray:
        """L2-normalised float16 features of a crop batch: projector output or pooled backbone."""
        n = len(x)
        x = x.to(self.device, non_blocking=True)
        if n < self.pad_to:
            x = torch.cat([x, x.new_zeros(self.pad_to - n, *x.shape[1:])])
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            f = self.backbone(x)[:n]
            if project:
                f = self.encoder.projector(f)
        return F.normalize(f.float(), dim=1).cpu().numpy().astype(np.float16)

    def crops(self, image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
        return crop_resize(image, boxes, size, self.mean, self.std)


# ----------------------------------------------------------------------------- unit


def embed_unit(plan: Plan, sid: int, runner: ModelRunner) -> dict:
    """Embed every image of input shard ``sid``; write ``embeddings/emb-{sid}.npz``."""
    t0 = time.time()
    keys: list[int] = []
    failed: list[int] = []

    def crops():
        for key, img in iter_decoded(plan.data_shard(sid), runner.device):
            if img is None:
                failed.append(key)
                continue
            keys.append(key)
            box = view_box(img.shape[2], img.shape[1], plan.mine.embed_view)
            yield runner.crops(img, box, plan.mine.embed_size)

    blocks = list(forward_batched(crops(), lambda x: runner.embed(x, project=True),
                                  plan.mine.batch_size))
    emb = np.concatenate(blocks) if blocks else np.zeros((0, runner.proj_dim), np.float16)
    size = save_arrays(plan.path("embed", sid), keys=np.array(keys, np.int64), emb=emb)
    stats = {"images": len(keys) + len(failed), "embedded": len(keys),
             "decode_failed": len(failed), "failed_keys": failed[:FAILED_KEYS_CAP],
             "bytes": size}
    plan.write_record("embed", sid, stats, time.time() - t0)
    return stats
