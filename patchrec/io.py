"""Atomic writes: every table, report and checkpoint appears complete or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["WriteError", "atomic_path", "file_digest", "file_lock", "read_json", "write_json", "write_parquet"]


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()
    try:
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


class WriteError(OSError):
    """A table could not be written (disk full, file-size limit, permissions); the message names the file."""


def _io_cause(exc: Exception) -> str:
    """The operating system's words in a DuckDB I/O error ("File too large", "No space left on device")."""
    text = str(exc).strip()
    found = re.search(r'"exception_message":"((?:[^"\\]|\\.)*)"', text)
    message = found.group(1).replace('\\"', '"') if found else text.splitlines()[0]
    errno = re.search(r'"errno":"(\d+)"', text)
    cause = message.rsplit(": ", 1)[-1]
    return f"{cause} (errno {errno.group(1)})" if errno else cause


def write_parquet(rel: duckdb.DuckDBPyRelation, target: Path, compression: str = "zstd") -> Path:
    """Stream a DuckDB relation to `target` as Parquet, atomically (snappy suits scratch files).

    Raises:
        WriteError: DuckDB could not write it (an I/O error, not a problem of the input); names `target`.
    """
    with atomic_path(target) as tmp:
        try:
            rel.write_parquet(str(tmp), compression=compression)
        except (duckdb.IOException, duckdb.OutOfMemoryException) as exc:
            raise WriteError(f"cannot write {target}: {_io_cause(exc)}") from exc
    return Path(target)


def write_json(obj: Any, target: Path) -> Path:
    """Write `obj` as indented JSON atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return Path(target)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_digest(path: Path, chunk: int = 1 << 22) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            size += len(block)
            h.update(block)
    return size, h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock on `path` (created if missing) for the block; waits for it.

    Args:
        path: the lock file (kept: removing a lock file another process waits on would split the lock).
        what: what the lock protects, for the message printed while waiting.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {what} (another process holds {path})", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
