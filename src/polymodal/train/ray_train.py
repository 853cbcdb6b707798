"""Contrastive training on a Ray cluster: Ray Train's `TorchTrainer` runs polymodal's own loop.

Ray starts the workers (on one machine or many), sets the torchrun variables (RANK, WORLD_SIZE,
LOCAL_RANK) and creates the process group (gloo on CPU, nccl on GPUs); each worker then calls
`loop.train`, which joins that group as it would under torchrun. So the batches, the DDP gradient
averaging, the checkpoint that rank 0 writes to `--out` and `--resume` are those of any run. Ray
Train adds the placement of workers on the cluster and a copy of the final checkpoint in its
storage, from where the driver fetches it when rank 0 ran on another machine.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchTrainer

from ..models.checkpoint import is_checkpoint
from .loop import TrainConfig, train


@dataclass(frozen=True)
class RayRun:
    out: Path  # the checkpoint directory, as a run without Ray writes it
    world_size: int  # the DDP ranks that trained, as the workers saw it
    ray_checkpoint: str | None  # Ray's copy of the final checkpoint (under the run's storage)


def train_on_ray(cfg: TrainConfig, workers: int, cpus_per_worker: int = 1, storage: str | None = None) -> RayRun:
    """Train with `workers` Ray workers (DDP ranks), writing the checkpoint directory `cfg.out`.

    Connects to the cluster in RAY_ADDRESS (or one started with `ray start` on this machine),
    else starts Ray here. GPU workers are asked for when `cfg.device` names CUDA, or is "auto" and
    this machine has a GPU. `storage`: where Ray keeps the run (default ~/ray_results; on several
    machines a path they all share, or s3://...)."""
    if workers < 1:
        raise ValueError(f"--ray-workers must be at least 1, not {workers}")
    cfg = _absolute_paths(cfg)
    use_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)
    _check_resources(workers, cpus_per_worker, use_gpu)
    trainer = TorchTrainer(
        _worker, train_loop_config={"cfg": cfg},  # pickled whole: attributes set after construction travel too
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=f"polymodal-{Path(cfg.out).name}", storage_path=storage))
    try:
        result = trainer.fit()
    except WorkerGroupError as err:  # one line naming the first failed rank's own error, not Ray's report
        rank, failure = min(err.worker_failures.items())
        cause = getattr(failure, "cause", None) or failure  # a RayTaskError keeps the worker's exception
        raise RuntimeError(f"Ray worker {rank}: {cause}") from err
    out = Path(cfg.out)
    if not is_checkpoint(out) and result.checkpoint is not None:
        result.checkpoint.to_directory(str(out))  # rank 0 ran on another machine: fetch its checkpoint
    return RayRun(out, result.metrics["world_size"], result.checkpoint.path if result.checkpoint else None)


def _worker(config: dict) -> None:
    """One Ray worker: the ordinary training loop in the process group Ray set up; then rank 0 hands
    its checkpoint directory to Ray (every worker reports once: Ray's report is a barrier)."""
    world_size = dist.get_world_size() if dist.is_initialized() else 1  # the group the loop joins
    out = train(config["cfg"])
    metrics = {"world_size": world_size}
    if ray.train.get_context().get_world_rank() == 0:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(out)),
                         delete_local_checkpoint_after_upload=False)
    else:
        ray.train.report(metrics)


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers do not run in the driver's directory: pass them absolute paths (URLs and pretrained
    names such as hf:... stay as they are)."""
    def absolute(path: str) -> str:
        return path if "://" in path or path.startswith("pipe:") else os.path.abspath(path)

    cfg = copy.copy(cfg)
    cfg.data, cfg.out = absolute(cfg.data), absolute(cfg.out)
    cfg.model = os.path.abspath(cfg.model) if Path(cfg.model).exists() else cfg.model
    return cfg


def _check_resources(workers: int, cpus_per_worker: int, use_gpu: bool) -> None:
    """Ray waits for ever for resources that the cluster lacks: say so at once instead."""
    have = ray.cluster_resources()
    wanted = {"CPU": workers * cpus_per_worker, **({"GPU": workers} if use_gpu else {})}
    for kind, count in wanted.items():
        if have.get(kind, 0) < count:
            raise ValueError(f"--ray-workers {workers} needs {count:g} {kind}s; the Ray cluster has "
                             f"{have.get(kind, 0):g} (use fewer workers, --ray-cpus-per-worker, or a bigger cluster)")
