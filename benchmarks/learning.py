"""Does training learn? Random initialisation vs BYOL vs ORL, same seed, equal compute.

Per seed (the seed sets the initialisation, the data order and every augmentation):

    Stage 1   BYOL for E1 epochs                                       stage1/
    Stage 2   mining with the Stage 1 model, purity vs ground truth    mined/
              the same with a random-init Stage 1 (the purity floor)   mined-random-init/
    BYOL arm  Stage 3 with loss weights (1, 0, 0) for E3 epochs from Stage 1, i.e. BYOL for
              E1 + E3 epochs in two schedule segments                  byol/
    ORL arm   Stage 3 with loss weights (1, 1, 1) for E3 epochs from Stage 1 (image + intra-RoI +
              inter-RoI), the same images and optimiser steps          orl/

Both arms see the same images in the same order and take the same number of optimiser steps
(ORL's four patches per image cost it ~50% more compute per step). Every kept checkpoint and a
random initialisation of the same seed are probed:

- the object-level probe (``evaluation.objects``): ground-truth object crops at the training
  resolution, kNN and linear balanced accuracy, split by image, per-class balanced;
- ``real`` only: the VOC07 SVM at the training resolution on the held-out part of voc07, for
  the final checkpoints.

Pre-training never sees a probe's test images: ``world`` probes objects of scenes generated
with other seeds, ``real`` pre-trains on coco-mini without its probe-test images plus the
training half of voc07 (the SVM's test half is left out).

    python benchmarks/learning.py world --out benchmarks/out/learning-world          # CPU
    python benchmarks/learning.py real --out benchmarks/out/learning-real
    python benchmarks/learning.py world --device cuda --images 20000 --e1 100 --e3 100 \\
        --batch 256 --workers 8                                                     # one GPU
    python benchmarks/learning.py select --out benchmarks/out/learning-select      # the recipe
    python benchmarks/learning.py objects --out benchmarks/out/learning-objects    # a study

``select`` trains the first of ``--seeds`` (0 by default) of each candidate recipe for Stage 1
only and scores it on a validation probe (scenes of yet another seed, never the test probe):
the defaults of ``world`` are its winner. ``objects`` is a study of what the world teaches:
BYOL (Stage 1 only) on the ground-truth object crops of the training scenes, one crop per
image, no scene around it. In the generated world every run also probes the hue of the crops
(``by_hue``), which never tells the category: what colour the features keep. ``spread`` gathers
``select`` runs of one recipe, one seed each, into the mean and std over seeds at every probed
step (``spread.md``, ``spread.png``):

    python benchmarks/learning.py spread --out benchmarks/out/spread \\
        --runs benchmarks/out/learning-select benchmarks/out/learning-select-seed1 ...

``arms`` starts where such runs ended: per seed, it mines ``--images`` scenes with the last
Stage 1 checkpoint of its ``select`` run and trains the BYOL and ORL arms from it for E3 epochs
(the runs' recipe; ``--e3``, ``--probes``, ``--ckpt-every``, ``--workers``, ``--device`` and the
overrides from the command line), probing that checkpoint, the random init and the arms on the
test probe (the mining floor of a random-init Stage 1 is ``world``'s):

    python benchmarks/learning.py arms --out benchmarks/out/arms --e3 8 \\
        --runs benchmarks/out/learning-select benchmarks/out/learning-select-seed1 ...

The other modes write ``results.json``, ``learning.png`` (probe vs steps, mean and the spread
over seeds) and ``results.md`` (the table for benchmarks/RESULTS.md) in OUT, ``select`` its
``select.*``; finished stages are skipped on a rerun (every stage resumes).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from bench_common import COCO_MINI, SHARED_DATA, machine
from PIL import Image

from evaluation import backbones, classification, datasets, objects
from loaders.ingest import ingest
from loaders.synthetic import BACKGROUNDS, COLOURS, World, write_scenes
from mining import pipeline
from mining.manifest import make_plan
from mining.purity import pair_purity
from orl_fast.core import checkpoint
from orl_fast.core.config import load_config
from orl_fast.core.defaults import MineConfig
from orl_fast.core.models import IMAGE_ONLY, ORL
from orl_fast.training import stage1, stage3

VOC07 = SHARED_DATA / "voc07"
DATA_SEED, TEST_SEED, VALIDATION_SEED = 0, 1, 2


@dataclass
class Recipe:
    """What a protocol run trains with (the CLI flags of this script)."""

    backbone: str = "resnet18"
    stem: str = "imagenet"
    init: str = "official"
    crop: int = 64
    patch: int = 32
    # crops of at least a quarter of the scene and strong colour jitter: two views share
    # objects, not only the scene's colours (the paper's [0.08, 1] and [0.4, 0.4, 0.2, 0.1]
    # below ~250 steps left the features below those of the smaller range)
    crop_scale: str = "[0.25,1.0]"
    jitter: str = "[0.8,0.8,0.8,0.2]"
    batch: int = 64
    base_lr: float = 0.2
    weight_decay: float = 1e-4
    tau: float = 0.99
    precision: str = "bf16"
    e1: int = 8
    e3: int = 4
    workers: int = 2
    device: str = "cpu"
    probes: int = 4  # probed checkpoints per stage at least (the trainer also saves, and this
    # protocol probes, one at the end of every epoch)
    ckpt_every: int = 0  # optimiser steps between probed checkpoints (0: from probes)
    extra: list[str] = field(default_factory=list)  # further dotted overrides

    def overrides(self) -> list[str]:
        return [f"model.backbone={self.backbone}", f"model.stem={self.stem}",
                f"model.init={self.init}", f"aug.crop_size={self.crop}",
                f"orl.patch_size={self.patch}", f"aug.crop_scale={self.crop_scale}",
                f"aug.color_jitter={self.jitter}", f"train.batch_size={self.batch}",
                f"optim.base_lr={self.base_lr}", f"optim.weight_decay={self.weight_decay}",
                f"train.tau_base={self.tau}", f"train.precision={self.precision}",
                f"train.num_workers={self.workers}", f"train.device={self.device}",
                "train.keep_last=1000", "train.log_every_steps=10", *self.extra]

    def mine_overrides(self) -> list[str]:
        return [f"mine.embed_size={self.crop}", f"mine.roi_size={self.crop}",
                f"mine.device={self.device}", "mine.batch_size=256"]


# ----------------------------------------------------------------------------- data


def world_data(out: Path, images: int, world: World) -> tuple[str, str]:
    """Generated training scenes in shards; returns (shards, instances.json)."""
    scenes = out / "data" / "scenes"
    shards = out / "data" / "shards"
    if not (shards / "index.json").exists():
        src = write_scenes(str(scenes), images, seed=DATA_SEED, world=world)
        ingest(src, str(shards), load_config("small", [
            f"ingest.shard_size={max(64, images // 8)}"]).ingest, progress=False)
    return str(shards), str(scenes / "instances.json")


def object_crops_data(out: Path, images: int, world: World, size: int = 96) -> str:
    """The ground-truth object crops of the training scenes (``size`` px squares) in shards: what
    the ``objects`` mode trains on."""
    shards = out / "data" / "object-shards"
    if not (shards / "index.json").exists():
        crops = out / "data" / "object-crops"
        crops.mkdir(parents=True, exist_ok=True)
        objs = objects.from_scenes(DATA_SEED, images, size, world)
        for i, crop in enumerate(objs.crops):
            path = crops / f"object_{i:06d}.jpg"
            if not path.exists():
                Image.fromarray(crop.permute(1, 2, 0).numpy()).save(path, quality=90)
        ingest(str(crops), str(shards), load_config("small", [
            f"ingest.shard_size={max(64, len(objs) // 8)}"]).ingest, progress=False)
    return str(shards)


def world_probe(seed: int, scenes: int, size: int, world: World
                ) -> tuple[objects.Objects, objects.Objects]:
    """Objects of ``scenes`` generated scenes of ``seed`` (disjoint from the training scenes),
    half the scenes for the probe's training part, half for its test part."""
    return objects.split(objects.from_scenes(seed, scenes, size, world), per_class=100, seed=0)


