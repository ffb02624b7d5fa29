"""The scoring head's text levers: cosine scores with a title skip, cold items held on their title vector,
same-title items kept out of the negatives, a truncated LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from patchrec.config import EvalConfig
from patchrec.data.sequences import SequenceStore
from patchrec.evaluation.split import evaluate_split
from patchrec.heads.scoring import ScoringObjective
from patchrec.heads.scoring.model import (
    Layout,
    assemble_rows,
    catalog_loss,
    plan_windows,
    title_groups,
    truncate_layers,
    window_rows,
)
from patchrec.patching import CatalogTable
from patchrec.runtime import Base, Runtime, read_items
from patchrec.training import fit, train_run
from tests.test_scoring import COLD, N_ITEMS, TEXT, _cfg, _key_of, _model, _spec


def test_title_groups_give_items_with_one_title_one_id():
    catalog = CatalogTable.from_token_lists([[5, 6], [5], [5, 6], [7, 8, 9], [5]])
    g = title_groups(catalog).tolist()
    assert g[0] == g[2] and g[1] == g[4] and len({g[0], g[1], g[3]}) == 3


def test_the_title_skip_scores_each_item_by_its_cosine_to_the_newest_history_item(data):
    """Cosine scores = (cos(h, v_i) + w * cos(v_prev, v_i)) / temperature, mean-centred unit item vectors."""
    spec = _spec(**TEXT, temperature=0.1)
    _, _, model = _model(data, spec)
    with torch.no_grad():
        model.title_skip.fill_(0.5)
        row = assemble_rows([(np.array([4, 9, 2]), 0)], model.item_vectors(), model.start(), 2)
        got = model.last_scores(row)[0]
        h = model.hidden(row)[0, -1].float()
        v = model.item_vectors().float() - model.patches.float().mean(0)
        v = v / v.norm(dim=1, keepdim=True)
        want = (v @ (h / h.norm()) + 0.5 * (v @ v[2])) / 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _scored(model):
    """A history [4, 9, 2] scored by `model`: (row, scores, last hidden state, unit item vectors v, unit title
    patches t), both mean-centred."""
    row = assemble_rows([(np.array([4, 9, 2]), 0)], model.item_vectors(), model.start(), 2)
    got = model.last_scores(row)[0]
    h = model.hidden(row)[0, -1].float()
    centre = model.patches.float().mean(0)
    v = nn.functional.normalize(model.item_vectors().float() - centre, dim=-1)
    t = nn.functional.normalize(model.patches.float() - centre, dim=-1)
    return row, got, h, v, t


def test_a_title_space_skip_compares_fixed_title_patches_whatever_the_correction(data):
    """title_skip: title -> (cos(h, v_i) + w * cos(t_prev, t_i)) / temperature, t = mean-centred unit title patches:
    a trained correction moves the LM term, never the title prior (the sampled-candidate path agrees)."""
    spec = _spec(**{**TEXT, "title_skip": "title"}, temperature=0.1)
    _, _, model = _model(data, spec)
    with torch.no_grad():
        model.title_skip.fill_(0.5)
        model.item_delta.normal_(0, 1.0)  # a large correction, as after many epochs
        row, got, h, v, t = _scored(model)
        want = (v @ (h / h.norm()) + 0.5 * (t @ t[2])) / 0.1
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        some = torch.tensor([7, 2, 0])
        sub = model.logits(h[None], row.prev, some)[0]
        torch.testing.assert_close(sub, want[some], rtol=1e-4, atol=1e-4)


def test_both_skips_add_one_weighted_cosine_each_and_start_as_either_alone(data):
    """title_skip: both -> (cos(h, v_i) + a * cos(v_prev, v_i) + b * cos(t_prev, t_i)) / temperature; a = b = 0.5 at
    start, when v = t, so the first scores equal a single skip's."""
    spec = _spec(**{**TEXT, "title_skip": "both"}, temperature=0.1)
    _, _, model = _model(data, spec)
    assert float(model.title_skip) == 0.5 and float(model.title_patch_skip) == 0.5
    with torch.no_grad():
        model.title_skip.fill_(0.3)
        model.title_patch_skip.fill_(0.8)
        model.item_delta.normal_(0, 1.0)
        row, got, h, v, t = _scored(model)
        want = (v @ (h / h.norm()) + 0.3 * (v @ v[2]) + 0.8 * (t @ t[2])) / 0.1
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        some = torch.tensor([7, 2, 0])
        torch.testing.assert_close(model.logits(h[None], row.prev, some)[0], want[some], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("skip", ["item", "both"])
def test_without_skip_self_the_skip_lifts_the_items_like_the_newest_one_not_itself(data, skip):
    """skip_self: false -> the newest history item (2) gets the LM term alone; every other item the same score as
    with the skip on itself (full catalog, sampled candidates, a chunk of the catalog)."""
    spec = _spec(**{**TEXT, "title_skip": skip}, temperature=0.1)
    _, _, model = _model(data, spec)
    _, _, alone = _model(data, _spec(**{**TEXT, "title_skip": skip, "skip_self": False}, temperature=0.1))
    alone.load_state_dict(model.state_dict())
    with torch.no_grad():
        row, with_self, h, v, _ = _scored(model)
        got = alone.last_scores(row)[0]
        others = torch.arange(len(got)) != 2
        torch.testing.assert_close(got[others], with_self[others], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[2], (v[2] @ (h / h.norm())) / 0.1, rtol=1e-4, atol=1e-4)
        assert float(with_self[2] - got[2]) == pytest.approx(float(sum(w for w in (model.title_skip,
                                                                                   model.title_patch_skip)
                                                                       if w is not None)) / 0.1, rel=1e-4)
        some = torch.tensor([7, 2, 0])
        torch.testing.assert_close(alone.logits(h[None], row.prev, some)[0], got[some], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(alone.logits(h[None], row.prev, slice(1, 5))[0], got[1:5], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_the_item_bias_adds_one_learned_logit_per_item(data, score):
    """item_bias: scores = the same model's scores without it + b_i (full catalog, sampled candidates, a chunk)."""
    text = TEXT if score == "cosine" else {"score": "dot"}
    _, _, plain = _model(data, _spec(**text, temperature=0.1))
    _, _, biased = _model(data, _spec(**text, temperature=0.1, item_bias=True))
    assert biased.item_bias is not None and not biased.item_bias.detach().any()  # zero at start
    biased.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        biased.item_bias.normal_(0, 1.0)
        row, want, h, _, _ = _scored(plain)
        got = biased.last_scores(row)[0]
        torch.testing.assert_close(got, want + biased.item_bias, rtol=1e-4, atol=1e-4)
        some = torch.tensor([7, 2, 0])
        torch.testing.assert_close(biased.logits(h[None], row.prev, some)[0], got[some], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(biased.logits(h[None], row.prev, slice(1, 5))[0], got[1:5], rtol=1e-4, atol=1e-4)


def test_a_boolean_title_skip_means_the_item_space_one():
    assert _cfg(**{**TEXT, "title_skip": True}).title_skip == "item"
    assert _cfg(score="cosine", title_skip=False).title_skip == "off"


def test_same_title_items_are_not_negatives(data):
    spec = _spec(**TEXT, temperature=1.0)
    _, _, model = _model(data, spec)
    key = _key_of(data)
    twin, cold = key[3], key[COLD]  # the fixture's cold item has the title of item 3
    assert model.groups[twin] == model.groups[cold]
    with torch.no_grad():  # the twins score alike: the cold one is the target's strongest competitor
        model.item_delta[cold] = model.item_delta[twin]
    store = SequenceStore(data)
    lay = Layout.of(spec.train)
    windows, is_target = plan_windows(store, lay)
    with torch.no_grad():
        rows = window_rows(store, windows, np.arange(len(windows.row)), is_target, model.item_vectors(),
                           model.start(), lay)
        keep = rows.targets == twin
        assert keep.any()
        masked = catalog_loss(model, rows, reduction="none", mask_same_title=True)
        plain = catalog_loss(model, rows, reduction="none")
        logits = model.logits(model.states(rows, rows.loss_at), rows.prev)
        logits[keep, cold] = float("-inf")  # by hand: the twin's target rows lose the cold item as a competitor
        want = torch.nn.functional.cross_entropy(logits, rows.targets, reduction="none")
    torch.testing.assert_close(masked, want)
    assert (masked[keep] < plain[keep]).all() and torch.equal(masked[~keep], plain[~keep])


@pytest.mark.parametrize("hold", [True, False])
def test_never_target_items_keep_their_title_vector(data, tmp_path, hold):
    """With cold_keep_title the correction and the bias of an item that is never a train target stay exactly zero
    (Adam and weight decay included); without it the softmax moves them."""
    spec = _spec(**{**TEXT, "cold_keep_title": hold}, epochs=2, item_decay=0.1, item_bias=True)
    _, _, model = _model(data, spec)
    with torch.no_grad():
        model.item_delta.zero_()
    store = SequenceStore(data)
    objective = ScoringObjective(store, spec.train)
    fit(model.train(), objective, spec.train, tmp_path / "run", progress=False)
    never = np.setdiff1d(np.arange(model.patches.shape[0]), store.flat[objective.is_target])
    assert _key_of(data)[COLD] in never
    delta, bias = model.item_delta.detach(), model.item_bias.detach()
    assert bool((delta[never] == 0).all()) == hold and bool((bias[never] == 0).all()) == hold
    trained = store.flat[objective.is_target]
    assert (delta[trained].abs().sum(1) > 0).all() and (bias[trained] != 0).all()


def test_a_cosine_title_skip_model_learns_and_ranks_after_reload(data, tmp_path):
    spec = _spec(**TEXT, epochs=30)
    train_run(data, tmp_path / "run", spec, progress=False)
    runtime = Runtime.load(read_items(data / "items.parquet"), spec, tmp_path / "run" / "trainable.pt")
    assert float(runtime.model.title_skip) != 1.0  # the skip weight trained and was saved with the weights
    got = evaluate_split(runtime, data, tmp_path / "eval", EvalConfig(split="test", bf16=False),
                         progress=False).metrics
    assert got["hr_5"] >= 0.5, got


def test_truncating_the_lm_keeps_its_first_layers(data):
    spec = _spec()
    items = read_items(data / "items.parquet")
    lm = Base(items.title.astype(str).tolist(), spec.model, spec.prompt).model
    first = lm.model.layers[0]
    truncate_layers(lm, 1)
    assert len(lm.model.layers) == 1 and lm.model.layers[0] is first and lm.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="has only 1 transformer layers"):
        truncate_layers(lm, 2)


def test_the_title_skip_needs_cosine_scores():
    with pytest.raises(ValueError, match="title_skip adds a cosine similarity"):
        _cfg(title_skip=True)


class _Store:
    """A hand-made `SequenceStore`: two users' sequences and their samples."""

    def __init__(self):
        self.flat = np.array([10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23], dtype=np.int32)
        self.offsets = np.array([0, 7, 11])
        self.row_of_user = {5: 0, 9: 1}
        # user 5: train targets at positions 3 and 4, val at 5, test at 6; user 9: only a test target (position 3)
        self.sample_user = np.array([5, 5, 5, 5, 9])
        self.sample_pos = np.array([3, 4, 5, 6, 3])
        self.sample_split = np.array(["train", "train", "val", "test", "test"])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.sample_split == split)


def test_prefix_targets_are_every_position_of_the_training_prefix_after_the_first():
    store = _Store()
    _, samples = plan_windows(store, Layout(context=2, stride=2))
    _, prefix = plan_windows(store, Layout(context=2, stride=2), prefix=True)
    assert np.flatnonzero(samples).tolist() == [3, 4]
    assert np.flatnonzero(prefix).tolist() == [1, 2, 3, 4]  # not position 0 (nothing before it), nor val / test


def test_prefix_targets_are_what_sasrec_trains_on_each_in_one_window(data):
    """On a prepared split: the loss positions of all `prefix` windows are exactly SASRec's training targets (every
    position after the first of each user's training prefix), each once."""
    from patchrec.baselines import _train_prefixes

    store = SequenceStore(data)
    lay = Layout(context=6, stride=5)
    windows, is_target = plan_windows(store, lay, prefix=True)
    got: list[int] = []
    for w in range(len(windows)):
        rows = window_rows(store, windows, np.array([w]), is_target, torch.zeros(N_ITEMS + 1, 8), torch.zeros(8), lay)
        got += rows.targets.tolist()
    want = [int(i) for seq in _train_prefixes(store) for i in seq[1:]]
    assert sorted(got) == sorted(want)
    assert len(want) > int(plan_windows(store, lay)[1].sum())  # more than the samples: the short prefixes count
