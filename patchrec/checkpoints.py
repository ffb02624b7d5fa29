"""Training checkpoints: complete `step_N` folders or none, in one format for one process, DDP and FSDP.

A checkpoint is a temp folder renamed into place: `trainable.pt` (whole trainable weights), `state.pt`
(step, RNG, the run's records and, without sharding, the optimizer) and, under FSDP, `optimizer/` (the
sharded optimizer state via `torch.distributed.checkpoint`, loadable at any world size). Loading never
unpickles code (`weights_only`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from patchrec.distributed import SINGLE, Dist, full_tensor
from patchrec.model import load_trainable

__all__ = ["SHARDED", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "trainable_weights"]


def trainable_weights(model) -> dict[str, Tensor]:
    """Whole copies of the trainable weights (gathered from their shards under FSDP: every rank calls it)."""
    return {n: full_tensor(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}


SHARDED = "optimizer"  # under FSDP: the optimizer state as a torch.distributed.checkpoint folder, one file a rank


def save_checkpoint(path: Path, model, optimizer, step: int, extra: dict, keep: int = 2, dist: Dist = SINGLE) -> None:
    """Weights/adapter, optimizer, RNG and data position, written to a temp dir then renamed.

    The temp folder's rename is what makes a checkpoint exist; only the newest `keep` are kept, and the
    new one is in place before any older one is removed. Under FSDP every rank calls it: the trainable weights
    are gathered whole into `trainable.pt` (what a run's output and an evaluation need) and the sharded optimizer
    state is saved by every rank into `optimizer/` (`torch.distributed.checkpoint`, loadable at any world size).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.sharded:  # every rank writes its shard into the folder rank 0 made (under DDP rank 0 alone is here)
        dist.barrier()
    weights = trainable_weights(model)
    state: dict[str, Any] = {"step": step, "torch_rng": torch.get_rng_state(), **extra}
    if dist.sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=tmp / SHARDED)
    else:
        state["optimizer"] = optimizer.state_dict()
    if dist.is_main:
        torch.save(weights, tmp / "trainable.pt")
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        done = sorted(_checkpoints(path.parent), key=lambda p: int(p.name.split("_")[1]), reverse=True)
        for old in done[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    if dist.sharded:
        dist.barrier()


def load_checkpoint(ck: Path, model, optimizer, dist: Dist) -> dict[str, Any]:
    """Restore weights and optimizer from checkpoint `ck` (either format, see `save_checkpoint`); its state."""
    dev = next(model.parameters()).device
    state = torch.load(ck / "state.pt", map_location=dev, weights_only=True)  # never unpickle code
    weights = torch.load(ck / "trainable.pt", map_location=dev, weights_only=True)
    if dist.sharded or (ck / SHARDED).is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if not (ck / SHARDED).is_dir():
            raise RuntimeError(f"{ck} was written by DDP or one process: resume it with launch.sharding=ddp")
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        optim = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(optim, checkpoint_id=ck / SHARDED)  # resharded to this world size
        set_optimizer_state_dict(model, optimizer, optim["optimizer"])
    else:
        load_trainable(model, ck / "trainable.pt", weights)
        optimizer.load_state_dict(state["optimizer"])
    return state


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """`step_N` folders: each was renamed into place complete (a temp folder starts with a dot)."""
    return [p for p in ckpt_dir.glob("step_*") if p.is_dir()] if ckpt_dir.is_dir() else []


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint folder, or None."""
    return max(_checkpoints(ckpt_dir), key=lambda p: int(p.name.split("_")[1]), default=None)
