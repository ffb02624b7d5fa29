"""The paper's generative head: one prompt per sample (text, item and session patches), the target's title
tokens as labels (PPT, PFT-I, PFT-S, SFT), and constrained beam search over catalog titles to rank.

Decoding internals: `beam` (batched constrained beam search) and `trie` (the catalog's title trie).
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
from patchrec.heads.generative.beam import rank_batch
from patchrec.heads.generative.trie import TitleTrie
from patchrec.model import attach_trainable, load_trainable
from patchrec.patching import Batch, CatalogTable, item_patches, prompt_batch
from patchrec.prompts import PromptPieces

if TYPE_CHECKING:
    from patchrec.runtime import Base, Runtime

__all__ = ["GenerativeHead", "GenerativeObjective", "GenerativeRanker", "batch_plan", "label_loss", "make_batch"]


def batch_plan(store: SequenceStore, cfg: TrainConfig) -> list[np.ndarray]:
    """Deterministic micro-batches of train sample indices (length-grouped within mega-batches)."""
    rng = np.random.default_rng(cfg.seed)
    base = store.indices("train")
    batches: list[np.ndarray] = []
    for _ in range(cfg.epochs):
        idx = rng.permutation(base)
        if cfg.max_samples:
            idx = idx[: cfg.max_samples]
        if cfg.length_grouped:
            lens = np.minimum(store.sample_pos[idx], cfg.max_history)
            mega = cfg.batch_size * 32
            idx = np.concatenate([c[np.argsort(-lens[s : s + mega], kind="stable")]
                                  for s, c in ((s, idx[s : s + mega]) for s in range(0, len(idx), mega))])
        chunks = [idx[s : s + cfg.batch_size] for s in range(0, len(idx), cfg.batch_size)]
        order = rng.permutation(len(chunks)) if cfg.length_grouped else np.arange(len(chunks))
        batches += [chunks[i] for i in order]
    return batches


def make_batch(store: SequenceStore, idx: np.ndarray, cfg: TrainConfig, catalog: CatalogTable, pieces: PromptPieces,
               embed, compress_prob: float, generator: torch.Generator) -> tuple[Batch, float]:
    """Assemble one micro-batch; PPT adds the all-text copy of each sample when `textual_copy`."""
    hists, targets = zip(*(store.sample(int(i)) for i in idx))
    return prompt_batch(hists, catalog, pieces, embed, cfg.layout, k=cfg.k, group=cfg.group, targets=targets,
                        compress_prob=compress_prob, generator=generator,
                        textual_copy=cfg.stage == "ppt" and cfg.textual_copy)


def label_loss(model, batch: Batch, reduction: str = "mean") -> Tensor:
    """Cross-entropy (mean or sum over label tokens) from logits at label positions only (not the full
    (B, S, V) logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).last_hidden_state
    b, t = torch.nonzero(batch.labels[:, 1:] != -100, as_tuple=True)  # predict token t+1 from position t
    logits = base.lm_head(hidden[b, t])  # (n_labels, V)
    return torch.nn.functional.cross_entropy(logits.float(), batch.labels[b, t + 1], reduction=reduction)


class GenerativeObjective:
    """The paper's head: one prompt per sample, title tokens of the target as labels (PPT, PFT, SFT)."""

    def __init__(self, store: SequenceStore, catalog: CatalogTable, pieces: PromptPieces, cfg: TrainConfig):
        self.store, self.catalog, self.pieces, self.cfg = store, catalog, pieces, cfg

    def plan(self) -> list[np.ndarray]:
        return batch_plan(self.store, self.cfg)

    def refresh(self, model) -> None:
        cat, dev = self.catalog, next(model.parameters()).device
        if cat.title_ids.device != dev:
            moved = cat.to(dev)
            cat.title_ids, cat.title_len, cat.patches = moved.title_ids, moved.title_len, moved.patches
        if cat.patches is None or self.cfg.finetune == "full":  # the table follows the embeddings
            with torch.no_grad():
                cat.patches = item_patches(model.get_input_embeddings(), cat.title_ids, cat.title_len)

    def loss(self, model, micro: np.ndarray, progress: float, generator: torch.Generator) -> Terms:
        p = progress if self.cfg.stage == "ppt" else 0.0  # the PPT curriculum: compress with probability p
        batch, share = make_batch(self.store, micro, self.cfg, self.catalog, self.pieces, model.get_input_embeddings(),
                                  p, generator)
        return Terms(label_loss(model, batch, "sum"), int((batch.labels[:, 1:] != -100).sum()), len(micro), share)

    def param_groups(self, model, cfg: TrainConfig) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]


class GenerativeRanker:
    """The paper's head: constrained beam search over catalog titles, `batch_size` users decoded together (one
    prefill per user, every user's beams in each forward step)."""

    def __init__(self, runtime: Runtime, num_beams: int = 20, length_penalty: float = 1.0,
                 bf16: bool | Literal["auto"] = "auto", batch_size: int = 32):
        self.runtime, self.num_beams, self.length_penalty, self.bf16 = runtime, num_beams, length_penalty, bf16
        self.batch_size = batch_size
        cat = runtime.base.catalog
        self.trie = TitleTrie.build(cat.title_ids, cat.title_len, runtime.base.pieces.end[0])

    def rank(self, hist: np.ndarray, top_k: int) -> Ranking:
        return self.rank_many([hist], top_k)[0]

    def prompt(self, hist: np.ndarray) -> Batch:
        """The generative head's prompt of one history (the newest `max_history` items) in the run's layout."""
        tcfg = self.runtime.spec.train
        hist = np.asarray(hist, dtype=np.int64)[-tcfg.max_history:]
        base = self.runtime.base
        return prompt_batch([hist], base.catalog, base.pieces, self.runtime.model.get_input_embeddings(),
                            self.runtime.layout, k=tcfg.k, group=tcfg.group)[0]

    @torch.no_grad()
    def rank_many(self, hists: list[np.ndarray], top_k: int) -> list[Ranking]:
        beams, out = max(self.num_beams, top_k), []
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=use_bf16(self.bf16)):
            for s in range(0, len(hists), self.batch_size):
                prompts = [self.prompt(h).inputs_embeds for h in hists[s : s + self.batch_size]]
                out += rank_batch(self.runtime.model, prompts, self.trie, beams, top_k, self.length_penalty)
        return out


class GenerativeHead:
    """The paper's head (see the module doc)."""

    name = "generative"

    def model(self, base: Base, cfg: TrainConfig, trained: bool) -> nn.Module:
        return attach_trainable(base.model, cfg, base.new_tokens) if trained else base.model

    def objective(self, store: SequenceStore, base: Base, cfg: TrainConfig) -> GenerativeObjective:
        return GenerativeObjective(store, base.catalog, base.pieces, cfg)

    def ranker(self, runtime: Runtime, num_beams: int, length_penalty: float, bf16: bool | Literal["auto"],
               mask_history: bool, batch_size: int | None) -> GenerativeRanker:
        return GenerativeRanker(runtime, num_beams, length_penalty, bf16, batch_size or 32)

    def max_history(self, cfg: TrainConfig) -> int:
        return cfg.max_history

    @torch.no_grad()
    def refresh(self, runtime: Runtime) -> None:
        """The catalog's item patches from the model's current input embeddings."""
        catalog = runtime.base.catalog
        catalog.patches = item_patches(runtime.model.get_input_embeddings(), catalog.title_ids, catalog.title_len)

    def load_init(self, model: nn.Module, path: Path, state: dict[str, Tensor]) -> None:
        load_trainable(model, path, state)
