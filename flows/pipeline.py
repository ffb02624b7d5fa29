"""Flows of the model lifecycle. `full-pipeline`: prepare data -> [baselines] -> catalog patch table -> PPT
-> PFT -> evaluate (val, test) -> register. `nightly-retrain`: incremental ingestion; when there is new data,
fine-tune from the champion, evaluate on the newest data, register with guarded promotion.

Every stage is a subflow that also runs alone, given its upstream records (paths + fingerprints).
Flows only call tasks; the logic is in `patchrec.lifecycle`.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.prepare_data import prepare_data
from patchrec.pipeline import PipelineConfig
from tasks import lifecycle as t

__all__ = ["patchrec", "baselines", "catalog", "patch_pretrain", "patch_finetune", "evaluate", "register", "full_pipeline",
           "nightly_retrain"]

Profile = Literal["tiny", "demo", "ml-100k", "ml-1m"]
Record = dict[str, Any]


@flow(name="catalog")
def catalog(cfg: PipelineConfig, data: Record, parent_run: str | None = None) -> Record:
    """Title token ids and item patches of the whole catalog (once per data + base model)."""
    return t.build_catalog(cfg, data, parent_run)


@flow(name="patch-pretrain")
def patch_pretrain(cfg: PipelineConfig, data: Record, cat: Record, parent_run: str | None = None) -> Record:
    """PPT: mixed text / item-patch / session-patch layouts with the curriculum p = step / total."""
    return t.train(cfg, "ppt", data, cat, None, parent_run)


@flow(name="patch-finetune")
def patch_finetune(cfg: PipelineConfig, data: Record, cat: Record, init: Record | None = None,
                   parent_run: str | None = None) -> Record:
    """PFT-I / PFT-S (or SFT), starting from `init` (the PPT run or a champion bundle) when given."""
    return t.train(cfg, "pft", data, cat, init, parent_run)


@flow(name="evaluate")
def evaluate(cfg: PipelineConfig, data: Record, cat: Record, run: Record, parent_run: str | None = None) -> Record:
    """Rank the validation and test samples with the run's layout."""
    val = t.evaluate(cfg, "val", data, cat, run, parent_run)
    test = t.evaluate(cfg, "test", data, cat, run, parent_run)
    return {"val": val, "test": test}


@flow(name="baselines")
def baselines(cfg: PipelineConfig, data: Record, parent_run: str | None = None) -> dict[str, Record]:
    """The ID-based baselines of `cfg.baselines` (popularity, SASRec) on the same split and test sample."""
    return {kind: t.baseline(cfg, kind, data, parent_run) for kind in cfg.baselines}


@flow(name="register")
def register(cfg: PipelineConfig, data: Record, cat: Record, run: Record, val: Record, test: Record,
             parent_run: str | None = None) -> Record:
    """New registry version (alias challenger); champion only if its validation metric is no worse."""
    return t.register(cfg, data, cat, run, val, test, parent_run)


def _train_and_register(cfg: PipelineConfig, data: Record, parent: str, init: Record | None) -> Record:
    cat = catalog(cfg, data, parent)
    done = [cat]
    if init is None and cfg.ppt is not None:
        init = patch_pretrain(cfg, data, cat, parent)
        done.append(init)
    run = patch_finetune(cfg, data, cat, init, parent)
    ev = evaluate(cfg, data, cat, run, parent)
    done += [run, ev["val"], ev["test"]]
    reg = register(cfg, data, cat, run, ev["val"], ev["test"], parent)
    metrics = {f"{s}_{k}": v for s in ("val", "test") for k, v in ev[s]["metrics"].items()}
    return {"profile": cfg.profile, "dataset": cfg.dataset, "run_dir": run["dir"], "metrics": metrics,
            "registry": reg, "reused": {r["stage"]: r["reused"] for r in done},
            "tags": {"registered_version": reg["version"], "promoted": reg["promoted"]}}


def _print(result: Record) -> None:
    m, reg = result["metrics"], result["registry"]
    print(f"{result['dataset']}: test HR@10 {m['test_hr_10']:.4f} NDCG@10 {m['test_ndcg_10']:.4f}; "
          f"val NDCG@10 {m['val_ndcg_10']:.4f}")
    print(f"registry {reg['name']} v{reg['version']}: {reg['reason']}")


@flow(name="full-pipeline", log_prints=True)
def full_pipeline(profile: Profile = "demo", overrides: dict[str, Any] | None = None,
                  state_dir: str | None = None) -> Record:
    """Raw logs -> registered model. `overrides` are dotted keys, e.g. {"pft.max_samples": 64}."""
    cfg = t.resolve_config(profile, overrides, state_dir)
    parent = t.open_run(cfg, "full-pipeline")
    try:
        data = t.record_data(cfg, prepare_data(cfg.data), parent)
        base = baselines(cfg, data, parent) if cfg.baselines else {}
        result = _train_and_register(cfg, data, parent, None)
        result["metrics"].update({f"{kind}_test_{k}": v for kind, r in base.items()
                                  for k, v in r["metrics"].items()})
    except BaseException:
        t.close_run(cfg, parent, False)
        raise
    t.close_run(cfg, parent, True, result)
    _print(result)
    return {**result, "mlflow_run": parent}


@flow(name="nightly-retrain", log_prints=True)
def nightly_retrain(profile: Profile = "demo", overrides: dict[str, Any] | None = None,
                    state_dir: str | None = None) -> Record:
    """Ingest new raw files; no new data ends here and registers nothing. Otherwise fine-tune from the
    champion (or from scratch with warm_start=False), evaluate on the newest data, guarded promotion."""
    cfg = t.resolve_config(profile, overrides, state_dir)
    summary = prepare_data(cfg.data)
    parent = t.open_run(cfg, "nightly-retrain")
    try:
        data = t.record_data(cfg, summary, parent)
        plan = t.nightly_plan(cfg, data)
        print(f"nightly-retrain: {plan['reason']}")
        if not plan["train"]:
            t.close_run(cfg, parent, True, {"tags": {"nightly": plan["reason"]}})
            return {"trained": False, "reason": plan["reason"], "mlflow_run": parent}
        result = _train_and_register(cfg, data, parent, plan["init"])
    except BaseException:
        t.close_run(cfg, parent, False)
        raise
    t.close_run(cfg, parent, True, {**result, "tags": {**result["tags"], "nightly": plan["reason"]}})
    _print(result)
    return {"trained": True, "reason": plan["reason"], **result, "mlflow_run": parent}


@flow(name="patchrec", log_prints=True)
def patchrec(job: Literal["full-pipeline", "nightly-retrain"] = "full-pipeline", profile: Profile = "demo",
             overrides: dict[str, Any] | None = None, state_dir: str | None = None) -> Record:
    """The deployed entry point (`prefect deployment run patchrec/full-pipeline`, `patchrec/nightly-retrain`)."""
    job_flow = full_pipeline if job == "full-pipeline" else nightly_retrain
    return job_flow(profile=profile, overrides=overrides, state_dir=state_dir)
