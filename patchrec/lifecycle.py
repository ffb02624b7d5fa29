"""Pipeline stages with fingerprinted outputs and MLflow logging; the Prefect tasks call these.

Each stage's output folder is named by a fingerprint of its inputs (upstream fingerprints) and its config,
so a re-run finds finished work and skips it, and a failed stage leaves every earlier output reusable.
Stages take and return small records (paths, fingerprints, metrics), never models or tables.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from patchrec import registry, stages, tracking
from patchrec.data.sequences import SequenceStore
from patchrec.io import read_json
from patchrec.pipeline import PipelineConfig, _flatten, data_fingerprint, fingerprint, model_identity

__all__ = ["open_run", "close_run", "record_data", "catalog", "train", "evaluate", "baseline", "register",
           "nightly_plan", "example_history"]

Record = dict[str, Any]


def _experiment(cfg: PipelineConfig) -> str:
    return cfg.model_name


def _metric_name(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^0-9A-Za-z]+", "_", text)).strip("_").lower()


def open_run(cfg: PipelineConfig, flow: str) -> str:
    """The parent MLflow run of one pipeline run, with the resolved config as params."""
    return tracking.start_pipeline_run(cfg.state_dir, _experiment(cfg), f"{flow} ({cfg.profile})", cfg.summary(),
                                       tags={"patchrec.profile": cfg.profile, "patchrec.dataset": cfg.dataset})


def close_run(cfg: PipelineConfig, run_id: str, ok: bool, result: Record | None = None) -> None:
    metrics = {k: v for k, v in (result or {}).get("metrics", {}).items() if isinstance(v, (int, float))}
    tags = {k: str(v) for k, v in (result or {}).get("tags", {}).items()}
    tracking.end_pipeline_run(cfg.state_dir, run_id, ok, metrics, tags)


def record_data(cfg: PipelineConfig, summary: Record, parent: str | None = None) -> Record:
    """Fingerprint the prepared tables; log counts, the validation summary and the dataset to MLflow."""
    out = cfg.data.out.resolve()  # the published generation: later stages read it even after a newer one is published
    fp = data_fingerprint(out)
    with tracking.stage_run(cfg.state_dir, _experiment(cfg), "prepare-data", parent,
                            tags={"patchrec.fingerprint": fp}):
        mlflow.log_params({f"data.{k}": v for k, v in _flatten(cfg.data.model_dump(mode="json")).items()})
        counts = {k: summary[k] for k in ("rows_read", "rows_accepted", "rows_quarantined", "rows_deduplicated",
                                          "rows_filtered", "users", "items", "interactions")}
        counts.update({f"samples_{k}": v for k, v in summary["samples"].items()})
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        mlflow.log_dict(summary, "prepare_summary.json")
        if (out / "validation").is_dir():
            mlflow.log_artifacts(str(out / "validation"), "validation")
        events = pd.read_parquet(out / "interactions.parquet")
        mlflow.log_input(mlflow.data.from_pandas(events, source=str(cfg.data.raw), name=cfg.dataset),
                         context="training")
    return {"stage": "data", "dir": str(out), "fingerprint": fp, "changed": bool(summary["changed"]),
            "files_new": list(summary.get("files_new", [])), "samples": summary["samples"]}


def catalog(cfg: PipelineConfig, data: Record, parent: str | None = None) -> Record:
    """The catalog patch table of the base model, and tokens per prompt by layout."""
    max_history = cfg.pft.max_history
    fp = fingerprint("catalog", data["fingerprint"], model_identity(cfg.model), cfg.prompt.model_dump(mode="json"),
                     max_history)
    out = cfg.state_dir / "catalog" / cfg.dataset / fp
    reused = (out / "catalog.json").is_file()
    info = read_json(out / "catalog.json") if reused else stages.build_catalog(
        Path(data["dir"]), out, cfg.model, cfg.prompt, max_history=max_history)
    with tracking.stage_run(cfg.state_dir, _experiment(cfg), "catalog", parent,
                            tags={"patchrec.fingerprint": fp, "patchrec.reused": str(reused)}):
        mlflow.log_metrics({"items": info["items"], "title_tokens_mean": info["title_tokens_mean"],
                            **{f"prompt_tokens_{_metric_name(k)}": v for k, v in info["prompt_tokens"].items()}})
        mlflow.log_dict({**info, "fingerprint": fp}, "catalog.json")
        with tracking.artifact_dir() as tmp:
            mlflow.log_artifact(str(tracking.plot_prompt_tokens(info, tmp / "tokens_per_prompt.png")), "plots")
    return {"stage": "catalog", "dir": str(out), "file": str(out / "catalog.safetensors"), "fingerprint": fp,
            "reused": reused}


def train(cfg: PipelineConfig, which: str, data: Record, cat: Record, init: Record | None = None,
          parent: str | None = None) -> Record:
    """PPT (`which="ppt"`) or PFT/SFT (`"pft"`), from `init` (a PPT run or a champion bundle) when given."""
    tcfg = {"ppt": cfg.ppt, "pft": cfg.pft}[which]
    if tcfg is None:
        raise ValueError(f"profile {cfg.profile!r} has no {which} stage")
    fp = fingerprint(which, data["fingerprint"], cat["fingerprint"], tcfg.model_dump(mode="json"),
                     model_identity(cfg.model), cfg.prompt.model_dump(mode="json"),
                     init["fingerprint"] if init else None)
    out = cfg.runs_dir / f"{which}-{fp}"
    reused = (out / "config.json").is_file() and (out / "trainable.pt").is_file()
    meta = stages.train(Path(data["dir"]), out, tcfg, cfg.model, cfg.prompt,
                        init_from=Path(init["dir"]) if init else None, catalog_file=Path(cat["file"]))
    with tracking.stage_run(cfg.state_dir, _experiment(cfg), which, parent,
                            tags={"patchrec.fingerprint": fp, "patchrec.reused": str(reused),
                                  "patchrec.init": init["dir"] if init else ""}) as run:
        mlflow.log_params({f"{which}.{k}": v for k, v in tcfg.model_dump(mode="json").items()})
        tracking.log_training(run.info.run_id, meta)
        mlflow.log_metrics({"final_loss": meta["final_loss"], "samples_per_s_mean": meta["samples_per_s"],
                            "steps": meta["steps"], "samples": meta["samples"]})
        with tracking.artifact_dir() as tmp:
            mlflow.log_artifact(str(tracking.plot_training({which: meta}, tmp / f"training_{which}.png")), "plots")
    return {"stage": which, "dir": str(out), "fingerprint": fp, "reused": reused,
            "final_loss": meta["final_loss"], "samples_per_s": meta["samples_per_s"]}


def evaluate(cfg: PipelineConfig, split: str, data: Record, cat: Record, run: Record,
             parent: str | None = None) -> Record:
    """Constrained ranking of the val or test sample; metrics logged as `<split>_<metric>`."""
    ecfg = {"val": cfg.val, "test": cfg.test}[split]
    fp = fingerprint("eval", split, data["fingerprint"], run["fingerprint"], ecfg.model_dump(mode="json"))
    out = cfg.runs_dir / f"eval-{split}-{fp}"
    reused = (out / "eval.json").is_file()
    res = read_json(out / "eval.json") if reused else stages.evaluate(
        Path(data["dir"]), Path(run["dir"]), out, ecfg, catalog_file=Path(cat["file"]))
    with tracking.stage_run(cfg.state_dir, _experiment(cfg), f"evaluate-{split}", parent,
                            tags={"patchrec.fingerprint": fp, "patchrec.reused": str(reused)}):
        mlflow.log_params({f"{split}.{k}": v for k, v in ecfg.model_dump(mode="json").items()})
        tracking.log_eval(res, split)
        mlflow.log_dict(res, "eval.json")
        with tracking.artifact_dir() as tmp:
            mlflow.log_artifact(str(tracking.plot_history_buckets(res, tmp / f"hr_by_history_{split}.png")), "plots")
    return {"stage": f"eval-{split}", "dir": str(out), "fingerprint": fp, "reused": reused,
            "metrics": res["metrics"], "samples": res["samples"], "users_per_s": res["users_per_s"]}


def baseline(cfg: PipelineConfig, kind: str, data: Record, parent: str | None = None) -> Record:
    """Popularity or SASRec on the same data and test sample; test metrics logged as `test_<metric>`."""
    from patchrec.baselines import evaluate_baseline

    settings = cfg.sasrec.model_dump(mode="json") if kind == "sasrec" else {}
    fp = fingerprint("baseline", kind, data["fingerprint"], settings, cfg.test.max_samples, cfg.test.seed)
    out = cfg.runs_dir / f"baseline-{kind}-{fp}"
    reused = (out / "eval.json").is_file()
    res = evaluate_baseline(kind, Path(data["dir"]), out, split="test", max_samples=cfg.test.max_samples,
                            sasrec=cfg.sasrec, seed=cfg.test.seed)
    with tracking.stage_run(cfg.state_dir, _experiment(cfg), f"baseline-{kind}", parent,
                            tags={"patchrec.fingerprint": fp, "patchrec.reused": str(reused)}) as run:
        mlflow.log_params({f"sasrec.{k}": v for k, v in settings.items()})
        tracking.log_eval(res, "test")
        if res["train"]:
            tracking.log_epochs(run.info.run_id, res["train"]["log"])
        mlflow.log_dict(res, "eval.json")
    return {"stage": f"baseline-{kind}", "dir": str(out), "fingerprint": fp, "reused": reused,
            "metrics": res["metrics"]}


def register(cfg: PipelineConfig, data: Record, cat: Record, run: Record, val: Record, test: Record,
             parent: str | None = None) -> Record:
    """Bundle the run, register it as a new version (alias `challenger`), promote it if it is no worse."""
    fp = fingerprint("register", run["fingerprint"], cat["fingerprint"], val["fingerprint"], test["fingerprint"],
                     cfg.registry.model_dump(mode="json"))
    name = cfg.model_name
    with tracking.stage_run(cfg.state_dir, _experiment(cfg), "register", parent, tags={"patchrec.fingerprint": fp}):
        existing = registry.find_version(name, fp)
        if existing is not None:
            mlflow.set_tag("patchrec.reused", "True")
            return {"stage": "register", "name": name, "version": existing, "registered": False,
                    "promoted": False, "reason": f"already registered as v{existing}", "fingerprint": fp}
        tags = {"patchrec.fingerprint": fp, "patchrec.profile": cfg.profile, "patchrec.dataset": cfg.dataset,
                "patchrec.run_dir": run["dir"], "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tags.update({f"val_{k}": f"{v:.6f}" for k, v in val["metrics"].items()})
        tags.update({f"test_{k}": f"{v:.6f}" for k, v in test["metrics"].items()})
        bundle = _bundle(cfg, data, cat, run, fp)
        version = registry.log_model(bundle, name, example_history(Path(data["dir"])), tags)
        decision = registry.promote_if_better(name, version, cfg.registry.metric, cfg.registry.margin)
        mlflow.set_tags({"registered_version": str(version), "promoted": str(decision["promoted"]),
                         "promotion": decision["reason"]})
    return {"stage": "register", "name": name, "version": version, "registered": True, "fingerprint": fp,
            **decision}


def _bundle(cfg: PipelineConfig, data: Record, cat: Record, run: Record, fp: str) -> Path:
    from patchrec.recommender import write_bundle

    return write_bundle(Path(run["dir"]), Path(data["dir"]), Path(cat["dir"]), cfg.runs_dir / f"bundle-{fp}",
                        max_history=cfg.registry.max_history, num_beams=cfg.test.num_beams,
                        length_penalty=cfg.test.length_penalty, max_rows=cfg.registry.max_rows,
                        max_request_bytes=cfg.registry.max_request_bytes)


def example_history(data_dir: Path, n: int = 5) -> list[str]:
    store = SequenceStore(data_dir)
    hist, _ = store.sample(int(store.indices("val")[0]))
    keys = pd.read_parquet(data_dir / "items.parquet", columns=["item_idx", "item_key"]).sort_values("item_idx")
    return [str(keys.item_key.iloc[i]) for i in hist[-n:]]


def nightly_plan(cfg: PipelineConfig, data: Record) -> Record:
    """Whether tonight trains (new data, or no champion yet) and from what: the champion's bundle or scratch."""
    tracking.tracking_uri(cfg.state_dir)
    champ = registry.alias(cfg.model_name, registry.CHAMPION)
    if champ is None:
        return {"train": True, "reason": "no champion yet: full training", "init": None}
    if not data["changed"]:
        return {"train": False, "reason": f"no new data; champion v{champ.version} stays", "init": None}
    if not cfg.warm_start:
        return {"train": True, "reason": f"new files {data['files_new']}: training from scratch", "init": None}
    dst = cfg.state_dir / "champions" / cfg.model_name / f"v{champ.version}"
    if not (dst / "done").is_file():
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{cfg.model_name}/{champ.version}",
                                            dst_path=str(dst))
        (dst / "done").write_text("ok\n")
    bundle = next(p.parent for p in dst.rglob("bundle.json"))
    return {"train": True, "reason": f"new files {data['files_new']}: warm start from champion v{champ.version}",
            "init": {"stage": "champion", "dir": str(bundle), "fingerprint": champ.tags["patchrec.fingerprint"],
                     "version": int(champ.version)}}
