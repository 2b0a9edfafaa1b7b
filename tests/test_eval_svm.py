"""VOC07 SVM, low-shot sampling and the dataset layouts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support.evaluation import separable

from evaluation import datasets, lowshot, voc07
from loaders.synthetic import CATEGORIES
from orl_fast.core.config import load_config

GRID = (0.01, 0.1, 1.0, 10.0)


def small_eval_config(*overrides: str):
    return load_config("paper", [f"eval.svm.costs={list(GRID)}", "eval.jobs=2", *overrides]).eval


def test_svm_on_separable_features_gives_map_100_and_costs_from_the_grid():
    ec = small_eval_config()
    x, y = separable(160, 4, 32, seed=0)
    y[::11, 2] = 0  # some difficult labels: ignored in training and test
    classes = ("a", "b", "c", "d")
    out = voc07.evaluate_svm(x[:80], y[:80], x[80:], y[80:], classes, ec)
    assert out["mAP"] == pytest.approx(100.0)
    assert all(ap == pytest.approx(100.0) for ap in out["AP"].values())
    for c in classes:
        assert out["cost"][c] in GRID
        cv = out["cv_ap"][c]
        assert [float(k) for k in cv] == sorted(GRID)
        assert cv[str(out["cost"][c])] == max(cv.values())  # the best cross-validated cost
    assert out["feature_dim"] == 32


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_cost_selection_is_the_argmax_of_cross_validated_ap():
    cfg = small_eval_config().svm
    rng = np.random.default_rng(3)
    # Overlapping classes: the cross-validated AP differs across costs.
    x = rng.normal(size=(120, 20))
    labels = np.where(x[:, 0] + 0.8 * rng.normal(size=120) > 0.3, 1, -1).astype(np.int8)
    fit = voc07.train_class(x, labels, cfg)
    costs, aps = list(fit["cv_ap"]), list(fit["cv_ap"].values())
    assert costs == sorted(GRID)
    assert fit["cost"] == costs[int(np.argmax(aps))]  # first best: the smaller cost on ties
    assert len(set(np.round(aps, 9))) > 1
    assert fit["coef"].shape == (20,)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_difficult_images_are_negatives_in_training_and_ignored_at_test():
    """Official: train_svm_kfold.py:87-91 trains on every image, a label other than 1 (absent 0,
    difficult -1 in its target files, tools/prepare_data/create_voc_data_files.py:93-98) as -1;
    test_svm.py:114-117 scores only the images whose label is not difficult.
    ``eval.svm.difficult=ignore`` leaves them out of training."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 12))
    labels = np.where(x[:, 0] > 0.4, 1, -1).astype(np.int8)
    labels[::6] = 0  # difficult
    cfg = small_eval_config().svm
    fit = voc07.train_class(x, labels, cfg)
    as_negative = voc07.train_class(x, np.where(labels == 1, 1, -1).astype(np.int8), cfg)
    assert np.array_equal(fit["coef"], as_negative["coef"]) and fit["cost"] == as_negative["cost"]
    ignore = small_eval_config("eval.svm.difficult=ignore").svm
    left_out = voc07.train_class(x, labels, ignore)
    keep = labels != 0
    subset = voc07.train_class(x[keep], labels[keep], ignore)
    assert np.array_equal(left_out["coef"], subset["coef"])
    assert not np.array_equal(left_out["coef"], fit["coef"])
    # at test a difficult image does not count, whatever its score
    x4, y4 = separable(120, 4, 16, seed=5)
    ec = small_eval_config()
    base = voc07.evaluate_svm(x4[:60], y4[:60], x4[60:], y4[60:], tuple("abcd"), ec)
    y_test = y4[60:].copy()
    y_test[::5, 0] = 0
    masked = voc07.evaluate_svm(x4[:60], y4[:60], x4[60:], y_test, tuple("abcd"), ec)
    assert masked["AP"]["b"] == base["AP"]["b"] and masked["AP"]["a"] == pytest.approx(100.0)
    assert voc07.protocol(ec)["difficult"] == "negatives in training, ignored at test"


def test_svm_rejects_a_class_with_too_few_examples_for_cross_validation():
    x = np.random.default_rng(0).normal(size=(10, 4))
    labels = np.array([1, 1, -1, -1, -1, -1, -1, -1, -1, -1], np.int8)
    with pytest.raises(ValueError, match="3-fold"):
        voc07.train_class(x, labels, small_eval_config().svm)


