"""Evaluation suite (paper Section 4): VOC07 SVM and low-shot, kNN / linear probes, Mask R-CNN
transfer, weight exports and attention maps; every number beside a random-init baseline.

Modules: ``backbones`` (weights: checkpoint / state dict / random init), ``datasets`` (VOCdevkit,
labels.csv, COCO image labels), ``features`` (cached frozen features), ``metrics`` (VOC AP),
``voc07``, ``lowshot``, ``probes`` (kNN, linear), ``classification`` (those end to end),
``detection`` (Mask R-CNN: a package, its ``schedule`` free of pycocotools), ``export``,
``attention``, ``report``, ``cli``.
"""

