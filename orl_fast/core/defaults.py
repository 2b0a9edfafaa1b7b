"""The configuration's sections, whose defaults are the paper's (ORL, NeurIPS 2021).

Every default is written here once: the shipped config ``paper`` is these defaults as they are
(:data:`orl_fast.core.config.PAPER`), ``small`` (``configs/small.yaml``) changes sizes only. The
loading, overrides, coercion and checks live in :mod:`orl_fast.core.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orl_fast.core.config import (
    ConfigError,
    ConfigRoot,
    _non_negative,
    _ordered,
    _positive,
    _probability,
    validate_sections,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Backbone = Literal[
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2"
]


@dataclass
class ModelConfig:
    backbone: Backbone = "resnet50"
    # ResNet stem: "imagenet" (7x7 stride-2 conv + max-pool, the paper's) or "small" (3x3
    # stride-1 conv, no max-pool: the CIFAR-style stem of solo-learn / lightly for 32-96 px
    # inputs; 16x the compute of "imagenet" at the same input size).
    stem: Literal["imagenet", "small"] = "imagenet"
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    # SyncBN when distributed (torch SyncBatchNorm on CUDA, a cross-rank BN on CPU/gloo).
    sync_bn: bool = True
    # Initialisation. "official" (the official ORL / OpenSelfSup code): the ResNet's convolutions
    # and the projector's / predictors' Linears kaiming normal with fan_in (std sqrt(2 / fan_in)),
    # biases 0, norm layers weight 1 and bias 0. "torchvision": torchvision's ResNet init
    # (convolutions fan_out) and PyTorch's Linear default (kaiming uniform, a = sqrt(5)).
    init: Literal["official", "torchvision"] = "official"
    # Backbone initialisation of Stage 1 / Stage 3 (online and target): "" (random), or a
    # torchvision / timm ResNet weights file of this backbone (.pth, .pt, .safetensors; a path or
    # URL, never a download), or an orl-fast checkpoint. Shapes are checked at start-up.
    init_weights: str = ""
    # The self-supervised objective of every term: "byol" (2 - 2 cos of the prediction and the
    # EMA target, the paper's) or "mocov3" (MoCo-v3 as released: InfoNCE of the prediction over
    # the momentum encoder's keys of the other view, gathered over the ranks, positives on the
    # diagonal, temperature `temperature`, scaled by 2 x temperature; the projector ends in a
    # BatchNorm without affine parameters, the predictor does not). Both keep the momentum
    # encoder = backbone + projector. MoCo-v3's released ResNet-50 recipe: configs/mocov3.yaml.
    method: Literal["byol", "mocov3"] = "byol"
    temperature: float = 1.0

    def validate(self, p: str) -> None:
        _positive(p, self, "proj_hidden_dim", "proj_dim", "pred_hidden_dim", "temperature")


@dataclass
class AugmentConfig:
    """BYOL augmentations. Pairs are (view 1, view 2): the asymmetric blur / solarise of BYOL."""

    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # Resampling of the resized crop (official ORL: PIL interpolation 2 = bilinear).
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    hflip_p: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    # Gaussian blur sigma range in pixels of a crop_size = blur_reference_size crop: at other crop
    # sizes it scales with crop_size / blur_reference_size (patches included), as BYOL's and
    # SimCLR's blur is defined relative to the image side. 0: sigma in pixels whatever the size.
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_reference_size: int = 224
    solarize_p: tuple[float, float] = (0.0, 0.2)
    solarize_threshold: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self, p: str) -> None:
        _positive(p, self, "crop_size")
        _non_negative(p, self, "blur_reference_size")
        _ordered(p, self, "crop_scale", lo=0.0, hi=1.0)
        _ordered(p, self, "crop_ratio", lo=0.0)
        _ordered(p, self, "blur_sigma", lo=0.0)
        for name in ("hflip_p", "color_jitter_p", "grayscale_p"):
            _probability(p, name, getattr(self, name))
        for name in ("blur_p", "solarize_p"):
            for v in getattr(self, name):
                _probability(p, name, v)
        if any(v < 0 for v in self.color_jitter) or self.color_jitter[3] > 0.5:
            raise ConfigError(
                f"{p}color_jitter: (brightness, contrast, saturation, hue) must be >= 0 with "
                f"hue <= 0.5, got {self.color_jitter}"
            )
        if not 0 <= self.solarize_threshold <= 255:
            raise ConfigError(f"{p}solarize_threshold: must be in [0, 255], got {self.solarize_threshold}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{p}std: must be > 0, got {self.std}")

    @property
    def blur_sigma_px(self) -> tuple[float, float]:
        """The blur sigma range in pixels at this crop size (see ``blur_reference_size``)."""
        scale = self.crop_size / self.blur_reference_size if self.blur_reference_size else 1.0
        return (self.blur_sigma[0] * scale, self.blur_sigma[1] * scale)


@dataclass
class OptimConfig:
    """SGD (or LARS), lr = base_lr x global_batch / lr_base_batch, linear warm-up then cosine
    decay."""

    base_lr: float = 0.2
    lr_base_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # BYOL/LARS-style: no weight decay on BN parameters and biases (off in the paper's SGD recipe).
    exclude_bn_bias_from_wd: bool = False
    warmup_epochs: float = 4.0
    # Warm-up starts at base x this factor (OpenSelfSup: warmup_ratio 1e-4).
    warmup_start_factor: float = 1e-4
    min_lr: float = 0.0
    schedule: Literal["cosine"] = "cosine"
    # "sgd" (the paper's) or "lars" (MoCo-v3's, as OPERA trains: parameters of more than one
    # dimension get weight decay and the trust ratio lars_trust x ||p|| / ||g + wd p|| (1 when a
    # norm is 0), the others (BatchNorm, biases) neither; then momentum; no other exclusion).
    optimizer: Literal["sgd", "lars"] = "sgd"
    lars_trust: float = 0.001

    def validate(self, p: str) -> None:
        _positive(p, self, "base_lr", "lr_base_batch", "lars_trust")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{p}momentum: must be in [0, 1), got {self.momentum}")
        _non_negative(p, self, "weight_decay", "warmup_epochs", "min_lr")
        if not 0 < self.warmup_start_factor <= 1:
            raise ConfigError(f"{p}warmup_start_factor: must be in (0, 1], got {self.warmup_start_factor}")


@dataclass
class TrainConfig:
    epochs: int = 800
    # Global batch over all ranks; each rank gets batch_size / world_size.
    batch_size: int = 512
    tau_base: float = 0.99
    # bf16 autocast applies on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX; other CPUs
    # run in fp32); fp64 is for numerical verification.
    precision: Literal["bf16", "fp32", "fp64"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    device: Literal["auto", "cuda", "cpu"] = "auto"
    num_workers: int = 8
    prefetch_factor: int = 4
    seed: int = 0
    # Bit-exact CPU runs (torch.use_deterministic_algorithms); slower, for tests and debugging.
    deterministic: bool = False
    ckpt_every_steps: int = 1000
    keep_last: int = 3
    log_every_steps: int = 20
    # Stop after this many optimiser steps (0: run all epochs). Schedules still span all epochs.
    max_steps: int = 0
    # A run resumes OUT's checkpoint only when it was trained with the same config (but for the
    # fields that may change: epochs, max_steps, logging and checkpoint cadence, workers, device,
    # launcher; orl_fast.training.engine.RESUME_MAY_CHANGE) and inputs; true: resume anyway.
    resume_anyway: bool = False
    # Where the ranks come from. direct: this process is the run (alone, or one of the processes
    # torchrun starts, on one node or many). ray: Ray Train starts ray_workers ranks on a Ray
    # cluster (a private loopback one unless ray_address or RAY_ADDRESS names one), each with
    # ray_cpus_per_worker CPUs and, when the run is on GPUs (device cuda, or auto and the
    # cluster has GPUs), ray_gpus_per_worker GPUs. A worker group that fails is restarted up to
    # ray_max_failures times and resumes from OUT's latest checkpoint (OUT must be shared storage
    # or an object store URL when ranks span nodes).
    launcher: Literal["direct", "ray"] = "direct"
    ray_workers: int = 1
    ray_cpus_per_worker: int = 1
    ray_gpus_per_worker: int = 1
    ray_address: str = ""
    ray_max_failures: int = 0

    def validate(self, p: str) -> None:
        _positive(p, self, "epochs", "batch_size", "ckpt_every_steps", "keep_last",
                  "log_every_steps", "prefetch_factor", "ray_workers", "ray_cpus_per_worker",
                  "ray_gpus_per_worker")
        _non_negative(p, self, "num_workers", "max_steps", "seed", "ray_max_failures")
        if self.launcher == "ray" and self.batch_size % self.ray_workers:
            raise ConfigError(f"{p}batch_size: {self.batch_size} must be divisible by "
                              f"{p}ray_workers={self.ray_workers} (the global batch is split "
                              "evenly over the ranks)")
        if not 0 <= self.tau_base <= 1:
            raise ConfigError(f"{p}tau_base: must be in [0, 1], got {self.tau_base}")


@dataclass
class IngestConfig:
    # Images per shard (a shard is one unit of ingest and of every Stage 2 step). 0: chosen from
    # the number of inputs and the workers, about four shards per worker, between 32 and 1000
    # images each (loaders.ingest.choose_shard_size).
    shard_size: int = 0
    # Worker processes (0: one per CPU core).
    workers: int = 0
    # Quality for images that must be re-encoded (non-JPEG, CMYK, 16-bit, alpha, rotated, ...).
    jpeg_quality: int = 95
    # Images whose shorter side is below this are skipped as "too_small".
    min_side: int = 32
    # Images with more pixels are skipped as "decompression_bomb" before decoding.
    max_pixels: int = 178_956_970
    # Larger images are downscaled so that the longer side is max_side (0: keep the size, as
    # the paper's selective search sees full-resolution images). Large JPEGs are then decoded
    # at a reduced scale, other 8-bit images reduced before their colour conversion.
    max_side: int = 0
    # Inputs with more bytes are skipped as "too_large" (no more than this is ever read).
    max_bytes: int = 256 << 20
    extensions: tuple[str, ...] = (
        ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
    )

    def validate(self, p: str) -> None:
        _positive(p, self, "min_side", "max_pixels", "max_bytes")
        _non_negative(p, self, "shard_size", "workers", "max_side")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{p}jpeg_quality: must be in [1, 100], got {self.jpeg_quality}")


@dataclass
class MineConfig:
    """Stage 2: correspondence discovery. Defaults: paper / official ORL."""

    # Image kNN: image embeddings (projector output of the Stage 1 online network), neighbours.
    knn_k: int = 10
    knn_backend: Literal["torch", "faiss"] = "torch"
    # Query rows per block of the torch backend (mm + topk).
    knn_block: int = 4096
    # faiss index_factory string (inner product); "Flat" is exact, e.g. "IVF4096,Flat" for 10M+.
    faiss_index: str = "Flat"
    faiss_nprobe: int = 64
    # Whole-image embedding input, this size square. center_crop: resize the shorter side to
    # size x 256/224 then centre crop (official: Resize 256 + CenterCrop 224); resize: whole image.
    embed_size: int = 224
    embed_view: Literal["center_crop", "resize"] = "center_crop"
    # Proposals: selective search (OpenCV contrib) on the image resized so its longer side is at most
    # this (0: full size, as the official code).
    ss_mode: Literal["fast", "quality"] = "fast"
    ss_max_side: int = 0
    # Filter, in original pixels: min(w, h) >= min_box_size, w/h in aspect_range, greedy IoU
    # <= max_iou in selective-search order, at most max_boxes kept.
    min_box_size: int = 96
    aspect_range: tuple[float, float] = (1 / 3, 3.0)
    max_iou: float = 0.5
    max_boxes: int = 100
    # Another mined directory of the same images: its proposals made with the same settings are
    # taken, not recomputed (they depend on neither the model nor the output directory).
    proposals_from: str = ""
    # RoI embedding: RoI crops resized to this square size for the backbone (2048-d pooled on ResNet-50).
    roi_size: int = 224
    # Top-ranked RoI pairs: the top N% of the query's RoIs kept as pairs per (query, neighbour): int(frac x boxes), >= 1.
    topn_frac: float = 0.1
    # Model workers: bf16 autocast and channels_last apply on CUDA; CPU runs in fp32.
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = False
    # Crops per forward pass (whole images and RoIs).
    batch_size: int = 256
    # Where units run: "ray", or "local" (one after another in this process: debugging).
    executor: Literal["ray", "local"] = "ray"
    # "" starts a private local Ray on 127.0.0.1 (no dashboard) unless RAY_ADDRESS is set (a Ray
    # job); "auto", host:port or ray://... joins a running cluster.
    ray_address: str = ""
    # Local Ray only: CPUs (0: all cores) and object store size.
    ray_num_cpus: int = 0
    ray_object_store_mb: int = 256
    # Model actors: per GPU when the cluster has GPUs (and device is not cpu), else cpu_actors.
    actors_per_gpu: int = 1
    cpu_actors: int = 1
    # CPUs reserved by each model actor (torch threads on CPU, image decoding on GPU).
    actor_cpus: int = 1
    # Retries of a failed task / restarts of a dead actor (a failed unit is redone from scratch).
    max_retries: int = 3

    def validate(self, p: str) -> None:
        _positive(p, self, "knn_k", "knn_block", "faiss_nprobe", "embed_size", "min_box_size",
                  "max_boxes", "roi_size", "batch_size", "ray_object_store_mb",
                  "actors_per_gpu", "cpu_actors", "actor_cpus")
        _non_negative(p, self, "ss_max_side", "ray_num_cpus", "max_retries")
        _ordered(p, self, "aspect_range", lo=0.0)
        if not 0 <= self.max_iou <= 1:
            raise ConfigError(f"{p}max_iou: must be in [0, 1], got {self.max_iou}")
        if not 0 < self.topn_frac <= 1:
            raise ConfigError(f"{p}topn_frac: must be in (0, 1], got {self.topn_frac}")
        if not self.faiss_index.strip():
            raise ConfigError(f"{p}faiss_index: must be a faiss index_factory string, e.g. Flat")
        if self.ss_max_side and self.ss_max_side < 32:
            raise ConfigError(f"{p}ss_max_side: must be 0 (full size) or >= 32, "
                              f"got {self.ss_max_side}")


@dataclass
class ORLConfig:
    """Stage 3: object-level pre-training.

    K and N (Table 5b) are ``knn_k`` and ``topn_frac``: Stage 3 draws the neighbour among the first
    K mined neighbours and the pair among the top max(1, int(N x boxes)) mined pairs of that
    neighbour, so one mining run with large K and N serves every smaller ablation.
    """

    # lambda_1 (image), lambda_2 (intra-RoI), lambda_3 (inter-RoI). A 0 turns a term off, with its
    # predictor and patches (Table 5a: (1, 1, 0) intra-RoI only, (1, 0, 1) inter-RoI only).
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    patch_size: int = 96
    # Box jitter for intra-RoI patches (official ORLDataset: shift (-0.5, 0.5), scale (0.5, 2),
    # ratio (0.5, 2), iou_thr 0.5, attempt_num 200).
    jitter_shift: float = 0.5
    jitter_area: tuple[float, float] = (0.5, 2.0)
    jitter_aspect: tuple[float, float] = (0.5, 2.0)
    jitter_min_iou: float = 0.5
    jitter_tries: int = 200
    # false (the official code): p is the kept box itself and only p' is jittered, so IoU(p, p')
    # > jitter_min_iou always; true: both are jittered copies of the kept box (a variant: about
    # 45% of the pairs then overlap by IoU <= 0.5).
    jitter_both: bool = False
    # A jitter candidate that leaves the image: "reject" (the official code: drawn again, the kept
    # box itself after jitter_tries) or "clip" (clipped to the image: most jittered boxes of
    # large proposals then touch the border).
    jitter_outside: Literal["reject", "clip"] = "reject"
    init: Literal["scratch", "stage1"] = "scratch"
    # Patch source: "mined" boxes (ORL) or "random" resized crops of the image at random_scale,
    # no boxes (multi-crop BYOL, Table 5c: 2x224 + 4x96, same model and losses).
    patches: Literal["mined", "random"] = "mined"
    random_scale: tuple[float, float] = (0.08, 1.0)
    # Intra-RoI boxes: Stage 2's selective-search boxes, or "gt": ground-truth boxes of a COCO
    # instances file (Table 5d; crowd boxes and boxes under mine.min_box_size are left out).
    boxes: Literal["mined", "gt"] = "mined"
    gt_instances: str = ""
    # K and N (Table 5b): the neighbour is drawn among the first knn_k mined neighbours, the pair
    # among the top max(1, int(topn_frac x boxes)) mined pairs of it; 0 = as mined (the mined
    # output records its K and N), a smaller value an ablation from the same mining run.
    knn_k: int = 0
    topn_frac: float = 0.0
    # Data path: "dali" (GPU: mixed decoder; CPU device: DALI's CPU backend), "torch" (DataLoader
    # + torchvision), "auto" (DALI on a CUDA device when installed, else torch).
    loader: Literal["auto", "dali", "torch"] = "auto"
    # DALI: the neighbour's inter-RoI patch from a full decode, or a decoder-side ROI decode.
    neighbor_decode: Literal["full", "roi"] = "full"

    def validate(self, p: str) -> None:
        _positive(p, self, "patch_size", "jitter_tries")
        _non_negative(p, self, "jitter_shift", "knn_k")
        if not 0 <= self.topn_frac <= 1:
            raise ConfigError(f"{p}topn_frac: must be in [0, 1] (0: as mined), got {self.topn_frac}")
        _ordered(p, self, "jitter_area", lo=0.0)
        _ordered(p, self, "jitter_aspect", lo=0.0)
        _ordered(p, self, "random_scale", lo=0.0, hi=1.0)
        if any(w < 0 for w in self.loss_weights) or sum(self.loss_weights) == 0:
            raise ConfigError(f"{p}loss_weights: must be >= 0 and not all 0, got {self.loss_weights}")
        if not 0 <= self.jitter_min_iou < 1:
            raise ConfigError(f"{p}jitter_min_iou: must be in [0, 1), got {self.jitter_min_iou}")
        if self.boxes == "gt" and not self.gt_instances:
            raise ConfigError(f"{p}gt_instances: required with {p}boxes=gt (a COCO instances json)")


@dataclass
class LabelConfig:
    """Label-aware modes (docs/LABELS.md): ``opera`` (Wang et al., ICCV 2023, as its released
    code does) and ``scan`` (Wei et al., AAAI 2022). SCAN's method text could not be read: every
    SCAN choice below is a reconstruction and is marked [reconstructed].

    Labels are data: ``orl-fast labels SHARDS --from FILE`` writes the label store beside the
    shards (class vocabulary, image tags, box labels); unlabelled images stay in the set.
    """

    mode: Literal["none", "opera", "scan"] = "none"
    # The label store: "" = labels.npz in `data`; else a store file or the directory holding it.
    source: str = ""
    # OPERA: a class head on the online predictor output of both global views (before its
    # normalisation, no stop-gradient); L = self_weight x self-supervised loss + class_weight x
    # (class loss(view 1) + class loss(view 2)). 0.5 / 0.5 as released on MoCo-v3; on BYOL the
    # same weights, transplanted (2 - 2 cos has another scale than 2T InfoNCE). self_weight 0:
    # the class loss alone (a supervised baseline).
    self_weight: float = 0.5
    class_weight: float = 0.5
    # Linear(proj_dim, head_hidden_dim) -> BN -> ReLU -> Linear(head_hidden_dim, classes), no
    # biases (released: 256); the number of classes is the store's vocabulary.
    head_hidden_dim: int = 256
    # Tags (several classes per image): "softmax", CE against the tag vector normalised to sum
    # 1 (OPERA's CE for a single tag); "bce", binary CE averaged over the classes whose presence
    # is known (VOC's difficult-only classes are not).
    class_loss: Literal["softmax", "bce"] = "softmax"
    # Unlabelled samples are masked out of the class loss, which is averaged over the labelled
    # samples of the batch ("labelled"; a batch without any gives 0) or over the whole batch
    # ("batch"). [reconstructed: the released code labels every image]
    normalize: Literal["labelled", "batch"] = "labelled"
    # Extension, not OPERA's: a second class head, shared by the intra- and inter-RoI predictor
    # outputs, on box labels (a RoI takes the class of the ground-truth box it overlaps most with
    # IoU >= box_iou, else it is ignored), weighted class_weight per patch.
    roi_head: bool = False
    box_iou: float = 0.5
    # SCAN [reconstructed, every field below]. Label neighbours of a labelled image: labelled
    # images whose tags overlap with Jaccard >= jaccard (single-label data: the same class).
    # Stage 2 (orl-fast mine with label.mode=scan) searches candidates x K cosine neighbours and
    # keeps the first K label neighbours (an unlabelled image keeps its K plain neighbours), and
    # with pair_gate drops inter-RoI pairs whose two boxes carry different box labels (box_iou).
    jaccard: float = 0.5
    candidates: int = 4
    pair_gate: bool = True
    # Stages 1 and 3 (pairs=MINED): image term = (1 - beta) x instance term + beta x neighbour
    # term, the neighbour term regressing the image's predictions onto the target projection of
    # one global view of a label neighbour j drawn with probability softmax(cos / tau_w) over
    # its label neighbours (cos: Stage 2's kNN similarity); a one-sample estimate of the
    # weighted sum. An image without label neighbours keeps the instance term alone.
    tau_w: float = 0.1
    beta: float = 0.5

    def validate(self, p: str) -> None:
        _positive(p, self, "head_hidden_dim", "candidates", "tau_w")
        _non_negative(p, self, "self_weight", "class_weight")
        if self.mode == "opera" and self.self_weight + self.class_weight == 0:
            raise ConfigError(f"{p}class_weight: self_weight and class_weight are both 0")
        for name in ("jaccard", "box_iou"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{p}{name}: must be in (0, 1], got {getattr(self, name)}")
        _probability(p, "beta", self.beta)


# The VOC07 SVM cost grid of the released ORL / OpenSelfSup scripts
# (benchmarks/svm_tools/eval_svm_full.sh: costs 1, 10, 100, to which svm_helper.parse_cost_list
# appends 0.5**4 ... 0.5**19), ascending.
ORL_SVM_COSTS = tuple(sorted([1.0, 10.0, 100.0] + [0.5**k for k in range(4, 20)]))


@dataclass
class SVMConfig:
    """VOC07 linear SVM (Goyal et al. 2019 benchmark, as run by the released ORL scripts)."""

    # Cost grid; per class, the cost with the best cross-validated AP is kept.
    costs: tuple[float, ...] = ORL_SVM_COSTS
    folds: int = 3
    # LinearSVC(class_weight={1: pos_weight, -1: 1}, squared hinge, dual, tol 1e-4).
    pos_weight: float = 2.0
    max_iter: int = 2000
    # Difficult training images: "negative" (the official train_svm_kfold.py: every label other
    # than present is -1) or "ignore" (left out). At test they are always ignored.
    difficult: Literal["negative", "ignore"] = "negative"

    def validate(self, p: str) -> None:
        _positive(p, self, "pos_weight", "max_iter")
        if not self.costs or any(c <= 0 for c in self.costs):
            raise ConfigError(f"{p}costs: expected a non-empty list of costs > 0, got {self.costs}")
        if self.folds < 2:
            raise ConfigError(f"{p}folds: must be >= 2, got {self.folds}")


@dataclass
class LowShotConfig:
    """VOC07 low-shot SVMs: n positives (and 19 x n negatives) per class, seeded samples."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
    samples: int = 5

    def validate(self, p: str) -> None:
        _positive(p, self, "samples")
        if not self.shots or any(n <= 0 for n in self.shots):
            raise ConfigError(f"{p}shots: expected a non-empty list of counts > 0, got {self.shots}")


