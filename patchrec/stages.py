"""The pipeline's stages: each takes the pipeline config and upstream `StageRecord`s and returns one.

Every stage runs through `contract.run_stage`: its folder is named by the fingerprint of every input that
changes its output (upstream fingerprints, configs, base model, code versions), a finished folder is
reused, and one nested MLflow run per stage records it. Stages pass paths and fingerprints, never models
or tables. The Prefect tasks in `tasks/stages.py` call these functions one to one.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from pydantic import BaseModel, ConfigDict

from patchrec import faults, registry, tracking
from patchrec.catalog import CATALOG_FILE, build_catalog_table
from patchrec.config import EvalConfig, LaunchConfig, SASRecConfig
from patchrec.contract import StageOutput, StageRecord, Tracker, fingerprint, read_manifest, run_stage
from patchrec.data.sequences import SequenceStore
from patchrec.evaluation.result import read_result
from patchrec.io import file_lock
from patchrec.launch import EvalJob, TrainJob, run_job
from patchrec.profiles import PipelineConfig, flatten, model_identity
from patchrec.runtime import RunSpec

__all__ = ["NightlyPlan", "baseline_into", "build_catalog", "close_pipeline_run", "code_versions", "data_record",
           "download_champion", "evaluate_into", "evaluate_model", "example_history", "nightly_plan",
           "open_pipeline_run", "record_data", "register_model", "run_baseline", "train_into", "train_model"]


def code_versions() -> dict[str, str]:
    """Versions of the code that shapes a trained model or a ranking (part of their fingerprints)."""
    return {name: version(name) for name in ("patchrec", "torch", "transformers", "peft")}


def _tracker(cfg: PipelineConfig, parent: str | None) -> Tracker:
    return Tracker(cfg.state_dir, cfg.model_name, parent)


def _metric_name(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^0-9A-Za-z]+", "_", text)).strip("_").lower()


def open_pipeline_run(cfg: PipelineConfig, flow: str) -> str:
    """The parent MLflow run of one pipeline run, with the resolved config as params; returns its id."""
    return tracking.start_pipeline_run(cfg.state_dir, cfg.model_name, f"{flow} ({cfg.profile})", cfg.summary(),
                                       tags={"patchrec.profile": cfg.profile, "patchrec.dataset": cfg.dataset})


def close_pipeline_run(cfg: PipelineConfig, run_id: str, ok: bool, metrics: dict[str, float] | None = None,
                       tags: dict[str, Any] | None = None) -> None:
    """Finish the parent run (FAILED unless `ok`) with the pipeline's headline metrics and tags."""
    tracking.end_pipeline_run(cfg.state_dir, run_id, ok, metrics or {}, {k: str(v) for k, v in (tags or {}).items()})


def record_data(cfg: PipelineConfig, summary: dict[str, Any], parent: str | None = None) -> StageRecord:
    """The published data generation as a stage record, logged to MLflow (counts, validation, dataset).

    Args:
        cfg: the pipeline config.
        summary: what the prepare-data flow returned (`changed` tells whether this run made a new generation).
        parent: the parent MLflow run.
    """
    out = cfg.data.out.resolve()  # the generation itself: later stages read it even after a newer one is published
    manifest = read_manifest(out, "prepare")
    counts = {s: int(manifest.metrics.get(f"samples_{s}", 0)) for s in ("train", "val", "test")}
    if not all(counts.values()):  # training needs train samples, promotion val, the report test
        raise ValueError(f"{out}: a split has no sample ({counts}); the pipeline trains on train, promotes on val "
                         "and reports test: lower data.min_history, change data.split_ratios or add data")
    record = StageRecord.of(out, manifest, reused=not summary["changed"])
    with _tracker(cfg, parent).run("prepare-data", {"patchrec.fingerprint": record.fingerprint,
                                                    "patchrec.reused": str(record.reused)}):
        mlflow.log_params({f"data.{k}": v for k, v in flatten(cfg.data.model_dump(mode="json")).items()})
        mlflow.log_metrics(record.metrics)
        mlflow.log_dict(summary, "prepare_summary.json")
        if (out / "validation").is_dir():
            mlflow.log_artifacts(str(out / "validation"), "validation")
        events = pd.read_parquet(out / "interactions.parquet")
        mlflow.log_input(mlflow.data.from_pandas(events, source=str(cfg.data.raw), name=cfg.dataset),
                         context="training")
    return record.model_copy(update={"info": {**record.info, "changed": bool(summary["changed"]),
                                              "files_new": list(summary.get("files_new", []))}})


