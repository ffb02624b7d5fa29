"""The catalog scoring head: no leakage in a window, exact batched ranking, it learns, exact resume, cold items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from patchrec.baselines import evaluate_baseline
from patchrec.config import EvalConfig, ModelConfig, TrainConfig
from patchrec.data.sequences import SequenceStore
from patchrec.evaluation.split import evaluate_split
from patchrec.heads.scoring import ScoringObjective, ScoringRanker
from patchrec.heads.scoring.model import (
    Layout,
    assemble_rows,
    catalog_loss,
    history_row,
    plan_windows,
    scoring_model,
    window_rows,
)
from patchrec.runtime import Base, RunSpec, Runtime, read_items
from patchrec.training import fit, train_run
from tests.conftest import N_WALK_ITEMS as N_ITEMS

COLD = N_ITEMS  # an item in the catalog that no user ever interacted with
TEXT = {"score": "cosine", "title_skip": True, "cold_keep_title": True, "mask_same_title": True}  # the text levers


def _cfg(**kw) -> TrainConfig:
    base = dict(stage="pft", layout="item", head="scoring", context=6, stride=5, group=2, sessions=3, batch_size=8,
                lr=3e-3, epochs=4, checkpoint_every=1000, lora_dropout=0.0, bf16=False)
    return TrainConfig(**{**base, **kw})


def _spec(**kw) -> RunSpec:
    return RunSpec(train=_cfg(**kw), model=ModelConfig(base="tiny", tiny_hidden=32, tiny_layers=2))


def _model(data: Path, spec: RunSpec, seed: int = 0):
    items = read_items(data / "items.parquet")
    base = Base(items.title.astype(str).tolist(), spec.model, spec.prompt)
    torch.manual_seed(seed)
    model = scoring_model(base.model, spec.train, base.new_tokens, base.catalog)
    with torch.no_grad():  # a model that is not the identity at the start: give the correction some values
        model.item_delta.normal_(0, 0.1)
    return items, base, model.eval()


def _key_of(data: Path) -> dict[int, int]:
    items = pd.read_parquet(data / "items.parquet")
    return {int(k): int(i) for k, i in zip(items.item_key, items.item_idx, strict=True)}


@pytest.mark.parametrize(("layout", "text"), [("item", False), ("session", False), ("session", True)])
def test_a_window_position_sees_nothing_of_its_future(data, layout, text):
    """Score at a loss position of a full window == score of a pass over the items before its target only
    (with the text levers too: the title skip's newest item is the one before the target, never the target)."""
    spec = _spec(layout=layout, **(TEXT if text else {}))
    _, _, model = _model(data, spec)
    store = SequenceStore(data)
    lay = Layout.of(spec.train)
    windows, is_target = plan_windows(store, lay)
    picks = np.flatnonzero(windows.lo < windows.item_lo)[:3] if layout == "session" else np.arange(3)
    assert len(picks) == 3  # windows with sessions exist in the session layout
    with torch.no_grad():
        rows = window_rows(store, windows, picks, is_target, model.item_vectors(), model.start(), lay)
        if layout == "item":  # the first windows differ in length and share packed rows: no leak across them
            assert rows.inputs_embeds.shape[0] < len(picks)
        full = model.logits(model.states(rows, rows.loss_at), rows.prev)
        checked = 0
        for i, (b, s, target) in enumerate(zip(rows.loss_w.tolist(), rows.loss_s.tolist(), rows.targets.tolist(),
                                                strict=True)):
            w = picks[b]
            off = int(store.offsets[windows.row[w]])
            n_sessions = int(windows.item_lo[w] - windows.lo[w]) // lay.group
            t = int(windows.item_lo[w]) + s - 1 - n_sessions + 1  # the target's position in the sequence
            assert int(store.flat[off + t]) == target
            items = store.flat[off + int(windows.lo[w]) : off + t].astype(np.int64)  # strictly before the target
            alone = model.last_scores(assemble_rows([(items, n_sessions)], model.item_vectors(), model.start(),
                                                    lay.group))
            torch.testing.assert_close(full[i], alone[0], rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked >= 10


def test_packed_windows_train_exactly_as_padded_ones(data):
    """Packing windows several to a row changes neither a loss nor a gradient, and leaves fewer rows."""
    spec = _spec(**TEXT)
    _, _, model = _model(data, spec)
    store = SequenceStore(data)
    lay = Layout.of(spec.train)
    windows, is_target = plan_windows(store, lay)
    picks = np.arange(len(windows))
    got = {}
    for pack in (False, True):
        model.zero_grad(set_to_none=True)
        rows = window_rows(store, windows, picks, is_target, model.item_vectors(), model.start(), lay, pack)
        loss = catalog_loss(model, rows, reduction="none")
        loss.sum().backward()
        got[pack] = (rows.inputs_embeds.shape, loss.detach(),
                     {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (padded_shape, padded, padded_grads), (packed_shape, packed, packed_grads) = got[False], got[True]
    assert packed_shape[0] < padded_shape[0] and packed_shape[0] * packed_shape[1] < padded_shape[0] * padded_shape[1]
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-5)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 2
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("skip_self", [True, False])
def test_a_compiled_training_step_equals_the_eager_one(data, skip_self):
    """`compile_lm`: training steps run a torch.compile'd body and loss with the same loss and gradients (two packed
    batches of different shapes: dynamic shapes); ranking (eval mode) keeps the plain body; the compiled twin is
    not part of the state dict."""
    spec = _spec(**TEXT, skip_self=skip_self)
    _, _, model = _model(data, spec)
    store = SequenceStore(data)
    lay = Layout.of(spec.train)
    windows, is_target = plan_windows(store, lay)
    keys = set(model.state_dict())
    for picks in (np.arange(0, 9), np.arange(9, 14)):
        got = []
        for compiled in (False, True):
            model.compile_lm = compiled
            model.zero_grad(set_to_none=True)
            rows = window_rows(store, windows, picks, is_target, model.item_vectors(), model.start(), lay)
            loss = catalog_loss(model.train(), rows)
            loss.backward()
            got.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        (eager, eager_grads), (fast, fast_grads) = got
        torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(fast_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    lm = model.lm.get_base_model()
    assert model.body() is not lm.model and model.eval().body() is lm.model
    assert set(model.state_dict()) == keys


def test_the_start_token_is_its_trainable_row_without_merging_the_vocabulary(data):
    """`start()` is the embedding of the start token (its trainable PEFT row under LoRA), and a loss through it
    trains that row alone: the vocabulary table is not copied or given a gradient."""
    spec = _spec()
    _, _, model = _model(data, spec)
    emb = model.lm.get_input_embeddings()
    ids = torch.tensor([model.start_id])
    torch.testing.assert_close(model.start(), emb(ids)[0])
    adapter = emb.token_adapter
    with torch.no_grad():  # a trained row differs from the base table's
        adapter.trainable_tokens_delta["default"].add_(1.0)
    torch.testing.assert_close(model.start(), emb(ids)[0])
    assert not torch.equal(model.start(), adapter.base_layer.weight[model.start_id])
    model.start().sum().backward()
    delta = adapter.trainable_tokens_delta["default"].grad
    row = adapter.token_indices["default"].index(model.start_id)
    assert delta[row].abs().sum() > 0 and delta.abs().sum() == delta[row].abs().sum()
    assert adapter.base_layer.weight.grad is None


def test_batched_ranking_equals_brute_force(data):
    spec = _spec(layout="session")
    items, base, model = _model(data, spec)
    runtime = Runtime(items, spec, base, model)
    ranker = runtime.ranker(bf16=False)
    store = SequenceStore(data, max_history=runtime.max_history)
    cuts = [1, 3, 7, 11, 12, 13, 16]  # item patches only, then one, two and three sessions; rows are padded
    hists = [store.sample(int(i))[0][-cut:] for i, cut in zip(store.indices("test"), cuts, strict=False)]
    got = ranker.rank_many(hists, top_k=10)
    vectors = model.item_vectors()
    for hist, r in zip(hists, got, strict=True):
        row = assemble_rows([history_row(hist, Layout.of(spec.train))], vectors, model.start(), 2)
        with torch.no_grad():
            h = model.hidden(row)[0, -1]
            brute = torch.stack([h @ vectors[i] for i in range(len(items))])
        order = torch.argsort(brute, descending=True, stable=True)[:10]
        assert r.items == order.tolist()
        np.testing.assert_allclose(r.scores, brute[order].numpy(), rtol=1e-4, atol=1e-4)


def test_the_tiny_model_learns_the_sequential_pattern(data, tmp_path):
    spec = _spec(epochs=30)
    res = train_run(data, tmp_path / "run", spec, progress=False)
    assert res.metrics["samples"] > 0
    runtime = Runtime.load(read_items(data / "items.parquet"), spec, tmp_path / "run" / "trainable.pt")
    ecfg = EvalConfig(split="test", max_samples=None, bf16=False)
    got = evaluate_split(runtime, data, tmp_path / "eval", ecfg, progress=False).metrics
    pop = evaluate_baseline("popularity", data, tmp_path / "pop", split="test", progress=False).metrics
    assert got["hr_5"] >= 0.5 and got["hr_5"] > 3 * pop["hr_5"] + 0.1, (got["hr_5"], pop["hr_5"])
    curve = json.loads((tmp_path / "run" / "training.json").read_text())
    assert curve["losses"][-1] < 0.5 * curve["losses"][0]


def test_resume_is_bit_identical(data, tmp_path):
    spec = _spec(layout="session", epochs=2, batch_size=4, checkpoint_every=3)
    store = SequenceStore(data)

    def run(folder: Path, max_steps: int | None = None):
        _, _, model = _model(data, spec, seed=1)
        model.train()
        torch.manual_seed(5)
        res = fit(model, ScoringObjective(store, spec.train), spec.train, folder, max_steps=max_steps, progress=False)
        return model, res

    straight, res = run(tmp_path / "straight")
    run(tmp_path / "resumed", max_steps=4)  # "killed" after step 4 (checkpoints at 3 and 4)
    torch.manual_seed(99)
    resumed, again = run(tmp_path / "resumed")
    assert again.steps == res.steps and again.losses == res.losses
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_an_item_never_trained_on_gets_a_finite_score_and_can_be_recommended(data, tmp_path):
    spec = _spec(epochs=3)
    train_run(data, tmp_path / "run", spec, progress=False)
    runtime = Runtime.load(read_items(data / "items.parquet"), spec, tmp_path / "run" / "trainable.pt")
    cold = _key_of(data)[COLD]
    store = SequenceStore(data)
    assert cold not in set(store.flat.tolist())
    r = runtime.ranker(bf16=False).rank(np.array([_key_of(data)[1], _key_of(data)[2]]), top_k=N_ITEMS + 1)
    assert cold in r.items and np.isfinite(r.scores).all()
    assert torch.isfinite(runtime.model.item_vectors()[cold]).all()


def test_warm_start_from_a_champion_or_a_ppt_run(data, tmp_path):
    """A scoring run starts from a scoring champion's weights (all of them) or a PPT run's LM weights."""
    from patchrec.checkpoints import trainable_weights
    from patchrec.model import attach_trainable
    from patchrec.training import load_init

    spec = _spec()
    _, base, trained = _model(data, spec, seed=3)
    torch.save(trainable_weights(trained), tmp_path / "champion.pt")
    _, _, fresh = _model(data, spec, seed=4)
    load_init(fresh, tmp_path / "champion.pt", spec.train)
    for (n, p), (_, q) in zip(trained.named_parameters(), fresh.named_parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    ppt_spec = RunSpec(train=TrainConfig(stage="ppt", layout="mixed", lora_dropout=0.0, bf16=False), model=spec.model)
    items = read_items(data / "items.parquet")
    ppt_base = Base(items.title.astype(str).tolist(), ppt_spec.model, ppt_spec.prompt)
    ppt = attach_trainable(ppt_base.model, ppt_spec.train, ppt_base.new_tokens)
    with torch.no_grad():
        for name, p in ppt.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    torch.save(trainable_weights(ppt), tmp_path / "ppt.pt")
    _, _, scoring = _model(data, spec, seed=5)
    load_init(scoring, tmp_path / "ppt.pt", spec.train)
    lora_b = [p for n, p in scoring.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool((p == 0.5).all()) for p in lora_b)


@pytest.mark.parametrize("mask_history", [False, True])
def test_ranking_the_catalog_in_chunks_equals_ranking_it_at_once(data, mask_history):
    """Chunks of 7 items (catalog not a multiple of 7), merged: the same top-k, scores and order as one pass."""
    spec = _spec(**TEXT)
    items, base, model = _model(data, spec)
    runtime = Runtime(items, spec, base, model)
    store = SequenceStore(data, max_history=runtime.max_history)
    hists = [store.sample(int(i))[0] for i in store.indices("test")[:6]]
    assert len(items) % 7
    whole = ScoringRanker(runtime, bf16=False, mask_history=mask_history, chunk=len(items)).rank_many(hists, 10)
    chunked = ScoringRanker(runtime, bf16=False, mask_history=mask_history, chunk=7).rank_many(hists, 10)
    for a, b, hist in zip(whole, chunked, hists, strict=True):
        assert a.items == b.items and len(a.items) == 10
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        if mask_history:
            assert not set(a.items) & set(hist.tolist())


def test_sampled_softmax_covering_the_catalog_equals_the_full_softmax(data):
    spec = _spec()
    _, _, model = _model(data, spec)
    store = SequenceStore(data)
    lay = Layout.of(spec.train)
    windows, is_target = plan_windows(store, lay)
    with torch.no_grad():
        rows = window_rows(store, windows, np.arange(4), is_target, model.item_vectors(), model.start(), lay)
        full = catalog_loss(model, rows)
        covering = catalog_loss(model, rows, negatives=2000, generator=torch.Generator().manual_seed(0))
        few = catalog_loss(model, rows, negatives=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(covering, full)
    assert torch.isfinite(few) and few < full  # fewer competitors, lower loss


def test_keep_best_keeps_the_best_validation_probe(data, tmp_path):
    spec = _spec(epochs=6, curve_every_s=1e-3, curve_samples=20, keep_best=True)  # a probe after every step
    res = train_run(data, tmp_path / "run", spec, progress=False)
    curve = json.loads((tmp_path / "run" / "training.json").read_text())["curve"]
    best = max(curve, key=lambda c: c["val_ndcg_10"])
    assert len(curve) == res.metrics["steps"] and res.metrics["kept_step"] == best["step"]
    assert res.metrics["kept_val_ndcg_10"] == best["val_ndcg_10"]
    kept = torch.load(tmp_path / "run" / "trainable.pt", weights_only=True)
    probe = torch.load(tmp_path / "run" / "best_probe.pt", weights_only=True)
    assert kept.keys() == probe.keys() and all(torch.equal(kept[k], probe[k]) for k in kept)
    with pytest.raises(ValueError, match="keep_best selects among validation probes"):
        _cfg(keep_best=True)
