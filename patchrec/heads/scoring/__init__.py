"""The catalog scoring head: sequence-level training where one causal pass over a window of a user's item
patches trains every target in it, full-softmax cross-entropy over the catalog, and exact top-k by item id for
a batch of users in one forward pass. The model, windows and rows: `model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from patchrec.config import TrainConfig
from patchrec.data.sequences import SequenceStore
from patchrec.hardware import device, use_bf16
from patchrec.heads.base import Ranking, Terms
from patchrec.heads.scoring.model import (
    ITEM_TABLE,
    Layout,
    ScoringModel,
    assemble_rows,
    catalog_loss,
    history_row,
    plan_windows,
    scoring_model,
    window_rows,
)
from patchrec.model import load_trainable

if TYPE_CHECKING:
    from patchrec.runtime import Base, Runtime

__all__ = ["ScoringHead", "ScoringObjective", "ScoringRanker"]


class ScoringObjective:
    """The catalog scoring head: windows of a user's sequence, every train target of a window in one pass."""

    def __init__(self, store: SequenceStore, cfg: TrainConfig):
        self.store, self.cfg, self.layout = store, cfg, Layout.of(cfg)
        self.windows, self.is_target = plan_windows(store, self.layout)
        if not len(self.windows):
            raise ValueError("no training window: the train split has no targets")

    def plan(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.cfg.seed)
        out: list[np.ndarray] = []
        for _ in range(self.cfg.epochs):
            idx = rng.permutation(len(self.windows))[: self.cfg.max_samples or None]
            out += [idx[s : s + self.cfg.batch_size] for s in range(0, len(idx), self.cfg.batch_size)]
        return out

    def refresh(self, model) -> None:
        pass  # item patches stay those of the base embeddings; the learned correction carries the rest

    def _hold_cold(self, model: ScoringModel) -> None:
        """Zero the correction's gradient rows of items that are never a train target: their Adam moments stay
        zero, so they never move (weight decay of a zero row is zero too) and keep their title vector. The hook
        multiplies by a 0/1 mask, so registering it again (a second `fit` of the same model) changes nothing."""
        trained = torch.zeros(model.item_delta.shape[0], dtype=model.item_delta.dtype, device=model.item_delta.device)
        trained[torch.from_numpy(self.store.flat[self.is_target].astype(np.int64)).to(trained.device)] = 1
        model.item_delta.register_hook(lambda g: g * trained[:, None])

    def loss(self, model, micro: np.ndarray, progress: float, generator: torch.Generator) -> Terms:
        rows = window_rows(self.store, self.windows, micro, self.is_target, model.item_vectors(), model.start(),
                           self.layout, self.cfg.pack)
        n = len(rows.targets)
        loss = catalog_loss(model, rows, self.cfg.negatives, generator, "sum", self.cfg.mask_same_title)
        return Terms(loss, n, n, rows.compressed)

    def param_groups(self, model, cfg: TrainConfig) -> list[dict[str, Any]]:
        """The per-item correction gets `item_lr` and `item_decay` (and, with `cold_keep_title`, no update of the
        rows of never-target items); the rest the stage's settings."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        items = [p for n, p in named if n == ITEM_TABLE]
        if items and cfg.cold_keep_title:
            self._hold_cold(model)
        groups: list[dict[str, Any]] = [{"params": [p for n, p in named if n != ITEM_TABLE]}]
        if items:
            groups.append({"params": items, "lr": cfg.item_lr or cfg.lr, "weight_decay": cfg.item_decay})
        return groups


class ScoringRanker:
    """The catalog scoring head: one forward pass per batch of users, exact top-k over every catalog item.

    Args:
        runtime: a runtime whose model is a `ScoringModel`.
        bf16: bf16 autocast for the forward pass (scores are computed in fp32).
        mask_history: never recommend an item already in the history.
        batch_size: users per forward pass.
    """

    def __init__(self, runtime: Runtime, bf16: bool | Literal["auto"] = "auto", mask_history: bool = False,
                 batch_size: int = 64):
        self.runtime, self.bf16, self.mask_history, self.batch_size = runtime, bf16, mask_history, batch_size
        self.layout, self.pack = Layout.of(runtime.spec.train), runtime.spec.train.pack

    def rank(self, hist: np.ndarray, top_k: int) -> Ranking:
        return self.rank_many([hist], top_k)[0]

    @torch.no_grad()
    def scores(self, hists: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """(B, N) fp32 scores of every catalog item after each history, and each row's positions."""
        model = self.runtime.model
        rows = [history_row(h, self.layout) for h in hists]
        bf16 = use_bf16(self.bf16) or model.bf16_weights
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=bf16):
            batch = assemble_rows(rows, model.item_vectors(), model.start(), self.layout.group, self.pack)
            scores = model.last_scores(batch)
        if self.mask_history:
            for b, h in enumerate(hists):
                scores[b, torch.as_tensor(np.asarray(h, dtype=np.int64), device=scores.device)] = float("-inf")
        return scores, batch.lengths.tolist()

    def rank_many(self, hists: list[np.ndarray], top_k: int) -> list[Ranking]:
        out: list[Ranking] = []
        for s in range(0, len(hists), self.batch_size):
            scores, lengths = self.scores(hists[s : s + self.batch_size])
            top = torch.topk(scores, min(top_k, scores.shape[1]), dim=1)
            out += [Ranking(i.tolist(), v.tolist(), n) for i, v, n in zip(top.indices, top.values, lengths,
                                                                          strict=True)]
        return out


class ScoringHead:
    """The catalog scoring head (see the module doc)."""

    name = "scoring"

    def model(self, base: Base, cfg: TrainConfig, trained: bool) -> nn.Module:
        return scoring_model(base.model, cfg, base.new_tokens, base.catalog)

    def objective(self, store: SequenceStore, base: Base, cfg: TrainConfig) -> ScoringObjective:
        return ScoringObjective(store, cfg)

    def ranker(self, runtime: Runtime, num_beams: int, length_penalty: float, bf16: bool | Literal["auto"],
               mask_history: bool, batch_size: int | None) -> ScoringRanker:
        return ScoringRanker(runtime, bf16, mask_history, batch_size or 64)

    def max_history(self, cfg: TrainConfig) -> int:
        return Layout.of(cfg).max_history

    def refresh(self, runtime: Runtime) -> None:
        pass  # item vectors are computed from the model at every ranking call

    def load_init(self, model: nn.Module, path: Path, state: dict[str, Tensor]) -> None:
        """A champion of this head (all its weights), or a PPT run's LM weights (the head's own start fresh)."""
        assert isinstance(model, ScoringModel)
        lm_only = not any(k == ITEM_TABLE or k.startswith("lm.") for k in state)
        load_trainable(model.lm if lm_only else model, path, state)
