"""Constrained ranking: only catalog items, prefix titles reachable, shared titles resolved."""

from __future__ import annotations

import torch

from patchrec.heads.generative.beam import rank_batch, rank_one
from patchrec.heads.generative.trie import TitleTrie
from patchrec.model import add_prompt_tokens, build_tiny
from patchrec.patching import CatalogTable, item_patches, prompt_batch
from patchrec.prompts import PromptConfig, render_pieces, tokenize_titles

TITLES = ["Toy Story", "Toy Story 2", "Heat", "Heat", "Alien", "Aliens", "Up", "Babe"]


def _setup():
    cfg = PromptConfig()
    model, tok = build_tiny(TITLES + [cfg.system, cfg.instruction], seed=3)
    ids = add_prompt_tokens(model, tok)
    pieces = render_pieces(tok, cfg, ids)
    catalog = CatalogTable.from_token_lists(tokenize_titles(tok, TITLES))
    with torch.no_grad():
        catalog.patches = item_patches(model.get_input_embeddings(), catalog.title_ids, catalog.title_len)
    trie = TitleTrie.build(catalog.title_ids, catalog.title_len, pieces.end[0])
    return model.eval(), pieces, catalog, trie


def _prompt(model, pieces, catalog, hist):
    with torch.no_grad():
        b, _ = prompt_batch([hist], catalog, pieces, model.get_input_embeddings(), "text")
    return b.inputs_embeds


def test_trie_masks_and_leaves():
    _, pieces, catalog, trie = _setup()
    end = pieces.end[0]
    toy, story = catalog.title_ids[0, :2].tolist()
    root_tokens = set(trie.edges(torch.tensor([0]))[1].tolist())
    assert toy in root_tokens and end not in root_tokens
    mask = trie.allowed_mask(torch.tensor([0]), 100)
    assert mask[0, toy] and int(mask.sum()) == len(root_tokens)
    # after "Toy Story": either end the title (item 0) or continue with "2" (item 1)
    _, _, node1 = trie.edges(torch.tensor([0]))
    n_toy = int(node1[trie.edges(torch.tensor([0]))[1] == toy])
    _, tok2, child2 = trie.edges(torch.tensor([n_toy]))
    n_story = int(child2[tok2 == story])
    _, tok3, child3 = trie.edges(torch.tensor([n_story]))
    assert end in tok3.tolist() and len(tok3) == 2
    assert trie.items_at(int(child3[tok3 == end])) == [0]


def test_ranking_returns_every_catalog_item_once():
    model, pieces, catalog, trie = _setup()
    r = rank_one(model, _prompt(model, pieces, catalog, [2, 4, 6]), trie, num_beams=20, top_k=20)
    assert sorted(r.items) == list(range(len(TITLES)))  # "Toy Story" (a prefix of "Toy Story 2") included
    assert r.scores == sorted(r.scores, reverse=True)
    heat = [i for i in r.items if i in (2, 3)]
    assert heat == [2, 3] and r.items.index(3) == r.items.index(2) + 1  # shared title: index order


def _title_likelihoods(model, pieces, catalog, prompt) -> dict[int, float]:
    """Exhaustive reference: every title's log-likelihood after `prompt` / its length, by a full forward pass."""
    best = {}
    for i in range(len(TITLES)):
        ids = catalog.title_ids[i, : catalog.title_len[i]].tolist() + pieces.end
        emb = torch.cat([prompt, model.get_input_embeddings()(torch.tensor([ids]))], 1)
        with torch.no_grad():
            logp = torch.log_softmax(model(inputs_embeds=emb).logits[0, prompt.shape[1] - 1 : -1], -1)
        best[i] = float(logp[torch.arange(len(ids)), torch.tensor(ids)].sum()) / len(ids)
    return best


def test_ranking_matches_exhaustive_scoring_with_enough_beams():
    model, pieces, catalog, trie = _setup()
    prompt = _prompt(model, pieces, catalog, [0, 5])
    r = rank_one(model, prompt, trie, num_beams=64, top_k=8)
    best = _title_likelihoods(model, pieces, catalog, prompt)
    expected = sorted(best, key=lambda i: (-round(best[i], 5), i))
    assert r.items == expected
    torch.testing.assert_close(torch.tensor(r.scores), torch.tensor([best[i] for i in expected]), atol=1e-4, rtol=0)


