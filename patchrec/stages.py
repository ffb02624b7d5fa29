"""Stage entry points used by the CLI and the Prefect tasks: paths in, run folders out.

A run folder holds config.json (the resolved configs), meta.json (results), trainable.pt (the LoRA
adapter and new token rows, or all weights for full fine-tuning), tokenizer/ and checkpoints/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from patchrec.config import EvalConfig, ModelConfig, TrainConfig
from patchrec.data.sequences import SequenceStore
from patchrec.evaluation.beam import Ranking, rank_one
from patchrec.evaluation.metrics import first_ranks, lenient_paper_ranks, masked_ranks, summarize_ranks
from patchrec.evaluation.trie import TitleTrie
from patchrec.hardware import device, use_bf16
from patchrec.io import atomic_path, file_digest, read_json, write_json
from patchrec.model import add_prompt_tokens, build_tiny, ensure_smollm2, load_causal_lm
from patchrec.patching import CatalogTable, assemble, item_patches, layout_kinds
from patchrec.prompts import PromptConfig, PromptPieces, render_pieces, tokenize_titles
from patchrec.training import StageResult, latest_checkpoint, load_trainable, train_stage, wrap_for_training

__all__ = ["Setup", "Ranker", "train", "evaluate", "build_catalog", "load_catalog", "HISTORY_BUCKETS",
           "by_history_length"]

HISTORY_BUCKETS = ((1, 10), (11, 20), (21, 50), (51, 100), (101, 10**9))


class Setup:
    """Model, tokenizer, prompt pieces and catalog table for one prepared data folder.

    `catalog_file` (written by `build_catalog`) skips tokenizing the titles again.
    """

    def __init__(self, data_dir: Path, mcfg: ModelConfig, prompt: PromptConfig, catalog_file: Path | None = None):
        self.titles = pd.read_parquet(Path(data_dir) / "items.parquet").sort_values("item_idx")
        if not np.array_equal(self.titles.item_idx.to_numpy(), np.arange(len(self.titles))):
            raise ValueError(f"{data_dir}/items.parquet: item_idx must be 0..N-1 for the catalog table")
        titles = self.titles.title.tolist()
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


def train(data_dir: Path, out_dir: Path, tcfg: TrainConfig, mcfg: ModelConfig, prompt: PromptConfig,
          init_from: Path | None = None, progress: bool = True, catalog_file: Path | None = None) -> dict[str, Any]:
    """Train one stage into `out_dir` (resuming if it holds checkpoints); PFT starts from `init_from` (PPT).

    A finished run with the same configs is not trained again: its meta record is returned.
    """
    out_dir = Path(out_dir)
    config = {"train": tcfg.model_dump(mode="json"), "model": mcfg.model_dump(mode="json"),
              "prompt": prompt.model_dump(mode="json"), "data_dir": str(data_dir),
              "init_from": str(init_from) if init_from else None}
    if (out_dir / "trainable.pt").is_file() and (out_dir / "config.json").is_file():
        if read_json(out_dir / "config.json") == config:
            return read_json(out_dir / "meta.json")
    s = Setup(data_dir, mcfg, prompt, catalog_file)
    torch.manual_seed(tcfg.seed)
    model = wrap_for_training(s.model, tcfg, s.new_tokens)
    if init_from is not None and latest_checkpoint(out_dir / "checkpoints") is None:
        load_trainable(model, Path(init_from) / "trainable.pt")
    store = SequenceStore(data_dir, max_history=tcfg.max_history)
    result: StageResult = train_stage(model, store, s.catalog, s.pieces, tcfg, out_dir, progress=progress)
    shutil.copyfile(latest_checkpoint(out_dir / "checkpoints") / "trainable.pt", out_dir / "trainable.tmp")
    (out_dir / "trainable.tmp").replace(out_dir / "trainable.pt")
    s.tok.save_pretrained(out_dir / "tokenizer")
    meta = {**result.to_dict(), "data_dir": str(data_dir), "init_from": config["init_from"]}
    write_json(meta, out_dir / "meta.json")
    write_json(config, out_dir / "config.json")  # last: marks the run finished
    return meta


def _bucket(n: int) -> str:
    lo, hi = next(b for b in HISTORY_BUCKETS if b[0] <= n <= b[1])
    return f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"


def by_history_length(ranks: np.ndarray, hist_len: np.ndarray) -> dict[str, dict[str, float]]:
    """HR/NDCG@{10,20} and the sample count `n` per history-length bucket (HISTORY_BUCKETS), in first-seen order."""
    ranks = np.asarray(ranks)
    buckets = np.array([_bucket(int(n)) for n in hist_len])
    out: dict[str, dict[str, float]] = {}
    for b in dict.fromkeys(buckets):
        m = buckets == b
        out[b] = {"n": int(m.sum()), **summarize_ranks(ranks[m], ks=(10, 20))}
    return out


class Ranker:
    """A trained run ready to rank: model (LoRA loaded), catalog patches and the title trie."""

    def __init__(self, data_dir: Path, run_dir: Path | None, mcfg: ModelConfig | None = None,
                 prompt: PromptConfig | None = None, tcfg: TrainConfig | None = None,
                 catalog_file: Path | None = None):
        if run_dir is not None and (Path(run_dir) / "config.json").is_file():
            saved = read_json(Path(run_dir) / "config.json")
            mcfg = mcfg or ModelConfig.model_validate(saved["model"])
            prompt = prompt or PromptConfig.model_validate(saved["prompt"])
            tcfg = tcfg or TrainConfig.model_validate(saved["train"])
        if mcfg is None or prompt is None or tcfg is None:
            raise ValueError("ranking needs a finished run folder, or model, prompt and train configs")
        self.setup = s = Setup(data_dir, mcfg, prompt, catalog_file)
        self.tcfg, self.prompt, self.mcfg = tcfg, prompt, mcfg
        model = s.model
        if run_dir is not None:
            model = wrap_for_training(model, tcfg, s.new_tokens)
            load_trainable(model, Path(run_dir) / "trainable.pt")
        self.model = model.eval()
        self.embed = model.get_input_embeddings()
        with torch.no_grad():
            s.catalog.patches = item_patches(self.embed, s.catalog.title_ids, s.catalog.title_len)
        self.trie = TitleTrie.build(s.catalog.title_ids, s.catalog.title_len, s.pieces.end[0])
        self.layout = "text" if tcfg.layout == "mixed" else tcfg.layout

    @torch.no_grad()
    def rank(self, hist: np.ndarray, num_beams: int = 20, top_k: int = 20, length_penalty: float = 1.0,
             bf16: bool | str = "auto") -> Ranking:
        """Top-k catalog items (indices and beam scores) after the history `hist` (item indices, oldest first)."""
        hist = np.asarray(hist, dtype=np.int64)[-self.tcfg.max_history:]
        kinds, groups = layout_kinds(torch.tensor([len(hist)]), self.layout, k=self.tcfg.k, group=self.tcfg.group)
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=use_bf16(bf16)):
            batch = assemble(torch.from_numpy(hist), torch.tensor([0, len(hist)]), None, kinds, groups,
                             self.setup.catalog, self.setup.pieces, self.embed)
            return rank_one(self.model, batch.inputs_embeds, self.trie, num_beams, top_k, length_penalty)


def evaluate(data_dir: Path, run_dir: Path | None, out_dir: Path, ecfg: EvalConfig, mcfg: ModelConfig | None = None,
             prompt: PromptConfig | None = None, tcfg: TrainConfig | None = None, progress: bool = True,
             catalog_file: Path | None = None) -> dict[str, Any]:
    """Rank catalog items for a deterministic sample of a split with the run's layout; write eval.json.

    Model, prompt and layout default to those recorded in `run_dir/config.json`.
    """
    ranker = Ranker(data_dir, run_dir, mcfg, prompt, tcfg, catalog_file)
    store = SequenceStore(data_dir, max_history=ranker.tcfg.max_history)
    idx = store.indices(ecfg.split)
    if ecfg.max_samples and len(idx) > ecfg.max_samples:
        idx = np.sort(np.random.default_rng(ecfg.seed).choice(idx, ecfg.max_samples, replace=False))
    ranked, targets, hist_len, users, hists, tokens = [], [], [], [], [], []
    iterator = idx
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(idx, desc=f"rank {ecfg.split}", unit="user")
    t0 = time.perf_counter()
    for i in iterator:
        hist, target = store.sample(int(i))
        r = ranker.rank(hist, ecfg.num_beams, ecfg.top_k, ecfg.length_penalty, ecfg.bf16)
        ranked.append(r.items)
        tokens.append(r.prompt_tokens)
        hists.append(hist)
        targets.append(target)
        hist_len.append(len(hist))
        users.append(int(store.sample_user[i]))
    seconds = time.perf_counter() - t0
    ranks = first_ranks(ranked, targets)
    titles = ranker.setup.titles.title.tolist()
    lenient = lenient_paper_ranks([[titles[j] for j in lst] for lst in ranked], [titles[t] for t in targets])
    metrics = summarize_ranks(ranks, np.asarray(users))
    masked = masked_ranks(ranked, hists, targets, ecfg.top_k)
    metrics.update({f"masked_{k}": v for k, v in summarize_ranks(masked, np.asarray(users)).items()})
    metrics.update({f"paper_lenient_hr_{k}": float(np.mean((lenient >= 0) & (lenient < k))) for k in (5, 10, 20)})
    by_len = by_history_length(ranks, np.asarray(hist_len))
    result = {"split": ecfg.split, "samples": len(idx), "layout": ranker.layout,
              "users_per_s": len(idx) / seconds if seconds else 0.0,
              "prompt_tokens_mean": float(np.mean(tokens)) if tokens else 0.0, "metrics": metrics, "by_history_length": by_len,
              "run_dir": str(run_dir) if run_dir else None}
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "ranks.parquet") as tmp:
        pd.DataFrame({"sample": idx, "user_idx": users, "target": targets, "rank": ranks, "history_len": hist_len,
                      "ranked": ranked}).to_parquet(tmp)
    write_json(result, out_dir / "eval.json")
    return result


PROMPT_LAYOUTS = {"SFT (all text)": ("text", 5, 5), "PFT-I (k=5)": ("item", 5, 5), "PFT-S (G=5)": ("session", 5, 5),
                  "PFT-S (G=20)": ("session", 5, 20)}


def build_catalog(data_dir: Path, out_dir: Path, mcfg: ModelConfig, prompt: PromptConfig, max_history: int = 100,
                  split: str = "val", max_samples: int = 512) -> dict[str, Any]:
    """Write the catalog patch table (title token ids + base item patches) and prompt-length statistics.

    `catalog.safetensors` is written before `catalog.json`, which marks the folder complete.
    """
    from safetensors.torch import save_file

    s = Setup(data_dir, mcfg, prompt)
    embed = s.model.get_input_embeddings()
    with torch.no_grad():
        s.catalog.patches = item_patches(embed, s.catalog.title_ids, s.catalog.title_len)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "catalog.safetensors") as tmp:
        save_file({"title_ids": s.catalog.title_ids.cpu().contiguous(), "title_len": s.catalog.title_len.cpu(),
                   "patches": s.catalog.patches.float().cpu().contiguous()}, str(tmp))
    store = SequenceStore(data_dir, max_history=max_history)
    idx = store.indices(split)[:max_samples]
    tokens: dict[str, float] = {}
    with torch.no_grad():
        for name, (layout, k, group) in PROMPT_LAYOUTS.items():
            hists = [store.sample(int(i))[0] for i in idx]
            lengths = torch.tensor([len(h) for h in hists])
            kinds, groups = layout_kinds(lengths, layout, k=k, group=group)
            flat = torch.from_numpy(np.concatenate(hists).astype(np.int64)) if hists else torch.zeros(0, dtype=torch.long)
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
            batch = assemble(flat, offsets, None, kinds, groups, s.catalog, s.pieces, embed)
            tokens[name] = float(batch.lengths.float().mean()) if len(idx) else 0.0
    lens = s.catalog.title_len.float()
    info = {"items": int(len(lens)), "title_tokens_mean": float(lens.mean()), "title_tokens_max": int(lens.max()),
            "hidden_size": int(s.catalog.patches.shape[1]), "prompt_tokens": tokens, "prompt_split": split,
            "prompt_samples": int(len(idx)), "max_history": max_history,
            "digest": file_digest(out_dir / "catalog.safetensors")[1]}
    write_json(info, out_dir / "catalog.json")
    return info


def load_catalog(path: Path, expect_items: int) -> CatalogTable:
    """Title token ids of a `build_catalog` file (patches are recomputed from the model being used)."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    if t["title_ids"].shape[0] != expect_items:
        raise ValueError(f"{path} holds {t['title_ids'].shape[0]} items but the data has {expect_items}: "
                         "rebuild the catalog for this data")
    return CatalogTable(t["title_ids"], t["title_len"])
