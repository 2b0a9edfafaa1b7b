"""Frozen-backbone features for the classification evaluations, cached on disk.

Each image: shorter side resized to ``eval.resize`` (bilinear, antialiased), then
``eval.view``: "resize" squashes it to ``eval.crop`` x ``eval.crop`` (the official ORL /
OpenSelfSup extraction: Resize(256), Resize((224, 224))), "center_crop" cuts the centre
``eval.crop`` square; ImageNet normalisation; the backbone in eval mode; res4 (``layer3``) and/or
res5 (``layer4``) activations pooled ("goyal": the fixed average pooling of the Goyal et al.
benchmark as OpenSelfSup's extraction runs it, res4 kernel 8 stride 3 -> 9216-d, res5 kernel 6
stride 1 -> 8192-d for ResNet-50 at 224; "global": average over the map, 2048-d at res5). Features
are stored raw (float32); the SVM and kNN L2-normalise them.

The cache file is named by a hash of the weights' content digest, the image list (ids, file names
and sizes) and every setting above, and written atomically: a rerun with the same inputs reads it.
Images and the cache directory may be local or fsspec URLs (``s3://...``); the same images give
the same key wherever they are stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from evaluation.backbones import Weights
from loaders.augment import normalize
from loaders.images import open_rgb
from loaders.torch_loader import loader_workers
from orl_fast.core import storage
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD, EvalConfig

# resK is the output of torchvision's layer{K-1}.
STAGES = {"res4": 3, "res5": 4}
# (kernel, stride, padding) of the Goyal et al. / OpenSelfSup "specified" pooling for a 224 input
# (MultiPooling.POOL_PARAMS: ResNet-50 9216, 9216, 8192, 9216, 8192 dimensions).
GOYAL_POOLING = {"conv1": (10, 10, 4), "res2": (16, 8, 0), "res3": (13, 5, 0), "res4": (8, 3, 0),
                 "res5": (6, 1, 0)}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("eval.device=cuda but CUDA is not available")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


class EvalImages(Dataset):
    """Image files -> uint8 CHW tensors: shorter side ``resize``, then squashed to ``crop`` x
    ``crop`` (``view="resize"``) or its centre ``crop`` square cut (``view="center_crop"``)."""

    def __init__(self, paths: tuple[str, ...] | list[str], resize: int, crop: int,
                 view: str = "resize"):
        if view not in ("resize", "center_crop"):
            raise ValueError(f"view: {view!r} is not resize or center_crop")
        self.paths, self.resize, self.crop, self.view = list(paths), resize, crop, view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = TF.resize(open_rgb(storage.read_bytes(self.paths[i])), self.resize)
        img = (TF.resize(img, [self.crop, self.crop]) if self.view == "resize"
               else TF.center_crop(img, self.crop))
        return TF.pil_to_tensor(img)


def stages(resnet: nn.Module, x: torch.Tensor, last: int = 4,
           stem: bool = False) -> list[torch.Tensor]:
    """The outputs of ``layer1`` ... ``layer{last}`` (res2 ... res{last + 1}) of a ResNet, after
    the stem's (conv1 -> BN -> ReLU, before the max-pool: OpenSelfSup's "conv1") with ``stem``."""
    x = resnet.relu(resnet.bn1(resnet.conv1(x)))
    out = [x] if stem else []
    x = resnet.maxpool(x)
    for i in range(1, last + 1):
        x = getattr(resnet, f"layer{i}")(x)
        out.append(x)
    return out


class PooledFeatures(nn.Module):
    """ResNet trunk -> {layer: pooled, flattened activations} for res4 / res5."""

    def __init__(self, backbone: nn.Module, layers: tuple[str, ...], pooling: str):
        super().__init__()
        self.backbone, self.layers, self.pooling = backbone, tuple(layers), pooling
        self.last = max(STAGES[name] for name in layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = stages(self.backbone, x, self.last)
        return {name: self.pool(name, maps[STAGES[name] - 1]).flatten(1).float()
                for name in self.layers}

    def pool(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "global":
            return x.mean((2, 3))
        return goyal_pool(name, x)


def goyal_pool(name: str, x: torch.Tensor) -> torch.Tensor:
    """The Goyal et al. average pooling of layer ``name``'s map (made for 224 px inputs)."""
    kernel, stride, padding = GOYAL_POOLING[name]
    if min(x.shape[2:]) + 2 * padding < kernel:
        raise ConfigError(f"eval.pooling=goyal: the {name} map is {x.shape[2]}x{x.shape[3]}, "
                         f"smaller than its {kernel}x{kernel} pooling (made for 224 px "
                         "inputs): raise eval.crop or set eval.pooling=global")
    return nn.functional.avg_pool2d(x, kernel, stride, padding)