def real_data(out: Path, size: int) -> dict:
    """coco-mini + voc07 without the probes' test images, in shards; the probes."""
    instances = str(COCO_MINI / "instances.json")
    coco = json.loads(Path(instances).read_text())
    ids = sorted(im["id"] for im in coco["images"])
    _, probe_test_ids = objects.split_images(np.array(ids), test_frac=0.5, seed=0)
    probe_test = {im["file_name"].split("/")[-1] for im in coco["images"]
                  if im["id"] in set(probe_test_ids.tolist())}
    voc_train, voc_test, _ = datasets.train_test(str(VOC07), "train", None, 0.5, 0)
    names = sorted(os.listdir(COCO_MINI / "images"))
    sources = [str(COCO_MINI / "images" / n) for n in names if n not in probe_test]
    sources += list(voc_train.paths)
    shards = out / "data" / "shards"
    if not (shards / "index.json").exists():
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / "list.txt").write_text("".join(p + "\n" for p in sources))
        ingest(str(out / "data" / "list.txt"), str(shards),
               load_config("small", ["ingest.shard_size=192"]).ingest, progress=False)
    objs = objects.from_coco(instances, size, min_side=24)
    train, test = objects.split(objs, per_class=40, min_per_class=8, seed=0,
                                test_images=probe_test_ids)
    # proposals as the official code filters them on full-size images (96 px a side)
    return {"shards": str(shards), "instances": instances, "objects": (train, test),
            "min_box_size": MineConfig().min_box_size,
            "pretrain_images": len(sources), "voc_test": len(voc_test)}


# ----------------------------------------------------------------------------- training


def steps_per_epoch(shards: str, batch: int) -> int:
    return json.loads(Path(shards, "index.json").read_text())["num_images"] // batch


