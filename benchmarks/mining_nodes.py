"""Selective search images/s on one Ray node vs two, on this machine's loopback interface.

A two-node cluster on 127.0.0.1 (``tests/support/loopback.py``: each node its own raylet with --cpus CPUs
and a custom resource ``loopback_node_<i>``), and a driver joined to it. Whole proposal units
(``mining.proposals.proposals_unit``: read the shard, decode, selective search in the worker's
helper process, filter, write) run as ``orl-fast mine`` runs them: one core each, SPREAD over
the nodes. The one-node baseline pins the units to node 0 with its custom resource, on the same
cluster, so both counts are measured in the same run, interleaved, best of --rounds.

    python benchmarks/mining_nodes.py                      # 2 nodes x 1 CPU, 64 images
    python benchmarks/mining_nodes.py --cpus 8 --images 741 --shard-size 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile

from bench_common import OUT, coco_shards, machine, proposal_rate, random_stage1
from support.loopback import start_head, start_worker, stop

from mining.proposals import proposals_unit, propose_shard_isolated
from orl_fast.core.defaults import MineConfig
from orl_fast.core.ray_runtime import ray_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpus", type=int, default=1, help="CPUs per node")
    ap.add_argument("--images", type=int, default=64, help="coco-mini images (max 741)")
    ap.add_argument("--shard-size", type=int, default=4, help="images per unit")
    ap.add_argument("--ss-max-side", type=int, default=0, help="0: full size (official)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    shards = coco_shards(args.images, args.shard_size)
    ckpt = random_stage1("small", [], "resnet18")
    mine = MineConfig(ss_max_side=args.ss_max_side)
    logs = tempfile.mkdtemp(prefix="orl-nodes-")
    head = start_head(logs, num_cpus=args.cpus, resources={"loopback_node_0": 1000})
    nodes = [head]
    try:
        nodes.insert(0, start_worker(head, num_cpus=args.cpus,
                                     resources={"loopback_node_1": 1000}))
        import ray

        with ray_session(head.address):
            task = ray.remote(proposals_unit)
            one = task.options(num_cpus=1, name="proposals", resources={"loopback_node_0": 1})
            two = task.options(num_cpus=1, name="proposals", scheduling_strategy="SPREAD")
            warm = ray.remote(propose_shard_isolated)
            first = f"{shards}/shard-000000.tar"
            for node in (0, 1):  # start every worker's helper process before timing
                pinned = warm.options(num_cpus=1, resources={f"loopback_node_{node}": 1})
                ray.get([pinned.remote(first, mine)
                         for _ in range(args.cpus)])
            rates = {1: 0.0, 2: 0.0}
            for _ in range(args.rounds):
                for n, unit in ((1, one), (2, two)):
                    rates[n] = max(rates[n], proposal_rate(ray, unit, shards, ckpt, mine,
                                                           OUT / f"nodes-bench-{n}",
                                                           n * args.cpus))
    finally:
        stop(*nodes)
        shutil.rmtree(logs, ignore_errors=True)
    result = {**machine(), "cpus_per_node": args.cpus, "images": args.images,
              "shard_size": args.shard_size, "img_s": {n: round(r, 2) for n, r in rates.items()},
              "ratio_2_over_1": round(rates[2] / rates[1], 3)}
    print(json.dumps(result))
    print(f"\nselective search, {args.images} images, {args.shard_size} per unit, "
          f"{args.cpus} CPU(s) per node:")
    for n, r in rates.items():
        print(f"  {n} node(s): {r:7.2f} img/s")
    print(f"  2 nodes / 1 node: {rates[2] / rates[1]:.2f} (ideal 2.00)")


if __name__ == "__main__":
    main()
