"""Nightly ingestion: a manifest of raw files; nothing is ingested twice or lost."""

from __future__ import annotations

import pandas as pd
import pytest

from patchrec.config import GenericSource
from patchrec.data.formats import SourceError
from patchrec.data.ingest import RawFileChangedError
from tests.conftest import write

SOURCE = GenericSource.model_validate({
    "interactions": {"path": "events-*.csv", "user": "user", "item": "item", "time": "ts"},
    "items": {"path": "items.csv", "id": "id", "title": "title"},
})


def _events(rows: list[tuple[str, str, int]]) -> str:
    return "user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "items.csv", "id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(6)))
    write(raw / "events-1.csv", _events([("alice", f"i{k}", 100 + k) for k in range(5)]))
    return raw


def test_rerun_same_files_changes_nothing(raw, prepare, tmp_path):
    first = prepare("generic", raw, source=SOURCE)
    before = (tmp_path / "out" / "interactions.parquet").read_bytes()
    again = prepare("generic", raw, source=SOURCE)
    assert first["changed"] and not again["changed"] and again["files_new"] == []
    assert again["rows_read"] == first["rows_read"] == 5
    assert (tmp_path / "out" / "interactions.parquet").read_bytes() == before


def test_new_file_is_ingested_once_and_indices_stay_stable(raw, prepare, tmp_path):
    prepare("generic", raw, source=SOURCE)
    items_before = pd.read_parquet(tmp_path / "out" / "items.parquet")
    write(raw / "events-2.csv", _events([("bob", f"i{k}", 200 + k) for k in (5, 0, 1, 2)]))
    s = prepare("generic", raw, source=SOURCE)
    assert s["files_new"] == ["events-2.csv"] and s["rows_read"] == 9 and s["users"] == 2
    s = prepare("generic", raw, source=SOURCE)
    assert not s["changed"] and s["rows_read"] == 9
    users = pd.read_parquet(tmp_path / "out" / "users.parquet")
    assert users.set_index("user_key").user_idx.to_dict() == {"alice": 0, "bob": 1}
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.equals(items_before)


def test_changed_file_is_refused_and_removed_file_reported(raw, prepare, tmp_path):
    prepare("generic", raw, source=SOURCE)
    write(raw / "events-2.csv", _events([("bob", "i1", 300)]))
    prepare("generic", raw, source=SOURCE)
    write(raw / "events-1.csv", _events([("alice", "i1", 999)]))
    with pytest.raises(RawFileChangedError, match=r"events-1\.csv.*double count"):
        prepare("generic", raw, source=SOURCE)
    (raw / "events-1.csv").unlink()
    s = prepare("generic", raw, source=SOURCE)
    assert s["files_removed"] == ["events-1.csv"] and s["rows_read"] == 6  # its rows are kept, not lost
    with pytest.raises(SourceError, match="no sample in any split"):  # bob's one event is all that is left
        prepare("generic", raw, source=SOURCE, rebuild=True)
    write(raw / "events-3.csv", _events([("bob", f"i{k}", 400 + k) for k in range(1, 5)]))
    s = prepare("generic", raw, source=SOURCE, rebuild=True)
    assert s["rows_read"] == 5 and s["files_removed"] == []  # a rebuild forgets the removed file's rows