def test_lowshot_samples_exactly_n_positives_and_19n_negatives_per_class_seeded():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([1, -1, 0], np.int8), size=(3000, 20), p=[0.1, 0.85, 0.05])
    for n in (1, 2, 8, 16):
        t, capped = lowshot.sample(labels, n, index=0, seed=5)
        assert capped == []
        assert ((t == 1).sum(0) == n).all()
        assert ((t == -1).sum(0) == 19 * n).all()
        assert (labels[t == 1] == 1).all() and (labels[t == -1] == -1).all()  # never difficult
        again, _ = lowshot.sample(labels, n, index=0, seed=5)
        assert np.array_equal(t, again)
        other, _ = lowshot.sample(labels, n, index=1, seed=5)
        assert not np.array_equal(t, other)
    # Fewer positives than n: all of them, and the class is reported as capped.
    labels[:, 3] = -1
    labels[:5, 3] = 1
    t, capped = lowshot.sample(labels, 8, index=0, seed=5)
    assert capped == [3] and (t[:, 3] == 1).sum() == 5


def test_lowshot_evaluation_reports_mean_std_and_cost_per_shot():
    ec = small_eval_config("eval.lowshot.shots=[1,4]", "eval.lowshot.samples=3")
    x, y = separable(300, 3, 24, seed=1, single_label=True)
    out = lowshot.evaluate_lowshot(x[:150], y[:150], x[150:], y[150:], ("a", "b", "c"),
                                   ec)["shots"]
    assert list(out) == ["1", "4"]
    for r in out.values():
        assert len(r["mAP_per_sample"]) == 3 and r["cost"] in GRID
        assert len(r["mAP_11point_per_sample"]) == 3
        for metric in ("mAP", "mAP_11point"):  # both APs, summarised over the samples
            assert r[f"{metric}_mean"] == pytest.approx(np.mean(r[f"{metric}_per_sample"]),
                                                        abs=1e-3)
            assert r[f"{metric}_std"] == pytest.approx(np.std(r[f"{metric}_per_sample"]),
                                                       abs=1e-3)
            assert r[f"{metric}_min"] - 1e-9 <= r[f"{metric}_mean"] <= r[f"{metric}_max"] + 1e-9
        # The reported cost is the one with the best mean (area) mAP over the samples
        # (aggregate_low_shot_svm_stats.py:83-89: argmax over costs of the mean over samples
        # of test_svm_low_shot.py's mean AP, svm_helper.calculate_ap).
        assert r["mAP_mean_per_cost"][str(r["cost"])] == max(r["mAP_mean_per_cost"].values())
        assert r["mAP_mean"] == pytest.approx(r["mAP_mean_per_cost"][str(r["cost"])], abs=1e-3)
    assert out["4"]["mAP_mean"] == pytest.approx(100.0)  # separable: 4 shots are enough
    assert out["4"]["mAP_11point_mean"] == pytest.approx(100.0)


def _write_voc_devkit(root: str) -> None:
    os.makedirs(os.path.join(root, "VOC2007", "ImageSets", "Main"))
    os.makedirs(os.path.join(root, "VOC2007", "JPEGImages"))
    for split, ids in (("trainval", ["000005", "000007", "000009"]), ("test", ["000001"])):
        for c, cls in enumerate(datasets.VOC_CLASSES):
            with open(os.path.join(root, "VOC2007", "ImageSets", "Main",
                                   f"{cls}_{split}.txt"), "w") as f:
                for i, img in enumerate(ids):
                    label = 1 if c == i else (0 if c == i + 1 else -1)
                    f.write(f"{img} {label:2d}\n")


def test_vocdevkit_layout(tmp_path):
    _write_voc_devkit(str(tmp_path))
    for root in (str(tmp_path), str(tmp_path / "VOC2007")):
        ds = datasets.load(root, "trainval")
        assert ds.ids == ("000005", "000007", "000009") and ds.classes == datasets.VOC_CLASSES
        assert ds.paths[1].endswith(os.path.join("VOC2007", "JPEGImages", "000007.jpg"))
        assert ds.labels[1, 1] == 1 and ds.labels[1, 2] == 0 and ds.labels[1, 0] == -1
    train, test, how = datasets.train_test(str(tmp_path), "trainval", "test", 0.5, 0)
    assert len(train) == 3 and test.ids == ("000001",) and "test" in how
    with pytest.raises(FileNotFoundError, match="val"):
        datasets.load(str(tmp_path), "val")


