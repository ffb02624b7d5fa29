"""Rank a deterministic sample of a split with any head's `Ranker` and write its `EvalResult`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from patchrec.config import EvalConfig
from patchrec.data.sequences import SequenceStore, sample_split
from patchrec.distributed import SINGLE, Dist
from patchrec.evaluation.metrics import (
    by_history_length,
    first_ranks,
    lenient_paper_ranks,
    masked_ranks,
    summarize_ranks,
)
from patchrec.evaluation.result import EvalResult, write_result
from patchrec.runtime import Runtime

__all__ = ["evaluate_split"]


def evaluate_split(runtime: Runtime, data_dir: Path, out_dir: Path, ecfg: EvalConfig,
                   progress: bool = True, dist: Dist = SINGLE) -> EvalResult:
    """Rank `ecfg.split` with the run's layout and head; write eval.json and ranks.parquet into `out_dir`.

    Users are batched by history length (similar prompt lengths: little padding). Under torchrun the ranker's
    batches are dealt out to the ranks in contiguous runs (each batch is exactly the batch one process would
    rank, so the merged ranks are those of one process); rank 0 merges them and writes the files.

    Returns:
        The `EvalResult` (eval.json): metrics by exact item id, plain and history-masked, plus the release's
        lenient title match, and by history length.
    """
    ranker = runtime.ranker(num_beams=ecfg.num_beams, length_penalty=ecfg.length_penalty, bf16=ecfg.bf16,
                            mask_history=ecfg.mask_history, batch_size=ecfg.batch_size)
    store = SequenceStore(data_dir, max_history=runtime.max_history)
    idx = sample_split(store, ecfg.split, ecfg.max_samples, ecfg.seed)
    hists, targets = zip(*(store.sample(int(i)) for i in idx)) if len(idx) else ((), ())
    chunk = getattr(ranker, "batch_size", 1)  # users per call: one batch
    by_length = np.argsort([len(h) for h in hists], kind="stable")  # batches of similar lengths: little padding
    mine = dist.shard(np.arange(0, len(idx), chunk))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(by_length[s : s + chunk]) for s in mine), desc=f"rank {ecfg.split}", unit="user")
    t0 = time.perf_counter()
    part: list[tuple[list[int], int]] = []
    for s in mine:
        got = ranker.rank_many([hists[j] for j in by_length[s : s + chunk]], ecfg.top_k)
        part += [(r.items, r.prompt_tokens) for r in got]
        if bar is not None:
            bar.update(len(got))
    if bar is not None:
        bar.close()
    parts = dist.gather((part, time.perf_counter() - t0))
    seconds = max(sec for _, sec in parts)
    merged: list[tuple[list[int], int]] = [([], 0)] * len(idx)
    for j, m in zip(by_length, (p for shard, _ in parts for p in shard), strict=True):  # back to sample order
        merged[j] = m
    ranked, tokens = [m[0] for m in merged], [m[1] for m in merged]
    users = store.sample_user[idx].astype(np.int64)
    ranks = first_ranks(ranked, targets)
    titles = runtime.items.title.astype(str).tolist()
    lenient = lenient_paper_ranks([[titles[j] for j in lst] for lst in ranked], [titles[t] for t in targets])
    metrics = summarize_ranks(ranks, users)
    masked = masked_ranks(ranked, hists, targets, ecfg.top_k)
    metrics.update({f"masked_{k}": v for k, v in summarize_ranks(masked, users).items()})
    metrics.update({f"paper_lenient_hr_{k}": float(np.mean((lenient >= 0) & (lenient < k))) for k in (5, 10, 20)})
    extra = {"layout": runtime.layout, "prompt_tokens_mean": float(np.mean(tokens)) if tokens else 0.0}
    if not dist.is_main:
        return EvalResult(model=runtime.spec.train.head, split=ecfg.split, samples=len(idx),
                          users_per_s=len(idx) / max(seconds, 1e-9), metrics=metrics,
                          by_history_length=by_history_length(ranks, np.array([len(h) for h in hists])), **extra)
    return write_result(out_dir, model=runtime.spec.train.head, split=ecfg.split, seconds=seconds, metrics=metrics,
                        sample=idx, users=users, targets=list(targets), ranks=ranks, masked=masked, histories=hists,
                        ranked=ranked, **extra)
