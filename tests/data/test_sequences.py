"""Sequences and splits, checked against hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from patchrec.config import GenericSource
from patchrec.data.sequences import SequenceStore
from tests.conftest import write

SOURCE = GenericSource.model_validate({
    "interactions": {"path": "events.csv", "user": "u", "item": "i", "time": "t"},
    "items": {"path": "items.csv", "id": "id", "title": "title"},
})


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "items.csv", "id,title\n" + "".join(f"{k},T{k}\n" for k in range(10)))
    # user a: 6 events at t=1..6; user b: 4 events at t=7..10; the tie at t=3 (items 9 then 8) keeps file order
    rows = [("a", 0, 1), ("a", 1, 2), ("a", 9, 3), ("a", 8, 3), ("a", 2, 4), ("a", 3, 5),
            ("b", 4, 7), ("b", 5, 8), ("b", 6, 9), ("b", 7, 10)]
    write(raw / "events.csv", "u,i,t\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return raw


def _samples(tmp_path) -> list[tuple[int, int, str]]:
    df = pd.read_parquet(tmp_path / "out" / "samples.parquet")
    return list(df.itertuples(index=False, name=None))


def test_sequences_are_chronological_with_file_order_tie_break(raw, prepare, tmp_path):
    prepare("generic", raw, source=SOURCE)
    seqs = pd.read_parquet(tmp_path / "out" / "sequences.parquet")
    assert seqs["items"].map(list).tolist() == [[0, 1, 9, 8, 2, 3], [4, 5, 6, 7]]


def test_paper_protocol_global_chronological_split(raw, prepare, tmp_path):
    # 10 events, ratios 0.6/0.2/0.2: global ranks 0-5 train, 6-7 val, 8-9 test.
    # Chronological order: a0..a5 (ranks 0-5), then b at t=7..10 (ranks 6..9).
    s = prepare("generic", raw, source=SOURCE, split_ratios=(0.6, 0.2, 0.2))
    assert _samples(tmp_path) == [(0, 3, "train"), (0, 4, "train"), (0, 5, "train"), (1, 3, "test")]
    assert s["samples"] == {"train": 3, "val": 0, "test": 1}


def test_leave_one_out(raw, prepare, tmp_path):
    prepare("generic", raw, source=SOURCE, protocol="loo", min_history=1)
    assert _samples(tmp_path) == [(0, 1, "train"), (0, 2, "train"), (0, 3, "train"), (0, 4, "val"), (0, 5, "test"),
                                  (1, 1, "train"), (1, 2, "val"), (1, 3, "test")]


def test_given_protocol_needs_a_source_split(raw, prepare):
    with pytest.raises(ValueError, match="carries a split"):
        prepare("generic", raw, source=SOURCE, protocol="given")


def test_store_truncates_history_to_max(raw, prepare, tmp_path):
    prepare("generic", raw, source=SOURCE, protocol="loo", min_history=1)
    store = SequenceStore(tmp_path / "out", max_history=2)
    test = store.indices("test")
    hist, target = store.sample(int(test[0]))
    assert hist.tolist() == [8, 2] and target == 3
    full = SequenceStore(tmp_path / "out")
    hist, target = full.sample(int(test[0]))
    assert np.array_equal(hist, [0, 1, 9, 8, 2]) and target == 3


def test_an_empty_split_is_an_error_not_nan_metrics(raw, prepare, tmp_path):
    """Audit: an empty split produced NaN metrics (and an IndexError in the catalog stage)."""
    from patchrec.data.sequences import sample_split

    s = prepare("generic", raw, source=SOURCE, split_ratios=(0.9, 0.0, 0.1), min_history=1)
    assert s["samples"]["val"] == 0 and s["samples"]["train"] > 0
    store = SequenceStore(tmp_path / "out")
    with pytest.raises(ValueError, match="split 'val' has no sample to rank"):
        sample_split(store, "val", None, 0)
    assert len(sample_split(store, "train", None, 0)) == s["samples"]["train"]
