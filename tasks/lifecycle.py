"""Lifecycle tasks: each calls one `patchrec.lifecycle` function with the pipeline config and small records.

No retries: training and ranking failures are not I/O hiccups, and a re-run resumes from finished stages.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from patchrec import lifecycle
from patchrec.pipeline import PipelineConfig, load_pipeline

__all__ = ["resolve_config", "open_run", "close_run", "record_data", "build_catalog", "train", "evaluate",
           "baseline", "register", "nightly_plan"]

Record = dict[str, Any]


@task(name="resolve-config", cache_policy=NO_CACHE)
def resolve_config(profile: str, overrides: dict[str, Any] | None, state_dir: str | None) -> PipelineConfig:
    """Profile + overrides -> the validated config (a bad key fails here, before any work)."""
    return load_pipeline(profile, overrides, state_dir)


@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_run(cfg: PipelineConfig, flow: str) -> str:
    return lifecycle.open_run(cfg, flow)


@task(name="close-mlflow-run", cache_policy=NO_CACHE)
def close_run(cfg: PipelineConfig, run_id: str, ok: bool, result: Record | None = None) -> None:
    lifecycle.close_run(cfg, run_id, ok, result)


@task(name="record-data", cache_policy=NO_CACHE)
def record_data(cfg: PipelineConfig, summary: Record, parent: str | None) -> Record:
    return lifecycle.record_data(cfg, summary, parent)


@task(name="catalog-patch-table", cache_policy=NO_CACHE)
def build_catalog(cfg: PipelineConfig, data: Record, parent: str | None) -> Record:
    return lifecycle.catalog(cfg, data, parent)


@task(name="train", cache_policy=NO_CACHE)
def train(cfg: PipelineConfig, which: str, data: Record, cat: Record, init: Record | None,
          parent: str | None) -> Record:
    return lifecycle.train(cfg, which, data, cat, init, parent)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: PipelineConfig, split: str, data: Record, cat: Record, run: Record, parent: str | None) -> Record:
    return lifecycle.evaluate(cfg, split, data, cat, run, parent)


@task(name="baseline", cache_policy=NO_CACHE)
def baseline(cfg: PipelineConfig, kind: str, data: Record, parent: str | None) -> Record:
    return lifecycle.baseline(cfg, kind, data, parent)


@task(name="register", cache_policy=NO_CACHE)
def register(cfg: PipelineConfig, data: Record, cat: Record, run: Record, val: Record, test: Record,
             parent: str | None) -> Record:
    return lifecycle.register(cfg, data, cat, run, val, test, parent)


@task(name="nightly-plan", cache_policy=NO_CACHE)
def nightly_plan(cfg: PipelineConfig, data: Record) -> Record:
    return lifecycle.nightly_plan(cfg, data)
