"""Constrained beam search over catalog titles, batched over users: the prompts of a batch of users are
prefilled ONCE together (left-padded), every user's beams share its KV cache rows, and each step is one forward
pass over the last tokens of all live beams of all users; users whose beams have all finished leave the batch.

Scores follow Hugging Face's beam search: sum of log-probabilities / (generated length ** length_penalty).
A finished title expands to its items in item-index order (titles shared by several items).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from patchrec.evaluation.trie import TitleTrie

__all__ = ["Ranking", "rank_batch", "rank_one"]


@dataclass
class Ranking:
    items: list[int]  # catalog item indices, best first
    scores: list[float]
    prompt_tokens: int = 0  # positions of the prefilled prompt


@torch.no_grad()
def rank_one(model, prompt_embeds: Tensor, trie: TitleTrie, num_beams: int = 20, top_k: int = 20,
             length_penalty: float = 1.0, max_steps: int = 64) -> Ranking:
    """Rank catalog items for one prompt (1, S, D) with `num_beams` constrained beams."""
    return rank_batch(model, [prompt_embeds], trie, num_beams, top_k, length_penalty, max_steps)[0]


@torch.no_grad()
def rank_batch(model, prompts: list[Tensor], trie: TitleTrie, num_beams: int = 20, top_k: int = 20,
               length_penalty: float = 1.0, max_steps: int = 64) -> list[Ranking]:
    """Rank catalog items for several prompts, each (1, S_b, D), with `num_beams` constrained beams each.

    Every user keeps `num_beams` beam slots (rows of the batch); a step takes, per user, the best `num_beams`
    trie continuations of its live beams (as one user alone would), finishes those that end a title and
    continues the rest. The trie and the bookkeeping stay on the CPU; logits come back once a step.
    """
    dev, w = prompts[0].device, num_beams
    lens = torch.tensor([p.shape[1] for p in prompts])
    n, s = len(prompts), int(lens.max())
    embeds = prompts[0].new_zeros(n, s, prompts[0].shape[-1])
    mask = torch.zeros(n, s, dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding: every prompt ends at the last position
        embeds[b, s - p.shape[1] :] = p[0]
        mask[b, s - p.shape[1] :] = 1
    pos = (lens - 1).clone()  # position of each user's last token
    out = model(inputs_embeds=embeds, attention_mask=mask.to(dev), position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
                .to(dev), use_cache=True, logits_to_keep=1)
    cache = out.cache
    logp = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()  # (rows, V); a row per user for now
    users = torch.arange(n)  # the user of each batch group (users still decoding)
    nodes = torch.zeros(n, 1, dtype=torch.long)  # (users, slots) trie node of each beam
    scores = torch.zeros(n, 1)  # -inf marks an empty slot
    finished: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for step in range(1, max_steps + 1):
        slots = nodes.shape[1]
        live = torch.nonzero(scores.reshape(-1) > float("-inf")).squeeze(1)  # rows with a beam
        beam, tok, child = trie.edges(nodes.reshape(-1)[live])
        row = live[beam]
        cand = scores.reshape(-1)[row] + logp[row, tok]
        group = row // slots
        # per group, candidates best first; keep the first `w` of each group
        order = torch.sort(cand, descending=True, stable=True).indices
        order = order[torch.sort(group[order], stable=True).indices]
        g = group[order]
        rank = torch.arange(len(order)) - torch.searchsorted(g, g)
        order = order[rank < w]
        row, tok, child, cand, g = row[order], tok[order], child[order], cand[order], group[order]
        done = tok == trie.end_token
        for gi, sc, node in zip(g[done].tolist(), cand[done].tolist(), child[done].tolist()):
            finished[int(users[gi])].append((sc / step**length_penalty, node))
        keep = ~done
        row, tok, child, cand, g = row[keep], tok[keep], child[keep], cand[keep], g[keep]
        alive = torch.unique(g)  # groups with a beam left
        if not len(alive):
            break
        new_group = torch.searchsorted(alive, g)
        slot = torch.arange(len(g)) - torch.searchsorted(g, g)
        nodes = torch.zeros(len(alive), w, dtype=torch.long)
        scores = torch.full((len(alive), w), float("-inf"))
        src = (alive * slots).repeat_interleave(w)  # an empty slot repeats the group's first row (never read)
        toks = torch.full((len(alive), w), trie.end_token, dtype=torch.long)
        nodes[new_group, slot], scores[new_group, slot], toks[new_group, slot] = child, cand, tok
        src.view(len(alive), w)[new_group, slot] = row
        users, pos = users[alive], pos[alive] + 1
        mask = torch.cat([mask[alive], torch.ones(len(alive), 1, dtype=torch.long)], 1)  # (groups, positions)
        cache.reorder_cache(src.to(dev))
        out = model(input_ids=toks.reshape(-1, 1).to(dev), attention_mask=mask.repeat_interleave(w, 0).to(dev),
                    position_ids=pos.repeat_interleave(w)[:, None].to(dev), cache=cache, use_cache=True)
        cache = out.cache
        logp = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()
    return [_ranking(f, trie, top_k, int(length)) for f, length in zip(finished, lens.tolist(), strict=True)]


def _ranking(finished: list[tuple[float, int]], trie: TitleTrie, top_k: int, prompt_tokens: int) -> Ranking:
    """Finished titles, best first, expanded to their items (shared titles in item-index order)."""
    finished.sort(key=lambda x: -x[0])
    items: list[int] = []
    item_scores: list[float] = []
    for s, node in finished:
        for it in trie.items_at(node):
            items.append(it)
            item_scores.append(s)
        if len(items) >= top_k:
            break
    return Ranking(items[:top_k], item_scores[:top_k], prompt_tokens)
