"""The generated world (category = shape + texture, never colour), the object-level probe, the
collapse monitors, the small-input stem and the blur that scales with the crop size."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evaluation import backbones, objects
from loaders.augment import blur_kernel
from loaders.orl_samples import draw_photometric
from loaders.synthetic import CATEGORIES, KINDS, World, make_scene, write_scenes
from orl_fast.core.config import ConfigError, load_config
from orl_fast.core.defaults import AugmentConfig
from orl_fast.core.models import (
    BYOL,
    build_backbone,
    effective_rank,
    monitors,
    online_target_distance,
)


def test_scenes_are_pure_functions_of_the_seed_and_several_objects_each():
    a, objs_a = make_scene(7)
    b, objs_b = make_scene(7)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and objs_a == objs_b
    counts = [len(make_scene(i)[1]) for i in range(60)]
    assert min(counts) >= 1 and np.mean(counts) > 2.5
    assert len({k[0] for k in KINDS.values()}) == len({k[1] for k in KINDS.values()}) == 8


def test_world_sets_size_object_count_and_object_size():
    world = World(200, 100, min_objects=1, max_objects=2, object_size=(0.6, 0.8))
    for i in range(20):
        scene, objs = make_scene(i, world)
        assert scene.size == (200, 100) and 1 <= len(objs) <= 2
        # the box is tight around the mask, which fills at least half of the placed side
        assert all(30 <= max(o.box[2:]) <= 100 for o in objs)
    big_sides = [max(o.box[2:]) for i in range(20) for o in make_scene(i, world)[1]]
    default_sides = [max(o.box[2:]) for i in range(20) for o in make_scene(i)[1]]
    assert max(default_sides) <= 74  # 0.5 x 120 x exp(0.2), the largest aspect jitter
    assert np.mean(big_sides) > 1.5 * np.mean(default_sides)
    assert make_scene(3, World())[1] == make_scene(3)[1]


def _object_hues(scene, objs) -> list[float]:
    """The median hue of each object's saturated pixels (its ink and paper)."""
    import colorsys

    rgb = np.asarray(scene, np.float32) / 255
    hues = []
    for o in objs:
        x, y, w, h = o.box
        px = rgb[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].reshape(-1, 3)
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in px])
        hues.append(float(np.median(hsv[hsv[:, 1] > 0.3, 0])) if (hsv[:, 1] > 0.3).sum() > 5
                    else float("nan"))
    return hues


def _hue_spread(hues: list[float]) -> float:
    """Largest circular distance between two hues (0..0.5)."""
    h = [v for v in hues if not math.isnan(v)]
    return max((min(abs(a - b), 1 - abs(a - b)) for a in h for b in h), default=0.0)


def test_colour_models_of_the_world():
    """"scene": all objects of a scene in shades of one hue; "object": one hue per object
    (hues differ across a scene's objects); ink and paper a dark and a light shade."""
    import colorsys

    from loaders.synthetic import _ink_and_paper

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = _ink_and_paper(rng, 0.3)
        ha, hb = (colorsys.rgb_to_hsv(*(c / 255))[0] for c in (a, b))
        assert ha == pytest.approx(0.3, abs=0.01) and hb == pytest.approx(0.3, abs=0.01)
        assert abs(colorsys.rgb_to_hsv(*(a / 255))[2] - colorsys.rgb_to_hsv(*(b / 255))[2]) > 0.2
    spread = {c: [_hue_spread(_object_hues(*make_scene(i, World(colours=c))))
                  for i in range(30)] for c in ("scene", "object")}
    assert max(spread["scene"]) < 0.06
    assert np.mean(spread["object"]) > 0.2


