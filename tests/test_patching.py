"""Vectorized prompt assembly == a naive per-item reference, for every layout and edge case."""

from __future__ import annotations

import pytest
import torch

from patchrec.model import add_prompt_tokens, build_tiny
from patchrec.patching import ITEM, SESSION, TEXT, CatalogTable, assemble, item_patches, layout_kinds
from patchrec.prompts import PromptConfig, render_pieces, tokenize_titles

TITLES = ["Toy Story", "Alien", "Aliens", "Heat", "The Good , the Bad and the Ugly", "Up", "Se7en",
          "Four Rooms", "Copycat", "Babe", "Casino", "Nixon"]


@pytest.fixture(scope="module")
def setup():
    cfg = PromptConfig()
    model, tok = build_tiny(TITLES + [cfg.system, cfg.instruction])
    ids = add_prompt_tokens(model, tok)
    pieces = render_pieces(tok, cfg, ids)
    catalog = CatalogTable.from_token_lists(tokenize_titles(tok, TITLES))
    embed = model.get_input_embeddings()
    with torch.no_grad():
        catalog.patches = item_patches(embed, catalog.title_ids, catalog.title_len)
    return pieces, catalog, embed


def naive(history, target, kinds, groups, catalog, pieces, embed):
    """Reference: build one sample item by item, exactly as the method spec describes it."""
    E = embed.weight
    rows, labels = [E[t] for t in pieces.prefix], [-100] * len(pieces.prefix)
    i, L = 0, len(history)
    while i < L:
        j = i
        if kinds[i] == SESSION:
            while j + 1 < L and kinds[j + 1] == SESSION and groups[j + 1] == groups[i]:
                j += 1
        delim = pieces.seq_end if j == L - 1 else pieces.item_sep
        if kinds[i] == TEXT:
            ids = catalog.title_ids[history[i], : catalog.title_len[history[i]]].tolist()
            rows += [E[t] for t in ids]
            labels += [-100] * len(ids)
        else:
            patches = []
            for it in history[i : j + 1]:
                ids = catalog.title_ids[it, : catalog.title_len[it]]
                patches.append(E[ids].mean(0))
            rows.append(torch.stack(patches).mean(0))
            labels.append(-100)
        rows.append(E[delim])
        labels.append(-100)
        i = j + 1
    rows += [E[t] for t in pieces.middle]
    labels += [-100] * len(pieces.middle)
    if target is not None:
        ids = catalog.title_ids[target, : catalog.title_len[target]].tolist() + pieces.end
        rows += [E[t] for t in ids]
        labels += ids
    return torch.stack(rows), torch.tensor(labels)


def _check(hists, targets, mode, setup, **kw):
    pieces, catalog, embed = setup
    lengths = torch.tensor([len(h) for h in hists])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    flat = torch.tensor([x for h in hists for x in h])
    kinds, groups = layout_kinds(lengths, mode, **kw)
    tg = torch.tensor(targets) if targets is not None else None
    with torch.no_grad():
        batch = assemble(flat, offsets, tg, kinds, groups, catalog, pieces, embed)
        for b, h in enumerate(hists):
            sl = slice(int(offsets[b]), int(offsets[b + 1]))
            ref, ref_labels = naive(h, None if tg is None else int(tg[b]), kinds[sl].tolist(), groups[sl].tolist(),
                                    catalog, pieces, embed)
            n = ref.shape[0]
            assert int(batch.lengths[b]) == n
            torch.testing.assert_close(batch.inputs_embeds[b, :n], ref, rtol=1e-5, atol=1e-6)
            assert torch.equal(batch.labels[b, :n], ref_labels)
            assert batch.attention_mask[b, :n].all() and not batch.attention_mask[b, n:].any()
            assert (batch.labels[b, n:] == -100).all()
    return kinds, groups


@pytest.mark.parametrize("mode", ["text", "item", "session", "mixed"])
def test_random_batches_match_reference(setup, mode):
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        # histories of 1 .. 2G+1 items and longer, random items, G = 3
        hists = [torch.randint(0, len(TITLES), (int(n),), generator=g).tolist()
                 for n in torch.randint(1, 12, (6,), generator=g)]
        targets = torch.randint(0, len(TITLES), (6,), generator=g).tolist()
        _check(hists, targets if trial % 2 == 0 else None, mode, setup, k=2, group=3, compress_prob=0.5, generator=g)


def test_paper_worked_example_l23_g5(setup):
    hist = [[i % len(TITLES) for i in range(23)]]
    kinds, groups = _check(hist, [0], "session", setup, group=5)
    # sessions [0,3) [3,8) [8,13), items [13,18), text [18,23)
    assert kinds.tolist() == [SESSION] * 13 + [ITEM] * 5 + [TEXT] * 5
    assert groups[:13].tolist() == [2] * 3 + [1] * 5 + [0] * 5


def test_l100_g5_has_18_sessions(setup):
    kinds, groups = layout_kinds(torch.tensor([100]), "session", group=5)
    sessions = kinds == SESSION
    assert int(groups[sessions].unique().numel()) == 18 and int((kinds == ITEM).sum()) == 5
    assert int((kinds == TEXT).sum()) == 5


def test_one_token_titles_and_single_item_history(setup):
    _check([[5], [3, 5]], [6, 9], "item", setup, k=0)  # "Up", "Heat": one-token titles, all compressed


def test_empty_history_is_an_error(setup):
    with pytest.raises(ValueError, match="non-empty history"):
        layout_kinds(torch.tensor([3, 0]), "text")


def test_mixed_compresses_the_requested_share():
    g = torch.Generator().manual_seed(1)
    for p in (0.0, 0.3, 1.0):
        kinds, _ = layout_kinds(torch.tensor([1000] * 10), "mixed", compress_prob=p, generator=g)
        assert abs((kinds == ITEM).float().mean().item() - p) < 0.03
