"""A model ready to use: base LM, trained weights, tokenizer, prompt pieces and the catalog table.

Training, evaluation and the served model all load through here; it imports nothing from training. The
run's `head` (`patchrec.heads`) builds the model and the ranker (`Ranker`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from patchrec.config import ModelConfig, TrainConfig
from patchrec.contract import read_manifest
from patchrec.hardware import device
from patchrec.heads import Ranker, head
from patchrec.model import (
    add_prompt_tokens,
    build_tiny,
    ensure_smollm2,
    load_causal_lm,
    load_trainable,
)
from patchrec.patching import CatalogTable
from patchrec.prompts import PromptConfig, PromptPieces, render_pieces, tokenize_titles

__all__ = ["Base", "RunSpec", "Runtime", "load_catalog", "read_items"]


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
        model = head(spec.train.head).model(base, spec.train, trained=trainable is not None)
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
        return head(self.spec.train.head).max_history(self.spec.train)

    def refresh(self) -> None:
        """Recompute what the head derives from the weights (the generative head's catalog patches)."""
        head(self.spec.train.head).refresh(self)

    def ranker(self, num_beams: int = 20, length_penalty: float = 1.0, bf16: bool | Literal["auto"] = "auto",
               mask_history: bool = False, batch_size: int | None = None) -> Ranker:
        """The run's ranking head (beam settings apply to the generative head, `mask_history` to scoring);
        `batch_size`: users ranked together (default 64 for scoring, 32 for beam search)."""
        return head(self.spec.train.head).ranker(self, num_beams, length_penalty, bf16, mask_history, batch_size)
