"""Constrained beam search over catalog titles, batched over users: the prompts of a batch of users are
prefilled ONCE together (left-padded), and each step is one forward pass over the last tokens of all live beams
of all users; users whose beams have all finished leave the batch.

The prompt's keys and values are kept once per user and shared by its beams (`BeamCache`): a step never copies
them (a per-beam KV cache copies the whole prompt cache of every beam twice a step, to append and to reorder),
and the attention reads them once per user for all its beams (`beam_attention`, one matmul with the beams'
queries as rows). Only the few generated tokens' keys and values live per beam.

Scores follow Hugging Face's beam search: sum of log-probabilities / (generated length ** length_penalty).
A finished title expands to its items in item-index order (titles shared by several items).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from transformers import AttentionInterface

from patchrec.heads.base import Ranking
from patchrec.heads.generative.trie import TitleTrie

__all__ = ["BeamCache", "beam_attention", "rank_batch", "rank_one"]

ATTENTION = "patchrec_beams"  # the attention implementation of the decoding steps
_ACTIVE: ContextVar[BeamCache | None] = ContextVar("patchrec_beam_cache", default=None)


@torch.no_grad()
def rank_one(model, prompt_embeds: Tensor, trie: TitleTrie, num_beams: int = 20, top_k: int = 20,
             length_penalty: float = 1.0, max_steps: int | None = None) -> Ranking:
    """Rank catalog items for one prompt (1, S, D) with `num_beams` constrained beams."""
    return rank_batch(model, [prompt_embeds], trie, num_beams, top_k, length_penalty, max_steps)[0]


@torch.no_grad()
def rank_batch(model, prompts: list[Tensor], trie: TitleTrie, num_beams: int = 20, top_k: int = 20,
               length_penalty: float = 1.0, max_steps: int | None = None) -> list[Ranking]:
    """Rank catalog items for several prompts, each (1, S_b, D), with `num_beams` constrained beams each.

    Every user keeps `num_beams` beam slots (rows of the batch); a step takes, per user, the best `num_beams`
    trie continuations of its live beams (as one user alone would), finishes those that end a title and
    continues the rest. The trie and the bookkeeping stay on the CPU; logits come back once a step.
    `max_steps` defaults to the trie's depth, so every catalog title, however long, can finish.
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
    model = _with_cast_weights(model)
    out = model(inputs_embeds=embeds, attention_mask=mask.to(dev), position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
                .to(dev), use_cache=True, logits_to_keep=1)
    cache = BeamCache(out.cache, mask.bool().to(dev))
    logits = out.logits[:, -1]  # (rows, V); a row per user for now
    users = torch.arange(n)  # the user of each batch group (users still decoding)
    nodes = torch.zeros(n, 1, dtype=torch.long)  # (users, slots) trie node of each beam
    scores = torch.zeros(n, 1)  # -inf marks an empty slot
    finished: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for step in range(1, (trie.depth if max_steps is None else max_steps) + 1):
        slots = nodes.shape[1]
        live = torch.nonzero(scores.reshape(-1) > float("-inf")).squeeze(1)  # rows with a beam
        beam, tok, child = trie.edges(nodes.reshape(-1)[live])
        row = live[beam]
        cand = scores.reshape(-1)[row] + _log_probs(logits, row, tok)
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
        width = int(slot.max()) + 1  # slots per user this step: the most live beams any user has
        nodes = torch.zeros(len(alive), width, dtype=torch.long)
        scores = torch.full((len(alive), width), float("-inf"))
        src = (alive * slots).repeat_interleave(width)  # an empty slot repeats the group's first row (never read)
        toks = torch.full((len(alive), width), trie.end_token, dtype=torch.long)
        nodes[new_group, slot], scores[new_group, slot], toks[new_group, slot] = child, cand, tok
        src.view(len(alive), width)[new_group, slot] = row
        users, pos = users[alive], pos[alive] + 1
        cache.select(alive.to(dev), src.to(dev), width)
        with cache.active(model):
            out = model(input_ids=toks.reshape(-1, 1).to(dev),
                        position_ids=pos.repeat_interleave(width)[:, None].to(dev), cache=cache, use_cache=True)
        logits = out.logits[:, -1]
    return [_ranking(f, trie, top_k, int(length)) for f, length in zip(finished, lens.tolist(), strict=True)]


class _CastWeights:
    """`model` called with its linear layers' weights already in bf16 (what autocast casts them to at every
    forward pass when they do not require grad: the whole model's weights once per step, a tenth of a
    decoding step's time on a CPU). The same values, cast once per call of `rank_batch`; embeddings (tied to
    the LM head or not) stay as they are, so the residual stream keeps its dtype."""

    def __init__(self, model, weights: dict[str, Tensor]):
        self.model, self.weights, self.config = model, weights, model.config

    def __call__(self, **kwargs):
        return torch.func.functional_call(self.model, self.weights, (), kwargs, tie_weights=False, strict=False)


def _with_cast_weights(model):
    dev = next(model.parameters()).device.type
    if not torch.is_autocast_enabled(dev) or torch.get_autocast_dtype(dev) != torch.bfloat16:
        return model
    weights = {f"{name}.weight": m.weight.to(torch.bfloat16) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32}
    return _CastWeights(model, weights) if weights else model


