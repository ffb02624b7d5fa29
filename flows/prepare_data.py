"""Flow `prepare-data`: ingest -> split -> validate -> publish, returning the summary that the CLI prints."""

from __future__ import annotations

from typing import Any

from prefect import flow

from patchrec.config import DataConfig
from patchrec.data.generations import building
from patchrec.data.prepare import summarize, unchanged_summary
from tasks.data import ingest_task, publish_task, split_task, validate_task

__all__ = ["prepare_data_flow"]


@flow(name="prepare-data", log_prints=True)
def prepare_data_flow(cfg: DataConfig) -> dict[str, Any]:
    """Raw logs in `cfg.raw` -> a new validated generation of tables, sequences and samples, published as `cfg.out`."""
    with building(cfg.out) as build:
        report = ingest_task(cfg, build.path, build.previous)
        if not report["changed"]:
            summary = unchanged_summary(build.previous, report)
        else:
            splits = split_task(cfg, build.path)
            validation = validate_task(build.path, cfg.max_future_days)
            summary = summarize(build.path, report, splits, validation)
            publish_task(build)
    print(f"prepare-data: {summary}")
    return summary
