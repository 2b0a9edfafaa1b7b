"""Stage 2 on a two-node Ray cluster on this machine's loopback interface.

A head and a second node (``ray start --address ...``, each its own raylet with its own CPUs and
custom resource) on 127.0.0.1; ``orl-fast mine --address HEAD`` mines 64 coco-mini images on it.
Units must run on both nodes, the output must equal a single-node run byte for byte, and no
process of the cluster may listen beyond the loopback interface.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from support.common import orl_fast_cmd, subprocess_env
from support.loopback import is_loopback, listening_addresses, start_head, start_worker, stop
from support.mining import MINE, MODEL, make_ckpt, mine_config, output_digests

from mining import pipeline

pytestmark = pytest.mark.slow

COCO = ["mine.ss_max_side=128", "mine.min_box_size=32"]

NODES_SCRIPT = """
import json, ray
ray.init(address={address!r}, log_to_driver=False)
print(json.dumps({{n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}}))
"""


def _nodes(head) -> dict[str, list[str]]:
    """Node id -> resource names of the live nodes (asked from a separate driver)."""
    env = {**subprocess_env(), **head.client_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = subprocess.run([sys.executable, "-c", NODES_SCRIPT.format(address=head.address)],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _unit_nodes(out: str) -> dict[str, set[str]]:
    """stage -> Ray node ids its units ran on (from the unit records)."""
    nodes: dict[str, set[str]] = {}
    for path in glob.glob(os.path.join(out, "units", "*", "*.json")):
        with open(path) as f:
            record = json.load(f)
        nodes.setdefault(record["stage"], set()).add(record["worker"]["ray_node"])
    return nodes


def test_mine_on_two_loopback_nodes_equals_one_node(coco_shards, tmp_path):
    ckpt = make_ckpt(str(tmp_path / "stage1"))
    single = str(tmp_path / "single")
    pipeline.run(mine_config(coco_shards, ckpt, single, *COCO, "mine.executor=local"),
                 progress=False)

    head = start_head(tmp_path / "ray", num_cpus=2, resources={"orl_head": 1})
    worker = None
    try:
        worker = start_worker(head, num_cpus=2, resources={"orl_second": 1})
        nodes = _nodes(head)
        assert len(nodes) == 2
        by_resource = {r: node for node, names in nodes.items() for r in names
                       if r.startswith("orl_")}
        assert set(by_resource) == {"orl_head", "orl_second"}

        out = str(tmp_path / "two-nodes")
        cmd = orl_fast_cmd("mine", "--config", "small", "--address", head.address, "--quiet",
                           *MODEL, *MINE, *COCO, f"data={coco_shards}", f"ckpt={ckpt}",
                           f"out={out}")
        done = subprocess.run(cmd, env={**subprocess_env(), **head.client_env},
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
        ran = _unit_nodes(out)
        # Selective search (SPREAD over the nodes) ran on both; every unit ran on the cluster.
        assert ran["proposals"] == set(nodes)
        assert set().union(*ran.values()) == set(nodes)

        for pid, ip, port in listening_addresses(head.pids() | worker.pids()):
            assert is_loopback(ip), f"pid {pid} listens on {ip}:{port}"
    finally:
        stop(*(n for n in (worker, head) if n is not None))
    assert output_digests(out) == output_digests(single)