@dataclass
class KNNConfig:
    """Weighted kNN on L2-normalised features (Wu et al. 2018): class score = sum exp(cos / T)."""

    k: int = 200
    temperature: float = 0.07

    def validate(self, p: str) -> None:
        _positive(p, self, "k", "temperature")


@dataclass
class LinearProbeConfig:
    """The quick linear probe: a linear classifier on the cached frozen features (no augmentation),
    with the paper supplementary's optimiser (SGD, batch 256, lr 0.01 decayed by 0.1 at three
    equally spaced points, momentum 0.9, weight decay 1e-4). The official protocol, trained on
    images: :class:`LinearOfficialConfig`."""

    epochs: int = 28
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4

    def validate(self, p: str) -> None:
        _positive(p, self, "epochs", "batch_size", "lr")
        _non_negative(p, self, "weight_decay")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{p}momentum: must be in [0, 1), got {self.momentum}")


@dataclass
class SemiSupConfig:
    """Semi-supervised fine-tuning (paper Table 3; supplementary B and the official configs/
    benchmarks/semi_classification/imagenet_{1,10}percent/): all layers trained from the weights,
    a new Linear classifier (normal init, std 0.01) on the global-average-pooled res5; SGD,
    momentum 0.9, batch 256, 20 epochs, lr 0.01 for the backbone and 0.01 x 100 = 1 for the
    classifier, x0.2 at epochs 12 and 16, weight decay 0 with 1% and 1e-4 with 10% of the labels;
    training views RandomResizedCrop 224 + flip, test Resize 256 + CenterCrop 224."""

    # Label fractions, each with its weight decay; the subset is drawn per class, seeded.
    fractions: tuple[float, ...] = (0.01, 0.1)
    weight_decay: tuple[float, ...] = (0.0, 1e-4)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.01
    head_lr_mult: float = 100.0
    momentum: float = 0.9
    milestones: tuple[int, ...] = (12, 16)
    gamma: float = 0.2
    crop: int = 224
    resize: int = 256
    # Stop after this many steps (0: the whole schedule; the lr schedule is unchanged).
    max_steps: int = 0
    ckpt_every_steps: int = 500
    log_every_steps: int = 20

    def validate(self, p: str) -> None:
        _positive(p, self, "epochs", "batch_size", "lr", "head_lr_mult", "crop", "resize",
                  "ckpt_every_steps", "log_every_steps")
        _non_negative(p, self, "max_steps", "gamma")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"{p}fractions: expected label fractions in (0, 1], "
                              f"got {self.fractions}")
        if len(self.weight_decay) != len(self.fractions) or any(w < 0 for w in self.weight_decay):
            raise ConfigError(f"{p}weight_decay: one value >= 0 per fraction "
                              f"({len(self.fractions)}), got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{p}momentum: must be in [0, 1), got {self.momentum}")