def test_labels_csv_layout_and_seeded_holdout(shared_data):
    root = str(shared_data / "voc07")
    full = datasets.load(root, "train")
    assert len(full) == 1500 and full.classes == datasets.VOC_CLASSES
    assert full.summary()["positives"]["sheep"] == 31  # as the data README says
    assert os.path.exists(full.paths[0])
    train, test, how = datasets.train_test(root, "train", None, 0.5, seed=0)
    assert len(train) == len(test) == 750 and "held-out" in how and "seed 0" in how
    assert not set(train.ids) & set(test.ids) and set(train.ids) | set(test.ids) == set(full.ids)
    again = datasets.train_test(root, "train", None, 0.5, seed=0)[1]
    assert again.ids == test.ids
    assert datasets.train_test(root, "train", None, 0.5, seed=1)[1].ids != test.ids


def test_labels_csv_with_a_split_column(tmp_path):
    (tmp_path / "labels.csv").write_text("id,split,cat,dog\na,train,1,-1\nb,test,-1,1\n"
                                         "c,train,0,1\n")
    train = datasets.load(str(tmp_path), "train")
    assert train.ids == ("a", "c") and train.classes == ("cat", "dog")
    assert train.labels.tolist() == [[1, -1], [0, 1]]
    assert datasets.load(str(tmp_path), "test").paths == (str(tmp_path / "images" / "b.jpg"),)
    with pytest.raises(ValueError, match="val"):
        datasets.load(str(tmp_path), "val")


def test_coco_image_labels(scene_shards):
    _, instances = scene_shards
    ds = datasets.load("", instances)
    assert len(ds) == 48 and ds.classes == CATEGORIES
    assert ((ds.labels == 1).sum(1) >= 1).all() and set(np.unique(ds.labels)) <= {-1, 1}
    assert all(os.path.exists(p) for p in ds.paths)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_svm_and_probes_repeat_themselves_bit_for_bit():
    """Same features and seed: identical reports, whatever the number of SVM threads (the dual
    solver's sample order is seeded; the torch probes run on one thread)."""
    import torch

    from evaluation import probes

    rng = np.random.default_rng(5)
    x, y = separable(120, 3, 24, seed=1, noise=0.8)  # noisy: the solver's order matters
    x += rng.normal(0, 0.5, x.shape).astype(np.float32)
    classes = ("a", "b", "c")
    # A few solver passes: the solution still depends on the order the samples are visited in.
    runs = [voc07.evaluate_svm(x[:60], y[:60], x[60:], y[60:], classes,
                               small_eval_config(f"eval.jobs={jobs}", "eval.svm.max_iter=2"))
            for jobs in (1, 2, 1)]
    assert runs[0] == runs[1] == runs[2]
    ec = small_eval_config("eval.linear.epochs=5")
    threads = torch.get_num_threads()
    linear = [probes.linear_probe_scores(x[:60], y[:60], x[60:], ec) for _ in range(2)]
    assert np.array_equal(linear[0], linear[1])
    assert torch.get_num_threads() == threads  # restored after the single-thread block


def test_image_folder_layout(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(tmp_path / split / cls / f"{i}.jpg")
    train, test, _ = datasets.train_test(str(tmp_path), "train", "val", 0.5, 0)
    assert train.classes == ("cat", "dog") and len(train) == 6 and len(test) == 4
    assert train.single_label and train.labels[:3, 0].tolist() == [1, 1, 1]
    assert train.paths[0].endswith("train/cat/0.jpg") and "ImageFolder" in train.source
    # A folder per class without split folders: one split.
    one = datasets.load(str(tmp_path / "val"), "all")
    assert len(one) == 4 and one.labels.tolist() == [[1, -1], [1, -1], [-1, 1], [-1, 1]]


def test_parallel_map_keeps_the_order_and_shows_a_bar(capsys):
    assert voc07.parallel_map(_square, range(5), jobs=1, shared=2, desc="SVMs res5") == [
        0, 2, 8, 18, 32]
    err = capsys.readouterr().err
    assert "SVMs res5" in err and "5/5" in err
    assert voc07.parallel_map(_square, range(3), jobs=1, shared=1) == [0, 1, 4]
    assert capsys.readouterr().err == ""  # no desc: no bar


def _square(shared: int, x: int) -> int:
    return shared * x * x
