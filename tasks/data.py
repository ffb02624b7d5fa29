"""Data tasks of the prepare-data flow: ingest -> split -> validate -> publish. Only ingestion (file I/O) retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from patchrec.config import DataConfig
from patchrec.data.generations import Build

__all__ = ["ingest_task", "publish_task", "split_task", "validate_task"]


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=lambda task, run, state: isinstance(state.result(raise_on_failure=False), OSError))
def ingest_task(cfg: DataConfig, folder: Path, previous: Path | None) -> dict[str, Any]:
    """Stage new raw files and build the canonical tables in the new generation `folder`; returns the report."""
    from patchrec.data.ingest import ingest

    return ingest(cfg, folder, previous).to_dict()


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(folder: Path, max_future_days: float) -> list[dict[str, Any]]:
    """Run the Great Expectations suites; raises with a readable summary when one fails."""
    from patchrec.data.validation import validate_tables

    return [r.__dict__ for r in validate_tables(folder, max_future_days=max_future_days)]


@task(name="split", cache_policy=NO_CACHE)
def split_task(cfg: DataConfig, folder: Path) -> dict[str, Any]:
    """Write sequences, samples and splits.json into `folder`; returns the split report."""
    from patchrec.data.sequences import build_splits

    return build_splits(cfg, folder).to_dict()


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(build: Build) -> str:
    """Point the prepared folder at the validated generation; returns its path."""
    return str(build.publish())