def test_plain_background_is_the_same_grey_in_every_scene_with_the_same_objects_drawn():
    """"plain": mid-grey with pixel noise (no clutter, no colour); the objects are drawn as on
    the cluttered background."""
    for i in range(5):
        plain, objs = make_scene(i, World(background="plain"))
        img = np.asarray(plain, np.float32)
        mask = np.ones(img.shape[:2], bool)
        for o in objs:
            x, y, w, h = o.box
            mask[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = False
        assert mask.mean() > 0.2 and len(objs) >= 2
        assert abs(img[mask].mean() - 128) < 3 and img[mask].std() < 10
        assert np.abs(img[mask].mean((0,)) - 128).max() < 3  # no tint
        assert [o.category for o in objs] == [o.category for o in make_scene(
            i, World(background="plain"))[1]]


def test_categories_per_scene_draws_each_scene_s_objects_from_that_many_categories():
    """k > 0: a scene's objects share at most k categories, and over many scenes every category
    appears; 0 (the default) leaves the scenes as they always were."""
    seen = set()
    for i in range(60):
        objs = make_scene(i, World(categories_per_scene=2))[1]
        assert 1 <= len({o.category for o in objs}) <= 2
        seen |= {o.category for o in objs}
        assert len({o.category for o in make_scene(i, World(categories_per_scene=1))[1]}) == 1
    assert seen == set(CATEGORIES)
    mixed = [len({o.category for o in make_scene(i)[1]}) for i in range(60)]
    assert max(mixed) >= 3
    assert make_scene(7, World(categories_per_scene=0))[1] == make_scene(7)[1]
    assert np.array_equal(np.asarray(make_scene(7, World(categories_per_scene=0))[0]),
                          np.asarray(make_scene(7)[0]))


@pytest.mark.parametrize("kwargs, field", [({"width": 16}, "width"),
                                           ({"min_objects": 3, "max_objects": 2}, "min_objects"),
                                           ({"min_objects": 0}, "min_objects"),
                                           ({"object_size": (0.5, 0.2)}, "object_size"),
                                           ({"object_size": (0.2, 1.5)}, "object_size"),
                                           ({"colours": "rainbow"}, "colours"),
                                           ({"background": "wallpaper"}, "background"),
                                           ({"categories_per_scene": 9}, "categories_per_scene"),
                                           ({"categories_per_scene": -1},
                                            "categories_per_scene")])
def test_world_rejects_bad_parameters_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        World(**kwargs)


def test_write_scenes_coco_ground_truth(tmp_path):
    images = write_scenes(str(tmp_path / "w"), 6, seed=3)
    coco = json.loads((tmp_path / "w" / "instances.json").read_text())
    assert len(coco["images"]) == 6 and [c["name"] for c in coco["categories"]] == list(CATEGORIES)
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 120 and min(w, h) >= 8
    assert len(list((tmp_path / "w" / "images").iterdir())) == 6 and images.endswith("images")


def test_colour_does_not_give_the_category_away():
    """Nearest class mean of an object's mean colour is near chance (1/8); of its grey-level
    texture (the log power spectrum of the grey crop: colour and texture phase removed) it is
    far above chance."""
    objs = objects.from_scenes(11, 240, 32)
    train, test = objects.split(objs, per_class=60, seed=0)

    def nearest_mean(f_train, f_test) -> float:
        means = np.stack([f_train[train.labels == c].mean(0) for c in range(len(train.classes))])
        pred = ((f_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        return float((pred == test.labels).mean())

    def colour(o):
        return o.crops.float().mean((2, 3)).numpy()

    def grey_texture(o):
        g = o.crops.float().mean(1)
        g = (g - g.mean((1, 2), keepdim=True)) / (g.std((1, 2), keepdim=True) + 1e-6)
        return torch.log1p(torch.fft.fft2(g).abs()).flatten(1).numpy()

    assert nearest_mean(colour(train), colour(test)) < 0.2
    assert nearest_mean(grey_texture(train), grey_texture(test)) > 0.6


def test_object_split_is_by_image_and_per_class_balanced():
    objs = objects.from_scenes(12, 200, 24)
    train, test = objects.split(objs, per_class=20, seed=0)
    assert not set(train.images) & set(test.images)
    assert set(train.counts().values()) == set(test.counts().values()) == {20}
    assert train.crops.shape[1:] == (3, 24, 24) and train.crops.dtype == torch.uint8
    a, b = objects.split(objs, per_class=20, seed=0)
    assert torch.equal(a.crops, train.crops) and np.array_equal(b.labels, test.labels)
    # fixed test images (the real-data protocol leaves them out of pre-training)
    _, test_ids = objects.split_images(objs.images, 0.5, seed=4)
    _, fixed = objects.split(objs, per_class=20, seed=0, test_images=test_ids)
    assert set(fixed.images) <= set(test_ids.tolist())


def test_object_crops_from_coco_file(tmp_path):
    write_scenes(str(tmp_path / "w"), 4, seed=5)
    objs = objects.from_coco(str(tmp_path / "w" / "instances.json"), 32, min_side=10)
    coco = json.loads((tmp_path / "w" / "instances.json").read_text())
    big = [a for a in coco["annotations"] if min(a["bbox"][2:]) >= 10]
    assert len(objs) == len(big) and objs.crops.shape[1:] == (3, 32, 32)
    assert objs.classes == CATEGORIES


def test_balanced_accuracy_and_effective_rank_hand_computed():
    scores = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])
    labels = np.array([0, 0, 1, 1])  # class 0: 1 of 2 right, class 1: 0 of 2
    assert objects.balanced_accuracy(scores, labels, 2) == pytest.approx(25.0)
    line = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert effective_rank(line).item() == pytest.approx(1.0, abs=1e-6)
    square = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # two equal singular values
    assert effective_rank(square).item() == pytest.approx(2.0, abs=1e-6)


def test_object_probe_is_deterministic_and_reports_both_probes():
    objs = objects.from_scenes(13, 60, 32)
    train, test = objects.split(objs, per_class=8, min_per_class=3, seed=0)
    ec = load_config("paper", ["eval.device=cpu", "eval.knn.k=5", "eval.linear.epochs=3"]).eval
    w = backbones.random_init("resnet18", 0)
    a, b = objects.evaluate(w, train, test, ec), objects.evaluate(w, train, test, ec)
    assert a == b
    assert 0 <= a["knn"] <= 100 and 0 <= a["linear"] <= 100 and a["feature_dim"] == 512
    assert 1 <= a["effective_rank"] <= len(test)


def test_object_probe_scores_relabellings_of_the_same_crops_on_the_same_features():
    objs = objects.from_scenes(13, 60, 32)
    train, test = objects.split(objs, per_class=8, min_per_class=3, seed=0)
    ec = load_config("paper", ["eval.device=cpu", "eval.knn.k=5", "eval.linear.epochs=3"]).eval
    w = backbones.random_init("resnet18", 0)

    def parity(o: objects.Objects) -> objects.Objects:
        return objects.Objects(o.crops, o.labels % 2, o.images, ("even", "odd"))

    r = objects.evaluate(w, train, test, ec, {"again": (train, test),
                                              "parity": (parity(train), parity(test))})
    assert r["again"] == {"knn": r["knn"], "linear": r["linear"]}
    alone = objects.evaluate(w, parity(train), parity(test), ec)
    assert r["parity"] == {"knn": alone["knn"], "linear": alone["linear"]}
    with pytest.raises(ValueError, match="parity"):
        objects.evaluate(w, train, test, ec, {"parity": (parity(test), parity(train))})


def test_monitors_collapse_and_drift():
    f = torch.randn(32, 16)
    healthy = monitors(f, torch.randn(32, 8))
    collapsed = monitors(f[:1].expand(32, 16) + 0, torch.ones(32, 8))
    assert healthy["proj_std"].item() == pytest.approx(1 / 8 ** 0.5, rel=0.25)
    assert collapsed["proj_std"].item() == pytest.approx(0.0, abs=1e-6)
    model = BYOL(load_config("small", ["model.proj_hidden_dim=16", "model.proj_dim=8",
                                       "model.pred_hidden_dim=16"]).model)
    assert online_target_distance(model) == 0.0
    with torch.no_grad():
        next(model.online.parameters()).add_(1.0)
    assert online_target_distance(model) > 0
    _, metrics = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), diagnostics=True)
    assert {"loss_image", "proj_std", "feature_rank"} <= set(metrics)
    assert set(model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))[1]) == {"loss_image"}


