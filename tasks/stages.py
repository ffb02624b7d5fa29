"""One Prefect task per pipeline stage; each calls one `patchrec.stages` function and passes records on.

No retries: training and ranking failures are not I/O hiccups, and a re-run reuses every finished stage.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from patchrec import stages, tracking
from patchrec.contract import StageRecord
from patchrec.profiles import PipelineConfig, load_pipeline
from patchrec.run_summary import artifact_key, metrics_rows, pipeline_markdown, skipped_markdown

__all__ = ["baseline_task", "catalog_task", "close_run_task", "evaluate_task", "nightly_plan_task", "open_run_task",
           "publish_summary_task", "record_data_task", "register_task", "resolve_config_task", "train_task"]


@task(name="resolve-config", cache_policy=NO_CACHE)
def resolve_config_task(profile: str, overrides: dict[str, Any] | None, state_dir: str | None) -> PipelineConfig:
    """Profile + overrides -> the validated config (a bad key fails here, before any work)."""
    return load_pipeline(profile, overrides, state_dir)


@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_run_task(cfg: PipelineConfig, flow: str) -> str:
    return stages.open_pipeline_run(cfg, flow)


@task(name="close-mlflow-run", cache_policy=NO_CACHE)
def close_run_task(cfg: PipelineConfig, run_id: str, ok: bool, metrics: dict[str, float] | None = None,
                   tags: dict[str, Any] | None = None) -> None:
    stages.close_pipeline_run(cfg, run_id, ok, metrics, tags)


@task(name="record-data", cache_policy=NO_CACHE)
def record_data_task(cfg: PipelineConfig, summary: dict[str, Any], parent: str | None) -> StageRecord:
    return stages.record_data(cfg, summary, parent)


@task(name="catalog", cache_policy=NO_CACHE)
def catalog_task(cfg: PipelineConfig, data: StageRecord, parent: str | None) -> StageRecord:
    """Title token ids and item patches of the whole catalog (once per data + base model)."""
    return stages.build_catalog(cfg, data, parent)


@task(name="train", task_run_name="train-{which}", cache_policy=NO_CACHE, log_prints=True)
def train_task(cfg: PipelineConfig, which: str, data: StageRecord, cat: StageRecord, init: StageRecord | None,
               parent: str | None) -> StageRecord:
    """PPT (`which="ppt"`) or PFT-I / PFT-S / SFT (`"pft"`), from `init` (a PPT run or a champion) when given."""
    return stages.train_model(cfg, which, data, cat, init, parent)


@task(name="evaluate", task_run_name="evaluate-{split}", cache_policy=NO_CACHE, log_prints=True)
def evaluate_task(cfg: PipelineConfig, split: str, data: StageRecord, cat: StageRecord, run: StageRecord,
                  parent: str | None) -> StageRecord:
    """Rank the validation or test sample with the run's layout."""
    return stages.evaluate_model(cfg, split, data, cat, run, parent)


@task(name="baseline", task_run_name="baseline-{kind}", cache_policy=NO_CACHE)
def baseline_task(cfg: PipelineConfig, kind: str, data: StageRecord, parent: str | None) -> StageRecord:
    """An ID-based baseline (popularity, SASRec) on the same split and test sample."""
    return stages.run_baseline(cfg, kind, data, parent)


@task(name="register", cache_policy=NO_CACHE)
def register_task(cfg: PipelineConfig, data: StageRecord, cat: StageRecord, run: StageRecord, val: StageRecord,
                  test: StageRecord, parent: str | None) -> StageRecord:
    """New registry version (alias challenger); champion only if its validation metric is no worse."""
    return stages.register_model(cfg, data, cat, run, val, test, parent)


@task(name="nightly-plan", cache_policy=NO_CACHE)
def nightly_plan_task(cfg: PipelineConfig, data: StageRecord) -> stages.NightlyPlan:
    return stages.nightly_plan(cfg, data)


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary_task(cfg: PipelineConfig, flow: str, result: dict[str, Any] | None, parent: str,
                         skipped: str | None = None) -> None:
    """The run's markdown summary and metrics table as Prefect artifacts (the flow run's Artifacts tab)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(flow, cfg.profile)
    if result is None:
        create_markdown_artifact(markdown=skipped_markdown(flow, cfg.profile, skipped or ""), key=f"{key}-summary",
                                 description=f"patchrec {flow}: nothing trained")
        return
    experiment = tracking.experiment_id(cfg.state_dir, cfg.model_name)
    create_markdown_artifact(markdown=pipeline_markdown(result, flow, parent, experiment), key=f"{key}-summary",
                             description=f"patchrec {flow} ({cfg.profile}): data, stages, metrics, registry")
    create_table_artifact(table=metrics_rows(result), key=f"{key}-metrics",
                          description=f"test metrics of {flow} ({cfg.profile}) beside the baselines")
