"""Data parallelism across processes started by `torchrun`: DDP, or FSDP (ZeRO-3 style sharding).

Data parallel training (DDP): every process holds the whole model, trains on its own rows of the batch,
and before each optimizer step the gradients are averaged across processes (an all-reduce), so every copy
takes the same step: 2 processes × B/2 rows compute what 1 process × B rows would (tests check it).
ZeRO (Rajbhandari et al. 2020) removes the redundancy of every process keeping every optimizer moment,
gradient and weight: FSDP (`fully_shard`, PyTorch's ZeRO-3) keeps 1/N of each on every process and
gathers a layer's weights just before it runs. Tensor parallelism (Megatron: split each matmul across
devices) and pipeline parallelism (split the layers) are for models too big for one device; we explain
them in docs/training.md and leave them to torch.distributed.

    torchrun --nproc_per_node 2 -m lmforge pretrain --config cfg.yaml          # 2 CPU processes (gloo)
    torchrun --nproc_per_node 8 -m lmforge pretrain --config cfg.yaml --device cuda   # 8 GPUs (NCCL)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int
    size: int
    local_rank: int
    backend: str

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()


def init_world(device: str = "auto") -> World | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ...); None when run as one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    return World(dist.get_rank(), dist.get_world_size(), local, backend)


def wrap_model(model: torch.nn.Module, world: World | None, mode: str = "ddp") -> torch.nn.Module:
    """DDP (gradients averaged after backward) or FSDP (parameters sharded per block, then the root)."""
    if world is None:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "layers", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[world.local_rank] if world.backend == "nccl" else None)


def shutdown(world: World | None) -> None:
    if world is not None and dist.is_initialized():
        # Every rank reaches this point before any tears down: a rank that leaves while another is
        # still inside a collective (rank 0 saving a checkpoint, say) aborts gloo's worker threads.
        dist.barrier()
        dist.destroy_process_group()
