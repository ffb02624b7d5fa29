"""A model ready to use: base LM, trained weights, tokenizer, prompt pieces and the catalog table.

Training, evaluation and the served model all load through here; it imports nothing from training.
Ranking sits behind the `Ranker` interface, picked by the run's `head`: `GenerativeRanker` is the
paper's head (constrained beam search over catalog titles), `ScoringRanker` the catalog scoring head
(one forward pass per batch of users, exact top-k by item id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from patchrec.config import ModelConfig, TrainConfig
from patchrec.contract import read_manifest
from patchrec.evaluation.beam import Ranking, rank_batch
from patchrec.evaluation.trie import TitleTrie
from patchrec.hardware import device, use_bf16
from patchrec.model import (
    add_prompt_tokens,
    attach_trainable,
    build_tiny,
    ensure_smollm2,
    load_causal_lm,
    load_trainable,
)
from patchrec.patching import Batch, CatalogTable, assemble, item_patches, layout_kinds
from patchrec.prompts import PromptConfig, PromptPieces, render_pieces, tokenize_titles
from patchrec.scoring import Layout, assemble_rows, history_row, scoring_model

__all__ = ["Base", "GenerativeRanker", "Ranker", "Ranking", "RunSpec", "Runtime", "ScoringRanker", "load_catalog",
           "read_items"]


class RunSpec(BaseModel):
    """The configs a trained run was made with; recorded in its manifest and in bundles."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    train: TrainConfig
    model: ModelConfig
    prompt: PromptConfig = PromptConfig()

    @classmethod
    def of_run(cls, run_dir: Path) -> RunSpec:
        """The spec of a finished training folder (its manifest's config)."""
        return cls.model_validate(read_manifest(run_dir).config)


def read_items(path: Path) -> pd.DataFrame:
    """`items.parquet` sorted by item_idx, which must be 0..N-1 (the catalog table's row order)."""
    items = pd.read_parquet(path).sort_values("item_idx").reset_index(drop=True)
    if not np.array_equal(items.item_idx.to_numpy(), np.arange(len(items))):
        raise ValueError(f"{path}: item_idx must be 0..N-1 for the catalog table")
    return items


