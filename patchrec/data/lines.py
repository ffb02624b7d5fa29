"""Physical lines of a raw text file, counted independently of the CSV parser.

rows_read counts every physical line after the header, so a parser that stops early or merges lines
is caught by the count identity instead of losing rows silently. Lines the parser would mishandle are
found here first: an empty line (the CSV reader skips it), a blank one (it would report a wrong column
count), a line with an unterminated quote (the CSV reader would read every later line as part of one
quoted field) and a line with a bare carriage return inside it (the CSV reader ends a record there, so
one line would become two). All become reject rows with their line number and a reason naming the
defect; all but the empty ones are also removed from the copy the parser reads. A record must be one
physical line.

Python dict literals (the 2014 Amazon metadata: `{'asin': '...', 'related': {...}, 'categories': [[...]]}`)
are counted by the scan and rewritten as JSON in the parser's copy with `ast.literal_eval` (never `eval`),
line for line, so line numbers and counts stay those of the raw file; a line that does not evaluate to a
dict of JSON values is copied unchanged and the JSON parser quarantines it.
"""

from __future__ import annotations

import ast
import bisect
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from patchrec.io import atomic_path

__all__ = ["LineScan", "literal_to_json", "original_line", "scan_lines", "without_lines"]

RAW_CHARS = 1000  # a reject row keeps at most this much of the raw line


@dataclass
class LineScan:
    """What a file holds, line by line: data lines (after the header) and the lines rejected up front."""

    data_lines: int = 0
    rejects: list[tuple[int, str, str]] = field(default_factory=list)  # (line number, reason, raw text)
    dropped: list[int] = field(default_factory=list)  # line numbers removed from the parser's copy, ascending
    literal_lines: int = 0  # lines that look like a Python dict literal (`python_dicts`), to rewrite as JSON


def _open(path: Path, encoding: str) -> IO[bytes] | IO[str]:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    if encoding.startswith("utf-16"):  # newlines are two bytes: read as text
        return io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")
    return raw


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, bytes | str]]:
    with _open(path, encoding) as fh:
        yield from enumerate(fh, start=1)


def _looks_literal(body: bytes | str) -> bool:
    """A Python dict literal's opening (`{'`, `{u'`, `{u"`), never a JSON object's (`{"`)."""
    head = body.lstrip()[:3]
    if isinstance(head, str):
        head = head.encode()
    return head[:2] == b"{'" or head[:3] in (b"{u'", b'{u"')


def literal_to_json(line: bytes, encoding: str = "utf-8") -> bytes | None:
    """One Python dict literal line as one JSON line (same line ending), or None when it is not a dict of JSON
    values (a syntax error, a set, bytes, NaN, nesting too deep for the parser)."""
    body = line.rstrip(b"\r\n")
    try:
        value = ast.literal_eval(body.decode(encoding))
        if not isinstance(value, dict):
            return None
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        return None
    return text.encode("utf-8") + line[len(body):]


CHUNK_BYTES = 8 << 20  # the scan reads whole lines in chunks of about this size
# An empty or whitespace-only line (bytes.strip's whitespace) after the first line of a chunk of whole lines (a
# pattern that starts with a literal newline: the regex engine jumps from newline to newline).
_BLANK = re.compile(rb"\n[ \t\r\x0b\x0c]*(?:\n|\Z)")


def scan_lines(
    path: Path, *, header: bool, quote: str, encoding: str, empty_reason: str | None = "empty line",
    python_dicts: bool = False, chunk_bytes: int = CHUNK_BYTES,
) -> LineScan:
    """Count the data lines of `path`; find empty lines, lines with a CR inside them, and lines with an odd
    number of `quote` characters.

    The file is read in chunks of whole lines. A chunk with no quote character, no CR other than in CRLF, no
    empty or blank line (and, with `python_dicts`, no `{`) has nothing to report: its lines are counted in C
    (`bytes.count`). Any other chunk is checked line by line, so the result is the same as a line-by-line scan.

    Args:
        path: a text file, plain or .gz.
        header: the first line is a header, not data.
        quote: the quote character ("" when the format has none: nothing is unterminated).
        encoding: the file's text encoding.
        empty_reason: the reason recorded for an empty line (None: the parser reads empty lines as rows).
        python_dicts: count the lines that look like Python dict literals (`LineScan.literal_lines`).
        chunk_bytes: about how much of the file one chunk holds.
    """
    scan = LineScan()
    if encoding.startswith("utf-16"):  # newlines are two bytes: read as text, line by line
        for no, line in _lines(path, encoding):
            if not (header and no == 1):
                _check(scan, no, line.rstrip("\r\n"), quote, quote, encoding, empty_reason, python_dicts)
        return scan
    q = quote.encode()
    with _open(path, encoding) as fh:
        no = 0
        if header and fh.readline():
            no = 1
        tail = b""
        while True:
            block = fh.read(chunk_bytes)
            data = tail + block
            if not block:  # the end: what is left is the last line, without a newline
                if data:
                    no = _scan_chunk(scan, no, data, q, quote, encoding, empty_reason, python_dicts)
                return scan
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if cut:
                no = _scan_chunk(scan, no, data[:cut], q, quote, encoding, empty_reason, python_dicts)


