"""The process group a stage runs in: one process, or one rank of a `torchrun` launch (DDP or FSDP).

Every rank holds the same deterministic batch plan; a global micro-batch is split into contiguous shards, one
per rank, and each rank's loss is scaled so that the synchronised gradient equals the single-process gradient
of the whole micro-batch (same global batch, same order, whatever the world size). Under DDP every rank holds
the whole model; under FSDP (full sharding, `torch.distributed.fsdp.fully_shard`) each transformer block and
the rest of the model are sharded over the ranks and gathered only while they compute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn

__all__ = ["SINGLE", "Dist", "full_tensor", "init_from_env"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (world 1: a plain single process, no collective calls)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharding: Literal["ddp", "fsdp"] = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """Parameters, gradients and optimizer state are sharded over the ranks (FSDP)."""
        return self.active and self.sharding == "fsdp"

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
        """`module` under DDP (gradients averaged over ranks during backward) or FSDP (every transformer block a
        unit of its own, the rest in the root unit: tied embeddings stay together); unchanged in a single process.
        DDP does not broadcast buffers at every forward: they are the same on every rank (fixed item patches).
        Under FSDP the module's parameters become sharded DTensors: build the optimizer after wrapping."""
        if not self.active:
            return module
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device().type, (self.world,))
            for name, block in module.named_modules():
                if _BLOCK.search(name):
                    fully_shard(block, mesh=mesh)
            return fully_shard(module, mesh=mesh)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device().type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    @contextmanager
    def gradient_sync(self, engine: nn.Module, sync: bool) -> Iterator[None]:
        """Synchronise gradients in this backward (`sync`) or only accumulate them locally (DDP `no_sync`, FSDP
        `set_requires_gradient_sync`): the last micro-batch of a step synchronises the sum."""
        if sync or not self.active:
            yield
        elif self.sharded:
            engine.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                engine.set_requires_gradient_sync(True)
        else:
            with engine.no_sync():
                yield

    @contextmanager
    def gathered(self, engine: nn.Module) -> Iterator[None]:
        """The root unit's parameters (embeddings, item corrections) whole outside a forward pass, on every rank
        (FSDP: all ranks must enter together); a no-op unless sharded. Transformer blocks gather themselves."""
        if not self.sharded:
            yield
            return
        engine.unshard()
        try:
            yield
        finally:
            engine.reshard()

    def _comm_device(self) -> torch.device:
        return self.device() if tdist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Dist()
_BLOCK = re.compile(r"(^|\.)(layers|h|blocks)\.\d+$")  # the transformer blocks of HF decoder models


def full_tensor(t: Tensor) -> Tensor:
    """A whole tensor from a sharded DTensor (a collective: every rank calls it), else `t`."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def init_from_env(sharding: Literal["ddp", "fsdp"] = "ddp") -> Dist:
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
    return Dist(rank=rank, world=world, local_rank=local, sharding=sharding)