def test_a_batch_of_users_ranks_as_each_user_alone():
    """Left-padded prompts of different lengths, pruning beams (3 < titles), users finishing at different steps."""
    model, pieces, catalog, trie = _setup()
    prompts = [_prompt(model, pieces, catalog, h) for h in ([2, 4, 6], [1], [0, 5, 7, 3, 2], [6, 6])]
    together = rank_batch(model, prompts, trie, num_beams=3, top_k=5)
    for prompt, got in zip(prompts, together, strict=True):
        alone = rank_one(model, prompt, trie, num_beams=3, top_k=5)
        assert got.items == alone.items and got.prompt_tokens == prompt.shape[1]
        torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(alone.scores), atol=1e-5, rtol=0)


def test_batched_exhaustive_beams_score_every_title_by_its_likelihood():
    model, pieces, catalog, trie = _setup()
    prompts = [_prompt(model, pieces, catalog, h) for h in ([0, 5], [3, 1, 4, 1, 5])]
    for prompt, got in zip(prompts, rank_batch(model, prompts, trie, num_beams=64, top_k=8), strict=True):
        best = _title_likelihoods(model, pieces, catalog, prompt)
        torch.testing.assert_close(torch.tensor(got.scores), torch.tensor([best[i] for i in got.items]), atol=1e-4,
                                   rtol=0)
        assert sorted(got.items) == list(range(len(TITLES)))


def test_decoding_reads_each_prompt_once_for_all_its_beams():
    """Decoding steps attend through `beam_attention`: a user's prompt keys are one row for all its beams."""
    from transformers import AttentionInterface

    from patchrec.heads.generative import beam

    model, pieces, catalog, trie = _setup()
    prompts = [_prompt(model, pieces, catalog, h) for h in ([0, 5], [3, 1, 4, 1, 5])]
    seen: list[tuple[int, int]] = []

    def spy(module, query, *args, **kwargs):
        cache = beam._ACTIVE.get()
        seen.append((query.shape[0], cache.prompt_k[module.layer_idx].shape[0] * cache.width))
        return beam.beam_attention(module, query, *args, **kwargs)

    AttentionInterface.register(beam.ATTENTION, spy)
    try:
        rank_batch(model, prompts, trie, num_beams=4, top_k=4)
    finally:
        AttentionInterface.register(beam.ATTENTION, beam.beam_attention)
    assert seen and all(rows == users_x_width for rows, users_x_width in seen)
    assert max(rows for rows, _ in seen) == 2 * 4 and model.config._attn_implementation != beam.ATTENTION


def test_titles_longer_than_64_tokens_are_ranked():
    """The beam stopped after 64 tokens whatever the catalog: an item with a longer title (long Amazon titles)
    could never be ranked by the generative head. The step limit is now the trie's depth."""
    words = ["Alpha", "Beta", "Gamma", "Delta", "Kappa", "Omega", "Sigma"]
    long_a = " ".join(words[i % 7] for i in range(80))
    long_b = long_a + " Deluxe"
    titles = [long_a, long_b, "Up"]
    cfg = PromptConfig()
    model, tok = build_tiny(titles + [cfg.system, cfg.instruction], seed=3)
    ids = add_prompt_tokens(model, tok)
    pieces = render_pieces(tok, cfg, ids)
    catalog = CatalogTable.from_token_lists(tokenize_titles(tok, titles))
    assert int(catalog.title_len[:2].min()) > 64
    with torch.no_grad():
        catalog.patches = item_patches(model.get_input_embeddings(), catalog.title_ids, catalog.title_len)
    trie = TitleTrie.build(catalog.title_ids, catalog.title_len, pieces.end[0])
    assert trie.depth == int(catalog.title_len.max()) + 1
    r = rank_one(model.eval(), _prompt(model, pieces, catalog, [2]), trie, num_beams=8, top_k=3)
    assert sorted(r.items) == [0, 1, 2]
    long_only = TitleTrie.build(catalog.title_ids[:2], catalog.title_len[:2], pieces.end[0])
    first = rank_one(model, _prompt(model, pieces, catalog, [2]), long_only, num_beams=4, top_k=2)
    assert first.items[0] in (0, 1) and sorted(first.items) == [0, 1]
