"""Flows of the model lifecycle. `full-pipeline`: prepare data -> [baselines] -> catalog patch table -> PPT
-> PFT -> evaluate (val, test) -> register. `nightly-retrain`: incremental ingestion; when there is new data,
fine-tune from the champion, evaluate on the newest data, register with guarded promotion.

Each stage is one task (tasks/stages.py) that passes `StageRecord`s (paths + fingerprints) on; the logic is
in `patchrec.stages`. A flow's result is a small JSON-able summary for the UI, the CLI and the demo.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.prepare_data import prepare_data_flow
from patchrec.contract import StageRecord
from patchrec.profiles import PipelineConfig
from tasks.stages import (
    baseline_task,
    catalog_task,
    close_run_task,
    evaluate_task,
    nightly_plan_task,
    open_run_task,
    publish_summary_task,
    record_data_task,
    register_task,
    resolve_config_task,
    train_task,
)

__all__ = ["full_pipeline_flow", "nightly_retrain_flow", "patchrec_flow"]

Profile = Literal["tiny", "tiny-scoring", "demo", "demo-generative", "ml-100k", "ml-100k-scoring", "ml-1m"]


def _train_and_register(
    cfg: PipelineConfig, data: StageRecord, parent: str, init: StageRecord | None
) -> dict[str, Any]:
    cat = catalog_task(cfg, data, parent)
    done = [cat]
    if init is None and cfg.ppt is not None:
        init = train_task(cfg, "ppt", data, cat, None, parent)
        done.append(init)
    run = train_task(cfg, "pft", data, cat, init, parent)
    val = evaluate_task(cfg, "val", data, cat, run, parent)
    test = evaluate_task(cfg, "test", data, cat, run, parent)
    done += [run, val, test]
    reg = register_task(cfg, data, cat, run, val, test, parent)
    registry = {**reg.info, "registered": bool(reg.info["registered"]) and not reg.reused}
    if reg.reused:
        registry.update(promoted=False, reason=f"already registered as v{reg.info['version']}")
    elif reg.info.get("resumed"):
        registry["reason"] = f"finished the registration of v{reg.info['version']} a crash interrupted: " + \
            registry["reason"]
    metrics = {f"{s.stage.removeprefix('eval-')}_{k}": v for s in (val, test) for k, v in s.metrics.items()}
    return {"profile": cfg.profile, "dataset": cfg.dataset, "data_dir": str(data.dir), "run_dir": str(run.dir),
            "metrics": metrics, "registry": registry, "reused": {r.stage: r.reused for r in done}}


def _print(result: dict[str, Any]) -> None:
    m, reg = result["metrics"], result["registry"]
    print(f"{result['dataset']}: test HR@10 {m['test_hr_10']:.4f} NDCG@10 {m['test_ndcg_10']:.4f} "
          f"HR@20 {m['test_hr_20']:.4f}; val NDCG@10 {m['val_ndcg_10']:.4f}")
    for kind in ("popularity", "sasrec"):
        if f"{kind}_test_hr_10" in m:
            print(f"  {kind} on the same test targets: HR@10 {m[f'{kind}_test_hr_10']:.4f} "
                  f"NDCG@10 {m[f'{kind}_test_ndcg_10']:.4f} HR@20 {m[f'{kind}_test_hr_20']:.4f}")
    print(f"registry {reg['name']} v{reg['version']}: {reg['reason']}")


def _tags(result: dict[str, Any]) -> dict[str, Any]:
    return {"registered_version": result["registry"]["version"], "promoted": result["registry"]["promoted"]}


@flow(name="full-pipeline", log_prints=True)
def full_pipeline_flow(profile: Profile = "demo", overrides: dict[str, Any] | None = None,
                       state_dir: str | None = None) -> dict[str, Any]:
    """Raw logs -> registered model. `overrides` are dotted keys, e.g. {"pft.max_samples": 64}."""
    cfg = resolve_config_task(profile, overrides, state_dir)
    parent = open_run_task(cfg, "full-pipeline")
    try:
        data = record_data_task(cfg, prepare_data_flow(cfg.data), parent)
        base = {kind: baseline_task(cfg, kind, data, parent) for kind in cfg.baselines}
        result = _train_and_register(cfg, data, parent, None)
        result["metrics"].update({f"{kind}_test_{k}": v for kind, r in base.items() for k, v in r.metrics.items()})
        result["reused"] = {"prepare-data": data.reused, **{r.stage: r.reused for r in base.values()},
                            **result["reused"]}
    except BaseException:
        close_run_task(cfg, parent, False)
        raise
    close_run_task(cfg, parent, True, result["metrics"], _tags(result))
    publish_summary_task(cfg, "full-pipeline", result, parent)
    _print(result)
    return {**result, "mlflow_run": parent}


@flow(name="nightly-retrain", log_prints=True)
def nightly_retrain_flow(profile: Profile = "demo", overrides: dict[str, Any] | None = None,
                         state_dir: str | None = None) -> dict[str, Any]:
    """Ingest new raw files; no new data ends here and registers nothing. Otherwise fine-tune from the
    champion (or from scratch with warm_start=False), evaluate on the newest data, guarded promotion."""
    cfg = resolve_config_task(profile, overrides, state_dir)
    summary = prepare_data_flow(cfg.data)
    parent = open_run_task(cfg, "nightly-retrain")
    try:
        data = record_data_task(cfg, summary, parent)
        plan = nightly_plan_task(cfg, data)
        print(f"nightly-retrain: {plan.reason}")
        if not plan.train:
            close_run_task(cfg, parent, True, tags={"nightly": plan.reason})
            publish_summary_task(cfg, "nightly-retrain", None, parent, skipped=plan.reason)
            return {"trained": False, "reason": plan.reason, "mlflow_run": parent}
        result = _train_and_register(cfg, data, parent, plan.init)
        result["reused"] = {"prepare-data": data.reused, **result["reused"]}
    except BaseException:
        close_run_task(cfg, parent, False)
        raise
    close_run_task(cfg, parent, True, result["metrics"], {**_tags(result), "nightly": plan.reason})
    publish_summary_task(cfg, "nightly-retrain", result, parent)
    _print(result)
    return {"trained": True, "reason": plan.reason, **result, "mlflow_run": parent}


@flow(name="patchrec", log_prints=True)
def patchrec_flow(job: Literal["full-pipeline", "nightly-retrain"] = "full-pipeline", profile: Profile = "demo",
                  overrides: dict[str, Any] | None = None, state_dir: str | None = None) -> dict[str, Any]:
    """The deployed entry point (`prefect deployment run patchrec/full-pipeline`, `patchrec/nightly-retrain`)."""
    job_flow = full_pipeline_flow if job == "full-pipeline" else nightly_retrain_flow
    return job_flow(profile=profile, overrides=overrides, state_dir=state_dir)
