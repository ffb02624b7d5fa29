"""DuckDB access: SQL files from `sql/`, bound parameters only, bounded memory."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["SQL_DIR", "connect", "load_sql", "relation", "sql_names"]

_HERE = Path(__file__).resolve().parent
# sql_files is a link to the top-level sql/ folder (shipped in the wheel); a checkout without links reads sql/ itself
SQL_DIR = _HERE / "sql_files" if (_HERE / "sql_files").is_dir() else _HERE.parent / "sql"


@functools.cache
def load_sql(name: str) -> str:
    """Return the text of `sql/<name>.sql`; raises KeyError naming the known files."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise KeyError(f"unknown SQL file {name!r} (looked in {SQL_DIR}; known: {', '.join(sql_names())})")
    return path.read_text(encoding="utf-8")


def sql_names() -> list[str]:
    """Names of every SQL file shipped in `sql/`."""
    return sorted(p.stem for p in SQL_DIR.glob("*.sql"))


def connect(
    memory_limit: str = "2GB", threads: int | None = None, temp_dir: Path | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose memory is capped (it spills to `temp_dir` beyond that)."""
    config: dict[str, Any] = {"memory_limit": memory_limit, "preserve_insertion_order": True}
    if threads:
        config["threads"] = threads
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_dir)
    return duckdb.connect(config=config)


def relation(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyRelation:
    """Run `sql/<name>.sql` with named parameters bound (never formatted into the text)."""
    text = load_sql(name)
    used = {k: v for k, v in params.items() if f"${k}" in text}
    missing = [k for k in params if k not in used]
    if missing:
        raise TypeError(f"sql/{name}.sql does not use parameter(s) {missing}")
    return con.sql(text, params=used)
