"""What every ranking head provides (`Head`), and what its parts hand the training loop and evaluation.

A head is one module under `patchrec/heads/` and one row of `patchrec.heads.HEADS`: it builds the model to
train or rank with, the training objective, the ranker, and says how much history it reads. The training
loop (`patchrec.training.fit`), the runtime, evaluation, the registry and serving only talk to these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from patchrec.config import TrainConfig
    from patchrec.data.sequences import SequenceStore
    from patchrec.runtime import Base, Runtime

__all__ = ["Head", "Objective", "Ranker", "Ranking", "Terms"]


@dataclass
class Ranking:
    """One history's top items (catalog indices, best first) and their scores."""

    items: list[int]
    scores: list[float]
    prompt_tokens: int = 0  # positions of the prefilled prompt (or the history row)


class Terms(NamedTuple):
    """The loss of one micro-batch (or one rank's shard of it)."""

    total: Tensor  # the sum of its loss terms (label tokens or target positions)
    terms: int  # how many terms the sum has
    targets: int  # targets trained
    share: float  # share of history items given as patches


class Objective(Protocol):
    """What `fit` trains: a deterministic batch plan and the loss of one micro-batch."""

    def plan(self) -> list[np.ndarray]:
        """Micro-batches for the whole run (every epoch), the same on every call."""
        ...

    def refresh(self, model) -> None:
        """Recompute what follows the weights (patch tables) after loading or an optimizer step."""
        ...

    def loss(self, model, micro: np.ndarray, progress: float, generator: torch.Generator) -> Terms:
        """The summed loss terms of a (non-empty) micro-batch or shard."""
        ...

    def param_groups(self, model, cfg: TrainConfig) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (e.g. a learning rate of its own for a head's table)."""
        ...


class Ranker(Protocol):
    """A ranking head: the top-k catalog items after a history."""

    def rank(self, hist: np.ndarray, top_k: int) -> Ranking:
        """Top-k item indices (best first) and their scores after `hist` (item indices, oldest first)."""
        ...

    def rank_many(self, hists: list[np.ndarray], top_k: int) -> list[Ranking]:
        """`rank` for several users (batched where the head allows it)."""
        ...


class Head(Protocol):
    """One ranking head (a row of `HEADS`)."""

    name: str

    def model(self, base: Base, cfg: TrainConfig, trained: bool) -> nn.Module:
        """The model to train or rank with on `base`; `trained`: trainable weights will be loaded into it."""
        ...

    def objective(self, store: SequenceStore, base: Base, cfg: TrainConfig) -> Objective:
        """The training objective over the train split of `store`."""
        ...

    def ranker(self, runtime: Runtime, num_beams: int, length_penalty: float, bf16: bool | Literal["auto"],
               mask_history: bool, batch_size: int | None) -> Ranker:
        """The ranker of a loaded runtime (beam settings, `mask_history`: where the head uses them)."""
        ...

    def max_history(self, cfg: TrainConfig) -> int:
        """History items a ranking reads (the newest ones)."""
        ...

    def refresh(self, runtime: Runtime) -> None:
        """Recompute derived tables (catalog patches) from the runtime's current weights."""
        ...

    def load_init(self, model: nn.Module, path: Path, state: dict[str, Tensor]) -> None:
        """Start `model` from another run's `trainable.pt` (already read into `state`)."""
        ...