def build_catalog(cfg: PipelineConfig, data: StageRecord, parent: str | None = None) -> StageRecord:
    """The catalog patch table of the base model, and tokens per prompt by layout."""
    max_history = cfg.pft.max_history
    fp = fingerprint("catalog", data.fingerprint, model_identity(cfg.model), cfg.prompt.model_dump(mode="json"),
                     max_history, code_versions())

    def log(rec: StageRecord) -> None:
        mlflow.log_metrics({**rec.metrics, **{f"prompt_tokens_{_metric_name(k)}": v
                                              for k, v in rec.info["prompt_tokens"].items()}})
        with tracking.artifact_dir() as tmp:
            path = tracking.plot_prompt_tokens(rec.info, tmp / "tokens_per_prompt.png")
            mlflow.log_artifact(str(path), "plots")

    return run_stage("catalog", cfg.state_dir / "catalog" / cfg.dataset / fp, fp,
                     lambda out: build_catalog_table(data.dir, out, cfg.model, cfg.prompt, max_history=max_history),
                     tracker=_tracker(cfg, parent), log=log)


FolderOf = Callable[[str], Path]  # fingerprint -> the stage's output folder


def data_record(data_dir: Path) -> StageRecord:
    """A prepared data folder (a published generation) as a stage record."""
    data_dir = Path(data_dir).resolve()
    return StageRecord.of(data_dir, read_manifest(data_dir, "prepare"), reused=True)


def train_into(folder_of: FolderOf, stage: str, spec: RunSpec, data: StageRecord, cat: StageRecord | None = None,
               init: StageRecord | None = None, tracker: Tracker | None = None,
               launch: LaunchConfig = LaunchConfig()) -> StageRecord:
    """Train one stage (PPT, PFT or SFT) through the stage contract.

    Args:
        folder_of: the output folder for the stage's fingerprint.
        stage: the stage name recorded in the manifest (ppt, pft, sft).
        spec: train, model and prompt configs.
        data: the prepared data.
        cat: the catalog stage (skips tokenizing titles again), if any.
        init: the stage whose `trainable.pt` training starts from (a PPT run or a champion bundle), if any.
        tracker: where the stage's MLflow run goes (per-step curves, plots), if anywhere.
        launch: in this process, or as torchrun ranks (not fingerprinted: the result does not depend on it).
    """
    tcfg = spec.train
    fp = fingerprint(stage, data.fingerprint, cat.fingerprint if cat else None, tcfg.model_dump(mode="json"),
                     model_identity(spec.model), spec.prompt.model_dump(mode="json"),
                     init.fingerprint if init else None, code_versions())

    def build(out: Path) -> StageOutput:
        job = TrainJob(data_dir=data.dir, out_dir=out, spec=spec, init_from=init.dir if init else None,
                       catalog_file=cat.dir / CATALOG_FILE if cat else None)
        res = run_job(job, launch)
        return res.model_copy(update={"info": {"init_from": str(init.dir) if init else None}})

    def log(rec: StageRecord) -> None:
        mlflow.log_params({f"{stage}.{k}": v for k, v in tcfg.model_dump(mode="json").items()})
        mlflow.set_tag("patchrec.init", str(init.dir) if init else "")
        from patchrec.training import StageResult

        curves = StageResult.read(rec.dir / "training.json")
        tracking.log_training(mlflow.active_run().info.run_id, curves)  # per step: loss, lr, samples_per_s, ...
        totals = {("samples_per_s_mean" if k == "samples_per_s" else k): v for k, v in rec.metrics.items()}
        mlflow.log_metrics(totals)
        with tracking.artifact_dir() as tmp:
            mlflow.log_artifact(str(tracking.plot_training({stage: curves}, tmp / f"training_{stage}.png")), "plots")

    return run_stage(stage, folder_of(fp), fp, build, config=spec.model_dump(mode="json"), tracker=tracker, log=log)


