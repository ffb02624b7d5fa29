"""The catalog stage: title token ids and item patches for every item, prompt lengths by layout."""

from __future__ import annotations

from patchrec.catalog import CATALOG_FILE, PROMPT_LAYOUTS, build_catalog_table
from patchrec.config import ModelConfig
from patchrec.prompts import PromptConfig
from patchrec.runtime import load_catalog, read_items


def test_catalog_table_covers_every_item_and_patches_shrink_prompts(data, tmp_path):
    out = build_catalog_table(data, tmp_path, ModelConfig(base="tiny", tiny_hidden=16, tiny_layers=1,
                                                          cache_dir=tmp_path / "m"), PromptConfig(), max_history=50)
    items = read_items(data / "items.parquet")
    table = load_catalog(tmp_path / CATALOG_FILE, expect_items=len(items))
    assert table.title_ids.shape[0] == len(items) == out.metrics["items"]
    assert int(table.title_len.min()) >= 1 and out.info["title_tokens_max"] == int(table.title_len.max())
    tokens = out.info["prompt_tokens"]
    assert set(tokens) == set(PROMPT_LAYOUTS) and out.info["prompt_samples"] > 0
    assert tokens["PFT-S (G=5)"] < tokens["PFT-I (k=5)"] < tokens["SFT (all text)"]
