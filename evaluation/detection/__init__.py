"""Mask R-CNN R50-FPN transfer (paper Table 4): torchvision Mask R-CNN with the heads of
``maskrcnn_resnet50_fpn_v2`` (FPN, 2-conv RPN head, 4conv1fc box head and 4-conv mask head, all
with BatchNorm), the ResNet backbone initialised from an orl-fast checkpoint, every layer trained.

Normalisation (``eval.detection.norm``): "sync" keeps BatchNorm everywhere, synchronised across
GPUs under DDP (torchrun), as the paper's detectron2 config (``NORM: SyncBN``); "frozen" freezes the
backbone's BatchNorm at the checkpoint's statistics. Schedule as detectron2 (see
:func:`schedule`): SGD momentum 0.9, weight decay 1e-4 (none on norm parameters), linear warm-up,
x0.1 steps; multi-scale training (shorter side from ``min_size_train``, longer side <= 1333,
horizontal flip), test at 800; precise BatchNorm statistics before evaluation. Evaluation:
pycocotools COCOeval, boxes (APbb) and masks (APmk), AP / AP50 / AP75 / APs / APm / APl.

Training runs on the one training loop (:func:`orl_fast.training.engine.fit`) and resumes from
``OUT/<model>/checkpoints`` when a run was stopped.

Modules, on the seams: ``schedule`` (detectron2's schedule; pure, no pycocotools, so the weight
export reads it), ``data`` (COCO-format instances), ``model`` (the detector and its optimiser),
``train`` (fine-tuning, precise BatchNorm), ``evaluate`` (COCO evaluation, the end-to-end
``run`` and its report). This package's ``__init__`` imports none of them.
"""