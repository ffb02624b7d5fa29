"""Per-user chronological sequences and compact sample indices (user, target position, split).

A sample is (user_idx, position, split): its target is `items[position]` of that user's sequence and
its history is `items[max(0, position - max_history):position]`. Storing positions instead of copied
histories keeps ml-1m's 557k samples at a few MB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from patchrec.config import DataConfig
from patchrec.data.formats import SourceError, format_traits
from patchrec.data.generations import cache_dir
from patchrec.io import read_json, write_json, write_parquet
from patchrec.sql import connect, relation

__all__ = ["SequenceStore", "SplitReport", "build_splits", "resolve_protocol", "sample_split"]

SPLITS = ("train", "val", "test")


@dataclass
class SplitReport:
    protocol: str
    min_history: int
    max_history: int
    users_with_samples: int
    samples: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_protocol(cfg: DataConfig) -> str:
    """`auto` means the source's own split when it carries one, else the paper protocol.

    The paper protocol orders all events by time; a source without timestamps has no such order. For the
    paper's own processed files the split they carry *is* the paper protocol, so it is used; any other
    source without timestamps is refused rather than split by an invented order.
    """
    traits = format_traits(cfg)
    if cfg.protocol == "given" and not traits.has_given_split:
        raise ValueError(f"protocol 'given' needs a source that carries a split; {cfg.format!r} does not")
    if cfg.protocol == "paper" and not traits.has_time:
        if cfg.format == "patchrec-paper":
            return "given"
        raise ValueError(f"protocol 'paper' splits by event time, and {cfg.format!r} has no timestamps; "
                         "use --protocol given (the split the source carries) or --protocol loo")
    if cfg.protocol != "auto":
        return cfg.protocol
    return "given" if traits.has_given_split else "paper"


def build_splits(cfg: DataConfig, out: Path) -> SplitReport:
    """Write `sequences.parquet`, `samples.parquet` and `splits.json` in `out` from its `interactions.parquet`."""
    out = Path(out)
    interactions = out / "interactions.parquet"
    if not interactions.exists():
        raise FileNotFoundError(f"{interactions} does not exist: run ingestion first")
    protocol = resolve_protocol(cfg)
    params: dict[str, Any] = {"interactions": str(interactions), "min_history": cfg.min_history}
    if protocol == "paper":
        params.update(train_ratio=cfg.split_ratios[0], val_ratio=cfg.split_ratios[1])
    con = connect(cfg.memory_limit, temp_dir=cache_dir(cfg.out) / "spill")
    try:
        write_parquet(relation(con, "int_sequences", interactions=str(interactions)), out / "sequences.parquet")
        samples = write_parquet(relation(con, f"split_{protocol}", **params), out / "samples.parquet")
        counts = dict(relation(con, "report_split_counts", path=str(samples)).fetchall())
    finally:
        con.close()
    users = counts.pop("users", 0)
    report = SplitReport(protocol, cfg.min_history, cfg.max_history, int(users),
                         {s: int(counts.get(s, 0)) for s in SPLITS})
    if not any(report.samples.values()):  # a generation without a single sample is never published
        lengths = pq.read_table(out / "sequences.parquet", columns=["items"]).column("items").combine_chunks()
        longest = int(max(lengths.value_lengths().to_pylist(), default=0))
        raise SourceError(f"{cfg.raw}: no sample in any split (protocol {protocol}, {users} users, longest history "
                          f"{longest} items; a target needs min_history={cfg.min_history} earlier items): lower "
                          "min_history or add data")
    write_json(report.to_dict(), out / "splits.json")
    return report


class SequenceStore:
    """Sequences and samples of a prepared folder, in memory as flat numpy arrays (CSR layout)."""

    def __init__(self, folder: Path, max_history: int | None = None):
        folder = Path(folder)
        seq = pq.read_table(folder / "sequences.parquet", columns=["user_idx", "items"])
        items = seq.column("items").combine_chunks()
        self.flat = items.values.to_numpy(zero_copy_only=False).astype(np.int32)  # (total,)
        self.offsets = items.offsets.to_numpy().astype(np.int64)  # (users + 1,)
        self.row_of_user = {int(u): i for i, u in enumerate(seq.column("user_idx").to_pylist())}
        smp = pq.read_table(folder / "samples.parquet")
        self.sample_user = smp.column("user_idx").to_numpy()
        self.sample_pos = smp.column("position").to_numpy()
        self.sample_split = np.asarray(smp.column("split").to_pylist())
        self.max_history = max_history or read_json(folder / "splits.json")["max_history"]

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of one split."""
        return np.flatnonzero(self.sample_split == split)

    def sample(self, i: int) -> tuple[np.ndarray, int]:
        """(history item indices, oldest first; target item index) of sample `i`."""
        row = self.row_of_user[int(self.sample_user[i])]
        start = self.offsets[row]
        pos = int(self.sample_pos[i])
        lo = max(0, pos - self.max_history)
        return self.flat[start + lo : start + pos], int(self.flat[start + pos])


def sample_split(store: SequenceStore, split: str, max_samples: int | None, seed: int) -> np.ndarray:
    """The sample indices of `split`, or a sorted random subset of `max_samples` of them (fixed by `seed`)."""
    idx = store.indices(split)
    if len(idx) == 0:
        raise ValueError(f"split {split!r} has no sample to rank: the metrics of an empty split are undefined")
    if max_samples and len(idx) > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_samples, replace=False))
    return idx
