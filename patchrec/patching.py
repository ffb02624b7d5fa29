"""Patches and prompt assembly, vectorized over the whole batch (no per-item Python loop).

Item patch p_j = mean of the input embeddings of item j's title tokens. A session patch is the mean of
G item patches (a mean of means). A compressed unit (one item, or one session) occupies two positions:
[patch, right delimiter of its last item]; a text item occupies its title tokens plus its delimiter.
The right delimiter is ITEM_SEP, or SEQ_END for the newest history item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from patchrec.prompts import PromptPieces

__all__ = ["ITEM", "SESSION", "TEXT", "Batch", "CatalogTable", "assemble", "item_patches", "layout_kinds",
           "pool_units", "prompt_batch"]

TEXT, ITEM, SESSION = 0, 1, 2
_FIXED, _TITLE, _TOKEN, _VECTOR = 0, 1, 2, 3
Mode = Literal["text", "item", "session", "mixed"]


@dataclass
class CatalogTable:
    """Title token ids of the whole catalog, and (once computed) its item patches."""

    title_ids: Tensor  # (N, T) long, right-padded with 0
    title_len: Tensor  # (N,) long, >= 1
    patches: Tensor | None = None  # (N, D)

    def to(self, device: torch.device | str) -> CatalogTable:
        patches = None if self.patches is None else self.patches.to(device)
        return CatalogTable(self.title_ids.to(device), self.title_len.to(device), patches)

    @classmethod
    def from_token_lists(cls, ids: list[list[int]]) -> CatalogTable:
        lens = torch.tensor([len(x) for x in ids], dtype=torch.long)
        table = torch.zeros(len(ids), int(lens.max()), dtype=torch.long)
        for i, x in enumerate(ids):  # once per catalog, not per batch
            table[i, : len(x)] = torch.tensor(x)
        return cls(table, lens)


def item_patches(embed: torch.nn.Module, title_ids: Tensor, title_len: Tensor, chunk: int = 4096) -> Tensor:
    """(N, T), (N,) -> (N, D): masked mean of the title token embeddings, in chunks of items."""
    out = []
    for s in range(0, title_ids.shape[0], chunk):
        ids, lens = title_ids[s : s + chunk], title_len[s : s + chunk]
        mask = (torch.arange(ids.shape[1], device=ids.device) < lens[:, None]).unsqueeze(-1)  # (n, T, 1)
        e = embed(ids)  # (n, T, D)
        out.append((e * mask).sum(1) / lens[:, None].to(e.dtype))
    return torch.cat(out)


def layout_kinds(
    lengths: Tensor, mode: Mode, k: int = 5, group: int = 5, compress_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per history item (flattened, oldest first per sample): its kind and its session group.

    lengths (B,) -> kinds (sum L,), groups (sum L,). Sessions are aligned from the recent end, so the
    oldest group takes the remainder. `mixed` compresses each item with probability `compress_prob` (PPT).
    """
    if (lengths < 1).any():
        raise ValueError("every sample needs a non-empty history")
    total = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths
    sample = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    r = lengths[sample] - 1 - (torch.arange(total) - starts[sample])  # 0 = newest
    groups = torch.zeros(total, dtype=torch.long)
    if mode == "text":
        kinds = torch.full((total,), TEXT, dtype=torch.long)
    elif mode == "item":
        kinds = torch.where(r < k, TEXT, ITEM)
    elif mode == "session":
        kinds = torch.where(r < group, TEXT, torch.where(r < 2 * group, ITEM, SESSION))
        groups = torch.where(kinds == SESSION, (r - 2 * group) // group, 0)
    elif mode == "mixed":
        draw = torch.rand(total, generator=generator)
        kinds = torch.where(draw < compress_prob, ITEM, TEXT)
    else:
        raise ValueError(f"unknown layout mode {mode!r}")
    return kinds, groups


@dataclass
class Batch:
    inputs_embeds: Tensor  # (B, S, D)
    attention_mask: Tensor  # (B, S) long
    labels: Tensor  # (B, S) long, -100 where no loss; labels[b, t] is the token AT position t
    lengths: Tensor  # (B,) real length of each sequence (right padding)


def assemble(
    history: Tensor, offsets: Tensor, targets: Tensor | None, kinds: Tensor, groups: Tensor,
    catalog: CatalogTable, pieces: PromptPieces, embed: torch.nn.Module, patches: Tensor | None = None,
) -> Batch:
    """Build inputs_embeds / attention_mask / labels for a batch with one embedding call and one scatter.

    history (sum L,) item indices, oldest first per sample; offsets (B + 1,); targets (B,) or None
    (prompt only, for ranking); kinds/groups from `layout_kinds`; patches (N, D) defaults to catalog.patches.
    """
    dev = embed.weight.device
    history, offsets, kinds, groups = history.to(dev), offsets.to(dev), kinds.to(dev), groups.to(dev)
    targets = None if targets is None else targets.to(dev)
    B = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    n = history.numel()
    sample = torch.repeat_interleave(torch.arange(B, device=dev), lengths)
    # Units: a session item continues the unit of the previous item when both are in the same session.
    prev_same = torch.zeros(n, dtype=torch.bool, device=dev)
    if n > 1:
        prev_same[1:] = (sample[1:] == sample[:-1]) & (kinds[1:] == SESSION) & (kinds[:-1] == SESSION) & (
            groups[1:] == groups[:-1])
    unit = torch.cumsum(~prev_same, 0) - 1  # (n,)
    n_units = int(unit[-1]) + 1
    ar_n = torch.arange(n, device=dev)
    last_of_unit = torch.zeros(n_units, dtype=torch.long, device=dev).scatter_reduce(0, unit, ar_n, "amax")
    first_of_unit = torch.zeros(n_units, dtype=torch.long, device=dev).scatter_reduce(0, unit, ar_n, "amin",
                                                                          include_self=False)
    u_sample = sample[first_of_unit]
    u_kind = kinds[first_of_unit]
    u_item = history[first_of_unit]
    is_newest = last_of_unit == (offsets[1:][u_sample] - 1)
    u_delim = torch.where(is_newest, pieces.seq_end, pieces.item_sep)
    # Compressed units: mean of their items' patches (an item patch is a session of one).
    table = catalog.patches if patches is None else patches
    compressed = u_kind != TEXT
    vectors = None
    if compressed.any():
        if table is None:
            raise ValueError("compressed layout needs item patches: compute catalog.patches first")
        vectors = pool_units(table, history, unit, n_units)  # (n_units, D); rows of text units are unused
    u_order = torch.arange(n_units, device=dev) - (torch.cumsum(torch.bincount(u_sample, minlength=B), 0)
                                       - torch.bincount(u_sample, minlength=B))[u_sample]
    # Segments: (sample, sort key, kind, payload, length, carries loss).
    fixed = [pieces.prefix, pieces.middle, pieces.end]
    fixed_tab = torch.zeros(3, max(len(f) for f in fixed), dtype=torch.long, device=dev)
    for i, f in enumerate(fixed):
        fixed_tab[i, : len(f)] = torch.tensor(f, dtype=torch.long, device=dev)
    fixed_len = torch.tensor([len(f) for f in fixed], device=dev)
    ar = torch.arange(B, device=dev)
    big = 1 << 32
    seg = [
        (
            ar,
            torch.zeros(B, dtype=torch.long, device=dev),
            torch.full((B,), _FIXED, device=dev),
            torch.zeros(B, dtype=torch.long, device=dev),
            fixed_len[0].expand(B),
            False,
        ),
        (
            u_sample,
            big + 2 * u_order,
            torch.where(compressed, _VECTOR, _TITLE),
            torch.where(compressed, torch.arange(n_units, device=dev), u_item),
            torch.where(compressed, 1, catalog.title_len[u_item]),
            False,
        ),
        (
            u_sample,
            big + 2 * u_order + 1,
            torch.full((n_units,), _TOKEN, device=dev),
            u_delim,
            torch.ones(n_units, dtype=torch.long, device=dev),
            False,
        ),
        (
            ar,
            torch.full((B,), 2 * big, device=dev),
            torch.full((B,), _FIXED, device=dev),
            torch.ones(B, dtype=torch.long, device=dev),
            fixed_len[1].expand(B),
            False,
        ),
    ]
    if targets is not None:
        seg += [
            (
                ar,
                torch.full((B,), 3 * big, device=dev),
                torch.full((B,), _TITLE, device=dev),
                targets,
                catalog.title_len[targets],
                True,
            ),
            (
                ar,
                torch.full((B,), 4 * big, device=dev),
                torch.full((B,), _FIXED, device=dev),
                torch.full((B,), 2, device=dev),
                fixed_len[2].expand(B),
                True,
            ),
        ]
    s_sample = torch.cat([s[0] for s in seg])
    order = torch.argsort(s_sample * (8 * big) + torch.cat([s[1] for s in seg]))
    s_sample = s_sample[order]
    s_kind = torch.cat([s[2] for s in seg])[order]
    s_pay = torch.cat([s[3] for s in seg])[order]
    s_len = torch.cat([s[4] for s in seg])[order]
    s_loss = torch.cat([torch.full((len(s[0]),), s[5], device=dev) for s in seg])[order]
    # Expand segments to positions.
    seg_id = torch.repeat_interleave(torch.arange(len(s_len), device=dev), s_len)
    seg_start = torch.cumsum(s_len, 0) - s_len
    within = torch.arange(int(s_len.sum()), device=dev) - seg_start[seg_id]
    seq_len = torch.zeros(B, dtype=torch.long, device=dev).index_add_(0, s_sample, s_len)
    sample_start = torch.cumsum(seq_len, 0) - seq_len
    p_sample = s_sample[seg_id]
    pos = seg_start[seg_id] - sample_start[p_sample] + within
    kind, pay = s_kind[seg_id], s_pay[seg_id]
    tok = torch.full_like(pay, pieces.pad)
    m = kind == _FIXED
    tok[m] = fixed_tab[pay[m], within[m]]
    m = kind == _TITLE
    tok[m] = catalog.title_ids[pay[m], within[m]]
    m = kind == _TOKEN
    tok[m] = pay[m]
    flat = embed(tok)  # (P, D): the one embedding call
    is_vec = kind == _VECTOR
    if is_vec.any():
        flat = torch.where(is_vec[:, None], vectors.to(flat.dtype)[pay.clamp(max=n_units - 1)], flat)
    S = int(seq_len.max())
    embeds = flat.new_zeros(B, S, flat.shape[1])
    embeds[p_sample, pos] = flat  # the one scatter
    labels = torch.full((B, S), -100, dtype=torch.long, device=dev)
    loss = s_loss[seg_id]
    labels[p_sample[loss], pos[loss]] = tok[loss]
    attention = (torch.arange(S, device=dev)[None, :] < seq_len[:, None]).long()
    return Batch(embeds, attention, labels, seq_len)


def pool_units(table: Tensor, items: Tensor, unit: Tensor, n_units: int) -> Tensor:
    """(n_units, D): the mean of `table[items]` per unit (`unit[i]` is item i's unit); a session patch is the mean
    of its items' patches, an item patch a unit of one. The one pooling of both heads (gradients reach `table`)."""
    counts = torch.bincount(unit, minlength=n_units).clamp(min=1).to(table.dtype)
    return table.new_zeros(n_units, table.shape[1]).index_add(0, unit, table[items]) / counts[:, None]


def prompt_batch(hists: Sequence[np.ndarray], catalog: CatalogTable, pieces: PromptPieces, embed: torch.nn.Module,
                 layout: str, k: int = 5, group: int = 5, targets: Sequence[int] | None = None,
                 compress_prob: float = 0.0, generator: torch.Generator | None = None,
                 textual_copy: bool = False) -> tuple[Batch, float]:
    """Histories (item indices, oldest first) -> one assembled prompt batch in `layout`, and the share of
    history items given as patches. `targets` adds the title labels (training); `textual_copy` appends the
    all-text copy of every sample (PPT)."""
    lengths = torch.tensor([len(h) for h in hists], dtype=torch.long)
    flat = torch.from_numpy(np.concatenate([np.asarray(h, dtype=np.int64) for h in hists]) if len(hists)
                            else np.zeros(0, dtype=np.int64))
    tg = None if targets is None else torch.tensor(list(targets), dtype=torch.long)
    kinds, groups = layout_kinds(lengths, layout, k=k, group=group, compress_prob=compress_prob, generator=generator)
    share = float((kinds != TEXT).float().mean()) if kinds.numel() else 0.0
    if textual_copy:
        lengths, flat = lengths.repeat(2), flat.repeat(2)
        tg = None if tg is None else tg.repeat(2)
        kinds, groups = torch.cat([kinds, torch.zeros_like(kinds)]), torch.cat([groups, groups])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    return assemble(flat, offsets, tg, kinds, groups, catalog, pieces, embed), share