def _scan_chunk(scan: LineScan, no: int, chunk: bytes, q: bytes, quote: str, encoding: str,
                empty_reason: str | None, python_dicts: bool) -> int:
    """Scan the whole lines in `chunk` (the last may lack its newline), numbered from `no + 1`; the last number."""
    text = chunk[:-1] if chunk.endswith(b"\n") else chunk
    clean = (
        (not quote or q not in text)
        and (not python_dicts or b"{" not in text)
        and (b"\r" not in text or text.count(b"\r") == text.count(b"\r\n") + text.endswith(b"\r"))
        and (empty_reason is None or not _has_blank(text))
    )
    if clean:
        lines = text.count(b"\n") + 1
        scan.data_lines += lines
        return no + lines
    for line in text.split(b"\n"):
        no += 1
        _check(scan, no, line.rstrip(b"\r\n"), q, quote, encoding, empty_reason, python_dicts)
    return no


def _has_blank(text: bytes) -> bool:
    """Whether the lines in `text` (newline-separated, no final newline) include an empty or blank one."""
    end = text.find(b"\n")
    return not (text if end < 0 else text[:end]).strip() or _BLANK.search(text) is not None


def _check(scan: LineScan, no: int, body: bytes | str, q: bytes | str, quote: str, encoding: str,
           empty_reason: str | None, python_dicts: bool) -> None:
    """Count data line `no` (its text without the line ending; `q`: the quote in the body's type) and record what
    is wrong with it."""
    scan.data_lines += 1
    cr: bytes | str = "\r" if isinstance(body, str) else b"\r"
    if not body:
        if empty_reason is not None:
            scan.rejects.append((no, empty_reason, ""))
    elif empty_reason is not None and not body.strip():
        scan.dropped.append(no)  # the parser would call it a wrong column count
        scan.rejects.append((no, "blank line (only whitespace)", _text(body, encoding)))
    elif (col := body.find(cr)) >= 0:  # type: ignore[arg-type]
        scan.dropped.append(no)
        scan.rejects.append((no, f"carriage return (CR) inside the line at character {col + 1} (a record must "
                             "be one line; a bare CR would split it)", _text(body, encoding)))
    elif quote and body.count(q) % 2 == 1:  # type: ignore[arg-type]
        scan.dropped.append(no)
        scan.rejects.append((no, f"unterminated {quote} quote (a record must be one line)", _text(body, encoding)))
    elif python_dicts and _looks_literal(body):
        scan.literal_lines += 1


def _text(body: bytes | str, encoding: str) -> str:
    text = body if isinstance(body, str) else body.decode(encoding, errors="replace")
    return text[:RAW_CHARS]


def without_lines(path: Path, drop: list[int], target: Path, encoding: str, to_utf8: bool = False,
                  python_dicts: bool = False, max_line_bytes: int | None = None) -> Path:
    """Copy `path` (decompressed) to `target` without the given line numbers; atomically. With `to_utf8` the
    copy is re-encoded from `encoding` to UTF-8 (every latin-1 byte is a character; DuckDB's latin-1 reader
    refuses a whole file for one byte in 0x80-0x9f). With `python_dicts` every Python dict literal line (up to
    `max_line_bytes`; longer ones are left for the parser to reject) is written as JSON (`literal_to_json`)."""
    skip = set(drop)
    text_mode = encoding.startswith("utf-16")
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") if text_mode else open(tmp, "wb") as out:
            for no, line in _lines(path, encoding):
                if no not in skip:
                    if to_utf8 and isinstance(line, bytes):
                        line = line.decode(encoding).encode("utf-8")
                    if (python_dicts and isinstance(line, bytes) and _looks_literal(line)
                            and (max_line_bytes is None or len(line) <= max_line_bytes)):
                        line = literal_to_json(line, "utf-8" if to_utf8 else encoding) or line
                    out.write(line)  # type: ignore[arg-type]
    return target


def original_line(line: int, dropped: list[int]) -> int:
    """Line number in the original file of `line` in a copy that lacks the (ascending) `dropped` lines."""
    shifted = [d - i for i, d in enumerate(dropped)]  # where each dropped line sat in the copy's numbering
    return line + bisect.bisect_right(shifted, line)
