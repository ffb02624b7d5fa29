"""Bad input: a quarantine row with a reason and location, or a clear error naming the file — never a silent drop."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from patchrec.data.formats import SourceError
from patchrec.data.ingest import IngestError
from tests.conftest import ml100k_rows, write

GOOD = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ml100k_rows())


def _quarantine(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "quarantine.parquet")


def _balanced(s: dict) -> bool:
    return s["rows_read"] == s["rows_accepted"] + s["rows_quarantined"] + s["rows_deduplicated"] + s["rows_filtered"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1,2,5,1000000000", "wrong column count"),  # wrong delimiter
        ("1\t2\t5", "wrong column count"),
        ("1\t2\t5\t1000000000\textra", "wrong column count"),
        ("u1\t2\t5\t1000000000", "user id is not an integer"),
        ("1\titem\t5\t1000000000", "item id is not an integer"),
        ("1\t99\t5\t1000000000", "item 99 is not in the catalog"),
        ("1\t2\t5\t-5", "timestamp is zero or negative"),
        ("1\t2\t5\t0", "timestamp is zero or negative"),
        ("1\t2\t5\t99999999999", "timestamp is in the future"),
        ("1\t2\t5\tyesterday", "timestamp is not a number"),
        ("1\t2\tNaN\t1000000000", "rating is not finite"),
        ("1\t2\tgood\t1000000000", "rating is not a number"),
    ],
)
def test_bad_row_is_quarantined_with_reason(ml100k_dir, prepare, tmp_path, line, reason):
    write(ml100k_dir / "u.data", GOOD + line + "\n")
    s = prepare("movielens-100k", ml100k_dir)
    assert s["rows_read"] == 37 and s["rows_quarantined"] == 1 and _balanced(s)
    q = _quarantine(tmp_path / "out")
    assert len(q) == 1 and reason in q.reason.iloc[0], q.reason.iloc[0]
    assert q.source_file.iloc[0] == "u.data"
    assert q.line.iloc[0] == 37 or q.row.iloc[0] == 37  # parse rejects give the line, typed checks the data row


def test_invalid_utf8_and_10mb_line_are_quarantined_by_line(tmp_path, prepare):
    raw = tmp_path / "mlcsv"
    rows = "".join(f"{u},{i},5,{1_000_000_000 + 10 * u + i}\n" for u in (1, 2) for i in (10, 20, 30, 40))
    body = (
        ("userId,movieId,rating,timestamp\n" + rows).encode()
        + b"3,10,5,\xff\xfe\n"
        + b"3,10,5,"
        + b"9" * 10_000_000
        + b"\n"
    )
    write(raw / "ratings.csv", body)
    write(raw / "movies.csv", "movieId,title,genres\n10,A (1990),x\n20,B (1991),x\n30,C (1992),x\n40,D (1993),x\n")
    s = prepare("movielens-csv", raw)
    assert s["rows_read"] == 10 and s["rows_quarantined"] == 2 and _balanced(s)
    q = _quarantine(tmp_path / "out").sort_values("line")
    assert q.line.tolist() == [10, 11]
    assert "invalid utf-8" in q.reason.iloc[0] and "line longer than" in q.reason.iloc[1]
    assert len(q.raw.iloc[1]) <= 1000


def test_duplicates_are_counted_not_lost(ml100k_dir, prepare):
    first = GOOD.splitlines()[0]
    write(ml100k_dir / "u.data", GOOD + first + "\n" + first + "\n")
    s = prepare("movielens-100k", ml100k_dir)
    assert (s["rows_read"], s["rows_deduplicated"], s["rows_accepted"]) == (38, 2, 36) and _balanced(s)


def test_empty_title_quarantines_item_and_its_interactions(ml100k_dir, prepare, tmp_path):
    text = (ml100k_dir / "u.item").read_text(encoding="latin-1").replace("Movie 2 (1992)", "  ")
    write(ml100k_dir / "u.item", text, encoding="latin-1")
    s = prepare("movielens-100k", ml100k_dir)
    q = _quarantine(tmp_path / "out")
    assert s["items"] == 7 and s["items_quarantined"] == 1
    assert (q.reason == "title is empty").sum() == 1
    n_item2 = sum(1 for _, i, _, _ in ml100k_rows() if i == 2)
    assert s["rows_quarantined"] == n_item2 and _balanced(s)


def test_json_line_that_is_not_json(tmp_path, prepare):
    raw = tmp_path / "amazon"
    good = [json.dumps({"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 5, "unixReviewTime": 1_400_000_000 + i})
            for u in range(2) for i in range(4)]
    write(raw / "reviews.json", "\n".join(good[:3] + ["{not json", "[1, 2]"] + good[3:]) + "\n")
    write(raw / "meta.json", "".join(json.dumps({"asin": f"A{i}", "title": f"T{i}"}) + "\n" for i in range(4)))
    s = prepare("amazon-json", raw)
    q = _quarantine(tmp_path / "out")
    assert s["rows_read"] == 10 and s["rows_quarantined"] == 2 and _balanced(s)
    assert sorted(q.row.tolist()) == [4, 5] and q.reason.str.startswith("line is not a JSON object").all()


def test_truncated_gzip_is_a_clear_error(tmp_path, prepare):
    raw = tmp_path / "amazon"
    data = gzip.compress(b"".join(json.dumps({"reviewerID": "U", "asin": f"A{i}", "overall": 5,
                                              "unixReviewTime": 1_400_000_000 + i}).encode() + b"\n"
                                  for i in range(5000)))
    write(raw / "reviews.json.gz", data[: len(data) // 2])
    write(raw / "meta.json", json.dumps({"asin": "A1", "title": "T"}) + "\n")
    with pytest.raises(IngestError, match=r"reviews\.json\.gz"):
        prepare("amazon-json", raw)


def test_empty_file_missing_items_and_missing_path_are_clear_errors(ml100k_dir, prepare, tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        prepare("movielens-100k", tmp_path / "nope")
    (ml100k_dir / "u.item").unlink()
    with pytest.raises(SourceError, match=r"u\.item does not exist"):
        prepare("movielens-100k", ml100k_dir)
    write(ml100k_dir / "u.item", "")
    with pytest.raises(SourceError, match=r"u\.item: file is empty"):
        prepare("movielens-100k", ml100k_dir)


def test_kcore_filter_is_counted(tmp_path, prepare):
    from patchrec.config import GenericSource

    raw = tmp_path / "raw"
    write(raw / "items.csv", "id,title\na,A\nb,B\nc,C\n")
    # u1 and u2 rate a and b; u3 rates only c -> with k=2, u3 and c go (1 event); a, b keep 2 each.
    write(raw / "events.csv", "u,i,t\nu1,a,1\nu1,b,2\nu2,a,3\nu2,b,4\nu3,c,5\n")
    source = GenericSource.model_validate(
        {
            "interactions": {"path": "events.csv", "user": "u", "item": "i", "time": "t"},
            "items": {"path": "items.csv", "id": "id", "title": "title"},
        }
    )
    s = prepare("generic", raw, source=source, kcore=2, min_history=1)
    assert (s["rows_filtered_kcore"], s["rows_accepted"], s["users"]) == (1, 4, 2) and _balanced(s)


@pytest.mark.parametrize("title", ["\u200b\u200c", "\u00a0\u3000 ", "\ufeff", "\u3164", "\u2060\u00ad", "\u0301"])
def test_title_without_a_visible_character_quarantines_the_item(prepare, tmp_path, title):
    """Audit: such titles were kept as items and the catalog stage then failed for the whole dataset."""
    from patchrec.config import GenericSource

    raw = tmp_path / "raw"
    write(raw / "events.csv", "u,i,t\n" + "".join(f"u{u},i{(u + k) % 8},{1_000_000_000 + 100 * u + k}\n"
                                                  for u in range(6) for k in range(6)))
    write(raw / "items.csv", "id,title\n" + "".join(f"i{i},{title if i == 2 else f'Thing {i}'}\n" for i in range(8)))
    source = GenericSource.model_validate({
        "interactions": {"path": "events.csv", "user": "u", "item": "i", "time": "t"},
        "items": {"path": "items.csv", "id": "id", "title": "title"}})
    s = prepare("generic", raw, source=source, min_history=1)
    q = _quarantine(tmp_path / "out")
    assert s["items"] == 7 and s["items_quarantined"] == 1 and _balanced(s)
    (reason,) = q[q.stage == "items"].reason  # trimmed to nothing when all of it is whitespace
    assert reason in ("title has no visible character", "title is empty")
    assert "i2" not in set(pd.read_parquet(tmp_path / "out" / "items.parquet").item_key)


def test_latin1_catalog_with_c1_bytes_is_read_not_refused(ml100k_dir, prepare):
    """A latin-1 file may hold bytes 0x80-0x9f (cp1252 punctuation): DuckDB refused the whole file."""
    text = (ml100k_dir / "u.item").read_bytes().replace(b"Movie 2 (1992)", b"Movie \x92two\x85 (1992)")
    write(ml100k_dir / "u.item", text)
    s = prepare("movielens-100k", ml100k_dir)
    assert s["items"] == 8 and s["items_quarantined"] == 0


def test_nan_and_out_of_range_settings_are_refused():
    """Audit: NaN, infinite, negative and zero values reached training, manifests and promotion."""
    from pydantic import ValidationError

    from patchrec.config import DataConfig, ModelConfig, TrainConfig
    from patchrec.profiles import load_pipeline

    bad_train = {"max_grad_norm": -1.0, "lr": float("inf"), "weight_decay": -0.1, "lora_r": 0, "lora_alpha": 0,
                 "lora_dropout": 1.0}
    for key, value in bad_train.items():
        with pytest.raises(ValidationError, match=key):
            TrainConfig(stage="pft", layout="item", **{key: value})
    with pytest.raises(ValidationError, match="max_grad_norm"):
        TrainConfig(stage="pft", layout="item", max_grad_norm=float("nan"))
    for field in ("tiny_hidden", "tiny_layers"):
        with pytest.raises(ValidationError, match=field):
            ModelConfig(**{field: 0})
    for kw in ({"split_ratios": (float("nan"), 0.5, 0.5)}, {"min_rating": float("nan")},
               {"max_future_days": -1.0}, {"split_ratios": (0.0, 0.5, 0.5)}):
        with pytest.raises(ValidationError):
            DataConfig(format="movielens-100k", raw="r", out="o", **kw)
    for key, value in (("registry.margin", float("nan")), ("test.length_penalty", float("inf")),
                       ("pft.max_grad_norm", float("nan")), ("registry.min_val_samples", 0)):
        with pytest.raises(ValueError, match=key.split(".")[1]):
            load_pipeline("tiny", {key: value})
