"""The detectron2 engine of the detection transfer (``eval.detection.engine=detectron2``): the
paper's trainer, driven from the weights export.

Per weights, in ``RUN`` (``OUT/<model>``): the weights exported for detectron2
(``backbone.pkl`` + ``backbone.yaml``, :func:`evaluation.export.export`), the selected train /
validation instances (``train.json``, ``val.json``, registered as COCO-format datasets), then
detectron2's ``DefaultTrainer`` on the exported config (SyncBN across GPUs under torchrun, the 1x
schedule scaled by ``eval.detection.schedule``, stopping at ``eval.detection.max_iter`` with the
lr schedule unchanged, PreciseBN at the end), resumed by detectron2's checkpointer from
``RUN/last_checkpoint`` when a run was stopped, and its ``COCOEvaluator`` on the validation set.
detectron2's own files stay as it writes them: ``log.txt``, ``metrics.json``, ``model_*.pth``,
``inference/coco_instances_results.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator

import torch

from evaluation import export
from evaluation.backbones import Weights
from evaluation.detection.data import DetectionData
from evaluation.detection.evaluate import METRICS
from evaluation.detection.schedule import stop_iter
from orl_fast.core import storage
from orl_fast.core.config import ConfigError
from orl_fast.core.defaults import Config
from orl_fast.core.distributed import Runtime
from orl_fast.core.extras import require

require("detectron2._C", "detectron2", "eval.detection.engine=detectron2",
        install="scripts/install-detectron2.sh builds it from source (FORCE=1 rebuilds it "
                "against the installed torch)")
# (after the check that says how to install it)
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import AMPTrainer, DefaultTrainer, hooks
from detectron2.engine.defaults import default_writers
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

LOGGERS = ("detectron2", "fvcore")  # detectron2's and its checkpointer's (fvcore) loggers


def transfer(w: Weights, data: DetectionData, cfg: Config, run_dir: str, rt: Runtime,
             progress: bool = True) -> dict | None:
    """Fine-tune with detectron2 from ``w`` in ``run_dir`` (resuming what is there) and evaluate
    with its COCOEvaluator: on rank 0 ``{"metrics", "backbone_norm"}``, else None."""
    check(data, cfg, run_dir, rt)
    with logs(run_dir, rt, progress):
        d2cfg = build_config(w, data, cfg, run_dir, rt)
        trainer = Trainer(d2cfg, cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
        metrics = evaluate(trainer.model, d2cfg, cfg.eval.detection.masks)
    if not rt.is_main:
        return None
    model = getattr(trainer.model, "module", trainer.model)
    return {"metrics": metrics,
            "backbone_norm": type(model.backbone.bottom_up.stem.conv1.norm).__name__}


def check(data: DetectionData, cfg: Config, run_dir: str, rt: Runtime) -> None:
    """What detectron2 cannot do, as one line naming the field or path."""
    for what, path in (("--out", run_dir), ("--train-images", data.train_root),
                       ("--val-images", data.val_root)):
        if "://" in path:
            raise ConfigError(f"{what} {path}: the detectron2 engine reads and writes local paths "
                              "only (the torchvision engine takes URLs)")
    if rt.distributed and rt.device.type != "cuda":
        raise ConfigError("eval.device: the detectron2 engine runs several processes on GPUs "
                          "only (detectron2's DDP and SyncBN)")
    if cfg.eval.precision == "bf16" and rt.device.type != "cuda":
        raise ConfigError("eval.precision: bf16 under the detectron2 engine needs a GPU "
                          "(detectron2's AMPTrainer)")


def register(name: str, coco: dict, json_path: str, image_root: str) -> str:
    """Write ``coco`` to ``json_path`` and register it as detectron2 dataset ``name``."""
    storage.atomic_write(json_path, json.dumps(coco).encode())
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_path, image_root)
    return name


def build_config(w: Weights, data: DetectionData, cfg: Config, run_dir: str,
                 rt: Runtime) -> CfgNode:
    """The exported detectron2 config of ``w`` (written with its weights into ``run_dir``), on
    the registered train / validation sets of ``data``, run as ``cfg.eval`` says."""
    dc, ec = cfg.eval.detection, cfg.eval
    storage.makedirs(run_dir)
    _, yaml_path = export.export(w, "detectron2", os.path.join(run_dir, "backbone.pkl"), dc)
    d2 = get_cfg()
    d2.merge_from_file(yaml_path)
    d2.DATASETS.TRAIN = (register(f"orl-fast-train:{run_dir}", data.train,
                                  os.path.join(run_dir, "train.json"), data.train_root),)
    d2.DATASETS.TEST = (register(f"orl-fast-val:{run_dir}", data.val,
                                 os.path.join(run_dir, "val.json"), data.val_root),)
    d2.MODEL.ROI_HEADS.NUM_CLASSES = data.num_classes
    d2.MODEL.DEVICE = str(rt.device)
    # Compressed RLE masks (e.g. Penn-Fudan's) need detectron2's bitmask format; polygons (COCO)
    # stay polygons.
    rle = any(isinstance(a.get("segmentation"), dict) for a in data.train["annotations"])
    d2.INPUT.MASK_FORMAT = "bitmask" if rle else "polygon"
    d2.DATALOADER.NUM_WORKERS = ec.num_workers
    d2.SOLVER.CHECKPOINT_PERIOD = dc.ckpt_every_iters
    d2.TEST.EVAL_PERIOD = 0  # evaluated once, after training (``evaluate``)
    d2.SEED = ec.seed
    d2.OUTPUT_DIR = run_dir
    d2.freeze()
    return d2


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer stopping at ``eval.detection.max_iter`` (the lr schedule of
    the whole ``SOLVER.MAX_ITER`` unchanged), logging every ``log_every_iters``, bf16 autocast
    under ``eval.precision=bf16``; no evaluation hook (``evaluate`` runs after training)."""

    def __init__(self, d2cfg: CfgNode, cfg: Config):
        dc = cfg.eval.detection
        self.stop, self.log_every = stop_iter(dc), dc.log_every_iters
        # The new layers' initialisation and the data order: seeded, as detectron2's tools do.
        seed_all_rng(cfg.eval.seed + comm.get_rank())
        _local_process_group()
        super().__init__(d2cfg)
        self.max_iter = self.stop
        if cfg.eval.precision == "bf16":
            t = self._trainer
            self._trainer = AMPTrainer(t.model, t.data_loader, t.optimizer,
                                       grad_scaler=torch.amp.GradScaler("cuda", enabled=False),
                                       precision=torch.bfloat16)

    def build_hooks(self) -> list:
        kept = [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]
        for h in kept:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = self.log_every
        return kept

    def build_writers(self) -> list:
        return default_writers(self.cfg.OUTPUT_DIR, self.stop)


