"""HR@K and NDCG@K by item id: exact match, first rank (0-based rank r scores NDCG 1 / log2(r + 2)).

`lenient_paper_metric` reproduces the released code's scoring (a hit when the true title is a
character prefix of a generated title, keeping the LAST such rank) and exists only for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["HISTORY_BUCKETS", "KS", "bootstrap_ci", "by_history_length", "first_ranks", "hit_rate_at_k",
           "lenient_paper_ranks", "masked_ranks", "ndcg_at_k", "paired_bootstrap_diff", "summarize_ranks"]

KS = (1, 5, 10, 20)
HISTORY_BUCKETS = ((1, 10), (11, 20), (21, 50), (51, 100), (101, 10**9))


def first_ranks(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """0-based rank of each target in its ranked list (its first occurrence), or -1 when absent."""
    out = np.full(len(targets), -1, dtype=np.int64)
    for i, (lst, t) in enumerate(zip(ranked, targets)):
        hits = np.flatnonzero(np.asarray(lst) == t)
        if hits.size:
            out[i] = hits[0]
    return out


def masked_ranks(ranked: Sequence[Sequence[int]], histories: Sequence[Sequence[int]], targets: Sequence[int],
                 k: int = 20) -> np.ndarray:
    """First ranks after removing the items already in each history from its list (then keeping k).

    A list of exactly k items (beam search) can come out shorter: masking never adds items it did not rank.
    """
    kept = []
    for lst, hist in zip(ranked, histories):
        seen = set(np.asarray(hist).tolist())
        kept.append([i for i in lst if i not in seen][:k])
    return first_ranks(kept, targets)


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    if not ranks.size:
        return 0.0
    gain = np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return float(gain.mean())


def summarize_ranks(ranks: np.ndarray, users: np.ndarray | None = None, ks: Sequence[int] = KS) -> dict[str, float]:
    """hr_K / ndcg_K averaged over samples, and user_hr_K / user_ndcg_K (mean per user, then over users)."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr_{k}"] = hit_rate_at_k(ranks, k)
        out[f"ndcg_{k}"] = ndcg_at_k(ranks, k)
    if users is not None and ranks.size:
        users = np.asarray(users)
        uniq, inv = np.unique(users, return_inverse=True)
        counts = np.bincount(inv)
        for k in ks:
            hit = ((ranks >= 0) & (ranks < k)).astype(float)
            gain = np.where(hit > 0, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
            out[f"user_hr_{k}"] = float((np.bincount(inv, hit) / counts).mean())
            out[f"user_ndcg_{k}"] = float((np.bincount(inv, gain) / counts).mean())
    return out


def _gain(ranks: np.ndarray, k: int, metric: str) -> np.ndarray:
    hit = (ranks >= 0) & (ranks < k)
    return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0) if metric == "ndcg" else hit.astype(float)


def _user_bootstrap(values: np.ndarray, users: np.ndarray, n: int, seed: int, level: float) -> tuple[float, float]:
    _, inv = np.unique(users, return_inverse=True)
    sums, counts = np.bincount(inv, values), np.bincount(inv).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(n, len(sums)))
    stats = sums[draws].sum(1) / counts[draws].sum(1)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def bootstrap_ci(ranks: np.ndarray, users: np.ndarray, k: int, metric: str = "ndcg", n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """User-bootstrap interval of the sample-averaged HR@k / NDCG@k: users are drawn with replacement
    (all of a drawn user's samples count), `n` times; returns the (lower, upper) quantiles."""
    return _user_bootstrap(_gain(np.asarray(ranks), k, metric), np.asarray(users), n, seed, level)


def paired_bootstrap_diff(ranks_a: np.ndarray, ranks_b: np.ndarray, users: np.ndarray, k: int, metric: str = "ndcg",
                          n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(difference, lower, upper) of HR@k / NDCG@k, model a minus model b, on the SAME samples (aligned arrays):
    users are resampled once for both models, so the interval reflects only how the two differ."""
    diff = _gain(np.asarray(ranks_a), k, metric) - _gain(np.asarray(ranks_b), k, metric)
    lo, hi = _user_bootstrap(diff, np.asarray(users), n, seed, level)
    return float(diff.mean()), lo, hi


def lenient_paper_ranks(generated_titles: Sequence[Sequence[str]], target_titles: Sequence[str]) -> np.ndarray:
    """The released code's rank: the LAST generated title that starts with the true title (character prefix)."""
    out = np.full(len(target_titles), -1, dtype=np.int64)
    for i, (titles, t) in enumerate(zip(generated_titles, target_titles)):
        for r, g in enumerate(titles):
            if g.strip().startswith(t.strip()):
                out[i] = r
    return out


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
