"""Attention maps (paper Fig. 4): maps, PNG rows and grid, HTML page, the viz CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.common import orl_fast_cmd, subprocess_env
from support.evaluation import make_checkpoint

from evaluation import attention, backbones


@pytest.fixture(scope="module")
def two_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return (make_checkpoint(str(root / "byol"), seed=1)[0],
            make_checkpoint(str(root / "orl"), seed=2)[0])


def test_attention_map_is_the_upsampled_channel_mean_of_res5():
    w = backbones.random_init("resnet18", 0)
    net = w.build()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), np.uint8))
    a = attention.attention_map(net, image, torch.device("cpu"))
    assert a.shape == (70, 90) and a.min() == pytest.approx(0) and a.max() == pytest.approx(1)
    # Recompute: res5 mean over channels, bilinear upsampling, min-max scaling.
    from evaluation.features import stages
    from loaders.augment import normalize
    from orl_fast.core.defaults import IMAGENET_MEAN, IMAGENET_STD
    x = normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None], IMAGENET_MEAN,
                  IMAGENET_STD)
    with torch.no_grad():
        res5 = stages(net, x)[-1].mean(1, keepdim=True)
    up = torch.nn.functional.interpolate(res5, size=(70, 90), mode="bilinear")[0, 0].numpy()
    np.testing.assert_allclose(a, (up - up.min()) / (up.max() - up.min()), atol=1e-5)


def test_jet_colour_map_ends():
    rgb = attention.jet(np.array([0.0, 0.5, 1.0]))
    assert rgb[0].tolist() == [0, 0, 127] and rgb[2].tolist() == [127, 0, 0]
    assert rgb[1, 1] == 255  # green at the middle


def test_write_side_by_side_rows_grid_and_html(shared_data, two_ckpts, tmp_path):
    images = attention.list_images(str(shared_data / "voc07" / "images"), limit=3)
    models = [("BYOL", backbones.load(two_ckpts[0])), ("ORL", backbones.load(two_ckpts[1])),
              ("random init", backbones.random_init("resnet18", 0))]
    out = attention.write(models, images, str(tmp_path), size=64, device="cpu")
    assert len(out["rows"]) == 3
    sizes = [attention.load_image(p, 64).size for p in images]
    assert len(set(sizes)) > 1  # mixed aspect ratios
    column = max(w for w, _ in sizes)
    assert out["cell"][0] == column
    gap = attention.GAP
    for row_path in out["rows"]:
        # image + 3 overlays in columns as wide as the widest image: every row the same width
        assert Image.open(row_path).width == 4 * column + 5 * gap
    grid = Image.open(out["grid"])
    assert grid.width == 4 * column + 5 * gap
    # the column names once above, the colour bar once below: taller than the rows stacked
    bar = attention.colour_bar(grid.width - 2 * gap)
    assert grid.height > sum(h for _, h in sizes) + bar.height
    page = Path(out["html"]).read_text()
    assert all(f'src="{i:04d}.png"' in page for i in range(3))
    assert "BYOL, ORL, random init" in page and two_ckpts[1] in page


def test_cli_viz_attention(shared_data, two_ckpts, tmp_path):
    proc = subprocess.run(orl_fast_cmd(
        "viz", "attention", "--ckpt", two_ckpts[0], "--ckpt", two_ckpts[1],
        "--images", str(shared_data / "voc07" / "images"), "--limit", "2",
        "--out", str(tmp_path), "eval.viz_size=48", "eval.device=cpu"),
        env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "attention" / "grid.png").exists()
    assert (tmp_path / "attention" / "index.html").exists()
    labels = [m["label"] for m in json.loads(proc.stdout)["models"]]
    assert labels == ["BYOL, step 7 (byol)", "BYOL, step 7 (orl)", "random init"]


def test_colour_bar_runs_from_low_to_high():
    bar = np.asarray(attention.colour_bar())
    low, high = (np.argwhere((bar == attention.jet(np.array([v]))[0]).all(-1)) for v in (0, 1))
    assert len(low) and len(high) and low[:, 1].max() < high[:, 1].min()  # blue left, red right