def test_small_input_stem(tmp_path):
    net, dim = build_backbone("resnet18", "small")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity) and dim == 512
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    cfg = load_config("small", ["model.stem=small"])
    model = BYOL(cfg.model)
    from orl_fast.core import checkpoint

    checkpoint.save(str(tmp_path), 1, {"stage": "stage1", "config": cfg.to_dict(),
                                       "model": model.state_dict()}, keep_last=1)
    w = backbones.load(str(tmp_path))
    assert w.stem == "small" and w.build().conv1.kernel_size == (3, 3)
    assert w.digest != backbones.random_init("resnet18", 0).digest
    with pytest.raises(ValueError, match="stem"):
        from evaluation import export

        export.export(w, "detectron2", str(tmp_path / "x.pkl"))


def test_blur_scales_with_the_crop_size():
    paper = AugmentConfig()
    assert paper.blur_sigma_px == (0.1, 2.0) and blur_kernel(paper) == 13
    small = AugmentConfig(crop_size=64)
    assert small.blur_sigma_px == pytest.approx((0.1 * 64 / 224, 2.0 * 64 / 224))
    assert blur_kernel(small) == 5  # +-3 sigma of 0.571 px
    fixed = AugmentConfig(crop_size=64, blur_reference_size=0)
    assert fixed.blur_sigma_px == (0.1, 2.0) and blur_kernel(fixed) == 13
    sigma = draw_photometric(np.random.default_rng(0), small, np.zeros(500, np.int64)).sigma
    assert sigma.max() <= 2.0 * 64 / 224 + 1e-6 and sigma.min() >= 0.1 * 64 / 224 - 1e-6


def test_recalibrated_batchnorm_statistics():
    w = backbones.random_init("resnet18", 0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    r = backbones.recalibrate_bn(w, images, batch_size=20)  # equal batches: exact mean
    assert torch.equal(r.state_dict["conv1.weight"], w.state_dict["conv1.weight"])
    assert float(w.state_dict["bn1.running_var"].sum()) == 64.0  # as initialised: the identity
    assert not torch.equal(r.state_dict["bn1.running_var"], w.state_dict["bn1.running_var"])
    assert r.digest != w.digest and "BN re-estimated" in r.name
    # bn1's running mean is the mean of its input over the images (equal batches)
    net = w.build()
    from loaders.augment import normalize
    from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD

    x = net.conv1(normalize(images, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(r.state_dict["bn1.running_mean"], x.mean((0, 2, 3)), atol=1e-4)