@dataclass
class LinearOfficialConfig:
    """The official linear classification protocol (paper supplementary B; the official configs/
    benchmarks/linear_classification/imagenet/r50_multihead_28ep.py): the backbone frozen (eval
    mode, frozen BatchNorm statistics); one head per layer (conv1, res2 ... res5): the Goyal et
    al. average pooling, BatchNorm without affine parameters (momentum 0.1), a Linear (normal
    init, std 0.01), the heads trained together (the sum of their cross-entropies); SGD with
    Nesterov momentum 0.9, lr 0.01, weight decay 1e-4 (none on norm layers), batch 256,
    28 epochs, x0.1 at epochs 8, 16 and 24; training views RandomResizedCrop 224 + flip +
    ColorJitter(0.4, 0.4, 0.4, 0) + PCA lighting noise (std 0.1), test Resize 256 +
    CenterCrop 224. The best layer is the headline (the paper reports it)."""

    layers: tuple[Literal["conv1", "res2", "res3", "res4", "res5"], ...] = (
        "conv1", "res2", "res3", "res4", "res5")
    epochs: int = 28
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (8, 16, 24)
    gamma: float = 0.1
    color_jitter: tuple[float, float, float] = (0.4, 0.4, 0.4)
    lighting_std: float = 0.1
    crop: int = 224
    resize: int = 256
    max_steps: int = 0
    ckpt_every_steps: int = 500
    log_every_steps: int = 20

    def validate(self, p: str) -> None:
        _positive(p, self, "epochs", "batch_size", "lr", "crop", "resize", "ckpt_every_steps",
                  "log_every_steps")
        _non_negative(p, self, "max_steps", "gamma", "weight_decay", "lighting_std")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"{p}layers: expected distinct layers, got {self.layers}")
        if any(v < 0 for v in self.color_jitter):
            raise ConfigError(f"{p}color_jitter: must be >= 0, got {self.color_jitter}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{p}momentum: must be in [0, 1), got {self.momentum}")


