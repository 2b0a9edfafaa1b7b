"""Mask R-CNN R50-FPN transfer (paper Table 4), by one of two engines (``eval.detection.engine``)
writing one report. ``torchvision``: torchvision Mask R-CNN with the heads of
``maskrcnn_resnet50_fpn_v2`` (FPN, 4conv1fc box head and 4-conv mask head, all with BatchNorm)
and detectron2's one-conv RPN head (``rpn_convs=2``: v2's two), the ResNet backbone initialised
from an orl-fast checkpoint, every layer trained, the input normalised as the checkpoint was
trained. ``detectron2``: detectron2's trainer and COCOEvaluator on the exported config and
weights (:mod:`evaluation.detection.detectron2_engine`), the paper's.

Normalisation (``eval.detection.norm``): "sync" keeps BatchNorm everywhere, synchronised across
GPUs under DDP (torchrun), as the paper's detectron2 config (``NORM: SyncBN``); "frozen" freezes the
backbone's BatchNorm at the checkpoint's statistics. Schedule as detectron2 (see
:func:`schedule`): SGD momentum 0.9, weight decay 1e-4 (none on norm parameters), linear warm-up,
x0.1 steps; multi-scale training (shorter side from ``min_size_train``, longer side <= 1333,
horizontal flip), test at 800; precise BatchNorm statistics before evaluation (with "sync").
Evaluation: pycocotools COCOeval (detectron2's COCOEvaluator under that engine), boxes (APbb)
and masks (APmk), AP / AP50 / AP75 / APs / APm / APl.

The torchvision engine trains on the one training loop (:func:`orl_fast.training.engine.fit`)
and resumes from ``OUT/<model>/checkpoints`` when a run was stopped; the detectron2 engine
resumes with detectron2's checkpointer from ``OUT/<model>/last_checkpoint``.

Modules, on the seams: ``schedule`` (detectron2's schedule; pure, no pycocotools, so the weight
export reads it), ``data`` (COCO-format instances, shared by both engines), ``model`` (the
detector and its optimiser), ``train`` (fine-tuning, precise BatchNorm), ``evaluate`` (COCO
evaluation, the torchvision engine's ``transfer``, the end-to-end ``run`` and its report, for both
engines), ``detectron2_engine``. This package's ``__init__`` imports none of them.
"""