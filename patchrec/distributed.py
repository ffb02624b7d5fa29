"""The process group a stage runs in: one process, or one rank of a `torchrun` launch (DDP).

Every rank holds the same deterministic batch plan; a global micro-batch is split into contiguous shards, one
per rank, and each rank's loss is scaled so that the synchronised gradient equals the single-process gradient
of the whole micro-batch (same global batch, same order, whatever the world size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn

__all__ = ["SINGLE", "Dist", "init_from_env", "zero_loss"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (world 1: a plain single process, no collective calls)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self) -> torch.device:
        """The rank's device: its local GPU under nccl, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, items: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of `items` (possibly empty when there are fewer items than ranks)."""
        return np.array_split(np.asarray(items), self.world)[self.rank] if self.active else np.asarray(items)

    def sum(self, *values: float) -> list[float]:
        """The sums over ranks of a few numbers (one all-reduce)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        tdist.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        """The largest `value` over ranks: the ranks agree on a wall-clock budget's end."""
        if not self.active:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DDP (gradients averaged over ranks during backward); unchanged in a single process.
        Buffers are not broadcast at every forward: they are the same on every rank (fixed item patches)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device().type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def _comm_device(self) -> torch.device:
        return self.device() if tdist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Dist()


def init_from_env() -> Dist:
    """The group `torchrun` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), joined with nccl on
    GPUs and gloo on CPUs; a single process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local)


def zero_loss(params: list[Tensor]) -> Tensor:
    """A loss of 0 that touches every parameter: a rank with an empty shard still joins the gradient sync."""
    return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=params[0].device))
