"""Rebuild users' sequences from pre-split benchmark windows (RecBole `item_id_list -> item_id` rows).

Each row is a window of one user's sequence: a history (possibly cut to its last L items) and the item
that follows it. Exports list a user's rows in either order (shortest prefix first or longest first),
so the sequence is rebuilt by chaining, not by row order: start from the shortest history of the
earliest split, then repeatedly take the unused row whose history equals the sequence so far (or its
last L items once histories are cut) and append its target. Rows that never fit the chain are
quarantined with a reason; every item of the rebuilt sequence becomes one staged interaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from patchrec.io import atomic_path

__all__ = ["STAGED_SCHEMA", "rebuild_windows"]

STAGED_SCHEMA = pa.schema([
    ("user_key", pa.string()), ("item_key", pa.string()), ("ts_raw", pa.string()), ("ts_unit", pa.string()),
    ("rating_raw", pa.string()), ("given_split", pa.string()), ("stage_reason", pa.string()),
    ("source_file", pa.string()),
])
_SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


@dataclass
class _Row:
    split: str
    source_file: str
    row: int  # 1-based data row of its file
    history: tuple[str, ...]
    target: str

    @property
    def order(self) -> tuple[int, str, int]:
        return _SPLIT_RANK[self.split], self.source_file, self.row


def _chain(rows: list[_Row]) -> tuple[list[tuple[str, str | None, str]], list[tuple[_Row, str]]]:
    """One user's sequence as (item, split or None for history-only items, source file), and the rows left
    out with why."""
    rows = sorted(rows, key=lambda r: r.order)
    cut = max(len(r.history) for r in rows)  # histories of this length may have been cut
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        index[r.history].append(i)
    start = min(range(len(rows)), key=lambda i: (_SPLIT_RANK[rows[i].split], len(rows[i].history), i))
    seq: list[tuple[str, str | None, str]] = [(item, None, rows[start].source_file) for item in rows[start].history]
    items = [item for item, _, _ in seq]
    used = [False] * len(rows)
    while True:
        keys = [tuple(items)] + ([tuple(items[-cut:])] if cut and len(items) > cut else [])
        nxt = next((i for key in keys for i in index.get(key, ()) if not used[i]), None)
        if nxt is None:
            break
        used[nxt] = True
        items.append(rows[nxt].target)
        seq.append((rows[nxt].target, rows[nxt].split, rows[nxt].source_file))
    placed = {(r.history, r.target) for r, u in zip(rows, used) if u}
    left = []
    for r, u in zip(rows, used):
        if not u:
            why = ("duplicate window (the same history and target as an earlier row)" if (r.history, r.target) in placed
                   else "window does not continue the user's rebuilt sequence")
            left.append((r, f"{why}: {r.source_file} row {r.row}"))
    return seq, left


def rebuild_windows(staged: list[Path], target: Path) -> Path:
    """Staged window rows of every split file -> staged interaction rows in sequence order (Parquet)."""
    by_user: dict[str, list[_Row]] = defaultdict(list)
    passthrough: list[dict[str, str | None]] = []
    for path in staged:
        t = pq.read_table(path).to_pydict()
        for k in range(len(t["user_key"])):
            user, item = t["user_key"][k], t["item_key"][k]
            if user is None or item is None:  # checked (and quarantined) downstream with the other formats' rows
                passthrough.append({c: t[c][k] for c in STAGED_SCHEMA.names})
                continue
            history = tuple(x for x in t["history"][k].split(" ") if x)
            by_user[user].append(_Row(t["given_split"][k], t["source_file"][k], k + 1, history, item))
    out: dict[str, list[str | None]] = {c: [] for c in STAGED_SCHEMA.names}

    def emit(user: str, item: str, split: str | None, source: str, reason: str | None) -> None:
        for col, val in zip(STAGED_SCHEMA.names, (user, item, None, "none", None, split, reason, source)):
            out[col].append(val)

    for user, rows in by_user.items():
        seq, left = _chain(rows)
        for item, split, source in seq:
            emit(user, item, split, source, None)
        for r, why in left:
            emit(user, r.target, r.split, r.source_file, why)
    for row in passthrough:
        for col in STAGED_SCHEMA.names:
            out[col].append(row[col])
    with atomic_path(target) as tmp:
        pq.write_table(pa.table(out, schema=STAGED_SCHEMA), tmp, compression="snappy")
    return target
