"""The chunked line scan finds exactly what a line-by-line scan finds, at any chunk size."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from patchrec.data.lines import LineScan, scan_lines


def _reference(path: Path, header: bool, quote: str, empty_reason: str | None, python_dicts: bool) -> LineScan:
    """The scan's definition, one physical line at a time (a binary file splits on b"\\n" only)."""
    scan = LineScan()
    raw = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    lines = raw.split(b"\n")
    if raw.endswith(b"\n"):
        lines = lines[:-1]
    for no, line in enumerate(lines, start=1):
        if header and no == 1:
            continue
        scan.data_lines += 1
        body = line.rstrip(b"\r\n")
        if not body:
            if empty_reason is not None:
                scan.rejects.append((no, empty_reason, ""))
        elif empty_reason is not None and not body.strip():
            scan.dropped.append(no)
        elif b"\r" in body:
            scan.dropped.append(no)
        elif quote and body.count(quote.encode()) % 2:
            scan.dropped.append(no)
        elif python_dicts and body.lstrip()[:2] == b"{'":
            scan.literal_lines += 1
    return scan


_LINES = [b"1\t2\t5\t881250949", b"196::242::3::881250949", b'7,"Toy, Story",3', b"", b"   ", b"\t\x0b",
          b"a\rb", b"x\r", b'3,"open quote,4', b"{'asin': 'B1', 'title': 'x'}", b"\r", b"\xe9t\xe9::1::2::3"]


@pytest.mark.parametrize("seed", range(12))
def test_chunked_scan_matches_line_by_line(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clean = rng.random() < 0.3  # files with no defect at all take the counting path throughout
    pool = _LINES[:3] if clean else _LINES
    lines = [rng.choice(pool) for _ in range(rng.randint(1, 400))]
    eol = b"\r\n" if rng.random() < 0.3 else b"\n"
    raw = eol.join(lines) + (eol if rng.random() < 0.7 else b"")
    path = tmp_path / ("f.txt.gz" if seed % 3 == 0 else "f.txt")
    path.write_bytes(gzip.compress(raw) if seed % 3 == 0 else raw)
    header, quote = rng.random() < 0.5, rng.choice(["", '"'])
    empty_reason = rng.choice(["empty line", None])
    python_dicts = rng.random() < 0.5
    want = _reference(path, header, quote, empty_reason, python_dicts)
    for chunk in (1, 7, 64, 1 << 20):
        got = scan_lines(path, header=header, quote=quote, encoding="latin-1", empty_reason=empty_reason,
                         python_dicts=python_dicts, chunk_bytes=chunk)
        assert got.data_lines == want.data_lines, chunk
        assert got.dropped == want.dropped, chunk
        assert [r[0] for r in got.rejects if r[1] == "empty line"] == [r[0] for r in want.rejects], chunk
        assert got.literal_lines == want.literal_lines, chunk


def test_reasons_name_the_defect(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_bytes(b"1\t2\t5\t9\n\n  \nab\rc\t1\t2\t3\n" + b"4\t5\t6\t7\n" * 50)
    scan = scan_lines(path, header=False, quote="", encoding="utf-8", chunk_bytes=16)
    assert scan.data_lines == 54
    assert [(no, reason.split(" (")[0]) for no, reason, _ in scan.rejects] == [
        (2, "empty line"), (3, "blank line"), (4, "carriage return")]
    assert scan.dropped == [3, 4]
