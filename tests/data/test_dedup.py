"""sql/int_events.sql marks as duplicates exactly what the definition says: of the valid rows that share user, item
and time, every one but the first (file order, then row order) is a duplicate; a row without a time never is."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from patchrec.sql import connect, relation

_COLUMNS = ("user_key", "item_key", "ts_raw", "ts_unit", "rating_raw", "given_split", "stage_reason", "source_file")


def _staged(path: Path, rows: list[tuple]) -> str:
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(_COLUMNS)},
                     schema=pa.schema([(c, pa.string()) for c in _COLUMNS]))
    pq.write_table(table, path)
    return str(path)


def _random_rows(rng: random.Random, n: int, name: str) -> list[tuple]:
    """Few users, items and times (so that triples repeat), some rows invalid in one field or another."""
    rows = []
    for _ in range(n):
        user = rng.choice(["1", "2", "3", "x", None])
        item = rng.choice(["10", "11", "12", "99"])  # 99 is not in the catalog
        ts = rng.choice(["100", "100.0", "200", "1e2", "abc", None])  # "100.0" and "1e2" are the time of "100"
        rating = rng.choice(["4", "5", "five", None])
        rows.append((user, item, ts, "s", rating, None, None, name))
    return rows


@pytest.mark.parametrize("has_time", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_duplicates_are_the_later_valid_rows_of_a_user_item_time(tmp_path, seed, has_time):
    rng = random.Random(seed)
    files = [_staged(tmp_path / f"s{i}.parquet", _random_rows(rng, rng.randint(50, 300), f"f{i}"))
             for i in range(rng.randint(1, 3))]
    pq.write_table(pa.table({"item_key": ["10", "11", "12"], "status": ["kept"] * 3}), tmp_path / "catalog.parquet")
    con = connect()
    got = relation(con, "int_events", staged=files, catalog=str(tmp_path / "catalog.parquet"), numeric_ids=True,
                   has_time=has_time, min_ts=0.0, max_ts=1e10, min_rating=None, max_abs_rating=10.0).df()
    assert len(got) == sum(pq.read_metadata(f).num_rows for f in files)  # counts in = counts out
    seen: set[tuple] = set()
    expected = {}
    for row in got.sort_values(["file_rank", "src_row"]).itertuples():
        if isinstance(row.reason, str):
            expected[(row.file_rank, row.src_row)] = "quarantined"
        elif row.ts == row.ts and (row.user_key, row.item_key, row.ts) in seen:  # NaN: no time, no duplicate
            expected[(row.file_rank, row.src_row)] = "duplicate"
        else:
            seen.add((row.user_key, row.item_key, row.ts))
            expected[(row.file_rank, row.src_row)] = "kept"
    assert {(r.file_rank, r.src_row): r.status for r in got.itertuples()} == expected
    assert (got.status == "duplicate").any() and (got.status == "kept").any()
    # the raw text of a valid row is not carried (only the quarantine shows it)
    assert got.loc[got.reason.isna(), ["ts_raw", "rating_raw"]].isna().all().all()
    assert got.loc[got.reason.notna(), "ts_raw"].notna().sum() > 0
