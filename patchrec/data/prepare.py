"""prepare-data as one library call: ingest -> split -> validate -> publish (the flow calls the same steps).

Everything is written into a new generation (see `generations`); `cfg.out` moves to it only after the
Great Expectations suites pass, so a crash or a failed validation leaves the previous generation published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchrec.config import DataConfig
from patchrec.contract import StageOutput, data_fingerprint, write_manifest
from patchrec.data.generations import building
from patchrec.data.ingest import IngestReport, ingest
from patchrec.data.sequences import build_splits
from patchrec.data.validation import validate_tables
from patchrec.io import read_json, write_json

__all__ = ["prepare_data", "summarize", "unchanged_summary"]


def summarize(
    folder: Path, ingest_report: dict[str, Any], split_report: dict[str, Any], validation: list[dict[str, Any]]
) -> dict[str, Any]:
    """The one JSON object `patchrec data prepare --json` prints; also written to `folder/prepare.json`.

    Writes the generation's manifest last (stage `prepare`, fingerprint = content hash of the tables): the
    generation is finished once it is validated, and only a finished generation is published.
    """
    keys = ("format", "rows_read", "lines_read", "rows_accepted", "rows_quarantined", "rows_deduplicated",
            "rows_filtered", "rows_filtered_rating", "rows_filtered_kcore", "users", "items", "interactions",
            "items_read", "items_quarantined", "changed", "files_new", "files_removed", "files_ignored")
    summary = {
        **{k: ingest_report[k] for k in keys},
        "protocol": split_report["protocol"],
        "samples": split_report["samples"],
        "validation": {v["table"]: v["success"] for v in validation},
    }
    write_json(summary, Path(folder) / "prepare.json")
    counts = {k: float(summary[k]) for k in ("rows_read", "rows_accepted", "rows_quarantined", "rows_deduplicated",
                                             "rows_filtered", "users", "items", "interactions")}
    counts.update({f"samples_{k}": float(v) for k, v in summary["samples"].items()})
    write_manifest(
        folder, "prepare", data_fingerprint(folder), StageOutput(metrics=counts, info={"protocol": summary["protocol"]})
    )
    return summary


def unchanged_summary(previous: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The published generation's summary, marked unchanged (no new raw file, same settings)."""
    summary = read_json(Path(previous) / "prepare.json")
    summary.update(changed=False, files_new=[], files_removed=report["files_removed"],
                   files_ignored=report["files_ignored"])
    return summary


def prepare_data(cfg: DataConfig, progress: bool = False) -> dict[str, Any]:
    """Ingest, split and validate into a new generation, then publish it as `cfg.out`; returns the summary."""
    with building(cfg.out) as build:
        report: IngestReport = ingest(cfg, build.path, build.previous, progress=progress)
        if not report.changed:
            assert build.previous is not None
            return unchanged_summary(build.previous, report.to_dict())
        splits = build_splits(cfg, build.path)
        results = validate_tables(build.path, max_future_days=cfg.max_future_days)
        summary = summarize(build.path, report.to_dict(), splits.to_dict(), [r.__dict__ for r in results])
        build.publish()
    return summary