def evaluate_into(folder_of: FolderOf, ecfg: EvalConfig, data: StageRecord, run: StageRecord,
                  cat: StageRecord | None = None, tracker: Tracker | None = None,
                  launch: LaunchConfig = LaunchConfig()) -> StageRecord:
    """Rank `ecfg.split` with a finished training stage (its layout and configs) through the stage contract;
    sharded over torchrun ranks when `launch` asks for several (the same ranks as one process)."""
    split = ecfg.split
    fp = fingerprint("eval", split, data.fingerprint, run.fingerprint, ecfg.model_dump(mode="json"), code_versions())

    def build(out: Path) -> StageOutput:
        return run_job(EvalJob(data_dir=data.dir, run_dir=run.dir, out_dir=out, eval=ecfg,
                               catalog_file=cat.dir / CATALOG_FILE if cat else None), launch)

    def log(rec: StageRecord) -> None:
        res = read_result(rec.dir)
        mlflow.log_params({f"{split}.{k}": v for k, v in ecfg.model_dump(mode="json").items()})
        tracking.log_eval(res, split)
        mlflow.log_dict(res.model_dump(mode="json"), "eval.json")
        with tracking.artifact_dir() as tmp:
            mlflow.log_artifact(str(tracking.plot_history_buckets(res, tmp / f"hr_by_history_{split}.png")), "plots")

    return run_stage(f"eval-{split}", folder_of(fp), fp, build, config=ecfg.model_dump(mode="json"), tracker=tracker,
                     run_name=f"evaluate-{split}", log=log)


def baseline_into(folder_of: FolderOf, kind: str, data: StageRecord, sasrec: SASRecConfig, split: str = "test",
                  max_samples: int | None = None, seed: int = 0, tracker: Tracker | None = None) -> StageRecord:
    """Popularity or SASRec on a prepared folder through the stage contract; metrics as `<split>_<metric>`."""
    from patchrec.baselines import evaluate_baseline

    settings = sasrec.model_dump(mode="json")  # max_len also caps the histories popularity ranks
    fp = fingerprint("baseline", kind, data.fingerprint, settings, split, max_samples, seed, version("torch"))

    def build(out: Path) -> StageOutput:
        res = evaluate_baseline(kind, data.dir, out, split=split, max_samples=max_samples, sasrec=sasrec, seed=seed)
        return StageOutput(metrics=res.metrics, info={"samples": res.samples})

    def log(rec: StageRecord) -> None:
        res = read_result(rec.dir)
        if kind == "sasrec":
            mlflow.log_params({f"sasrec.{k}": v for k, v in settings.items()})
        tracking.log_eval(res, split)
        if res.train:
            tracking.log_epochs(mlflow.active_run().info.run_id, res.train["log"])
        mlflow.log_dict(res.model_dump(mode="json"), "eval.json")

    return run_stage(f"baseline-{kind}", folder_of(fp), fp, build, config=settings, tracker=tracker, log=log)


