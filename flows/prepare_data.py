"""Flow `prepare-data`: ingest -> split -> validate, returning the summary that the CLI prints."""

from __future__ import annotations

from typing import Any

from prefect import flow

from patchrec.config import DataConfig
from patchrec.data.prepare import summarize
from tasks.data import ingest_raw, split_sequences, validate_tables

__all__ = ["prepare_data"]


@flow(name="prepare-data", log_prints=True)
def prepare_data(cfg: DataConfig) -> dict[str, Any]:
    """Raw logs in `cfg.raw` -> validated tables, sequences and samples in `cfg.out`."""
    report = ingest_raw(cfg)
    splits = split_sequences(cfg)
    validation = validate_tables(cfg.out, cfg.max_future_days)
    summary = summarize(cfg.out, report, splits, validation)
    print(f"prepare-data: {summary}")
    return summary
