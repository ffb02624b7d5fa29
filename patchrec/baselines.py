"""ID-based baselines on the same prepared data, splits and metric code as the LLM path.

- popularity: items ranked by how often they are a training target (ties by item index).
- SASRec (Kang & McAuley, 2018) with a full-softmax cross-entropy over the catalog (as in later
  re-evaluations, e.g. Klenitskiy & Vasilev 2023): causal self-attention over item ids, trained on each
  user's training prefix (next item at every position), early stopping on validation NDCG@10.

Both write ranks.parquet + eval.json like `evaluation.split.evaluate_split`, so reports treat every model alike.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from patchrec import stopping
from patchrec.config import SASRecConfig
from patchrec.data.sequences import SequenceStore, sample_split
from patchrec.evaluation.metrics import first_ranks, masked_ranks, summarize_ranks
from patchrec.evaluation.result import EvalResult, write_result

__all__ = ["SASRec", "evaluate_baseline", "popularity_scores", "rank_split", "train_sasrec"]


class SASRec(nn.Module):
    """Item + position embeddings, pre-norm causal Transformer blocks; logits = h · item embeddings."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.pad = n_items  # index n_items is padding
        self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=n_items)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        block = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, L, D) hidden states."""
        L = seq.shape[1]
        real = (seq != self.pad).unsqueeze(-1)  # padded positions are zero vectors (as in the original SASRec)
        x = (self.items(seq) * math.sqrt(self.items.embedding_dim) + self.pos(torch.arange(L, device=seq.device)))
        causal = nn.Transformer.generate_square_subsequent_mask(L, device=seq.device)
        h = self.encoder(self.drop(x * real), mask=causal, is_causal=True)
        return self.norm(h) * real

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, n_items) scores of the next item after the last position."""
        return self.forward(seq)[:, -1] @ self.items.weight[:-1].T


def _left_pad(rows: list[np.ndarray], length: int, pad: int) -> torch.Tensor:
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-length:]
        if len(r):
            out[i, -len(r):] = r
    return torch.from_numpy(out)


def _train_prefixes(store: SequenceStore) -> list[np.ndarray]:
    """Each user's items up to and including their last training target."""
    train = store.indices("train")
    last: dict[int, int] = {}
    for u, p in zip(store.sample_user[train], store.sample_pos[train]):
        last[int(u)] = max(last.get(int(u), -1), int(p))
    out = []
    for u, p in last.items():
        start = store.offsets[store.row_of_user[u]]
        out.append(store.flat[start : start + p + 1].astype(np.int64))
    return out


def popularity_scores(store: SequenceStore, n_items: int) -> np.ndarray:
    """Training-target counts per item."""
    train = store.indices("train")
    targets = [store.sample(int(i))[1] for i in train]
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=n_items).astype(np.float64)


def rank_split(score_fn, store: SequenceStore, idx: np.ndarray, top_k: int = 20,
               batch: int = 256) -> tuple[list[list[int]], list[np.ndarray], list[int]]:
    """Top (top_k + history length) items per sample, so that masking the history still leaves top_k."""
    ranked, hists, targets = [], [], []
    for s in range(0, len(idx), batch):
        rows = [store.sample(int(i)) for i in idx[s : s + batch]]
        scores = score_fn([h for h, _ in rows])  # (b, n_items) tensor
        extra = max(len(h) for h, _ in rows)
        top = torch.topk(scores, min(top_k + extra, scores.shape[1]), dim=1).indices.tolist()
        for (h, t), lst in zip(rows, top):
            ranked.append(lst)
            hists.append(h)
            targets.append(t)
    return ranked, hists, targets


def _metrics(plain: np.ndarray, masked: np.ndarray, users: np.ndarray) -> dict[str, float]:
    out = summarize_ranks(plain, users)
    out.update({f"masked_{k}": v for k, v in summarize_ranks(masked, users).items()})
    return out


