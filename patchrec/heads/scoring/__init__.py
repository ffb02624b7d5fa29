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
    ITEM_BIAS,
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

__all__ = ["CATALOG_CHUNK", "ScoringHead", "ScoringObjective", "ScoringRanker"]

CATALOG_CHUNK = 65_536  # catalog items a ranking scores at a time


class ScoringObjective:
    """The catalog scoring head: windows of a user's sequence, every train target of a window in one pass."""

    def __init__(self, store: SequenceStore, cfg: TrainConfig):
        self.store, self.cfg, self.layout = store, cfg, Layout.of(cfg)
        self.windows, self.is_target = plan_windows(store, self.layout, prefix=cfg.targets == "prefix")
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
        """Zero the correction's (and the bias') gradient rows of items that are never a train target: their Adam
        moments stay zero, so they never move (weight decay of a zero row is zero too) and keep their title vector
        and a zero bias. The hook multiplies by a 0/1 mask, so registering it again (a second `fit` of the same
        model) changes nothing."""
        trained = torch.zeros(model.patches.shape[0], device=model.patches.device)
        trained[torch.from_numpy(self.store.flat[self.is_target].astype(np.int64)).to(trained.device)] = 1
        if model.item_delta is not None:
            model.item_delta.register_hook(lambda g: g * trained.to(g.dtype)[:, None])
        if model.item_bias is not None:
            model.item_bias.register_hook(lambda g: g * trained.to(g.dtype))

    def loss(self, model, micro: np.ndarray, progress: float, generator: torch.Generator) -> Terms:
        rows = window_rows(self.store, self.windows, micro, self.is_target, model.item_vectors(), model.start(),
                           self.layout, self.cfg.pack)
        n = len(rows.targets)
        loss = catalog_loss(model, rows, self.cfg.negatives, generator, "sum", self.cfg.mask_same_title)
        return Terms(loss, n, n, rows.compressed)

    def param_groups(self, model, cfg: TrainConfig) -> list[dict[str, Any]]:
        """The per-item correction and bias get `item_lr` and `item_decay` (and, with `cold_keep_title`, no update
        of the rows of never-target items); the rest the stage's settings."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        items = [p for n, p in named if n in (ITEM_TABLE, ITEM_BIAS)]
        if items and cfg.cold_keep_title:
            self._hold_cold(model)
        groups: list[dict[str, Any]] = [{"params": [p for n, p in named if n not in (ITEM_TABLE, ITEM_BIAS)]}]
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
        chunk: catalog items scored at a time (memory stays batch x chunk for any catalog size).
    """

    def __init__(self, runtime: Runtime, bf16: bool | Literal["auto"] = "auto", mask_history: bool = False,
                 batch_size: int = 64, chunk: int = CATALOG_CHUNK):
        self.runtime, self.bf16, self.mask_history, self.batch_size = runtime, bf16, mask_history, batch_size
        self.chunk = chunk
        self.layout, self.pack = Layout.of(runtime.spec.train), runtime.spec.train.pack

    def rank(self, hist: np.ndarray, top_k: int) -> Ranking:
        return self.rank_many([hist], top_k)[0]

    @torch.no_grad()
    def states(self, hists: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The LM pass of a batch of histories: (B, D) last hidden states, (B,) newest items, positions per row."""
        model = self.runtime.model
        rows = [history_row(h, self.layout) for h in hists]
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=self._bf16()):
            batch = assemble_rows(rows, model.item_vectors(), model.start(), self.layout.group, self.pack)
            h = model.states(batch, batch.last_at)
        return h, batch.prev, batch.lengths.tolist()

    def _bf16(self) -> bool:
        return use_bf16(self.bf16) or self.runtime.model.bf16_weights

    @torch.no_grad()
    def top_k(self, h: torch.Tensor, prev: torch.Tensor, hists: list[np.ndarray], k: int,
              out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-`k` (values, item indices) over the whole catalog, scored `chunk` items at a time and merged,
        so memory is (B, chunk) whatever the catalog's size; with `mask_history`, history items are never chosen.
        `out`: the model's `output_vectors()`, when the caller ranks several batches with the same ones."""
        model = self.runtime.model
        n_items = model.patches.shape[0]
        out = model.output_vectors() if out is None else out
        best_v = h.new_full((h.shape[0], 0), float("-inf"), dtype=torch.float32)
        best_i = torch.zeros((h.shape[0], 0), dtype=torch.long, device=h.device)
        seen = [torch.as_tensor(np.asarray(x, dtype=np.int64), device=h.device) for x in hists] if self.mask_history \
            else None
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=self._bf16()):
            for c0 in range(0, n_items, self.chunk):
                part = slice(c0, min(c0 + self.chunk, n_items))
                scores = model.logits(h, prev, part, out=out).float()
                if seen is not None:
                    for b, items in enumerate(seen):
                        inside = items[(items >= part.start) & (items < part.stop)] - part.start
                        scores[b, inside] = float("-inf")
                top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                best_v = torch.cat([best_v, top.values], dim=1)
                best_i = torch.cat([best_i, top.indices + c0], dim=1)
                if best_v.shape[1] > k:
                    order = torch.topk(best_v, k, dim=1)
                    best_v, best_i = order.values, best_i.gather(1, order.indices)
        return best_v, best_i

    def rank_many(self, hists: list[np.ndarray], top_k: int) -> list[Ranking]:
        out: list[Ranking] = []
        with torch.no_grad():  # the catalog's output vectors once for every batch (N x D: large catalogs)
            vectors = self.runtime.model.output_vectors()
        for s in range(0, len(hists), self.batch_size):
            part = hists[s : s + self.batch_size]
            h, prev, lengths = self.states(part)
            values, indices = self.top_k(h, prev, part, top_k, vectors)
            out += [Ranking(i.tolist(), v.tolist(), n) for i, v, n in zip(indices, values, lengths, strict=True)]
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