def _local_process_group() -> None:
    """detectron2's per-machine process group (its ``launch`` makes one; torchrun does not)."""
    if comm.get_world_size() > 1 and comm._LOCAL_PROCESS_GROUP is None:
        comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE",
                                                           comm.get_world_size())))


class Evaluator(COCOEvaluator):
    """COCOEvaluator whose per-task results are the report's: AP, AP50, AP75, APs, APm, APl
    (percent), the number of detections and COCOeval's summary lines."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        res = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None:  # no detections
            return {k: 0.0 for k in METRICS} | {"detections": 0}
        with contextlib.redirect_stdout(io.StringIO()) as text:
            coco_eval.summarize()
        return ({k: res[k] for k in METRICS} | {"detections": len(coco_eval.cocoDt.anns),
                                                "summary": text.getvalue().strip().splitlines()})


def evaluate(model: torch.nn.Module, d2cfg: CfgNode, masks: bool) -> dict:
    """detectron2's inference and COCOEvaluator on ``DATASETS.TEST[0]``: {"bbox": ..., "segm":
    ...} on rank 0 ({} elsewhere)."""
    name = d2cfg.DATASETS.TEST[0]
    loader = build_detection_test_loader(d2cfg, name)
    evaluator = Evaluator(name, tasks=("bbox", "segm") if masks else ("bbox",),
                          output_dir=os.path.join(d2cfg.OUTPUT_DIR, "inference"))
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's prints: in the summary
        return dict(inference_on_dataset(model, loader, evaluator))


@contextlib.contextmanager
def logs(run_dir: str, rt: Runtime, progress: bool) -> Iterator[None]:
    """detectron2's and fvcore's logs (INFO) into ``RUN/log.txt`` (``log.txt.rankN`` on other
    ranks), and on stdout with ``progress`` on rank 0; the handlers go when the run ends."""
    storage.makedirs(run_dir)
    name = "log.txt" if rt.is_main else f"log.txt.rank{rt.rank}"
    handlers: list[logging.Handler] = [logging.FileHandler(os.path.join(run_dir, name))]
    if progress and rt.is_main:
        handlers.append(logging.StreamHandler(sys.stdout))
    fmt = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%m/%d %H:%M:%S")
    saved = []
    for logger_name in LOGGERS:
        logger = logging.getLogger(logger_name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for h in handlers:
            h.setFormatter(fmt)
            logger.addHandler(h)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            for h in handlers:
                logger.removeHandler(h)
            logger.setLevel(level)
            logger.propagate = propagate
        for h in handlers:
            h.close()
