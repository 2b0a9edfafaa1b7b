"""VOC average precision, the evaluation config section and the report writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation import report
from evaluation.metrics import area_ap, classification_metrics, voc07_ap
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import ORL_SVM_COSTS, Config


def test_voc07_ap_hand_computed():
    # Ranked: +, -, +, -, -  -> precision 1, 1/2, 2/3, 1/2, 2/5 at recall 1/2, 1/2, 1, 1, 1.
    # 11-point: t in {0, .1, ..., .5}: max precision 1; t in {.6, ..., 1}: 2/3.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, -1, 1, -1, -1])
    assert voc07_ap(scores, labels) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # Area: recall 0 -> 1/2 at precision 1, 1/2 -> 1 at the envelope 2/3.
    assert area_ap(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Order of the input does not matter, only the ranking.
    perm = np.array([3, 0, 4, 2, 1])
    assert voc07_ap(scores[perm], labels[perm]) == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc07_ap_perfect_and_worst_rankings():
    labels = np.array([1, 1, -1, -1, -1, -1])
    assert voc07_ap(np.array([6, 5, 4, 3, 2, 1.0]), labels) == pytest.approx(1.0)
    # Positives ranked last: precision 1/5 at recall 1/2, 2/6 at recall 1.
    assert voc07_ap(np.array([1, 2, 3, 4, 5, 6.0]), labels) == pytest.approx(2 / 6)
    assert np.isnan(voc07_ap(np.array([1.0, 2.0]), np.array([-1, -1])))


def test_voc07_ap_ignores_difficult_images():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([0, 1, -1, 1, -1, -1])  # the top-scored image is difficult
    expected = (6 * 1 + 5 * 2 / 3) / 11  # as if the difficult image were absent
    assert voc07_ap(scores, labels) == pytest.approx(expected)
    as_negative = np.where(labels == 0, -1, labels)
    assert voc07_ap(scores, as_negative) != pytest.approx(expected)
    # Difficult images neither help nor hurt wherever they are ranked.
    for value in (0.55, 0.75, 0.99):
        s = scores.copy()
        s[0] = value
        assert voc07_ap(s, labels) == pytest.approx(expected)


def test_voc07_ap_counts_a_recall_of_exactly_three_tenths():
    # 10 positives: 3 first (recall exactly 0.3 at precision 1), 7 negatives, 7 positives.
    labels = np.array([1] * 3 + [-1] * 7 + [1] * 7)
    scores = -np.arange(len(labels), dtype=float)
    # t = 0, .1, .2, .3 -> 1; t = .4 ... 1 -> 10/17 (np.arange(0, 1.1, .1) would miss t = .3).
    assert voc07_ap(scores, labels) == pytest.approx((4 + 7 * 10 / 17) / 11)


def test_area_ap_is_the_official_calculate_ap():
    """The official benchmark's AP (Jiahao000/ORL benchmarks/svm_tools/svm_helper.py:68-116,
    ``get_precision_recall`` + ``calculate_ap``): precision and recall down the ranking, recall
    framed by 0 and 1 and precision by 0 and 0, the precision made non-increasing from the right,
    then the sum over the recall steps of (step width x precision). Worked by hand here: ranking
    +, +, -, +, -, - with 3 positives -> recall 1/3, 2/3, 2/3, 1, 1, 1 at precision 1, 1, 2/3,
    3/4, 3/5, 1/2; envelope 1, 1, 3/4, 3/4, ...; AP = 1/3 + 1/3 + 1/3 x 3/4."""
    scores = np.array([6, 5, 4, 3, 2, 1.0])
    labels = np.array([1, 1, -1, 1, -1, -1])
    assert area_ap(scores, labels) == pytest.approx(1 / 3 + 1 / 3 + 0.25)
    # test_svm.py:114-117: difficult images (label -1 there, 0 here) are left out at test
    assert area_ap(np.append(scores, 9.0), np.append(labels, 0)) == pytest.approx(0.9166666)


def test_classification_metrics_mean_and_top1():
    """The headline mAP / AP is the area under the PR curve (the official scripts); the VOC07
    11-point AP is beside it as mAP_11point / AP_11point."""
    labels = np.array([[1, -1], [-1, 1], [1, -1], [-1, 1]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    m = classification_metrics(scores, labels, ("a", "b"))
    assert m["top1"] == pytest.approx(75.0)
    # Both classes rank +, -, +, -: area AP 1/2 + 1/2 x 2/3; 11-point AP (6 + 5 x 2/3) / 11.
    assert m["AP"]["a"] == m["AP"]["b"] == pytest.approx(100 * (0.5 + 1 / 3), abs=1e-4)
    assert m["mAP"] == pytest.approx(100 * (0.5 + 1 / 3))
    assert m["AP_11point"]["a"] == pytest.approx(100 * (6 + 10 / 3) / 11, abs=1e-4)
    assert m["mAP_11point"] == pytest.approx(100 * (6 + 10 / 3) / 11)
    # A class without a positive in the test set is left out of the mean and named.
    labels3 = np.concatenate([labels, -np.ones((4, 1), int)], axis=1)
    m3 = classification_metrics(np.concatenate([scores, scores[:, :1]], 1), labels3,
                                ("a", "b", "c"))
    assert m3["mAP"] == pytest.approx(m["mAP"]) and m3["classes_without_positives"] == ["c"]
    assert "top1" not in classification_metrics(scores, np.ones((4, 2), int), ("a", "b"))


def test_eval_config_defaults_are_the_papers_protocol():
    """The official values: the benchmark scripts shipped with the ORL code (github.com/Jiahao000/
    ORL: benchmarks/svm_tools/eval_svm_full.sh, svm_helper.py, eval_svm_lowshot.sh), detectron2's
    1x Mask R-CNN R50-FPN schedule (configs/Base-RCNN-FPN.yaml) as the paper's Table 4 uses, and
    the paper's supplementary for the linear probe."""
    ec = Config().eval
    # benchmarks/extract_info/voc07.py:16-17: Resize(256) then Resize((224, 224)), squashed;
    # tools/extract.py:23 pool_type='specified' and openselfsup/models/utils/multi_pooling.py:13
    # feat5 = AvgPool2d(kernel 6, stride 1) over res5 (8192-d); eval_svm_full.sh:6 feat5
    assert (ec.resize, ec.crop, ec.view, ec.layers, ec.pooling) == (
        256, 224, "resize", ("res5",), "goyal")
    # train_svm_kfold.py:87-91 (train_svm_kfold_parallel.py:53-54): labels 0 (absent) -> -1 on
    # targets where difficult is already -1 (tools/prepare_data/create_voc_data_files.py:93-98):
    # difficult images are negatives in training
    assert ec.svm.difficult == "negative"
    assert ec.svm.costs == ORL_SVM_COSTS and len(ec.svm.costs) == 19
    assert {1.0, 10.0, 100.0, 0.5 ** 4, 0.5 ** 19} <= set(ec.svm.costs)
    assert (ec.svm.folds, ec.svm.pos_weight) == (3, 2.0)
    assert ec.lowshot.shots == (1, 2, 4, 8, 16, 32, 64, 96) and ec.lowshot.samples == 5
    d = ec.detection
    assert (d.schedule, d.batch_size, d.base_lr, d.norm, d.masks) == (1.0, 16, 0.02, "sync", True)
    assert d.min_size_train == (640, 672, 704, 736, 768, 800) and d.min_size_test == 800
    lp = ec.linear
    assert (lp.batch_size, lp.lr, lp.momentum, lp.weight_decay) == (256, 0.01, 0.9, 1e-4)


