"""The catalog stage: title token ids and base item patches of every item, and tokens per prompt by layout."""

from __future__ import annotations

from pathlib import Path

import torch

from patchrec.config import ModelConfig
from patchrec.contract import StageOutput
from patchrec.data.sequences import SequenceStore
from patchrec.io import atomic_path, file_digest
from patchrec.patching import item_patches, prompt_batch
from patchrec.prompts import PromptConfig
from patchrec.runtime import Base, read_items

__all__ = ["CATALOG_FILE", "PROMPT_LAYOUTS", "build_catalog_table"]

CATALOG_FILE = "catalog.safetensors"
PROMPT_LAYOUTS = {"SFT (all text)": ("text", 5, 5), "PFT-I (k=5)": ("item", 5, 5), "PFT-S (G=5)": ("session", 5, 5),
                  "PFT-S (G=20)": ("session", 5, 20)}


def build_catalog_table(data_dir: Path, out_dir: Path, mcfg: ModelConfig, prompt: PromptConfig,
                        max_history: int = 100, split: str = "val", max_samples: int = 512) -> StageOutput:
    """Write `catalog.safetensors` (title token ids, base item patches) and measure prompt lengths.

    Args:
        data_dir: a prepared data folder.
        out_dir: the stage folder.
        mcfg: the base model (its tokenizer and embeddings define the table).
        prompt: system and instruction text.
        max_history: history cap of the measured prompts.
        split: the split whose first `max_samples` histories are measured.
        max_samples: how many histories to measure.

    Returns:
        Metrics (items, title tokens, mean prompt tokens per layout) and facts for the manifest.
    """
    from safetensors.torch import save_file

    items = read_items(Path(data_dir) / "items.parquet")
    base = Base(items.title.astype(str).tolist(), mcfg, prompt)
    embed = base.model.get_input_embeddings()
    cat = base.catalog
    with torch.no_grad():
        cat.patches = item_patches(embed, cat.title_ids, cat.title_len)
    with atomic_path(Path(out_dir) / CATALOG_FILE) as tmp:
        save_file({"title_ids": cat.title_ids.cpu().contiguous(), "title_len": cat.title_len.cpu(),
                   "patches": cat.patches.float().cpu().contiguous()}, str(tmp))
    store = SequenceStore(data_dir, max_history=max_history)
    idx = store.indices(split)[:max_samples]
    hists = [store.sample(int(i))[0] for i in idx]
    tokens: dict[str, float] = {name: 0.0 for name in PROMPT_LAYOUTS}  # an empty split: no prompt to measure
    with torch.no_grad():
        for name, (layout, k, group) in PROMPT_LAYOUTS.items() if hists else ():
            batch, _ = prompt_batch(hists, cat, base.pieces, embed, layout, k=k, group=group)
            tokens[name] = float(batch.lengths.float().mean())
    lens = cat.title_len.float()
    return StageOutput(
        metrics={"items": float(len(lens)), "title_tokens_mean": float(lens.mean())},
        info={"title_tokens_max": int(lens.max()), "hidden_size": int(cat.patches.shape[1]), "prompt_tokens": tokens,
              "prompt_split": split, "prompt_samples": int(len(idx)), "max_history": max_history,
              "digest": file_digest(Path(out_dir) / CATALOG_FILE)[1]})