def train_sasrec(store: SequenceStore, n_items: int, cfg: SASRecConfig, progress: bool = True,
                 device: str = "cpu") -> tuple[SASRec, dict[str, Any]]:
    """Full-softmax SASRec with early stopping on validation NDCG@10; returns the best model and its log.

    With `cfg.max_seconds` the epoch that passes the budget ends at that batch, is validated, and is the last
    (`stopped_by: "budget"`), so the baseline gets the same wall-clock budget as an LLM variant."""
    torch.manual_seed(cfg.seed)
    model = SASRec(n_items, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seqs = _train_prefixes(store)
    val = store.indices("val")
    if cfg.val_samples and len(val) > cfg.val_samples:
        val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.val_samples, replace=False))
    rng = np.random.default_rng(cfg.seed)
    best, best_state, bad, log = -1.0, None, 0, []
    stopped_by = "max_epochs"
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_epochs, desc="sasrec", unit="epoch")
    with stopping.stop_on_signals():
        for epoch in range(cfg.max_epochs):
            model.train()
            order = rng.permutation(len(seqs))
            total, n = 0.0, 0
            for s in range(0, len(order), cfg.batch_size):
                rows = [seqs[i] for i in order[s : s + cfg.batch_size]]
                batch = _left_pad(rows, cfg.max_len + 1, model.pad).to(device)
                inp, tgt = batch[:, :-1], batch[:, 1:]
                keep = (tgt != model.pad) & (inp != model.pad)
                h = model(inp)[keep]
                loss = nn.functional.cross_entropy(h @ model.items.weight[:-1].T, tgt[keep])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * int(keep.sum())
                n += int(keep.sum())
                if signum := stopping.requested():  # SIGTERM / SIGINT: stop within a batch (a rerun trains again)
                    if bar is not None:
                        bar.close()
                    raise stopping.Stopped(f"SASRec stopped by {signal.Signals(signum).name} in epoch {epoch + 1}; "
                                           "nothing of it is kept (a rerun trains it again)", signum)
                if cfg.max_seconds is not None and time.perf_counter() - t0 >= cfg.max_seconds:
                    stopped_by = "budget"
                    break
            entry = {"epoch": epoch + 1, "loss": total / max(n, 1), "seconds": time.perf_counter() - t0}
            if (epoch + 1) % cfg.eval_every == 0 or stopped_by == "budget":
                model.eval()
                with torch.no_grad():
                    ranked, hists, targets = rank_split(
                        lambda hs: model.scores(_left_pad(hs, cfg.max_len, model.pad).to(device)), store, val)
                ndcg = summarize_ranks(first_ranks([r[:20] for r in ranked], targets), ks=(10,))["ndcg_10"]
                entry["val_ndcg_10"] = ndcg
                if ndcg > best:
                    best, bad = ndcg, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
            log.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", val_ndcg10=f"{best:.4f}")
            if bad >= cfg.patience:
                stopped_by = "patience"
            if stopped_by != "max_epochs":
                break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs": len(log), "best_val_ndcg_10": best, "seconds": time.perf_counter() - t0,
                   "stopped_by": stopped_by, "log": log}


def evaluate_baseline(kind: Literal["popularity", "sasrec"], data_dir: Path, out_dir: Path, split: str = "test",
                      max_samples: int | None = None, sasrec: SASRecConfig = SASRecConfig(), seed: int = 0,
                      progress: bool = True) -> EvalResult:
    """Train (SASRec) or count (popularity), rank a split over the full catalog, write its `EvalResult`.

    Args:
        kind: which baseline.
        data_dir: a prepared data folder.
        out_dir: the stage folder.
        split: the split to rank.
        max_samples: rank a deterministic sample of this many targets (None: all).
        sasrec: SASRec's settings (its `max_len` also caps the histories of both baselines).
        seed: the sample's seed.
        progress: show progress bars.

    Returns:
        The `EvalResult` (eval.json; `train` holds SASRec's log, `config` its settings).
    """
    out_dir = Path(out_dir)
    n_items = len(pd.read_parquet(Path(data_dir) / "items.parquet", columns=["item_idx"]))
    store = SequenceStore(data_dir, max_history=sasrec.max_len)
    train_info: dict[str, Any] = {}
    if kind == "popularity":
        ties = 1.0 - np.arange(n_items) / n_items  # in (0, 1]: equal counts rank by item index
        pop = torch.from_numpy(popularity_scores(store, n_items) + ties)
        score_fn = lambda hs: pop.expand(len(hs), -1)  # noqa: E731
    else:
        model, train_info = train_sasrec(store, n_items, sasrec, progress=progress)
        score_fn = lambda hs: model.scores(_left_pad(hs, sasrec.max_len, model.pad))  # noqa: E731
    idx = sample_split(store, split, max_samples, seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        ranked, hists, targets = rank_split(score_fn, store, idx)
    seconds = time.perf_counter() - t0
    users = store.sample_user[idx]
    plain = first_ranks([r[:20] for r in ranked], targets)
    masked = masked_ranks(ranked, hists, targets, 20)
    return write_result(out_dir, model=kind, split=split, seconds=seconds, metrics=_metrics(plain, masked, users),
                        sample=idx, users=users, targets=targets, ranks=plain, masked=masked, histories=hists,
                        ranked=[r[:20] for r in ranked], train=train_info,
                        config=sasrec.model_dump() if kind == "sasrec" else {})