@pytest.mark.parametrize("override, field", [
    ("eval.crop=300", "eval.crop"),
    ("eval.layers=[res3]", "eval.layers"),
    ("eval.layers=[res5,res5]", "eval.layers"),
    ("eval.holdout_frac=1.0", "eval.holdout_frac"),
    ("eval.svm.costs=[]", "eval.svm.costs"),
    ("eval.svm.folds=1", "eval.svm.folds"),
    ("eval.lowshot.shots=[0]", "eval.lowshot.shots"),
    ("eval.detection.norm=group", "eval.detection.norm"),
    ("eval.detection.warmup_factor=0", "eval.detection.warmup_factor"),
    ("eval.knn.temperature=0", "eval.knn.temperature"),
])
def test_eval_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("paper", [override])


def test_report_writes_json_without_nan_and_a_markdown_table(tmp_path):
    j, md = report.write(str(tmp_path), "x", {"a": float("nan"), "b": [1.5, float("inf")]},
                         report.table(["w", "mAP"], [["ckpt", report.fmt(12.345)],
                                                     ["random", report.fmt(float("nan"))]]))
    assert json.loads(Path(j).read_text()) == {"a": None, "b": [1.5, None]}
    assert Path(md).read_text().splitlines() == ["| w | mAP |", "|---|---|", "| ckpt | 12.35 |",
                                            "| random | n/a |"]