def train_model(cfg: PipelineConfig, which: str, data: StageRecord, cat: StageRecord, init: StageRecord | None = None,
                parent: str | None = None) -> StageRecord:
    """PPT (`which="ppt"`) or PFT/SFT (`"pft"`), starting from `init` (a PPT run or a champion) when given."""
    tcfg = {"ppt": cfg.ppt, "pft": cfg.pft}[which]
    if tcfg is None:
        raise ValueError(f"profile {cfg.profile!r} has no {which} stage")
    spec = RunSpec(train=tcfg, model=cfg.model, prompt=cfg.prompt)
    return train_into(lambda fp: cfg.runs_dir / f"{which}-{fp}", which, spec, data, cat, init, _tracker(cfg, parent),
                      cfg.launch)


def evaluate_model(cfg: PipelineConfig, split: str, data: StageRecord, cat: StageRecord, run: StageRecord,
                   parent: str | None = None) -> StageRecord:
    """Rank the val or test sample of the pipeline config with the run's layout."""
    ecfg = {"val": cfg.val, "test": cfg.test}[split]
    return evaluate_into(lambda fp: cfg.runs_dir / f"eval-{split}-{fp}", ecfg, data, run, cat, _tracker(cfg, parent),
                         cfg.launch)


def run_baseline(cfg: PipelineConfig, kind: str, data: StageRecord, parent: str | None = None) -> StageRecord:
    """Popularity or SASRec on the same data and test sample as the LLM stages."""
    return baseline_into(lambda fp: cfg.runs_dir / f"baseline-{kind}-{fp}", kind, data, cfg.sasrec, "test",
                         cfg.test.max_samples, cfg.test.seed, _tracker(cfg, parent))