@torch.no_grad()
def extract(weights: Weights, paths: tuple[str, ...] | list[str], cfg: EvalConfig,
            progress: bool = False) -> dict[str, np.ndarray]:
    """Pooled features of every image (float32, one (N, D) array per layer)."""
    device = resolve_device(cfg.device)
    model = PooledFeatures(weights.build(), cfg.layers, cfg.pooling).to(device).eval()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(EvalImages(paths, cfg.resize, cfg.crop, cfg.view),
                        batch_size=cfg.batch_size, num_workers=loader_workers(cfg.num_workers),
                        pin_memory=cuda,
                        persistent_workers=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=cuda and cfg.precision == "bf16")
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in cfg.layers}
    for batch in tqdm(loader, desc=f"features ({weights.name})", unit="batch",
                      disable=not progress, dynamic_ncols=True):
        x = normalize(batch.to(device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD, cuda)
        with autocast:
            feats = model(x)
        for name, f in feats.items():
            chunks[name].append(f.cpu().numpy())
    return {name: np.concatenate(c) if c else np.zeros((0, 0), np.float32)
            for name, c in chunks.items()}


def cache_key(weights: Weights, ids: tuple[str, ...], paths: tuple[str, ...],
              cfg: EvalConfig) -> str:
    h = hashlib.sha256()
    for i, p, size in zip(ids, paths, _sizes(paths)):
        h.update(f"{i}\t{os.path.basename(p)}\t{size}\n".encode())
    cuda = resolve_device(cfg.device).type == "cuda"
    settings = {
        "weights": weights.digest, "images": h.hexdigest(), "resize": cfg.resize,
        "crop": cfg.crop, "view": cfg.view, "layers": sorted(cfg.layers), "pooling": cfg.pooling,
        "precision": cfg.precision if cuda else "fp32",
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cached_features(weights: Weights, ids: tuple[str, ...], paths: tuple[str, ...],
                    cfg: EvalConfig, cache_dir: str, progress: bool = False
                    ) -> tuple[dict[str, np.ndarray], dict]:
    """Features of the images, read from ``cache_dir`` or extracted and written there.

    Returns (features by layer, info: cache file, hit or miss, extraction time and rate)."""
    key = cache_key(weights, ids, paths, cfg)
    path = storage.join(cache_dir, f"{weights.arch}-{weights.digest[:12]}-{key}.npz")
    if storage.exists(path):
        with storage.open_file(path, "rb") as f:
            data = np.load(io.BytesIO(f.read()))
            if tuple(data["ids"].tolist()) == tuple(ids):
                return ({name: data[name] for name in cfg.layers},
                        {"cache": path, "cached": True})
    t0 = time.perf_counter()
    feats = extract(weights, paths, cfg, progress)
    seconds = time.perf_counter() - t0
    with storage.atomic_local_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=np.array(ids), **feats)
    return feats, {"cache": path, "cached": False, "extract_seconds": round(seconds, 3),
                   "images_per_s": round(len(ids) / max(seconds, 1e-9), 2)}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """x / (||x|| + 1e-5), row-wise (svm_helper.normalize_features of the Goyal et al. code)."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


def _sizes(paths: tuple[str, ...] | list[str]) -> list[int]:
    """File sizes, in order. Paths on one filesystem are asked together (``fs.sizes``: concurrent
    HEAD requests on object stores, rather than one round trip per image)."""
    groups: dict[int, tuple[object, list[int], list[str]]] = {}
    for n, path in enumerate(paths):
        fs, p = storage.url_to_fs(path)
        _, index, fs_paths = groups.setdefault(id(fs), (fs, [], []))
        index.append(n)
        fs_paths.append(p)
    sizes = [0] * len(paths)
    for fs, index, fs_paths in groups.values():
        for n, size in zip(index, fs.sizes(fs_paths)):
            sizes[n] = int(size)
    return sizes
