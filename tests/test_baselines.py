"""Baselines (popularity, SASRec), masked ranks and user-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from patchrec.config import DataConfig, SASRecConfig
from patchrec.evaluation.metrics import bootstrap_ci, masked_ranks, paired_bootstrap_diff, summarize_ranks
from patchrec.profiles import load_pipeline


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from patchrec.data.prepare import prepare_data

    cfg = load_pipeline("tiny").data
    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare_data(DataConfig(**{**cfg.model_dump(), "out": out}))
    return out


def test_masked_ranks_by_hand():
    ranked = [[3, 1, 2, 0], [5, 6, 7, 8]]
    hist = [np.array([3, 9]), np.array([6])]
    assert masked_ranks(ranked, hist, [2, 8], k=3).tolist() == [1, 2]  # [1, 2, 0] and [5, 7, 8]
    assert masked_ranks(ranked, hist, [2, 8], k=2).tolist() == [1, -1]  # [1, 2] and [5, 7]


def test_bootstrap_interval():
    ranks = np.array([0, 5, -1, 2, 30, 1, -1, 0])
    users = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    lo, hi = bootstrap_ci(ranks, users, 10, "hr", n=2000)
    point = summarize_ranks(ranks, ks=(10,))["hr_10"]
    assert lo <= point <= hi and lo < hi
    assert bootstrap_ci(np.zeros(6, int), np.arange(6), 5, "ndcg") == (1.0, 1.0)


def test_paired_difference_cancels_shared_noise():
    users = np.repeat(np.arange(10), 3)
    a = np.where(np.arange(30) % 3 == 0, 0, -1)  # a hits one sample of each user at rank 0
    diff, lo, hi = paired_bootstrap_diff(a, np.full(30, -1), users, 20, "hr")
    assert diff == pytest.approx(1 / 3) and lo == hi == pytest.approx(1 / 3)  # every user differs by the same
    assert paired_bootstrap_diff(a, a, users, 20, "ndcg") == (0.0, 0.0, 0.0)
    b = np.where(np.arange(30) < 15, 0, -1)  # b hits the first five users entirely
    diff, lo, hi = paired_bootstrap_diff(b, a, users, 10, "hr")
    assert diff == pytest.approx(0.5 - 1 / 3) and lo < diff < hi


def test_popularity_ranks_training_targets_by_count(tiny_data, tmp_path):
    from patchrec.baselines import evaluate_baseline, popularity_scores
    from patchrec.data.sequences import SequenceStore

    store = SequenceStore(tiny_data)
    counts = popularity_scores(store, 40)
    assert counts.sum() == len(store.indices("train"))
    res = evaluate_baseline("popularity", tiny_data, tmp_path / "pop", progress=False)
    from patchrec.evaluation.result import read_ranks, read_result

    ranked = read_ranks(tmp_path / "pop").ranked
    order = np.argsort(-counts, kind="stable")[:20].tolist()
    assert all(list(r) == order for r in ranked)
    assert res.samples == len(store.indices("test")) and "masked_hr_20" in res.metrics
    assert read_result(tmp_path / "pop") == res and res.model == "popularity"


def test_sasrec_learns_the_stride_pattern(tiny_data, tmp_path):
    from patchrec.baselines import evaluate_baseline

    pop = evaluate_baseline("popularity", tiny_data, tmp_path / "pop", progress=False)
    cfg = SASRecConfig(hidden=32, layers=1, heads=1, max_len=20, batch_size=16, lr=5e-3, max_epochs=60, patience=60)
    res = evaluate_baseline("sasrec", tiny_data, tmp_path / "sas", sasrec=cfg, progress=False)
    log = res.train["log"]
    assert log[-1]["loss"] < log[0]["loss"] - 1.0
    assert res.metrics["hr_10"] > pop.metrics["hr_10"] + 0.2


def test_sasrec_stops_at_its_wall_clock_budget(tiny_data):
    import pyarrow.parquet as pq

    from patchrec.baselines import train_sasrec
    from patchrec.data.sequences import SequenceStore

    store = SequenceStore(tiny_data, max_history=20)
    n_items = pq.read_metadata(tiny_data / "items.parquet").num_rows
    cfg = SASRecConfig(hidden=16, layers=1, heads=1, max_len=20, batch_size=4, max_epochs=50, patience=50)
    _, full = train_sasrec(store, n_items, cfg.model_copy(update={"max_epochs": 2}), progress=False)
    assert (full["epochs"], full["stopped_by"]) == (2, "max_epochs")
    _, short = train_sasrec(store, n_items, cfg.model_copy(update={"max_seconds": 1e-9}), progress=False)
    # the budget is gone after the first batch: that epoch ends there, is validated, and is the last
    assert (short["epochs"], short["stopped_by"]) == (1, "budget") and "val_ndcg_10" in short["log"][0]


def test_every_model_writes_one_eval_schema(tiny_data, tmp_path):
    """eval.json was written in two places with different keys; ranks.parquet had masked_rank for baselines
    only. Now one writer: the same columns and a validated schema for a baseline and an LLM head."""
    import json

    import pytest

    from patchrec.baselines import evaluate_baseline
    from patchrec.config import EvalConfig, ModelConfig, TrainConfig
    from patchrec.evaluation.result import RANK_COLUMNS, read_ranks, read_result
    from patchrec.evaluation.split import evaluate_split
    from patchrec.runtime import RunSpec, Runtime, read_items

    evaluate_baseline("popularity", tiny_data, tmp_path / "pop", progress=False)
    spec = RunSpec(train=TrainConfig(stage="pft", layout="item", head="scoring", context=4, stride=4),
                   model=ModelConfig(base="tiny", tiny_hidden=16, tiny_layers=1, cache_dir=tmp_path / "m"))
    runtime = Runtime.load(read_items(tiny_data / "items.parquet"), spec)
    evaluate_split(runtime, tiny_data, tmp_path / "llm", EvalConfig(split="test", max_samples=None), progress=False)
    for folder in ("pop", "llm"):
        assert tuple(read_ranks(tmp_path / folder).columns) == RANK_COLUMNS
        res = read_result(tmp_path / folder)
        assert res.samples == len(read_ranks(tmp_path / folder)) and "masked_hr_20" in res.metrics
    assert read_result(tmp_path / "llm").model == "scoring" and read_result(tmp_path / "llm").layout == "item"
    (tmp_path / "pop" / "eval.json").write_text(json.dumps({"split": "test"}))
    with pytest.raises(ValueError, match=r"pop/eval\.json is not an evaluation result"):
        read_result(tmp_path / "pop")
