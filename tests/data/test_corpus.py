"""A corpus of malformed inputs across every text format, each with its expected outcome.

Each case is one good raw folder with one defect injected in the middle of a file (so that nothing after
it may be lost). Outcome: a quarantine row with the reason at the right line/row, or an error naming the
file. Every quarantine case checks the identity rows_read = physical data lines = accepted + quarantined
+ deduplicated + filtered, where the physical lines are counted here, independently of the code.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from patchrec.data.formats import SourceError
from patchrec.data.ingest import IngestError
from tests.conftest import write

T0 = 1_000_000_000  # 2001-09-09
N_USERS, PER_USER, N_ITEMS = 4, 6, 6


def _events() -> list[tuple[int, int, int, int]]:
    return [(u, (u + k) % N_ITEMS + 1, 4, T0 + 100 * u + k) for u in range(1, N_USERS + 1) for k in range(PER_USER)]


def _ml100k(bad: str) -> dict[str, str]:
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in _events()]
    flags = "|".join(["0"] * 19)
    return {
        "u.data": "\n".join(lines[:10] + [bad] + lines[10:]) + "\n",
        "u.item": "".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|{flags}\n" for i in range(1, N_ITEMS + 1)),
    }


def _dat(bad: str) -> dict[str, str]:
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in _events()]
    return {"ratings.dat": "\n".join(lines[:10] + [bad] + lines[10:]) + "\n",
            "movies.dat": "".join(f"{i}::Movie {i} (1995)::Drama\n" for i in range(1, N_ITEMS + 1))}


def _csv(bad: str) -> dict[str, str]:
    lines = [f"{u},{i},{r}.0,{t}" for u, i, r, t in _events()]
    return {"ratings.csv": "userId,movieId,rating,timestamp\n" + "\n".join(lines[:10] + [bad] + lines[10:]) + "\n",
            "movies.csv": "movieId,title,genres\n" + "".join(f'{i},"Movie {i}, The (1995)",Drama\n'
                                                              for i in range(1, N_ITEMS + 1))}


def _review(u: object, i: object, r: object = 5, t: object = None) -> str:
    return json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": T0 + 7 if t is None else t})


def _amazon(bad: str) -> dict[str, str]:
    lines = [_review(f"U{u}", f"A{i}", r, t) for u, i, r, t in _events()]
    return {"reviews.json": "\n".join(lines[:10] + [bad] + lines[10:]) + "\n",
            "meta.json": "".join(json.dumps({"asin": f"A{i}", "title": f"T{i}"}) + "\n" for i in range(1, N_ITEMS + 1))}


def _recbole(bad: str) -> dict[str, str]:
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in _events()]
    return {
        "ml.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "\n".join(lines[:10] + [bad] + lines[10:])
        + "\n",
        "ml.item": "item_id:token\tmovie_title:token_seq\n"
        + "".join(f"{i}\tFilm {i}\n" for i in range(1, N_ITEMS + 1)),
    }


def _generic(bad: str) -> dict[str, str]:
    lines = [f"u{u},i{i},{t}" for u, i, _, t in _events()]
    source = {"interactions": {"path": "events*.csv", "user": "user", "item": "item", "time": "ts"},
              "items": {"path": "items.csv", "id": "id", "title": "title"}}
    return {"events-1.csv": "user,item,ts\n" + "\n".join(lines[:10] + [bad] + lines[10:]) + "\n",
            "items.csv": "id,title\n" + "".join(f'i{i},"Thing {i}, large"\n' for i in range(1, N_ITEMS + 1)),
            "../source.yaml": yaml.safe_dump(source)}


BUILDERS = {"movielens-100k": _ml100k, "movielens-dat": _dat, "movielens-csv": _csv, "amazon-json": _amazon,
            "recbole": _recbole, "generic": _generic}
HEADER = {"movielens-100k": 0, "movielens-dat": 0, "movielens-csv": 1, "amazon-json": 0, "recbole": 1, "generic": 1}
INTERACTIONS = {"movielens-100k": "u.data", "movielens-dat": "ratings.dat", "movielens-csv": "ratings.csv",
                "amazon-json": "reviews.json", "recbole": "ml.inter", "generic": "events-1.csv"}


@dataclass(frozen=True)
class Case:
    fmt: str
    bad: str
    reason: str  # expected substring of the quarantine reason


CASES = [
    # wrong shape
    Case("movielens-100k", "1,2,5,1000000000", "no tab in the line: wrong delimiter?"),
    Case("movielens-100k", "1\t2\t5", "wrong column count (Expected Number of Columns: 4 Found: 3): too few"),
    Case("movielens-100k", "1\t2\t5\t1000000000\textra", "too many fields"),
    Case("movielens-100k", "   ", "blank line (only whitespace)"),
    Case("movielens-100k", "1\t2\r\t5\t1000000000", "carriage return (CR) inside the line at character 4"),
    Case("movielens-100k", "", "empty line"),
    Case("movielens-dat", "1::2::5", "wrong column count"),
    Case("movielens-dat", "1:2:5:1000000000", "wrong column count"),
    Case("movielens-csv", "1,2,4.0", "wrong column count"),
    Case("movielens-csv", '1,"2,4.0,880000000', "unterminated \" quote"),
    Case("movielens-csv", '"1,2,4.0,880000000', "unterminated \" quote"),
    Case("movielens-csv", "", "empty line"),
    Case("movielens-csv", '1,2,4.0,1000000000\r\r5', "carriage return (CR) inside the line"),
    Case("movielens-csv", "\t", "blank line"),
    Case("recbole", "1\t2", "wrong column count"),
    Case("recbole", "", "empty line"),
    Case("generic", 'u1,"i2,1000000000', "unterminated \" quote"),
    Case("generic", "u1,i2", "wrong column count"),
    Case("generic", "u1,i2\r,1000000000", "carriage return (CR) inside the line at character 6"),
    # ids
    Case("movielens-100k", "u1\t2\t5\t1000000000", "user id is not an integer"),
    Case("movielens-100k", "1\titem\t5\t1000000000", "item id is not an integer"),
    Case("movielens-100k", "1\t99\t5\t1000000000", "item 99 is not in the catalog"),
    Case("movielens-100k", "\t2\t5\t1000000000", "missing user id"),
    Case("movielens-dat", "1::::5::1000000000", "missing item id"),
    Case("movielens-csv", "1,2.5,4.0,1000000000", "item id is not an integer"),
    Case("recbole", "1\t77\t4\t1000000000", "item 77 is not in the catalog"),
    Case("generic", "u1,nope,1000000000", "item nope is not in the catalog"),
    Case("generic", ",i2,1000000000", "missing user id"),
    # time
    Case("movielens-100k", "8\t2\t5\t88", "timestamp is before 1995-01-01"),
    Case("movielens-100k", "1\t2\t5\t-5", "timestamp is zero or negative"),
    Case("movielens-100k", "1\t2\t5\t99999999999", "timestamp is in the future"),
    Case("movielens-100k", "1\t2\t5\tyesterday", "timestamp is not a number"),
    Case("movielens-100k", "1\t2\t5\t", "missing timestamp"),
    Case("movielens-dat", "1::2::5::inf", "timestamp is not a number"),
    Case("movielens-csv", "1,2,4.0,788918399", "timestamp is before 1995-01-01"),
    Case("recbole", "1\t2\t4\t1e30", "timestamp is in the future"),
    Case("generic", "u1,i2,0", "timestamp is zero or negative"),
    # ratings
    Case("movielens-100k", "1\t2\tNaN\t1000000000", "rating is not finite"),
    Case("movielens-100k", "1\t2\tgood\t1000000000", "rating is not a number"),
    Case("movielens-100k", "1\t2\t1e300\t1000000000", "rating is out of range"),
    Case("movielens-dat", "1::2::-1e12::1000000000", "rating is out of range"),
    Case("movielens-csv", "1,2,inf,1000000000", "rating is not finite"),
    Case("recbole", "1\t2\tfive\t1000000000", "rating is not a number"),
    # JSON
    Case("amazon-json", "{not json", "line is not a JSON object"),
    Case("amazon-json", "[1, 2]", "line is not a JSON object"),
    Case("amazon-json", "", "line is not a JSON object: empty line"),
    Case("amazon-json", "   ", "line is not a JSON object"),
    Case("amazon-json", _review({"id": 1}, "A2"), "user id is a JSON object"),
    Case("amazon-json", _review("U1\r", "A2").replace("\\r", "\r"), "carriage return (CR) inside the line"),
    Case("amazon-json", _review("U1", ["A2"]), "item id is a JSON array"),
    Case("amazon-json", _review("U1", "A2", t=86400), "timestamp is before 1995-01-01"),
    Case("amazon-json", _review("U1", "A2", r=1e300), "rating is out of range"),
    Case("amazon-json", _review("U1", "A99"), "item A99 is not in the catalog"),
    Case("amazon-json", json.dumps({"asin": "A2", "overall": 5, "unixReviewTime": T0}), "missing user id"),
]


def _build(tmp_path: Path, case: Case) -> tuple[Path, dict]:
    raw = tmp_path / "raw"
    files = BUILDERS[case.fmt](case.bad)
    kw: dict = {}
    for name, text in files.items():
        write(raw / name, text)
    if case.fmt == "generic":
        from patchrec.config import load_source

        kw["source"] = load_source(tmp_path / "source.yaml")
    return raw, kw


def _physical_data_lines(path: Path, header: int) -> int:
    return len(path.read_bytes().split(b"\n")[:-1]) - header  # every file here ends with a newline


@pytest.mark.parametrize("case", CASES, ids=[f"{c.fmt}:{c.reason}:{i}" for i, c in enumerate(CASES)])
def test_malformed_line_is_quarantined_and_counted(tmp_path, prepare, case):
    raw, kw = _build(tmp_path, case)
    s = prepare(case.fmt, raw, **kw)
    lines = _physical_data_lines(raw / INTERACTIONS[case.fmt], HEADER[case.fmt])
    assert lines == len(_events()) + 1
    assert s["rows_read"] == s["lines_read"] == lines
    assert s["rows_read"] == s["rows_accepted"] + s["rows_quarantined"] + s["rows_deduplicated"] + s["rows_filtered"]
    assert s["rows_quarantined"] == 1 and s["rows_accepted"] == len(_events()), s
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert len(q) == 1 and case.reason in q.reason.iloc[0], q.reason.iloc[0]
    assert q.source_file.iloc[0] == INTERACTIONS[case.fmt]
    line = 11 + HEADER[case.fmt]  # the defect is the 11th data line
    assert q.line.iloc[0] == line or q.row.iloc[0] == 11, q.iloc[0].to_dict()


ERRORS = [
    (
        "movielens-csv",
        {"ratings.csv": "userId,movieId,rating,timestamp\n"},
        SourceError,
        r"ratings\.csv: no data lines",
    ),
    (
        "recbole",
        {"ml.inter": "user_id:token\titem_id:token\ttimestamp:float\n"},
        SourceError,
        r"ml\.inter: no data lines",
    ),
    (
        "recbole",
        {"ml.inter": "user_id:token\titem_id:token\ttimestamp:float\n\n"},
        IngestError,
        "no interaction survived",
    ),
    ("movielens-100k", {"u.data": ""}, SourceError, r"u\.data: file is empty"),
    (
        "movielens-csv",
        {"ratings.csv": "user,movieId,rating,timestamp\n1,2,3,1000000000\n"},
        SourceError,
        r"ratings\.csv: column 'userId' not found",
    ),
    ("recbole", {"ml.inter": "user_id:token\titem_id:token\n1\t2\n"}, SourceError, r"ml\.inter: header lacks"),
    (
        "amazon-json",
        {"reviews.json.gz": gzip.compress(("\n".join(_review("U", f"A{i}") for i in range(3000))).encode())[:500]},
        IngestError,
        r"reviews\.json\.gz",
    ),
]


@pytest.mark.parametrize(("fmt", "override", "error", "match"), ERRORS, ids=[e[3] for e in ERRORS])
def test_unusable_file_is_an_error_naming_it(tmp_path, prepare, fmt, override, error, match):
    raw, kw = _build(tmp_path, Case(fmt, _review("U1", "A1") if fmt == "amazon-json" else "", ""))
    if fmt == "amazon-json":
        (raw / "reviews.json").unlink()
    for name, text in override.items():
        write(raw / name, text)
    with pytest.raises(error, match=match):
        prepare(fmt, raw, **kw)
    assert not (tmp_path / "out").exists()  # nothing published


def test_unterminated_quote_loses_nothing(tmp_path, prepare):
    """The outside test's case: 96 data rows, line 11 opens a quote that never closes."""
    rows = [f"{1 + k // 12},{1 + k % 12},4.0,{880_000_000 + k}" for k in range(96)]
    rows[9] = '1,"2,4.0,880000000'  # physical line 11 (after the header)
    raw = tmp_path / "raw"
    write(raw / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    write(raw / "movies.csv", "movieId,title,genres\n" + "".join(f'{i},"M {i}, A (1990)",x\n' for i in range(1, 13)))
    s = prepare("movielens-csv", raw, min_history=1)
    assert (s["rows_read"], s["rows_accepted"], s["rows_quarantined"]) == (96, 95, 1)
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert q.line.tolist() == [11] and q.raw.tolist() == ['1,"2,4.0,880000000']


def test_parser_line_numbers_stay_true_after_a_removed_line(tmp_path, prepare):
    rows = [f"1,{i},4.0,{T0 + i}" for i in range(1, 7)]
    rows[1] = '1,"2,4.0,1000000000'  # line 3: removed before parsing
    rows[3] = "1,4,4.0"  # line 5: rejected by the parser, reported at its line in the original file
    raw = tmp_path / "raw"
    write(raw / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    write(raw / "movies.csv", "movieId,title,genres\n" + "".join(f"{i},M{i} (1990),x\n" for i in range(1, 7)))
    prepare("movielens-csv", raw, min_history=1)
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet").sort_values("line")
    assert q.line.tolist() == [3, 5]
    assert "unterminated" in q.reason.iloc[0] and "wrong column count" in q.reason.iloc[1]
