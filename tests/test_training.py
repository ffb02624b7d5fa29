"""Training: the PPT curriculum is applied, loss falls, and resuming equals an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchrec.checkpoints import latest_checkpoint
from patchrec.config import DataConfig, GenericSource, TrainConfig
from patchrec.data.prepare import prepare_data
from patchrec.data.sequences import SequenceStore
from patchrec.heads.generative import GenerativeObjective
from patchrec.model import add_prompt_tokens, attach_trainable, build_tiny
from patchrec.patching import CatalogTable
from patchrec.prompts import PromptConfig, render_pieces, tokenize_titles
from patchrec.training import fit
from tests.conftest import write

WORDS = ["Red", "Blue", "Night", "Day", "Star", "River", "King", "Ghost", "City", "Dream"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    titles = [f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]}" + (" 2" if i >= 20 else "") for i in range(30)]
    write(raw / "items.csv", "id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(titles)))
    rng = np.random.default_rng(0)
    rows = [(u, int((u + 3 * j + rng.integers(0, 2)) % 30), 1000 * u + j) for u in range(20) for j in range(25)]
    write(raw / "events.csv", "u,i,t\n" + "".join(f"u{u},{i},{t}\n" for u, i, t in rows))
    source = GenericSource.model_validate(
        {
            "interactions": {"path": "events.csv", "user": "u", "item": "i", "time": "t"},
            "items": {"path": "items.csv", "id": "id", "title": "title"},
        }
    )
    out = tmp_path_factory.mktemp("prepared")
    prepare_data(DataConfig(format="generic", raw=raw, out=out, source=source, protocol="loo"))
    return out


def _setup(folder, seed=0):
    import pandas as pd

    titles = pd.read_parquet(folder / "items.parquet").title.tolist()
    cfg = PromptConfig()
    model, tok = build_tiny(titles + [cfg.system, cfg.instruction], seed=seed)
    ids = add_prompt_tokens(model, tok)
    pieces = render_pieces(tok, cfg, ids)
    catalog = CatalogTable.from_token_lists(tokenize_titles(tok, titles))
    return model, pieces, catalog, [ids["seq_start"], ids["item_sep"], ids["seq_end"]]


def _cfg(**kw):
    base = dict(stage="ppt", layout="mixed", batch_size=4, lr=3e-3, max_samples=48, checkpoint_every=3,
                lora_dropout=0.1, max_history=20, bf16=True)
    return TrainConfig(**{**base, **kw})


def test_curriculum_share_rises_with_the_step(data, tmp_path):
    model, pieces, catalog, new = _setup(data)
    torch.manual_seed(0)
    model = attach_trainable(model, _cfg(), new)
    objective = GenerativeObjective(SequenceStore(data, max_history=20), catalog, pieces, _cfg())
    res = fit(model, objective, _cfg(), tmp_path, progress=False)
    s = res.compressed_share
    assert len(s) == 12 and s[0] == 0.0
    assert np.mean(s[:4]) < np.mean(s[4:8]) < np.mean(s[8:])
    assert s[-1] > 0.6  # p = 11/12 at the last step
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_12"


def test_pft_session_loss_falls(data, tmp_path):
    model, pieces, catalog, new = _setup(data)
    cfg = _cfg(stage="pft", layout="session", group=3, max_samples=None, finetune="full", checkpoint_every=1000)
    torch.manual_seed(0)
    model = attach_trainable(model, cfg, new)
    store = SequenceStore(data, max_history=20)
    res = fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path, progress=False)
    assert res.steps > 20 and np.isfinite(res.final_loss)
    assert np.mean(res.losses[-5:]) < 0.8 * np.mean(res.losses[:5])


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_equals_uninterrupted_run(data, tmp_path, finetune):
    store = SequenceStore(data, max_history=20)
    cfg = _cfg(finetune=finetune, lr=1e-3)

    def fresh():
        model, pieces, catalog, new = _setup(data, seed=1)
        torch.manual_seed(123)
        return attach_trainable(model, cfg, new), pieces, catalog

    model, pieces, catalog = fresh()
    fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path / "straight", progress=False)
    straight = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model, pieces, catalog = fresh()
    objective = GenerativeObjective(store, catalog, pieces, cfg)
    fit(model, objective, cfg, tmp_path / "resumed", max_steps=5, progress=False)  # "crash"
    torch.manual_seed(999)  # a new process: different global RNG until the checkpoint restores it
    model, pieces, catalog = fresh()
    res = fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path / "resumed", progress=False)
    assert res.steps == 12
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), straight[n], rtol=0, atol=0, msg=n)


def test_rerun_after_the_last_checkpoint_reports_the_real_run(data, tmp_path):
    """Killed after the last checkpoint but before the stage's files: the re-run reports the whole run, not NaN/0."""
    store = SequenceStore(data, max_history=20)
    cfg = _cfg(checkpoint_every=2, keep_checkpoints=2)
    model, pieces, catalog, new = _setup(data)
    torch.manual_seed(0)
    model = attach_trainable(model, cfg, new)
    first = fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path, progress=False)
    again = fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path, progress=False)
    assert again.final_loss == first.final_loss and np.isfinite(again.final_loss)
    assert again.samples == first.samples == 48 and again.losses == first.losses
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_10", "step_12"]


def test_a_planted_pickle_in_a_checkpoint_is_not_executed(data, tmp_path):
    import pickle

    store = SequenceStore(data, max_history=20)
    cfg = _cfg(max_samples=8)
    model, pieces, catalog, new = _setup(data)
    model = attach_trainable(model, cfg, new)
    fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path, max_steps=1, progress=False)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ck = latest_checkpoint(tmp_path / "checkpoints")
    with open(ck / "state.pt", "wb") as fh:
        pickle.dump({"step": 1, "evil": Evil()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path, progress=False)
    assert not marker.exists()


def test_a_nan_loss_stops_training_before_any_update_is_saved(data, tmp_path):
    """Audit: NaN settings trained on a NaN loss and stored the NaN as null in an unreadable manifest."""
    from patchrec.heads import Terms
    from patchrec.training import NonFiniteLoss

    store = SequenceStore(data, max_history=20)
    cfg = _cfg(checkpoint_every=1)
    model, pieces, catalog, new = _setup(data)
    model = attach_trainable(model, cfg, new)

    class Poisoned(GenerativeObjective):
        def loss(self, model, micro, progress, generator):
            terms = super().loss(model, micro, progress, generator)
            return Terms(terms.total * float("nan"), terms.terms, terms.targets, terms.share)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(NonFiniteLoss, match=r"step 1: loss nan"):
        fit(model, Poisoned(store, catalog, pieces, cfg), cfg, tmp_path, progress=False)
    assert latest_checkpoint(tmp_path / "checkpoints") is None
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), before[n]), n


def test_training_json_reads_back_as_the_typed_result(data, tmp_path):
    from patchrec.io import write_json
    from patchrec.training import StageResult

    store = SequenceStore(data, max_history=20)
    cfg = _cfg(max_samples=8)
    model, pieces, catalog, new = _setup(data)
    model = attach_trainable(model, cfg, new)
    res = fit(model, GenerativeObjective(store, catalog, pieces, cfg), cfg, tmp_path, progress=False)
    write_json(res.to_dict(), tmp_path / "training.json")
    assert StageResult.read(tmp_path / "training.json") == res
    write_json({"steps": 1}, tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"bad\.json is not a training result"):
        StageResult.read(tmp_path / "bad.json")