def _log_probs(logits: Tensor, row: Tensor, tok: Tensor) -> Tensor:
    """log p(tok | row) for a few (row, token) pairs, in fp32 on the CPU: the rows' log-normalisers and the
    chosen logits only (no full (rows, V) log-softmax is written)."""
    dev = logits.device
    row_d, tok_d = row.to(dev), tok.to(dev)
    return (logits[row_d, tok_d].float() - torch.logsumexp(logits.float(), -1)[row_d]).cpu()


class BeamCache:
    """The KV cache of a beam search over a batch of users: per layer, each user's prompt keys/values ONCE
    (G, kv_heads, P, d) with its padding mask, and each beam's generated tokens' keys/values (G * w, kv_heads, t, d).

    Rows of a decoding step are the users' beam slots, user by user (`w` per user: as many as the user with the
    most live beams has, so rows of finished beams are not computed once every user has fewer). `select` follows
    the search (users leaving, beams continuing others); `update` is what the model's attention layers call.
    """

    def __init__(self, prefill, mask: Tensor):
        self.prompt_k = [layer.keys.float() for layer in prefill.layers]  # fp32 once: the attention's precision
        self.prompt_v = [layer.values.float() for layer in prefill.layers]
        self.prompt_bias = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))
        self.gen_k: list[Tensor | None] = [None] * len(self.prompt_k)
        self.gen_v: list[Tensor | None] = [None] * len(self.prompt_k)
        self.width = 1  # beam slots per user in the current step

    def get_seq_length(self, layer_idx: int = 0) -> int:
        gen = self.gen_k[layer_idx]
        return self.prompt_k[layer_idx].shape[2] + (0 if gen is None else gen.shape[2])

    def select(self, users: Tensor, rows: Tensor, width: int) -> None:
        """Keep `users` (indices of the current users), `width` beam slots each, and let new row r continue the
        beam of old row rows[r]."""
        self.width = width
        if len(users) != self.prompt_bias.shape[0]:  # prompts are copied only when users leave
            self.prompt_k = [k.index_select(0, users) for k in self.prompt_k]
            self.prompt_v = [v.index_select(0, users) for v in self.prompt_v]
            self.prompt_bias = self.prompt_bias.index_select(0, users)
        if self.gen_k[0] is not None:
            self.gen_k = [k.index_select(0, rows) for k in self.gen_k]
            self.gen_v = [v.index_select(0, rows) for v in self.gen_v]

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append the step's keys/values (rows, kv_heads, 1, d) to the beams' generated ones; return those."""
        k, v = self.gen_k[layer_idx], self.gen_v[layer_idx]
        self.gen_k[layer_idx] = key if k is None else torch.cat([k, key], 2)
        self.gen_v[layer_idx] = value if v is None else torch.cat([v, value], 2)
        return self.gen_k[layer_idx], self.gen_v[layer_idx]

    @contextmanager
    def active(self, model) -> Iterator[None]:
        """The model's attention layers use `beam_attention` over this cache inside the block."""
        config = model.config
        before, token = config._attn_implementation, _ACTIVE.set(self)
        config._attn_implementation = ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = before
            _ACTIVE.reset(token)


def beam_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float,
                   dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """One decoding step's attention: query (G * w, heads, 1, d); key/value the beams' generated tokens
    (G * w, kv_heads, t, d); each user's prompt keys/values from the active `BeamCache`, read once for its `w`
    beams (all their query heads of a kv head are rows of one matmul). Softmax over prompt and generated
    positions together, in fp32."""
    cache = _ACTIVE.get()
    assert cache is not None, "beam_attention runs inside BeamCache.active"
    pk, pv = cache.prompt_k[module.layer_idx], cache.prompt_v[module.layer_idx]
    rows, heads, _, d = query.shape
    g, kv, w, t = pk.shape[0], pk.shape[1], cache.width, key.shape[2]
    rep = heads // kv
    with torch.autocast(query.device.type, enabled=False):
        q = query.float().reshape(g, w, kv, rep, d)
        s_prompt = q.transpose(1, 2).reshape(g, kv, w * rep, d) @ pk.transpose(-1, -2)
        s_prompt = s_prompt * scaling + cache.prompt_bias[:, None, None, :]  # (g, kv, w * rep, P)
        s_gen = (q.reshape(rows, kv, rep, d) @ key.float().transpose(-1, -2)) * scaling  # (rows, kv, rep, t)
        s_gen = s_gen.reshape(g, w, kv, rep, t).transpose(1, 2).reshape(g, kv, w * rep, t)
        p = torch.softmax(torch.cat([s_prompt, s_gen], -1), -1)
        p_prompt, p_gen = p[..., : pk.shape[2]], p[..., pk.shape[2] :]
        out = (p_prompt @ pv).reshape(g, kv, w, rep, d).transpose(1, 2).reshape(rows, kv, rep, d)
        p_gen = p_gen.reshape(g, kv, w, rep, t).transpose(1, 2).reshape(rows, kv, rep, t)
        out = out + p_gen @ value.float()
    return out.to(query.dtype).reshape(rows, 1, heads, d), None


AttentionInterface.register(ATTENTION, beam_attention)


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