def probe_every(recipe: Recipe, shards: str, epochs: int) -> int:
    """Optimiser steps between the checkpoints of a stage of ``epochs`` epochs (beside those at
    the end of every epoch)."""
    return recipe.ckpt_every or max(1, epochs * steps_per_epoch(shards, recipe.batch)
                                    // recipe.probes)


def train_stage1(recipe: Recipe, shards: str, out: Path, seed: int) -> str:
    every = probe_every(recipe, shards, recipe.e1)
    cfg = load_config("small", [*recipe.overrides(), f"data={shards}", f"out={out}",
                                f"train.epochs={recipe.e1}", f"train.seed={seed}",
                                f"train.ckpt_every_steps={every}"])
    return stage1.run(cfg)


def train_stage3(recipe: Recipe, shards: str, mined: str, stage1_run: Path, out: Path,
                 seed: int, weights: str) -> str:
    every = probe_every(recipe, shards, recipe.e3)
    cfg = load_config("small", [*recipe.overrides(), f"data={shards}", f"pairs={mined}",
                                f"out={out}", f"train.epochs={recipe.e3}", f"train.seed={seed}",
                                f"train.ckpt_every_steps={every}", f"orl.loss_weights={weights}",
                                "orl.init=stage1", f"ckpt={stage1_run}"])
    return stage3.run(cfg)


def training_views(shards: str, n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random resized crops (BYOL's scale range, no photometric change) of random
    training images: what re-estimates a random network's BatchNorm statistics."""
    from loaders.images import decode_rgb
    from loaders.orl_torch import cut
    from loaders.shards import ShardIndex
    from orl_fast.core.boxes import random_resized_crop

    index = ShardIndex(shards)
    rng = np.random.default_rng(seed)
    crops = []
    for pos in rng.integers(0, len(index), n):
        image = decode_rgb(index.data_at(int(pos))[1])
        box = random_resized_crop(rng, image.shape[2], image.shape[1], (0.08, 1.0), (3 / 4, 4 / 3))
        crops.append(cut(image, box, size, "bilinear"))
    return torch.stack(crops)


def random_stage1(recipe: Recipe, out: Path, seed: int) -> str:
    """A Stage 1 checkpoint with the random initialisation of ``seed`` (mining's floor)."""
    if checkpoint.resolve(str(out)) is None:
        cfg = load_config("small", recipe.overrides())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ORL(cfg.model, IMAGE_ONLY)
        checkpoint.save(str(out), 0, {"stage": "stage1", "config": cfg.to_dict(),
                                      "model": model.state_dict()}, keep_last=1)
    return str(out)


def mine(recipe: Recipe, shards: str, ckpt: str, out: Path, gt: str, min_box_size: int) -> dict:
    """Stage 2 on full-size images, proposals of at least ``min_box_size`` px a side; purity.
    Selective search depends on the images and its settings alone: a mining takes the proposals
    of a finished one of this run with the same (``mine.proposals_from``)."""
    cfg = load_config("small", [*recipe.mine_overrides(), f"data={shards}", f"ckpt={ckpt}",
                                f"out={out}", "mine.ss_max_side=0",
                                f"mine.min_box_size={min_box_size}"])
    want = make_plan(str(out), shards, ckpt, cfg.mine, "cpu").hashes["proposals"]
    for summary in sorted(out.parent.parent.glob("seed*/mined*/summary.json")):
        manifest = json.loads((summary.parent / "manifest.json").read_text())
        if manifest["hashes"]["proposals"] == want and summary.parent != out:
            cfg.mine.proposals_from = str(summary.parent)
            break
    summary = pipeline.run(cfg, progress=False)
    return {**pair_purity(str(out), gt, shards),
            "boxes_per_image": summary["proposals"]["boxes_per_image"],
            "pairs_per_image": summary["pairs"]["pairs_per_record"]}


# ----------------------------------------------------------------------------- probes


def checkpoints(run: Path) -> list[tuple[int, str]]:
    d = run / "checkpoints"
    return sorted((int(n[5:13]), str(d / n)) for n in os.listdir(d) if n.endswith(".pt"))


def probe(w, data: dict, ec) -> dict:
    """The object probe of ``data["objects"]``, and on the same features the relabellings of
    ``data["relabelled"]`` (the hue probe in the generated world) under their names."""
    return objects.evaluate(w, *data["objects"], ec, data.get("relabelled"))


HUE_BINS = 6


def by_hue(objs: objects.Objects) -> objects.Objects:
    """The same crops labelled by the hue of their mean colour (HUE_BINS bins): a probe of how
    much colour the features keep, which in the generated world says nothing of the category."""
    rgb = objs.crops.float().mean((2, 3)).numpy() / 255
    hue = np.array([colorsys.rgb_to_hsv(*c)[0] for c in rgb])
    labels = (hue * HUE_BINS).astype(np.int64) % HUE_BINS
    return objects.Objects(objs.crops, labels, objs.images,
                           tuple(f"hue {i}/{HUE_BINS}" for i in range(HUE_BINS)))


def with_hue(objs: tuple[objects.Objects, objects.Objects]) -> dict:
    """A generated world's probe data: the object probe and its hue probe, the hue bin of the
    same crops (chance 1/6), scored on the same features under "hue"."""
    return {"objects": objs, "relabelled": {"hue": (by_hue(objs[0]), by_hue(objs[1]))}}


def voc07_svm(ckpt: str, recipe: Recipe, out: Path) -> float:
    """VOC07 SVM mAP (11-point, %) of a checkpoint at the training resolution on voc07's
    held-out half (seed 0: the half pre-training never sees). Centre crops, global pooling and
    difficult images ignored, as this protocol has always been measured (the Goyal pooling
    needs 224 px inputs)."""
    resize = round(recipe.crop * 256 / 224)
    cfg = load_config("paper", [f"ckpt={ckpt}", f"eval.resize={resize}",
                                f"eval.crop={recipe.crop}", f"eval.device={recipe.device}",
                                "eval.num_workers=2", "eval.view=center_crop",
                                "eval.pooling=global", "eval.svm.difficult=ignore"])
    rep = classification.run("voc07", cfg, str(VOC07), "train", None, str(out), progress=False)
    return float(rep["results"]["checkpoint"]["layers"]["res5"]["mAP_11point"])


# ----------------------------------------------------------------------------- protocol


def baselines(recipe: Recipe, data: dict, seed: int, ec) -> dict:
    """The probe of the random init of ``seed``, as initialised and with BatchNorm statistics of
    the training views (what any training step gives a network: isolates what training changed
    in the other weights)."""
    rnd = backbones.random_init(recipe.backbone, seed, recipe.stem, recipe.init)
    return {"random": probe(rnd, data, ec),
            "random_bn": probe(backbones.recalibrate_bn(
                rnd, training_views(data["shards"], 512, recipe.crop, seed)), data, ec)}


def after_stage1(recipe: Recipe, data: dict, seed_dir: Path, s1: Path, seed: int, ec,
                 arms: tuple[str, ...], floor: bool = True) -> tuple[dict, dict]:
    """Stage 2 with the Stage 1 run ``s1`` (and, with ``floor``, with the random init of
    ``seed``: the purity floor), then the arms from ``s1``, every checkpoint probed; returns the
    results and the seconds of each part."""
    res: dict = {}
    times: dict[str, float] = {}
    shards = data["shards"]
    if "orl" in arms:
        t = time.time()
        # Each model mines into its own directory, so that a rerun finds both finished (one
        # directory would keep only the last one's units, and redo the other's).
        if floor:
            res["purity_random_init"] = mine(
                recipe, shards, random_stage1(recipe, seed_dir / "stage1-random", seed),
                seed_dir / "mined-random-init", data["instances"], data["min_box_size"])
        res["purity"] = mine(recipe, shards, str(s1), seed_dir / "mined", data["instances"],
                             data["min_box_size"])
        times["mining"] = time.time() - t
    for arm, weights in (("byol", "[1,0,0]"), ("orl", "[1,1,1]")):
        if arm not in arms:
            continue
        t = time.time()
        run = seed_dir / arm
        train_stage3(recipe, shards, str(seed_dir / "mined"), s1, run, seed, weights)
        times[arm] = time.time() - t
        res[arm] = [(step, probe(backbones.load(p), data, ec)) for step, p in checkpoints(run)]
    return res, times


def run_seed(mode: str, recipe: Recipe, data: dict, out: Path, seed: int, ec,
             arms: tuple[str, ...] = ("byol", "orl")) -> dict:
    """Train, mine and probe one seed; returns its curves and final numbers."""
    t0 = time.time()
    times: dict[str, float] = {}
    res: dict = {"seed": seed}
    s1 = out / f"seed{seed}" / "stage1"
    train_stage1(recipe, data["shards"], s1, seed)
    times["stage1"] = time.time() - t0
    res.update(baselines(recipe, data, seed, ec))
    res["stage1"] = [(step, probe(backbones.load(p), data, ec))
                     for step, p in checkpoints(s1)]
    arm_res, arm_times = after_stage1(recipe, data, out / f"seed{seed}", s1, seed, ec, arms)
    res.update(arm_res)
    times.update(arm_times)
    if mode == "real":
        t = time.time()
        # The held-out split is eval.seed's (0): the one left out of pre-training. The random
        # init of this seed is scored as a checkpoint (the report's own baseline is seed 0's).
        res["voc07"] = {"random init": voc07_svm(random_stage1(
            recipe, out / f"seed{seed}" / "stage1-random", seed), recipe, out / "voc07")}
        for name in ("stage1", *arms):
            res["voc07"][name] = voc07_svm(checkpoints(out / f"seed{seed}" / name)[-1][1],
                                           recipe, out / "voc07")
        times["voc07"] = time.time() - t
    res["seconds"] = {k: round(v, 1) for k, v in times.items()}
    res["seconds"]["total"] = round(time.time() - t0, 1)
    return res


def seed_std(a: np.ndarray):
    """The std over seeds (axis 0) of every table and figure: ddof 1, zero for one seed."""
    return a.std(0, ddof=1) if len(a) > 1 else 0.0 * a.mean(0)


def stats(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(seed_std(a)),
            "values": [round(float(v), 3) for v in a]}


def fmt(s: dict, digits: int = 1) -> str:
    """``stats`` as "mean ± std" (the mean alone for one seed)."""
    spread = f" ± {s['std']:.{digits}f}" if len(s["values"]) > 1 else ""
    return f"{s['mean']:.{digits}f}{spread}"


def summarise(results: list[dict], arms: tuple[str, ...]) -> dict:
    """Mean and std over seeds of the final numbers of every arm (and random init)."""
    table: dict = {}
    finals = {"random init": [r["random"] for r in results],
              "random init, BN re-estimated": [r["random_bn"] for r in results],
              "stage1": [r["stage1"][-1][1] for r in results]}
    finals.update({arm: [r[arm][-1][1] for r in results] for arm in arms})
    for name, rows in finals.items():
        table[name] = {m: stats([row[m] for row in rows]) for m in ("knn", "linear",
                                                                    "effective_rank")}
    for key in ("purity", "purity_random_init"):
        if key in results[0]:
            table[key] = {m: stats([r[key][m] for r in results])
                          for m in ("pair_purity", "random_pair_purity", "pair_objects",
                                    "random_pair_objects", "box_gt_match")}
    if "voc07" in results[0]:
        table["voc07"] = {name: stats([r["voc07"][name] for r in results])
                          for name in results[0]["voc07"]}
    hue = {name: rows for name, rows in finals.items() if all("hue" in row for row in rows)}
    if hue:
        table["hue"] = {name: {m: stats([row["hue"][m] for row in rows])
                               for m in ("knn", "linear")} for name, rows in hue.items()}
    return table


def plot(results: list[dict], arms: tuple[str, ...], path: Path, title: str,
         zoom: bool = False) -> None:
    """Probe vs steps, mean and std over seeds; ``zoom``: from the end of Stage 1 on (where only
    Stage 1's last checkpoint was probed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"byol": "tab:blue", "orl": "tab:red", "stage1": "tab:blue"}
    for ax, metric in zip(axes, ("knn", "linear")):
        for key, colour, label in (("random", "grey", "random init"),
                                   ("random_bn", "tab:green", "random init, BN re-estimated")):
            rnd = np.array([r[key][metric] for r in results])
            sd = seed_std(rnd)
            ax.axhspan(rnd.mean() - sd, rnd.mean() + sd, color=colour, alpha=0.2)
            ax.axhline(rnd.mean(), color=colour, lw=1, ls="--", label=label)
        for arm in arms or ("stage1",):
            curves = [[(0, r["random"][metric])] + [(s, p[metric]) for s, p in r["stage1"]]
                      + [(r["stage1"][-1][0] + s, p[metric]) for s, p in r.get(arm, [])
                         if arm != "stage1"]
                      for r in results]
            steps = np.array([s for s, _ in curves[0]])
            vals = np.array([[v for _, v in c] for c in curves])
            m, sd = vals.mean(0), seed_std(vals)
            label = {"byol": "BYOL", "orl": "ORL (Stage 3 after Stage 1 + mining)",
                     "stage1": "BYOL (Stage 1)"}[arm]
            ax.plot(steps, m, color=colours[arm], label=label)
            ax.fill_between(steps, m - sd, m + sd, color=colours[arm], alpha=0.2)
        end1 = results[0]["stage1"][-1][0]
        ax.axvline(end1, color="k", ls=":", lw=1)
        if zoom:
            margin = 0.05 * (steps[-1] - end1)
            ax.set_xlim(end1 - margin, steps[-1] + margin)
        ax.set_xlabel("optimiser steps (dotted: end of Stage 1)")
        ax.set_ylabel(f"object probe, {metric} balanced accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    seeds = f"{len(results)} seeds" if len(results) > 1 else "1 seed (no spread)"
    fig.suptitle(f"{title}: mean and std over {seeds}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(table: dict, arms: tuple[str, ...], header: str) -> str:
    names = {"random init": "random init (as initialised)",
             "random init, BN re-estimated": "random init, BN statistics of the training views",
             "stage1": "BYOL, Stage 1 only (E1)",
             "byol": "BYOL (E1 + E3)", "orl": "ORL (E1 + mining + E3)"}
    lines = [header, "", "| weights | object kNN (%) | object linear (%) | effective rank |",
             "|---|---:|---:|---:|"]
    for name in ("random init", "random init, BN re-estimated", "stage1", *arms):
        t = table[name]
        lines.append(f"| {names[name]} | {fmt(t['knn'])} | {fmt(t['linear'])} | "
                     f"{t['effective_rank']['mean']:.0f} |")
    if "purity" in table:
        head = ("| mining with | pair purity | random pairs of kept boxes | both boxes on objects "
                "(random pairs) | kept boxes on objects |")
        lines += ["", head, "|---|---:|---:|---:|---:|"]
        for key, name in (("purity", "trained Stage 1"),
                          ("purity_random_init", "random-init Stage 1")):
            if key not in table:
                continue
            t = table[key]
            lines.append(f"| {name} | {fmt(t['pair_purity'], 3)} | "
                         f"{t['random_pair_purity']['mean']:.3f} | "
                         f"{fmt(t['pair_objects'], 3)} ({t['random_pair_objects']['mean']:.3f}) | "
                         f"{t['box_gt_match']['mean']:.3f} |")
    if "voc07" in table:
        lines += ["", "| weights | VOC07 SVM mAP (%) |", "|---|---:|"]
        lines += [f"| {names.get(k, k)} | {fmt(v)} |" for k, v in table["voc07"].items()]
    if "hue" in table:
        head = f"| weights | hue of the object crop, {HUE_BINS} bins: kNN (%) | linear (%) |"
        lines += ["", head, "|---|---:|---:|"]
        lines += [f"| {names[k]} | {fmt(v['knn'])} | "
                  f"{fmt(v['linear'])} |" for k, v in table["hue"].items()]
    return "\n".join(lines) + "\n"


# arms: what the command line sets of a recipe otherwise read from the `select` runs
ARMS_FLAGS = ("e3", "probes", "ckpt_every", "workers", "device", "extra")

# select: name -> changes to the recipe, or "world": changes to the generated world (Stage 1 only,
# the first seed, the validation probe)
CANDIDATES: dict[str, dict] = {
    "base": {},
    "base lr 0.8": {"base_lr": 0.8},
    "the paper's crop scale [0.08, 1]": {"crop_scale": "[0.08,1.0]"},
    "tau 0.996": {"tau": 0.996},
    "tau 0.996, base lr 0.8": {"tau": 0.996, "base_lr": 0.8},
    "LARS, base lr 1.0": {"base_lr": 1.0, "extra": ["optim.optimizer=lars"]},
    "crop 96": {"crop": 96, "patch": 48},
    "small stem, crop 32": {"stem": "small", "crop": 32, "patch": 16},
    "no blur scaling": {"extra": ["aug.blur_reference_size=0"]},
    "big objects": {"world": {"min_objects": 1, "max_objects": 3, "object_size": (0.35, 0.7)}},
    "plain background": {"world": {"background": "plain"}},
    "two categories per scene": {"world": {"categories_per_scene": 2}},
    "one category per scene": {"world": {"categories_per_scene": 1}},
    "4x the steps (E1 32)": {"e1": 32},
}


def select(recipe: Recipe, world: World, out: Path, images: int, probe_scenes: int,
           names: list[str], ec, seed: int = 0) -> dict:
    """Stage 1 of ``seed`` for each candidate, every checkpoint on the validation probe."""
    rows: dict = {}
    for name in names:
        change = dict(CANDIDATES[name])
        cand_world = replace(world, **change.pop("world", {}))
        extra = [*recipe.extra, *change.pop("extra", [])]
        cand = Recipe(**{**vars(recipe), **change, "extra": extra})
        run_dir = out / candidate_dir(name)
        # the base world's scenes are shared by the candidates that keep it
        shards, instances = world_data(out if cand_world == world else run_dir, images,
                                       cand_world)
        data = {"shards": shards, "instances": instances,
                **with_hue(world_probe(VALIDATION_SEED, probe_scenes, cand.crop, cand_world))}
        t = time.time()
        r = run_seed("world", cand, data, run_dir, seed, ec, arms=())
        best = max(r["stage1"], key=lambda sp: sp[1]["knn"])
        rows[name] = {"random": r["random"], "random_bn": r["random_bn"],
                      "stage1": r["stage1"][-1][1], "steps": r["stage1"][-1][0],
                      "best_knn_step": best[0], "best": best[1], "curve": r["stage1"],
                      "seconds": round(time.time() - t, 1)}
        print(f"[select] {name:36s} kNN {rows[name]['stage1']['knn']:5.1f} linear "
              f"{rows[name]['stage1']['linear']:5.1f} (random {r['random']['knn']:5.1f} / "
              f"{r['random']['linear']:5.1f}, BN re-estimated {r['random_bn']['knn']:5.1f} / "
              f"{r['random_bn']['linear']:5.1f})  {rows[name]['seconds']:.0f} s", flush=True)
    return rows


def plot_select(rows: dict, path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("knn", "linear")):
        for i, (name, r) in enumerate(rows.items()):
            colour = plt.cm.tab20(i % 20)
            ax.plot([0] + [s for s, _ in r["curve"]],
                    [r["random"][metric]] + [p[metric] for _, p in r["curve"]],
                    color=colour, marker=".", label=name)
            ax.axhline(r["random_bn"][metric], color=colour, lw=0.8, ls=":")
        ax.set_xlabel("optimiser steps (step 0: random init; dotted: random init, BN "
                      "re-estimated)")
        ax.set_ylabel(f"validation object probe, {metric} balanced accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"select: Stage 1 recipes, seed {seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def select_markdown(rows: dict, header: str) -> str:
    head = ("| candidate | steps | random init | random init, BN re-estimated | Stage 1, end | "
            "best kNN (step) |")
    lines = [header, "", head, "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        def pair(p: dict) -> str:
            return f"{p['knn']:.1f} / {p['linear']:.1f}"
        lines.append(f"| {name} | {r['steps']} | {pair(r['random'])} | {pair(r['random_bn'])} | "
                     f"{pair(r['stage1'])} | {r['best']['knn']:.1f} ({r['best_knn_step']}) |")
    return "\n".join(lines) + "\n"


def select_runs(runs: list[Path], candidate: str) -> list[dict]:
    """The ``select.json`` of finished ``select`` runs of one recipe and candidate, one seed
    each; a bad run is a ValueError naming it."""
    sels: list[dict] = []
    for run in runs:
        path = run / "select.json"
        if not path.is_file():
            raise ValueError(f"--runs: {path} not found (a finished `select` run's folder)")
        sel = json.loads(path.read_text())
        if candidate not in sel["candidates"]:
            raise ValueError(f"--runs: {run} has no candidate {candidate!r} "
                             f"(it has {list(sel['candidates'])})")
        if sels and sel["recipe"] != sels[0]["recipe"]:
            raise ValueError(f"--runs: {run} trained another recipe than {runs[0]}")
        sels.append(sel)
    if len({sel["seed"] for sel in sels}) < len(sels):
        raise ValueError(f"--runs: a seed appears twice ({[sel['seed'] for sel in sels]})")
    return sels


def candidate_dir(name: str) -> str:
    """The folder of a ``select`` candidate in its run."""
    return "".join(c if c.isalnum() else "_" for c in name)


def spread(runs: list[Path], candidate: str) -> list[dict]:
    """``select`` runs of one candidate, one seed each, as per-seed results (Stage 1 only)."""
    results = []
    for sel in select_runs(runs, candidate):
        row = sel["candidates"][candidate]
        results.append({"seed": sel["seed"], "random": row["random"],
                        "random_bn": row["random_bn"], "stage1": row["curve"]})
    if len({tuple(s for s, _ in r["stage1"]) for r in results}) > 1:
        raise ValueError("--runs: the runs probed different steps (another schedule)")
    return results


def spread_markdown(results: list[dict], header: str) -> str:
    """The table of ``markdown`` and, per probed step, mean ± std over seeds of the probe and of
    its gain over the random init of the same seed."""
    lines = [markdown(summarise(results, ()), (), header).rstrip("\n"), "",
             "| step | kNN (%) | linear (%) | kNN - random init | linear - random init |",
             "|---:|---:|---:|---:|---:|"]
    for i, (step, _) in enumerate(results[0]["stage1"]):
        at = [r["stage1"][i][1] for r in results]
        gain = {m: [p[m] - r["random"][m] for p, r in zip(at, results)] for m in ("knn", "linear")}
        lines.append(f"| {step} | {fmt(stats([p['knn'] for p in at]))} | "
                     f"{fmt(stats([p['linear'] for p in at]))} | {fmt(stats(gain['knn']))} | "
                     f"{fmt(stats(gain['linear']))} |")
    return "\n".join(lines) + "\n"


def selected_stage1(runs: list[Path], candidate: str) -> tuple[dict, list[tuple[int, Path]]]:
    """The recipe and the (seed, Stage 1 run) of finished ``select`` runs of one candidate, one
    seed each: where ``arms`` starts."""
    sels = select_runs(runs, candidate)
    found = [(sel["seed"], run / candidate_dir(candidate) / f"seed{sel['seed']}" / "stage1")
             for sel, run in zip(sels, runs)]
    for _, s1 in found:
        if checkpoint.resolve(str(s1)) is None:
            raise ValueError(f"--runs: {s1} holds no Stage 1 checkpoint")
    return sels[0]["recipe"], found


def arms_from(recipe: Recipe, data: dict, out: Path, seed: int, s1: Path, ec) -> dict:
    """The BYOL and ORL arms of one seed from the end of a finished Stage 1 (``s1``), its last
    checkpoint and the random init of ``seed`` probed on ``data``; the mining floor is not
    redone (the ``world`` protocol measures it on the same scenes)."""
    t0 = time.time()
    res: dict = {"seed": seed, **baselines(recipe, data, seed, ec)}
    step, last = checkpoints(s1)[-1]
    res["stage1"] = [(step, probe(backbones.load(last), data, ec))]
    arm_res, times = after_stage1(recipe, data, out / f"seed{seed}", s1, seed, ec,
                                  ("byol", "orl"), floor=False)
    res.update(arm_res)
    res["seconds"] = {**{k: round(v, 1) for k, v in times.items()},
                      "total": round(time.time() - t0, 1)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["world", "objects", "real", "select", "spread", "arms"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="the seeds (select: the first one only)")
    ap.add_argument("--images", type=int, default=2000, help="world: generated training scenes")
    ap.add_argument("--probe-scenes", type=int, default=600)
    ap.add_argument("--objects", type=int, nargs=2, default=[2, 5], metavar=("MIN", "MAX"),
                    help="world: objects per scene (default: 2 5)")
    ap.add_argument("--object-size", type=float, nargs=2, default=[0.2, 0.5],
                    metavar=("LOW", "HIGH"), help="world: an object's side as a fraction of the "
                    "scene's shorter side (default: 0.2 0.5)")
    ap.add_argument("--colours", default="scene", choices=COLOURS,
                    help="world: the colour model (loaders.synthetic.World.colours)")
    ap.add_argument("--background", default="clutter", choices=BACKGROUNDS,
                    help="world: the background (loaders.synthetic.World.background)")
    ap.add_argument("--categories-per-scene", type=int, default=0, metavar="K",
                    help="world: categories a scene's objects are drawn from (0: any)")
    ap.add_argument("--candidates", nargs="+", metavar="NAME",
                    help=f"select: the candidates to train (default: all of {list(CANDIDATES)}); "
                    "spread, arms: the first one (default: base)")
    ap.add_argument("--runs", nargs="+", type=Path, metavar="DIR",
                    help="spread, arms: finished `select` runs of one recipe, one seed each")
    for name, value in vars(Recipe()).items():
        if name != "extra":
            ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                    help="further config overrides for every stage")
    args = ap.parse_args()
    recipe = Recipe(**{k: getattr(args, k) for k in vars(Recipe()) if k != "extra"},
                    extra=args.overrides)
    world = World(min_objects=args.objects[0], max_objects=args.objects[1],
                  object_size=tuple(args.object_size), colours=args.colours,
                  background=args.background, categories_per_scene=args.categories_per_scene)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    ec = load_config("paper", [f"eval.device={recipe.device}", "eval.knn.k=20",
                               "eval.linear.epochs=100", "eval.batch_size=256"]).eval
    t0 = time.time()

    candidate = (args.candidates or ["base"])[0]
    if args.mode in ("spread", "arms") and not args.runs:
        ap.error(f"{args.mode}: --runs is required")
    if args.mode == "spread":
        try:
            results = spread(args.runs, candidate)
        except ValueError as e:
            ap.error(str(e))
        m = machine()
        seeds = [r["seed"] for r in results]
        title = f"Stage 1 ({candidate}), {results[0]['stage1'][-1][0]} steps"
        md = spread_markdown(results, f"spread: {title}, seeds {seeds}, validation probe "
                                      f"(balanced accuracy, %); runs {[str(r) for r in args.runs]}")
        (out / "spread.json").write_text(json.dumps({**m, "candidate": candidate,
                                                     "runs": [str(r) for r in args.runs],
                                                     "seeds": results}, indent=1))
        (out / "spread.md").write_text(md)
        plot(results, (), out / "spread.png", title)
        print(md)
        print(f"plot: {out / 'spread.png'}")
        return

    if args.mode == "select":
        names = args.candidates or list(CANDIDATES)
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            ap.error(f"--candidates: unknown {unknown}; the candidates are {list(CANDIDATES)}")
        seed = args.seeds[0]
        rows = select(recipe, world, out, args.images, args.probe_scenes, names, ec, seed)
        m = machine()
        md = select_markdown(rows, f"select: Stage 1, seed {seed}, validation probe (kNN / linear "
                                   f"balanced accuracy, %); {m['date']}, {m['machine']}, torch "
                                   f"{m['torch']}; {time.time() - t0:.0f} s in all")
        (out / "select.json").write_text(json.dumps({**m, "recipe": vars(recipe),
                                                     "seed": seed, "candidates": rows}, indent=1))
        (out / "select.md").write_text(md)
        plot_select(rows, out / "select.png", seed)
        print(md)
        print(f"plot: {out / 'select.png'}")
        return

    arms: tuple[str, ...] = ("byol", "orl")
    stage1_runs: list[tuple[int, Path]] = []
    if args.mode == "arms":
        try:
            trained, stage1_runs = selected_stage1(args.runs, candidate)
        except ValueError as e:
            ap.error(str(e))
        # Stage 1's recipe; Stage 3's length and how it runs from the command line
        recipe = Recipe(**{**trained, **{k: getattr(recipe, k) for k in ARMS_FLAGS}})
    if args.mode in ("world", "arms"):
        shards, instances = world_data(out, args.images, world)
        # the world's objects are 24-60 px in 160 x 120 scenes: proposals of a third of a view
        data = {"shards": shards, "instances": instances, "min_box_size": recipe.crop // 3,
                **with_hue(world_probe(TEST_SEED, args.probe_scenes, recipe.crop, world))}
        title = (f"generated world ({world.colours} colours, {world.background} background), "
                 f"{args.images} scenes")
        if stage1_runs:
            title = (f"from the last Stage 1 checkpoint (E1 {recipe.e1}) of {len(stage1_runs)} "
                     f"select runs, Stage 3 on {args.images} scenes")
    elif args.mode == "objects":
        data = {"shards": object_crops_data(out, args.images, world),
                **with_hue(world_probe(TEST_SEED, args.probe_scenes, recipe.crop, world))}
        title = (f"BYOL on the object crops of {args.images} generated scenes "
                 f"({world.colours} colours)")
        arms = ()
    else:
        data = real_data(out, recipe.crop)
        title = f"coco-mini + voc07, {data['pretrain_images']} images"
    results = []
    for seed, s1 in stage1_runs or [(seed, None) for seed in args.seeds]:
        r = (arms_from(recipe, data, out, seed, s1, ec) if s1 is not None
             else run_seed(args.mode, recipe, data, out, seed, ec, arms))
        results.append(r)
        finals = " | ".join(f"{name} {r[name][-1][1]['knn']:.1f}" for name in ("stage1", *arms))
        print(f"[learning] seed {seed} kNN: random {r['random']['knn']:.1f} | {finals}  "
              f"({r['seconds']['total']:.0f} s)", flush=True)
    table = summarise(results, arms)
    m = machine()
    header = (f"{title}; {m['date']}, {m['machine']}, torch {m['torch']}; recipe "
              f"{recipe.backbone} ({recipe.stem} stem), {recipe.crop} px views / {recipe.patch} "
              f"px patches, batch {recipe.batch}, base lr {recipe.base_lr}, E1 {recipe.e1}, E3 "
              f"{recipe.e3 if arms else '-'}; seeds {[r['seed'] for r in results]}; "
              f"{time.time() - t0:.0f} s in all")
    md = markdown(table, arms, header)
    (out / "results.json").write_text(json.dumps({**m, "mode": args.mode, "recipe": vars(recipe),
                                                  "seconds": round(time.time() - t0, 1),
                                                  "summary": table, "seeds": results}, indent=1))
    (out / "results.md").write_text(md)
    plot(results, arms, out / "learning.png", title, zoom=bool(stage1_runs))
    print(md)
    print(f"plot: {out / 'learning.png'}")


if __name__ == "__main__":
    main()
