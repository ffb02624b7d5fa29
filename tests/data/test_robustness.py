"""Regression tests for data defects an outside test found: window exports, protocols, paths, generations."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from patchrec.config import DataConfig
from patchrec.data.formats import SourceError
from patchrec.data.ingest import IngestError
from patchrec.data.validation import ValidationFailed
from tests.conftest import write

HEAD = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def _windows(seq: list[str], targets: range, cut: int, descending: bool) -> list[str]:
    rows = [f"u\t{' '.join(seq[max(0, p - cut):p])}\t{seq[p]}" for p in targets]
    return rows[::-1] if descending else rows


def _benchmark(raw: Path, train: list[str], valid: list[str], test: list[str], n_items: int) -> None:
    write(raw / "x.train.inter", HEAD + "".join(r + "\n" for r in train))
    write(raw / "x.valid.inter", HEAD + "".join(r + "\n" for r in valid))
    write(raw / "x.test.inter", HEAD + "".join(r + "\n" for r in test))
    write(raw / "x.item", "item_id:token\ttitle:token_seq\n" + "".join(f"i{k}\tItem {k}\n" for k in range(n_items)))


def _sequences(out: Path) -> list[list[str]]:
    seqs = pd.read_parquet(out / "sequences.parquet")
    keys = pd.read_parquet(out / "items.parquet").set_index("item_idx").item_key
    return [[keys[i] for i in s] for s in seqs["items"]]


@pytest.mark.parametrize("descending", [False, True])
def test_recbole_benchmark_longest_first_and_cut_histories(tmp_path, prepare, descending):
    seq = [f"i{k}" for k in range(14)]
    raw = tmp_path / "rb"
    _benchmark(raw, _windows(seq, range(1, 12), 5, descending), _windows(seq, range(12, 13), 5, descending),
               _windows(seq, range(13, 14), 5, descending), 14)
    s = prepare("recbole-benchmark", raw, min_history=1)
    assert _sequences(tmp_path / "out") == [seq]
    assert (s["interactions"], s["rows_quarantined"], s["lines_read"]) == (14, 0, 13)
    assert s["samples"] == {"train": 11, "val": 1, "test": 1}


def test_recbole_benchmark_inconsistent_and_duplicate_rows_are_quarantined(tmp_path, prepare):
    seq = [f"i{k}" for k in range(8)]
    train = _windows(seq, range(1, 6), 3, descending=True)
    train += ["u\ti1 i9 i2\ti3", train[0]]  # a window that is not part of the sequence, and a repeated row
    raw = tmp_path / "rb"
    _benchmark(raw, train, _windows(seq, range(6, 7), 3, False), _windows(seq, range(7, 8), 3, False), 10)
    s = prepare("recbole-benchmark", raw, min_history=1)
    assert _sequences(tmp_path / "out") == [seq]
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet").sort_values("reason")
    assert q.reason.str.contains("duplicate window").sum() == 1
    assert q.reason.str.contains("does not continue the user's rebuilt sequence").sum() == 1
    assert q.reason.str.contains("x.train.inter row").all()
    assert s["rows_read"] == s["rows_accepted"] + s["rows_quarantined"] == 10


def test_paper_protocol_without_timestamps(tmp_path, prepare):
    raw = tmp_path / "rb"
    seq = [f"i{k}" for k in range(6)]
    _benchmark(raw, _windows(seq, range(1, 4), 5, False), _windows(seq, range(4, 5), 5, False),
               _windows(seq, range(5, 6), 5, False), 6)
    with pytest.raises(ValueError, match="has no timestamps"):
        prepare("recbole-benchmark", raw, protocol="paper", min_history=1)
    assert not (tmp_path / "out").exists()


def test_paper_protocol_on_the_papers_files_is_their_split(tmp_path, prepare):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "paper"
    raw.mkdir()
    pq.write_table(pa.table({
        "user_index": pa.array([0], pa.int32()), "items": pa.array([[3, 1, 2, 0, 1, 2]], pa.list_(pa.int32())),
        "train_first": [0.0], "train_last": [3.0], "val_first": [4.0], "val_last": [4.0],
        "test_first": [5.0], "test_last": [5.0]}), raw / "sequences.parquet")
    pq.write_table(
        pa.table({"item_id": pa.array([0, 1, 2, 3], pa.int32()), "title": list("ABCD")}), raw / "items.parquet"
    )
    s = prepare("patchrec-paper", raw, protocol="paper")
    assert s["protocol"] == "given" and s["samples"] == {"train": 1, "val": 1, "test": 1}


def test_paths_that_leave_their_folder_are_refused(tmp_path, ml100k_dir):
    from patchrec.config import GenericSource
    from patchrec.data.formats import plan_files

    for out in (ml100k_dir, ml100k_dir / "prepared"):
        with pytest.raises(ValueError, match="inside raw"):
            DataConfig(format="movielens-100k", raw=ml100k_dir, out=out)
    with pytest.raises(ValueError, match="raw .* is inside out"):
        DataConfig(format="movielens-100k", raw=ml100k_dir, out=tmp_path)
    write(tmp_path / "x" / "events1.csv", "u,i,t\n")
    for pattern in ("../x/events*.csv", str(tmp_path / "x" / "events*.csv")):
        source = GenericSource.model_validate({"interactions": {"path": pattern, "user": "u", "item": "i", "time": "t"},
                                               "items": {"path": "items.csv", "id": "id", "title": "t"}})
        with pytest.raises(SourceError, match="leaves the raw folder"):
            plan_files(DataConfig(format="generic", raw=ml100k_dir, out=tmp_path / "o", source=source))
    os.symlink(tmp_path / "x" / "events1.csv", ml100k_dir / "linked.csv")
    source = GenericSource.model_validate(
        {
            "interactions": {"path": "linked.csv", "user": "u", "item": "i", "time": "t"},
            "items": {"path": "u.item", "id": "id", "title": "t"},
        }
    )
    with pytest.raises(SourceError, match="resolves outside the raw folder"):
        plan_files(DataConfig(format="generic", raw=ml100k_dir, out=tmp_path / "o", source=source))


def _published(out: Path) -> Path:
    assert out.is_symlink()
    return out.resolve()


def test_generations_publish_only_validated_data(tmp_path, prepare, ml100k_dir, monkeypatch):
    out = tmp_path / "out"
    first = prepare("movielens-100k", ml100k_dir)
    gen1 = _published(out)
    assert (gen1 / "prepare.json").is_file() and first["changed"]
    write(ml100k_dir / "u.data.2", "")  # not read by this format: a re-run is unchanged
    again = prepare("movielens-100k", ml100k_dir)
    assert not again["changed"] and _published(out) == gen1

    # a failed validation publishes nothing: readers keep the first generation
    import patchrec.data.validation as validation

    original = validation._suites

    def failing(tables, max_time):
        suites = original(tables, max_time)
        suites["items"].append(
            validation.gx_expectations().ExpectColumnValuesToBeBetween(column="item_idx", max_value=2)
        )
        return suites

    monkeypatch.setattr(validation, "_suites", failing)
    with pytest.raises(ValidationFailed):
        prepare("movielens-100k", ml100k_dir, min_history=2)
    assert _published(out) == gen1
    monkeypatch.setattr(validation, "_suites", original)

    second = prepare("movielens-100k", ml100k_dir, min_history=2)  # new settings -> a new generation
    gen2 = _published(out)
    assert gen2 != gen1 and second["changed"] and gen1.exists()  # the previous generation is kept
    prepare("movielens-100k", ml100k_dir, min_history=1)
    assert not gen1.exists() and gen2.exists()  # only the current and the previous one are kept
    assert not list(out.parent.glob("out.generations/build-*"))


def test_legacy_folder_is_adopted_and_foreign_folder_refused(tmp_path, prepare, ml100k_dir):
    out = tmp_path / "out"
    prepare("movielens-100k", ml100k_dir)
    gen = out.resolve()
    out.unlink()
    os.replace(gen, out)  # what an older version left: a plain folder
    s = prepare("movielens-100k", ml100k_dir)
    assert not s["changed"] and out.is_symlink() and (out / "interactions.parquet").is_file()
    foreign = tmp_path / "mine"
    write(foreign / "notes.txt", "keep me")
    with pytest.raises(SourceError, match="is not a prepared folder"):
        prepare("movielens-100k", ml100k_dir, out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_truncated_last_line_is_quarantined(ml100k_dir, prepare, tmp_path):
    text = (ml100k_dir / "u.data").read_text()
    write(ml100k_dir / "u.data", text + "8\t16\t5\t88")  # cut off mid-write: no newline, a 1970 timestamp
    s = prepare("movielens-100k", ml100k_dir)
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert s["rows_read"] == 37 and s["rows_quarantined"] == 1
    assert q.reason.tolist() == ["timestamp is before 1995-01-01: 88"]


def test_amazon_json_link_leaving_raw_is_refused(tmp_path):
    """Audit: the amazon-json reader followed a link out of --raw (the generic format refused it)."""
    from patchrec.data.formats import plan_files

    outside = write(tmp_path / "elsewhere" / "reviews.json", '{"reviewerID": "U", "asin": "A", "overall": 5}\n')
    raw = tmp_path / "raw"
    write(raw / "meta.json", '{"asin": "A", "title": "T"}\n')
    os.symlink(outside, raw / "reviews.json")
    with pytest.raises(SourceError, match=r"reviews\.json resolves outside the raw folder"):
        plan_files(DataConfig(format="amazon-json", raw=raw, out=tmp_path / "o"))


def test_files_that_look_like_data_and_are_not_read_are_named(ml100k_dir, prepare, caplog):
    write(ml100k_dir / "u1.base", "1\t1\t5\t1000000000\n")
    write(ml100k_dir / "extra" / "ratings-2.csv.gz", b"")
    write(ml100k_dir / "README", "notes")
    with caplog.at_level("WARNING", logger="patchrec.data.ingest"):
        s = prepare("movielens-100k", ml100k_dir)
    assert s["files_ignored"] == ["extra/ratings-2.csv.gz", "u1.base"]
    assert "extra/ratings-2.csv.gz, u1.base" in caplog.text and "README" not in caplog.text


def test_min_history_above_every_history_publishes_nothing(ml100k_dir, prepare, tmp_path):
    """Audit: --min-history above every history validated and published a generation with 0 samples."""
    with pytest.raises(SourceError, match=r"no sample in any split .*longest history 6 items.*min_history=50"):
        prepare("movielens-100k", ml100k_dir, min_history=50)
    assert not (tmp_path / "out").exists()


def test_nothing_survives_says_why(ml100k_dir, prepare):
    """Audit: with every row filtered by rating the error said 'see quarantine.parquet'."""
    with pytest.raises(IngestError, match=r"of 36 rows read, 36 below min_rating=6\.0$"):
        prepare("movielens-100k", ml100k_dir, min_rating=6.0)
