"""A tensorized prefix trie over catalog titles, each followed by the end-of-turn token.

The end token makes every title a distinct path, so a title that is a token prefix of another
("Toy Story" vs "Toy Story 2") is reachable exactly. Edges are stored CSR-style, so the tokens a
set of beams may take next are a gather, not a Python walk per beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TitleTrie"]


@dataclass
class TitleTrie:
    edge_ptr: Tensor  # (nodes + 1,) edges of node n are edge_ptr[n]:edge_ptr[n + 1]
    edge_tok: Tensor  # (E,) token of each edge
    edge_child: Tensor  # (E,) node each edge leads to
    leaf_ptr: Tensor  # (nodes + 1,) items ending at node n are leaf_items[leaf_ptr[n]:leaf_ptr[n + 1]]
    leaf_items: Tensor  # (items,) sorted by item index within a leaf: shared titles resolve in index order
    end_token: int
    depth: int = 0  # tokens on the longest path: the longest title + its end token (decoding steps it needs)

    @classmethod
    def build(cls, title_ids: Tensor, title_len: Tensor, end_token: int) -> TitleTrie:
        """Build once per catalog from (N, T) title ids and (N,) lengths."""
        children: list[dict[int, int]] = [{}]
        leaves: dict[int, list[int]] = {}
        for item in range(title_ids.shape[0]):
            node = 0
            for t in title_ids[item, : title_len[item]].tolist() + [end_token]:
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(children)
                    children[node][t] = nxt
                    children.append({})
                node = nxt
            leaves.setdefault(node, []).append(item)
        counts = torch.tensor([len(c) for c in children])
        edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        toks = [t for c in children for t in sorted(c)]
        kids = [c[t] for c in children for t in sorted(c)]
        leaf_counts = torch.tensor([len(leaves.get(n, [])) for n in range(len(children))])
        leaf_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(leaf_counts, 0)])
        leaf_items = [i for n in range(len(children)) for i in sorted(leaves.get(n, []))]
        depth = int(title_len.max()) + 1 if title_len.numel() else 0
        return cls(edge_ptr, torch.tensor(toks, dtype=torch.long), torch.tensor(kids, dtype=torch.long), leaf_ptr,
                   torch.tensor(leaf_items, dtype=torch.long), end_token, depth)

    def edges(self, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All outgoing edges of `nodes` (B,): (beam index, token, child), each (E_b,)."""
        start, stop = self.edge_ptr[nodes], self.edge_ptr[nodes + 1]
        counts = stop - start
        beam = torch.repeat_interleave(torch.arange(nodes.numel()), counts)
        idx = torch.arange(int(counts.sum())) - (torch.cumsum(counts, 0) - counts)[beam] + start[beam]
        return beam, self.edge_tok[idx], self.edge_child[idx]

    def allowed_mask(self, nodes: Tensor, vocab: int) -> Tensor:
        """(B,) nodes -> (B, vocab) bool mask of the tokens each beam may take."""
        beam, tok, _ = self.edges(nodes)
        mask = torch.zeros(nodes.numel(), vocab, dtype=torch.bool)
        mask[beam, tok] = True
        return mask

    def items_at(self, node: int) -> list[int]:
        return self.leaf_items[self.leaf_ptr[node] : self.leaf_ptr[node + 1]].tolist()
