"""Constrained beam search over catalog titles: the prompt is prefilled ONCE per user and its KV cache
is shared by all beams; each step is one forward pass over the beams' last tokens.

Scores follow Hugging Face's beam search: sum of log-probabilities / (generated length ** length_penalty).
A finished title expands to its items in item-index order (titles shared by several items).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from patchrec.evaluation.trie import TitleTrie

__all__ = ["Ranking", "rank_one"]


@dataclass
class Ranking:
    items: list[int]  # catalog item indices, best first
    scores: list[float]
    prompt_tokens: int = 0  # positions of the prefilled prompt


@torch.no_grad()
def rank_one(model, prompt_embeds: Tensor, trie: TitleTrie, num_beams: int = 20, top_k: int = 20,
             length_penalty: float = 1.0, max_steps: int = 64) -> Ranking:
    """Rank catalog items for one prompt (1, S, D) with `num_beams` constrained beams."""
    dev = prompt_embeds.device  # the trie and the beam bookkeeping stay on the CPU; logits come back once a step
    out = model(inputs_embeds=prompt_embeds, use_cache=True, logits_to_keep=1)
    cache = out.cache
    logp = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()  # (1, V)
    nodes = torch.zeros(1, dtype=torch.long)
    scores = torch.zeros(1)
    finished: list[tuple[float, int]] = []  # (normalized score, leaf node)
    for step in range(1, max_steps + 1):
        beam, tok, child = trie.edges(nodes)
        cand = scores[beam] + logp[beam, tok]
        take = torch.topk(cand, min(num_beams, cand.numel())).indices
        beam, tok, child, cand = beam[take], tok[take], child[take], cand[take]
        done = tok == trie.end_token
        for s, n in zip(cand[done].tolist(), child[done].tolist()):
            finished.append((s / step**length_penalty, n))
        keep = ~done
        if not keep.any():
            break
        beam, tok, nodes, scores = beam[keep], tok[keep], child[keep], cand[keep]
        cache.reorder_cache(beam.to(dev))
        out = model(input_ids=tok[:, None].to(dev), cache=cache, use_cache=True)
        cache = out.cache
        logp = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()
    finished.sort(key=lambda x: -x[0])
    items: list[int] = []
    item_scores: list[float] = []
    for s, node in finished:
        for it in trie.items_at(node):
            items.append(it)
            item_scores.append(s)
        if len(items) >= top_k:
            break
    return Ranking(items[:top_k], item_scores[:top_k], int(prompt_embeds.shape[1]))
