"""Where a stage's ranks come from: ``launch(cfg, run_fn)``, e.g. ``launch(cfg, stage1.run)``.

``train.launcher=direct``: ``run_fn(cfg)`` runs in this process, alone or as one of the
processes torchrun starts (on one node or many; the rank comes from torchrun's variables).

``train.launcher=ray``: Ray Train starts ``train.ray_workers`` workers on the Ray cluster, each with
``train.ray_cpus_per_worker`` CPUs (and ``train.ray_gpus_per_worker`` GPUs on a GPU run; every
rank sees its node's GPUs, for NCCL peer-to-peer, as with Ray's TorchTrainer). The ranks join
one torch process group (NCCL on GPUs, gloo on CPUs) whose rendezvous store listens on rank 0's
node address only (torch's default store, which Ray's TorchTrainer uses, listens on every
interface); each then runs the very same ``run_fn`` a torchrun rank would (it travels to the
workers as a reference: this module imports no stage), which takes its rank from the group and
shards the data by rank (the DALI loader too). Checkpoints are orl-fast's own, written by
rank 0 to ``OUT``: when Ray restarts a failed worker group (``train.ray_max_failures``) the new
group resumes from OUT's latest checkpoint like any rerun.

    orl-fast pretrain --config paper data=s3://b/shards out=s3://b/stage1 \\
        train.launcher=ray train.ray_workers=16 train.ray_address=auto
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import socket
import time
from collections.abc import Callable

from orl_fast.core import checkpoint, storage
from orl_fast.core.config import ConfigError, from_dict
from orl_fast.core.defaults import Config
from orl_fast.core.extras import require
from orl_fast.core.locks import out_lock
from orl_fast.core.ray_runtime import ray_session

RunFn = Callable[..., str]  # run_fn(cfg, lock_out=True) -> the last checkpoint

STORE_TIMEOUT = datetime.timedelta(minutes=10)


def _join_group(use_gpu: bool) -> None:
    """Make this Ray Train worker a rank of the run's torch process group."""
    import ray
    import ray.train
    import torch.distributed as dist
    from ray.train.collective import broadcast_from_rank_zero
    from ray.train.torch import get_devices

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # The variables torchrun sets; LOCAL_RANK is the index of this rank's GPU among the visible.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), NODE_RANK=str(ctx.get_node_rank()),
                      LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
                      LOCAL_RANK=str(get_devices()[0].index if use_gpu else ctx.get_local_rank()))
    if world == 1:
        return
    ip = ray.util.get_node_ip_address()
    address = None
    if rank == 0:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        sock = socket.create_server((ip, 0), family=family)  # this address only
        port = sock.getsockname()[1]
        store = dist.TCPStore(ip, port, world, True, timeout=STORE_TIMEOUT,
                              wait_for_workers=False, master_listen_fd=sock.detach())
        address = (ip, port)
    address = broadcast_from_rank_zero(address)
    if rank:
        store = dist.TCPStore(address[0], address[1], world, False, timeout=STORE_TIMEOUT)
    if not use_gpu and ipaddress.ip_address(ip).is_loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback too
    backend = "nccl" if use_gpu else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=STORE_TIMEOUT)
    if rank == 0:
        print(f"[ray train] {world} ranks, {backend}, store on {address[0]}:{address[1]}",
              flush=True)


def launch(cfg: Config, run_fn: RunFn, prepare_fn: Callable[[Config], object] | None = None
           ) -> str:
    """Run a stage with the ranks ``train.launcher`` names; returns OUT's last checkpoint.

    With Ray, this process checks the stage's inputs first (``prepare_fn``, e.g.
    ``stage1.prepare``: nothing starts on the cluster when they are wrong) and holds OUT's lock
    for the whole run (restarted worker groups included); the ranks then run ``run_fn``."""
    if cfg.train.launcher == "ray":
        cfg.require("data", "out")
        with out_lock(cfg.out, f"orl-fast {run_fn.__module__.rsplit('.', 1)[-1]} (ray train)"):
            if prepare_fn is not None:
                prepare_fn(cfg)
            return ray_train(cfg, run_fn)
    return run_fn(cfg)


def _worker(loop_config: dict) -> None:
    """One rank: the stage's direct run inside the run's process group."""
    import torch
    import torch.distributed as dist

    cfg = from_dict(loop_config["config"])
    cfg.train.launcher = "direct"
    torch.set_num_threads(cfg.train.ray_cpus_per_worker)
    _join_group(cfg.train.device == "cuda")
    try:
        loop_config["run_fn"](cfg, lock_out=False)  # the driver holds OUT's lock
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _trainer_classes():
    """Ray Train's data-parallel trainer with a backend that shares each node's GPUs with its
    ranks and leaves the process group to :func:`_join_group`."""
    from ray.train.backend import Backend, BackendConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class SharedGPUs(Backend):
        share_cuda_visible_devices = True

    class SharedGPUsConfig(BackendConfig):
        @property
        def backend_cls(self):
            return SharedGPUs

    return DataParallelTrainer, SharedGPUsConfig


def _use_gpu(device: str) -> bool:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "cuda" and not gpus:
        raise ConfigError("train.device: cuda requested but the Ray cluster has no GPU")
    return device != "cpu" and gpus > 0


def _absolute(cfg: Config) -> Config:
    """Local paths made absolute: workers may start in another directory."""
    paths = {name: os.path.abspath(value) for name in ("data", "pairs", "ckpt", "out")
             if (value := getattr(cfg, name)) and "://" not in value and value != "random"}
    return dataclasses.replace(cfg, **paths)


def ray_train(cfg: Config, run_fn: RunFn) -> str:
    """``run_fn`` on ``train.ray_workers`` Ray Train ranks; returns OUT's last checkpoint."""
    require("ray.train", "ray", "train.launcher=ray")
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    cfg, t = _absolute(cfg), cfg.train
    local_cpus = max(os.cpu_count() or 1, t.ray_workers * t.ray_cpus_per_worker)
    with ray_session(t.ray_address, num_cpus=local_cpus, use_gpus=t.device != "cpu",
                     dashboard=True):
        use_gpu = _use_gpu(t.device)
        resources = {"CPU": t.ray_cpus_per_worker}
        if use_gpu:
            resources["GPU"] = t.ray_gpus_per_worker
        worker_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(t, device="cuda" if use_gpu else "cpu"))
        trainer_cls, backend_config = _trainer_classes()
        trainer = trainer_cls(
            _worker,
            train_loop_config={"config": worker_cfg.to_dict(), "run_fn": run_fn},
            backend_config=backend_config(),
            scaling_config=ScalingConfig(num_workers=t.ray_workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=f"{run_fn.__module__.rsplit('.', 1)[-1]}-{time.strftime('%Y%m%d-%H%M%S')}",
                # Ray Train's own bookkeeping (no checkpoints: those are orl-fast's, in OUT).
                storage_path=(storage.join(cfg.out, "ray-train") if storage.is_local(cfg.out)
                              else None),
                failure_config=FailureConfig(max_failures=t.ray_max_failures)),
        )
        trainer.fit()
    return checkpoint.resolve(cfg.out) or ""
