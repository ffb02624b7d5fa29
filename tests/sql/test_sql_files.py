"""SQL files: one statement each, bound parameters only, every file used by the library."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from patchrec.sql import SQL_DIR, connect, load_sql, relation, sql_names

LIB = Path(__file__).resolve().parents[2] / "patchrec"


@pytest.mark.parametrize("name", sql_names())
def test_one_statement_ending_in_final(name):
    text = re.sub(r"--[^\n]*", "", load_sql(name)).strip()
    assert text.count(";") == 0, "one statement per file, no semicolons"
    assert re.search(r"select \* from final( order by [\w, ]+)?$", text), "CTE chain ending in `select * from final`"
    assert not re.search(r"\{[a-z_]+\}", text), "no str.format placeholders: values are $parameters"


def test_every_sql_file_is_used():
    code = "\n".join(p.read_text() for p in LIB.rglob("*.py"))
    protocols = {f"split_{p}" for p in ("paper", "loo", "given")}  # chosen as f"split_{protocol}"
    unused = [n for n in sql_names() if f'"{n}"' not in code and n not in protocols]
    assert unused == []
    assert protocols <= set(sql_names())


def test_unknown_name_and_unused_parameter_are_errors():
    with pytest.raises(KeyError, match="unknown SQL file 'nope'"):
        load_sql("nope")
    with pytest.raises(TypeError, match="does not use parameter"):
        relation(connect(), "int_sequences", interactions="x", typo=1)


def test_parameters_are_bound_not_formatted(tmp_path):
    evil = tmp_path / "it's; drop table x.parquet"
    duckdb.sql("copy (select 1 as user_idx, 2 as item_idx, now() as event_time, 1 as ordinal) to '" +
               str(evil).replace("'", "''") + "' (format parquet)")
    rows = relation(connect(), "int_sequences", interactions=str(evil)).fetchall()
    assert rows[0][1] == [2]
    assert SQL_DIR.is_dir()


def test_events_query_materializes_no_copy_of_its_rows(tmp_path):
    """int_events reads `typed` and `checked` twice; a materialized CTE would hold (and under the memory cap spill)
    a copy of every row, 2.7 GB at 20M events: the physical plan must stream them (no CTE operator)."""
    staged, catalog = tmp_path / "staged.parquet", tmp_path / "catalog.parquet"
    duckdb.sql(f"copy (select '1' as user_key, '2' as item_key, '100' as ts_raw, 's' as ts_unit, '5' as rating_raw, "
               f"null::varchar as given_split, null::varchar as stage_reason, 'r.csv' as source_file "
               f"from range(3)) to '{staged}' (format parquet)")
    duckdb.sql(f"copy (select '2' as item_key, 'kept' as status) to '{catalog}' (format parquet)")
    params = {"staged": [str(staged)], "catalog": str(catalog), "numeric_ids": True, "has_time": True,
              "min_ts": 0.0, "max_ts": 1e10, "min_rating": None, "max_abs_rating": 1e9}
    con = connect()
    plan = "\n".join(str(row[-1]) for row in con.execute("explain " + load_sql("int_events"), params).fetchall())
    assert re.search(r"hash[ _]join", plan, re.IGNORECASE)  # the physical plan, not an error text
    assert not re.search(r"\bCTE([ _]scan)?\b", plan, re.IGNORECASE), plan  # the operators of a materialized CTE
    statuses = relation(con, "int_events", **params).fetchall()
    assert sorted(r[-1] for r in statuses) == ["duplicate", "duplicate", "kept"]
