"""prepare-data as one library call: ingest -> validate -> split (the flow calls the same steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchrec.config import DataConfig
from patchrec.data.ingest import ingest
from patchrec.data.sequences import build_splits
from patchrec.data.validation import validate_tables
from patchrec.io import write_json

__all__ = ["prepare_data", "summarize"]


def summarize(
    out: Path, ingest_report: dict[str, Any], split_report: dict[str, Any], validation: list[dict[str, Any]]
) -> dict[str, Any]:
    """The one JSON object `patchrec data prepare --json` prints; also written to `out/prepare.json`."""
    keys = ("format", "rows_read", "rows_accepted", "rows_quarantined", "rows_deduplicated", "rows_filtered",
            "rows_filtered_rating", "rows_filtered_kcore", "users", "items", "interactions", "items_read",
            "items_quarantined", "changed", "files_new", "files_removed")
    summary = {
        **{k: ingest_report[k] for k in keys},
        "protocol": split_report["protocol"],
        "samples": split_report["samples"],
        "validation": {v["table"]: v["success"] for v in validation},
    }
    write_json(summary, Path(out) / "prepare.json")
    return summary


def prepare_data(cfg: DataConfig, progress: bool = False) -> dict[str, Any]:
    """Ingest, validate and split; writes `prepare.json` in `cfg.out` and returns its content."""
    report = ingest(cfg, progress=progress)
    splits = build_splits(cfg)
    results = validate_tables(Path(cfg.out), max_future_days=cfg.max_future_days)
    return summarize(Path(cfg.out), report.to_dict(), splits.to_dict(), [r.__dict__ for r in results])