@dataclass
class DetectionConfig:
    """Mask R-CNN R50-FPN transfer with a detectron2-style schedule.

    1x = 90k iterations at batch 16, lr 0.02, x0.1 at 60k and 80k, 1000 linear warm-up iterations;
    ``schedule`` multiplies the iterations (2.0 = 2x, 0.01 for a smoke run) and a batch other than
    16 scales lr and iterations linearly (detectron2's reference-world-size rule).
    """

    # The trainer: "torchvision" (this package's detector on the one training loop; installs
    # from the package index) or "detectron2" (detectron2's trainer on the exported config and
    # weights, the paper's; built from source by scripts/install-detectron2.sh).
    engine: Literal["torchvision", "detectron2"] = "torchvision"
    schedule: float = 1.0
    batch_size: int = 16
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # detectron2 SOLVER.WEIGHT_DECAY_NORM: no decay on normalisation parameters.
    weight_decay_norm: float = 0.0
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    # "sync": BatchNorm everywhere, synchronised across GPUs under DDP (the paper);
    # "frozen": backbone BatchNorm frozen at the checkpoint's statistics.
    norm: Literal["sync", "frozen"] = "sync"
    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    min_size_test: int = 800
    max_size: int = 1333
    masks: bool = True
    # 3x3 convolutions of the RPN head: 1 is detectron2's StandardRPNHead (MODEL.RPN.CONV_DIMS
    # [-1], the paper's R50-FPN), 2 torchvision's maskrcnn_resnet50_fpn_v2 head.
    rpn_convs: Literal[1, 2] = 1
    # detectron2 MODEL.RPN.POST_NMS_TOPK_TRAIN / _TEST, ROI_HEADS.BATCH_SIZE_PER_IMAGE,
    # TEST.DETECTIONS_PER_IMAGE.
    rpn_post_nms_topk_train: int = 1000
    rpn_post_nms_topk_test: int = 1000
    roi_batch_size_per_image: int = 512
    detections_per_image: int = 100
    # detectron2 TEST.PRECISE_BN: recompute BatchNorm statistics on this many batches before
    # evaluating (0: off).
    precise_bn_iters: int = 200
    # Stop after this many iterations (0: the whole schedule); the lr schedule is unchanged.
    max_iter: int = 0
    ckpt_every_iters: int = 5000
    log_every_iters: int = 20

    def validate(self, p: str) -> None:
        _positive(p, self, "schedule", "batch_size", "base_lr", "min_size_test", "max_size",
                  "rpn_post_nms_topk_train", "rpn_post_nms_topk_test",
                  "roi_batch_size_per_image", "detections_per_image", "ckpt_every_iters",
                  "log_every_iters")
        _non_negative(p, self, "weight_decay", "weight_decay_norm", "warmup_iters",
                      "precise_bn_iters", "max_iter")
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"{p}warmup_factor: must be in (0, 1], got {self.warmup_factor}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{p}momentum: must be in [0, 1), got {self.momentum}")
        if not self.min_size_train or any(s <= 0 for s in self.min_size_train):
            raise ConfigError(f"{p}min_size_train: expected sizes > 0, got {self.min_size_train}")