def load_catalog(path: Path, expect_items: int) -> CatalogTable:
    """Title token ids of a catalog stage's file (patches are recomputed from the model being used)."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    if t["title_ids"].shape[0] != expect_items:
        raise ValueError(f"{path} holds {t['title_ids'].shape[0]} items but the data has {expect_items}: "
                         "rebuild the catalog for this data")
    return CatalogTable(t["title_ids"], t["title_len"])


class Base:
    """The base model with the prompt tokens added, its tokenizer, prompt pieces and the catalog table.

    Args:
        titles: catalog titles in item-index order.
        mcfg: which base model.
        prompt: system and instruction text.
        catalog_file: a catalog stage's `catalog.safetensors`; skips tokenizing the titles again.
    """

    def __init__(self, titles: list[str], mcfg: ModelConfig, prompt: PromptConfig, catalog_file: Path | None = None):
        if mcfg.base == "tiny":
            self.model, self.tok = build_tiny(titles + [prompt.system, prompt.instruction], hidden=mcfg.tiny_hidden,
                                              layers=mcfg.tiny_layers)
        else:
            path = ensure_smollm2(mcfg.cache_dir) if mcfg.base == "smollm2" else Path(mcfg.base)
            self.model, self.tok = load_causal_lm(path)
        ids = add_prompt_tokens(self.model, self.tok)
        self.model.to(device())
        self.new_tokens = [ids["seq_start"], ids["item_sep"], ids["seq_end"]]
        self.pieces: PromptPieces = render_pieces(self.tok, prompt, ids)
        if catalog_file is not None:
            self.catalog = load_catalog(catalog_file, expect_items=len(titles)).to(device())
        else:
            self.catalog = CatalogTable.from_token_lists(tokenize_titles(self.tok, titles)).to(device())


class Ranker(Protocol):
    """A ranking head: the top-k catalog items after a history."""

    def rank(self, hist: np.ndarray, top_k: int) -> Ranking:
        """Top-k item indices (best first) and their scores after `hist` (item indices, oldest first)."""
        ...

    def rank_many(self, hists: list[np.ndarray], top_k: int) -> list[Ranking]:
        """`rank` for several users (batched where the head allows it)."""
        ...


class Runtime:
    """A model (trained or being trained) ready to build prompts and rank.

    Args:
        items: the catalog (`read_items`).
        spec: the run's configs (`spec.train.head` picks the ranking head).
        base: the base model pieces (tokenizer, prompt pieces, catalog table).
        model: the model to rank with: `base.model` with trainable weights attached, or a `ScoringModel`.
    """

    def __init__(self, items: pd.DataFrame, spec: RunSpec, base: Base, model):
        self.items, self.spec, self.base, self.model = items, spec, base, model
        self.layout = "text" if spec.train.layout == "mixed" else spec.train.layout
        self.refresh()

    @classmethod
    def load(cls, items: pd.DataFrame, spec: RunSpec, trainable: Path | None = None,
             catalog_file: Path | None = None) -> Runtime:
        """Load the base model and, when given, a run's `trainable.pt` (None ranks with the bare base model)."""
        base = Base(items.title.astype(str).tolist(), spec.model, spec.prompt, catalog_file)
        if spec.train.head == "scoring":
            model = scoring_model(base.model, spec.train, base.new_tokens, base.catalog)
        elif trainable is not None:
            model = attach_trainable(base.model, spec.train, base.new_tokens)
        else:
            model = base.model
        if trainable is not None:
            load_trainable(model, trainable)
        return cls(items, spec, base, model.eval())

    @classmethod
    def of_run(cls, data_dir: Path, run_dir: Path, catalog_file: Path | None = None) -> Runtime:
        """A finished training folder on the catalog of a prepared data folder."""
        return cls.load(read_items(Path(data_dir) / "items.parquet"), RunSpec.of_run(run_dir),
                        Path(run_dir) / "trainable.pt", catalog_file)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_history(self) -> int:
        """History items a ranking uses (the newest ones)."""
        tcfg = self.spec.train
        return Layout.of(tcfg).max_history if tcfg.head == "scoring" else tcfg.max_history

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the catalog's item patches from the model's current embeddings (generative head)."""
        if self.spec.train.head == "generative":
            catalog = self.base.catalog
            catalog.patches = item_patches(self.model.get_input_embeddings(), catalog.title_ids, catalog.title_len)

    def prompt(self, hist: np.ndarray) -> Batch:
        """The generative head's prompt of one history (the newest `max_history` items) in the run's layout."""
        hist = np.asarray(hist, dtype=np.int64)[-self.spec.train.max_history:]
        tcfg = self.spec.train
        kinds, groups = layout_kinds(torch.tensor([len(hist)]), self.layout, k=tcfg.k, group=tcfg.group)
        return assemble(torch.from_numpy(hist), torch.tensor([0, len(hist)]), None, kinds, groups,
                        self.base.catalog, self.base.pieces, self.model.get_input_embeddings())

    def ranker(self, num_beams: int = 20, length_penalty: float = 1.0, bf16: bool | Literal["auto"] = "auto",
               mask_history: bool = False, batch_size: int | None = None) -> Ranker:
        """The run's ranking head (beam settings apply to the generative head, `mask_history` to scoring);
        `batch_size`: users ranked together (default 64 for scoring, 32 for beam search)."""
        if self.spec.train.head == "scoring":
            return ScoringRanker(self, bf16, mask_history, batch_size or 64)
        return GenerativeRanker(self, num_beams, length_penalty, bf16, batch_size or 32)


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

    @torch.no_grad()
    def rank_many(self, hists: list[np.ndarray], top_k: int) -> list[Ranking]:
        beams, out = max(self.num_beams, top_k), []
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=use_bf16(self.bf16)):
            for s in range(0, len(hists), self.batch_size):
                prompts = [self.runtime.prompt(h).inputs_embeds for h in hists[s : s + self.batch_size]]
                out += rank_batch(self.runtime.model, prompts, self.trie, beams, top_k, self.length_penalty)
        return out


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
        self.layout = Layout.of(runtime.spec.train)

    def rank(self, hist: np.ndarray, top_k: int) -> Ranking:
        return self.rank_many([hist], top_k)[0]

    @torch.no_grad()
    def scores(self, hists: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """(B, N) fp32 scores of every catalog item after each history, and each row's positions."""
        model = self.runtime.model
        rows = [history_row(h, self.layout) for h in hists]
        bf16 = use_bf16(self.bf16) or model.bf16_weights
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=bf16):
            batch = assemble_rows(rows, model.item_vectors(), model.start(), self.layout.group)
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
