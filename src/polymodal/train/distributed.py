"""Process-group set-up for DDP: gloo on CPU, nccl on CUDA. Without a launcher everything is one process.

The group is whatever the launcher describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT): torchrun on one host or on several through its c10d rendezvous, or Ray Train,
which sets the same variables and creates the group itself before the loop starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    return info


def share_resume_state(state: dict | None, info: DistInfo) -> dict | None:
    """Every rank resumes from rank 0's training state (step, epoch, optimizer moments).

    Only rank 0 writes checkpoints, so on hosts that do not share a filesystem the other ranks
    find no state in `--out` and would start over: a different schedule, other optimizer moments,
    parameters that drift apart. The small summaries are compared first, so the optimizer state
    is sent only when the ranks disagree."""
    if not info.enabled:
        return state
    mine = None if state is None else (state["step"], state["epoch"])
    seen: list = [None] * info.world_size
    dist.all_gather_object(seen, mine)
    if all(s == seen[0] for s in seen):
        return state
    if seen[0] is None:  # rank 0's weights are what DDP hands to every rank: it must hold the checkpoint
        others = [r for r, s in enumerate(seen) if s is not None]
        raise RuntimeError(f"rank 0 found no training state to resume in --out, but rank {others[0]} did (step "
                           f"{seen[others[0]][0]}): a restart moved rank 0 to another host; put --out on storage "
                           "that every host shares")
    box = [state]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