@dataclass
class EvalConfig:
    """Evaluation (paper Section 4 and supplementary)."""

    # Frozen-backbone features: shorter side resized to ``resize``, then (view) "resize": squashed
    # to crop x crop (the official extraction, benchmarks/extract_info/voc07.py: Resize(256),
    # Resize((224, 224))) or "center_crop": the centre crop x crop square; pooled res5 (and
    # optionally res4) activations. "goyal" (the official feat4 / feat5: OpenSelfSup's
    # MultiPooling 'specified', res4 AvgPool2d(8, stride 3) 9216-d, res5 AvgPool2d(6, stride 1)
    # 8192-d for ResNet-50 at 224; it needs res5 maps of at least 6x6, crops >= 192 px) or
    # "global": average pool (res5 2048-d). Features are cached by weights, images and settings.
    resize: int = 256
    crop: int = 224
    view: Literal["resize", "center_crop"] = "resize"
    layers: tuple[Literal["res4", "res5"], ...] = ("res5",)
    pooling: Literal["global", "goyal"] = "goyal"
    batch_size: int = 64
    num_workers: int = 4
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # Feature cache directory ("" -> OUT/feature-cache).
    cache_dir: str = ""
    # Seeds the held-out split, low-shot samples, random-init baseline and probe training.
    seed: int = 0
    # With one split only, this fraction of it (seeded) is held out as the test set.
    holdout_frac: float = 0.5
    # Worker threads for the SVMs (0: one per CPU core).
    jobs: int = 0
    svm: SVMConfig = field(default_factory=SVMConfig)
    lowshot: LowShotConfig = field(default_factory=LowShotConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    semisup: SemiSupConfig = field(default_factory=SemiSupConfig)
    linear_official: LinearOfficialConfig = field(default_factory=LinearOfficialConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    # Attention maps: images resized so that the shorter side is this.
    viz_size: int = 448

    def validate(self, p: str) -> None:
        _positive(p, self, "resize", "crop", "batch_size", "viz_size")
        _non_negative(p, self, "num_workers", "seed", "jobs")
        if self.crop > self.resize:
            raise ConfigError(f"{p}crop: must be <= resize ({self.resize}), got {self.crop}")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"{p}layers: expected distinct res4 / res5, got {self.layers}")
        if not 0 < self.holdout_frac < 1:
            raise ConfigError(f"{p}holdout_frac: must be in (0, 1), got {self.holdout_frac}")
        validate_sections(self, p)


@dataclass
class Config(ConfigRoot):
    """The whole configuration: inputs and outputs of a step, then one section per part."""

    # Image shards (output of `orl-fast ingest`): local path or fsspec URL.
    data: str = ""
    # Output directory of the stage being run.
    out: str = ""
    # Input checkpoint (Stage 2 and evaluation read the Stage 1 / Stage 3 model from it).
    ckpt: str = ""
    # Mined pairs (output of Stage 2), read by Stage 3.
    pairs: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    orl: ORLConfig = field(default_factory=ORLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    label: LabelConfig = field(default_factory=LabelConfig)

    def validate(self) -> Config:
        super().validate()
        if self.label.mode == "scan" and self.model.method != "byol":
            raise ConfigError("label.mode: scan regresses predictions onto targets and needs "
                              f"model.method=byol (got {self.model.method})")
        if self.label.mode != "none" and self.orl.loss_weights[0] == 0:
            raise ConfigError(f"label.mode: {self.label.mode} works on the image term; "
                              f"orl.loss_weights[0] is 0")
        return self