def register_model(cfg: PipelineConfig, data: StageRecord, cat: StageRecord, run: StageRecord, val: StageRecord,
                   test: StageRecord, parent: str | None = None) -> StageRecord:
    """Bundle the run, register it as a new version (alias `challenger`), promote it if it is good enough.

    The stage folder is the bundle. Validation and test metrics go on the register run and the logged model;
    promotion compares the validation metric of the runs behind the champion and the new version. Resumable:
    a version registered before a crash (found by its fingerprint tag, written with the version) is finished
    rather than registered again, under a lock per registered model (one promotion decision at a time).
    """
    from patchrec.recommender import bundle_digest, write_bundle

    fp = fingerprint("register", run.fingerprint, cat.fingerprint, val.fingerprint, test.fingerprint,
                     cfg.registry.model_dump(mode="json"))
    name = cfg.model_name
    rc = cfg.registry

    def build(out: Path) -> StageOutput:
        metrics = {
            **{f"val_{k}": v for k, v in val.metrics.items()},
            **{f"test_{k}": v for k, v in test.metrics.items()},
        }
        mlflow.log_metrics(metrics)
        with file_lock(cfg.state_dir / "locks" / f"registry-{name}.lock", f"the registry of {name}"):
            ver = registry.find_version(name, fp)  # registered before a crash that left no manifest
            resumed = ver is not None
            if ver is None:
                write_bundle(run.dir, data.dir, cat.dir, out, max_history=rc.max_history,
                             num_beams=cfg.test.num_beams, length_penalty=cfg.test.length_penalty,
                             max_rows=rc.max_rows, max_request_bytes=rc.max_request_bytes)
                tags = {"patchrec.fingerprint": fp, "patchrec.profile": cfg.profile, "patchrec.dataset": cfg.dataset,
                        "patchrec.run_dir": str(run.dir), "patchrec.data_fingerprint": data.fingerprint,
                        "patchrec.val_samples": str(int(val.info.get("samples", 0))),
                        "patchrec.bundle_sha256": bundle_digest(out),
                        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                ver = registry.log_model(out, name, example_history(data.dir), tags, metrics)
                faults.point("register.version_created")
            decision = registry.finish_registration(name, ver, rc.metric, rc.margin, rc.min_val_samples)
        mlflow.set_tags({"registered_version": str(ver), "promoted": str(decision["promoted"]),
                         "promotion": decision["reason"]})
        return StageOutput(metrics=metrics, info={"name": name, "version": ver, "registered": True,
                                                  "resumed": resumed, **decision})

    return run_stage("register", cfg.runs_dir / f"bundle-{fp}", fp, build, tracker=_tracker(cfg, parent))


def example_history(data_dir: Path, n: int = 5) -> list[str]:
    """Item keys of the newest `n` items of the first validation history (an input example)."""
    store = SequenceStore(data_dir)
    hist, _ = store.sample(int(store.indices("val")[0]))
    keys = pd.read_parquet(Path(data_dir) / "items.parquet", columns=["item_idx", "item_key"]).sort_values("item_idx")
    return [str(keys.item_key.iloc[i]) for i in hist[-n:]]


class NightlyPlan(BaseModel):
    """Whether tonight trains, why, and from what (a champion's bundle, or None: from scratch)."""

    model_config = ConfigDict(frozen=True)
    train: bool
    reason: str
    init: StageRecord | None = None


def nightly_plan(cfg: PipelineConfig, data: StageRecord) -> NightlyPlan:
    """Train when the published data is not what the champion was trained on (its `patchrec.data_fingerprint`
    tag), or when there is no champion yet; warm start from the champion's bundle when allowed.

    Deciding from the data rather than from this run's "new files" flag means that a nightly that failed
    after publishing a generation is retried by the next one instead of skipping that data for good.
    """
    tracking.tracking_uri(cfg.state_dir)
    champ = registry.alias(cfg.model_name, registry.CHAMPION)
    if champ is None:
        return NightlyPlan(train=True, reason="no champion yet: full training")
    trained_on = champ.tags.get("patchrec.data_fingerprint")
    if trained_on == data.fingerprint:
        return NightlyPlan(train=False, reason=f"champion v{champ.version} was trained on this data "
                           f"({data.fingerprint}); it stays")
    if trained_on is None and not data.info["changed"]:  # a version registered before the tag existed
        return NightlyPlan(train=False, reason=f"no new data; champion v{champ.version} stays")
    what = (f"new files {data.info['files_new']}" if data.info["changed"] else
            f"data {data.fingerprint} differs from champion v{champ.version}'s ({trained_on})")
    if not cfg.warm_start:
        return NightlyPlan(train=True, reason=f"{what}: training from scratch")
    return NightlyPlan(train=True, reason=f"{what}: warm start from champion v{champ.version}",
                       init=download_champion(cfg, champ))


def download_champion(cfg: PipelineConfig, champ: Any) -> StageRecord:
    """The champion's bundle as a local stage folder, checked against the digest recorded at registration (a
    corrupted download is refused and not kept, so a repaired artifact is fetched again by the next run)."""
    expected = champ.tags.get("patchrec.bundle_sha256")
    fp = fingerprint("champion", champ.tags["patchrec.fingerprint"], expected)

    def download(out: Path) -> StageOutput:
        from patchrec.recommender import bundle_digest

        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{cfg.model_name}/{champ.version}",
                                            dst_path=str(out))
        found = [p.parent for p in out.rglob("bundle.json")]
        if len(found) != 1:
            shutil.rmtree(out, ignore_errors=True)
            raise RuntimeError(f"{cfg.model_name} v{champ.version}: the downloaded model holds {len(found)} bundles "
                               "(bundle.json), expected 1")
        got = bundle_digest(found[0])
        if expected is not None and got != expected:
            shutil.rmtree(out, ignore_errors=True)
            raise RuntimeError(f"{cfg.model_name} v{champ.version}: the downloaded bundle has sha256 {got[:12]}..., "
                               f"registered as {expected[:12]}... (a corrupted or changed artifact); nothing kept")
        return StageOutput(info={"version": int(champ.version), "bundle": str(found[0].relative_to(out)),
                                 "sha256": got})

    folder = cfg.state_dir / "champions" / cfg.model_name / f"v{champ.version}-{fp}"
    got = run_stage("champion", folder, fp, download)
    return got.model_copy(update={"dir": got.dir / got.info["bundle"]})
